"""Metrics in quality terms: escapes, false rejects, and threshold calibration.

Pure numpy over predictions and ground truth, so they are checked against hand-computed
numbers in the tests.

* A **defective image** (one with ground-truth boxes) **escapes** when no prediction
  reaches its class threshold: the part would pass.
* A **good image** is **falsely rejected** when any prediction reaches its class threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lineside_inspect.dataset import ImageRecord
from lineside_training.predict import Prediction

MIN_SUPPORT = 10  # ground-truth boxes a class needs before it gets its own threshold
FLOOR = 0.05


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of ``x1, y1, x2, y2`` boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _keep(pred: Prediction, thresholds: np.ndarray) -> np.ndarray:
    return pred.scores >= thresholds[pred.labels] if len(pred.scores) else np.zeros(0, bool)


def quality_metrics(
    records: list[ImageRecord],
    preds: list[Prediction],
    class_names: list[str],
    thresholds: dict[str, float],
    *,
    iou: float = 0.5,
) -> dict[str, Any]:
    """Defect-level recall/precision and image-level escape/false-reject rates at the
    operating thresholds (a prediction counts when its score >= its class threshold)."""
    thr = np.array([thresholds[c] for c in class_names], dtype=np.float32)
    index = {n: i for i, n in enumerate(class_names)}
    tp = n_gt = n_pred = 0
    defective = escapes = good = rejects = 0
    confusion = np.zeros((len(class_names) + 1, len(class_names) + 1), dtype=np.int64)
    for rec, pred in zip(records, preds, strict=True):
        keep = _keep(pred, thr)
        boxes, labels, scores = pred.boxes[keep], pred.labels[keep], pred.scores[keep]
        gt = np.array([b.xyxy() for b in rec.boxes], dtype=np.float32).reshape(-1, 4)
        gt_lab = np.array([index[b.label] for b in rec.boxes], dtype=np.int64)
        n_gt += len(gt)
        n_pred += len(boxes)
        if rec.boxes:
            defective += 1
            escapes += int(len(boxes) == 0)
        else:
            good += 1
            rejects += int(len(boxes) > 0)
        # greedy matching by score: same class for recall, any class for the confusion matrix
        ious = box_iou(boxes[np.argsort(-scores)], gt)
        order_labels = labels[np.argsort(-scores)]
        taken = np.zeros(len(gt), bool)
        for p, row in enumerate(ious):
            same = (gt_lab == order_labels[p]) & ~taken & (row >= iou)
            cand = same if same.any() else (~taken & (row >= iou))
            if cand.any():
                g = int(np.argmax(np.where(cand, row, -1)))
                taken[g] = True
                confusion[gt_lab[g], order_labels[p]] += 1
                tp += int(gt_lab[g] == order_labels[p])
            else:
                confusion[-1, order_labels[p]] += 1  # false positive on background
        for miss in np.flatnonzero(~taken):
            confusion[gt_lab[miss], -1] += 1  # missed defect
    return {
        "thresholds": dict(thresholds),
        "defect_recall": tp / n_gt if n_gt else math.nan,
        "defect_precision": tp / n_pred if n_pred else math.nan,
        "defective_images": defective,
        "good_images": good,
        "escapes": escapes,
        "false_rejects": rejects,
        "escape_rate": escapes / defective if defective else math.nan,
        "false_reject_rate": rejects / good if good else math.nan,
        "confusion": confusion.tolist(),
        "confusion_labels": [*class_names, "background/missed"],
    }


def _escapes(records: list[ImageRecord], preds: list[Prediction], thr: np.ndarray) -> int:
    return sum(1 for r, p in zip(records, preds, strict=True) if r.boxes and not _keep(p, thr).any())


def _rejects(records: list[ImageRecord], preds: list[Prediction], thr: np.ndarray) -> int:
    return sum(1 for r, p in zip(records, preds, strict=True) if not r.boxes and _keep(p, thr).any())


def calibrate(
    records: list[ImageRecord],
    preds: list[Prediction],
    class_names: list[str],
    *,
    target_escape: float = 0.005,
) -> dict[str, Any]:
    """Operating thresholds with the fewest false rejects whose image escape rate is at or
    under ``target_escape``.

    First one global threshold: the highest whose escapes stay within the allowance
    ``floor(target * defective images)``. Then, per class with at least ``MIN_SUPPORT``
    ground-truth boxes, the class threshold is raised as far as the escape allowance
    still holds (escapes only grow and false rejects only fall as a threshold rises).

    Raising a threshold past the last false reject it clears buys nothing and misses
    defects, so last, each threshold is lowered to the score with the best defect-level
    F1 among those that keep the same false rejects and the escape allowance (a model
    whose good images raise no alarm would otherwise sit at the top of its range).
    """
    defective = [i for i, r in enumerate(records) if r.boxes]
    allowed = math.floor(target_escape * len(defective) + 1e-9)
    image_max = np.array([float(preds[i].scores.max()) if len(preds[i].scores) else 0.0
                          for i in defective])
    ordered = np.sort(image_max)
    if len(ordered) == 0:
        global_t = 0.5
    elif allowed >= len(ordered):
        global_t = 1.0
    else:
        global_t = float(ordered[allowed])
    global_t = max(global_t, FLOOR)
    thr = np.full(len(class_names), global_t, dtype=np.float32)
    support = np.zeros(len(class_names), dtype=np.int64)
    index = {n: i for i, n in enumerate(class_names)}
    for r in records:
        for b in r.boxes:
            support[index[b.label]] += 1
    for c in np.argsort(-support):
        if support[c] < MIN_SUPPORT:
            continue
        candidates = np.unique(np.concatenate([p.scores[p.labels == c] for p in preds] or [[]]))
        candidates = candidates[candidates > thr[c]]
        lo, hi = 0, len(candidates)  # escapes grow with the threshold: bisect the last ok
        while lo < hi:
            mid = (lo + hi) // 2
            trial = thr.copy()
            trial[c] = candidates[mid]
            if _escapes(records, preds, trial) > allowed:
                hi = mid
            else:
                lo = mid + 1
        if lo > 0:
            thr[c] = candidates[lo - 1]
    thr = _lower_to_best_f1(records, preds, class_names, thr, support, allowed)
    per_class = {n: float(thr[i]) for i, n in enumerate(class_names)}
    return {
        "target_escape_rate": target_escape,
        "global_threshold": global_t,
        "thresholds": per_class,
        "escapes": _escapes(records, preds, thr),
        "false_rejects": _rejects(records, preds, thr),
        "allowed_escapes": allowed,
    }


def _f1(records: list[ImageRecord], preds: list[Prediction], class_names: list[str],
        thr: np.ndarray) -> float:
    q = quality_metrics(records, preds, class_names, dict(zip(class_names, thr.tolist(), strict=True)))
    r, p = q["defect_recall"], q["defect_precision"]
    return 0.0 if math.isnan(r) or math.isnan(p) or r + p == 0 else 2 * r * p / (r + p)


def _lower_to_best_f1(records: list[ImageRecord], preds: list[Prediction],
                      class_names: list[str], thr: np.ndarray, support: np.ndarray,
                      allowed: int, max_candidates: int = 64) -> np.ndarray:
    """Per class (most supported first; all classes together for those without their own
    threshold), try the prediction scores below the current threshold and keep the one
    with the best F1 that adds no false reject and stays within the escape allowance.
    Ties keep the higher threshold."""
    thr = thr.copy()
    rejects = _rejects(records, preds, thr)
    own = [c for c in np.argsort(-support) if support[c] >= MIN_SUPPORT]
    shared = [c for c in range(len(class_names)) if c not in own]
    for group in ([shared] if shared else []) + [[c] for c in own]:
        scores = np.unique(np.concatenate(
            [p.scores[np.isin(p.labels, group)] for p in preds] or [np.zeros(0)]))
        current = float(thr[group[0]])
        scores = scores[(scores >= FLOOR) & (scores < current)][::-1]  # highest first
        if len(scores) > max_candidates:  # quantiles keep the search cheap
            scores = scores[np.linspace(0, len(scores) - 1, max_candidates).astype(int)]
        best, best_f1 = current, _f1(records, preds, class_names, thr)
        for t in scores:
            trial = thr.copy()
            trial[group] = t
            if _rejects(records, preds, trial) > rejects:
                break  # lower still only adds alarms
            if _escapes(records, preds, trial) <= allowed:
                f1 = _f1(records, preds, class_names, trial)
                if f1 > best_f1 + 1e-9:
                    best, best_f1 = float(t), f1
        thr[group] = best
    return thr
