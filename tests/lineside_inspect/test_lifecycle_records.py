"""The lifecycle's records in a real database, SQLite and PostgreSQL: the tables made on a
store that has none (an old database), gate reports keyed by version and graph, the audit
log, admissions, shadow runs and disagreements, and the counts a rollout watch reads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect as sa_inspect

from lineside_inspect.errors import NotFoundError
from lineside_inspect.imageio import decode_image
from lineside_inspect.inspector import inspect
from lineside_inspect.lifecycle.gate import GateReport, run_gate
from lineside_inspect.lifecycle.golden import GoldenLibrary, from_dataset, from_store
from lineside_inspect.lifecycle.records import Records
from lineside_inspect.recipes import Recipe, card_recipe
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store
from lineside_inspect.store.models import LIFECYCLE_TABLES

from .conftest import MODEL, ROOT, SAMPLE


@pytest.fixture(scope="module")
def detectors() -> tuple[Detector, Detector]:
    return (Detector(MODEL, device="cpu", threads=1),
            Detector(ROOT / "models" / "deeppcb" / "1-int8", device="cpu", threads=1))


def test_records(tmp_path: Path, database_url: str | None, detectors: tuple[Detector, Detector]) -> None:
    fp32, int8 = detectors
    store = Store(tmp_path / "store", database_url, pass_rate=1.0)
    try:
        assert not set(LIFECYCLE_TABLES) & set(sa_inspect(store.engine).get_table_names())
        records = Records(store)  # on a database without them: made now
        assert set(LIFECYCLE_TABLES) <= set(sa_inspect(store.engine).get_table_names())
        Records(store)  # and again: nothing happens

        lib = GoldenLibrary(tmp_path / "golden")
        items, classes = from_dataset(SAMPLE, "val", limit=3)
        report = run_gate(int8, fp32, lib, lib.create("g", items, classes), card_recipe(fp32.card))
        records.save_gate(report, "admin")
        (row,) = records.gates_of("deeppcb", "1-int8", int8.card.sha256)
        assert row.id == report.id and row.passed == report.passed
        assert records.gates_of("deeppcb", "1-int8", "0" * 64) == []  # another graph
        assert records.gates_of("deeppcb", "other", int8.card.sha256) == []  # another version
        assert records.gate_report(report.id)["candidate"]["version"] == "1-int8"

        records.audit(actor="admin", action="force_activate", model="deeppcb", version="1-int8",
                      reason="trial", details={"gate_report_id": report.id})
        total, log = records.audit_log(model="deeppcb")
        assert total == 1 and log[0]["reason"] == "trial" and log[0]["details"]["gate_report_id"] == report.id
        records.admit(model="deeppcb", version="1-int8", sha256=int8.card.sha256, role="active",
                      actor="admin", gate=row, forced=True, reason="trial", lineage={"parent": None})
        (admission,) = records.admissions("deeppcb")
        assert admission["golden"] == {"name": "g", "version": 1, "digest": report.golden.digest}
        assert admission["forced"] and admission["gate_report_id"] == report.id

        # inspections of two versions, then what a watch and a shadow read back
        started = datetime.now(UTC) - timedelta(seconds=1)
        image = decode_image((SAMPLE / "images" / "group00041" / "00041000_test.jpg").read_bytes())
        fails = Recipe(name="r", model="deeppcb", default_min_score=0.0)
        passes = Recipe(name="r", model="deeppcb", default_min_score=1.0)
        made = [inspect(image, det, rule) for det, rule in
                ((fp32, passes), (fp32, fails), (int8, fails), (int8, fails), (int8, passes))]
        for m in made:
            assert store.save(m)
        assert records.verdict_counts(model="deeppcb", version="1", recipe="r") == (2, 1)
        assert records.verdict_counts(model="deeppcb", version="1-int8", recipe="r",
                                      since=started) == (3, 2)
        assert records.verdict_counts(model="deeppcb", version="1-int8", recipe="r", last=1)[0] == 1
        store.review(made[2].id, reviewer="qa", action="false_reject")
        store.review(made[3].id, reviewer="qa", action="confirm")
        assert records.false_rejects(model="deeppcb", version="1-int8", since=started) == 1
        assert records.reviewed_truth([m.id for m in made]) == {made[2].id: "pass", made[3].id: "fail"}

        records.start_shadow("r1", model="deeppcb", version="1-int8", sha256=int8.card.sha256,
                             sample_rate=0.5)
        records.add_disagreement("r1", inspection_id=made[0].id, model="deeppcb", active_version="1",
                                 active_verdict="pass", active_defects=[], shadow_version="1-int8",
                                 shadow_verdict="fail", shadow_defects=[{"label": "open"}],
                                 shadow_reasons=[])
        records.update_shadow("r1", {"compared": 4, "agreed": 3}, stopped=True)
        run = records.shadow_run("deeppcb")
        assert run is not None and (run.compared, run.agreed) == (4, 3) and run.stopped_at is not None
        (d,) = records.disagreements(inspection_id=made[0].id)
        assert (d["active"]["verdict"], d["shadow"]["verdict"]) == ("pass", "fail")
        total, rows = store.query(queue="shadow")
        assert total == 1 and rows[0].id == made[0].id
    finally:
        store.close()


def test_the_shadow_queue_of_a_store_the_lifecycle_never_ran_on_is_empty(
        tmp_path: Path, database_url: str | None, detectors: tuple[Detector, Detector]) -> None:
    """A hub's store (and a data pull's) has no lifecycle tables: ``queue=shadow`` queried
    the missing table, a 500 on the hub's GET /v1/inspections (schemathesis, session 37).
    No shadow ran there: the queue is empty, and fills once the lifecycle made its tables."""
    store = Store(tmp_path / "store", database_url, pass_rate=1.0)
    try:
        made = inspect(decode_image(next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()),
                       detectors[0], card_recipe(detectors[0].card))
        assert store.save(made)
        assert store.query(queue="shadow") == (0, [])
        assert store.query()[0] == 1  # the other filters still read the rows
        records = Records(store)
        records.start_shadow("r1", model="deeppcb", version="1-int8",
                             sha256=detectors[1].card.sha256, sample_rate=1.0)
        records.add_disagreement("r1", inspection_id=made.id, model="deeppcb",
                                 active_version="1", active_verdict=made.verdict,
                                 active_defects=[], shadow_version="1-int8",
                                 shadow_verdict="fail", shadow_defects=[], shadow_reasons=[])
        total, rows = store.query(queue="shadow")
        assert total == 1 and rows[0].id == made.id
    finally:
        store.close()


def test_an_activation_that_cannot_be_recorded_does_not_stand(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry switches first; if the audit log or the admission cannot be written
    (a database outage), the previous version judges again, the error reaches the caller
    and no half of the record is left. An automatic rollback of a version that is no
    longer active changes nothing."""
    from sqlalchemy.exc import OperationalError

    from lineside_inspect.lifecycle.rollout import Watch

    lc, registry, store = _lifecycle(tmp_path)
    try:

        def outage(**_: object) -> None:
            raise OperationalError("INSERT", {}, Exception("database is down"))
        monkeypatch.setattr(lc.records, "admit", outage)
        with pytest.raises(OperationalError):
            lc.activate("deeppcb", "1-int8", actor="admin")
        slot = registry.models()["deeppcb"]
        assert (slot.active, slot.history) == ("1", [])
        monkeypatch.undo()
        # the audit entry and the admission are one transaction: neither was written
        assert lc.records.audit_log()[0] == 0 and lc.records.admissions("deeppcb") == []

        lc.activate("deeppcb", "1-int8", actor="admin")
        watch = Watch("deeppcb", "1-int8", "1", None, datetime.now(UTC), "admin", None, 0, 0)
        assert lc._auto_rollback(watch, "fail rate") is True
        slot = registry.models()["deeppcb"]
        assert (slot.active, slot.history) == ("1", [])  # nothing left to roll back to
        registry.activate("deeppcb", "1-int8")
        registry.activate("deeppcb", "1")  # an admin's choice, before the watch was stopped
        assert lc._auto_rollback(watch, "fail rate") is False
        slot = registry.models()["deeppcb"]
        # untouched by the refused rollback (each earlier version once: session 38)
        assert (slot.active, slot.history) == ("1", ["1-int8"])
        assert lc.records.audit_log(action="auto_rollback")[0] == 1
    finally:
        store.close()


def test_an_activation_undone_keeps_the_history_it_found(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier version activated, then undone as its record failed: the activation took
    it out of the history (each earlier version once), and the undo only popped the end,
    so a second rollback went nowhere (late review, session 38)."""
    import json
    import shutil

    from sqlalchemy.exc import OperationalError

    lc, registry, store = _lifecycle(tmp_path)
    try:
        folder = tmp_path / "deeppcb" / "2"
        shutil.copytree(MODEL, folder)
        doc = json.loads((folder / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps({**doc, "version": "2"}))
        registry.load_model(folder, activate=False)
        registry.activate("deeppcb", "1-int8")
        registry.activate("deeppcb", "2")

        def outage(**_: object) -> None:
            raise OperationalError("INSERT", {}, Exception("database is down"))
        monkeypatch.setattr(lc.records, "admit", outage)
        with pytest.raises(OperationalError):
            lc.activate("deeppcb", "1", actor="admin")
        slot = registry.models()["deeppcb"]
        assert (slot.active, slot.history) == ("2", ["1", "1-int8"])
        assert registry.rollback("deeppcb") == "1-int8" and registry.rollback("deeppcb") == "1"
    finally:
        store.close()


def test_the_registry_says_which_load_made_a_first_version_active() -> None:
    """Whether a load made its model's first version active is decided under the
    registry's lock (the admin route and a fleet box record it as an activation): a
    second version, a re-load, or a first version whose load another request beat is
    not a first."""
    import threading

    from lineside_inspect.server.registry import Registry

    registry = Registry(device="cpu", threads=1)
    first = registry.load(MODEL, activate=False)
    assert first.first and registry.models()["deeppcb"].active == "1"
    again = registry.load(MODEL, activate=False)  # the same package again: nothing new
    assert not again.first and again.detector.card.version == "1"
    other = registry.load(ROOT / "models" / "deeppcb" / "1-int8", activate=False)
    assert not other.first and registry.models()["deeppcb"].active == "1"

    racing = Registry(device="cpu", threads=1)
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def load(path: Path) -> None:
        barrier.wait()
        results.append(racing.load(path, activate=False).first)

    threads = [threading.Thread(target=load, args=(p,))
               for p in (MODEL, ROOT / "models" / "deeppcb" / "1-int8")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # exactly one of two concurrent first loads is the first, and it is the active one
    assert sorted(results) == [False, True]
    assert racing.models()["deeppcb"].active in ("1", "1-int8")


def test_a_version_rolled_back_automatically_is_refused_until_forced(tmp_path: Path) -> None:
    """After the line took a promoted version off, an admin's plain activation (or a recipe
    pinning it) put it back with no force and no reason, and nothing watched it (lifecycle
    review): a rollback stands like a failed gate, until a new pass or a forced decision."""
    from lineside_inspect.errors import GateRefused
    from lineside_inspect.lifecycle.rollout import Watch

    lc, registry, store = _lifecycle(tmp_path)
    try:
        lc.activate("deeppcb", "1-int8", actor="admin")
        watch = Watch("deeppcb", "1-int8", "1", None, datetime.now(UTC), "admin", None, 0, 0)
        assert lc._auto_rollback(watch, "3 reviewer-confirmed false rejects") is True
        with pytest.raises(GateRefused, match=r"deeppcb 1-int8 was rolled back automatically "
                           r".*\(3 reviewer-confirmed false rejects\), and has passed no gate"):
            lc.activate("deeppcb", "1-int8", actor="admin")
        assert registry.models()["deeppcb"].active == "1"
        lc.activate("deeppcb", "1-int8", actor="admin", force=True, reason="fixed the lamp")
        assert registry.models()["deeppcb"].active == "1-int8"
        assert lc.records.audit_log()[1][0]["action"] == "force_activate"
    finally:
        store.close()


def _lifecycle(tmp_path: Path) -> tuple[Any, Any, Store]:
    """A lifecycle over a registry with deeppcb 1 (active) and 1-int8, on a real store
    (attach() without a service to hook)."""
    from lineside_inspect.lifecycle.config import LifecycleSettings
    from lineside_inspect.lifecycle.manager import Lifecycle
    from lineside_inspect.server.registry import Registry

    registry = Registry(device="cpu", threads=1)
    registry.load_model(MODEL)
    registry.load_model(ROOT / "models" / "deeppcb" / "1-int8", activate=False)
    store = Store(tmp_path / "store", pass_rate=1.0)
    lc = Lifecycle(LifecycleSettings(), registry=registry, data_dir=tmp_path)
    lc.store, lc._records = store, Records(store)
    return lc, registry, store


def test_an_inspection_pins_a_version_with_its_own_cards_recipe(tmp_path: Path) -> None:
    """A swap puts the version and its card's recipe in one step, and an inspection reads
    both in one step: reading the recipe and then the detector could pair the new model
    with the old card's floors (lifecycle review, session 32). Swapped as fast as it
    goes while another thread pins."""
    import json
    import shutil
    import threading

    from lineside_inspect.server.registry import Registry

    other = tmp_path / "deeppcb" / "2"  # the same graph, its own floors
    shutil.copytree(MODEL, other)
    doc = json.loads((other / "model.json").read_text())
    doc["version"] = "2"
    doc["default_recipe"]["min_score"] = dict.fromkeys(doc["class_names"], 0.5)
    (other / "model.json").write_text(json.dumps(doc))
    registry = Registry(device="cpu", threads=1)
    cards = {}
    for path in (MODEL, other):
        det = registry.load(path, activate=False).detector
        cards[det.card.version] = card_recipe(det.card)
    assert cards["1"] != cards["2"]
    registry.add_recipe(cards["1"])
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for version in ("2", "1"):
                registry.activate("deeppcb", version, recipe=cards[version])

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen: set[str] = set()
    try:
        # at least 20 000 pins, and on until both versions were seen: a loaded host may
        # not run the swapper within the first 20 000 (a count, not a time, bounds it)
        for i in range(2_000_000):
            rule, det, _ = registry.pin(None)
            assert rule == cards[det.card.version], det.card.version
            seen.add(det.card.version)
            if i >= 20_000 and len(seen) == 2:
                break
    finally:
        stop.set()
        swapper.join()
    assert seen == {"1", "2"}


def test_a_rollback_goes_back_to_a_version_whose_failure_was_cleared(tmp_path: Path) -> None:
    """1-int8 failed its gate against 1, then passed against 1 (cleared) and was admitted;
    2 passed against it and went active. A rollback to 1-int8 was refused: the pass that
    cleared it was against 1, not the active 2 (review, session 32). A version never
    cleared (forced over its failure) is still refused."""
    import json
    import shutil
    import uuid

    from sqlalchemy.orm import Session

    from lineside_inspect.errors import GateRefused
    from lineside_inspect.package import card_digest
    from lineside_inspect.store.models import GateReportRow

    lc, registry, store = _lifecycle(tmp_path)
    for version in ("2", "3"):
        folder = tmp_path / "deeppcb" / version
        shutil.copytree(MODEL, folder)
        doc = json.loads((folder / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps({**doc, "version": version}))
        registry.load_model(folder, activate=False)
    start = datetime.now(UTC) - timedelta(hours=1)

    def gate(candidate: str, against: str, passed: bool, minutes: int) -> None:
        c = registry.detector("deeppcb", candidate).card
        a = registry.detector("deeppcb", against).card
        with Session(store.engine) as s, s.begin():
            s.add(GateReportRow(
                id=uuid.uuid4().hex[:32], created_at=start + timedelta(minutes=minutes),
                box_id=store.box_id, actor="admin", model_name="deeppcb",
                candidate_version=candidate, candidate_sha256=c.sha256,
                against_version=against, against_sha256=a.sha256, golden_name="g",
                golden_version=1, golden_digest="d", passed=passed,
                report={"candidate": {"card_sha256": card_digest(c)},
                        "against": {"card_sha256": card_digest(a)}, "recipe_sha256": "r1",
                        "reasons": [] if passed else ["recall dropped"]}))

    try:
        gate("1-int8", "1", False, 0)
        gate("1-int8", "1", True, 5)  # the failure cleared
        lc.activate("deeppcb", "1-int8", actor="admin")
        gate("2", "1-int8", True, 10)
        lc.activate("deeppcb", "2", actor="admin")
        assert lc.rollback("deeppcb", actor="admin") == "1-int8"
        # 3 failed and was forced: a rollback to it is refused
        gate("3", "1-int8", False, 15)
        lc.activate("deeppcb", "3", actor="admin", force=True, reason="trial")
        gate("2", "3", True, 20)
        lc.activate("deeppcb", "2", actor="admin")
        with pytest.raises(GateRefused, match="deeppcb 3 failed its gate"):
            lc.rollback("deeppcb", actor="admin")
        assert registry.models()["deeppcb"].active == "2"
    finally:
        store.close()


def test_a_failure_judged_with_one_partner_is_not_cleared_by_a_pass_with_another(
        tmp_path: Path) -> None:
    """Under a recipe that fuses a good-only partner, 2 failed its gate with partner card
    P1 (its escapes), then passed with a partner card P2 that flags every part (the same
    recipe name, so the same rules digest): the pass cleared the failure and 2 could go active,
    its escapes hidden by the partner (review, session 41). A pass with
    the partner that judged the failure clears it."""
    import json
    import shutil
    import uuid

    from sqlalchemy.orm import Session

    from lineside_inspect.errors import GateRefused
    from lineside_inspect.package import card_digest
    from lineside_inspect.store.models import GateReportRow

    lc, registry, store = _lifecycle(tmp_path)
    folder = tmp_path / "deeppcb" / "2"
    shutil.copytree(MODEL, folder)
    doc = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**doc, "version": "2"}))
    registry.load_model(folder, activate=False)
    start = datetime.now(UTC) - timedelta(hours=1)
    c = registry.detector("deeppcb", "2").card
    a = registry.detector("deeppcb", "1").card

    def gate(passed: bool, minutes: int, partner: str | None) -> None:
        with Session(store.engine) as s, s.begin():
            s.add(GateReportRow(
                id=uuid.uuid4().hex[:32], created_at=start + timedelta(minutes=minutes),
                box_id=store.box_id, actor="admin", model_name="deeppcb",
                candidate_version="2", candidate_sha256=c.sha256,
                against_version="1", against_sha256=a.sha256, golden_name="g",
                golden_version=1, golden_digest="d", passed=passed,
                report={"candidate": {"card_sha256": card_digest(c)},
                        "against": {"card_sha256": card_digest(a)}, "recipe_sha256": "r1",
                        "fused_with": "board-good 1", "fused_card_sha256": partner,
                        "reasons": [] if passed else ["1 new escape(s)"]}))

    try:
        gate(False, 0, "P1")
        gate(True, 5, "P2")  # another partner card: the failure stands
        with pytest.raises(GateRefused, match="deeppcb 2 failed its gate"):
            lc.activate("deeppcb", "2", actor="admin")
        assert registry.models()["deeppcb"].active == "1"
        gate(True, 10, "P1")  # the partner that judged the failure: cleared
        lc.activate("deeppcb", "2", actor="admin")
        assert registry.models()["deeppcb"].active == "2"
        lc.activate("deeppcb", "1", actor="admin")
        # a failure naming no partner (a release whose gates took none) is cleared by a
        # pass with one, as before: nothing else could clear it
        gate(False, 15, None)
        with pytest.raises(GateRefused, match="deeppcb 2 failed its gate"):
            lc.activate("deeppcb", "2", actor="admin")
        gate(True, 20, "P2")
        lc.activate("deeppcb", "2", actor="admin")
        assert registry.models()["deeppcb"].active == "2"
    finally:
        store.close()


def test_a_card_recipe_that_cannot_serve_now_leaves_the_old_one(tmp_path: Path) -> None:
    """Version 2's card recipe fuses a good-only model that is not loaded: put with the
    activation unchecked, every inspection on the default recipe was a 404 (review,
    session 32). The line keeps the old card's recipe, as before that change."""
    import json
    import shutil

    lc, registry, store = _lifecycle(tmp_path)
    try:
        folder = tmp_path / "deeppcb" / "2"
        shutil.copytree(MODEL, folder)
        doc = json.loads((folder / "model.json").read_text())
        doc["default_recipe"]["anomaly"] = {"model": "nope-good"}
        (folder / "model.json").write_text(json.dumps({**doc, "version": "2"}))
        registry.load_model(folder, activate=False)
        before = card_recipe(registry.detector("deeppcb", "1").card)
        registry.add_recipe(before)
        lc.activate("deeppcb", "2", actor="admin")
        rule, det, fused = registry.pin(None)
        assert (rule, det.card.version, fused) == (before, "2", None)
    finally:
        store.close()



@contextmanager
def _sharing(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Boxes a and b on one SQLite database."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = Store(tmp_path / "a", url, pass_rate=1.0, box_id="box-a")
    b = Store(tmp_path / "b", url, pass_rate=1.0, box_id="box-b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _gate(tmp_path: Path, fp32: Detector, int8: Detector) -> GateReport:
    """A gate report of int8 against fp32 on two images of the sample."""
    lib = GoldenLibrary(tmp_path / "golden")
    items, classes = from_dataset(SAMPLE, "val", limit=2)
    return run_gate(int8, fp32, lib, lib.create("g", items, classes), card_recipe(fp32.card))

def test_gate_reports_and_shadow_runs_listed_are_this_boxs(
        tmp_path: Path, detectors: tuple[Detector, Detector]) -> None:
    """Two boxes sharing a database: box b's gate report and shadow run were listed by box
    a (GET /v1/models/{name}/gates, GET /v1/models/{name}/shadow) as its own, though a
    report carries no box and admits nothing on a (review, session 36)."""
    fp32, int8 = detectors
    with _sharing(tmp_path) as (a, b):
        ra, rb = Records(a), Records(b)
        report = _gate(tmp_path, fp32, int8)
        rb.save_gate(report, "admin-b")
        rb.start_shadow("run-b", model="deeppcb", version="1-int8", sha256=int8.card.sha256,
                        sample_rate=0.5)
        assert [r["id"] for r in rb.gate_reports("deeppcb")] == [report.id]
        assert ra.gate_reports("deeppcb") == []
        run = rb.shadow_run("deeppcb")
        assert run is not None and run.id == "run-b"
        assert ra.shadow_run("deeppcb") is None


def test_a_gate_report_and_admissions_read_are_this_boxs(
        tmp_path: Path, detectors: tuple[Detector, Detector]) -> None:
    """Two boxes sharing a database: box a read box b's gate report by its id
    (GET /v1/gates/{id}) and listed box b's admissions in its lineage
    (GET /v1/models/{name}/lineage) as how its own versions came to judge (review,
    session 37): both are box b's alone."""
    fp32, int8 = detectors
    with _sharing(tmp_path) as (a, b):
        ra, rb = Records(a), Records(b)
        report = _gate(tmp_path, fp32, int8)
        rb.save_gate(report, "admin-b")
        (row,) = rb.gates_of("deeppcb", "1-int8", int8.card.sha256)
        rb.admit(model="deeppcb", version="1-int8", sha256=int8.card.sha256, role="active",
                 actor="admin-b", gate=row, forced=False, reason="", lineage={})
        ra.admit(model="deeppcb", version="1", sha256=fp32.card.sha256, role="active",
                 actor="admin-a", gate=None, forced=True, reason="first", lineage={})
        assert rb.gate_report(report.id)["actor"] == "admin-b"
        with pytest.raises(NotFoundError, match="on this box"):
            ra.gate_report(report.id)
        assert [(x["box_id"], x["version"]) for x in ra.admissions("deeppcb")] == [("box-a", "1")]
        assert [(x["box_id"], x["version"]) for x in rb.admissions("deeppcb")] == [("box-b", "1-int8")]


def test_the_audit_log_listed_is_this_boxs(tmp_path: Path) -> None:
    """Two boxes sharing a database: box a's GET /v1/audit listed box b's activations of a
    model of the same name as its own history (session 37's leftover)."""
    with _sharing(tmp_path) as (a, b):
        ra, rb = Records(a), Records(b)
        ra.audit(actor="admin-a", action="activate", model="deeppcb", version="1")
        rb.audit(actor="admin-b", action="force_activate", model="deeppcb", version="1-int8")
        for records, box, actor in ((ra, "box-a", "admin-a"), (rb, "box-b", "admin-b")):
            for model in (None, "deeppcb"):
                total, items = records.audit_log(model=model)
                assert total == 1 and [(i["box_id"], i["actor"]) for i in items] == [(box, actor)]


def test_a_golden_set_from_a_shared_store_takes_this_boxs_inspections(
        tmp_path: Path, detectors: tuple[Detector, Detector]) -> None:
    """Two boxes sharing a database: a golden set from box a's store (POST /v1/golden,
    ``lineside golden add --store``) took the newest reviewed inspections of every box up
    to its limit, then skipped box b's (their images are on box b): box a's own were left
    out, and with limit 1 it said there was none."""
    fp32, _ = detectors
    image = decode_image((SAMPLE / "images" / "group00041" / "00041000_test.jpg").read_bytes())
    fails = Recipe(name="r", model="deeppcb", default_min_score=0.0)
    with _sharing(tmp_path) as (a, b):
        mine = inspect(image, fp32, fails)
        assert a.save(mine)
        a.review(mine.id, reviewer="qa-a", action="confirm")
        theirs = inspect(image, fp32, fails)  # newer: listed first
        assert b.save(theirs)
        b.review(theirs.id, reviewer="qa-b", action="confirm")
        found, _ = from_store(a, limit=1)
        assert [c.item.source for c in found] == [f"inspection {mine.id} (confirmed)"]
        found, _ = from_store(b, limit=1)
        assert [c.item.source for c in found] == [f"inspection {theirs.id} (confirmed)"]
