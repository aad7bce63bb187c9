"""Versions of the good-only model a recipe fuses with its detector are gated the way the
line judges them: the recipe's detector run once per image, its detections fused with
each version's finding (a part fails on a counted defect OR the anomaly score). Until
then such a version was gated only alone (a verdict the line never gives) and refused
under the fused recipe (docs/security.md session 41, "a new version of the good-only
partner itself"). Real onnxruntime: the bundled detector, a copy of it that finds
nothing, and the tiny real good-only graph of test_gate_fused.py at two thresholds."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from lineside_inspect.errors import ConfigError, GateRefused
from lineside_inspect.imageio import decode_image
from lineside_inspect.inspector import anomaly_finding, inspect, with_finding
from lineside_inspect.lifecycle.gate import format_report, rules_digest, run_gate
from lineside_inspect.lifecycle.golden import GOLDEN_DIR
from lineside_inspect.lifecycle.schemas import StoredGateReport
from lineside_inspect.package import card_digest
from lineside_inspect.recipes import Recipe
from lineside_inspect.references import Reference
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.server.app import create_app

from .conftest import MODEL, ROLE_KEYS, ROOT, keyed
from .test_gate_fused import FUSED, GOOD_BOARD, _golden, _partner, _png, assert_served
from .test_lifecycle_api import variant


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_parts(tmp_path_factory.mktemp("partner-gate"))


def make_parts(root: Path) -> dict[str, Any]:
    """board-good 1 (threshold 0.5: fails the foreign square) and 2 (threshold 1.0:
    passes it), the bundled detector and its blind copy (every threshold 0.999)."""
    blind = variant(root, "blind", 0.999)
    strict, lenient = _partner(root, "1"), _partner(root, "2", threshold=1.0)
    return {"root": root, "blind": blind, "strict": strict, "lenient": lenient,
            "det": Detector(MODEL, device="cpu", threads=1),
            "blind_det": Detector(blind, device="cpu", threads=1),
            "strict_det": Detector(strict, device="cpu", threads=1),
            "lenient_det": Detector(lenient, device="cpu", threads=1)}


def test_a_good_only_version_is_gated_with_the_recipes_detector_as_the_line_judges(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """The lenient version misses the square on the defective board, which the detector
    fails on the line: no escape for it (alone it was charged one, and the gate failed).
    The strict version's square on a good board is its false reject."""
    det, strict, lenient = parts["det"], parts["strict_det"], parts["lenient_det"]
    lib, manifest = _golden(tmp_path / "golden")
    report = run_gate(lenient, strict, lib, manifest, FUSED, partner=det)
    c, a = report.candidate, report.against
    assert (c.model, c.version, a.version) == ("board-good", "2", "1")
    assert (c.escapes, c.new_escapes, a.escapes) == (0, 0, 0), report
    assert (c.false_rejects, a.false_rejects) == (0, 1)
    assert report.passed, report.reasons
    assert (report.fused_with, report.fused_kind) == ("deeppcb 1", "detector")
    assert report.fused_card_sha256 == card_digest(det.card)
    assert "fused with detector deeppcb 1" in format_report(report)

    # each verdict is the one the line gives (the good-only model fused inside inspect)
    assert_served(lib, manifest, [lenient, strict], det)



def test_a_good_only_versions_false_reject_counts_and_the_detector_decides_escapes(
        parts: dict[str, Any], tmp_path: Path) -> None:
    det, strict, lenient = parts["det"], parts["strict_det"], parts["lenient_det"]
    lib, manifest = _golden(tmp_path / "golden")
    # the strict candidate fails on the false reject its square on a good board adds
    back = run_gate(strict, lenient, lib, manifest, FUSED, partner=det)
    assert (back.candidate.false_rejects, back.against.false_rejects) == (1, 0)
    assert not back.passed and "1 false reject(s)" in back.reasons[0]

    # the detector decides: with its blind copy the lenient version's miss is an escape
    pinned = FUSED.model_copy(update={"model_version": "blind"})
    blind = run_gate(lenient, strict, lib, manifest, pinned, partner=parts["blind_det"])
    assert (blind.candidate.escapes, blind.candidate.new_escapes) == (1, 1)
    assert blind.fused_with == "deeppcb blind" and not blind.passed


def test_a_good_only_version_without_the_recipes_detector_or_with_another_is_refused(
        parts: dict[str, Any], tmp_path: Path) -> None:
    det, strict, lenient = parts["det"], parts["strict_det"], parts["lenient_det"]
    lib, manifest = _golden(tmp_path / "golden")
    with pytest.raises(ConfigError, match="fuses good-only model board-good with detector "
                                          "deeppcb: the gate judges each version of "
                                          "board-good with that detector"):
        run_gate(lenient, strict, lib, manifest, FUSED)
    with pytest.raises(ConfigError, match="anomaly model board-good 1 was given in its place"):
        run_gate(lenient, strict, lib, manifest, FUSED, partner=strict)
    pinned = FUSED.model_copy(update={"model_version": "blind"})
    with pytest.raises(ConfigError, match="with detector deeppcb blind; detector model "
                                          "deeppcb 1 was given in its place"):
        run_gate(lenient, strict, lib, manifest, pinned, partner=det)
    with pytest.raises(ConfigError, match="detector model deeppcb 1 is not a version of "
                                          "board-good"):
        run_gate(lenient, det, lib, manifest, FUSED, partner=det)


def test_a_good_only_finding_fused_with_a_detectors_inspection_is_the_served_verdict(
        parts: dict[str, Any]) -> None:
    """:func:`with_finding` on a reference detector under an unchanged gate: a frame that
    matches its golden passes without the good-only model (as served); one with the
    foreign square fails on its finding, as ``inspect(anomaly_model=)`` judges it."""
    ref_det = Detector(ROOT / "models" / "deeppcb-ref" / "1", device="cpu", threads=1)
    strict = parts["strict_det"]
    recipe = Recipe.model_validate({"name": "ref-fused", "model": "deeppcb-ref",
                                    "anomaly": {"model": "board-good"},
                                    "unchanged_gate": {"floor": 15}})
    clean = _png(GOOD_BOARD, False)
    golden = Reference.from_bytes(None, clean)
    for data, expected in ((clean, "pass"), (_png(GOOD_BOARD, True), "fail")):
        image = decode_image(data)
        done = inspect(image, ref_det, recipe, reference=golden)
        unchanged = done.gate is not None and done.gate.unchanged
        assert unchanged == (expected == "pass")
        fused = with_finding(done, strict, None if unchanged else
                             anomaly_finding(image, strict, recipe))
        served = inspect(image, ref_det, recipe, reference=golden, anomaly_model=strict)
        assert (fused.verdict, served.verdict) == (expected, expected)
        assert [r.rule for r in fused.reasons] == [r.rule for r in served.reasons]
        assert fused.fused_with == served.fused_with == "board-good 1"
        assert fused.result().model.name == "deeppcb-ref"
    with pytest.raises(ValueError, match="made with no good-only finding"):
        with_finding(fused, strict, None)


def _lifecycle(tmp_path: Path, parts: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A lifecycle with require_gate on a registry (deeppcb 1, board-good 1 active,
    board-good 2 loaded, the fused recipe) and a real SQLite store."""
    from lineside_inspect.lifecycle.config import LifecycleSettings
    from lineside_inspect.lifecycle.golden import GOLDEN_DIR
    from lineside_inspect.lifecycle.manager import Lifecycle
    from lineside_inspect.lifecycle.records import Records
    from lineside_inspect.server.registry import Registry
    from lineside_inspect.store import Store

    registry = Registry(device="cpu", threads=1)
    registry.load_model(MODEL)
    registry.load_model(parts["strict"])
    registry.load_model(parts["lenient"], activate=False)
    registry.add_recipe(FUSED)
    store = Store(tmp_path / "store", pass_rate=1.0)
    settings = LifecycleSettings.model_validate({"gate": {"require_gate": True}})
    lc = Lifecycle(settings, registry=registry, data_dir=tmp_path)
    lc.store, lc._records = store, Records(store)
    _golden(tmp_path / GOLDEN_DIR)
    return lc, registry, store


def test_a_servers_gate_of_a_good_only_version_under_the_fused_recipe_admits_it(
        parts: dict[str, Any], tmp_path: Path) -> None:
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        with pytest.raises(GateRefused, match="has not been gated"):
            lc.activate("board-good", "2", actor="admin")
        report = lc.gate("board-good", "2", golden="g", recipe="fused", actor="admin")
        assert report.passed and report.candidate.escapes == 0, report.reasons
        assert (report.fused_with, report.fused_kind) == ("deeppcb 1", "detector")
        stored = StoredGateReport.model_validate(lc.records.gate_report(report.id))
        assert (stored.fused_with, stored.fused_kind) == ("deeppcb 1", "detector")
        (entry,) = lc.records.audit_log(model="board-good", action="gate")[1]
        assert entry["details"]["fused_with"] == "deeppcb 1"

        # require_gate: the pass under the fused recipe admits it
        done = lc.activate("board-good", "2", actor="admin")
        assert done == {"forced": False, "gate_report_id": report.id}
        assert registry.models()["board-good"].active == "2"

        # a promotion's watch counts inspections by the detector that judged them: refused
        with pytest.raises(ConfigError, match="a promotion's watch counts inspections by the "
                                              "model that judged them, deeppcb there"):
            lc.promote("board-good", "1", golden="g", recipe="fused", actor="admin")
        # a recipe that neither judges with nor fuses the model is refused as before
        registry.add_recipe(Recipe(name="plain", model="deeppcb"))
        with pytest.raises(ConfigError, match="recipe plain judges model deeppcb, not board-good"):
            lc.gate("board-good", "1", golden="g", recipe="plain", actor="admin")
    finally:
        store.close()


def test_a_servers_gate_of_a_good_only_version_takes_the_detector_the_recipe_pins(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """A recipe pinning the blind detector: the gate judges with it, as that recipe's
    inspections are judged (the lenient version's miss is then an escape)."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(parts["blind"], activate=False)
        registry.add_recipe(FUSED.model_copy(update={"name": "pinned", "model_version": "blind"}))
        report = lc.gate("board-good", "2", golden="g", recipe="pinned", actor="admin")
        assert (report.fused_with, report.recipe) == ("deeppcb blind", "pinned")
        assert (report.candidate.escapes, report.candidate.new_escapes) == (1, 1)
        assert not report.passed
        with pytest.raises(GateRefused, match="board-good 2 failed its gate"):
            lc.activate("board-good", "2", actor="admin")
    finally:
        store.close()


def test_the_gate_command_takes_the_detector_for_a_good_only_version(
        parts: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    _golden(tmp_path / "golden")
    recipe = tmp_path / "fused.yaml"
    recipe.write_text(yaml.safe_dump(FUSED.model_dump(mode="json", exclude_none=True)))
    base = ["gate", str(parts["lenient"]), "--against", str(parts["strict"]), "--golden", "g",
            "--data-dir", str(tmp_path), "--threads", "1"]
    args = [*base, "--recipe", str(recipe)]
    cli = CliRunner()
    r = cli.invoke(app, args)
    assert r.exit_code == 2 and "give the detector's package with --fused-with" in r.output, r.output
    r = cli.invoke(app, [*args, "--fused-with", str(parts["strict"])])
    assert r.exit_code == 2 and "anomaly model board-good 1 was given in its place" in r.output
    r = cli.invoke(app, [*args, "--fused-with", str(MODEL)])
    assert r.exit_code == 0, r.output
    assert "fused with detector deeppcb 1" in r.output and "PASSED" in r.output

    # no --recipe: the --fused-with detector's card recipe, when it fuses this model
    fusing = variant(tmp_path, "fusing", 0.5)
    card = json.loads((fusing / "model.json").read_text())
    card["default_recipe"]["anomaly"] = {"model": "board-good"}
    (fusing / "model.json").write_text(json.dumps(card))
    r = cli.invoke(app, [*base, "--fused-with", str(fusing), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert (got["recipe"], got["fused_with"], got["fused_kind"]) == (
        "deeppcb-default", "deeppcb fusing", "detector")


def test_the_gate_command_refuses_a_recipe_the_server_refuses_in_its_words(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """A recipe file whose good-only model fuses another (the server refuses putting it)
    was taken as a fusion: the command asked for the partner's package, then called the
    good-only model a detector. A card recipe taken without --recipe that fuses nothing
    said only that it judged another model (session 41 gate review)."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    _golden(tmp_path / "golden")
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"name": "own", "model": "board-good",
                                   "anomaly": {"model": "board-good"}}))
    base = ["gate", str(parts["lenient"]), "--against", str(parts["strict"]), "--golden", "g",
            "--data-dir", str(tmp_path), "--threads", "1"]
    cli = CliRunner()
    for extra in ([], ["--fused-with", str(parts["strict"])], ["--fused-with", str(MODEL)]):
        r = cli.invoke(app, [*base, "--recipe", str(own), *extra])
        said = " ".join(r.output.split())
        assert r.exit_code == 2, said
        assert "model board-good is itself an anomaly model: leave out anomaly.model" in said
        assert "Traceback" not in said and "detector board-good" not in said
    # no --recipe: the --fused-with detector's card recipe fuses nothing, and says so
    r = cli.invoke(app, [*base, "--fused-with", str(MODEL)])
    said = " ".join(r.output.split())
    assert r.exit_code == 2, said
    assert ("recipe deeppcb-default, the card recipe of deeppcb (no --recipe given), fuses "
            "no good-only model with a detector: --fused-with deeppcb 1 has nothing to be "
            "fused with; give the recipe that fuses the two with --recipe") in said


# -- a pass made with another partner than the recipe fuses now (session 42) -------------

@contextmanager
def gating_server(tmp_path: Path, line: Recipe,
                  gate: dict[str, Any] | None = None) -> Iterator[TestClient]:
    """The app with require_gate (and ``gate``'s other lifecycle.gate settings) and a
    store: the bundled deeppcb 1 active, :func:`_twin` loaded beside it, recipe ``line``
    put and golden set g made; an admin's client."""
    roots = tmp_path / "models"
    twin = _twin(roots)
    _golden(tmp_path / GOLDEN_DIR)
    settings = keyed(data_dir=str(tmp_path), model_roots=[str(ROOT / "models"), str(roots)],
                     store_pass_rate=1.0, lifecycle={"gate": {"require_gate": True, **(gate or {})}})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {ROLE_KEYS['admin']}"
        r = client.post("/v1/models", json={"path": str(twin), "activate": False})
        assert r.status_code == 200, r.text
        r = client.put(f"/v1/recipes/{line.name}",
                       json=line.model_dump(mode="json", exclude_none=True))
        assert r.status_code == 200, r.text
        yield client


def _twin(root: Path) -> Path:
    """models/deeppcb/1 as version ``twin``, its card otherwise the same: the same
    verdicts, so it passes against version 1 with whichever partner."""
    dst = root / "deeppcb" / "twin"
    shutil.copytree(MODEL, dst)
    card = json.loads((dst / "model.json").read_text())
    (dst / "model.json").write_text(json.dumps({**card, "version": "twin"}))
    return dst


def test_a_detectors_pass_with_partner_1_no_longer_admits_once_partner_2_judges(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """Until session 42 the pass made with board-good 1 admitted deeppcb twin (activation,
    shadow, a recipe's pin) after board-good 2 was activated, though the line then judges
    twin with 2; gated again with 2, the new pass admits it."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        first = lc.gate("deeppcb", "twin", golden="g", recipe="fused", actor="admin")
        assert first.passed and first.fused_with == "board-good 1", first.reasons
        assert lc.gate("board-good", "2", golden="g", recipe="fused", actor="admin").passed
        lc.activate("board-good", "2", actor="admin")

        said = (f"deeppcb twin has no passing gate report that judged it as the line would "
                f"now (lifecycle.gate.require_gate): its passing gate report {first.id} was "
                "judged with board-good 1 under recipe fused, whose partner is board-good 2 "
                'now. Gate it again, with what the recipe fuses now: POST '
                '/v1/models/deeppcb/gate {"version": "twin", "golden": "g", "recipe": "fused"}')
        with pytest.raises(GateRefused) as refused:
            lc.activate("deeppcb", "twin", actor="admin")
        assert said in refused.value.message
        with pytest.raises(GateRefused, match="whose partner is board-good 2 now"):
            lc.start_shadow("deeppcb", "twin", sample_rate=None, actor="admin")
        pin = FUSED.model_copy(update={"name": "pin", "model_version": "twin"})
        with pytest.raises(GateRefused, match="recipe pin pins deeppcb twin, which may not "
                                              "judge parts: deeppcb twin has no passing"):
            lc.put_recipe(pin, actor="admin")
        assert registry.models()["deeppcb"].active == "1"

        again = lc.gate("deeppcb", "twin", golden="g", recipe="fused", actor="admin")
        assert again.passed and again.fused_with == "board-good 2", again.reasons
        assert lc.activate("deeppcb", "twin", actor="admin") == {
            "forced": False, "gate_report_id": again.id}
    finally:
        store.close()


def test_a_good_only_versions_pass_with_detector_1_no_longer_admits_once_another_judges(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """The other way round: board-good 2's pass made with deeppcb 1 after deeppcb twin is
    activated. Forced with a reason, the admission is recorded with the pass it overrode
    and why that pass no longer admitted (session 43: it recorded no report)."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        passed = lc.gate("board-good", "2", golden="g", recipe="fused", actor="admin")
        assert passed.passed and passed.fused_with == "deeppcb 1"
        assert lc.gate("deeppcb", "twin", golden="g", recipe="fused", actor="admin").passed
        lc.activate("deeppcb", "twin", actor="admin")
        with pytest.raises(GateRefused, match=f"its passing gate report {passed.id} was "
                                              "judged with deeppcb 1 under recipe fused, whose "
                                              "partner is deeppcb twin now"):
            lc.activate("board-good", "2", actor="admin")
        done = lc.activate("board-good", "2", actor="admin", force=True, reason="line down")
        assert done == {"forced": True, "gate_report_id": passed.id}
        (entry,) = lc.records.audit_log(model="board-good", action="force_activate")[1]
        assert (entry["reason"], entry["actor"]) == ("line down", "admin")
        assert (entry["details"]["gate_report_id"], entry["details"]["gate_passed"]) == (
            passed.id, True)
        assert "whose partner is deeppcb twin now" in entry["details"]["gate_stale"]
        admitted = lc.records.admissions("board-good")[0]
        assert (admitted["gate_report_id"], admitted["forced"]) == (passed.id, True)
        assert registry.models()["board-good"].active == "2"
    finally:
        store.close()


def test_a_pass_made_alone_or_fused_admits_only_while_its_recipe_still_does_so(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """A pass under a recipe fusing nothing stops admitting once the recipe fuses a
    partner, a fused pass once it fuses none (also in a recipe being put); a report from
    before gates named the partner (none) keeps admitting under a recipe fusing nothing,
    and is stale under one that fuses a partner."""
    from sqlalchemy.orm import Session

    from lineside_inspect.store.models import GateReportRow

    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        fused = lc.gate("deeppcb", "twin", golden="g", recipe="fused", actor="admin")
        # a put in the place of fused that pins twin and fuses nothing: judged by it
        alone = Recipe(name="fused", model="deeppcb", model_version="twin")
        with pytest.raises(GateRefused, match=f"report {fused.id} was judged with board-good 1 "
                                              "under recipe fused, which fuses no partner now"):
            lc.put_recipe(alone, actor="admin")
        assert registry.recipe("fused") == FUSED

        registry.add_recipe(Recipe(name="line", model="deeppcb"))
        plain = lc.gate("deeppcb", "twin", golden="g", recipe="line", actor="admin")
        assert plain.passed and plain.fused_with is None
        # line fuses board-good now, and fused nothing: neither pass holds
        registry.add_recipe(FUSED.model_copy(update={"name": "line"}))
        registry.add_recipe(Recipe(name="fused", model="deeppcb"))
        with pytest.raises(GateRefused, match=f"report {plain.id} was judged alone under "
                                              "recipe line, whose partner is board-good 1 now"):
            lc.activate("deeppcb", "twin", actor="admin")

        # a row from before gates named the partner (no fused_*), made under fused when it
        # fused nothing (its rules: session 43 compares them too)
        alone_rules = rules_digest(Recipe(name="fused", model="deeppcb"))
        # fused alone judges deeppcb from here (with line too, a pass under line would be
        # needed as well: session 43)
        registry.restore_recipe("line", None)
        with Session(store.engine) as s, s.begin():
            s.delete(s.get(GateReportRow, plain.id))
            row = s.get(GateReportRow, fused.id)
            assert row is not None
            row.report = {**{k: v for k, v in row.report.items()
                             if k not in ("fused_with", "fused_kind", "fused_card_sha256")},
                          "recipe_sha256": alone_rules}
        registry.add_recipe(FUSED)
        with pytest.raises(GateRefused, match=f"report {fused.id} was judged alone under "
                                              "recipe fused, whose partner is board-good 1"):
            lc.activate("deeppcb", "twin", actor="admin")
        registry.add_recipe(Recipe(name="fused", model="deeppcb"))
        assert lc.activate("deeppcb", "twin", actor="admin")["gate_report_id"] == fused.id
    finally:
        store.close()


def test_a_gate_report_whose_stored_text_does_not_read_admits_nothing_and_is_no_500(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """Review of session 42: a report row holding text that is not JSON, or JSON that is
    not an object, or a side that is not one (a hand-edited row, a foreign writer: SQLite
    keeps any text) made every activation of that version an AttributeError or a
    JSONDecodeError (a 500). It now admits nothing (409); a failed row still refuses."""
    from sqlalchemy import text

    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        passed = lc.gate("deeppcb", "twin", golden="g", recipe="fused", actor="admin")
        assert passed.passed, passed.reasons
        for odd in ("not json {", "[1, 2]", '{"candidate": "x", "recipe": 7}'):
            with store.engine.begin() as c:
                c.execute(text("UPDATE gate_reports SET report = :r WHERE id = :i"),
                          {"r": odd, "i": passed.id})
            with pytest.raises(GateRefused, match="deeppcb twin has not been gated against "
                                                  "the active version"):
                lc.activate("deeppcb", "twin", actor="admin")
        # a failed row whose reasons are not a list of text: refused, saying it failed
        with store.engine.begin() as c:
            c.execute(text("UPDATE gate_reports SET passed = 0, report = :r WHERE id = :i"),
                      {"r": '{"reasons": [1, {"a": 2}]}', "i": passed.id})
        with pytest.raises(GateRefused, match=f"failed its gate \\(report {passed.id} .*: "
                                              "1; {'a': 2}\\)"):
            lc.activate("deeppcb", "twin", actor="admin")
        assert registry.models()["deeppcb"].active == "1"
    finally:
        store.close()
