"""Units of one part under a fixed camera look alike without being copies: the
near-duplicate search must not group them (``--dedupe`` deleted 29 of 30 such photos and
``data split`` left validation empty), must stay within memory when every image looks
like every other, and must still find real copies among them. Also the hostile numbers
and wrong-format imports a review found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import Box, Dataset, ImageRecord, check_dir, write_dataset
from lineside_inspect.dataset.duplicates import MAX_ALIKE, _alike_pairs, find_duplicates, fingerprints
from lineside_inspect.opencv import cv2

runner = CliRunner()


def part(rng: np.random.Generator) -> np.ndarray:
    """One product as a fixed camera sees it: pads and traces on a board, 300 px grey."""
    base = np.full((300, 300), 60, np.uint8)
    for _ in range(40):
        x, y = rng.integers(0, 280, 2)
        w, h = rng.integers(5, 40, 2)
        cv2.rectangle(base, (int(x), int(y)), (int(x + w), int(y + h)), int(rng.integers(120, 240)), -1)
    return base


def unit(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another unit of it: placement jitter of a few pixels, light, sensor noise."""
    dx, dy = rng.integers(-4, 5, 2)
    moved = cv2.warpAffine(base, np.float32([[1, 0, dx], [0, 1, dy]]), (300, 300),
                           borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    img = moved * rng.uniform(0.9, 1.1) + rng.uniform(-10, 10) + rng.normal(0, 6, moved.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def line_set(tmp_path: Path) -> Path:
    """30 good units (24 train, 6 val), plus a copy of unit 3's file in val: the one copy.
    (A JPEG re-save of a unit is not reported here: among look-alike units only byte
    copies and dHash pairs of images with few look-alikes are, a known limit.)"""
    rng = np.random.default_rng(1)
    base = part(rng)
    raw = tmp_path / "raw"
    raw.mkdir()
    recs = []
    for i in range(30):
        path = raw / f"unit{i:02d}.png"
        cv2.imwrite(str(path), unit(base, rng))
        recs.append(ImageRecord(path.name, 300, 300, [], split="train" if i < 24 else "val",
                                source=path))
    copy = raw / "unit03-copy.png"
    copy.write_bytes((raw / "unit03.png").read_bytes())
    recs.append(ImageRecord(copy.name, 300, 300, [], split="val", source=copy))
    write_dataset(Dataset(["dent"], recs), tmp_path / "ds")
    return tmp_path / "ds"


def test_units_of_one_part_are_not_copies_but_a_copy_is(tmp_path: Path) -> None:
    root = line_set(tmp_path)
    report = check_dir(root)
    groups = [sorted(r.file_name for r in g.members) for g in report.duplicates]
    assert groups == [["unit03-copy.png", "unit03.png"]]
    [leak] = report.problems  # the copy across the split, nothing about the other units
    assert "'unit03.png' (train)" in leak.message
    r = runner.invoke(app, ["data", "validate", str(root), "--dedupe"])
    assert r.exit_code == 0, r.stderr
    assert "removed 1" in r.stdout
    doc = json.loads((root / "annotations.json").read_text())
    assert len(doc["images"]) == 30 and sum(i.get("split") == "val" for i in doc["images"]) >= 6
    r = runner.invoke(app, ["data", "split", str(root), "--val", "0.2", "--by", "image"])
    assert r.exit_code == 0, r.stderr
    assert "val 6" in r.stdout


def test_a_set_where_everything_looks_alike_stays_in_memory() -> None:
    """2,000 thumbnails of one part: every pair is a candidate (2e6 of them, 16 GB held at
    once before); each image has more than MAX_ALIKE look-alikes, so none is a copy."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (32, 32)).astype(np.float32)
    thumbs = [np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
              for _ in range(2000)]
    assert _alike_pairs(thumbs) == []
    copies = thumbs[:3] + [rng.integers(0, 255, (32, 32)).astype(np.uint8) for _ in range(20)]
    copies.append(copies[5].copy())  # few look-alikes: a copy is found as before
    assert MAX_ALIKE >= 2 and (5, 23) in _alike_pairs(copies)
    assert _alike_pairs([np.full((32, 32), 7, np.uint8)] * 3) == []  # blank frames: no copies


def test_a_group_message_names_ten_members(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    img = np.random.default_rng(3).integers(0, 255, (40, 40, 3)).astype(np.uint8)
    recs = []
    for i in range(14):  # byte-identical copies chain regardless of MAX_ALIKE
        path = raw / f"c{i:02d}.png"
        cv2.imwrite(str(path), img)
        recs.append(ImageRecord(path.name, 40, 40, [], split="train", source=path))
    dataset = Dataset(["dent"], recs)
    [group] = find_duplicates(dataset, fingerprints(dataset))
    text = group.describe()
    assert "'c09.png'" in text and "'c10.png'" not in text and text.endswith("and 4 more")


def test_same_class_elsewhere_on_a_copy_is_a_conflict_and_dedupe_never_empties_a_split(
        tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    img = np.random.default_rng(4).integers(0, 255, (60, 60, 3)).astype(np.uint8)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(raw / name), img)
    other = np.random.default_rng(5).integers(0, 255, (60, 60, 3)).astype(np.uint8)
    cv2.imwrite(str(raw / "c.png"), other)
    recs = [ImageRecord("a.png", 60, 60, [Box(2, 2, 12, 12, "scratch")], split="train",
                        source=raw / "a.png"),
            ImageRecord("b.png", 60, 60, [Box(40, 40, 50, 50, "scratch")], split="val",
                        source=raw / "b.png"),
            ImageRecord("c.png", 60, 60, [], split="val", source=raw / "c.png")]
    write_dataset(Dataset(["scratch"], recs), tmp_path / "ds")
    root = tmp_path / "ds"
    assert any("mislabelled" in p.message for p in check_dir(root).problems)
    r = runner.invoke(app, ["data", "validate", str(root), "--dedupe"])
    assert r.exit_code == 2 and "mislabelled" in r.stderr  # neither box is dropped
    assert len(json.loads((root / "annotations.json").read_text())["images"]) == 3

    # the same box a pixel off (two tools' rounding) is one labelling; --dedupe keeps the
    # val copy, and removing the train one would leave train with nothing: refused
    doc = json.loads((root / "annotations.json").read_text())
    b_id = next(i["id"] for i in doc["images"] if i["file_name"] == "b.png")
    for ann in doc["annotations"]:
        if ann["image_id"] == b_id:
            ann["bbox"] = [2.5, 2, 10, 10.5]
    (root / "annotations.json").write_text(json.dumps(doc))
    before = (root / "annotations.json").read_text()
    r = runner.invoke(app, ["data", "validate", str(root), "--dedupe"])
    assert r.exit_code != 0
    assert "would remove every image of the train split" in r.stderr
    assert (root / "annotations.json").read_text() == before and (root / "images" / "a.png").is_file()


def test_split_refuses_to_leave_validation_empty(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    recs = []
    for i in range(4):
        path = raw / f"p{i}.png"
        cv2.imwrite(str(path), np.random.default_rng(i).integers(0, 255, (30, 30, 3)).astype(np.uint8))
        recs.append(ImageRecord(path.name, 30, 30, [], group="board1", source=path))
    write_dataset(Dataset(["dent"], recs), tmp_path / "ds")
    before = (tmp_path / "ds" / "annotations.json").read_text()
    r = runner.invoke(app, ["data", "split", str(tmp_path / "ds"), "--val", "0.25", "--by", "group"])
    assert r.exit_code != 0
    assert "the val split came out empty" in r.stderr and "give --by image" in r.stderr
    assert (tmp_path / "ds" / "annotations.json").read_text() == before
    # a fraction of less than one image is the fraction's fault, not the groups'
    r = runner.invoke(app, ["data", "split", str(tmp_path / "ds"), "--val", "0.1", "--by", "image"])
    assert r.exit_code != 0
    assert "--val 0.1 of 4 images is less than one image: give --val 0.25 or more" in r.stderr
    assert (tmp_path / "ds" / "annotations.json").read_text() == before


def test_hostile_numbers_and_the_wrong_format_are_named(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    img.write_bytes(cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))[1].tobytes())

    def coco(name: str, doc: object) -> Path:
        src = tmp_path / name
        src.mkdir()
        (src / "a.jpg").write_bytes(img.read_bytes())
        (src / "annotations.json").write_text(json.dumps(doc))  # NaN is written as NaN
        return src

    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 40}]
    cats = [{"id": 1, "name": "dent"}]
    cases = {
        "null": ({"images": images, "annotations": None, "categories": cats},
                 "annotations: must be a list"),
        "nanbox": ({"images": images, "categories": cats, "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 5, 5]}]},
            "bbox must be 4 finite numbers"),
        "nanpoly": ({"images": images, "categories": cats, "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1,
             "segmentation": [[5, 5, float("nan"), 5, 20, 20]]}]},
            "its segmentation is not polygons of finite numbers"),
        "toplist": ([1, 2], "top level must be a JSON object"),
    }
    for name, (doc, said) in cases.items():
        r = runner.invoke(app, ["data", "import", "-f", "coco", str(coco(name, doc)),
                                str(tmp_path / f"out-{name}")])
        assert r.exit_code == 2 and said in r.stderr, (name, r.stderr, r.exception)
        assert "Traceback" not in r.stderr and not (tmp_path / f"out-{name}").exists()

    # a VOC <size> of inf says nothing about the image, like 0 x 0
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "JPEGImages" / "a.jpg").write_bytes(img.read_bytes())
    (voc / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>inf</width><height>1e400</height>"
        "</size><object><name>dent</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax>"
        "<ymax>9</ymax></bndbox></object></annotation>")
    r = runner.invoke(app, ["data", "import", "-f", "voc", str(voc), str(tmp_path / "out-voc")])
    assert r.exit_code == 0, (r.stderr, r.exception)
    # the same folder as YOLO, with the classes.txt labelImg leaves: every defect would
    # have been a good part
    (voc / "classes.txt").write_text("dent\n")
    r = runner.invoke(app, ["data", "import", "-f", "yolo", str(voc), str(tmp_path / "out-y")])
    assert r.exit_code == 2 and "would import as good parts" in r.stderr
    assert "Pascal VOC? (-f voc)" in r.stderr and not (tmp_path / "out-y").exists()


def test_deep_json_and_a_long_word_in_a_problem(tmp_path: Path) -> None:
    """A JSON nested 100,000 deep was a RecursionError traceback (one with a 5,000-digit
    number a ValueError traceback); a 50,000-character word
    in a problem message took 24 s to sort by kind (a backtracking pattern)."""
    from lineside_inspect.dataset.problems import kind_of
    from lineside_inspect.errors import Problem

    src = tmp_path / "deep"
    src.mkdir()
    (src / "annotations.json").write_text("[" * 100_000)
    r = runner.invoke(app, ["data", "import", "-f", "coco", str(src), str(tmp_path / "out")])
    assert r.exit_code == 2 and "nested too deeply" in r.stderr, (r.stderr, r.exception)
    # a number of 5,000 digits: past int()'s limit, a ValueError traceback
    (src / "annotations.json").write_text('{"images": [{"id": ' + "9" * 5000 + "}]}")
    r = runner.invoke(app, ["data", "import", "-f", "coco", str(src), str(tmp_path / "out")])
    assert r.exit_code == 2 and "a number too long to read" in r.stderr, (r.stderr, r.exception)
    word = "a" * 50_000 + ".jpg"
    assert kind_of(Problem("f", "", f"image {word} not found in x/y")) == "image … not found in …"
