"""YOLO export in the layout Ultralytics reads (new-user finding 5): images/<split>/<name>,
labels/<split>/<stem>.txt, and a data.yaml that resolves from its own folder."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import yaml

from lineside_inspect.dataset import export_dataset, import_dataset, read_dataset


def _jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((48, 64, 3), 128, np.uint8))


def _ultralytics_label(image: Path) -> Path:
    """Where Ultralytics looks for an image's labels (img2label_paths): the last
    ``/images/`` of the path becomes ``/labels/`` and the suffix ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def _roboflow(src: Path) -> None:
    (src / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (src / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\n"
                                   "names: ['crack', 'dent']\n")
    for sub, stem, label in (("train", "x", "0 0.5 0.5 0.25 0.5\n"), ("train", "y", ""),
                             ("valid", "x", "1 0.5 0.5 0.25 0.5\n1 0.2 0.2 0.1 0.1\n")):
        _jpg(src / sub / "images" / f"{stem}.jpg")
        (src / sub / "labels").mkdir(parents=True, exist_ok=True)
        (src / sub / "labels" / f"{stem}.txt").write_text(label)


def test_roboflow_import_exports_a_layout_ultralytics_reads(tmp_path: Path) -> None:
    _roboflow(tmp_path / "rf")
    import_dataset("yolo", tmp_path / "rf", tmp_path / "ds")
    export_dataset("yolo", tmp_path / "ds", tmp_path / "yolo")
    out = tmp_path / "yolo"
    images = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.jpg"))
    assert images == ["images/train/x.jpg", "images/train/y.jpg", "images/val/x.jpg"]
    counts = {i: len(_ultralytics_label(out / i).read_text().splitlines()) for i in images}
    assert counts == {"images/train/x.jpg": 1, "images/train/y.jpg": 0, "images/val/x.jpg": 2}
    doc = yaml.safe_load((out / "data.yaml").read_text())
    # no "path: .": Ultralytics would resolve it against the current directory
    assert "path" not in doc
    assert (doc["train"], doc["val"]) == ("images/train", "images/val")
    assert doc["names"] == {0: "crack", 1: "dent"}


def test_clashing_names_stay_unique_per_split(tmp_path: Path) -> None:
    src = tmp_path / "yolo-src"
    (src / "data.yaml").parent.mkdir(parents=True)
    (src / "data.yaml").write_text("names: ['pit']\n")
    for rel in ("a/images/x.jpg", "b/images/x.jpg", "a/images/X.png"):
        _jpg(src / rel)
        label = src / rel.replace("images", "labels")
        label.parent.mkdir(parents=True, exist_ok=True)
        Path(label).with_suffix(".txt").write_text("0 0.5 0.5 0.2 0.2\n")
    import_dataset("yolo", src, tmp_path / "ds")
    export_dataset("yolo", tmp_path / "ds", tmp_path / "yolo")
    images = list((tmp_path / "yolo" / "images" / "train").iterdir())
    assert len(images) == 3 and all(p.is_file() for p in images)
    assert len({p.stem.lower() for p in images}) == 3
    assert all(_ultralytics_label(p).read_text() for p in images)
    doc = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert doc["val"] == "images/train"  # Ultralytics needs a val entry; the file says why
    assert "no val split" in (tmp_path / "yolo" / "data.yaml").read_text()
    # and it round-trips back to the same boxes
    again, _ = import_dataset("yolo", tmp_path / "yolo", tmp_path / "again")
    assert sum(len(r.boxes) for r in again.images) == 3
    assert len(read_dataset(tmp_path / "again").images) == 3
