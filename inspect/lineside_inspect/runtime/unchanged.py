"""The unchanged-part gate of reference stations: pass a part whose frame matches its
golden image everywhere without running the detector.

Most parts on a line are good, and a reference station already knows where a frame
differs from its golden image. The gate compares the two as an AOI machine does, with a
tolerance band, after matching the frame's brightness and contrast to the reference's:

- both ways: a frame pixel outside the range of the reference within ``tolerance_px`` of
  it (the reference dilated and eroded) is *extra* (a short, a spur, a speck), and a
  reference pixel outside the frame's range is *missing* (an open, a vanished trace).
  One way alone let any trace or gap narrower than the band vanish or be bridged unseen
  (a review found 284 of DeepPCB's 6,873 single defects passed with a one-way 3 px band);
- per tile, not per pixel, for where the part sits: each ``tile`` x ``tile`` tile is
  compared at the integer shifts around the frame's own (guessed from its row and column
  profiles, at most ``max_shift_px``) and keeps its best; a part a pixel or two off its
  fixture, or turned a little, matches, while a defect cannot hide by moving pixel by
  pixel. On the side a part moved from, the frame shows what the golden's edge does not
  (``shift + tolerance_px`` pixels there): that band is not compared at that shift, nor
  the outermost ``tolerance_px`` all round (the part's sub-pixel rest blends in what lies
  beyond the golden's view).

The excess is smoothed over 3x3 pixels (single-pixel sensor noise and JPEG ringing fall,
a 3x3 defect keeps its value) and its maximum per tile is the tile's score. A part passes
unchanged when no tile's best score reaches ``floor``, which is calibrated from good pairs
(:func:`calibrate_floor`: the highest good score times a margin). Anything above it runs
the detector as usual, so the gate can only save time on good parts; what it must never
do is pass a defective one, which ``tools/unchanged_gate.py`` measures, defect by defect.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lineside_inspect.errors import ConfigError, LinesideError
from lineside_inspect.opencv import cv2
from lineside_inspect.runtime.reference import gray, same_size

FIXTURE_PLAY_PX = 2  # how far a part may sit off its fixture, unless a recipe says


class UnchangedGate(BaseModel):
    """A recipe's ``unchanged_gate``: pass parts that match their reference without
    running the detector (reference models only)."""

    model_config = ConfigDict(extra="forbid")
    floor: float = Field(..., gt=0, le=255, strict=True, description=(
        "tile score (grey levels of excess over the tolerance band) at which a tile has "
        "changed; calibrate it from good parts with `lineside calibrate-unchanged`"))
    tolerance_px: int = Field(1, ge=0, le=3, strict=True, description=(
        "how far an edge may move unnoticed within a tile (sub-pixel play, a slight turn); "
        "a trace or gap narrower than 2 x tolerance_px + 1 px is not seen"))
    max_shift_px: int = Field(FIXTURE_PLAY_PX, ge=0, le=8, strict=True, description=(
        "how far (px) a part may sit off its fixture: each tile is compared at the shifts "
        "around the frame's own, up to this far"))
    tile: int = Field(32, ge=8, le=256, strict=True)


@dataclass(frozen=True)
class GateResult:
    unchanged: bool
    score: float  # the highest tile score
    changed_tiles: int


MAX_GAIN = 1.4


def _matched(frame: np.ndarray, reference: np.ndarray, max_gain: float = MAX_GAIN) -> np.ndarray:
    """``frame`` (grey uint8) with the reference's mean and contrast: a lamp a little
    brighter or another exposure is not a defect."""
    fm, fs = cv2.meanStdDev(frame)
    rm, rs = cv2.meanStdDev(reference)
    # the gain is bounded: a flat reference (std 0) must not flatten the frame, defects and
    # all, and no re-photograph changes contrast by more than this. ``max_gain`` raises a
    # faint frame's contrast only: a frame is never flattened by more than MAX_GAIN (at
    # 1/64 a blank golden flattened every frame, a board or another product, to nothing,
    # and a reference model passed them all)
    alpha = min(max_gain, max(1 / MAX_GAIN, float(rs[0, 0]) / max(float(fs[0, 0]), 1e-3)))
    beta = float(rm[0, 0]) - alpha * float(fm[0, 0])
    # saturating uint8 arithmetic throughout: a few passes over the frame, ~1 ms at 640x640
    return np.asarray(cv2.addWeighted(frame, alpha, frame, 0.0, beta))  # saturates to 0..255


SOFTEN = 3  # px: Gaussian blur of both images before comparing (0: none)


def _grey_pair(frame: np.ndarray, reference: np.ndarray,
               max_gain: float = MAX_GAIN) -> tuple[np.ndarray, np.ndarray]:
    """Reference and frame in grey, the frame's brightness matched to the reference's, both
    softened a little: a one-pixel line photographed half a pixel off is half as dark over
    two pixels, which is the optics, not a defect."""
    same_size(frame, reference)
    ref = gray(reference)
    f = _matched(gray(frame), ref, max_gain)
    if SOFTEN:
        ref = np.asarray(cv2.GaussianBlur(ref, (SOFTEN, SOFTEN), 0))
        f = np.asarray(cv2.GaussianBlur(f, (SOFTEN, SOFTEN), 0))
    return ref, f


def _band(image: np.ndarray, tolerance_px: int) -> tuple[np.ndarray, np.ndarray]:
    """The image dilated and eroded: the grey range within ``tolerance_px`` of each pixel."""
    if tolerance_px == 0:
        return image, image
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * tolerance_px + 1, 2 * tolerance_px + 1))
    return np.asarray(cv2.dilate(image, k)), np.asarray(cv2.erode(image, k))


def _profile_shift(a: np.ndarray, b: np.ndarray, s: int) -> int:
    """The ``d`` in ``-s..s`` for which profile ``a[i + d]`` best matches ``b[i]``."""
    n = len(b)
    if s == 0 or n <= 2 * s:
        return 0
    errors = [float(np.abs(a[s + d:n - s + d] - b[s:n - s]).mean()) for d in range(-s, s + 1)]
    return int(np.argmin(errors)) - s


def shift_guess(frame: np.ndarray, reference: np.ndarray, max_shift_px: int) -> tuple[int, int]:
    """``(dx, dy)``: where the part sits, as its column and row profiles say (~0.2 ms): a
    frame pixel ``(x + dx, y + dy)`` shows the reference's ``(x, y)``. Only a first guess:
    each tile is still compared at the shifts around it."""
    def profiles(image: np.ndarray, axis: int) -> np.ndarray:
        return np.asarray(cv2.reduce(image, axis, cv2.REDUCE_AVG, dtype=cv2.CV_32F)).ravel()

    return (_profile_shift(profiles(frame, 0), profiles(reference, 0), max_shift_px),
            _profile_shift(profiles(frame, 1), profiles(reference, 1), max_shift_px))


def _shifts(guess: tuple[int, int], s: int) -> list[tuple[int, int]]:
    """The guess first, then its neighbours within ``s``, nearest first."""
    gx, gy = guess
    around = [(gx + dx, gy + dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
              if abs(gx + dx) <= s and abs(gy + dy) <= s]
    return sorted(around, key=lambda d: (abs(d[0] - gx) + abs(d[1] - gy), d))


_Prepared = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _prepared(f: np.ndarray, ref: np.ndarray, tolerance_px: int, s: int) -> _Prepared:
    rhi, rlo = _band(ref, tolerance_px)
    # padded by s: a shifted view of the frame is a slice of the same size as the reference
    fp = np.asarray(cv2.copyMakeBorder(f, s, s, s, s, cv2.BORDER_REPLICATE))
    fhi, flo = _band(fp, tolerance_px)
    return ref, rhi, rlo, fp, fhi, flo


def _excess_at(ref: np.ndarray, rhi: np.ndarray, rlo: np.ndarray, fp: np.ndarray,
               fhi: np.ndarray, flo: np.ndarray, shift: tuple[int, int], s: int,
               tolerance_px: int) -> np.ndarray:
    h, w = ref.shape
    dx, dy = shift
    rows, cols = slice(s + dy, s + dy + h), slice(s + dx, s + dx + w)
    fs, fh, fl = fp[rows, cols], fhi[rows, cols], flo[rows, cols]
    # cv2.subtract saturates at 0: only what lies above a band, or below it, remains
    out = cv2.max(cv2.max(cv2.subtract(fs, rhi), cv2.subtract(rlo, fs)),
                  cv2.max(cv2.subtract(ref, fh), cv2.subtract(fl, ref)))
    # a part dx px off shows, on the side it moved from, what the golden's edge does not:
    # that side is not compared (a border of 3 px all round passed any defect in it), and
    # the frame's outermost tolerance_px all round blend in, at the part's sub-pixel rest,
    # what lies beyond the golden's view
    if tolerance_px:
        t = tolerance_px
        out[:t], out[h - t:], out[:, :t], out[:, w - t:] = 0, 0, 0, 0
    if dx > 0:
        out[:, w - dx - tolerance_px:] = 0
    elif dx < 0:
        out[:, :-dx + tolerance_px] = 0
    if dy > 0:
        out[h - dy - tolerance_px:] = 0
    elif dy < 0:
        out[:-dy + tolerance_px] = 0
    return np.asarray(cv2.blur(out, (3, 3)))


def tile_scores(ex: np.ndarray, tile: int) -> np.ndarray:
    """The maximum of ``ex`` in each ``tile`` x ``tile`` tile (edge tiles may be smaller)."""
    h, w = ex.shape
    th, tw = -(-h // tile), -(-w // tile)
    padded = np.zeros((th * tile, tw * tile), dtype=ex.dtype)
    padded[:h, :w] = ex
    return np.asarray(padded.reshape(th, tile, tw, tile).max(axis=(1, 3)), dtype=np.float32)


def tile_best(frame: np.ndarray, reference: np.ndarray, *, tolerance_px: int,
              max_shift_px: int, tile: int, floor: float | None = None,
              shifts: int | None = None, max_gain: float = MAX_GAIN) -> np.ndarray:
    """Each tile's best score over the shifts :func:`_shifts` names (the first ``shifts``
    of them, if given). With ``floor``, stop as soon as every tile is below it (a good
    part: one or two shifts); the scores are then upper bounds, which is all a passing
    part needs."""
    ref, f = _grey_pair(frame, reference, max_gain)
    s = max_shift_px
    prepared = _prepared(f, ref, tolerance_px, s)
    best: np.ndarray | None = None
    for shift in _shifts(shift_guess(f, ref, s), s)[:shifts]:
        scores = tile_scores(_excess_at(*prepared, shift, s, tolerance_px), tile)
        best = scores if best is None else np.minimum(best, scores)
        if floor is not None and float(best.max()) < floor:
            break
    assert best is not None  # the guess itself is always among the shifts
    return best


def check(frame: np.ndarray, reference: np.ndarray, gate: UnchangedGate) -> GateResult:
    scores = tile_best(frame, reference, tolerance_px=gate.tolerance_px,
                       max_shift_px=gate.max_shift_px, tile=gate.tile, floor=gate.floor)
    changed = int((scores >= gate.floor).sum())
    return GateResult(unchanged=changed == 0, score=float(scores.max()), changed_tiles=changed)


MAX_FLOOR = 64.0  # DeepPCB's single defects score 83 and up: a floor above this passes some
MIN_CONTRAST = 48.0  # grey levels: a floor may be half a view's contrast, or half this
MISMATCH_SHARE = 0.5  # of the tiles far off the golden: the frame is not of the golden's view
ALIGN_MAX_SHIFT = 16  # px: how far align_reference looks (runtime/reference.py)


@dataclass(frozen=True)
class ViewMismatch:
    """A frame that differs from its golden image nearly everywhere: another product, a
    wrong golden, a camera knocked off its view. A reference model trained on differences
    boxed nothing in frames that are all difference, and they passed (review, session
    33): such a part fails on this alone (``recipes.rules.with_reference_mismatch``)."""

    changed_tiles: int  # tiles whose best score reaches MAX_FLOOR
    tiles: int


def view_mismatch(frame: np.ndarray, reference: np.ndarray, *,
                  max_shift_px: int = FIXTURE_PLAY_PX,
                  tile: int = 32) -> ViewMismatch | None:
    """Whether more than :data:`MISMATCH_SHARE` of the tiles differ from the golden by at
    least :data:`MAX_FLOOR` grey levels at every shift within ``max_shift_px``; None for
    a frame of the golden's view, defects and all. One shift first (~1 ms): only a frame
    that looks mismatched there is compared at the others."""
    # contrast raised without the gate's bound: a hazy or dim frame (x0.5) is the golden's
    # view all the same; lowered by no more than the gate's (``_matched``), so a blank
    # golden does not flatten every frame into a match
    def at(shifts: int | None) -> np.ndarray:
        return tile_best(frame, reference, tolerance_px=1, max_shift_px=max_shift_px,
                         tile=tile, shifts=shifts, max_gain=64.0)

    quick = at(1)
    if (quick >= MAX_FLOOR).sum() <= MISMATCH_SHARE * quick.size:
        return None
    full = at(None)
    changed = int((full >= MAX_FLOOR).sum())
    return ViewMismatch(changed, full.size) if changed > MISMATCH_SHARE * full.size else None


def calibrate_floor(pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, tolerance_px: int = 1,
                    max_shift_px: int = FIXTURE_PLAY_PX, tile: int = 32, margin: float = 1.5,
                    minimum: float = 12.0, names: Sequence[str] = ()) -> dict[str, float]:
    """A floor from good ``(frame, reference)`` pairs: ``margin`` times the highest tile
    score any of them reached, and at least ``minimum`` grey levels. Returns the floor
    with the figures it came from. ``names`` (the frames' files, in order) name a frame
    the calibration refuses, so the user knows which file to take out.

    One defective frame among the good ones would set the floor at its defect, and the
    gate would pass every defect as large: a frame far above the others (over 4x their
    median and 24 grey levels above it) is refused, and so is a floor over
    :data:`MAX_FLOOR` or over half the view's contrast (a defect scores at most that)."""
    if not 1.0 <= margin <= 3.0:
        raise ConfigError(f"margin {margin} is not within 1..3")
    best = []
    contrast = 255.0
    measured: np.ndarray | None = None  # the golden whose contrast is in (one, as a rule)
    for i, (frame, reference) in enumerate(pairs):
        try:
            best.append(float(tile_best(frame, reference, tolerance_px=tolerance_px,
                                        max_shift_px=max_shift_px, tile=tile).max()))
            if reference is not measured:
                low, high = np.percentile(gray(reference), [5, 95])
                contrast, measured = min(contrast, float(high - low)), reference
        except LinesideError as exc:  # e.g. a frame of another size than the reference
            if i < len(names):
                raise exc.prefixed(names[i]) from None
            raise
    if not best:
        raise ConfigError("no good frames to calibrate the unchanged gate from")

    def refused(k: int, why: str) -> ConfigError:
        which = f"{names[k]}: " if k < len(names) else ""
        return ConfigError(f"{which}good frame {k + 1} differs from the reference by "
                           f"{best[k]:.0f} grey levels, {why}: calibrate from good parts "
                           "of this view only")

    worst = max(best)
    median = float(np.median(best))
    if len(best) >= 3 and worst > max(4 * median, median + 24):
        raise refused(best.index(worst), f"where the others' median is {median:.0f}, "
                      "as a defect would")
    if worst * margin > MAX_FLOOR:
        raise refused(best.index(worst), f"a floor of {worst * margin:.0f} would pass real "
                      f"defects (at most {MAX_FLOOR:.0f})")
    floor = max(minimum, worst * margin)
    if floor > max(contrast, MIN_CONTRAST) / 2:
        # a defect that swaps the view's materials scores about its contrast: on a grey
        # station (40 levels between copper and substrate) a floor of 45 passed every
        # swapped patch (a plain golden's defects may be of any contrast: at least 48)
        raise ConfigError(
            f"a floor of {floor:.1f} would pass defects on this view: its contrast is "
            f"{contrast:.0f} grey levels (5th to 95th percentile of the golden), and the "
            f"floor may be at most half of it (or of {MIN_CONTRAST:.0f}); take the "
            "defective frame out, light the view for more contrast, or leave the gate off "
            "(the detector then judges every part)")
    return {"floor": round(floor, 2), "good_pairs": len(best), "contrast": round(contrast, 1),
            "minimum_applied": worst * margin < minimum,
            "highest_good_score": round(worst, 2),
            "p99_good_score": round(float(np.percentile(best, 99)), 2),
            "median_good_score": round(median, 2),
            "tolerance_px": tolerance_px, "max_shift_px": max_shift_px, "tile": tile,
            "margin": margin}
