"""A gate under a recipe that fuses a good-only model with its detector judges both
detectors with that partner, as the line does (issue: gates judged a fused recipe without
its good-only partner, docs/security.md session 36 "Left"). Real onnxruntime: the bundled
detector, a version of it that finds nothing, and a tiny real good-only graph that sees a
foreign square (tests/lineside_inspect/anomaly_package.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from lineside_inspect.errors import ConfigError, NotFoundError, PackageError
from lineside_inspect.imageio import decode_image
from lineside_inspect.inspector import inspect
from lineside_inspect.lifecycle.gate import format_report, replay, rules_of, run_gate
from lineside_inspect.lifecycle.golden import GoldenLibrary, candidate
from lineside_inspect.lifecycle.schemas import StoredGateReport
from lineside_inspect.opencv import cv2
from lineside_inspect.package import card_digest
from lineside_inspect.recipes import Recipe
from lineside_inspect.runtime.detector import Detector

from .anomaly_package import FOREIGN_GREY, anomaly_graph, card_doc, write_package
from .conftest import MODEL, SAMPLE
from .test_lifecycle_api import variant

GOOD_BOARD = SAMPLE / "images" / "group00041" / "00041000_temp.jpg"  # the detector finds nothing
DEFECTIVE_BOARD = SAMPLE / "images" / "group00041" / "00041000_test.jpg"  # 1 fails it
SQUARE = (520, 40, 60)  # bare board on both: only the good-only model sees it
FUSED = Recipe(name="fused", model="deeppcb", anomaly={"model": "board-good"})  # type: ignore[arg-type]


def _png(path: Path, square: bool) -> bytes:
    image = decode_image(path.read_bytes())
    if square:
        x, y, side = SQUARE
        image[y:y + side, x:x + side] = FOREIGN_GREY
    ok, data = cv2.imencode(".png", image)  # lossless: the square keeps its grey
    assert ok
    return bytes(data)


def _partner(root: Path, version: str = "1", threshold: float = 0.5) -> Path:
    """The good-only partner at the detector's 640 px and border."""
    doc = card_doc("board-good", 640, threshold=threshold)
    return write_package(root / "board-good" / version, anomaly_graph(640),
                         {**doc, "version": version, "input": {"name": "images", "size": 640}})


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fused-gate")
    blind = variant(root, "blind", 0.999)  # every threshold 0.999: it finds nothing
    return {"root": root, "blind": blind, "partner": _partner(root),
            "det": Detector(MODEL, device="cpu", threads=1),
            "blind_det": Detector(blind, device="cpu", threads=1),
            "partner_det": Detector(root / "board-good" / "1", device="cpu", threads=1)}


def _golden(folder: Path) -> tuple[GoldenLibrary, Any]:
    """A defective board the detector's blind version misses and the partner catches (a
    foreign square on it); a good board; a board labelled good that the partner fails."""
    lib = GoldenLibrary(folder)
    items = [candidate(_png(DEFECTIVE_BOARD, True), expected="fail", boxes=None, source="bad+square"),
             candidate(_png(GOOD_BOARD, False), expected="pass", boxes=None, source="good"),
             candidate(_png(GOOD_BOARD, True), expected="pass", boxes=None, source="good+square")]
    return lib, lib.create("g", items, ["open", "short"])


def assert_served(lib: GoldenLibrary, manifest: Any, gated: list[Detector],
                  partner: Detector) -> None:
    """Each verdict (and its defects) the gate's replay of ``manifest`` gives the
    ``gated`` versions with ``partner`` is the one the line gives: ``inspect`` of the image
    by the detector fused with the good-only model, whichever of the two is gated."""
    found = replay(gated, lib, manifest, FUSED, partner=partner)
    for item, *results in zip(manifest.items, *found, strict=True):
        image = decode_image(lib.read(manifest, item))
        for model, r in zip(gated, results, strict=True):
            det, good_only = (model, partner) if partner.card.kind == "anomaly" else (partner, model)
            served = inspect(image, det, rules_of(FUSED), anomaly_model=good_only)
            assert r.verdict == served.verdict, (item.source, model.card.version)
            assert sorted(b[0] for b in r.boxes) == sorted(served.defects.labels)

def test_a_fused_recipes_gate_judges_both_detectors_with_its_partner_as_the_line_does(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """The blind candidate passes the defective board, which the partner fails on the
    line: it was charged an escape (and a new one: the gate failed), and the false reject
    the partner adds on the third board was counted for neither."""
    det, blind, partner = parts["det"], parts["blind_det"], parts["partner_det"]
    lib, manifest = _golden(tmp_path / "golden")
    report = run_gate(blind, det, lib, manifest, FUSED, partner=partner)
    c, a = report.candidate, report.against
    assert (c.escapes, c.new_escapes, a.escapes) == (0, 0, 0), report
    assert (c.false_rejects, a.false_rejects) == (1, 1)
    assert report.passed and report.disagreements == []
    assert report.fused_with == "board-good 1"
    assert report.fused_card_sha256 == card_digest(partner.card)
    assert "fused with good-only board-good 1" in format_report(report)

    # each verdict is the one the line gives (the partner run inside inspect, as served)
    assert_served(lib, manifest, [blind, det], partner)

    # the same detectors alone (a recipe fusing nothing): the blind one's escape stands
    plain = run_gate(blind, det, lib, manifest, Recipe(name="plain", model="deeppcb"))
    assert (plain.candidate.escapes, plain.candidate.new_escapes, plain.fused_with) == (1, 1, None)
    assert not plain.passed


def test_a_fused_recipe_without_its_partner_or_with_another_is_refused(
        parts: dict[str, Any], tmp_path: Path) -> None:
    det, blind, partner = parts["det"], parts["blind_det"], parts["partner_det"]
    lib, manifest = _golden(tmp_path / "golden")
    with pytest.raises(ConfigError, match="recipe fused fuses good-only model board-good"):
        run_gate(blind, det, lib, manifest, FUSED)
    with pytest.raises(ConfigError, match="recipe plain fuses no good-only model"):
        run_gate(blind, det, lib, manifest, Recipe(name="plain", model="deeppcb"), partner=partner)
    pinned = FUSED.model_copy(update={"anomaly": FUSED.anomaly.model_copy(  # type: ignore[union-attr]
        update={"model_version": "2"})})
    with pytest.raises(ConfigError, match="fuses good-only model board-good 2; anomaly model "
                                          "board-good 1 was given"):
        run_gate(blind, det, lib, manifest, pinned, partner=partner)
    with pytest.raises(ConfigError, match="detector model deeppcb 1 was given"):
        run_gate(blind, det, lib, manifest, FUSED, partner=det)


def test_a_good_only_candidate_serving_alone_is_gated_alone(parts: dict[str, Any],
                                                            tmp_path: Path) -> None:
    """The mirror case: a good-only model that serves alone is gated under its own recipe,
    with no partner (it is the anomaly model itself)."""
    strict = parts["partner_det"]
    lenient = Detector(_partner(tmp_path, "lenient", threshold=1.0), device="cpu", threads=1)
    lib, manifest = _golden(tmp_path / "golden")
    report = run_gate(lenient, strict, lib, manifest, Recipe(name="alone", model="board-good"))
    assert report.fused_with is None and report.fused_card_sha256 is None
    # the lenient card's threshold (1.0) passes the square the strict one (0.5) fails
    assert (report.against.escapes, report.against.false_rejects) == (0, 1)
    assert (report.candidate.escapes, report.candidate.new_escapes) == (1, 1)
    assert not report.passed


def _lifecycle(tmp_path: Path, parts: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A lifecycle on a registry (deeppcb 1 active, blind loaded, the partner) and a real
    SQLite store, with the golden set in its data folder."""
    from lineside_inspect.lifecycle.config import LifecycleSettings
    from lineside_inspect.lifecycle.golden import GOLDEN_DIR
    from lineside_inspect.lifecycle.manager import Lifecycle
    from lineside_inspect.lifecycle.records import Records
    from lineside_inspect.server.registry import Registry
    from lineside_inspect.store import Store

    registry = Registry(device="cpu", threads=1)
    registry.load_model(MODEL)
    registry.load_model(parts["blind"], activate=False)
    store = Store(tmp_path / "store", pass_rate=1.0)
    lc = Lifecycle(LifecycleSettings(), registry=registry, data_dir=tmp_path)
    lc.store, lc._records = store, Records(store)
    _golden(tmp_path / GOLDEN_DIR)
    return lc, registry, store


def test_a_servers_gate_takes_the_recipes_partner_and_its_report_names_it(
        parts: dict[str, Any], tmp_path: Path) -> None:
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(parts["partner"])
        registry.add_recipe(FUSED)
        report = lc.gate("deeppcb", "blind", golden="g", recipe="fused", actor="admin")
        assert report.passed and report.candidate.escapes == 0
        assert report.fused_with == "board-good 1"
        stored = StoredGateReport.model_validate(lc.records.gate_report(report.id))
        assert stored.fused_with == "board-good 1"
        (entry,) = lc.records.audit_log(model="deeppcb", action="gate")[1]
        assert entry["details"]["fused_with"] == "board-good 1"
    finally:
        store.close()


def test_a_gates_partner_unloaded_is_loaded_again_and_one_that_cannot_be_is_refused(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """The candidate's card's own recipe (no recipe of the model put: it judges once the
    candidate is active, session 43) pins partner version 1, unloaded from memory: the
    gate loads it again, as an inspection's recipe would; with its package gone the gate
    is refused naming it, and a partner not loaded at all too."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        v1 = shutil.copytree(parts["partner"], tmp_path / "board-good" / "1")
        registry.load_model(v1)
        registry.load_model(_partner(tmp_path, "2"))  # active
        registry.unload("board-good", "1", force=True)
        two = variant(tmp_path, "2", 0.3)  # deeppcb 2: its card's recipe fuses board-good 1
        card = json.loads((two / "model.json").read_text())
        card["default_recipe"]["anomaly"] = {"model": "board-good", "model_version": "1"}
        (two / "model.json").write_text(json.dumps(card))
        registry.load_model(two, activate=False)
        report = lc.gate("deeppcb", "2", golden="g", actor="admin")
        assert report.fused_with == "board-good 1" and report.recipe == "deeppcb-default"
        assert "1" in registry.models()["board-good"].versions

        registry.unload("board-good", "1", force=True)
        shutil.rmtree(v1)
        with pytest.raises(PackageError, match="board-good 1 was unloaded from memory and "
                                               "cannot be loaded again"):
            lc.gate("deeppcb", "2", golden="g", actor="admin")
        card["version"], card["default_recipe"]["anomaly"] = "3", {"model": "nope-good"}
        three = shutil.copytree(two, tmp_path / "deeppcb" / "3")
        (three / "model.json").write_text(json.dumps(card))
        registry.load_model(three, activate=False)
        with pytest.raises(NotFoundError, match=r"recipe deeppcb-default fuses good-only model "
                                                r"nope-good .*unknown model 'nope-good'"):
            lc.gate("deeppcb", "3", golden="g", actor="admin")
        # blind's card brings a recipe that fuses nothing: gated alone
        alone = lc.gate("deeppcb", "blind", golden="g", actor="admin")
        assert (alone.fused_with, alone.recipe) == (None, "deeppcb-default")
    finally:
        store.close()


def test_a_stored_report_of_an_older_release_without_a_partner_still_reads(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """Reports stored before gates fused the partner have no ``fused_with``: they read,
    list and print as judged with none."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(parts["partner"])
        registry.add_recipe(FUSED)
        report = lc.gate("deeppcb", "blind", golden="g", recipe="fused", actor="admin")
        from sqlalchemy.orm import Session

        from lineside_inspect.store.models import GateReportRow

        with Session(store.engine) as s, s.begin():
            row = s.get(GateReportRow, report.id)
            assert row is not None
            row.report = {k: v for k, v in row.report.items()
                          if k not in ("fused_with", "fused_card_sha256")}
        old = StoredGateReport.model_validate(lc.records.gate_report(report.id))
        assert old.fused_with is None and old.candidate.escapes == 0
        assert "fused with" not in format_report(old)
        assert [r["id"] for r in lc.records.gate_reports("deeppcb")] == [report.id]
    finally:
        store.close()


def test_the_gate_command_takes_the_partner_a_recipe_fuses(parts: dict[str, Any],
                                                            tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    _golden(tmp_path / "golden")
    recipe = tmp_path / "fused.yaml"
    recipe.write_text(yaml.safe_dump(FUSED.model_dump(mode="json", exclude_none=True)))
    args = ["gate", str(parts["blind"]), "--against", str(MODEL), "--golden", "g",
            "--recipe", str(recipe), "--data-dir", str(tmp_path), "--threads", "1"]
    cli = CliRunner()
    r = cli.invoke(app, args)
    assert r.exit_code == 2 and "give its package with --fused-with" in r.output, r.output
    r = cli.invoke(app, [*args, "--fused-with", str(MODEL)])
    assert r.exit_code == 2 and "detector model deeppcb 1 was given in its place" in r.output
    r = cli.invoke(app, [*args, "--fused-with", str(parts["partner"])])
    assert r.exit_code == 0, r.output
    assert "fused with good-only board-good 1" in r.output and "PASSED" in r.output
    r = cli.invoke(app, [*args, "--fused-with", str(parts["partner"]), "--json"])
    assert json.loads(r.output)["fused_with"] == "board-good 1"

