"""Drawing verdicts on images (annotated responses, live view, review pages).

Text and banner are sized from the image, not fixed in pixels: on a 200 px frame a
fixed banner would hide a good part of it, on a 4000 px one it would be unreadable.
Labels are placed inside the image, shifted left at the right edge, and not on one
another nor under the verdict banner (:func:`label_placements`): box by box, highest
score first, above the box when there is room, else below it, else just inside its top
edge (inside first for a box at the image's top edge); where none of these is free the
label is shortened to the score, and where that fits nowhere either it is left out. The
box itself is always drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lineside_inspect.opencv import cv2
from lineside_inspect.runtime.preprocess import as_bgr
from lineside_inspect.runtime.types import Detections

RED, GREEN, WHITE = (40, 40, 230), (60, 180, 60), (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_SHARE = 0.022  # label text height as a share of the image's shorter side
BANNER_SHARE = 0.07  # banner height likewise
MIN_LABEL_PX, MIN_BANNER_PX = 7, 12  # still legible on a thumbnail


def _scale_for(height_px: float, thickness: int) -> float:
    """The Hershey font scale whose capital letters are ``height_px`` tall."""
    (_, h), _ = cv2.getTextSize("A", FONT, 1.0, thickness)
    return height_px / max(h, 1)


def _put(out: np.ndarray, text: str, x: int, y_top: int, height_px: float, color: tuple[int, int, int],
         thickness: int) -> tuple[int, int]:
    """Write ``text`` with its top-left at (x, y_top), both moved so that it stays inside
    ``out``; returns the text's width and height."""
    scale = _scale_for(height_px, thickness)
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    rows, cols = out.shape[:2]
    x = min(max(x, 0), max(cols - tw - 1, 0))
    y_top = min(max(y_top, 0), max(rows - th - base - 1, 0))
    cv2.putText(out, text, (x, y_top + th), FONT, scale, color, thickness, cv2.LINE_AA)
    return tw, th + base


@dataclass(frozen=True)
class Placement:
    """Where one box's label is written: ``text`` with its top-left at (``x``, ``y``),
    ``w`` x ``h`` pixels (baseline included); ``index`` is the box's row in the
    detections."""

    index: int
    text: str
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class _Sizes:
    thick: int  # box outline
    label_px: float
    text_thick: int
    # with a verdict: (right, bottom, pad, text top, text height, text thickness)
    banner: tuple[int, int, int, int, float, int] | None


def _banner(rows: int, cols: int, text: str) -> tuple[int, float, int, float, int]:
    """A banner of ``text`` on a ``rows`` x ``cols`` image: the text's width, the banner's
    height, its padding, the text's height and stroke (the verdict's and a live view's
    "offline" banner alike)."""
    banner_px = min(max(MIN_BANNER_PX, BANNER_SHARE * min(rows, cols)), rows)
    text_px = banner_px * 0.6
    bold = max(1, round(text_px / 10))
    (tw, _), _ = cv2.getTextSize(text, FONT, _scale_for(text_px, bold), bold)
    return tw, banner_px, round(banner_px * 0.2), text_px, bold


def _sizes(rows: int, cols: int, verdict: str | None) -> _Sizes:
    side = min(rows, cols)
    label_px = max(MIN_LABEL_PX, LABEL_SHARE * side)
    banner = None
    if verdict is not None:
        tw, banner_px, pad, text_px, bold = _banner(rows, cols, verdict.upper())
        banner = (min(tw + 2 * pad, cols - 1), round(banner_px) - 1, pad,
                  round((banner_px - text_px) / 2), text_px, bold)
    return _Sizes(max(1, round(max(rows, cols) / 500)), label_px,
                  max(1, round(label_px / 14)), banner)


def label_placements(shape: tuple[int, ...], defects: Detections,
                     verdict: str | None = None) -> list[Placement]:
    """The labels :func:`annotate` writes on an image of ``shape`` for ``defects`` (and
    a ``verdict`` banner), highest score first: each wholly inside the image and on no
    other label nor the banner. A box tried above, below, then just inside its top edge
    (inside before below when above would leave the image), with ``"label 0.93"``, then
    with ``"0.93"``; a box whose label fits nowhere has none, except that the first
    label, on an image too small to hold it whole, still goes where it always went,
    clamped (a thumbnail keeps its label). Greedy, O(n^2) in boxes."""
    rows, cols = shape[:2]
    sz = _sizes(rows, cols, verdict)
    scale = _scale_for(sz.label_px, sz.text_thick)
    gap = sz.thick + 2
    # placed rectangles as inclusive x1, y1, x2, y2; row 0 the banner (or nothing)
    taken = np.full((len(defects) + 1, 4), -1, np.int64)
    taken[0, 2:] = (sz.banner[0], sz.banner[1]) if sz.banner else (-2, -2)
    count = 1
    labels = defects.labels
    placed: list[Placement] = []
    for i in np.argsort(-defects.scores, kind="stable").tolist():
        x1, y1, _, y2 = (int(v) for v in defects.xyxy[i])
        score = f"{defects.scores[i]:.2f}"
        for text in (f"{labels[i]} {score}", score):
            (tw, th), base = cv2.getTextSize(text, FONT, scale, sz.text_thick)
            h = th + base
            x = min(max(x1, 0), max(cols - tw - 1, 0))
            above, below = y1 - gap - h, y2 + gap
            inside = min(max(y1 + gap, 0), max(rows - h - 1, 0))
            tries = (above, below, inside) if above >= 0 else (inside, below)
            spot, fits = None, False
            for y in tries:
                if y < 0 or y + h >= rows or x + tw >= cols:
                    continue  # would leave the image
                fits = True
                t = taken[:count]
                if not np.any((t[:, 0] <= x + tw) & (x <= t[:, 2])
                              & (t[:, 1] <= y + h) & (y <= t[:, 3])):
                    spot = y
                    break
            if not fits and not placed and text != score:
                # the first label on an image too small for it: where it always went
                spot = min(max(above if above >= 0 else y1 + gap, 0), max(rows - h - 1, 0))
            if spot is not None:
                placed.append(Placement(i, text, x, spot, tw, h))
                taken[count] = (x, spot, x + tw, spot + h)
                count += 1
                break
    return placed


def annotate(image: np.ndarray, defects: Detections, verdict: str | None = None) -> np.ndarray:
    """A BGR copy of ``image`` (BGR, grey or BGRA) with defect boxes, labels (placed by
    :func:`label_placements`) and a verdict banner."""
    out = as_bgr(image)
    if out is image:
        out = image.copy()
    rows, cols = out.shape[:2]
    sz = _sizes(rows, cols, verdict)
    for x1, y1, x2, y2 in defects.xyxy:
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), RED, sz.thick)
    for p in label_placements(out.shape, defects, verdict):
        _put(out, p.text, p.x, p.y, sz.label_px, RED, sz.text_thick)
    if verdict is not None and sz.banner is not None:
        right, bottom, pad, text_y, text_px, bold = sz.banner
        color = GREEN if verdict == "pass" else RED
        cv2.rectangle(out, (0, 0), (right, bottom), color, -1)
        _put(out, verdict.upper(), pad, text_y, text_px, WHITE, bold)
    return out


NO_FRAME_SHAPE = (360, 640, 3)  # what a camera that never sent a frame is shown as


def unavailable(image: np.ndarray | None, text: str) -> np.ndarray:
    """A camera's last frame dimmed to a third under a grey banner of ``text`` (a live
    view's part while its camera is offline or stale: that picture is not the line now);
    a dark frame when there is none. The text is shrunk to the image's width."""
    out = np.full(NO_FRAME_SHAPE, 32, np.uint8) if image is None else as_bgr(image) // 3
    rows, cols = out.shape[:2]
    tw, banner_px, pad, text_px, bold = _banner(rows, cols, text)
    if tw > cols - 2 * pad:  # a long camera id on a small frame: smaller, never cut
        text_px *= (cols - 2 * pad) / tw
    cv2.rectangle(out, (0, 0), (cols - 1, round(banner_px) - 1), (90, 90, 90), -1)
    _put(out, text, pad, round((banner_px - text_px) / 2), text_px, WHITE, bold)
    return np.ascontiguousarray(out)
