"""Candidate selection and NMS shared by evaluation and ONNX export.

The same code runs in eager mode (torchvision's NMS) and is traced into the ONNX
graph (the standard ``NonMaxSuppression`` op), so the exported model's detections
match the evaluated ones; the export parity gate checks that they do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms

PRE_NMS_TOPK = 1000
MAX_PER_CLASS = 100
MAX_DETECTIONS = 100
SCORE_FLOOR = 0.05
IOU_THRESHOLD = 0.6


class _MultiClassNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` semantics: boxes ``[B, N, 4]``, scores ``[B, C, N]`` ->
    selected ``[M, 3]`` int64 rows of (batch, class, box index)."""

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor) -> Tensor:
        rows = []
        batch, _classes, _n = scores.shape
        for b in range(batch):
            cls_idx, box_idx = (scores[b] > SCORE_FLOOR).nonzero(as_tuple=True)
            keep = batched_nms(boxes[b, box_idx], scores[b, cls_idx, box_idx], cls_idx, IOU_THRESHOLD)
            kept_cls, kept_box = cls_idx[keep], box_idx[keep]
            for c in kept_cls.unique():
                sel = kept_box[kept_cls == c][:MAX_PER_CLASS]
                rows.append(torch.stack([torch.full_like(sel, b), torch.full_like(sel, int(c)), sel], 1))
        if not rows:
            return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
        return torch.cat(rows).to(torch.int64)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any) -> Any:
        def const(value: Any, dtype: torch.dtype) -> Any:
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            const(MAX_PER_CLASS, torch.int64),
            const(IOU_THRESHOLD, torch.float32),
            const(SCORE_FLOOR, torch.float32),
        )


def select_detections(boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Reduce dense predictions to a fixed number of detections per image.

    Args:
        boxes: ``[B, N, 4]`` float, ``x1, y1, x2, y2`` in input pixels.
        scores: ``[B, N, C]`` float in ``[0, 1]``.

    Returns:
        boxes ``[B, K, 4]``, scores ``[B, K]`` (0 where padded), class ids ``[B, K]``
        int64, with ``K = MAX_DETECTIONS``, best first.
    """
    _batch, n, classes = scores.shape
    k = min(PRE_NMS_TOPK, n)
    _top_scores, top_idx = scores.max(dim=2).values.topk(k, dim=1)
    cand_boxes = boxes.gather(1, top_idx.unsqueeze(-1).expand(-1, -1, 4))
    cand_scores = scores.gather(1, top_idx.unsqueeze(-1).expand(-1, -1, classes)).transpose(1, 2)
    selected = _MultiClassNMS.apply(cand_boxes, cand_scores.contiguous())
    keep = torch.zeros_like(cand_scores)
    keep[selected[:, 0], selected[:, 1], selected[:, 2]] = 1.0
    kept = (cand_scores * keep).flatten(1)  # [B, C*k]
    out_scores, flat_idx = kept.topk(min(MAX_DETECTIONS, kept.shape[1]), dim=1)
    labels = torch.div(flat_idx, k, rounding_mode="floor")
    box_idx = flat_idx - labels * k
    out_boxes = cand_boxes.gather(1, box_idx.unsqueeze(-1).expand(-1, -1, 4))
    return out_boxes, out_scores, labels


def detections_per_image(boxes: Tensor, scores: Tensor) -> list[dict[str, Tensor]]:
    """Dense ``decode`` output (boxes ``[B, N, 4]``, scores ``[B, N, C]``) to what a detector
    returns in eval mode: per image a dict of ``boxes`` ``[K, 4]``, ``scores`` ``[K]`` and
    ``labels`` ``[K]``, :func:`select_detections`' padding dropped."""
    kept_boxes, kept_scores, labels = select_detections(boxes, scores)
    return [{"boxes": b[s > 0], "scores": s[s > 0], "labels": lab[s > 0]}
            for b, s, lab in zip(kept_boxes, kept_scores, labels, strict=True)]
