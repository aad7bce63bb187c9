"""Drawing verdicts on images (annotated responses, live view, review pages)."""

from __future__ import annotations

import numpy as np

from lineside_inspect._cv import cv2
from lineside_inspect.runtime.types import Detections

RED, GREEN, WHITE = (40, 40, 230), (60, 180, 60), (255, 255, 255)


def annotate(image: np.ndarray, defects: Detections, verdict: str | None = None) -> np.ndarray:
    """A copy of ``image`` (BGR) with defect boxes, labels and a verdict banner."""
    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 500))
    for (x1, y1, x2, y2), label, score in zip(defects.xyxy, defects.labels, defects.scores,
                                              strict=True):
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, RED, thick)
        cv2.putText(out, f"{label} {score:.2f}", (p1[0], max(p1[1] - 4, 12)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45 * thick, RED, thick, cv2.LINE_AA)
    if verdict is not None:
        color = GREEN if verdict == "pass" else RED
        cv2.rectangle(out, (0, 0), (110 * thick, 28 * thick), color, -1)
        cv2.putText(out, verdict.upper(), (8, 21 * thick), cv2.FONT_HERSHEY_SIMPLEX,
                    0.7 * thick, WHITE, 2 * thick, cv2.LINE_AA)
    return out
