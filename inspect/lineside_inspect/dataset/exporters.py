"""Exporters from the canonical form to COCO and YOLO layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from lineside_inspect.dataset.canonical import ANNOTATIONS, to_coco
from lineside_inspect.dataset.model import Dataset, inside_images
from lineside_inspect.errors import DatasetError


def _fresh(dst: Path) -> None:
    if dst.exists() and any(dst.iterdir()):
        raise DatasetError(f"{dst}: exists and is not empty")
    dst.mkdir(parents=True, exist_ok=True)


def export_coco(dataset: Dataset, dst: Path) -> None:
    """``dst/annotations.json`` (standard COCO; the extra ``group``/``split`` fields are
    ignored by COCO tools) and ``dst/images/``."""
    _fresh(dst)
    for rec in dataset.images:
        target = inside_images(dst / "images", rec.file_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset.image_path(rec), target)
    (dst / ANNOTATIONS).write_text(json.dumps(to_coco(dataset), indent=1))


def export_yolo(dataset: Dataset, dst: Path) -> None:
    """``images/<split>/``, ``labels/<split>/`` (``class cx cy w h`` normalised) and
    ``data.yaml``. Images without a split go under ``train``."""
    _fresh(dst)
    index = {name: i for i, name in enumerate(dataset.categories)}
    for rec in dataset.images:
        rel = f"{rec.split or 'train'}/{rec.file_name}"
        image = dst / "images" / rel
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset.image_path(rec), image)
        label = (dst / "labels" / rel).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for b in rec.boxes:
            cx, cy = (b.x1 + b.x2) / 2 / rec.width, (b.y1 + b.y2) / 2 / rec.height
            w, h = (b.x2 - b.x1) / rec.width, (b.y2 - b.y1) / rec.height
            lines.append(f"{index[b.label]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        label.write_text("".join(line + "\n" for line in lines))
    splits = sorted({r.split or "train" for r in dataset.images})
    doc = {"path": ".", "names": dict(enumerate(dataset.categories))}
    doc.update({s: f"images/{s}" for s in splits})
    (dst / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


EXPORTERS = {"coco": export_coco, "yolo": export_yolo}
