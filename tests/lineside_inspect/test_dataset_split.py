"""``lineside data split --val-groups``: validation made of named groups (held-out boards),
so a benchmark's split can be made again from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
    assert json.loads((sample / "annotations.json").read_text()) == before  # nothing written
