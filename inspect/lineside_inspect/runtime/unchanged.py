"""The unchanged-part gate of reference stations: pass a part whose frame matches its
golden image everywhere without running the detector.

Most parts on a line are good, and a reference station already knows where a frame
differs from its golden image. The gate compares the two as an AOI machine does, with a
tolerance band: a frame pixel is *changed* only where its grey level lies outside the
range of the reference within ``tolerance_px`` of it (the reference dilated and eroded),
after matching the frame's brightness and contrast to the reference's. Edges that moved
by up to ``tolerance_px`` (a part a pixel or two off its fixture) and a global gain change
give no excess; a defect larger than the band does. The excess is smoothed over 3x3
pixels (single-pixel sensor noise and JPEG ringing fall, a 3x3 defect keeps its value)
and its maximum per ``tile`` x ``tile`` tile is the tile's score.

A part passes unchanged when no tile's score reaches ``floor``, which is calibrated from
good pairs (:func:`calibrate_floor`: the highest good score times a margin). Anything
above it runs the detector as usual, so the gate can only save time on good parts; what
it must never do is pass a defective one, which ``tools/unchanged_gate.py`` measures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lineside_inspect.errors import ConfigError, LinesideError
from lineside_inspect.opencv import cv2
from lineside_inspect.runtime.reference import gray, same_size


class UnchangedGate(BaseModel):
    """A recipe's ``unchanged_gate``: pass parts that match their reference without
    running the detector (reference models only)."""

    model_config = ConfigDict(extra="forbid")
    floor: float = Field(..., gt=0, le=255, strict=True, description=(
        "tile score (grey levels of excess over the tolerance band) at which a tile has "
        "changed; calibrate it from good parts with `lineside calibrate-unchanged`"))
    tolerance_px: int = Field(3, ge=0, le=8, strict=True,
                              description="how far an edge may move unnoticed")
    tile: int = Field(32, ge=8, le=256, strict=True)


@dataclass(frozen=True)
class GateResult:
    unchanged: bool
    score: float  # the highest tile score
    changed_tiles: int


MAX_GAIN = 1.4


def _matched(frame: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``frame`` (grey uint8) with the reference's mean and contrast: a lamp a little
    brighter or another exposure is not a defect."""
    fm, fs = cv2.meanStdDev(frame)
    rm, rs = cv2.meanStdDev(reference)
    # the gain is bounded: a flat reference (std 0) must not flatten the frame, defects and
    # all, and no re-photograph changes contrast by more than this
    alpha = min(MAX_GAIN, max(1 / MAX_GAIN, float(rs[0, 0]) / max(float(fs[0, 0]), 1e-3)))
    beta = float(rm[0, 0]) - alpha * float(fm[0, 0])
    # saturating uint8 arithmetic throughout: a few passes over the frame, ~1 ms at 640x640
    return np.asarray(cv2.addWeighted(frame, alpha, frame, 0.0, beta))  # saturates to 0..255


def excess(frame: np.ndarray, reference: np.ndarray, tolerance_px: int) -> np.ndarray:
    """Per-pixel grey levels by which ``frame`` leaves the reference's tolerance band,
    smoothed over 3x3 (uint8, same size as the frame)."""
    same_size(frame, reference)
    ref = gray(reference)
    f = _matched(gray(frame), ref)
    if tolerance_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * tolerance_px + 1, 2 * tolerance_px + 1))
        hi, lo = cv2.dilate(ref, k), cv2.erode(ref, k)
    else:
        hi = lo = ref
    # cv2.subtract saturates at 0: only what lies above the band, or below it, remains
    out = cv2.max(cv2.subtract(f, hi), cv2.subtract(lo, f))
    return np.asarray(cv2.blur(out, (3, 3)))


def tile_scores(ex: np.ndarray, tile: int) -> np.ndarray:
    """The maximum of ``ex`` in each ``tile`` x ``tile`` tile (edge tiles may be smaller)."""
    h, w = ex.shape
    th, tw = -(-h // tile), -(-w // tile)
    padded = np.zeros((th * tile, tw * tile), dtype=ex.dtype)
    padded[:h, :w] = ex
    return np.asarray(padded.reshape(th, tile, tw, tile).max(axis=(1, 3)), dtype=np.float32)


def check(frame: np.ndarray, reference: np.ndarray, gate: UnchangedGate) -> GateResult:
    scores = tile_scores(excess(frame, reference, gate.tolerance_px), gate.tile)
    changed = int((scores >= gate.floor).sum())
    return GateResult(unchanged=changed == 0, score=float(scores.max()), changed_tiles=changed)


def calibrate_floor(pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, tolerance_px: int = 3,
                    tile: int = 32, margin: float = 1.5, minimum: float = 12.0,
                    names: Sequence[str] = ()) -> dict[str, float]:
    """A floor from good ``(frame, reference)`` pairs: ``margin`` times the highest tile
    score any of them reached, and at least ``minimum`` grey levels. Returns the floor
    with the figures it came from. ``names`` (the frames' files, in order) name a frame
    the calibration refuses, so the user knows which file to take out."""
    best = []
    for i, (frame, reference) in enumerate(pairs):
        try:
            best.append(float(tile_scores(excess(frame, reference, tolerance_px), tile).max()))
        except LinesideError as exc:  # e.g. a frame of another size than the reference
            if i < len(names):
                raise exc.prefixed(names[i]) from None
            raise
    if not best:
        raise ConfigError("no good frames to calibrate the unchanged gate from")
    worst = max(best)
    if worst * margin > 255:
        k = best.index(worst)
        which = f"{names[k]}: " if k < len(names) else ""
        raise ConfigError(
            f"{which}good frame {k + 1} differs from the reference by {worst:.0f} grey "
            "levels, as a defect would: calibrate from good parts of this view only")
    return {"floor": round(max(minimum, worst * margin), 2), "good_pairs": len(best),
            "minimum_applied": worst * margin < minimum,
            "highest_good_score": round(worst, 2),
            "p99_good_score": round(float(np.percentile(best, 99)), 2),
            "tolerance_px": tolerance_px, "tile": tile, "margin": margin}
