"""Operating points of a good-only model: thresholds from good images alone, and the
quality figures on good and defective ones (image AUROC, escapes at a false-reject rate)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import rankdata

from lineside_inspect.errors import ConfigError
from lineside_training.quality import MARGIN

REPORTED_FALSE_REJECTS = (0.01, 0.02)
# a threshold above this is at the score's ceiling (it is set up to MARGIN above a good
# capture's score): good parts score 1.0 or nearly, and hardly a defect can score above
NEAR_CEILING = 1 - MARGIN


def image_threshold(good_scores: np.ndarray, target_false_reject: float) -> float:
    """The image-score threshold (score >= threshold fails) that rejects at most
    ``target_false_reject`` of these good images: above the score of the highest one that
    must pass (with 100 images and 1%, the second highest), by ``MARGIN`` or half the gap
    to the next, whichever is less. Just above it (one float64 step), the exported graph
    scored that image a last float32 digit higher than torch had, and failed it."""
    if len(good_scores) == 0:
        raise ConfigError("calibration needs at least one good image")
    ordered = np.sort(np.asarray(good_scores, np.float64))[::-1]
    allowed = int(np.floor(target_false_reject * len(ordered) + 1e-9))
    if allowed >= len(ordered):
        return float(ordered[-1])
    highest = float(ordered[allowed])  # the highest score that must pass
    gap = float(ordered[allowed - 1]) - highest if allowed else math.inf
    return float(min(1.0, max(np.nextafter(highest, np.inf), highest + min(MARGIN, gap / 2))))


def _pass_above(good: np.ndarray, false_reject: float) -> float:
    allowed = int(np.floor(false_reject * len(good) + 1e-9))
    ordered = np.sort(good)[::-1]
    if allowed >= len(ordered):
        return float(ordered[-1])
    return float(min(1.0, np.nextafter(ordered[allowed], np.inf)))


def captures_needed(target_false_reject: float) -> int:
    """Fewest good captures for a threshold at this rate to let one of them fail: below
    it none may, and the threshold is only the highest score seen."""
    return math.ceil(1 / target_false_reject - 1e-9)


def map_threshold(good_top_pixels: list[np.ndarray], pixels_per_image: int,
                  pixel_false_positive: float, threshold: float) -> float:
    """The map value above which pixels form regions: good pixels exceed it at about
    ``pixel_false_positive``; never above the image threshold, so a failed part always
    shows where (its top pixels average at least the threshold, so one is above it).
    ``good_top_pixels`` holds each good image's highest map values (enough of them: the
    quantile only looks at the top)."""
    top = np.sort(np.concatenate(good_top_pixels))[::-1]
    k = int(pixel_false_positive * pixels_per_image * len(good_top_pixels))
    value = float(top[min(k, len(top) - 1)])
    return min(value, threshold)


def operating_point(scores: np.ndarray, top_pixels: list[np.ndarray], *,
                    target_false_reject: float, pixels_per_image: int,
                    pixel_false_positive: float) -> dict[str, Any]:
    """The image and map thresholds from good captures' ``scores`` and ``top_pixels``
    (training's held-out groups, or a line's own good parts for ``lineside calibrate``),
    with the spread of the scores they were set on. Scores or maps that are not finite
    (a diverged run's NaN) are refused: they set a threshold of 1.0 and a map threshold
    of NaN, and a run so calibrated was saved as if good parts scored the ceiling."""
    broken = int((~np.isfinite(np.asarray(scores, np.float64))
                  | np.asarray([not np.isfinite(t).all() for t in top_pixels], bool)).sum())
    if broken:
        raise ConfigError(f"the model's output is not a number (NaN or inf) on {broken} of "
                          f"{len(scores)} good captures: no threshold can be set on it. A "
                          "training run whose loss went nan diverged: train again with a "
                          "lower lr (--set lr=...)")
    thr = image_threshold(scores, target_false_reject)
    return {"threshold": thr,
            "map_threshold": map_threshold(top_pixels, pixels_per_image, pixel_false_positive,
                                           thr),
            "target_false_reject": target_false_reject, "calibration_captures": len(scores),
            "good_score_quantiles": {q: float(np.quantile(scores, q))
                                     for q in (0.5, 0.9, 0.99, 1.0)}}


def auroc(good: np.ndarray, defective: np.ndarray) -> float | None:
    """P(a defective image scores above a good one), ties counting half (Mann-Whitney)."""
    if len(good) == 0 or len(defective) == 0:
        return None
    ranks = rankdata(np.concatenate([good, defective]))
    u = ranks[len(good):].sum() - len(defective) * (len(defective) + 1) / 2
    return float(u / (len(good) * len(defective)))


def escapes_at(good: np.ndarray, defective: np.ndarray, false_reject: float) -> dict[str, Any]:
    """Escapes when the threshold is set, on these good images, to reject at most
    ``false_reject`` of them (the figure that compares models independent of calibration)."""
    thr = _pass_above(good, false_reject)
    rejected = int((good >= thr).sum())
    escaped = int((defective < thr).sum())
    return {"false_reject": false_reject, "threshold": thr, "false_rejects": rejected,
            "good": len(good), "escapes": escaped, "defective": len(defective),
            "escape_rate": escaped / len(defective) if len(defective) else None}


def judge(good: np.ndarray, defective: np.ndarray, threshold: float) -> dict[str, Any]:
    """Escapes and false rejects at a given (calibrated) threshold."""
    fr, esc = int((good >= threshold).sum()), int((defective < threshold).sum())
    return {"threshold": threshold, "false_rejects": fr, "good": len(good),
            "false_reject_rate": fr / len(good) if len(good) else None,
            "escapes": esc, "defective": len(defective),
            "escape_rate": esc / len(defective) if len(defective) else None}


def quality(good: np.ndarray, defective: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """AUROC, escapes at each reported false-reject rate and at ``threshold``. Without good
    images there is no false-reject rate to set a threshold at: that list is empty."""
    out: dict[str, Any] = {"auroc": auroc(good, defective),
                           "at_false_reject": [escapes_at(good, defective, f)
                                               for f in REPORTED_FALSE_REJECTS] if len(good)
                           else []}
    if threshold is not None:
        out["at_card_threshold"] = judge(good, defective, threshold)
    return out
