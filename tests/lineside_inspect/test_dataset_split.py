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


def _small(tmp_path: Path, name: str, spec: list[tuple[str, list[str]]]) -> Path:
    """A dataset of one noise image per (group, classes) in ``spec`` (no classes: good)."""
    from lineside_inspect.dataset import write_dataset
    from lineside_inspect.dataset.model import Box, Dataset, ImageRecord
    from lineside_inspect.opencv import cv2

    raw = tmp_path / f"{name}-raw"
    raw.mkdir()
    recs = []
    for i, (group, labels) in enumerate(spec):
        path = raw / f"p{i}.png"
        pixels = np.random.default_rng(i).integers(0, 255, (40, 40, 3)).astype(np.uint8)
        assert cv2.imwrite(str(path), pixels)
        recs.append(ImageRecord(path.name, 40, 40, [Box(2, 2, 12, 12, c) for c in labels],
                                group=group, source=path))
    write_dataset(Dataset(sorted({c for _, cs in spec for c in cs}) or ["dent"], recs),
                  tmp_path / name)
    return tmp_path / name


def test_an_empty_split_of_a_small_set_says_why_and_what_works(tmp_path: Path) -> None:
    """A 5-part pull, each part the only one of its class (or the only good one): --val 0.2
    came out empty with "tied into too few groups" (5 groups are not few; --by image, which
    it advised, failed the same way). Now the line counts the groups, says why none went to
    val and names the smallest --val that splits, found by splitting."""
    five = _small(tmp_path, "five", [("a", ["scratch"]), ("b", ["dent"]), ("c", ["hole"]),
                                     ("d", ["crack"]), ("e", [])])
    before = (five / "annotations.json").read_text()
    r = CliRunner().invoke(app, ["data", "split", str(five), "--val", "0.2"])
    line = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "too few" not in line, line
    assert ("the val split came out empty at --val 0.2: the 5 images are in 5 groups, which "
            "move whole, and each holds every box of a class, or every good image, which "
            "balancing the classes keeps in train; --val 0.31 gives val 1 of the 5 images; or "
            "add images of more groups") in line
    assert (five / "annotations.json").read_text() == before  # nothing written
    ok = CliRunner().invoke(app, ["data", "split", str(five), "--val", "0.31"])
    assert ok.exit_code == 0 and "split: train 4, val 1, test 0" in ok.stdout, ok.output
    by_image = CliRunner().invoke(app, ["data", "split", str(five), "--val", "0.2", "--by", "image"])
    assert by_image.exit_code == 2 and "give --by image" not in by_image.stderr

    # one image: no fraction splits it ("give --val 1 or more", which --val refuses, was said)
    one = _small(tmp_path, "one", [("a", ["scratch"])])
    r = CliRunner().invoke(app, ["data", "split", str(one), "--val", "0.2"])
    assert r.exit_code == 2 and "--val 1" not in r.stderr
    assert ("the val split came out empty: the dataset has 1 image, and a train/val split "
            "needs at least 2, one on each side; add images") in " ".join(r.stderr.split())
    # two images of one part: "give --val 0.5 or more" led to "too few groups"; now the group
    two = _small(tmp_path, "two", [("a", ["scratch"]), ("a", [])])
    for val in ("0.2", "0.5"):
        r = CliRunner().invoke(app, ["data", "split", str(two), "--val", val])
        assert r.exit_code == 2 and "--val 0.5 or more" not in r.stderr
        assert ("the 2 images are in 1 group (a group moves whole, with any duplicates of its "
                "images), and a train/val split needs at least 2; add images of other groups "
                "(parts, boards, days), or give --by image") in " ".join(r.stderr.split())
    # every group named in --val-groups, or fractions that leave train nothing
    three = _small(tmp_path, "three", [("a", ["x"]), ("b", ["y"]), ("c", ["x"])])
    r = CliRunner().invoke(app, ["data", "split", str(three), "--val-groups", "a,b,c"])
    assert r.exit_code == 2 and "names the groups of every image; leave some for train" in r.stderr
    r = CliRunner().invoke(app, ["data", "split", str(three), "--val", "0.5", "--test", "0.45"])
    assert r.exit_code == 2
    assert ("the train split came out empty: --val 0.5 and --test 0.45 leave train 5%, and none "
            "of the 3 groups went to it; give smaller fractions") in " ".join(r.stderr.split())


def test_a_split_far_from_the_share_asked_says_so(tmp_path: Path) -> None:
    """One part holding 9 of 10 images: --val 0.2 gave val 10%, --val 0.6 (with a third
    part) val 82%, both said only as "split: train 9, val 1": groups move whole, which a
    user expecting the share asked must hear, with the group that made it so."""
    lop = _small(tmp_path, "lop", [("big", ["x"])] * 9 + [("b", ["x"]), ("c", ["x"])])
    r = CliRunner().invoke(app, ["data", "split", str(lop), "--val", "0.6"])
    assert r.exit_code == 0 and "split: train 2, val 9, test 0" in r.stdout, r.output
    assert ("val is 82% of the 11 images, not the 60% asked: groups move whole, and the "
            "largest, 'big', holds 9 images") in " ".join(r.stderr.split())
    assert [x.split for x in read_dataset(lop).images].count("val") == 9  # saved, as said
    r = CliRunner().invoke(app, ["data", "split", str(lop), "--val", "0.2"])
    assert r.exit_code == 0 and "split: train 9, val 2, test 0" in r.stdout, r.output
    assert "not the" not in r.stderr  # 18% of 20%: near enough, nothing said
    even = _small(tmp_path, "even", [(g, ["x"]) for g in "abcde"])
    r = CliRunner().invoke(app, ["data", "split", str(even), "--val", "0.2", "--test", "0.2"])
    assert r.exit_code == 0 and "not the" not in r.stderr, r.output
    # 1 of 3 images is 33%, the nearest a whole image gets to 20%: nothing said either
    r = CliRunner().invoke(app, ["data", "split", str(_small(tmp_path, "three", [(g, []) for g in "abc"]))])
    assert r.exit_code == 0 and "val 1" in r.stdout and "not the" not in r.stderr, r.output
