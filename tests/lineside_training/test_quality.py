"""Quality metrics and threshold calibration against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lineside_inspect.dataset import Box, ImageRecord
from lineside_training.predict import Prediction
from lineside_training.quality import box_iou, calibrate, quality_metrics

CLASSES = ["open", "short"]


def _rec(name: str, boxes: list[tuple[float, float, float, float, str]]) -> ImageRecord:
    return ImageRecord(name, 100, 100, [Box(*b) for b in boxes])


def _pred(rows: list[tuple[float, float, float, float, float, int]]) -> Prediction:
    a = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return Prediction(a[:, :4], a[:, 4], a[:, 5].astype(np.int64))


@pytest.fixture
def fixture() -> tuple[list[ImageRecord], list[Prediction]]:
    records = [
        _rec("d1", [(10, 10, 20, 20, "open")]),  # found at 0.9
        _rec("d2", [(10, 10, 20, 20, "short"), (50, 50, 60, 60, "open")]),  # short 0.6, open missed
        _rec("d3", [(30, 30, 40, 40, "open")]),  # found only at 0.3
        _rec("g1", []),  # false alarm short 0.5
        _rec("g2", []),  # false alarm open 0.2
        _rec("g3", []),  # clean
    ]
    preds = [
        _pred([(10, 10, 20, 20, 0.9, 0)]),
        _pred([(10, 10, 20, 20, 0.6, 1)]),
        _pred([(30, 30, 40, 40, 0.3, 0)]),
        _pred([(70, 70, 80, 80, 0.5, 1)]),
        _pred([(5, 5, 9, 9, 0.2, 0)]),
        _pred([]),
    ]
    return records, preds


def test_box_iou_by_hand() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], dtype=np.float32)
    assert box_iou(a, b).tolist() == [[pytest.approx(50 / 150), 0.0]]


def test_quality_metrics_at_threshold_half(fixture: tuple) -> None:
    records, preds = fixture
    q = quality_metrics(records, preds, CLASSES, {"open": 0.5, "short": 0.5})
    # kept: d1 open 0.9 (TP), d2 short 0.6 (TP), g1 short 0.5 (FP); d3 0.3 and g2 0.2 dropped
    assert q["defect_recall"] == pytest.approx(2 / 4)
    assert q["defect_precision"] == pytest.approx(2 / 3)
    assert (q["escapes"], q["defective_images"]) == (1, 3)  # d3
    assert q["escape_rate"] == pytest.approx(1 / 3)
    assert (q["false_rejects"], q["good_images"]) == (1, 3)  # g1
    assert q["false_reject_rate"] == pytest.approx(1 / 3)
    conf = np.array(q["confusion"])
    assert conf[0, 0] == 1 and conf[1, 1] == 1  # TPs
    assert conf[0, 2] == 2  # open missed twice (d2's second, d3)
    assert conf[2, 1] == 1  # short false positive on background


def test_calibration_zero_escapes(fixture: tuple) -> None:
    records, preds = fixture
    c = calibrate(records, preds, CLASSES, target_escape=0.0)
    # defective image max scores 0.9, 0.6, 0.3: no escape allowed -> global 0.3
    assert c["global_threshold"] == pytest.approx(0.3)
    assert c["allowed_escapes"] == 0 and c["escapes"] == 0
    # classes have fewer than MIN_SUPPORT boxes: no per-class raise
    assert c["thresholds"] == {"open": pytest.approx(0.3), "short": pytest.approx(0.3)}
    assert c["false_rejects"] == 1  # g1 (0.5) still rejected, g2 (0.2) passes


def test_calibration_allows_one_escape(fixture: tuple) -> None:
    records, preds = fixture
    c = calibrate(records, preds, CLASSES, target_escape=0.34)  # floor(0.34*3) = 1
    assert c["allowed_escapes"] == 1
    assert c["global_threshold"] == pytest.approx(0.6)
    assert c["escapes"] == 1 and c["false_rejects"] == 0


def test_per_class_threshold_raised_where_support_allows(monkeypatch: pytest.MonkeyPatch,
                                                        fixture: tuple) -> None:
    import lineside_training.quality as quality

    monkeypatch.setattr(quality, "MIN_SUPPORT", 1)
    records, preds = fixture
    c = calibrate(records, preds, CLASSES, target_escape=0.0)
    # 'short' can rise to 0.6 (d2 is still caught by it) which clears g1's 0.5 alarm;
    # 'open' must stay at 0.3 or d3 escapes
    assert c["thresholds"]["open"] == pytest.approx(0.3)
    assert c["thresholds"]["short"] == pytest.approx(0.6)
    assert c["escapes"] == 0 and c["false_rejects"] == 0


def test_no_good_images_gives_nan_rate() -> None:
    q = quality_metrics([_rec("d", [(1, 1, 5, 5, "open")])], [_pred([])], CLASSES,
                        {"open": 0.5, "short": 0.5})
    assert math.isnan(q["false_reject_rate"]) and q["escape_rate"] == 1.0


def test_threshold_lowered_when_it_costs_no_false_reject() -> None:
    records = [
        _rec("d1", [(10, 10, 20, 20, "open")]),
        _rec("d2", [(10, 10, 20, 20, "open"), (50, 50, 60, 60, "open")]),
        _rec("g1", []),
    ]
    preds = [
        _pred([(10, 10, 20, 20, 0.9, 0)]),
        # second defect found only at 0.4; a false box at 0.35 on the same (defective) part
        _pred([(10, 10, 20, 20, 0.95, 0), (50, 50, 60, 60, 0.4, 0), (80, 80, 90, 90, 0.35, 0)]),
        _pred([(70, 70, 80, 80, 0.3, 0)]),  # the good part's false alarm
    ]
    c = calibrate(records, preds, CLASSES, target_escape=0.0)
    # escapes allow up to 0.9, where nothing is rejected; 0.4 rejects nothing either and
    # finds d2's second defect (F1 1.0), 0.35 adds a false box (F1 0.86), 0.3 a false reject
    assert c["global_threshold"] == pytest.approx(0.9)
    assert c["thresholds"]["open"] == pytest.approx(0.4)
    assert c["false_rejects"] == 0 and c["escapes"] == 0
    q = quality_metrics(records, preds, CLASSES, c["thresholds"])
    assert q["defect_recall"] == 1.0 and q["defect_precision"] == 1.0
