"""COCO mAP through pycocotools (not a hand-written AP)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lineside_inspect.dataset import ImageRecord
from lineside_training.predict import Prediction


def _coco_gt(records: list[ImageRecord], class_names: list[str]) -> COCO:
    index = {n: i + 1 for i, n in enumerate(class_names)}
    anns: list[dict[str, Any]] = []
    for i, rec in enumerate(records, start=1):
        for b in rec.boxes:
            w, h = b.x2 - b.x1, b.y2 - b.y1
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": index[b.label],
                         "bbox": [b.x1, b.y1, w, h], "area": w * h, "iscrowd": 0})
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "width": r.width, "height": r.height}
                   for i, r in enumerate(records, start=1)],
        "annotations": anns,
        "categories": [{"id": i, "name": n} for n, i in index.items()],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_metrics(
    records: list[ImageRecord], preds: list[Prediction], class_names: list[str]
) -> dict[str, Any]:
    """``map`` (mAP@[.5:.95]), ``map50``, and per-class ``ap``/``ap50`` (``None`` for classes
    without ground truth); ``boxes``: the ground-truth boxes (0: the mAPs mean nothing, and
    reports say n/a)."""
    gt = _coco_gt(records, class_names)
    boxes = len(gt.dataset["annotations"])
    results = [
        {"image_id": i, "category_id": int(lab) + 1,
         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
         "score": float(s)}
        for i, p in enumerate(preds, start=1)
        for b, s, lab in zip(p.boxes, p.scores, p.labels, strict=True)
    ]
    if not results or not gt.dataset["annotations"]:
        return {"map": 0.0, "map50": 0.0, "per_class": {n: None for n in class_names},
                "boxes": boxes}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_class: dict[str, dict[str, float] | None] = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        if (p > -1).sum() == 0:
            per_class[name] = None
            continue
        per_class[name] = {"ap": float(np.mean(p[p > -1])),
                           "ap50": float(np.mean(p[0][p[0] > -1])) if (p[0] > -1).any() else 0.0}
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "per_class": per_class,
            "boxes": boxes}
