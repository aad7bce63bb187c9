"""Drawing verdicts on images (annotated responses, live view, review pages).

Text and banner are sized from the image, not fixed in pixels: on a 200 px frame a
fixed banner would hide a good part of it, on a 4000 px one it would be unreadable.
Labels are placed inside the image, above their box when there is room, else just
inside its top edge, shifted left at the right edge.
"""

from __future__ import annotations

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


def annotate(image: np.ndarray, defects: Detections, verdict: str | None = None) -> np.ndarray:
    """A BGR copy of ``image`` (BGR, grey or BGRA) with defect boxes, labels and a
    verdict banner."""
    out = as_bgr(image)
    if out is image:
        out = image.copy()
    rows, cols = out.shape[:2]
    side = min(rows, cols)
    thick = max(1, round(max(rows, cols) / 500))
    label_px = max(MIN_LABEL_PX, LABEL_SHARE * side)
    text_thick = max(1, round(label_px / 14))
    for (x1, y1, x2, y2), label, score in zip(defects.xyxy, defects.labels, defects.scores,
                                              strict=True):
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, RED, thick)
        text = f"{label} {score:.2f}"
        (_, th), base = cv2.getTextSize(text, FONT, _scale_for(label_px, text_thick), text_thick)
        gap = thick + 2
        above = p1[1] - gap - th - base
        _put(out, text, p1[0], above if above >= 0 else p1[1] + gap, label_px, RED, text_thick)
    if verdict is not None:
        color = GREEN if verdict == "pass" else RED
        banner_px = min(max(MIN_BANNER_PX, BANNER_SHARE * side), rows)
        text_px = banner_px * 0.6
        bold = max(1, round(text_px / 10))
        (tw, _), _ = cv2.getTextSize(verdict.upper(), FONT, _scale_for(text_px, bold), bold)
        pad = round(banner_px * 0.2)
        cv2.rectangle(out, (0, 0), (min(tw + 2 * pad, cols - 1), round(banner_px) - 1), color, -1)
        _put(out, verdict.upper(), pad, round((banner_px - text_px) / 2), text_px, WHITE, bold)
    return out
