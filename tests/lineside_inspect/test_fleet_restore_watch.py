"""A fleet box that keeps the golden set a pull gates with promotes a pulled version, so
it is watched; a power cycle during the watch brings the pulled version back from
``pulled.json`` recorded as a ``restore`` (not an ``activate``, which would end the watch),
and the watch resumes, once (session 47, fleet pass)."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from lineside_inspect.fleet.box.models import ACTOR, Verified
from lineside_inspect.fleet.protocol import AssignedModel, Assignment
from lineside_inspect.lifecycle.golden import GOLDEN_DIR, GoldenLibrary, from_dataset
from lineside_inspect.lifecycle.kept import FLEET_ACTOR
from lineside_inspect.lifecycle.records import Records
from lineside_inspect.package import card_digest, load_package

from .conftest import ROOT, SAMPLE, Running, keyed, start_server
from .test_lifecycle_kept import _package


def _run(config: dict[str, Any]) -> tuple[Running, Any]:
    return start_server(keyed(**config))


def _take(running: Running, dest: Path, version: str) -> None:
    """The puller takes deeppcb ``version`` verified and unpacked at ``dest``."""
    card = load_package(dest).card
    sha = version.rjust(64, "0")
    running.app.state.fleet_models._taken(
        dest, AssignedModel(name="deeppcb", version=version, sha256=sha),
        Verified(name="deeppcb", version=version, sha256=sha, graph_sha256=card.sha256,
                 card_digest=card_digest(card), signer="k"), "pulled")


def _judged_by(box: Running) -> str:
    """The deeppcb version a real inspection of a sample board is judged by."""
    with box.client("line") as line:
        got = line.post("/v1/inspect", params={"recipe": "deeppcb-default"}, content=next(
            (SAMPLE / "images").rglob("*_test.jpg")).read_bytes(),
            headers={"content-type": "image/jpeg"})
    assert got.status_code == 200, got.text
    return str(got.json()["model"]["version"])


def _hub_only_box(tmp_path: Path, *versions: str) -> tuple[dict[str, Any], list[Path]]:
    """A fleet box's config whose deeppcb comes only from the hub (an unreachable one: the
    tests hand it the pulls), its golden set, and deeppcb's packages of ``versions`` in its
    fleet models folder."""
    data = tmp_path / "box"
    packages = [_package(data / "fleet-models", v) for v in versions]
    items, classes = from_dataset(SAMPLE, limit=2)
    GoldenLibrary(data / GOLDEN_DIR).create("deeppcb", items, classes)
    config = {"data_dir": str(data), "store_pass_rate": 1.0,
              "models": [str(ROOT / "models" / "deeppcb-good" / "1")],
              "fleet": {"hub_url": "http://127.0.0.1:9", "token": "t", "line": "L1",
                        "pull_interval_s": 3600, "timeout_s": 1}}
    return config, packages


def test_the_previous_pull_is_kept_while_the_watch_is_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """pulled.json keeps one version a model: the pull before a promoted one (the version
    its watch rolls back to) is kept besides while the watch is open, loaded again at
    start-up (not active) so the watch resumes; once the watch ended, no more (session
    47, fleet previous pass). The second start's audit log fails to read (a database
    failing after the store started): the box starts all the same, said in an ERROR (it
    did not start: session 48)."""
    assert FLEET_ACTOR == ACTOR  # kept.py's copy (lifecycle imports no fleet code)
    config, (one, two) = _hub_only_box(tmp_path, "1", "2")
    data = Path(config["data_dir"])
    first, stop = _run(config)
    try:
        _take(first, one, "1")  # new to the box: active at once
        _take(first, two, "2")  # promoted over the pulled 1, watched
        assert first.app.state.lifecycle.rollout.watching("deeppcb").previous == "1"
    finally:
        stop()

    def failing(self: Records, model: str) -> None:
        raise OperationalError("SELECT audit", {}, sqlite3.OperationalError("disk I/O error"))

    caplog.set_level(logging.ERROR)
    with monkeypatch.context() as m:
        m.setattr(Records, "last_activation", failing)
        second, stop = _run(config)
    try:
        slot = second.app.state.registry.models()["deeppcb"]
        assert (slot.active, sorted(slot.versions)) == ("2", ["1", "2"])
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(m.startswith("fleet models: the audit log's last activation of deeppcb "
                                "not read (OperationalError): pulled deeppcb 2 is restored")
                   for m in said), said
        with second.client("reviewer") as rev:
            watch = rev.get("/v1/models/deeppcb/rollout").json()
        assert (watch["state"], watch["version"], watch["previous"]) == ("watching", "2", "1")
        second.app.state.lifecycle.rollout.stop("deeppcb", "ended by hand")  # recorded
    finally:
        stop()

    third, stop = _run(config)
    try:  # the watch ended: 1 is kept no more, 2 judges
        slot = third.app.state.registry.models()["deeppcb"]
        assert (slot.active, sorted(slot.versions)) == ("2", ["2"])
        assert third.app.state.lifecycle.rollout.watching("deeppcb") is None
        assert (data / "fleet-models" / "deeppcb" / "1").is_dir()  # no folder removed
    finally:
        stop()


def test_the_open_promotion_is_read_once_at_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The restore read the open promotion twice: for the pulled version its watch rolls
    back to, then for the watch. The first read failing (a database failing for a moment
    at start) and the second not, 1 was not loaded and the watch was said unable to resume
    ("load 1 again ..., then roll back and promote 2 again"), though previous.json kept 1
    for the next start (session 49). One read feeds both: failing, neither is done, said
    once; the next start loads 1 and resumes the watch."""
    config, (one, two) = _hub_only_box(tmp_path, "1", "2")
    first, stop = _run(config)
    try:
        _take(first, one, "1")
        _take(first, two, "2")  # promoted over 1, watched
    finally:
        stop()

    read = Records.open_promotion
    calls: list[str] = []

    def once_failing(self: Records, model: str) -> Any:
        calls.append(model)
        if len(calls) == 1:
            raise OperationalError("SELECT audit", {}, sqlite3.OperationalError("disk I/O"))
        return read(self, model)

    caplog.set_level(logging.WARNING)
    with monkeypatch.context() as m:
        m.setattr(Records, "open_promotion", once_failing)
        second, stop = _run(config)
    try:
        said = [r.getMessage() for r in caplog.records]
        assert not [s for s in said if "its watch cannot resume" in s], said
        assert any(s.startswith("fleet models: the watch of pulled deeppcb 2 not looked up")
                   for s in said), said
        assert calls == ["deeppcb"]
        slot = second.app.state.registry.models()["deeppcb"]
        assert (slot.active, sorted(slot.versions)) == ("2", ["2"])
        assert second.app.state.fleet_models.previous.models["deeppcb"].version == "1"
    finally:
        stop()
    third, stop = _run(config)
    try:
        slot = third.app.state.registry.models()["deeppcb"]
        assert (slot.active, sorted(slot.versions)) == ("2", ["1", "2"])
        watch = third.app.state.lifecycle.rollout.watching("deeppcb")
        assert watch is not None and (watch.version, watch.previous) == ("2", "1")
    finally:
        stop()


def test_a_pulled_promotions_watch_resumes_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "box"
    dest = _package(data / "fleet-models", "2")  # where a pull unpacks deeppcb 2
    card = load_package(dest).card
    items, classes = from_dataset(SAMPLE, limit=2)
    GoldenLibrary(data / GOLDEN_DIR).create("deeppcb", items, classes)  # a pull gates on it
    config = {"data_dir": str(data), "store_pass_rate": 1.0,
              # no hub answers there: the box serves what it has
              "fleet": {"hub_url": "http://127.0.0.1:9", "token": "t", "line": "L1",
                        "pull_interval_s": 3600, "timeout_s": 1}}
    first, stop = _run(config)
    try:  # the puller takes the verified package: promoted from the config's 1, watched
        sha = "0" * 64
        first.app.state.fleet_models._taken(
            dest, AssignedModel(name="deeppcb", version="2", sha256=sha),
            Verified(name="deeppcb", version="2", sha256=sha, graph_sha256=card.sha256,
                     card_digest=card_digest(card), signer="k"), "pulled")
        with first.client("reviewer") as rev:
            watch = rev.get("/v1/models/deeppcb/rollout").json()
            promoted = rev.get("/v1/audit", params={"model": "deeppcb"}).json()["items"][0]
        assert (watch["state"], watch["version"], watch["previous"]) == ("watching", "2", "1")
        assert (promoted["action"], promoted["actor"]) == ("promote", "fleet")
    finally:
        stop()  # the power cycle, during the watch

    second, stop = _run(config)
    try:
        lifecycle = second.app.state.lifecycle
        assert second.app.state.registry.models()["deeppcb"].active == "2"
        with second.client("reviewer") as rev:
            watch = rev.get("/v1/models/deeppcb/rollout").json()
            audit = rev.get("/v1/audit", params={"model": "deeppcb"}).json()["items"]
        assert {k: watch[k] for k in ("state", "version", "previous", "recipe",
                                      "gate_report_id", "inspections")} == {
            "state": "watching", "version": "2", "previous": "1", "recipe": promoted[
                "details"]["rollout"]["recipe"],
            "gate_report_id": promoted["details"]["rollout"]["gate_report_id"],
            "inspections": 0}
        since = audit[:next(i for i, a in enumerate(audit) if a["id"] == promoted["id"])]
        # the fleet's restore, then the watch resumed: no startup entry, one resume
        assert [(a["action"], a["actor"], a["version"]) for a in since] == [
            ("rollout_resumed", "lineside", "2"), ("restore", "fleet", "2")]
        # asked again (the kept models' restore and the fleet's both ask): not resumed twice
        running = lifecycle.rollout.get("deeppcb")
        assert lifecycle.resume_watch("deeppcb", "2") is None
        assert lifecycle.rollout.get("deeppcb") is running and running.state == "watching"
        assert lifecycle.records.audit_log(model="deeppcb", limit=1)[1][0]["action"] == \
            "rollout_resumed"
    finally:
        stop()


def test_a_pulled_promotion_rolled_back_restarts_on_the_version_it_went_back_to(
        tmp_path: Path) -> None:
    """A box with deeppcb only from the hub pulls 1, then 2 (promoted, watched); the watch
    rolls 2 back to 1 by itself; a power cycle. The box judges with 1 again (a ``restore``
    by ``fleet``, said in the log), 2 stays loaded beside, left; the hub still assigning 2
    does not make the box take it again (it would loop: session 48, rollback pass); 3,
    assigned next, is promoted over 1, which is kept as its way back across a restart."""
    config, (one, two, three) = _hub_only_box(tmp_path, "1", "2", "3")
    first, stop = _run(config)
    try:
        _take(first, one, "1")
        _take(first, two, "2")
        rollout = first.app.state.lifecycle.rollout
        # past a bound at once (any false reject is one too many): the watch's own check
        rollout.bounds = rollout.bounds.model_copy(update={"max_false_rejects": -1})
        rollout.check()
        assert rollout.get("deeppcb").state == "rolled_back"
        assert first.app.state.registry.models()["deeppcb"].active == "1"
    finally:
        stop()  # the power cycle, before any pull marked 2 as left

    for restart in range(2):  # the second start: the record stands, 1 again
        if restart == 1:  # an operator removed the rejected package: 1 is restored still
            two.rename(tmp_path / "two-removed")
        box, stop = _run(config)
        try:
            slot = box.app.state.registry.models()["deeppcb"]
            assert (slot.active, sorted(slot.versions)) == ("1", ["1", "2"][:2 - restart])
            puller = box.app.state.fleet_models
            assert puller.state.models["deeppcb"].held
            assert puller.previous.models["deeppcb"].version == "1"
            audit = box.app.state.lifecycle.records.audit_log(model="deeppcb", limit=3)[1]
            assert [(a["action"], a["actor"], a["version"]) for a in audit[:1]] == [
                ("restore", "fleet", "1")]
            assert "went back from; 2 stays left on the box" in audit[0]["reason"]
            assert box.app.state.lifecycle.rollout.watching("deeppcb") is None
            assert _judged_by(box) == "1"
            if restart == 0:  # the hub still assigns 2: left on the box, not taken again
                sha = "2".rjust(64, "0")
                puller._apply(Assignment(revision=1, models=[
                    AssignedModel(name="deeppcb", version="2", sha256=sha)]))
                assert slot.active == "1" and puller.errors() == [
                    "deeppcb 2 assigned, 1 active: left on the box (by hand or a rollback), "
                    "not forced back"]
            else:  # the hub assigns 3: promoted over 1, which is its way back now
                _take(box, three, "3")
                assert box.app.state.lifecycle.rollout.watching("deeppcb").previous == "1"
                assert puller.previous.models["deeppcb"].promoted == "3"
        finally:
            stop()

    box, stop = _run(config)
    try:  # 3's watch resumes, 1 loaded again to roll back to (2 no longer the pull)
        slot = box.app.state.registry.models()["deeppcb"]
        assert (slot.active, sorted(slot.versions)) == ("3", ["1", "3"])
        watch = box.app.state.lifecycle.rollout.watching("deeppcb")
        assert watch is not None and (watch.version, watch.previous) == ("3", "1")
    finally:
        stop()


@pytest.mark.parametrize("how", ["watch", "hand"])
def test_a_rollback_the_audit_log_lost_is_kept_by_the_box(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Pulled 2 promoted over pulled 1, then rolled back to 1 by its watch while the
    database fails: the rollback's audit entry is lost, so the audit log's last activation
    stays 2's promotion. The puller, told by the lifecycle at the rollback, marks 2 held at
    once and keeps 1: the restart, the database working again, judges with 1, 2 not active,
    its watch not resumed (it did: session 48's review). ``hand``: an admin's rollback then
    is undone, as an activation that cannot be recorded is (5xx; session 49: it stood and
    answered 5xx, and a retry went back twice): nothing held, 2 judges."""
    assert FLEET_ACTOR == ACTOR  # kept.py's copy (lifecycle imports no fleet code)
    config, (one, two) = _hub_only_box(tmp_path, "1", "2")
    data = Path(config["data_dir"])
    first, stop = _run(config)
    try:
        _take(first, one, "1")
        _take(first, two, "2")
        rollout = first.app.state.lifecycle.rollout

        def failing(self: Records, **_: Any) -> None:
            raise OperationalError("INSERT audit", {}, sqlite3.OperationalError("disk I/O error"))

        with monkeypatch.context() as m:
            m.setattr(Records, "audit", failing)
            if how == "watch":
                rollout.bounds = rollout.bounds.model_copy(update={"max_false_rejects": -1})
                rollout.check()
                assert rollout.get("deeppcb").state == "rolled_back"
            else:
                with first.client("admin") as admin:
                    got = admin.post("/v1/models/deeppcb/rollback", params={"from": "2"})
                assert got.status_code >= 500, got.text  # its entry not written: undone
        pulled = json.loads((data / "fleet-models" / "pulled.json").read_text())
        if how == "hand":
            assert first.app.state.registry.models()["deeppcb"].active == "2"
            assert pulled["models"]["deeppcb"]["held"] is False
            assert rollout.watching("deeppcb") is not None  # still watched
            return
        assert first.app.state.registry.models()["deeppcb"].active == "1"
        last = first.app.state.lifecycle.records.last_activation("deeppcb")
        assert (last["action"], last["version"]) == ("promote", "2")  # the entry lost
        assert pulled["models"]["deeppcb"]["held"] is True  # written at the rollback
        previous = json.loads((data / "fleet-models" / "previous.json").read_text())
        assert previous["models"]["deeppcb"]["version"] == "1"
    finally:
        stop()

    box, stop = _run(config)
    try:
        slot = box.app.state.registry.models()["deeppcb"]
        assert (slot.active, sorted(slot.versions)) == ("1", ["1", "2"])
        assert box.app.state.lifecycle.rollout.watching("deeppcb") is None
        audit = box.app.state.lifecycle.records.audit_log(model="deeppcb", limit=1)[1]
        assert [(a["action"], a["actor"], a["version"]) for a in audit] == [
            ("restore", "fleet", "1")]
        assert "a rollback from 2 not in the audit log" in audit[0]["reason"]
        assert _judged_by(box) == "1"
        # an admin takes 2 up again (recorded), then a power cycle
        with box.client("admin") as admin:
            got = admin.post("/v1/models/deeppcb/activate",
                             json={"version": "2", "force": True, "reason": "fixed"})
        assert got.status_code == 200, got.text
        assert box.app.state.fleet_models.state.models["deeppcb"].held is False
    finally:
        stop()
    box, stop = _run(config)
    try:  # 2 judges: the held mark, left set, was read as a rollback lost (last read)
        assert box.app.state.registry.models()["deeppcb"].active == "2"
        audit = box.app.state.lifecycle.records.audit_log(model="deeppcb", limit=1)[1]
        assert [(a["action"], a["version"]) for a in audit] == [("activate", "2")]  # no restore of 1
    finally:
        stop()


def test_a_rollback_before_the_pull_is_recorded_marks_it_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pulled 2 promoted over pulled 1 and rolled back by its watch before pulled.json
    names 2 (the database failing: its entry lost). Told then, the puller found pull 1 and
    marked nothing: pulled.json named 2 not held until the next pull, and a restart made
    the rejected 2 judge again (session 49). Written held: the restart judges with 1."""
    config, (one, two) = _hub_only_box(tmp_path, "1", "2")
    first, stop = _run(config)
    try:
        _take(first, one, "1")
        puller, lifecycle = first.app.state.fleet_models, first.app.state.lifecycle
        activate = puller._activate

        def then_rolled_back(*args: Any) -> None:
            activate(*args)
            rollout = lifecycle.rollout
            rollout.bounds = rollout.bounds.model_copy(update={"max_false_rejects": -1})
            with monkeypatch.context() as m:
                m.setattr(Records, "audit", lambda self, **_: (_ for _ in ()).throw(
                    OperationalError("INSERT audit", {}, sqlite3.OperationalError("disk"))))
                rollout.check()
            assert rollout.get("deeppcb").state == "rolled_back"

        monkeypatch.setattr(puller, "_activate", then_rolled_back)
        _take(first, two, "2")
        assert first.app.state.registry.models()["deeppcb"].active == "1"
        pulled = json.loads((Path(config["data_dir"]) / "fleet-models" / "pulled.json")
                            .read_text())
        assert pulled["models"]["deeppcb"] == {**pulled["models"]["deeppcb"], "version": "2",
                                               "held": True}
    finally:
        stop()
    box, stop = _run(config)
    try:
        assert box.app.state.registry.models()["deeppcb"].active == "1"
        assert box.app.state.lifecycle.rollout.watching("deeppcb") is None
    finally:
        stop()
