"""The rules engine on hand-made detections."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from lineside_inspect.errors import ConfigError
from lineside_inspect.recipes import Recipe, judge, load_recipe
from lineside_inspect.runtime.types import Detections

CLASSES = ["open", "short", "spur"]


def _dets(rows: list[tuple[float, float, float, float, float, int]]) -> Detections:
    a = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return Detections(a[:, :4], a[:, 4], a[:, 5], CLASSES)


DETS = _dets([
    (10, 10, 30, 30, 0.9, 0),  # open, 20 px, centre (20, 20)
    (100, 100, 104, 104, 0.8, 1),  # short, 4 px
    (200, 200, 240, 240, 0.3, 2),  # spur, low score
])


def _recipe(**kw: object) -> Recipe:
    return Recipe.model_validate({"name": "r", "model": "m", **kw})


def test_thresholds_default_to_the_card() -> None:
    v = judge(DETS, _recipe(), {"open": 0.5, "short": 0.5, "spur": 0.5})
    assert v.outcome == "fail" and v.defects.labels == ["open", "short"]
    assert {r.label for r in v.reasons} == {"open", "short"}
    v = judge(DETS, _recipe(min_score={"spur": 0.2}), {"open": 0.95, "short": 0.95, "spur": 0.5})
    assert v.defects is not None and v.defects.labels == ["spur"]


def test_size_in_pixels_and_mm() -> None:
    thr = dict.fromkeys(CLASSES, 0.1)
    assert judge(DETS, _recipe(min_size_px=10), thr).defects.labels == ["open", "spur"]
    r = _recipe(min_size_mm=2.5, pixels_per_mm=10)  # 25 px
    assert judge(DETS, r, thr).defects.labels == ["spur"]
    with pytest.raises(ValidationError, match="pixels_per_mm"):  # refused when written
        _recipe(min_size_mm=1)


def test_regions_of_interest_and_ignore() -> None:
    thr = dict.fromkeys(CLASSES, 0.1)
    roi = [[(0, 0), (150, 0), (150, 150), (0, 150)]]
    assert judge(DETS, _recipe(roi=roi), thr).defects.labels == ["open", "short"]
    ignore = [[(0, 0), (50, 0), (50, 50), (0, 50)]]
    v = judge(DETS, _recipe(roi=roi, ignore=ignore), thr)
    assert v.defects is not None and v.defects.labels == ["short"]


def test_allowed_counts_and_critical_classes() -> None:
    thr = dict.fromkeys(CLASSES, 0.1)
    v = judge(DETS, _recipe(max_count={"open": 1, "short": 1, "spur": 1}), thr)
    assert v.outcome == "pass" and v.reasons == []
    v = judge(DETS, _recipe(max_count={"open": 5, "short": 1, "spur": 1}, critical=["open"]), thr)
    assert v.outcome == "fail" and v.reasons[0].rule == "critical"
    assert judge(Detections.empty(CLASSES), _recipe(), thr).outcome == "pass"


def test_recipe_validation_errors(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("name: r\nmodel: m\nroi: [[[0, 0], [1, 1]]]\nmin_score: {open: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(f)
    assert "roi" in info.value.message and "min_score" in info.value.message
    f.write_text("name: r\n  model: [\n")
    with pytest.raises(ConfigError, match="line"):
        load_recipe(f)
    with pytest.raises(ConfigError, match="unknown class 'opne'"):
        _recipe(max_count={"opne": 1}).check_classes(CLASSES)


def test_recipe_files_keep_loading_with_strict_numbers(tmp_path: Path) -> None:
    """Numbers and switches are strict over the API; YAML files still load: its ints are
    ints, an int is a float (``floor: 15``), its yes/no and true/false booleans."""
    root = Path(__file__).resolve().parents[2] / "configs" / "recipes"
    assert sorted(load_recipe(f).name for f in root.glob("*.yaml")) == [
        "deeppcb", "deeppcb-fused", "deeppcb-good", "deeppcb-ref"]
    f = tmp_path / "r.yaml"
    f.write_text("name: r\nmodel: m\nmin_score: {open: 1}\ndefault_min_score: 0\nmin_size_px: 8\n"
                 "max_count: {open: 3}\nalign_reference: yes\nusual_fail_rate: 0\n"
                 "roi: [[[0, 0], [640, 0], [640, 640]]]\n"
                 "unchanged_gate: {floor: 15, tolerance_px: 3, tile: 32}\n")
    r = load_recipe(f)
    assert (r.min_score, r.max_count, r.align_reference) == ({"open": 1.0}, {"open": 3}, True)
    assert r.unchanged_gate is not None and r.unchanged_gate.floor == 15.0
    # YAML 1.1 (PyYAML) reads an exponent without a dot as text: it is the number it says
    f.write_text("name: r\nmodel: m\nmin_score: {open: 5e-1}\ndefault_min_score: 1E-1\n")
    assert (load_recipe(f).min_score, load_recipe(f).default_min_score) == ({"open": 0.5}, 0.1)
    f.write_text("name: r\nmodel: m\nversion: 1e3\n")  # YAML 1.2 reads a number: quote it
    with pytest.raises(ConfigError, match="is quoted: '1e3'"):
        load_recipe(f)
    f.write_text("name: r\nmodel: m\nmax_count: {open: 1.0}\nunchanged_gate: {floor: 15, tile: '32'}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(f)
    assert "max_count" in info.value.message and "tile" in info.value.message


def test_detections_validate_their_shapes() -> None:
    with pytest.raises(ValueError, match="expected 2 scores"):
        Detections(np.zeros((2, 4)), np.zeros(3), np.zeros(2), CLASSES)
    with pytest.raises(ValueError, match=r"class ids must lie in 0\.\.2"):
        Detections(np.zeros((1, 4)), np.zeros(1), np.array([7]), CLASSES)


NAN, INF = math.nan, math.inf
SQUARE = [(0, 0), (150, 0), (150, 150), (0, 150)]

# each recipe cannot work as meant; (its fields, the field the error must name)
UNWORKABLE: dict[str, tuple[dict[str, Any], str]] = {
    "mm without scale": ({"min_size_mm": 1}, "pixels_per_mm"),
    "zero scale": ({"min_size_mm": 1, "pixels_per_mm": 0}, "pixels_per_mm"),
    "NaN in roi": ({"roi": [[(0, 0), (NAN, 0), (150, 150)]]}, "roi"),
    "inf in ignore": ({"ignore": [[(0, 0), (INF, 0), (150, 150)]]}, "ignore"),
    "two-point roi": ({"roi": [[(0, 0), (150, 150)]]}, "roi"),
    "flat roi": ({"roi": [[(0, 0), (50, 50), (150, 150)]]}, "roi"),
    "point roi": ({"roi": [[(5, 5), (5, 5), (5, 5), (5, 5)]]}, "roi"),
    "score over 1": ({"min_score": {"open": 1.5}}, "min_score"),
    "NaN score": ({"min_score": {"open": NAN}}, "min_score"),
    "negative default score": ({"default_min_score": -0.1}, "default_min_score"),
    "NaN default score": ({"default_min_score": NAN}, "default_min_score"),
    "inf size": ({"min_size_px": INF}, "min_size_px"),
    "NaN size": ({"min_size_px": NAN}, "min_size_px"),
    "negative count": ({"max_count": {"open": -1}}, "max_count"),
    "fractional count": ({"max_count": {"open": 0.5}}, "max_count"),
    # loose types: true was stored as 1, a count past 64 bits taken, "0.5" a score
    "true as a count": ({"max_count": {"open": True}}, "max_count"),
    "count past 64 bits": ({"max_count": {"open": 99999999999999999999999}}, "max_count"),
    "count as text": ({"max_count": {"open": "2"}}, "max_count"),
    "score as text": ({"min_score": {"open": "0.5"}}, "min_score"),
    "yes as a switch": ({"align_reference": "yes"}, "align_reference"),
    # finite, but the polygon's sums overflowed to inf and every board passed (review)
    "huge roi": ({"roi": [[(-1e308, -1e308), (1e308, -1e308), (0, 1e308)]]}, "roi"),
    # each drawn on a good-only model's map for every image size (attacker's pass, session 40)
    "too many roi polygons": ({"roi": [[(i, 0), (i + 1, 0), (i, 1)] for i in range(65)]},
                              "at most 64 polygons"),
    "too many ignore polygons": ({"ignore": [[(i, 0), (i + 1, 0), (i, 1)] for i in range(65)]},
                                 "at most 64 polygons"),
    "size overflow": ({"min_size_mm": 1e308, "pixels_per_mm": 1e308}, "min_size_mm"),
    "control characters in version": ({"version": "1\x00\r\n<b>"}, "version"),
    # pinned nothing: a good-only recipe's active version judged, unseen (review, session 36)
    "anomaly pin without its model": ({"anomaly": {"model_version": "2"}},
                                      "model_version pins a version of anomaly.model"),
}


@pytest.mark.parametrize("case", list(UNWORKABLE))
def test_recipes_that_cannot_work_are_refused(case: str) -> None:
    fields, field = UNWORKABLE[case]
    with pytest.raises(ValidationError) as info:
        _recipe(**fields)
    assert field in str(info.value)


def test_a_nan_roi_would_pass_every_board() -> None:
    """Why NaN is refused: no point is inside a NaN polygon, so nothing is counted."""
    thr = dict.fromkeys(CLASSES, 0.1)
    assert judge(DETS, _recipe(roi=[SQUARE], critical=["open"]), thr).outcome == "fail"
    bad = Recipe.model_construct(**{**_recipe().__dict__, "roi": [[(0, 0), (NAN, 0), (150, 150)]],
                                    "critical": ["open"]})
    assert judge(DETS, bad, thr).outcome == "pass"


def test_put_refuses_unworkable_recipes_and_keeps_the_one_in_force(srv, image_bytes: bytes) -> None:
    jpeg = {"content-type": "image/jpeg"}
    good = {"name": "guarded", "version": "1", "model": "deeppcb", "default_min_score": 0.0,
            "critical": ["open", "short", "mousebite", "spur", "copper", "pin-hole"],
            "roi": [[(0, 0), (640, 0), (640, 640), (0, 640)]]}
    with srv.client("admin") as admin:
        assert admin.put("/v1/recipes/guarded", json=good).status_code == 200
        for case, (fields, field) in UNWORKABLE.items():
            if "open" in str(fields):  # per-class settings name a real class of the card
                fields = {k: ({"open": v["open"]} if isinstance(v, dict) else v)
                          for k, v in fields.items()}
            # the stdlib writes NaN and Infinity as JSON tokens, as Python's parser reads them
            r = admin.put("/v1/recipes/guarded", content=json.dumps({**good, "version": "2", **fields}),
                          headers={"content-type": "application/json"})
            assert r.status_code == 422, (case, r.text)
            assert field in r.json()["error"]["message"], (case, r.text)
        for fields, what in [({"min_score": {"opne": 0.5}}, "opne"), ({"critical": ["bridge"]}, "bridge"),
                             ({"max_count": {"Open": 1}}, "Open"), ({"model": "nope"}, "nope")]:
            r = admin.put("/v1/recipes/guarded", json={**good, "version": "3", **fields})
            assert r.status_code in (404, 422) and what in r.json()["error"]["message"], r.text
        [kept] = [r for r in admin.get("/v1/recipes").json() if r["name"] == "guarded"]
        assert kept["version"] == "1" and kept["critical"] == good["critical"]
    with srv.client("line") as c:
        r = c.post("/v1/inspect?recipe=guarded", content=image_bytes, headers=jpeg).json()
        assert r["recipe"] == {"name": "guarded", "version": "1"} and r["verdict"] == "fail"


def test_one_defect_per_place_when_the_card_says_so() -> None:
    # a model unsure between two classes puts two boxes on one defect
    two = _dets([(10, 10, 30, 30, 0.7, 0),   # open
                 (11, 10, 31, 30, 0.6, 2),   # spur over the same place
                 (60, 60, 80, 80, 0.6, 1)])  # short elsewhere
    thr = dict.fromkeys(CLASSES, 0.5)
    assert judge(two, _recipe(), thr).defects.labels == ["open", "spur", "short"]
    v = judge(two, _recipe(), thr, agnostic_iou=0.3)
    assert v.outcome == "fail" and v.defects.labels == ["open", "short"]
    assert {r.label for r in v.reasons} == {"open", "short"}
    # only a box that fails the part on its own hides another, so no verdict changes:
    # allowing one open, the spur under it still fails the part ...
    v = judge(two, _recipe(max_count={"open": 1, "short": 1}), thr, agnostic_iou=0.3)
    assert v.outcome == "fail" and v.defects.labels == ["open", "spur", "short"]
    assert [r.label for r in v.reasons] == ["spur"]
    v = judge(two, _recipe(critical=["spur"], max_count={"open": 5, "short": 5}), thr,
              agnostic_iou=0.3)
    assert [r.rule for r in v.reasons] == ["critical"]
    # ... and with one of each allowed, the second spur elsewhere still fails it
    three = _dets([(10, 10, 30, 30, 0.7, 0), (11, 10, 31, 30, 0.6, 2), (60, 60, 80, 80, 0.6, 2)])
    for rule in (None, 0.3):
        v = judge(three, _recipe(max_count={"open": 1, "spur": 1}), thr, agnostic_iou=rule)
        assert v.outcome == "fail" and [r.label for r in v.reasons] == ["spur"]
    # an open that fails alone hides the spur even where spurs are allowed: still a fail
    v = judge(two, _recipe(max_count={"spur": 3}), thr, agnostic_iou=0.3)
    assert v.outcome == "fail" and v.defects.labels == ["open", "short"]
    # below its threshold the higher box hides nothing; an ignored one neither
    v = judge(two, _recipe(min_score={"open": 0.8}), thr, agnostic_iou=0.3)
    assert v.defects.labels == ["spur", "short"]
    ignore = [[(0, 0), (20.5, 0), (20.5, 50), (0, 50)]]  # the open's centre, not the spur's
    assert judge(two, _recipe(ignore=ignore), thr, agnostic_iou=0.3).defects.labels == [
        "spur", "short"]


def test_one_per_place_is_greedy_in_score_order() -> None:
    from lineside_inspect.boxes import one_per_place

    # b overlaps a, c overlaps b but not a: b goes, so nothing kept hides c (as NMS does)
    xyxy = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7])
    assert one_per_place(xyxy, scores, 0.3).tolist() == [True, False, True]
    assert one_per_place(xyxy, scores, 0.4).tolist() == [True, True, True]  # IoU 1/3
    assert one_per_place(xyxy[::-1], scores[::-1], 0.3).tolist() == [True, False, True]
    # only the boxes marked may hide others: the first may not, so the second stays and
    # hides the third
    hides = np.array([False, True, True])
    assert one_per_place(xyxy, scores, 0.3, hides).tolist() == [True, True, False]
    assert one_per_place(xyxy[:1], scores[:1], 0.3).tolist() == [True]


def test_an_inspection_counts_one_defect_per_place_as_its_card_says(tmp_path: Path) -> None:
    # a sample board on which the bundled reference model puts a second box, of another
    # class, on one defect; its card (agnostic_iou 0.3, calibrated with it) counts one
    import shutil

    from lineside_inspect.boxes import one_per_place
    from lineside_inspect.imageio import read_image
    from lineside_inspect.inspector import inspect
    from lineside_inspect.references import Reference
    from lineside_inspect.runtime.detector import Detector

    root = Path(__file__).resolve().parents[2]
    sample = root / "datasets" / "deeppcb-sample" / "images" / "group44000"
    frame = read_image(sample / "44000062_test.jpg")
    raw = (sample / "44000062_temp.jpg").read_bytes()
    reference = Reference.from_bytes(None, raw)
    det = Detector(root / "models" / "deeppcb-ref" / "1-int8", device="cpu", threads=1)
    assert det.card.agnostic_iou == 0.3
    recipe = Recipe.model_validate(det.card.default_recipe | {"model": det.card.name})
    ruled = inspect(frame, det, recipe, reference=reference)
    d = ruled.detections
    thr = np.array([det.card.threshold(n) for n in det.class_names])[d.class_ids]
    kept = d[d.scores >= thr]
    assert len(ruled.defects) == len(kept) - 1 >= 1  # one box of a place was not counted
    assert one_per_place(ruled.defects.xyxy, ruled.defects.scores, 0.3).all()
    # the same graph under a card without the rule counts every class's box
    plain = tmp_path / "plain"
    shutil.copytree(root / "models" / "deeppcb-ref" / "1-int8", plain)
    doc = json.loads((plain / "model.json").read_text())
    doc["agnostic_iou"] = None
    (plain / "model.json").write_text(json.dumps(doc))
    every = inspect(frame, Detector(plain, device="cpu", threads=1), recipe, reference=reference)
    assert len(every.defects) == len(kept)


def test_a_recipe_versions_rules_digest_ignores_defaults_order_and_the_pin() -> None:
    """``rules_digest`` (session 55: a recipe version stands for one set of rules) is of the
    rules alone: a field left at its default (as a field a later release adds would be),
    critical classes or thresholds in another order, the version and the pin change
    nothing; a threshold, a region or a model does."""
    from lineside_inspect.recipes.schema import rules_digest

    base = Recipe(name="r", model="m", min_score={"open": 0.5, "short": 0.4},
                  critical=["short", "open"])
    same = [Recipe(name="r", model="m", version="7", model_version="3", min_size_px=0,
                   min_score={"short": 0.4, "open": 0.5}, critical=["open", "short", "open"],
                   roi=[], align_reference=False)]
    assert {rules_digest(r) for r in same} == {rules_digest(base)}
    other = [base.model_copy(update={"min_score": {"open": 0.5, "short": 0.41}}),
             base.model_copy(update={"model": "n"}),
             base.model_copy(update={"min_size_px": 3}),
             base.model_copy(update={"roi": [[(0.0, 0.0), (9.0, 0.0), (9.0, 9.0)]]})]
    assert len({rules_digest(base), *map(rules_digest, other)}) == 5
