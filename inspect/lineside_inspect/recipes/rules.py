"""The rules engine: detections + recipe -> verdict with reasons. Pure functions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from lineside_inspect.recipes.schema import Polygon, Recipe
from lineside_inspect.runtime.types import Detections
from lineside_inspect.schemas import Outcome, Reason


@dataclass
class Verdict:
    """A recipe's judgement of one image: ``outcome`` with the ``reasons`` for a fail and
    the ``defects`` the recipe counted (never None: empty when there are none)."""

    outcome: Outcome
    defects: Detections
    reasons: list[Reason] = field(default_factory=list)


def _inside(points: np.ndarray, polygon: Polygon) -> np.ndarray:
    """Even-odd point-in-polygon for ``[N, 2]`` points."""
    poly = np.asarray(polygon, dtype=np.float64)
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    crosses = ((y1 <= y) != (y2 <= y)) & (
        x < (x2 - x1) * (y - y1) / np.where(y2 == y1, 1e-12, y2 - y1) + x1
    )
    return np.asarray(crosses.sum(axis=1) % 2 == 1)


def counted(detections: Detections, recipe: Recipe, thresholds: dict[str, float]) -> Detections:
    """The detections the recipe counts as defects (score, size, regions)."""
    if len(detections) == 0:
        return detections
    labels = detections.labels
    floor = recipe.default_min_score
    mins = np.array([recipe.min_score.get(lb, thresholds.get(lb, 0.5) if floor is None else floor)
                     for lb in labels])
    keep = detections.scores >= mins
    sides = np.maximum(detections.xyxy[:, 2] - detections.xyxy[:, 0],
                       detections.xyxy[:, 3] - detections.xyxy[:, 1])
    keep &= sides >= recipe.min_size()
    centres = (detections.xyxy[:, :2] + detections.xyxy[:, 2:]) / 2
    if recipe.roi:
        keep &= np.any([_inside(centres, p) for p in recipe.roi], axis=0)
    for p in recipe.ignore:
        keep &= ~_inside(centres, p)
    return detections[keep]


def judge(detections: Detections, recipe: Recipe, thresholds: dict[str, float]) -> Verdict:
    """Apply ``recipe`` to ``detections`` (``thresholds``: the model card's per-class
    calibrated scores, used where the recipe sets none)."""
    defects = counted(detections, recipe, thresholds)
    counts = Counter(defects.labels)
    reasons: list[Reason] = []
    for label, n in sorted(counts.items()):
        if label in recipe.critical:
            reasons.append(Reason(rule="critical", label=label, count=n, allowed=0,
                                  message=f"{n} {label} defect(s): {label} is critical"))
            continue
        allowed = recipe.max_count.get(label, 0)
        if n > allowed:
            reasons.append(Reason(rule="max_count", label=label, count=n, allowed=allowed,
                                  message=f"{n} {label} defect(s), {allowed} allowed"))
    return Verdict("fail" if reasons else "pass", defects, reasons)
