"""Quality metrics and threshold calibration against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lineside_inspect.dataset import Box, ImageRecord
from lineside_training.predict import Prediction
from lineside_training.quality import MARGIN, calibrate, quality_metrics

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


def test_iou_matrix_by_hand() -> None:
    from lineside_inspect.boxes import box_iou, iou_matrix

    a = np.array([[0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [10, 10, 0, 0]], dtype=np.float32)
    m = iou_matrix(a, b)
    # an inverted box has no area: it overlaps nothing and does not shrink the union
    assert m.tolist() == [[pytest.approx(50 / 150), 0.0, 0.0]]
    assert m.dtype == np.float32  # the matching compares in the data's own precision
    assert m[0, 0] == pytest.approx(box_iou((0, 0, 10, 10), (5, 0, 15, 10)))
    assert iou_matrix(a, np.zeros((0, 4), np.float32)).shape == (1, 0)


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


def test_escapes_of_a_model_that_alarms_everywhere_are_said_for_what_they_count(
        fixture: tuple) -> None:
    """A 2-step reference run showed escape rate 0 beside detection rate 0 and no word: an
    escape is a defective part judged pass, and a model alarming on every part (none on
    a defect) passes none. The count is right; the summary says what it counts (review,
    session 47), and only where most defective parts failed without their defect found."""
    from lineside_training.evaluate import quality_lines
    from lineside_training.quality import escape_note

    records, _ = fixture
    preds = [_pred([(80, 0, 99, 9, 0.7, 0)]) for _ in records]  # a corner, on every part
    q = quality_metrics(records, preds, CLASSES, {"open": 0.5, "short": 0.5})
    assert (q["escapes"], q["detected_images"], q["failed_undetected"]) == (0, 0, 3)
    assert q["false_reject_rate"] == 1.0
    note = escape_note(q)
    assert note is not None and note.startswith(
        "3 of the 3 defective images were judged fail though none of their defects was "
        "found (right class, IoU 0.5; 0 were)"), note
    assert ("read the escape rate 0.0000 with the false-reject rate 1.0000 and the detection "
            "rate 0.0000") in note
    assert f"  - {note}" in quality_lines(q)  # (summary.md, under the escape rate)
    # a model finding its defects: no such note (d1 and d2 found, d3 escapes)
    q = quality_metrics(records, fixture[1], CLASSES, {"open": 0.5, "short": 0.5})
    assert q["failed_undetected"] == 0 and escape_note(q) is None


def test_a_box_of_another_class_scored_higher_does_not_take_a_defect_from_its_own() -> None:
    """One pass matched a defect to the highest-scored box over it, of any class: an
    overlapping "short" at 0.9 took the "open" defect, and the "open" box at 0.8 then
    found nothing. The defect was counted missed (evaluate's recall below the gate's on
    one package); it is found by its own class, the other box is a false positive."""
    records = [_rec("d", [(10, 10, 20, 20, "open")])]
    preds = [_pred([(10, 10, 20, 20, 0.9, 1), (10, 10, 20, 21, 0.8, 0)])]
    q = quality_metrics(records, preds, CLASSES, {"open": 0.5, "short": 0.5})
    assert q["defect_recall"] == 1.0 and q["detected_images"] == 1
    assert q["per_class"]["open"]["found"] == 1
    conf = np.array(q["confusion"])
    assert conf[0, 0] == 1 and conf[2, 1] == 1 and conf.sum() == 2
    # alone, the other class's box is a defect found as another class (not a miss)
    q = quality_metrics(records, [_pred([(10, 10, 20, 20, 0.9, 1)])], CLASSES,
                        {"open": 0.5, "short": 0.5})
    assert q["defect_recall"] == 0.0 and np.array(q["confusion"])[0, 1] == 1


def test_calibration_zero_escapes(fixture: tuple) -> None:
    records, preds = fixture
    c = calibrate(records, preds, CLASSES, target_escape=0.0)
    # defective image max scores 0.9, 0.6, 0.3: no escape allowed -> global 0.3
    assert c["global_threshold"] == pytest.approx(0.3)
    assert c["allowed_escapes"] == 0 and c["escapes"] == 0
    # classes have fewer than MIN_SUPPORT boxes: no per-class raise; the threshold sits
    # just under d3's 0.3, not on it
    assert c["thresholds"] == {"open": pytest.approx(0.3 - MARGIN), "short": pytest.approx(0.3 - MARGIN)}
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
    assert c["thresholds"]["open"] == pytest.approx(0.3 - MARGIN)
    assert c["thresholds"]["short"] == pytest.approx(0.6 - MARGIN)
    assert c["escapes"] == 0 and c["false_rejects"] == 0


def test_without_good_images_rates_are_not_measurable_and_classes_are_reported() -> None:
    """Every image defective: escapes and false rejects say nothing (a wrong-class alarm
    would "catch" d2), so they are not measured; per-class figures are."""
    records = [_rec("d1", [(10, 10, 20, 20, "open")]),
               _rec("d2", [(10, 10, 20, 20, "short")]),
               _rec("d3", [(10, 10, 20, 20, "short"), (40, 40, 50, 50, "open")])]
    preds = [_pred([(10, 10, 20, 20, 0.9, 0)]),
             _pred([(10, 10, 20, 20, 0.8, 0)]),  # an alarm, but of the wrong class
             _pred([(10, 10, 20, 20, 0.7, 1), (70, 70, 80, 80, 0.6, 1)])]
    q = quality_metrics(records, preds, CLASSES, {"open": 0.5, "short": 0.5})
    assert q["escape_rate"] is None and q["false_reject_rate"] is None
    assert "no good" in q["not_measurable"]["escape_rate"]
    # no count beside a rate that is not measurable: a 0 there read as "measured zero"
    # beside the null rate (session 42); the reason is the rate's
    assert q["escapes"] is None and q["false_rejects"] is None
    # class-aware: d2's short is not found, d3's short is; d1's open found, d3's open missed
    assert (q["detected_images"], q["detection_rate"]) == (2, pytest.approx(2 / 3))
    assert q["per_class"]["open"] == {"boxes": 2, "found": 1, "predicted": 2, "recall": 0.5,
                                      "precision": 0.5, "images": 2, "images_detected": 1,
                                      "detection_rate": 0.5}
    assert q["per_class"]["short"]["recall"] == 0.5 and q["per_class"]["short"]["precision"] == 0.5
    assert q["per_class"]["short"]["detection_rate"] == 0.5
    json_safe = [v for v in (q["defect_recall"], q["defect_precision"]) if isinstance(v, float)]
    assert not any(math.isnan(v) for v in json_safe)
    c = calibrate(records, preds, CLASSES)
    # not counted where they cannot be: a 0 read as a result (session 41)
    assert "no good images" in c["method"] and c["false_rejects"] is None
    assert c["escapes"] is None and c["allowed_escapes"] is None
    assert c["not_measurable"]["allowed_escapes"].startswith("not checked")


def test_good_images_alone_leave_the_escape_allowance_unchecked(fixture: tuple) -> None:
    """No defective image: nothing can escape, so neither the escape count nor the
    allowance is a figure (both were 0, an allowance "met" on no defect; session 42); the
    false rejects are measured."""
    records, preds = fixture
    good, good_preds = records[3:], preds[3:]
    q = quality_metrics(good, good_preds, CLASSES, {"open": 0.4, "short": 0.4})
    assert (q["escapes"], q["escape_rate"]) == (None, None)
    assert (q["false_rejects"], q["false_reject_rate"]) == (1, pytest.approx(1 / 3))
    c = calibrate(good, good_preds, CLASSES, target_escape=0.0)
    assert c["escapes"] is None and c["allowed_escapes"] is None
    assert "no defective images" in c["not_measurable"]["allowed_escapes"]
    assert isinstance(c["false_rejects"], int)


def test_thresholds_never_sit_on_a_score(fixture: tuple) -> None:
    """A threshold equal to the score that decides an image flips that image when another
    runtime computes the score a last digit lower (torch 0.33692446, onnxruntime
    0.3369244): calibration leaves a margin on both sides, with the same decisions."""
    records, preds = fixture
    for target in (0.0, 0.34, 0.67):
        c = calibrate(records, preds, CLASSES, target_escape=target)
        scores = np.concatenate([p.scores for p in preds]).astype(np.float64)
        for t in c["thresholds"].values():
            gap = np.abs(scores - t).min()
            assert gap >= MARGIN / 2 - 1e-7, (target, t)
        lowered = {k: np.nextafter(np.float32(v), np.float32(0)) for k, v in c["thresholds"].items()}
        q_low = quality_metrics(records, [Prediction(p.boxes, p.scores - np.float32(1e-6), p.labels)
                                          for p in preds], CLASSES, c["thresholds"])
        q = quality_metrics(records, preds, CLASSES, c["thresholds"])
        assert (q["escapes"], q["false_rejects"]) == (c["escapes"], c["false_rejects"])
        assert (q_low["escapes"], q_low["false_rejects"]) == (q["escapes"], q["false_rejects"])
        assert quality_metrics(records, preds, CLASSES, lowered)["escapes"] == q["escapes"]


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
    assert c["thresholds"]["open"] == pytest.approx(0.4 - MARGIN)
    assert c["false_rejects"] == 0 and c["escapes"] == 0
    q = quality_metrics(records, preds, CLASSES, c["thresholds"])
    assert q["defect_recall"] == 1.0 and q["defect_precision"] == 1.0


@pytest.mark.parametrize("goal", [None, 0.75])
def test_time_to_accuracy_goal_comes_from_the_config(goal: float | None) -> None:
    """DeepPCB's 0.95 is not every recipe's goal: the line is the config's, or none."""
    import matplotlib.pyplot as plt

    from lineside_training.evaluate import curve_figure

    fig = curve_figure([{"elapsed_min": 1.0, "map50": 0.3, "map": 0.1},
                        {"elapsed_min": 2.0, "map50": 0.5, "map": 0.2}], goal)
    flat = [line for line in fig.axes[0].lines if len(set(line.get_ydata())) == 1]
    plt.close(fig)
    assert [line.get_ydata()[0] for line in flat] == ([] if goal is None else [goal])
