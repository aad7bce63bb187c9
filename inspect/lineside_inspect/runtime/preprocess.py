"""Letterbox resizing: fit an image into a square without distorting its aspect ratio.

Shared by training (validation images) and the edge runtime, so a model sees the same
pixels in both places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lineside_inspect.opencv import cv2
from lineside_inspect.package import PAD_VALUE


@dataclass(frozen=True)
class Letterbox:
    """How an original image maps into the model input: ``input = original * scale + pad``."""

    scale: float
    pad_x: int
    pad_y: int
    width: int  # original size
    height: int
    shift_x: float = 0.0  # a frame aligned to its reference: where aligned pixels came from
    shift_y: float = 0.0
    # a tile of a larger frame (runtime/tiles.py): where it sits in the frame, and which
    # image of the batch that frame is; None: the image is the whole frame
    origin: tuple[int, int] | None = None
    of: int = 0

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``[N, 4]`` input-space boxes back to original pixels, clipped to the image
        (a tile: clipped to the tile, then placed in its frame)."""
        # whole-array operations: this runs on every inspection, right after inference
        # when caches are cold, where each numpy call costs ~10-20 us
        pad = np.array([self.pad_x, self.pad_y] * 2, dtype=np.float32)
        shift = np.array([self.shift_x, self.shift_y] * 2, dtype=np.float32)
        out = (boxes.astype(np.float32) - pad) / np.float32(self.scale) + shift
        np.clip(out, 0, np.array([self.width, self.height] * 2, dtype=np.float32), out=out)
        if self.origin is not None:
            out += np.array(self.origin * 2, dtype=np.float32)
        return out

    def with_area(self, boxes: np.ndarray) -> np.ndarray | None:
        """The mask of ``boxes`` (as :meth:`to_original` gives them) with an area, or None
        when all have one. A box wholly in the padding (or moved out by a reference shift)
        is clipped to none: a defect nobody can see or review, which failed the part and
        broke a confirm's merge across the fleet (hub review, session 36)."""
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return None if inside.all() else inside

    @property
    def inside(self) -> tuple[slice, slice]:
        """The rows and columns of the input that show the image (the border is not the
        part), as :func:`letterbox` places it."""
        nw, nh = _scaled(self.width, self.height, self.scale)
        return slice(self.pad_y, self.pad_y + nh), slice(self.pad_x, self.pad_x + nw)

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.shift_x) * self.scale + self.pad_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.shift_y) * self.scale + self.pad_y
        return out


def as_bgr(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` BGR from a grey (``(H, W)`` or ``(H, W, 1)``) or BGRA frame, as some
    cameras deliver them (a GStreamer GRAY8 sink); a BGR image unchanged."""
    if image.ndim == 2 or image.shape[2] == 1:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    if image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR))
    return image


def letterbox(image: np.ndarray, size: int, *, pad_value: int = PAD_VALUE,
              ) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (``H, W, 3`` or grey ``H, W`` uint8) to fit ``size x size``,
    centred, padded with ``pad_value`` (a model card's ``input.letterbox.pad_value``).

    Images already of that size are returned unchanged (no copy of pixels is resized).
    """
    h, w = image.shape[:2]
    lb = fit(w, h, size)
    if (w, h) == (size, size):
        # only a frame of the input's size: a size x (size - 1) one also has no pad before
        # it (the one-pixel border is after), and was returned unpadded, a row short of the
        # batch (ValueError in pre_process, training's stack; adversarial review, session 50)
        return image, lb
    rows, cols = lb.inside
    nw, nh = cols.stop - cols.start, rows.stop - rows.start
    interp = cv2.INTER_AREA if lb.scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else image
    out = np.full((size, size, *image.shape[2:]), pad_value, dtype=np.uint8)
    out[rows, cols] = resized
    return out, lb


def _scaled(width: int, height: int, scale: float) -> tuple[int, int]:
    """The resized size, at least 1 px a side: a sliver such as 1281x1 would otherwise
    round to 0 rows, which OpenCV's resize refuses."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(width: int, height: int, size: int) -> Letterbox:
    """The letterbox mapping of a ``width x height`` image into ``size x size``."""
    scale = min(size / width, size / height)
    nw, nh = _scaled(width, height, scale)
    if (nw, nh) == (width, height):
        scale = 1.0
    return Letterbox(scale, (size - nw) // 2, (size - nh) // 2, width, height)
