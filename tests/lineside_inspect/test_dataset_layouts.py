"""Importing the layouts users bring: fixtures shaped like public VOC, YOLO and COCO sets
(Kaggle-style VOC with uppercase folders, extension-less <filename>s and a Validation_
sub-set; Roboflow exports; classic VOC with ImageSets; symlinked folders), built here from
tiny generated images."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import import_dataset, read_dataset
from lineside_inspect.errors import DatasetError
from lineside_inspect.opencv import cv2

runner = CliRunner()
W, H = 64, 48


def image(path: Path, seed: int, *, grey: bool = False) -> Path:
    """A small JPEG with coarse structure of its own (distinct images look distinct)."""
    rng = np.random.default_rng(seed)
    pixels = cv2.resize(rng.integers(0, 255, (6, 8, 1 if grey else 3), dtype=np.uint8), (W, H),
                        interpolation=cv2.INTER_LINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".jpg", pixels)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def voc_xml(path: Path, filename: str, boxes: list[tuple[str, int, int, int, int]]) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "whatever"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for k, v in (("width", W), ("height", H), ("depth", 1)):
        ET.SubElement(size, k).text = str(v)
    for label, *xyxy in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = label
        bb = ET.SubElement(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), xyxy, strict=True):
            ET.SubElement(bb, k).text = str(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path)


def kaggle_neu(src: Path) -> Path:
    """NEU-DET as Kaggle ships it: IMAGES/ + ANNOTATIONS/ in capitals, greyscale images,
    <filename> often without the extension, and a separate Validation_ sub-set whose
    file names repeat the training ones."""
    for i in range(1, 5):
        cls = ("crazing", "scratches")[i % 2]
        image(src / "IMAGES" / f"{cls}_{i}.jpg", i, grey=True)
        name = f"{cls}_{i}" if i % 2 else f"{cls}_{i}.jpg"  # half of them extension-less
        voc_xml(src / "ANNOTATIONS" / f"{cls}_{i}.xml", name, [(cls, 5, 5, 30, 20)])
    for i in (1, 2):
        cls = ("crazing", "scratches")[i % 2]
        image(src / "Validation_Images" / f"{cls}_{i}.jpg", 100 + i, grey=True)
        voc_xml(src / "Validation_Annotations" / f"{cls}_{i}.xml", f"{cls}_{i}", [(cls, 1, 2, 40, 30)])
    return src


def test_kaggle_voc_uppercase_extensionless_and_validation_subset(tmp_path: Path) -> None:
    src = kaggle_neu(tmp_path / "NEU-DET")
    ds, skipped = import_dataset("voc", src, tmp_path / "neu")
    assert not skipped
    assert ds.categories == ["crazing", "scratches"]
    splits = {r.file_name: r.split for r in ds.images}
    assert splits == {**{f"IMAGES/{c}_{i}.jpg": "train" for i, c in
                         ((1, "scratches"), (2, "crazing"), (3, "scratches"), (4, "crazing"))},
                      "Validation_Images/scratches_1.jpg": "val", "Validation_Images/crazing_2.jpg": "val"}
    # the validation XMLs found their own images, not the training files of the same name
    val = next(r for r in ds.images if r.file_name == "Validation_Images/crazing_2.jpg")
    assert [b.xyxy() for b in val.boxes] == [(1, 2, 40, 30)]
    assert (tmp_path / "neu" / "images" / "Validation_Images" / "crazing_2.jpg").read_bytes() == \
        (src / "Validation_Images" / "crazing_2.jpg").read_bytes()
    layout = ds.info["layout"]
    assert "ANNOTATIONS/" in layout and "IMAGES/" in layout and "Validation_Images/" in layout
    assert "sub-set 'val'" in layout and "found by stem" in layout


def test_cli_import_says_the_layout(tmp_path: Path) -> None:
    src = kaggle_neu(tmp_path / "NEU-DET")
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(src), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "layout found: Pascal VOC" in r.stdout and "IMAGES/" in r.stdout
    assert "imported 6 images" in r.stdout


def test_a_sub_set_that_only_its_image_folder_makes_is_named_in_the_layout(tmp_path: Path) -> None:
    """Kaggle's steel sets with every XML in ANNOTATIONS/ and a Validation_Images/ beside
    IMAGES/: the val split came from the image folder, and the layout named the XMLs'
    folders only ("main set: ... images in IMAGES/"), never where val came from."""
    src = tmp_path / "steel"
    for i in range(1, 6):
        folder = "IMAGES" if i < 4 else "Validation_Images"
        image(src / folder / f"scratches_{i}.jpg", i, grey=True)
        voc_xml(src / "ANNOTATIONS" / f"scratches_{i}.xml", f"scratches_{i}",
                [("scratches", 5, 5, 30, 20)])
    ds, skipped = import_dataset("voc", src, tmp_path / "out")
    assert not skipped
    assert {r.file_name for r in ds.images if r.split == "val"} == {
        "Validation_Images/scratches_4.jpg", "Validation_Images/scratches_5.jpg"}
    layout = ds.info["layout"]
    assert "sub-set 'val': 2 image(s) in Validation_Images/, their XMLs in ANNOTATIONS/" in layout, layout


def test_an_annotations_folder_given_alone_is_one_line_naming_the_folder_meant(
        tmp_path: Path) -> None:
    """``data import -f voc NEU-DET/ANNOTATIONS``: one "image not found ... in no image
    folder" problem per XML (92 lines for 92 XMLs); and a COCO JSON copied away from its
    images, one per image listed. Each is one line now, naming what to give instead."""
    src = kaggle_neu(tmp_path / "NEU-DET")
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(src / "ANNOTATIONS"),
                            str(tmp_path / "out")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "no images found beside the 4 XML file(s)" in lines[0]
    assert f"perhaps {src}, which holds IMAGES/" in lines[0]
    assert not (tmp_path / "out").exists()

    coco = tmp_path / "roboflow-coco"
    image(coco / "train" / "a_jpg.rf.1.jpg", 1)
    (coco / "train" / "_annotations.coco.json").write_text(
        json.dumps(_coco([(1, "a_jpg.rf.1.jpg"), (2, "b_jpg.rf.2.jpg")], [(1, 1), (2, 2)])))
    away = tmp_path / "json-alone"
    away.mkdir()
    shutil.copy(coco / "train" / "_annotations.coco.json", away)
    for given in (away, away / "_annotations.coco.json"):
        r = runner.invoke(app, ["data", "import", "-f", "coco", str(given), str(tmp_path / "out")])
        assert r.exit_code == 2 and "Traceback" not in r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert "_annotations.coco.json list(s) 2 image(s), and no image file is where COCO " \
            "puts them" in lines[0] and "give the folder the export came in" in lines[0]
    # images there but one missing: still each problem by name (the list is what helps)
    r = runner.invoke(app, ["data", "import", "-f", "coco", str(coco), str(tmp_path / "out")])
    assert r.exit_code == 2 and "'b_jpg.rf.2.jpg' not found" in r.stderr, r.stderr


def test_symlinked_folders_are_followed(tmp_path: Path) -> None:
    real = kaggle_neu(tmp_path / "elsewhere")
    src = tmp_path / "src"
    src.mkdir()
    (src / "ANNOTATIONS").symlink_to(real / "ANNOTATIONS", target_is_directory=True)
    (src / "IMAGES").symlink_to(real / "IMAGES", target_is_directory=True)
    (src / "IMAGES" / "loop").symlink_to(src, target_is_directory=True)  # a cycle is walked once
    ds, _ = import_dataset("voc", src, tmp_path / "out")
    assert sorted(r.file_name for r in ds.images) == sorted(
        f"IMAGES/{p.name}" for p in (real / "IMAGES").glob("*.jpg"))
    assert "2 link(s) out of the set followed (ANNOTATIONS/ -> " in str(ds.info["layout"])


def test_roboflow_voc_export_subsets_become_splits(tmp_path: Path) -> None:
    src = tmp_path / "roboflow-voc"
    for n, sub in enumerate(("train", "train", "train", "valid", "test")):
        stem = f"img{n}_jpg.rf.{n:04x}"
        image(src / sub / f"{stem}.jpg", n)
        voc_xml(src / sub / f"{stem}.xml", f"{stem}.jpg", [("dent", 3, 3, 20, 20)] if n % 2 else [])
    (src / "README.roboflow.txt").write_text("exported from roboflow")
    ds, _ = import_dataset("voc", src, tmp_path / "out")
    assert sorted((r.split or "") for r in ds.images) == ["test", "train", "train", "train", "val"]
    assert sum(r.is_good for r in ds.images) == 3 and ds.categories == ["dent"]
    assert "XMLs beside" not in ds.info["layout"]  # says the folders: train/, valid/, test/
    assert "train/" in ds.info["layout"] and "valid/" in ds.info["layout"]


def test_classic_voc_with_imagesets(tmp_path: Path) -> None:
    src = tmp_path / "VOC2007"
    for n in range(4):
        image(src / "JPEGImages" / f"{n:06d}.jpg", n)
        voc_xml(src / "Annotations" / f"{n:06d}.xml", f"{n:06d}.jpg", [("hole", 2, 2, 9, 9)])
    (src / "ImageSets" / "Main").mkdir(parents=True)
    (src / "ImageSets" / "Main" / "train.txt").write_text("000000\n000001\n000002\n")
    (src / "ImageSets" / "Main" / "val.txt").write_text("000003\n")
    # a <difficult> box (VOC's scoring ignores them) is imported as a box, and said so
    xml = src / "Annotations" / "000001.xml"
    doc = ET.parse(xml)
    ET.SubElement(doc.getroot().find("object"), "difficult").text = "1"  # type: ignore[arg-type]
    doc.write(xml)
    ds, _ = import_dataset("voc", src, tmp_path / "out")
    assert {r.file_name: r.split for r in ds.images}["JPEGImages/000003.jpg"] == "val"
    assert sorted(r.split or "" for r in ds.images) == ["train", "train", "train", "val"]
    assert "1 box(es) marked <difficult>1</difficult> imported as ordinary boxes" in \
        ds.info["layout"]


def test_no_xml_names_what_was_looked_for(tmp_path: Path) -> None:
    src = tmp_path / "yolo-ish"
    image(src / "images" / "a.jpg", 1)
    (src / "labels").mkdir()
    (src / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (src / "data.yaml").write_text("names: [dent]\n")
    with pytest.raises(DatasetError) as info:
        import_dataset("voc", src, tmp_path / "out")
    msg = info.value.message
    assert "no Pascal VOC .xml" in msg and "Annotations/ (or ANNOTATIONS/, annotations/)" in msg
    assert "JPEGImages/ (or IMAGES/, images/)" in msg and "symlinks followed" in msg
    assert "-f yolo" in msg


def test_missing_images_are_summarised_by_kind_first(tmp_path: Path) -> None:
    src = tmp_path / "voc"
    for n in range(5):
        if n < 2:
            image(src / "JPEGImages" / f"{n}.jpg", n)
        voc_xml(src / "Annotations" / f"{n}.xml", f"{n}.jpg", [("dent", 2, 2, 9, 99)])
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(src), str(tmp_path / "out")])
    assert r.exit_code == 2
    err = r.stderr
    assert "layout found: Pascal VOC" in err
    kinds, listing = err.split("all:")
    assert "by kind:" in kinds
    # three XMLs name a missing image, two boxes lie outside: two kinds, counted, one example each
    assert "3 x image … not found in the set" in kinds and "e.g. " in kinds
    assert "2 x box" in kinds and "outside" in kinds
    assert listing.count("not found") == 3 and listing.count("outside") == 2


def test_roboflow_yolo_export(tmp_path: Path) -> None:
    src = tmp_path / "roboflow-yolo"
    (src).mkdir()
    (src / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\n"
                                   "names: ['crack', 'dent']\n")
    for n, sub in enumerate(("train", "train", "valid", "test")):
        image(src / sub / "images" / f"p{n}.jpg", n)
        if n != 1:  # no label file: a good part
            (src / sub / "labels").mkdir(parents=True, exist_ok=True)
            (src / sub / "labels" / f"p{n}.txt").write_text(
                "1 0.5 0.5 0.25 0.5\n" if n != 2 else "0 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n")
    ds, skipped = import_dataset("yolo", src, tmp_path / "out")
    assert not skipped and ds.categories == ["crack", "dent"]
    recs = {r.file_name: r for r in ds.images}
    assert {n: r.split for n, r in recs.items()} == {
        "train/images/p0.jpg": "train", "train/images/p1.jpg": "train",
        "valid/images/p2.jpg": "val", "test/images/p3.jpg": "test"}
    assert recs["train/images/p1.jpg"].is_good
    [poly] = recs["valid/images/p2.jpg"].boxes  # a segmentation polygon becomes its box
    assert (poly.label, poly.xyxy()) == ("crack", pytest.approx((6.4, 4.8, 32.0, 28.8)))
    assert "good parts" in ds.info["layout"]


def test_yolo_capitalised_folders_and_classes_txt(tmp_path: Path) -> None:
    src = tmp_path / "labelimg"
    image(src / "Images" / "a.png", 1)
    image(src / "Images" / "b.png", 2)
    (src / "Labels").mkdir()
    (src / "Labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (src / "Labels" / "classes.txt").write_text("pit\n")
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert ds.categories == ["pit"]
    assert {r.file_name: len(r.boxes) for r in ds.images} == {"a.png": 1, "b.png": 0}


def _coco(images: list[tuple[int, str]], anns: list[tuple[int, int]]) -> dict[str, object]:
    return {
        "info": {"description": "roboflow"},
        "categories": [{"id": 0, "name": "defects", "supercategory": "none"},
                       {"id": 1, "name": "scratch", "supercategory": "defects"},
                       {"id": 2, "name": "dent", "supercategory": "defects"}],
        "images": [{"id": i, "file_name": f, "width": W, "height": H} for i, f in images],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": [2, 3, 10, 12],
                         "area": 120, "iscrowd": 0} for k, (i, c) in enumerate(anns)],
    }


def test_roboflow_coco_export(tmp_path: Path) -> None:
    src = tmp_path / "roboflow-coco"
    for sub, seeds in (("train", (1, 2, 3)), ("valid", (4,))):
        files = [(s, f"s{s}_jpg.rf.abc.jpg") for s in seeds]
        for s, f in files:
            image(src / sub / f, s)
        anns = [(s, 1 + s % 2) for s, _ in files]
        (src / sub / "_annotations.coco.json").write_text(json.dumps(_coco(files, anns)))
    ds, skipped = import_dataset("coco", src, tmp_path / "out")
    assert not skipped
    assert ds.categories == ["scratch", "dent"]  # Roboflow's parent category is not a class
    assert {r.file_name: r.split for r in ds.images} == {
        "train/s1_jpg.rf.abc.jpg": "train", "train/s2_jpg.rf.abc.jpg": "train",
        "train/s3_jpg.rf.abc.jpg": "train", "valid/s4_jpg.rf.abc.jpg": "val"}
    assert read_dataset(tmp_path / "out").info["layout"].startswith("COCO; ")


def test_skip_invalid_summarises_what_was_left_out(tmp_path: Path) -> None:
    src = tmp_path / "voc"
    for n in range(4):
        if n != 3:
            image(src / "JPEGImages" / f"{n}.jpg", n)
        voc_xml(src / "Annotations" / f"{n}.xml", f"{n}.jpg", [("dent", 2, 2, 9, 99 if n < 2 else 9)])
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(src), str(tmp_path / "out"),
                            "--skip-invalid"])
    assert r.exit_code == 0, r.output
    assert "skipped by kind: 2 x box" in r.stderr and "skipped by kind: 1 x image" in r.stderr
    assert "imported 1 images" in r.stdout
    assert "skipped 2 image(s) and 1 label file(s) with no image" in r.stdout  # 3.xml


def test_a_voc_size_that_disagrees_with_its_image_is_a_problem(tmp_path: Path) -> None:
    """Boxes are in the pixels the XML was drawn on: an image resized since (or turned by
    its EXIF orientation) would take every box to the wrong place, silently."""
    src = tmp_path / "voc"
    image(src / "JPEGImages" / "ok.jpg", 1)
    voc_xml(src / "Annotations" / "ok.xml", "ok.jpg", [("dent", 2, 2, 9, 9)])
    image(src / "JPEGImages" / "resized.jpg", 2)
    voc_xml(src / "Annotations" / "resized.xml", "resized.jpg", [("dent", 40, 40, 120, 90)])
    tree = ET.parse(src / "Annotations" / "resized.xml")
    tree.find("size/width").text, tree.find("size/height").text = "128", "96"  # type: ignore[union-attr]
    tree.write(src / "Annotations" / "resized.xml")
    turned = src / "JPEGImages" / "turned.jpg"
    ok, buf = cv2.imencode(".jpg", np.zeros((W, H, 3), np.uint8))  # H x W, the XML says W x H
    assert ok
    turned.write_bytes(buf.tobytes())
    voc_xml(src / "Annotations" / "turned.xml", "turned.jpg", [("dent", 2, 2, 9, 9)])
    image(src / "JPEGImages" / "zero.jpg", 3)  # <size> 0 x 0 (some tools write it): no check
    voc_xml(src / "Annotations" / "zero.xml", "zero.jpg", [("dent", 2, 2, 9, 9)])
    tree = ET.parse(src / "Annotations" / "zero.xml")
    tree.find("size/width").text = tree.find("size/height").text = "0"  # type: ignore[union-attr]
    tree.write(src / "Annotations" / "zero.xml")

    r = runner.invoke(app, ["data", "import", "-f", "voc", str(src), str(tmp_path / "out")])
    assert r.exit_code == 2
    assert f"<size> says 128x96 but image 'JPEGImages/resized.jpg' is {W}x{H}" in r.stderr
    assert f"<size> says {W}x{H} but image 'JPEGImages/turned.jpg' is {H}x{W} (turned" in r.stderr
    assert "2 problem(s); nothing was written" in r.stderr
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(src), str(tmp_path / "out"),
                            "--skip-invalid"])
    assert r.exit_code == 0, r.stderr
    kept = sorted(i.file_name for i in read_dataset(tmp_path / "out").images)
    assert kept == ["JPEGImages/ok.jpg", "JPEGImages/zero.jpg"]


def test_problem_kinds_keep_the_names_in_a_message() -> None:
    """Kinds blank numbers, not the digits of names: 'x2 > x1' stays readable."""
    from lineside_inspect.dataset.problems import kind_of
    from lineside_inspect.errors import Problem

    def kind(message: str) -> str:
        return kind_of(Problem("f.xml", "", message))

    assert kind("empty box (3, 4, 3, 9.5): needs x2 > x1 and y2 > y1") == \
        "empty box (N, N, N, N): needs x2 > x1 and y2 > y1"
    assert kind("box -1.5 lies outside the 200x200 image") == "box N lies outside the N image"
    assert kind("class 12 unknown (ids 0-5)") == "class N unknown (ids N-N)"


def test_import_warns_of_copies_across_the_split_it_came_with(tmp_path: Path) -> None:
    """A public set's own Validation_ folder often holds a copy of a training image; the
    split comes with the import, and a user may train before ever running validate."""
    src = kaggle_neu(tmp_path / "NEU-DET")
    (src / "Validation_Images" / "scratches_1.jpg").write_bytes(
        (src / "IMAGES" / "scratches_1.jpg").read_bytes())
    voc_xml(src / "Validation_Annotations" / "scratches_1.xml", "scratches_1",
            [("scratches", 5, 5, 30, 20)])  # the copy's labels too
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(src), str(tmp_path / "neu")])
    assert r.exit_code == 0, r.stderr
    assert "warning: exact duplicate images in different splits: 'IMAGES/scratches_1.jpg' " \
        "(train), 'Validation_Images/scratches_1.jpg' (val)" in r.stderr
    assert "lineside data validate --dedupe" in r.stderr
    # the same picture with its box elsewhere is two labellings: --dedupe cannot choose
    voc_xml(src / "Validation_Annotations" / "scratches_1.xml", "scratches_1",
            [("scratches", 1, 2, 40, 30)])
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(src), str(tmp_path / "neu2")])
    assert r.exit_code == 0, r.stderr
    assert "in different splits, labelled differently (the same classes, boxed in other " \
        "places)" in r.stderr
    assert "one of them is mislabelled" in r.stderr  # import names the conflict, as validate
    assert "in the split this set came with, evaluation would score training images; fix the " \
        "mislabelled copies, then run 'lineside data split', which keeps them together" in r.stderr
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(kaggle_neu(tmp_path / "clean")),
                            str(tmp_path / "clean-out")])
    assert r.exit_code == 0 and "warning" not in r.stderr
    # a set with no split of its own: one picture, two files, labelled two ways, was
    # imported without a word (validate then refused it)
    flat = kaggle_neu(tmp_path / "flat")
    for sub in ("Validation_Images", "Validation_Annotations"):
        shutil.rmtree(flat / sub)
    (flat / "IMAGES" / "scratches_9.jpg").write_bytes((flat / "IMAGES" / "scratches_1.jpg").read_bytes())
    voc_xml(flat / "ANNOTATIONS" / "scratches_9.xml", "scratches_9", [("patches", 5, 5, 30, 20)])
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(flat), str(tmp_path / "flat-out")])
    assert r.exit_code == 0, r.stderr
    assert "one of them is mislabelled" in r.stderr and "lineside data validate lists them" in r.stderr
    assert "in the split this set came with" not in r.stderr


def test_coco_shapes_crowds_and_classes_a_user_should_hear_of(tmp_path: Path) -> None:
    """A segmentation-only annotation is boxed from its polygons (refused before, and
    --skip-invalid dropped the whole image); an RLE one is refused saying why; crowd
    regions and classes with no or almost no boxes are named in the layout note."""
    src = tmp_path / "coco"
    for n in range(3):
        image(src / f"p{n}.jpg", n)
    doc = {
        "images": [{"id": n + 1, "file_name": f"p{n}.jpg", "width": W, "height": H}
                   for n in range(3)],
        "categories": [{"id": 7, "name": "dent"}, {"id": 9, "name": "scratch"},
                       {"id": 11, "name": "unused"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 7,
             "segmentation": [[20, 5, 30, 5, 30, 15, 25, 18]]},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [2, 2, 8, 8], "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [20, 2, 8, 8]},
            {"id": 5, "image_id": 3, "category_id": 7, "bbox": [3, 3, 9, 9]},
        ],
    }
    (src / "annotations.json").write_text(json.dumps(doc))
    r = runner.invoke(app, ["data", "import", "-f", "coco", str(src), str(tmp_path / "out")])
    assert r.exit_code == 0, r.stderr
    ds = read_dataset(tmp_path / "out")
    first = next(rec for rec in ds.images if rec.file_name == "p0.jpg")
    assert sorted(b.xyxy() for b in first.boxes) == [(1, 1, 11, 11), (20, 5, 30, 18)]
    out = " ".join(r.stdout.split())
    assert "1 annotation(s) without a bbox boxed from their segmentation polygons" in out
    assert "1 iscrowd annotation(s)" in out
    assert "class(es) no box uses: 'unused'" in out
    assert "fewer than 3 boxes: 'scratch' (1)" in out

    doc["annotations"].append({"id": 6, "image_id": 3, "category_id": 7,
                               "segmentation": {"counts": "abc", "size": [H, W]}})
    (src / "annotations.json").write_text(json.dumps(doc))
    r = runner.invoke(app, ["data", "import", "-f", "coco", str(src), str(tmp_path / "out2")])
    assert r.exit_code == 2
    assert "annotations[5].bbox: bbox must be 4 finite numbers [x, y, w, h]; its segmentation is " \
        "RLE, which is not read: give it a bbox" in " ".join(r.stderr.split())


def test_yolo_on_a_voc_folder_suggests_voc(tmp_path: Path) -> None:
    src = kaggle_neu(tmp_path / "NEU-DET")
    r = runner.invoke(app, ["data", "import", "-f", "yolo", str(src), str(tmp_path / "out")])
    assert r.exit_code == 2
    assert "It holds .xml files: Pascal VOC? (-f voc)" in " ".join(r.stderr.split())


def test_a_split_word_inside_a_name_of_its_own_is_no_sub_set() -> None:
    """``pcb_test_fixture/`` was read as the test split: the whole class in it went to
    test, none to train (new-user review). A sub-set's folder is a split word with at
    most words like images, set or a year beside it."""
    from lineside_inspect.dataset.layout import split_of

    for rel, split in (("valid/images/a.jpg", "val"), ("Validation_Images/a.jpg", "val"),
                       ("test-set/a.jpg", "test"), ("train2017/a.jpg", "train"),
                       ("valid_2017/a.jpg", "val"), ("images/train/a.jpg", "train"),
                       ("Training Data/a.jpg", "train"),
                       ("pcb_test_fixture/a.jpg", None), ("contest/a.jpg", None),
                       ("pcb_test_fixture/images/a.jpg", None)):
        assert split_of(rel) == split, rel


def test_gc10_and_neu_det_layouts_import_with_their_splits(tmp_path: Path) -> None:
    """GC10-DET: images in per-class numbered folders, every XML in one misspelt ``lable/``
    folder; NEU-DET (GitHub copy): ``train/`` and ``validation/`` each with ``images/<class>/``
    and ``annotations/``. Both import, say their layout, and keep NEU's two splits."""
    gc10 = tmp_path / "GC10-DET"
    for c, cls in ((1, "1_chongkong"), (2, "2_hanfeng")):
        for i in range(2):
            image(gc10 / "images" / str(c) / f"img_0{c}_{i}.jpg", 10 * c + i)
            voc_xml(gc10 / "lable" / f"img_0{c}_{i}.xml", f"img_0{c}_{i}.jpg", [(cls, 5, 5, 30, 20)])
    ds, skipped = import_dataset("voc", gc10, tmp_path / "gc10")
    assert not skipped and ds.categories == ["1_chongkong", "2_hanfeng"] and len(ds.images) == 4
    assert "main set: 4 XML in lable/, images in images/" in ds.info["layout"]
    neu = tmp_path / "NEU-DET"
    for n, (sub, cls) in enumerate((("train", "crazing"), ("train", "inclusion"),
                                    ("validation", "crazing"))):
        image(neu / sub / "images" / cls / f"{cls}_{n}.jpg", 50 + n, grey=True)
        voc_xml(neu / sub / "annotations" / f"{cls}_{n}.xml", f"{cls}_{n}.jpg", [(cls, 1, 2, 40, 30)])
    ds, skipped = import_dataset("voc", neu, tmp_path / "neu")
    assert not skipped
    assert {r.file_name: r.split for r in ds.images} == {
        "train/images/crazing/crazing_0.jpg": "train",
        "train/images/inclusion/inclusion_1.jpg": "train",
        "validation/images/crazing/crazing_2.jpg": "val"}
    assert "sub-set 'val': 1 XML in validation/annotations/" in ds.info["layout"]


def test_images_of_broken_xmls_are_not_called_without_an_xml(tmp_path: Path) -> None:
    """An XML that does not parse is its problem; its image was also listed as "without an
    XML left out", which sent the user looking for missing files (session 49)."""
    src = tmp_path / "voc"
    for i in range(2):
        image(src / "IMAGES" / f"a{i}.jpg", i)
        voc_xml(src / "ANNOTATIONS" / f"a{i}.xml", f"a{i}", [("dent", 5, 5, 30, 20)])
    (src / "ANNOTATIONS" / "a1.xml").write_text("<annotation><filename>a1</filename></object>")
    image(src / "IMAGES" / "good.jpg", 9)  # truly without an XML
    with pytest.raises(DatasetError) as err:
        import_dataset("voc", src, tmp_path / "out")
    assert [p.message.split(":")[0] for p in err.value.problems] == ["invalid XML"]
    assert "1 image(s) without an XML left out, e.g. IMAGES/good.jpg" in str(err.value)
