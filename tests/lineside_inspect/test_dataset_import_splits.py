"""Splits a labelled set brings with it: Pascal VOC's ``ImageSets/Main`` lists (with VOC's
own ``trainval.txt`` beside ``train.txt`` and ``val.txt``) and the ``train`` / ``val`` /
``test`` entries of a YOLO ``data.yaml`` (folders, list files, or lists of either). Each
test builds the user's layout in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineside_inspect.dataset import import_dataset
from lineside_inspect.dataset.model import Dataset
from lineside_inspect.errors import DatasetError

from .test_dataset_import_findings import _jpg, _messages


def _splits(ds: Dataset) -> dict[str, str | None]:
    return {r.file_name: r.split for r in ds.images}


# --- Pascal VOC: ImageSets/Main -----------------------------------------------------------

def _voc(src: Path, count: int, lists: dict[str, str]) -> None:
    for n in range(count):
        _jpg(src / "JPEGImages" / f"img{n}.jpg")
        (src / "Annotations").mkdir(parents=True, exist_ok=True)
        (src / "Annotations" / f"img{n}.xml").write_text(
            f"<annotation><filename>img{n}.jpg</filename><object><name>scratch</name>"
            "<bndbox><xmin>10</xmin><ymin>10</ymin><xmax>40</xmax><ymax>30</ymax></bndbox>"
            "</object></annotation>")
    (src / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for name, text in lists.items():
        (src / "ImageSets" / "Main" / name).write_text(text)


def _ids(*numbers: int) -> str:
    return "".join(f"img{n}\n" for n in numbers)


def test_voc_trainval_list_does_not_swallow_the_val_split(tmp_path: Path) -> None:
    # as VOC 2007/2012 ship it: trainval.txt (= train + val) beside train.txt and val.txt,
    # and per-class lists (image id, then 1 / -1) that say nothing about splits
    src = tmp_path / "VOC2012"
    _voc(src, 8, {"train.txt": _ids(*range(6)), "val.txt": _ids(6, 7),
                  "trainval.txt": _ids(*range(8)),
                  "scratch_train.txt": "".join(f"img{n}  1\n" for n in range(6)),
                  "scratch_val.txt": "img6  1\nimg7 -1\n",
                  "scratch_trainval.txt": "".join(f"img{n}  1\n" for n in range(8))})
    ds, skipped = import_dataset("voc", src, tmp_path / "out")
    assert not skipped
    assert _splits(ds) == {**{f"JPEGImages/img{n}.jpg": "train" for n in range(6)},
                           "JPEGImages/img6.jpg": "val", "JPEGImages/img7.jpg": "val"}
    layout = ds.info["layout"]
    assert "splits from ImageSets/Main/: 6 'train' (train.txt), 2 'val' (val.txt)" in layout
    assert "test" not in layout and "trainval" not in layout  # only the splits applied


def test_voc_trainval_puts_only_images_no_other_list_names_into_train(tmp_path: Path) -> None:
    # VOC 2007's trainval + test download: no train.txt / val.txt
    src = tmp_path / "VOC2007"
    _voc(src, 4, {"trainval.txt": _ids(0, 1, 2), "test.txt": _ids(3)})
    ds, _ = import_dataset("voc", src, tmp_path / "out")
    assert _splits(ds) == {"JPEGImages/img0.jpg": "train", "JPEGImages/img1.jpg": "train",
                           "JPEGImages/img2.jpg": "train", "JPEGImages/img3.jpg": "test"}
    assert ("3 'train' (trainval.txt, in no other list), 1 'test' (test.txt)"
            in ds.info["layout"])


def test_voc_image_in_train_and_val_lists_is_a_problem(tmp_path: Path) -> None:
    src = tmp_path / "voc"
    _voc(src, 3, {"train.txt": _ids(0, 1), "val.txt": _ids(1, 2), "trainval.txt": _ids(0, 1, 2)})
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out")
    assert ("'JPEGImages/img1.jpg' is listed in ImageSets/Main/train.txt and "
            "ImageSets/Main/val.txt, which name different splits") in _messages(exc)
    ds, skipped = import_dataset("voc", src, tmp_path / "out", skip_invalid=True)
    assert _splits(ds) == {"JPEGImages/img0.jpg": "train", "JPEGImages/img2.jpg": "val"}
    assert len(skipped) == 1


def test_voc_trainval_beside_test_and_lists_saved_by_notepad(tmp_path: Path) -> None:
    """trainval.txt and test.txt naming one image went to test without a word; a val.txt
    with a byte-order mark and CRLF lost its first name to trainval's train."""
    src = tmp_path / "voc"
    _voc(src, 4, {"trainval.txt": _ids(0, 1, 2), "test.txt": _ids(2, 3)})
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out")
    assert ("'JPEGImages/img2.jpg' is listed in ImageSets/Main/test.txt and "
            "ImageSets/Main/trainval.txt, which name different splits") in _messages(exc)
    notepad = tmp_path / "notepad"
    _voc(notepad, 3, {"trainval.txt": _ids(0, 1, 2), "train.txt": _ids(0, 1)})
    (notepad / "ImageSets" / "Main" / "val.txt").write_bytes(b"\xef\xbb\xbfimg2\r\n")
    ds, _ = import_dataset("voc", notepad, tmp_path / "out2")
    assert _splits(ds)["JPEGImages/img2.jpg"] == "val"


# --- YOLO: data.yaml's train / val / test ---------------------------------------------------

def _yolo(src: Path, yaml_text: str, images: list[str]) -> None:
    """Images under ``src/images/`` with a label each under ``src/labels/``."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "data.yaml").write_text(yaml_text)
    for rel in images:
        _jpg(src / "images" / rel)
        label = (src / "labels" / rel).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("0 0.5 0.5 0.2 0.2\n")


def test_yolo_splits_from_list_files_named_by_data_yaml(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "path: .\ntrain: train.txt\nval: val.txt\nnames: [scratch]\n",
          ["x0.jpg", "x1.jpg", "x2.jpg"])
    (src / "train.txt").write_text("images/x0.jpg\n./images/x1.jpg\n")
    (src / "val.txt").write_text("images/x2.jpg\n")
    ds, skipped = import_dataset("yolo", src, tmp_path / "out")
    assert not skipped
    assert _splits(ds) == {"x0.jpg": "train", "x1.jpg": "train", "x2.jpg": "val"}
    assert "splits from data.yaml (train: train.txt; val: val.txt)" in ds.info["layout"]


def test_yolo_splits_from_folders_data_yaml_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "path: .\ntrain: images/fold_a\nval: images/fold_b\nnames: [scratch]\n",
          ["fold_a/a0.jpg", "fold_a/a1.jpg", "fold_b/b0.jpg"])
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert _splits(ds) == {"fold_a/a0.jpg": "train", "fold_a/a1.jpg": "train",
                           "fold_b/b0.jpg": "val"}
    assert "splits from data.yaml (train: images/fold_a; val: images/fold_b)" in ds.info["layout"]


def test_yolo_splits_from_lists_of_entries_relative_to_path(tmp_path: Path) -> None:
    # 'path:' a folder inside the source; entries a list of a folder and a list file whose
    # lines were written on another machine (found by the end of their path)
    src = tmp_path / "src"
    _yolo(src / "set", "", ["a/0.jpg", "a/1.jpg", "b/2.jpg", "c/3.jpg"])
    (src / "data.yaml").write_text("path: set\ntrain: [images/a, lists/more.txt]\n"
                                   "test: images/c\nnames: [scratch]\n")
    (src / "set" / "lists").mkdir()
    (src / "set" / "lists" / "more.txt").write_text("/home/bob/data/set/images/b/2.jpg\n")
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert _splits(ds) == {"set/images/a/0.jpg": "train", "set/images/a/1.jpg": "train",
                           "set/images/b/2.jpg": "train", "set/images/c/3.jpg": "test"}
    layout = ds.info["layout"]
    assert "splits from data.yaml (train: images/a, lists/more.txt; test: images/c)" in layout
    assert "1 line(s) of data.yaml's list files found by the end of their path" in layout


def test_yolo_image_in_two_splits_of_data_yaml_goes_to_the_held_out_one(tmp_path: Path) -> None:
    """Ultralytics users train a final model on train + val (``train: [images/train,
    images/val]``): refused at first; the image is val's, and the layout says so."""
    src = tmp_path / "src"
    _yolo(src, "train: [images/train, images/val]\nval: images/val\nnames: [scratch]\n",
          ["train/a.jpg", "val/b.jpg"])
    ds, skipped = import_dataset("yolo", src, tmp_path / "out")
    assert _splits(ds) == {"train/a.jpg": "train", "val/b.jpg": "val"} and not skipped
    assert "1 image(s) data.yaml names in train and val imported as val only" in ds.info["layout"]


def test_yolo_data_yaml_that_cannot_be_followed_is_warned_not_fatal(tmp_path: Path) -> None:
    """A list file in latin-1, an entry too long for the file system, an alias bomb of
    578 bytes (its list printed whole took all memory): each a warning, the import goes on
    with the splits of the folder names."""
    src = tmp_path / "src"
    bomb = "".join(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9 if n else ['"x"'] * 9) + "]\n"
                   for n in range(9))
    _yolo(src, bomb + "train: [*a8]\nval: val.txt\ntest: " + "d" * 300 + "\nnames: [scratch]\n",
          ["train/a.jpg", "val/b.jpg"])
    (src / "val.txt").write_bytes("images/val/caf\u00e9.jpg\n".encode("latin-1"))
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert _splits(ds) == {"train/a.jpg": "train", "val/b.jpg": "val"}
    layout = ds.info["layout"]
    assert "warning: data.yaml train: a list is not a folder or list file name" in layout
    assert "warning: data.yaml val: 'val.txt' cannot be read (" in layout and "not UTF-8" in layout
    assert "warning: data.yaml test: 'ddd" in layout and len(layout) < 3000


def test_yolo_roboflow_export_in_a_project_folder(tmp_path: Path) -> None:
    """Roboflow's ``../train/images`` from ``proj/data.yaml`` imported as the folder above
    it: read as ``proj/train/images``, not warned of three times."""
    proj = tmp_path / "parent" / "proj"
    proj.mkdir(parents=True)
    (proj / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\n"
                                    "test: ../test/images\nnames: [scratch]\n")
    for sub in ("train", "valid"):
        _jpg(proj / sub / "images" / f"{sub}.jpg")
    ds, _ = import_dataset("yolo", tmp_path / "parent", tmp_path / "out")
    assert set(_splits(ds).values()) == {"train", "val"}
    assert "warning" not in ds.info["layout"]


def test_yolo_entries_outside_the_source_or_naming_nothing_are_warned(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "path: /content/datasets/parts\ntrain: images/fold_a\nval: ../elsewhere/images\n"
          "test: images/fold_c\nnames: [scratch]\n", ["fold_a/a.jpg", "fold_b/b.jpg"])
    _jpg(tmp_path / "elsewhere" / "images" / "z.jpg")  # beside the source: never imported
    (tmp_path / "elsewhere" / "val.txt").write_text("images/z.jpg\n")
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert _splits(ds) == {"fold_a/a.jpg": "train", "fold_b/b.jpg": "train"}
    layout = ds.info["layout"]
    assert "data.yaml path: '/content/datasets/parts' is outside" in layout
    assert "warning: data.yaml val: '../elsewhere/images' is outside" in layout
    assert "not read" in layout
    assert "warning: data.yaml test: 'images/fold_c' names nothing" in layout
    assert "splits from data.yaml (train: images/fold_a)" in layout

    (src / "data.yaml").write_text("train: images/fold_a\nval: ../elsewhere/val.txt\n"
                                   "names: [scratch]\n")
    ds, _ = import_dataset("yolo", src, tmp_path / "out2")
    assert "warning: data.yaml val: '../elsewhere/val.txt' is outside" in ds.info["layout"]
    assert sorted(_splits(ds)) == ["fold_a/a.jpg", "fold_b/b.jpg"]


def test_yolo_list_lines_naming_no_image_are_warned(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "train: train.txt\nval: val.txt\nnames: [scratch]\n", ["a.jpg", "b.jpg"])
    (src / "train.txt").write_text("images/a.jpg\nimages/gone.jpg\n")
    (src / "val.txt").write_text("images/b.jpg\n")
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert _splits(ds) == {"a.jpg": "train", "b.jpg": "val"}
    assert ("warning: data.yaml train: 1 line(s) of 'train.txt' name no image in "
            f"{src}, e.g. 'images/gone.jpg'") in ds.info["layout"]


def test_yolo_data_yaml_whose_val_is_its_train_keeps_folder_splits(tmp_path: Path) -> None:
    # Lineside's own export of a set without val writes val: images/train
    src = tmp_path / "src"
    _yolo(src, "train: images/train\nval: images/train\nnames: {0: scratch}\n",
          ["train/a.jpg", "train/b.jpg"])
    ds, skipped = import_dataset("yolo", src, tmp_path / "out")
    assert not skipped and _splits(ds) == {"train/a.jpg": "train", "train/b.jpg": "train"}
    assert "data.yaml's train and val name the same 2 image(s)" in ds.info["layout"]


# Roboflow's YOLOv8 data.yaml may give names as a mapping, as Ultralytics does
@pytest.mark.parametrize("names", ["[scratch, dent]", "{1: dent, 0: scratch}"])
def test_yolo_roboflow_data_yaml_says_where_the_splits_came_from(tmp_path: Path,
                                                                names: str) -> None:
    src = tmp_path / "rf"
    src.mkdir()
    (src / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\n"
                                   f"test: ../test/images\nnames: {names}\n")
    for sub in ("train", "valid"):
        _jpg(src / sub / "images" / f"{sub}.jpg")
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert ds.categories == ["scratch", "dent"]
    assert _splits(ds) == {"train/images/train.jpg": "train", "valid/images/valid.jpg": "val"}
    layout = ds.info["layout"]
    assert "splits from data.yaml (train: ../train/images; val: ../valid/images)" in layout
    # Roboflow writes the entry of a split it did not export: a note, not a warning
    assert "data.yaml test: '../test/images': there is no test/images here" in layout
    assert "warning" not in layout
