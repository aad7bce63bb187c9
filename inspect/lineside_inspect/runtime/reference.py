"""Model input for reference models: the frame compared with a golden reference.

A reference model sees three channels built from two images of the same part and
view: the frame in grey, the defect-free reference in grey, and their absolute
difference. The difference is given explicitly, not left to the network, because a
small detector trained from scratch learns "what changed" in a few minutes from it,
and what changed does not depend on the board design: a model trained on some boards
keeps working on boards it never saw.

Shared by training and the edge runtime, so both build the same pixels.
"""

from __future__ import annotations

import math

import numpy as np

from lineside_inspect.errors import ReferenceImageError
from lineside_inspect.opencv import cv2


def gray(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` grey from a grey (``(H, W)`` or ``(H, W, 1)``), BGR or BGRA image."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return np.asarray(image[:, :, 0])
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return np.asarray(cv2.cvtColor(image, code))


def with_difference(pair: np.ndarray) -> np.ndarray:
    """Set channel 2 of an ``(H, W, 3)`` pair image to ``|channel 0 - channel 1|``, in
    place; training calls it again after augmenting the first two channels."""
    pair[:, :, 2] = cv2.absdiff(pair[:, :, 0], pair[:, :, 1])
    return pair


def same_size(frame: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """``(height, width)`` of both; ReferenceImageError when they differ."""
    fh, fw = frame.shape[:2]
    rh, rw = reference.shape[:2]
    if (fh, fw) != (rh, rw):
        raise ReferenceImageError(
            f"the reference image is {rw}x{rh} but the frame is {fw}x{fh}: "
            "a reference must show the same view at the same size")
    return fh, fw


def pair_image(frame: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: frame grey, reference grey, absolute difference.

    Both are BGR (or grey) ``uint8`` arrays of the same height and width, as OpenCV
    decodes them; a reference of another size is refused, never resized, since a
    stretched reference would differ from the frame everywhere.
    """
    fh, fw = same_size(frame, reference)
    pair = np.empty((fh, fw, 3), dtype=np.uint8)
    pair[:, :, 0] = gray(frame)
    pair[:, :, 1] = gray(reference)
    return with_difference(pair)


def _subpixel(left: float, centre: float, right: float) -> float:
    """Offset of a parabola's vertex through three neighbouring correlation values."""
    denom = left - 2 * centre + right
    return 0.0 if denom >= 0 else float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def align_to_reference(frame: np.ndarray, reference: np.ndarray, *, max_shift: int = 16,
                       ) -> tuple[np.ndarray, float, float]:
    """Translate ``frame`` onto ``reference``.

    The reference's centre (all but a ``max_shift`` border) is searched for in the frame
    within ``max_shift`` pixels (normalised cross-correlation, refined to sub-pixel;
    ~10 ms at 640x640 here). A bounded search, unlike phase correlation, cannot lock on
    to a far-away repeat of a periodic pattern; a view with nothing to align on (flat)
    is left as it is. Returns the aligned frame (the band that moved out of view taken
    from the reference) and the shift ``(dx, dy)``: a point at ``(x, y)`` in the aligned
    frame is at ``(x + dx, y + dy)`` in the frame as sent.
    """
    fh, fw = same_size(frame, reference)
    frame, reference = _alike(frame, reference)
    m = int(max_shift)
    if min(fh, fw) <= 4 * m:
        raise ReferenceImageError(f"a {fw}x{fh} frame is too small to align within {m} px")
    centre = gray(reference)[m:fh - m, m:fw - m].astype(np.float32)
    if float(centre.std()) < 1.0:
        return frame, 0.0, 0.0
    res = cv2.matchTemplate(gray(frame).astype(np.float32), centre, cv2.TM_CCOEFF_NORMED)
    if not np.isfinite(res).all():
        return frame, 0.0, 0.0
    _, _, _, (px, py) = cv2.minMaxLoc(res)
    dx, dy = float(px - m), float(py - m)
    if 0 < px < res.shape[1] - 1:
        dx += _subpixel(res[py, px - 1], res[py, px], res[py, px + 1])
    if 0 < py < res.shape[0] - 1:
        dy += _subpixel(res[py - 1, px], res[py, px], res[py + 1, px])
    return shift_onto(frame, reference, dx, dy), dx, dy


def _alike(frame: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as they are when alike, else both grey."""
    if frame.shape != reference.shape or frame.shape[2:] == (1,):
        # grey, BGR or BGRA, not both alike (or (H, W, 1), which OpenCV's warp returns as
        # (H, W)): align in grey, as a reference model compares them
        return gray(frame), gray(reference)
    return frame, reference


def shift_onto(frame: np.ndarray, reference: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``frame`` moved onto ``reference`` by a shift :func:`align_to_reference` found: a
    point at ``(x, y)`` in the result is at ``(x + dx, y + dy)`` in ``frame``. Also how
    ``data pull`` aligns a stored frame by its stored shift, so training gets the pixels
    the model was served, not those of a second search."""
    fh, fw = same_size(frame, reference)
    frame, reference = _alike(frame, reference)
    if dx == 0 and dy == 0:
        return frame
    warp = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    aligned = np.asarray(cv2.warpAffine(frame, warp, (fw, fh),
                                        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                        borderMode=cv2.BORDER_REPLICATE))
    # the band that moved out of view has no frame pixels: show the reference there, so
    # that what the camera could not see is not reported as a difference
    bx, by = min(int(np.ceil(abs(dx))), fw), min(int(np.ceil(abs(dy))), fh)
    cols = slice(fw - bx, fw) if dx > 0 else slice(0, bx)
    rows = slice(fh - by, fh) if dy > 0 else slice(0, by)
    aligned[:, cols] = reference[:, cols]
    aligned[rows, :] = reference[rows, :]
    return aligned


# grey levels a reference station's frame must span (5th to 95th percentile) where its
# golden spans as much, unless its recipe says (min_contrast, which holds the golden to
# it too; a flat golden is otherwise the part's own look): a lens cap or a lamp off leaves a few levels of
# sensor noise; the golden's view at half its contrast spans about a hundred
BLANK_CONTRAST = 16


# pixels :func:`contrast` reads at most: every 4th of every 4th row up to 4 MP (a
# 640x640 frame reads 25,600), a wider stride above, so a 48 MP frame costs what a 4 MP
# one does (~1 ms, not ~20 ms for each frame and again for its golden)
CONTRAST_SAMPLES = 1 << 18


def contrast_sample(image: np.ndarray) -> np.ndarray:
    """The pixels :func:`contrast` reads: a grid of every 4th pixel of every 4th row,
    wider where that would pass :data:`CONTRAST_SAMPLES` (and wider along a side that
    alone would pass it, for a frame of a few rows or columns)."""
    return gray(np.ascontiguousarray(image[contrast_grid(*image.shape[:2])]))


def contrast_grid(h: int, w: int) -> tuple[slice, slice]:
    """The rows and columns of an ``h`` x ``w`` image :func:`contrast_sample` reads (a
    mask of the image sliced by it lines up with the sample)."""
    step = max(4, math.isqrt(max(0, h * w - 1) // CONTRAST_SAMPLES) + 1)
    rows_step = max(step, -(-h // CONTRAST_SAMPLES))
    rows = -(-h // rows_step)
    cols_step = max(step, -(-w // max(1, CONTRAST_SAMPLES // max(1, rows))))
    return slice(None, None, rows_step), slice(None, None, cols_step)


def contrast(image: np.ndarray) -> int:
    """The grey levels ``image`` spans, 5th to 95th percentile, on a bounded grid of its
    pixels (:func:`contrast_sample`: a view's contrast, not its pixels')."""
    return spread(contrast_sample(image))


def spread(values: np.ndarray) -> int:
    """The grey levels ``values`` (8-bit) span, 5th to 95th percentile; 0 of none."""
    hist = np.bincount(values.ravel(), minlength=256).cumsum()
    n = int(hist[-1])
    if n == 0:
        return 0
    low = int(np.searchsorted(hist, 0.05 * n))
    high = int(np.searchsorted(hist, 0.95 * n))
    return high - low
