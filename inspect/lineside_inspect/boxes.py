"""Box geometry on plain ``(x1, y1, x2, y2)`` tuples, shared by the dataset toolkit and the
promotion gate without either importing the other: the gate is on the server's start-up
path, and ``lineside_inspect.dataset`` would bring every importer with it."""

from __future__ import annotations


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (``Box.xyxy()``)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
