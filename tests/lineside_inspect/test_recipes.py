"""The rules engine on hand-made detections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
    assert v.verdict == "fail" and v.defects is not None and v.defects.labels == ["open", "short"]
    assert {r["label"] for r in v.reasons} == {"open", "short"}
    v = judge(DETS, _recipe(min_score={"spur": 0.2}), {"open": 0.95, "short": 0.95, "spur": 0.5})
    assert v.defects is not None and v.defects.labels == ["spur"]


def test_size_in_pixels_and_mm() -> None:
    thr = dict.fromkeys(CLASSES, 0.1)
    assert judge(DETS, _recipe(min_size_px=10), thr).defects.labels == ["open", "spur"]  # type: ignore[union-attr]
    r = _recipe(min_size_mm=2.5, pixels_per_mm=10)  # 25 px
    assert judge(DETS, r, thr).defects.labels == ["spur"]  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="pixels_per_mm"):
        judge(DETS, _recipe(min_size_mm=1), thr)


def test_regions_of_interest_and_ignore() -> None:
    thr = dict.fromkeys(CLASSES, 0.1)
    roi = [[(0, 0), (150, 0), (150, 150), (0, 150)]]
    assert judge(DETS, _recipe(roi=roi), thr).defects.labels == ["open", "short"]  # type: ignore[union-attr]
    ignore = [[(0, 0), (50, 0), (50, 50), (0, 50)]]
    v = judge(DETS, _recipe(roi=roi, ignore=ignore), thr)
    assert v.defects is not None and v.defects.labels == ["short"]


def test_allowed_counts_and_critical_classes() -> None:
    thr = dict.fromkeys(CLASSES, 0.1)
    v = judge(DETS, _recipe(max_count={"open": 1, "short": 1, "spur": 1}), thr)
    assert v.verdict == "pass" and v.reasons == []
    v = judge(DETS, _recipe(max_count={"open": 5, "short": 1, "spur": 1}, critical=["open"]), thr)
    assert v.verdict == "fail" and v.reasons[0]["rule"] == "critical"
    assert judge(Detections.empty(CLASSES), _recipe(), thr).verdict == "pass"


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


def test_detections_validate_their_shapes() -> None:
    with pytest.raises(ValueError, match="expected 2 scores"):
        Detections(np.zeros((2, 4)), np.zeros(3), np.zeros(2), CLASSES)
    with pytest.raises(ValueError, match=r"class ids must lie in 0\.\.2"):
        Detections(np.zeros((1, 4)), np.zeros(1), np.array([7]), CLASSES)
