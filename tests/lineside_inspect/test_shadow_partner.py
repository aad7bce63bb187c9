"""A shadow of the good-only model a recipe fuses with a detector is judged as the line
judges it: the recipe's fused verdict with the candidate's finding in place of the served
one and the served detector's result (the detector not run again), compared with the
served verdict. Until then the shadow was offered only the inspections its model judged
as the recipe's detector, so one started for the good-only partner compared nothing
(issue #15; docs/security.md session 42). Real parts: the bundled detector and reference
detector, the tiny real good-only graph of test_gate_fused.py at two thresholds, the real
service, store (SQLite) and shadow process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lineside_inspect.imageio import decode_image
from lineside_inspect.inspector import ModelVersion, anomaly_finding, inspect, with_finding
from lineside_inspect.lifecycle.manager import Lifecycle
from lineside_inspect.lifecycle.schemas import ShadowDisagreements, ShadowStatus
from lineside_inspect.recipes import Recipe
from lineside_inspect.references import Reference
from lineside_inspect.server.registry import Registry
from lineside_inspect.server.service import InspectionService
from lineside_inspect.store import Store

from .conftest import MODEL, ROOT, shadow_line
from .test_gate_fused import DEFECTIVE_BOARD, FUSED, GOOD_BOARD, _partner, _png
from .test_lifecycle_api import variant

OTHER_BOARD = GOOD_BOARD.with_name("00041001_temp.jpg")  # not the view of GOOD_BOARD
REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"
# it counts only defects scored 0.9 or more: the reference detector's boxes on the square
# (under 0.65) fail no part, the good-only model decides
REF_FUSED = Recipe.model_validate({
    "name": "ref-fused", "model": "deeppcb-ref", "anomaly": {"model": "board-good"},
    "unchanged_gate": {"floor": 15},
    "min_score": dict.fromkeys(["open", "short", "mousebite", "spur", "copper", "pin-hole"], 0.9)})
ALONE = Recipe(name="alone", model="board-good")  # the good-only model serving alone


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """board-good 1 (threshold 0.5: fails the foreign square; active) and 2 (threshold
    1.0: passes it), and deeppcb blind (every threshold 0.999: it finds nothing)."""
    root = tmp_path_factory.mktemp("partner-shadow")
    return {"strict": _partner(root, "1"), "lenient": _partner(root, "2", threshold=1.0),
            "blind": variant(root, "blind", 0.999)}


@pytest.fixture
def line(packages: dict[str, Path], tmp_path: Path) -> Iterator[tuple[InspectionService, Lifecycle]]:
    """The service and lifecycle of a server: deeppcb 1 and deeppcb-ref 1, board-good 1
    active and 2 loaded, the recipes fused, ref-fused and alone, a SQLite store."""
    registry = Registry(device="cpu", threads=1)
    registry.load_model(MODEL)
    registry.load_model(REF_MODEL)
    registry.load_model(packages["strict"])
    registry.load_model(packages["lenient"], activate=False)
    registry.load_model(packages["blind"], activate=False)
    registry.add_recipe(FUSED)
    registry.add_recipe(REF_FUSED)
    registry.add_recipe(ALONE)
    with shadow_line(registry, tmp_path) as line:
        yield line


def _inspect(service: InspectionService, data: bytes, recipe: str, **kw: Any) -> Any:
    return asyncio.run(service.inspect_image(data, recipe=recipe, **kw))


def test_a_shadow_of_the_good_only_partner_is_judged_fused_with_the_served_detections(
        line: tuple[InspectionService, Lifecycle]) -> None:
    """Four frames under the fused recipe: a good board (both pass), the square on a good
    board (board-good 1 fails it, the lenient 2 passes it: a disagreement), a defective
    board with and without the square (the detector fails both: 2 agrees, though alone it
    passes the board, so the shadow weighed the served detections). Before, the shadow was
    offered none. A shadow of the detector beside it is judged with the served finding,
    as before, and its disagreement says so."""
    service, lc = line
    lc.start_shadow("board-good", "2", sample_rate=1.0, actor="admin")
    lc.start_shadow("deeppcb", "blind", sample_rate=1.0, actor="admin")
    frames = [_png(GOOD_BOARD, False), _png(GOOD_BOARD, True), _png(DEFECTIVE_BOARD, True),
              _png(DEFECTIVE_BOARD, False)]
    served = [_inspect(service, f, "fused") for f in frames]
    assert [s.verdict for s in served] == ["pass", "fail", "fail", "fail"]
    assert [s.fused_with for s in served] == ["board-good 1"] * 4
    assert lc.shadow is not None
    lc.shadow.drain()
    status = ShadowStatus.model_validate(lc.shadow_status("board-good"))
    assert (status.offered, status.compared, status.agreed, status.errors) == (4, 4, 3, 0), status
    assert [j.model_dump() for j in status.judged_as] == [
        {"recipe": "alone", "fused_with": None, "fused_kind": None},
        {"recipe": "fused", "fused_with": "deeppcb", "fused_kind": "detector"},
        {"recipe": "ref-fused", "fused_with": "deeppcb-ref", "fused_kind": "detector"}]

    (row,) = ShadowDisagreements.model_validate(
        {"items": lc.records.disagreements(run_id=status.run_id)}).items
    assert row.inspection_id == served[1].id and row.model == "board-good"
    assert (row.active.version, row.active.verdict) == ("1", "fail")
    assert (row.shadow.version, row.shadow.verdict) == ("2", "pass")
    assert (row.fused_with, row.fused_kind) == ("deeppcb 1", "detector")
    # the shadow's verdict is the line's: the served detections fused with 2's finding
    lenient = lc.registry.detector("board-good", "2")
    detector_alone = inspect(decode_image(frames[1]), lc.registry.detector("deeppcb"), FUSED)
    assert row.shadow.defects == with_finding(
        detector_alone, lenient, anomaly_finding(detector_alone.image, lenient, FUSED)).defects.to_json()

    # the blind detector passes the plain defective board only (the square fails the rest)
    blind = ShadowStatus.model_validate(lc.shadow_status("deeppcb"))
    assert (blind.offered, blind.compared, blind.agreed, blind.errors) == (4, 4, 3, 0), blind
    assert [j.model_dump() for j in blind.judged_as] == [
        {"recipe": "fused", "fused_with": "board-good", "fused_kind": "anomaly"}]
    (row,) = ShadowDisagreements.model_validate(
        {"items": lc.records.disagreements(run_id=blind.run_id)}).items
    assert row.inspection_id == served[3].id and (row.active.version, row.shadow.version) == ("1", "blind")
    assert (row.fused_with, row.fused_kind) == ("board-good 1", "anomaly")

    # a recipe pinning the shadow's own version is not offered to it (its version serves
    # there): judged_as leaves it out, as offer() does
    assert FUSED.anomaly is not None
    lc.registry.add_recipe(FUSED.model_copy(update={
        "name": "pins-2", "anomaly": FUSED.anomaly.model_copy(update={"model_version": "2"})}))
    status = ShadowStatus.model_validate(lc.shadow_status("board-good"))
    assert [j.recipe for j in status.judged_as] == ["alone", "fused", "ref-fused"]


def test_a_good_only_shadow_serving_alone_and_under_a_reference_detectors_unchanged_gate(
        line: tuple[InspectionService, Lifecycle]) -> None:
    """The lenient 2 serves, the strict 1 is the shadow. Under the good-only model's own
    recipe the shadow judges alone, as before. Under a reference detector's recipe with an
    unchanged gate: a frame the gate passed (it matches its golden, square and all: no
    model ran) is the served pass for the shadow too, as a gate's replay counts it (the
    strict version, run on it, fails the square); a frame the gate let through is judged
    with the reference detector's result and its golden: the square is a disagreement, and
    another board is failed as unlike its golden by both (judged without the golden, the
    shadow passed it)."""
    service, lc = line
    lc.registry.activate("board-good", "2")
    lc.start_shadow("board-good", "1", sample_rate=1.0, actor="admin")
    square, clean = _png(GOOD_BOARD, True), _png(GOOD_BOARD, False)
    alone = _inspect(service, square, "alone")
    assert alone.verdict == "pass" and alone.detector.card.name == "board-good"
    gated = _inspect(service, square, "ref-fused", reference_data=square)
    assert gated.gate is not None and gated.gate.unchanged and gated.verdict == "pass"
    judged = _inspect(service, square, "ref-fused", reference_data=clean)
    assert judged.gate is not None and not judged.gate.unchanged and judged.verdict == "pass"
    other = _inspect(service, OTHER_BOARD.read_bytes(), "ref-fused", reference_data=clean)
    assert [r.rule for r in other.reasons] == ["reference_mismatch"]
    assert lc.shadow is not None
    lc.shadow.drain()
    status = ShadowStatus.model_validate(lc.shadow_status("board-good"))
    assert (status.offered, status.compared, status.agreed, status.errors) == (4, 4, 2, 0), status
    rows = {r.inspection_id: r for r in ShadowDisagreements.model_validate(
        {"items": lc.records.disagreements(run_id=status.run_id)}).items}
    assert sorted(rows) == sorted([alone.id, judged.id])
    assert (rows[alone.id].fused_with, rows[alone.id].fused_kind) == (None, None)
    assert (rows[judged.id].fused_with, rows[judged.id].fused_kind) == ("deeppcb-ref 1", "detector")
    assert (rows[judged.id].active.version, rows[judged.id].active.verdict) == ("2", "pass")
    assert (rows[judged.id].shadow.version, rows[judged.id].shadow.verdict) == ("1", "fail")
    strict = lc.registry.detector("board-good", "1")
    done = inspect(decode_image(square), lc.registry.detector("deeppcb-ref"), REF_FUSED,
                   reference=Reference.from_bytes(None, clean))
    expected = with_finding(done, strict, anomaly_finding(done.image, strict, REF_FUSED))
    assert rows[judged.id].shadow.defects == expected.defects.to_json()
    assert rows[judged.id].shadow.reasons == [r.model_dump() for r in expected.reasons]


def test_a_fused_inspection_names_its_good_only_partner_by_name_and_version(
        line: tuple[InspectionService, Lifecycle]) -> None:
    """A shadow of the good-only partner learns the served version from ``Inspection.fused``
    (name and version apart), no longer by splitting the "name version" text users see
    (``fused_with``, unchanged): every way a fused inspection is made sets it, the text is
    made from it, and an inspection fusing nothing has neither (docs/security.md session 43)."""
    service, lc = line
    square = _png(GOOD_BOARD, True)
    served = _inspect(service, square, "fused")
    assert (served.fused, served.fused_with) == (ModelVersion("board-good", "1"), "board-good 1")
    lenient = lc.registry.detector("board-good", "2")
    again = with_finding(inspect(served.image, lc.registry.detector("deeppcb"), FUSED), lenient,
                         anomaly_finding(served.image, lenient, FUSED))
    assert (again.fused, again.fused_with) == (ModelVersion("board-good", "2"), "board-good 2")
    gated = _inspect(service, square, "ref-fused", reference_data=square)  # no model ran
    assert gated.gate is not None and gated.gate.unchanged
    assert gated.fused == ModelVersion("board-good", "1")
    alone = _inspect(service, square, "alone")
    assert (alone.fused, alone.fused_with) == (None, None)


def test_a_store_of_an_older_release_takes_how_a_shadow_judged(tmp_path: Path) -> None:
    """The old release's SQLite store (tests/lineside_inspect/old_release) has a
    shadow_disagreements table without the columns saying how a shadow judged: they are
    added, a row it held reads as judged alone, and a new one keeps its fusion."""
    import sqlite3

    from lineside_inspect.lifecycle.records import Records

    from .test_upgrade_in_place import unpack

    data = unpack("sqlite", tmp_path)
    with sqlite3.connect(data / "lineside.db") as db:
        assert "fused_with" not in {c[1] for c in db.execute("PRAGMA table_info(shadow_disagreements)")}
        db.execute("INSERT INTO shadow_disagreements (created_at, run_id, inspection_id, "
                   "model_name, active_version, active_verdict, active_defects, shadow_version, "
                   "shadow_verdict, shadow_defects, shadow_reasons) VALUES ('2026-11-01 00:00:00', "
                   "'old', 'i-old', 'deeppcb', '1', 'pass', '[]', '2', 'fail', '[]', '[]')")
    store = Store(data, pass_rate=1.0)
    try:
        records = Records(store)
        records.add_disagreement("new", inspection_id="i-new", model="board-good",
                                 active_version="1", active_verdict="fail", active_defects=[],
                                 shadow_version="2", shadow_verdict="pass", shadow_defects=[],
                                 shadow_reasons=[], fused_with="deeppcb 1", fused_kind="detector")
        (old,) = ShadowDisagreements.model_validate(
            {"items": records.disagreements(run_id="old")}).items
        assert (old.inspection_id, old.fused_with, old.fused_kind) == ("i-old", None, None)
        (new,) = ShadowDisagreements.model_validate(
            {"items": records.disagreements(run_id="new")}).items
        assert (new.fused_with, new.fused_kind) == ("deeppcb 1", "detector")
    finally:
        store.close()
