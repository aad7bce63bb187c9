"""Import defects a new-user review found (fixtures of /tmp/review_user/fx rebuilt here):
a COCO image id shared by two images, VOC class sub-folders reusing file names, imports
of no image that succeeded, COCO images on disk the JSON does not list, COCO sizes
written as floats or left out, YOLO labels with a BOM or float class ids, JPEGs an EXIF
orientation shows turned, Windows separators in COCO names, and -f good's layout line."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import import_dataset, read_dataset
from lineside_inspect.dataset.exif import as_stored, orientation
from lineside_inspect.errors import DatasetError

from .test_dataset_import_findings import _jpg, _messages, _voc_xml, _yolo


def _coco(src: Path, images: list[dict[str, object]], boxes: dict[int, list[float]],
          names: list[str] | None = None) -> None:
    """A COCO folder: annotations.json and images/; ``boxes`` maps image id to a bbox."""
    src.mkdir(parents=True, exist_ok=True)
    for name in names if names is not None else [str(i["file_name"]) for i in images]:
        _jpg(src / "images" / name)
    anns = [{"id": n + 1, "image_id": i, "category_id": 1, "bbox": b}
            for n, (i, b) in enumerate(boxes.items())]
    (src / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "dent"}]}))


def _img(i: int, name: str, **size: object) -> dict[str, object]:
    return {"id": i, "file_name": name, **(size or {"width": 128, "height": 96})}


def _exif_jpeg(path: Path, turn: int, order: str = "<") -> None:
    """A 128x96 JPEG whose EXIF says to show it turned (``turn``, 1-8)."""
    ok, buf = cv2.imencode(".jpg", np.full((96, 128, 3), 128, np.uint8))
    assert ok
    data = buf.tobytes()
    mark = b"II" if order == "<" else b"MM"
    tiff = (mark + struct.pack(order + "HI", 42, 8) + struct.pack(order + "H", 1)
            + struct.pack(order + "HHI", 0x0112, 3, 1) + struct.pack(order + "HH", turn, 0)
            + struct.pack(order + "I", 0))
    app1 = b"Exif\x00\x00" + tiff
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])


# --- 1: a COCO image id given to two images ---------------------------------------------

def test_coco_shared_image_id_leaves_out_both_images_and_their_boxes(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    _coco(src, [_img(1, "good_A.jpg"), _img(1, "defect_B.jpg"), _img(2, "defect_C.jpg")],
          {1: [4, 40, 24, 26], 2: [72, 34, 20, 21]})
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out")
    assert {p.subject for p in exc.value.problems} == {"good_A.jpg", "defect_B.jpg"}
    assert all("image id 1" in p.message for p in exc.value.problems)
    ds, skipped = import_dataset("coco", src, tmp_path / "out", skip_invalid=True)
    # good_A kept B's box before
    assert [(r.file_name, len(r.boxes)) for r in ds.images] == [("defect_C.jpg", 1)]
    assert len(skipped) == 2


# --- 2: VOC class sub-folders reusing file names ----------------------------------------

def test_voc_xml_matches_the_image_at_its_own_place_under_images(tmp_path: Path) -> None:
    src = tmp_path / "voc"
    for label in ("crack", "stain"):
        for i in (1, 2):
            _jpg(src / "images" / label / f"00{i}.jpg")
            xml = src / "annotations" / label / f"00{i}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.write_text(_voc_xml(f"00{i}.jpg", [(label, (10, 10, 40, 30))]))
    ds, skipped = import_dataset("voc", src, tmp_path / "out")
    assert not skipped
    assert sorted((r.file_name, r.boxes[0].label) for r in ds.images) == [
        ("images/crack/001.jpg", "crack"), ("images/crack/002.jpg", "crack"),
        ("images/stain/001.jpg", "stain"), ("images/stain/002.jpg", "stain")]


# --- 3: an import that yields no image ---------------------------------------------------

@pytest.mark.parametrize(("doc", "said"), [
    ({}, "no images list"),
    ({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]},
     "its images list is empty"),
])
def test_coco_listing_no_image_is_refused_saying_what_is_there(
        tmp_path: Path, doc: dict[str, object], said: str) -> None:
    src = tmp_path / "coco"
    for i in range(3):
        _jpg(src / "images" / f"p{i}.jpg")
    (src / "annotations.json").write_text(json.dumps(doc))
    r = CliRunner().invoke(app, ["data", "import", "-f", "coco", str(src), str(tmp_path / "o")])
    assert r.exit_code != 0 and not (tmp_path / "o").exists()
    text = " ".join(r.output.split())
    assert "lists no images" in text and said in text
    assert "3 image file(s) are there but not listed, e.g. images/p0.jpg" in text
    assert '"images" (id, file_name, width, height)' in text


def test_skip_invalid_leaving_out_every_image_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    _coco(src, [_img(1, "a.jpg", width="wide", height=96), _img(2, "b.jpg", width=1.5, height=96)],
          {1: [4, 4, 20, 20]})
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out")
    assert "--skip-invalid would leave no image" in str(exc.value)
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out", skip_invalid=True)
    assert "every image found has a problem (2 problem(s)), so --skip-invalid left none" in (
        str(exc.value))
    assert len(exc.value.problems) == 2 and not (tmp_path / "out").exists()


def test_voc_whose_images_are_all_missing_is_refused_with_skip_invalid(tmp_path: Path) -> None:
    src = tmp_path / "voc"
    (src / "Annotations").mkdir(parents=True)
    (src / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg", [("dent", (1, 1, 5, 5))]))
    with pytest.raises(DatasetError) as exc:  # no image at all: one line, before any XML
        import_dataset("voc", src, tmp_path / "out", skip_invalid=True)
    assert "no images found beside the 1 XML file(s)" in str(exc.value)
    _jpg(src / "JPEGImages" / "b.jpg")  # an image, but not the one the XML names
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out", skip_invalid=True)
    assert "--skip-invalid left none to import" in str(exc.value) and exc.value.problems
    assert not (tmp_path / "out").exists()


# --- 4: COCO images on disk the JSON does not list --------------------------------------

def test_coco_names_images_on_disk_no_json_lists(tmp_path: Path) -> None:
    src = tmp_path / "rf"
    for split in ("train", "valid"):
        (src / split).mkdir(parents=True)
        _jpg(src / split / "a.jpg")
        images = [{"id": 1, "file_name": "a.jpg", "width": 128, "height": 96}]
        (src / split / "_annotations.coco.json").write_text(json.dumps(
            {"images": images, "annotations": [], "categories": []}))
    _jpg(src / "train" / "unlisted_photo.jpg")
    _jpg(src / "valid" / "another.jpg")
    ds, _ = import_dataset("coco", src, tmp_path / "out")
    assert len(ds.images) == 2
    assert ("2 image(s) on disk that no COCO JSON lists left out, e.g. "
            "train/unlisted_photo.jpg") in str(ds.info["layout"])


# --- 5: COCO sizes as floats or left out; what --skip-invalid can do --------------------

def test_coco_float_sizes_are_read_and_missing_sizes_come_from_the_image(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    _coco(src, [_img(1, "a.jpg", width=128.0, height=96.0), {"id": 2, "file_name": "b.jpg"},
                _img(3, "c.jpg", width=None, height=None)],
          {1: [4, 4, 20, 20], 2: [50, 50, 20, 20], 3: [9, 9, 9, 9]})
    ds, skipped = import_dataset("coco", src, tmp_path / "out")
    assert not skipped
    assert [(r.width, r.height, len(r.boxes)) for r in ds.images] == [(128, 96, 1)] * 3
    assert "2 image(s) without a width/height in the JSON sized from the image" in str(
        ds.info["layout"])


def test_an_image_refused_for_its_fields_takes_its_boxes_with_it(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    _coco(src, [_img(1, "a.jpg", width=128.5, height=96), _img(2, "b.jpg")],
          {1: [4, 4, 20, 20], 2: [5, 5, 20, 20]})
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out")
    assert "missing image" not in _messages(exc)  # was one per box, and not skippable
    assert "pass --skip-invalid" in str(exc.value)
    ds, skipped = import_dataset("coco", src, tmp_path / "out", skip_invalid=True)
    assert [r.file_name for r in ds.images] == ["b.jpg"] and len(skipped) == 1


def test_skip_invalid_is_suggested_only_when_it_would_help(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    _coco(src, [_img(1, "a.jpg"), _img(2, "b.jpg")], {1: [4, 4, 20, 20], 7: [5, 5, 5, 5]})
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out")
    assert "--skip-invalid cannot leave them out" in str(exc.value)
    assert "pass --skip-invalid" not in str(exc.value)


# --- 6: YOLO labels with a BOM or float class ids ----------------------------------------

def test_yolo_label_with_a_bom_and_float_class_ids_import(tmp_path: Path) -> None:
    src = tmp_path / "yolo"
    _yolo(src, "names: [dent, scratch]\n", {"a": "x", "b": "x", "c": "x"})
    (src / "labels" / "a.txt").write_bytes(b"\xef\xbb\xbf0 0.5 0.5 0.2 0.2\n")
    (src / "labels" / "b.txt").write_text("1.0 0.5 0.5 0.2 0.2\n0.0 0.3 0.3 0.1 0.1\n")
    (src / "labels" / "c.txt").write_text("0.5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", src, tmp_path / "out")
    (problem,) = exc.value.problems  # only the id that is no whole number
    assert "c.txt" in problem.file and "a whole class id" in problem.message
    ds, _ = import_dataset("yolo", src, tmp_path / "out", skip_invalid=True)
    assert {r.file_name: [b.label for b in r.boxes] for r in ds.images} == {
        "a.jpg": ["dent"], "b.jpg": ["scratch", "dent"]}


def test_good_refuses_a_folder_of_float_id_labels(tmp_path: Path) -> None:
    _jpg(tmp_path / "src" / "a.jpg")
    (tmp_path / "src" / "a.txt").write_bytes(b"\xef\xbb\xbf0.0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError, match="-f yolo"):
        import_dataset("good", tmp_path / "src", tmp_path / "out")


def test_good_on_one_image_file_says_it_takes_a_folder(tmp_path: Path) -> None:
    """-f good on one image said "no images found" of an image (new-user review, session
    50); a folder is what it takes, as -f voc, yolo and mvtec say."""
    _jpg(tmp_path / "a.jpg")
    with pytest.raises(DatasetError, match=r"a\.jpg: a set of good images is a folder"):
        import_dataset("good", tmp_path / "a.jpg", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_image_file_far_over_its_pixels_is_refused_unread(tmp_path: Path) -> None:
    """A 160x160 PNG padded to 3 GB was read whole to find its size (3.2 GB of memory;
    training review, session 33). The file is sparse here: nothing is written to disk."""
    from lineside_inspect.dataset.layout import MAX_IMAGE_FILE_BYTES

    _jpg(tmp_path / "src" / "a.jpg")
    big = tmp_path / "src" / "b.jpg"
    _jpg(big)
    with big.open("r+b") as f:
        f.truncate(MAX_IMAGE_FILE_BYTES + 1)
    with pytest.raises(DatasetError) as refused:
        import_dataset("good", tmp_path / "src", tmp_path / "out")
    assert re.search(r"b\.jpg.*image file of \d+ MiB: over the", _messages(refused)), \
        _messages(refused)


# --- 7: JPEGs an EXIF orientation shows turned -------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
def test_exif_orientation_is_read_in_either_byte_order(tmp_path: Path, order: str) -> None:
    _exif_jpeg(tmp_path / "a.jpg", 6, order)
    assert orientation((tmp_path / "a.jpg").read_bytes()) == 6
    assert orientation(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\xff\xff") == 1  # cut short


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("kind", [4, 8, 9])  # LONG, SSHORT, SLONG
def test_an_exif_orientation_of_another_integer_type_is_read_and_set_as_stored(
        kind: int, order: str) -> None:
    """Some writers store the orientation as a LONG (or a signed type) rather than the
    standard's SHORT. PIL's ``exif_transpose`` and OpenCV (which reads the entry's first
    two bytes, whatever its type) turn such a JPEG; Lineside read it as "as stored", so an
    import said nothing and `data pull` left the tag (review, session 55): the pulled frame
    still read turned in OpenCV, every box off its defect. Now it is read, and set to 1."""
    fmt = {4: "I", 8: "h", 9: "i"}[kind]
    ok, buf = cv2.imencode(".jpg", np.full((96, 128, 3), 128, np.uint8))
    assert ok
    mark = b"II" if order == "<" else b"MM"
    tiff = (mark + struct.pack(order + "HI", 42, 8) + struct.pack(order + "H", 1)
            + struct.pack(order + "HHI", 0x0112, kind, 1)
            + struct.pack(order + fmt, 6).ljust(4, b"\x00") + struct.pack(order + "I", 0))
    app1 = b"Exif\x00\x00" + tiff
    data = buf.tobytes()[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + buf.tobytes()[2:]
    assert orientation(data) == 6
    fixed = as_stored(data)
    assert len(fixed) == len(data) and orientation(fixed) == 1
    assert fixed[len(data) - len(buf) + 2:] == buf.tobytes()[2:]  # the picture's bytes untouched
    decoded = cv2.imdecode(np.frombuffer(fixed, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (96, 128, 3)  # as stored, not turned


def test_yolo_warns_of_jpegs_shown_turned(tmp_path: Path) -> None:
    src = tmp_path / "yolo"
    _yolo(src, "names: [dent]\n", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n"})
    _exif_jpeg(src / "images" / "a.jpg", 6)
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    layout = str(ds.info["layout"])
    assert "warning: 1 JPEG(s) whose EXIF orientation says to show them turned" in layout
    assert "e.g. a.jpg, shown turned 90° clockwise" in layout
    assert "reads pixels as stored" in layout and "save those images turned" in layout


def test_coco_size_of_the_turned_picture_names_the_exif_orientation(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    _coco(src, [_img(1, "a.jpg", width=96, height=128), _img(2, "b.jpg")], {}, names=[])
    _exif_jpeg(src / "images" / "a.jpg", 6)
    _exif_jpeg(src / "images" / "b.jpg", 6)  # its size is the stored frame's: no warning
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out")
    (problem,) = exc.value.problems
    assert "says 96x128 but a.jpg is 128x96 (turned: the JPEG's EXIF orientation 6" in (
        problem.message)
    ds, _ = import_dataset("coco", src, tmp_path / "out", skip_invalid=True)
    assert "EXIF" not in str(ds.info["layout"])


# --- 8: Windows separators in COCO names; -f good's layout line --------------------------

def test_coco_backslash_in_a_file_name_is_a_folder(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    _coco(src, [_img(1, "images\\im2.jpg")], {1: [4, 4, 20, 20]}, names=["im2.jpg"])
    ds, _ = import_dataset("coco", src, tmp_path / "out")
    assert [r.file_name for r in ds.images] == ["images/im2.jpg"]
    assert (tmp_path / "out" / "images" / "images" / "im2.jpg").is_file()
    assert [r.file_name for r in read_dataset(tmp_path / "out").images] == ["images/im2.jpg"]


def test_good_import_prints_the_layout_found(tmp_path: Path) -> None:
    for name in ("lot1/a.jpg", "lot1/b.jpg", "lot2/c.jpg"):
        _jpg(tmp_path / "good" / name)
    r = CliRunner().invoke(app, ["data", "import", "-f", "good", str(tmp_path / "good"),
                                 str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "layout found: good images; 3 images in lot1/ and lot2/; 2 group(s)" in r.stdout


def test_a_coco_json_given_in_cvat_annotations_folder_finds_images_beside_it(
        tmp_path: Path) -> None:
    """CVAT's export: annotations/instances_default.json and images/ beside annotations/.
    The folder form worked; the JSON given itself failed every image "looked in images/"
    (annotations/images/, which was not said) (new-user review)."""
    src = tmp_path / "cvat"
    _coco(src, [_img(1, "frame_0.png"), _img(2, "frame_1.png")], {1: [4, 4, 10, 10]})
    (src / "annotations").mkdir()
    (src / "annotations.json").rename(src / "annotations" / "instances_default.json")
    ds, _ = import_dataset("coco", src / "annotations" / "instances_default.json", tmp_path / "a")
    assert sorted(r.file_name for r in ds.images) == ["frame_0.png", "frame_1.png"]
    (src / "images" / "frame_1.png").unlink()
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src / "annotations" / "instances_default.json", tmp_path / "b")
    said = _messages(exc)
    assert f"looked in {src / 'annotations' / 'images'}/, " in said  # the real paths
    assert f"{src / 'images'}/" in said


def test_a_jpeg_whose_frame_header_is_past_64_kib_imports(tmp_path: Path) -> None:
    """A 70 KB ICC profile put the frame header past the 64 KiB the import read: "truncated
    JPEG: no frame header found" for a picture that decodes (second review)."""
    src = tmp_path / "coco"
    _coco(src, [_img(1, "icc.jpg", width=0, height=0)], {1: [4, 4, 10, 10]})
    data = (src / "images" / "icc.jpg").read_bytes()
    for _ in range(2):  # two APP2 segments of 35 KB, as a profile is split
        data = data[:2] + b"\xff\xe2" + struct.pack(">H", 35_002) + b"\0" * 35_000 + data[2:]
    (src / "images" / "icc.jpg").write_bytes(data)
    ds, _ = import_dataset("coco", src, tmp_path / "out")
    assert [(r.width, r.height) for r in ds.images] == [(128, 96)]


def test_voc_folder_or_path_tells_apart_images_of_one_name(tmp_path: Path) -> None:
    """annotations/*.xml flat, images/crack/001.jpg and images/stain/001.jpg: the pick by
    sorted order put the stain's box on crack/001.jpg, unsaid (second review). <folder>
    or <path> tells them apart; nothing telling is a problem, not a guess."""
    src = tmp_path / "voc"
    for cls in ("crack", "stain"):
        for stem in ("001", "002"):
            _jpg(src / "images" / cls / f"{stem}.jpg")
    (src / "annotations").mkdir(parents=True)
    with_folder = _voc_xml("001.jpg", [("stain", (10, 10, 40, 30))])
    (src / "annotations" / "s.xml").write_text(
        with_folder.replace("<filename>", "<folder>stain</folder><filename>"))
    with_path = _voc_xml("001.jpg", [("crack", (10, 10, 40, 30))])
    (src / "annotations" / "c.xml").write_text(with_path.replace(
        "<filename>", "<path>C:\\labels\\images\\crack\\001.jpg</path><filename>"))
    ds, _ = import_dataset("voc", src, tmp_path / "out")
    assert {r.file_name: [b.label for b in r.boxes] for r in ds.images} == {
        "images/stain/001.jpg": ["stain"], "images/crack/001.jpg": ["crack"]}
    (src / "annotations" / "x.xml").write_text(_voc_xml("002.jpg", [("crack", (1, 1, 9, 9))]))
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "again")
    assert "image '002.jpg' could be any of images/crack/002.jpg, images/stain/002.jpg" in \
        _messages(exc)


def test_an_image_with_an_id_of_the_wrong_type_takes_its_boxes_with_it(tmp_path: Path) -> None:
    """An image with the id [3] was refused, and its annotation became "annotation for
    missing image [3]", which concerns no image, so --skip-invalid refused the whole import
    (second review)."""
    src = tmp_path / "coco"
    _coco(src, [_img(1, "a.jpg"), _img([3], "c.jpg")], {1: [4, 4, 10, 10]})  # type: ignore[arg-type]
    doc = json.loads((src / "annotations.json").read_text())
    doc["annotations"].append({"id": 9, "image_id": [3], "category_id": 1, "bbox": [1, 1, 5, 5]})
    (src / "annotations.json").write_text(json.dumps(doc))
    ds, skipped = import_dataset("coco", src, tmp_path / "out", skip_invalid=True)
    assert [r.file_name for r in ds.images] == ["a.jpg"]
    assert not any("missing image" in p.message for p in skipped)
