"""Findings of an ML engineer bringing exports of common labelling tools (Roboflow, CVAT,
Label Studio, LabelMe): each test builds the export's layout in tmp_path and checks what
the import keeps and says."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineside_inspect.dataset import import_dataset
from lineside_inspect.errors import DatasetError


def _jpg(path: Path, width: int = 128, height: int = 96) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 3), 128, np.uint8)
    cv2.rectangle(image, (10, 10), (40, 30), (0, 0, 255), -1)
    assert cv2.imwrite(str(path), image)


# --- a YOLO good part saved as TIFF / WebP was left out unsaid -----------------------------

def test_yolo_good_part_in_an_unread_format_is_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "labels").mkdir(parents=True)
    (src / "data.yaml").write_text("names: [scratch]\n")
    _jpg(src / "images" / "bad.jpg")
    (src / "labels" / "bad.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    _jpg(src / "images" / "ok.jpg")  # a good part: no label file
    (src / "images" / "good1.tif").write_bytes(b"II*\x00" + bytes(64))  # no label file
    (src / "images" / "good2.webp").write_bytes(b"RIFF" + bytes(64))
    (src / "labels" / "good2.txt").write_text("")  # an empty label file: a good part
    (src / "images" / "twice.jpg").write_bytes((src / "images" / "ok.jpg").read_bytes())
    (src / "images" / "twice.tiff").write_bytes(b"II*\x00")  # beside its JPEG: fine
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", src, tmp_path / "out")
    by_file = {Path(p.file).name: p.message for p in exc.value.problems}
    assert set(by_file) == {"good1.tif", "good2.webp"}
    assert by_file["good1.tif"].startswith("TIF image (it has no label file: a good part)")
    assert "convert it" in by_file["good1.tif"]
    assert by_file["good2.webp"].startswith("WEBP image (its label file is empty")
    ds, skipped = import_dataset("yolo", src, tmp_path / "out", skip_invalid=True)
    assert sorted(r.file_name for r in ds.images) == ["bad.jpg", "ok.jpg", "twice.jpg"]
    assert sorted(p.subject or "" for p in skipped) == ["images/good1.tif", "images/good2.webp"]


# --- a labelling tool's own format was refused without naming it (-f coco was told "COCO? (-f coco)")

def _labelme(src: Path) -> None:
    _jpg(src / "a.jpg")
    (src / "a.json").write_text(json.dumps({
        "version": "5.2.1", "flags": {}, "imagePath": "a.jpg", "imageData": None,
        "imageHeight": 96, "imageWidth": 128,
        "shapes": [{"label": "dent", "points": [[10, 10], [40, 30]], "shape_type": "rectangle"}]}))


def _label_studio(src: Path) -> None:
    _jpg(src / "images" / "a.jpg")
    (src / "project-1-at-2024.json").write_text(json.dumps([{
        "image": "/data/upload/1/a.jpg", "id": 1, "annotator": 1, "annotation_id": 1,
        "label": [{"x": 7.8, "y": 10.4, "width": 23.4, "height": 20.8,
                   "rectanglelabels": ["dent"], "original_width": 128, "original_height": 96}]}]))


def _cvat_xml(src: Path) -> None:
    _jpg(src / "images" / "a.jpg")
    (src / "annotations.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>'
        '<image id="0" name="a.jpg" width="128" height="96"><box label="dent" xtl="10" '
        'ytl="10" xbr="40" ybr="30" occluded="0"/></image></annotations>')


@pytest.mark.parametrize(("make", "fmt", "said"), [
    (_labelme, "coco", "a.json is LabelMe JSON"),
    (_labelme, "voc", "a.json is LabelMe JSON"),
    (_label_studio, "coco", "project-1-at-2024.json is a Label Studio JSON export"),
    (_cvat_xml, "coco", "annotations.xml is CVAT's own XML"),
    (_cvat_xml, "voc", "annotations.xml is CVAT's own XML"),
])
def test_a_labelling_tools_own_format_is_named_with_what_to_export(
        tmp_path: Path, make: Callable[[Path], None], fmt: str, said: str) -> None:
    make(tmp_path / "src")
    with pytest.raises(DatasetError) as exc:
        import_dataset(fmt, tmp_path / "src", tmp_path / "out")
    message = str(exc.value)
    assert said in message and "which Lineside does not read" in message
    assert "-f coco" in message  # what to import once converted or exported
    assert "COCO? (-f coco)" not in message  # never the format the user already gave
    assert not (tmp_path / "out").exists()


def test_unknown_json_under_coco_does_not_suggest_coco_again(tmp_path: Path) -> None:
    _jpg(tmp_path / "src" / "a.jpg")
    (tmp_path / "src" / "meta.json").write_text('{"camera": "cam1"}')
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", tmp_path / "src", tmp_path / "out")
    assert "no COCO JSON found" in str(exc.value)
    assert "COCO? (-f coco)" not in str(exc.value)


def test_a_yolo_set_of_tiffs_alone_does_not_suggest_yolo_again(tmp_path: Path) -> None:
    """-f yolo on a set whose images are all TIFF stopped at "no images found" and then
    asked "YOLO? (-f yolo)" of a user who had given it (second read-through)."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    (src / "images" / "a.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    (src / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (src / "data.yaml").write_text("names: [dent]\n")
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", src, tmp_path / "out")
    said = str(exc.value)
    assert "no images found" in said and "1 .tif" in said and "jpg, png or bmp" in said
    assert "(-f yolo)" not in said


def _label_studio_full(src: Path) -> None:
    """Label Studio's JSON export (not JSON-MIN): tasks with their data and annotations."""
    _jpg(src / "images" / "a.jpg")
    (src / "project-2-at-2024.json").write_text(json.dumps([{
        "id": 1, "data": {"image": "/data/upload/1/a.jpg"}, "annotations": [{
            "id": 1, "result": [{"type": "rectanglelabels", "value": {
                "x": 7.8, "y": 10.4, "width": 23.4, "height": 20.8, "rectanglelabels": ["dent"]},
                "original_width": 128, "original_height": 96}]}], "predictions": []}]))


def test_label_studios_full_json_export_is_named(tmp_path: Path) -> None:
    _label_studio_full(tmp_path / "src")
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", tmp_path / "src", tmp_path / "out")
    assert "project-2-at-2024.json is a Label Studio JSON export" in str(exc.value)


def test_a_createml_json_is_not_called_label_studio(tmp_path: Path) -> None:
    """Apple's CreateML JSON (a Roboflow export format) is a list of {"image",
    "annotations"}: it was named a Label Studio export, and told to use Label Studio's
    Export button, which its user never had."""
    src = tmp_path / "src"
    _jpg(src / "a.jpg")
    (src / "_annotations.createml.json").write_text(json.dumps([{
        "image": "a.jpg", "annotations": [{"label": "dent", "coordinates": {
            "x": 25, "y": 20, "width": 30, "height": 20}}]}]))
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out")
    assert "no COCO JSON found" in str(exc.value)
    assert "Label Studio" not in str(exc.value)


# --- a name written composed (NFC) did not find its file named decomposed (NFD, a Mac's) ---

NFC = unicodedata.normalize("NFC", "défaut")
NFD = unicodedata.normalize("NFD", "défaut")


def test_coco_finds_an_image_whose_name_is_decomposed_on_disk(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _jpg(src / "images" / f"{NFD}.jpg")
    _jpg(src / "images" / "ok.jpg", width=64)
    (src / "annotations.json").write_text(json.dumps({
        "categories": [{"id": 1, "name": "dent"}],
        "images": [{"id": 1, "file_name": f"{NFC}.jpg", "width": 128, "height": 96},
                   {"id": 2, "file_name": "ok.jpg", "width": 64, "height": 96}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20]}]}))
    ds, skipped = import_dataset("coco", src, tmp_path / "out")
    assert not skipped
    assert {r.file_name: len(r.boxes) for r in ds.images} == {f"{NFC}.jpg": 1, "ok.jpg": 0}
    assert "no COCO JSON lists" not in str(ds.info["layout"])


def test_yolo_label_meets_its_image_across_unicode_forms(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "labels").mkdir(parents=True)
    (src / "data.yaml").write_text("names: [dent]\n")
    _jpg(src / "images" / f"{NFD}.jpg")
    (src / "labels" / f"{NFC}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds, skipped = import_dataset("yolo", src, tmp_path / "out")
    assert not skipped and [len(r.boxes) for r in ds.images] == [1]  # not a "good part"


def test_voc_filename_finds_its_image_across_unicode_forms(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _jpg(src / "JPEGImages" / f"{NFD}.jpg")
    (src / "Annotations").mkdir()
    (src / "Annotations" / "a1.xml").write_text(
        f"<annotation><filename>{NFC}.jpg</filename><object><name>dent</name><bndbox>"
        "<xmin>10</xmin><ymin>10</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>"
        "</annotation>", encoding="utf-8")
    ds, skipped = import_dataset("voc", src, tmp_path / "out")
    assert not skipped and [len(r.boxes) for r in ds.images] == [1]


# --- CVAT's YOLO 1.1 export: obj_train_data/ and obj_valid_data/ were merged into one set ---

def test_cvat_yolo_subsets_become_splits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "obj.names").write_text("dent\n")
    (src / "obj.data").write_text("classes = 1\ntrain = data/train.txt\nvalid = data/valid.txt\n"
                                  "names = data/obj.names\nbackup = backup/\n")
    for sub, width in (("train", 128), ("valid", 64)):
        _jpg(src / f"obj_{sub}_data" / f"{sub}0.jpg", width=width)
        (src / f"obj_{sub}_data" / f"{sub}0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        (src / f"{sub}.txt").write_text(f"data/obj_{sub}_data/{sub}0.jpg\n")
    ds, skipped = import_dataset("yolo", src, tmp_path / "out")
    assert not skipped
    assert {r.file_name: r.split for r in ds.images} == {
        "obj_train_data/train0.jpg": "train", "obj_valid_data/valid0.jpg": "val"}


# --- -f yolo on a LabelMe or COCO set with a names file imported every defect as good -------

def _coco_beside(src: Path) -> None:
    _jpg(src / "a.jpg")
    (src / "_annotations.coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 128, "height": 96}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20]}],
        "categories": [{"id": 1, "name": "dent"}]}))


@pytest.mark.parametrize(("make", "said"), [
    (_labelme, "a.json is LabelMe JSON"),
    (_coco_beside, "COCO? (-f coco)"),
])
def test_yolo_on_another_formats_labels_is_refused_naming_it(
        tmp_path: Path, make: Callable[[Path], None], said: str) -> None:
    """A LabelMe set (a JSON per image) with a classes.txt, imported with -f yolo, came in
    as all good parts with only a note (review, session 39); an XML beside was refused."""
    src = tmp_path / "src"
    make(src)
    (src / "classes.txt").write_text("dent\n")
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", src, tmp_path / "out")
    message = str(exc.value)
    assert "no image has a YOLO label file, so all would import as good parts" in message
    assert said in message and "empty .txt label file" in message
    assert not (tmp_path / "out").exists()
    # an empty label file per image is YOLO's own way to say "a good part": taken as asked
    (src / "a.txt").write_text("")
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert [(r.file_name, r.boxes) for r in ds.images] == [("a.jpg", [])]
