"""A dataset's classes need not be the model's list in its order (VOC import sorts them,
YOLO keeps data.yaml's), nor all of them (a folder of good parts has none): boxes carry
class names. Without defects in the data, mAP and F are n/a, not 0."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lineside_inspect.dataset.canonical import read_dataset, write_dataset
from lineside_inspect.errors import ConfigError
from lineside_training.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
PACKAGE = ROOT / "models" / "deeppcb" / "1"


def test_class_order_and_good_only_data(tmp_path: Path) -> None:
    whole = read_dataset(SAMPLE)
    few = [r for r in whole.images if r.boxes][:8] + [r for r in whole.images if not r.boxes][:8]
    sample = write_dataset(dataclasses.replace(
        whole, root=None, images=[dataclasses.replace(r, source=whole.image_path(r)) for r in few]),
        tmp_path / "sample")
    shuffled = write_dataset(dataclasses.replace(
        sample, categories=list(reversed(sample.categories)), root=None,
        images=[dataclasses.replace(r, source=sample.image_path(r)) for r in sample.images]),
        tmp_path / "shuffled")
    as_shipped = evaluate(PACKAGE, data=str(sample.root), split="all", out=tmp_path / "a")
    reordered = evaluate(PACKAGE, data=str(shuffled.root), split="all", out=tmp_path / "b")
    assert reordered["coco"]["map50"] == as_shipped["coco"]["map50"] > 0
    assert reordered["pairs"] == as_shipped["pairs"]
    assert reordered["quality"]["escapes"] == as_shipped["quality"]["escapes"]

    good = [dataclasses.replace(r, source=sample.image_path(r)) for r in sample.images
            if not r.boxes]
    only_good = write_dataset(dataclasses.replace(sample, categories=[], images=good, root=None),
                              tmp_path / "good")
    r = evaluate(PACKAGE, data=str(only_good.root), split="all", out=tmp_path / "g")
    assert r["coco"]["boxes"] == 0 and r["pairs"]["f"] is None
    assert r["quality"]["good_images"] == len(good)  # the false-reject rate is what it measures
    summary = (tmp_path / "g" / "summary.md").read_text()
    assert "mAP: n/a (no defects in the data)" in summary and "**n/a**" in summary

    foreign = write_dataset(dataclasses.replace(
        sample, categories=[*sample.categories, "scratch"], root=None,
        images=[dataclasses.replace(r, source=sample.image_path(r)) for r in sample.images[:4]]),
        tmp_path / "foreign")
    with pytest.raises(ConfigError, match=r"\['scratch'\] are not among the model's"):
        evaluate(PACKAGE, data=str(foreign.root), split="all", out=tmp_path / "f")


def test_an_unknown_split_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'banana' is not one of train, val, test, all"):
        evaluate(PACKAGE, data=str(SAMPLE), split="banana", out=tmp_path / "b")
