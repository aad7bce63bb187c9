"""``lineside data split --val-groups``: validation made of named groups (held-out boards),
so a benchmark's split can be made again from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import read_dataset, split_dataset
from lineside_inspect.errors import DatasetError

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "deeppcb-sample"


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    root = tmp_path / "sample"
    shutil.copytree(SAMPLE, root)
    return root


def test_named_groups_are_validation_and_the_rest_train(sample: Path) -> None:
    result = CliRunner().invoke(app, ["data", "split", str(sample), "--val-groups",
                                      "group13000, group44000", "--val", "0.5"])
    assert result.exit_code == 0, result.output
    images = read_dataset(sample).images
    assert len({r.group for r in images}) > 3
    for r in images:
        assert r.split == ("val" if r.group in ("group13000", "group44000") else "train"), r
    assert "val" in result.output and "train" in result.output


def test_a_duplicate_of_a_held_out_image_goes_with_it(sample: Path) -> None:
    dataset = read_dataset(sample)
    held = next(r for r in dataset.images if r.group == "group13000")
    other = next(r for r in dataset.images if r.group == "group20085")
    # a copy of a held-out board's image under another group: never on the training side
    shutil.copyfile(sample / "images" / held.file_name, sample / "images" / other.file_name)
    counts = split_dataset(read_dataset(sample), val=0.2, val_groups=["group13000"])
    dataset = read_dataset(sample)
    split_dataset(dataset, val=0.2, val_groups=["group13000"])
    by_group = {r.group: r.split for r in dataset.images}
    assert by_group["group13000"] == by_group["group20085"] == "val"
    assert counts["val"] == sum(1 for r in dataset.images if r.split == "val")


def test_an_unknown_group_is_refused_by_name(sample: Path) -> None:
    before = json.loads((sample / "annotations.json").read_text())
    with pytest.raises(DatasetError, match="'group99' in the dataset"):
        split_dataset(read_dataset(sample), val=0.2, val_groups=["group13000", "group99"])
    result = CliRunner().invoke(app, ["data", "split", str(sample), "--val-groups", "group99"])
    assert result.exit_code != 0 and "group99" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["data", "split", str(sample), "--val-groups", " , "])
    assert result.exit_code != 0 and "no group named" in result.output
    # no validation at all: training would refuse the dataset, so the split does first
    result = CliRunner().invoke(app, ["data", "split", str(sample), "--val", "0", "--test", "0.2"])
    assert result.exit_code != 0 and "--val 0 leaves no validation images" in result.output
    assert json.loads((sample / "annotations.json").read_text()) == before  # nothing written


def test_roboflow_copies_of_one_photo_share_a_side() -> None:
    """A Roboflow export names each augmented copy ``<photo>_jpg.rf.<hash>.jpg`` and carries
    no group: split per image, 9 of 12 photos had copies on both sides of train/val."""
    from lineside_inspect.dataset.model import Box, Dataset, ImageRecord
    from lineside_inspect.dataset.split import roboflow_origin

    assert roboflow_origin("train/images/x_jpg.rf.0123456789abcdef0123456789abcdef.jpg") == \
        "train/images/x"
    assert roboflow_origin("plain.jpg") is None
    images = [ImageRecord(file_name=f"p{p}_jpg.rf.{c:032x}.jpg", width=64, height=48,
                          boxes=[Box(1, 1, 9, 9, "scratch")])
              for p in range(12) for c in range(3)]
    dataset = Dataset(categories=["scratch"], images=images)
    split_dataset(dataset, val=0.25, duplicates=[])
    sides: dict[str, set[str | None]] = {}
    for r in dataset.images:
        sides.setdefault(r.file_name.split("_jpg")[0], set()).add(r.split)
    assert all(len(s) == 1 for s in sides.values())
    assert sum(1 for s in sides.values() if s == {"val"}) == 3  # 3 of 12 photos, all copies


def test_split_says_it_replaces_the_split_the_dataset_had(sample: Path) -> None:
    first = CliRunner().invoke(app, ["data", "split", str(sample), "--val", "0.3"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["data", "split", str(sample), "--val", "0.5"])
    assert again.exit_code == 0 and "replaced the split the dataset had: train" in again.stderr



def test_split_names_the_groups_a_duplicate_ties_to_a_held_out_one(
        sample: Path, tmp_path: Path) -> None:
    untouched = shutil.copytree(SAMPLE, tmp_path / "untouched")
    quiet = CliRunner().invoke(app, ["data", "split", str(untouched), "--val", "0.3"])
    assert quiet.exit_code == 0 and "kept on one side" not in quiet.output
    dataset = read_dataset(sample)
    held = next(r for r in dataset.images if r.group == "group13000")
    other = next(r for r in dataset.images if r.group == "group20085")
    shutil.copyfile(sample / "images" / held.file_name, sample / "images" / other.file_name)
    result = CliRunner().invoke(app, ["data", "split", str(sample), "--val-groups", "group13000"])
    assert result.exit_code == 0, result.output
    # the copy also looks like the held image's template (not its own twin): "near"
    assert (f"groups 'group13000', 'group20085' kept on one side: near duplicates "
            f"'{held.file_name}' ~ '{other.file_name}' and 1 more") in " ".join(result.stderr.split())


def test_the_notice_quotes_names_from_the_files() -> None:
    """Group and file names come from the user's files: an escape sequence in one must
    reach the terminal as text; a member without a group is not the one shown."""
    from lineside_inspect.dataset import DuplicateGroup, tied_groups
    from lineside_inspect.dataset.model import ImageRecord

    members = [ImageRecord("loose.jpg", 8, 8, []),
               ImageRecord("a.jpg", 8, 8, [], group="grp\x1b[31mRED"),
               ImageRecord("b\x1b[2J.jpg", 8, 8, [], group="grpA")]
    (line,) = tied_groups([DuplicateGroup("exact", members)])
    assert "\x1b" not in line
    assert line == ("groups 'grp\\x1b[31mRED', 'grpA' kept on one side: exact duplicates "
                    "'a.jpg' ~ 'b\\x1b[2J.jpg' and 1 more")


def test_bad_arguments_are_refused_before_the_pixels_are_read(
        sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lineside_inspect.dataset as dataset_pkg

    def never(*_: object, **__: object) -> None:
        raise AssertionError("pixels read before the arguments were checked")

    monkeypatch.setattr(dataset_pkg, "find_duplicates", never)
    for args in (["--val-groups", "group99"], ["--by", "board"], ["--val", "1.5"]):
        result = CliRunner().invoke(app, ["data", "split", str(sample), *args])
        assert result.exit_code != 0 and "Traceback" not in result.output, args
        assert result.exception is None or isinstance(result.exception, SystemExit), args


def test_split_by_group_without_groups_says_so(tmp_path: Path, sample: Path) -> None:
    """VOC, YOLO and COCO carry no groups: --by group then splits image by image, which
    the user must hear (photos of one part may sit on both sides)."""
    from lineside_inspect.dataset import import_dataset
    from lineside_inspect.opencv import cv2

    src = tmp_path / "flat"
    src.mkdir()
    for i in range(6):
        img = np.full((48, 64, 3), 40 * i, np.uint8)
        img[5 + i:20 + i, 5:20] = 255 - 40 * i
        assert cv2.imwrite(str(src / f"p{i}.jpg"), img)
        (src / f"p{i}.xml").write_text(
            f"<annotation><filename>p{i}.jpg</filename><size><width>64</width><height>48</height>"
            "</size><object><name>dent</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>20</xmax>"
            "<ymax>20</ymax></bndbox></object></annotation>")
    import_dataset("voc", src, tmp_path / "ds")
    result = CliRunner().invoke(app, ["data", "split", str(tmp_path / "ds"), "--val", "0.5"])
    assert result.exit_code == 0, result.output
    assert "no image has a group" in " ".join(result.stderr.split())
    grouped = CliRunner().invoke(app, ["data", "split", str(sample), "--val", "0.3"])
    assert grouped.exit_code == 0 and "no image has a group" not in grouped.output


def _no_images(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    doc = json.loads((SAMPLE / "annotations.json").read_text())
    doc["images"], doc["annotations"] = [], []
    (folder / "annotations.json").write_text(json.dumps(doc))
    return folder


def test_a_dataset_with_no_images_is_one_line(tmp_path: Path) -> None:
    """data split on it was a ZeroDivisionError's traceback; golden create said "no images
    in split None"."""
    empty = _no_images(tmp_path)
    res = CliRunner().invoke(app, ["data", "split", str(empty)])
    assert res.exit_code == 2, res.output
    assert "has no images to split" in res.output
    res = CliRunner().invoke(app, ["golden", "create", "g", "--data-dir", str(tmp_path / "d"),
                                   "--data", str(empty)])
    assert res.exit_code == 2, res.output
    assert "the dataset has no images" in res.output and "None" not in res.output
