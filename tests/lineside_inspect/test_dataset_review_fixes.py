"""What an adversarial read of the import fixes found (2026-12-02): a folder of links to
another dataset's images did not protect that dataset; YAML class names that are not text
(null, booleans, an alias bomb) or one id given twice; a FIFO named like an image hung the
import; a broken link was a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import import_dataset, read_dataset
from lineside_inspect.errors import DatasetError

from .test_dataset_import_findings import _jpg, _yolo


def test_a_folder_of_links_protects_the_dataset_they_point_into(tmp_path: Path) -> None:
    good = tmp_path / "good"
    for i in range(3):
        _jpg(good / f"g{i}.jpg")
    first, _ = import_dataset("good", good, tmp_path / "ds1")
    links = tmp_path / "links"
    links.mkdir()
    for r in first.images[:2]:
        (links / Path(r.file_name).name).symlink_to(first.image_path(r))
    with pytest.raises(DatasetError, match="source"):
        import_dataset("good", links, tmp_path / "ds1", overwrite=True, follow_links=True)
    assert len(read_dataset(tmp_path / "ds1").images) == 3  # untouched


@pytest.mark.parametrize(("names", "expected"), [
    ("[scratch, null, dent]", "name None is not text"),
    ("[scratch, no]", "name False is not text"),
    ("{0: scratch, 2: dent, '2': crack}", "class id 2 twice ('dent' and 'crack')"),
    ("[scratch, [a, b]]", "name is a list, not text"),
])
def test_yaml_names_that_are_not_one_text_each_are_refused(tmp_path: Path, names: str,
                                                            expected: str) -> None:
    _yolo(tmp_path / "src", f"names: {names}\n", {"a": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", tmp_path / "src", tmp_path / "out")
    assert expected in str(exc.value) and not (tmp_path / "out").exists()


def test_an_alias_bomb_in_names_is_refused_small(tmp_path: Path) -> None:
    bomb = ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nnames: [scratch, *c]\n")
    _yolo(tmp_path / "src", bomb, {"a": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", tmp_path / "src", tmp_path / "out")
    assert "name is a list, not text" in str(exc.value) and len(str(exc.value)) < 500


def test_a_fifo_named_like_an_image_or_a_label_is_not_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "names: [scratch]\n", {"a": "0 0.5 0.5 0.2 0.2\n"})
    os.mkfifo(src / "images" / "fifo.jpg")  # opening one to read would wait forever
    os.mkfifo(src / "labels" / "b.txt")
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert [r.file_name for r in ds.images] == ["a.jpg"]


def test_a_broken_link_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "names: [scratch]\n", {"a": "0 0.5 0.5 0.2 0.2\n"})
    (src / "labels" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    (tmp_path / "coco.json").symlink_to(tmp_path / "nowhere.json")
    runner = CliRunner()
    for args in (["data", "import", "-f", "yolo", str(src), str(tmp_path / "out")],
                 ["data", "import", "-f", "coco", str(tmp_path / "coco.json"), str(tmp_path / "o2")]):
        r = runner.invoke(app, args)
        assert r.exit_code in (0, 2) and "Traceback" not in r.output, r.output
        assert not isinstance(r.exception, OSError)


def test_a_class_name_blown_up_by_xml_entities_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "voc"
    _jpg(src / "JPEGImages" / "a.jpg")
    (src / "Annotations").mkdir(parents=True)
    entities = ('<!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;'
                '&x;&x;"><!ENTITY z "&y;&y;&y;&y;&y;&y;&y;&y;&y;&y;">]>')
    (src / "Annotations" / "a.xml").write_text(
        f'<?xml version="1.0"?>{entities}<annotation><filename>a.jpg</filename><object>'
        "<name>&z;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
        "</bndbox></object></annotation>")
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out")
    text = str(exc.value) + "".join(str(p) for p in exc.value.problems)
    assert "class name of 1000 characters (at most 128)" in text and len(text) < 2000
    assert not (tmp_path / "out").exists()


def test_a_dataset_holds_no_more_classes_than_a_model_card() -> None:
    """A dataset of 1,001 classes (or a class name of 129-200 characters) trained for
    hours, then its export failed: a card holds at most 1,000 classes of 128 characters."""
    from lineside_inspect.dataset.canonical import _label_problems
    from lineside_inspect.dataset.model import Dataset

    many = _label_problems(Dataset(categories=[f"c{i}" for i in range(1001)], images=[]))
    assert [p.message for p in many] == ["1001 classes, over the 1000 a model may have"]
    long = _label_problems(Dataset(categories=["c" * 129], images=[]))
    assert "class name of 129 characters (at most 128)" in long[0].message
    assert _label_problems(Dataset(categories=["c" * 128], images=[])) == []
