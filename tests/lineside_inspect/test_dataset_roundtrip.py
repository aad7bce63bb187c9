"""Every importer round trip: import, export, re-import gives the same boxes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lineside_inspect.dataset import Dataset, export_dataset, import_dataset, read_dataset


def _boxes(ds: Dataset) -> dict[str, list[tuple[float, float, float, float, str]]]:
    """Boxes per image basename (paths differ between layouts), rounded to 1/100 pixel."""
    return {
        Path(r.file_name).name: sorted(
            (round(b.x1, 2), round(b.y1, 2), round(b.x2, 2), round(b.y2, 2), b.label)
            for b in r.boxes
        )
        for r in ds.images
    }


def test_deeppcb_sample_is_canonical(sample: Path) -> None:
    ds = read_dataset(sample)
    assert len(ds.images) == 70
    assert sum(1 for r in ds.images if r.is_good) == 35
    assert {r.split for r in ds.images} == {"train", "val"}
    assert (sample / "LICENSE").is_file()


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_export_then_import_round_trip(sample: Path, tmp_path: Path, fmt: str) -> None:
    original = read_dataset(sample)
    export_dataset(fmt, sample, tmp_path / fmt)
    again, skipped = import_dataset(fmt, tmp_path / fmt, tmp_path / f"{fmt}-again")
    assert not skipped
    assert again.categories == original.categories
    assert _boxes(again) == _boxes(original)
    if fmt == "yolo":  # the split survives as the images/<split>/ folder
        assert sorted(r.split or "" for r in again.images) == sorted(
            r.split or "" for r in original.images)
    else:
        assert [r.group for r in again.images] == [r.group for r in original.images]


def _write_voc(ds: Dataset, dst: Path) -> None:
    (dst / "JPEGImages").mkdir(parents=True)
    (dst / "Annotations").mkdir()
    for r in ds.images:
        name = Path(r.file_name).name
        (dst / "JPEGImages" / name).write_bytes(ds.image_path(r).read_bytes())
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = name
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(r.width)
        ET.SubElement(size, "height").text = str(r.height)
        for b in r.boxes:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = b.label
            bb = ET.SubElement(obj, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), b.xyxy(), strict=True):
                ET.SubElement(bb, k).text = str(v)
        ET.ElementTree(root).write(dst / "Annotations" / (Path(name).stem + ".xml"))


def test_voc_import_then_coco_export_round_trip(sample: Path, tmp_path: Path) -> None:
    original = read_dataset(sample)
    _write_voc(original, tmp_path / "voc")
    voc, _ = import_dataset("voc", tmp_path / "voc", tmp_path / "from-voc")
    assert set(voc.categories) <= set(original.categories)
    assert _boxes(voc) == _boxes(original)
    export_dataset("coco", tmp_path / "from-voc", tmp_path / "coco")
    again, _ = import_dataset("coco", tmp_path / "coco", tmp_path / "again")
    assert _boxes(again) == _boxes(original)


def test_deeppcb_import_of_sample_source_matches(deeppcb: Path, tmp_path: Path,
                                                 sample: Path) -> None:
    """The sample was made by the DeepPCB importer: re-importing its source pairs agrees."""
    original = read_dataset(sample)
    src = tmp_path / "src"
    for r in original.images:
        group, name = r.file_name.split("/")
        stem = name.split("_")[0]
        for f in (deeppcb / "PCBData").glob(f"{group}/*/{name}"):
            target = src / f.relative_to(deeppcb)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
            txt = f.parent.parent / f"{f.parent.name}_not" / f"{stem}.txt"
            if txt.is_file():
                t = src / txt.relative_to(deeppcb)
                t.parent.mkdir(parents=True, exist_ok=True)
                t.write_text(txt.read_text())
    again, _ = import_dataset("deeppcb", src, tmp_path / "again")
    assert _boxes(again) == _boxes(original)


def test_good_folder_import(sample: Path, tmp_path: Path) -> None:
    good = tmp_path / "good" / "line1"
    good.mkdir(parents=True)
    for r in read_dataset(sample).images[:3]:
        (good / Path(r.file_name).name).write_bytes((sample / "images" / r.file_name).read_bytes())
    ds, _ = import_dataset("good", tmp_path / "good", tmp_path / "out")
    assert len(ds.images) == 3 and all(r.is_good and r.group == "line1" for r in ds.images)
