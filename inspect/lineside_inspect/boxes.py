"""Box geometry shared by the edge and the training side: IoU of plain ``(x1, y1, x2, y2)``
tuples (the dataset toolkit and the promotion gate, without either importing the other:
the gate is on the server's start-up path, and ``lineside_inspect.dataset`` would bring
every importer with it), the IoU matrix of box arrays (the training side's matching,
metrics and export parity), and the one-defect-per-place rule the recipes and the
training side's metrics and calibration apply alike."""

from __future__ import annotations

import numpy as np


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (``Box.xyxy()``)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of ``(x1, y1, x2, y2)`` boxes ``a`` ``[N, 4]`` and
    ``b`` ``[M, 4]``, in their dtype. An inverted box has area 0 (no overlap), not a
    negative one that would shrink the union."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.result_type(a, b, np.float32))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def one_per_place(xyxy: np.ndarray, scores: np.ndarray, iou: float,
                  hides: np.ndarray | None = None) -> np.ndarray:
    """Which of the boxes ``xyxy`` ``[N, 4]`` stay when a place reports one defect: in
    score order, a box overlapping a higher-scored kept box by IoU above ``iou`` is
    dropped, whatever the two classes (class-agnostic suppression). Returns a bool mask.

    ``hides`` ``[N]`` bool, if given, says which boxes may drop others (a recipe lets only
    a box that fails the part on its own hide one, so the verdict never changes). Why: a
    model unsure between two look-alike classes (an open and a mouse bite) puts two boxes
    on one defect, and the lower one is a false alarm that costs as much as a miss in the
    defect list.
    """
    n = len(scores)
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    boxes = np.asarray(xyxy, dtype=np.float64)
    overlap = iou_matrix(boxes, boxes) > iou
    if hides is not None:
        overlap &= np.asarray(hides, dtype=bool)[None, :]  # [i, j]: j may drop i
    order = np.argsort(-np.asarray(scores), kind="stable")
    for rank, i in enumerate(order):
        earlier = order[:rank]
        if overlap[i, earlier[keep[earlier]]].any():
            keep[i] = False
    return keep
