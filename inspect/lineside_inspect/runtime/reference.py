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

from functools import lru_cache

import numpy as np

from lineside_inspect._cv import cv2
from lineside_inspect.errors import ReferenceImageError


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return np.asarray(image[:, :, 0])
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))


def with_difference(pair: np.ndarray) -> np.ndarray:
    """Set channel 2 of an ``(H, W, 3)`` pair image to ``|channel 0 - channel 1|``, in
    place; training calls it again after augmenting the first two channels."""
    pair[:, :, 2] = cv2.absdiff(pair[:, :, 0], pair[:, :, 1])
    return pair


def pair_image(frame: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: frame grey, reference grey, absolute difference.

    Both are BGR (or grey) ``uint8`` arrays of the same height and width, as OpenCV
    decodes them; a reference of another size is refused, never resized, since a
    stretched reference would differ from the frame everywhere.
    """
    fh, fw = frame.shape[:2]
    rh, rw = reference.shape[:2]
    if (fh, fw) != (rh, rw):
        raise ReferenceImageError(
            f"the reference image is {rw}x{rh} but the frame is {fw}x{fh}: "
            "a reference must show the same view at the same size")
    pair = np.empty((fh, fw, 3), dtype=np.uint8)
    pair[:, :, 0] = _gray(frame)
    pair[:, :, 1] = _gray(reference)
    return with_difference(pair)


@lru_cache(maxsize=8)
def _window(width: int, height: int) -> np.ndarray:
    return np.asarray(cv2.createHanningWindow((width, height), cv2.CV_32F))


def align_to_reference(frame: np.ndarray, reference: np.ndarray, *, max_shift: float = 16.0,
                       ) -> tuple[np.ndarray, float, float]:
    """Translate ``frame`` onto ``reference`` (phase correlation: sub-pixel, ~10 ms at
    640x640 here; ECC registers a little more precisely but takes ~80 ms).

    Returns the aligned frame and the shift ``(dx, dy)``: a point at ``(x, y)`` in the
    aligned frame is at ``(x + dx, y + dy)`` in the original. A frame off by more than
    ``max_shift`` pixels is refused: comparing it with the reference would show
    differences everywhere.
    """
    fh, fw = frame.shape[:2]
    rh, rw = reference.shape[:2]
    if (fh, fw) != (rh, rw):
        raise ReferenceImageError(
            f"the reference image is {rw}x{rh} but the frame is {fw}x{fh}: "
            "a reference must show the same view at the same size")
    (dx, dy), _ = cv2.phaseCorrelate(_gray(reference).astype(np.float32),
                                     _gray(frame).astype(np.float32), _window(fw, fh))
    if abs(dx) > max_shift or abs(dy) > max_shift:
        raise ReferenceImageError(
            f"the frame is shifted ({dx:.1f}, {dy:.1f}) px from its reference, more than the "
            f"{max_shift:.0f} px alignment allows: check the fixture or the reference")
    warp = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    aligned = cv2.warpAffine(frame, warp, (fw, fh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(aligned), float(dx), float(dy)
