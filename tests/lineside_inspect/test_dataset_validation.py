"""Validation finds every problem, each with its file and line or field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import import_dataset, validate_dir
from lineside_inspect.errors import DatasetError

runner = CliRunner()


def _doc(root: Path) -> dict:
    return json.loads((root / "annotations.json").read_text())


def _save(root: Path, doc: dict) -> None:
    (root / "annotations.json").write_text(json.dumps(doc))


def _messages(root: Path) -> list[str]:
    return [str(p) for p in validate_dir(root)]


def test_sample_is_valid(sample: Path) -> None:
    assert validate_dir(sample) == []


def test_images_the_annotations_do_not_list_are_warned_of(sample: Path) -> None:
    """An image copied into images/ by hand was ignored without a word: training never
    sees it."""
    r = runner.invoke(app, ["data", "validate", str(sample)])
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output  # templates are listed
    name = _doc(sample)["images"][0]["file_name"]
    extra = sample / "images" / "extra" / "by-hand.jpg"
    extra.parent.mkdir()
    extra.write_bytes((sample / "images" / name).read_bytes())
    r = runner.invoke(app, ["data", "validate", str(sample)])
    assert r.exit_code == 0 and "valid" in r.stdout, r.output
    assert "warning: 1 image file(s) under images/ are not in annotations.json, so training " \
        "never sees them, e.g. 'extra/by-hand.jpg'" in r.stderr


def test_missing_image(sample: Path) -> None:
    name = _doc(sample)["images"][0]["file_name"]
    (sample / "images" / name).unlink()
    [msg] = _messages(sample)
    assert "images[0]" in msg and "is missing" in msg and name.split("/")[-1] in msg


def test_unreadable_image(sample: Path) -> None:
    name = _doc(sample)["images"][1]["file_name"]
    path = sample / "images" / name
    path.unlink()
    path.mkdir()  # a folder where the file should be: cannot be read as an image
    [msg] = _messages(sample)
    assert "unreadable" in msg and "images[1]" in msg


def test_corrupt_and_truncated_images(sample: Path) -> None:
    doc = _doc(sample)
    a, b = (sample / "images" / doc["images"][i]["file_name"] for i in (2, 3))
    a.write_bytes(b"\xff\xd8\xff\xe0garbage that is not a jpeg" * 10)
    b.write_bytes(b.read_bytes()[:5000])
    msgs = _messages(sample)
    assert len(msgs) == 2
    assert any(a.name in m for m in msgs) and any("truncated" in m and b.name in m for m in msgs)


def test_box_problems_and_unknown_class(sample: Path) -> None:
    doc = _doc(sample)
    doc["annotations"][0]["bbox"] = [630, 630, 50, 50]  # past the 640x640 edge
    doc["annotations"][1]["bbox"] = [10, 10, 0, 5]  # x2 == x1
    doc["annotations"][2]["category_id"] = 99
    _save(sample, doc)
    msgs = _messages(sample)
    assert len(msgs) == 3
    assert any("annotations[0]" in m and "outside" in m for m in msgs)
    assert any("annotations[1]" in m and "x2 > x1" in m for m in msgs)
    assert any("annotations[2].category_id" in m and "unknown class id 99" in m for m in msgs)


def test_duplicate_ids_and_orphan_annotation(sample: Path) -> None:
    doc = _doc(sample)
    doc["images"][1]["id"] = doc["images"][0]["id"]
    doc["annotations"][0]["image_id"] = 12345
    _save(sample, doc)
    msgs = _messages(sample)
    assert any("images[1].id" in m and "duplicate image id" in m for m in msgs)
    assert any("annotations[0].image_id" in m and "missing image 12345" in m for m in msgs)


def test_invalid_json_names_line(sample: Path) -> None:
    (sample / "annotations.json").write_text('{\n "images": [\n oops\n]}')
    result = runner.invoke(app, ["data", "validate", str(sample)])
    assert result.exit_code == 2
    assert "line 3" in result.stderr and "Traceback" not in result.output + result.stderr


def test_cli_validate_lists_every_problem(sample: Path) -> None:
    doc = _doc(sample)
    doc["annotations"][0]["category_id"] = 99
    doc["annotations"][5]["bbox"] = [-5, 0, 10, 10]
    _save(sample, doc)
    result = runner.invoke(app, ["data", "validate", str(sample)])
    assert result.exit_code == 2
    assert "2 problem(s)" in result.stderr
    assert "annotations[0].category_id" in result.stderr
    assert "annotations[5]" in result.stderr


def _broken_deeppcb(deeppcb: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src" / "PCBData" / "group00041"
    (src / "00041").mkdir(parents=True)
    (src / "00041_not").mkdir()
    orig = deeppcb / "PCBData" / "group00041"
    for stem in ("00041000", "00041001", "00041002"):
        for kind in ("test", "temp"):
            (src / "00041" / f"{stem}_{kind}.jpg").write_bytes(
                (orig / "00041" / f"{stem}_{kind}.jpg").read_bytes())
        (src / "00041_not" / f"{stem}.txt").write_text(
            (orig / "00041_not" / f"{stem}.txt").read_text())
    (src / "00041_not" / "00041001.txt").write_text("1 2 3 4\n10 10 700 40 1\n")
    (src / "00041" / "00041002_test.jpg").write_bytes(b"not an image")
    return tmp_path / "src"


def test_import_refuses_broken_source_and_writes_nothing(deeppcb: Path, tmp_path: Path) -> None:
    src = _broken_deeppcb(deeppcb, tmp_path)
    dst = tmp_path / "dst"
    with pytest.raises(DatasetError) as info:
        import_dataset("deeppcb", src, dst)
    msgs = [str(p) for p in info.value.problems]
    assert any("00041001.txt:line 1" in m and "expected 5 values" in m for m in msgs)
    assert any("00041001.txt:line 2" in m and "outside" in m for m in msgs)
    assert any("00041002_test.jpg" in m for m in msgs)
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dst")] == []


def test_import_skip_invalid_lists_skipped(deeppcb: Path, tmp_path: Path) -> None:
    src = _broken_deeppcb(deeppcb, tmp_path)
    result = runner.invoke(app, ["data", "import", "-f", "deeppcb", str(src),
                                 str(tmp_path / "dst"), "--skip-invalid"])
    assert result.exit_code == 0, result.output
    assert "skipped:" in result.stderr and "00041001.txt:line 1" in result.stderr
    assert "skipped 2 image(s)" in result.stdout
    assert validate_dir(tmp_path / "dst") == []
    names = [i["file_name"] for i in _doc(tmp_path / "dst")["images"]]
    assert "group00041/00041000_test.jpg" in names
    assert "group00041/00041001_test.jpg" not in names


def test_failed_overwrite_keeps_existing_dataset(sample: Path, tmp_path: Path) -> None:
    before = (sample / "annotations.json").read_text()
    with pytest.raises(DatasetError):
        import_dataset("coco", tmp_path / "nowhere", sample, overwrite=True)
    assert (sample / "annotations.json").read_text() == before


def test_reference_problems_are_named(sample: Path) -> None:
    doc = _doc(sample)
    test_imgs = [i for i in doc["images"] if i.get("reference")]
    defective = {a["image_id"] for a in doc["annotations"]}
    assert len(test_imgs) == 35 and all(i["id"] in defective for i in test_imgs)
    test_imgs[0]["reference"] = "nowhere/x.jpg"
    test_imgs[1]["reference"] = test_imgs[2]["file_name"]  # a defective image as reference
    _save(sample, doc)
    msgs = _messages(sample)
    assert len(msgs) == 2
    assert "images[" in msgs[0] and "reference" in msgs[0] and "'nowhere/x.jpg'" in msgs[0] \
        and "not an image of the dataset" in msgs[0]
    assert "has defect boxes: a reference must be a good part" in msgs[1]


def test_reference_of_another_size(sample: Path) -> None:
    doc = _doc(sample)
    img = next(i for i in doc["images"] if i.get("reference"))
    ref = next(i for i in doc["images"] if i["file_name"] == img["reference"])
    from lineside_inspect.opencv import cv2

    path = sample / "images" / ref["file_name"]
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (320, 320)))
    ref["width"] = ref["height"] = 320
    _save(sample, doc)
    [msg] = _messages(sample)
    assert "is 320x320 but the image is 640x640: a reference must match its image" in msg
