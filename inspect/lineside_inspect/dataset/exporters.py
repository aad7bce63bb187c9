"""Exporters from the canonical form to COCO and YOLO layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import yaml

from lineside_inspect.dataset.canonical import ANNOTATIONS, check_apart, source_folders, to_coco
from lineside_inspect.dataset.model import Dataset, inside_images
from lineside_inspect.errors import DatasetError


def _fresh(dataset: Dataset, dst: Path) -> None:
    # the same rule as an import: never write into, over or around the dataset being read
    check_apart(dst, sources=source_folders(dataset))
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DatasetError(f"{dst}: exists and is not an empty folder; choose a new one")
    dst.mkdir(parents=True, exist_ok=True)


def export_coco(dataset: Dataset, dst: Path) -> None:
    """``dst/annotations.json`` (standard COCO; the extra ``group``/``split`` fields are
    ignored by COCO tools) and ``dst/images/``."""
    _fresh(dataset, dst)
    for rec in dataset.images:
        target = inside_images(dst / "images", rec.file_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset.image_path(rec), target)
    (dst / ANNOTATIONS).write_text(json.dumps(to_coco(dataset), indent=1))


def _flat_names(dataset: Dataset) -> list[str]:
    """Each image's file name in the export: its base name, made unique per split.

    Ultralytics finds an image's labels by swapping the *last* ``/images/`` of its path for
    ``/labels/``, so a sub-path such as ``valid/images/x.jpg`` kept from the source would
    send it to a folder that does not exist. Names are unique by stem (``x.jpg`` and
    ``x.png`` would share ``x.txt``) and without regard to case (Windows, macOS)."""
    used: dict[str, set[str]] = {}
    names: list[str] = []
    for rec in dataset.images:
        taken = used.setdefault(rec.split or "train", set())
        path = PurePosixPath(rec.file_name)
        # the base name; on a clash the whole sub-path joined with "_", then a number
        candidates = [path.name, "_".join(path.parts)]
        name = next((c for c in candidates if PurePosixPath(c).stem.lower() not in taken), "")
        n = 2
        while not name:
            c = f"{path.stem}_{n}{path.suffix}"
            name = c if PurePosixPath(c).stem.lower() not in taken else ""
            n += 1
        taken.add(PurePosixPath(name).stem.lower())
        names.append(name)
    return names


def export_yolo(dataset: Dataset, dst: Path) -> None:
    """``images/<split>/<name>``, ``labels/<split>/<stem>.txt`` (``class cx cy w h``
    normalised) and ``data.yaml``, the layout Ultralytics reads. Images without a split go
    under ``train``; names are flattened (see :func:`_flat_names`)."""
    _fresh(dataset, dst)
    index = {name: i for i, name in enumerate(dataset.categories)}
    for rec, name in zip(dataset.images, _flat_names(dataset), strict=True):
        split = rec.split or "train"
        image = dst / "images" / split / name
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset.image_path(rec), image)
        label = dst / "labels" / split / f"{PurePosixPath(name).stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for b in rec.boxes:
            cx, cy = (b.x1 + b.x2) / 2 / rec.width, (b.y1 + b.y2) / 2 / rec.height
            w, h = (b.x2 - b.x1) / rec.width, (b.y2 - b.y1) / rec.height
            lines.append(f"{index[b.label]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        label.write_text("".join(line + "\n" for line in lines))
    splits = sorted({r.split or "train" for r in dataset.images})
    # no "path": Ultralytics then resolves the splits against this file's own folder,
    # where "path: ." meant the current directory of whoever runs the training
    doc: dict[str, object] = {s: f"images/{s}" for s in splits}
    header = ""
    if "val" not in doc:
        # Ultralytics refuses a data.yaml without "val"
        doc["val"] = doc.get("train", "images/train")
        header = ("# the dataset has no val split: val is the training images here; "
                  "run `lineside data split` first for a real one\n")
    doc["names"] = dict(enumerate(dataset.categories))
    (dst / "data.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False))


EXPORTERS = {"coco": export_coco, "yolo": export_yolo}
