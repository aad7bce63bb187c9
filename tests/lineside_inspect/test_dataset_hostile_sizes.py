"""Label files of a set from elsewhere too big for one image (session 51): a 104 MB VOC XML
of 10^6 <object>s, a YOLO label of 10^6 lines or a COCO JSON of 10^6 annotations on one
image each took 1.8 GB and 30 s to import one image of a million boxes. Each is now one
problem naming its file, and ``--skip-invalid`` leaves out that image only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineside_inspect.dataset import import_dataset
from lineside_inspect.dataset.layout import MAX_BOXES_PER_IMAGE, MAX_LABEL_FILE_BYTES
from lineside_inspect.errors import DatasetError

from .test_dataset_import_findings import _jpg, _voc_xml

TOO_MANY = MAX_BOXES_PER_IMAGE + 1


def _sparse(path: Path, size: int) -> None:
    """A file of ``size`` bytes taking no disk (its size is all the check reads)."""
    with path.open("ab") as f:
        f.truncate(size)


def _refused_then_skipped(fmt: str, src: Path, tmp_path: Path, bad: str, message: str,
                          kept: list[str]) -> None:
    with pytest.raises(DatasetError) as exc:
        import_dataset(fmt, src, tmp_path / "out")
    (problem,) = exc.value.problems
    assert problem.file.endswith(bad) and message in problem.message, problem
    ds, problems = import_dataset(fmt, src, tmp_path / "out", skip_invalid=True,
                                     overwrite=True)
    assert [r.file_name for r in ds.images] == kept and len(problems) == 1


def test_a_voc_xml_of_too_many_objects_or_bytes_is_one_problem(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "Annotations").mkdir(parents=True)
    for stem in ("ok", "many", "huge"):
        _jpg(src / "JPEGImages" / f"{stem}.jpg")
    box = ("dent", (1, 1, 5, 5))
    (src / "Annotations" / "ok.xml").write_text(_voc_xml("ok.jpg", [box]))
    (src / "Annotations" / "many.xml").write_text(_voc_xml("many.jpg", [box] * TOO_MANY))
    (src / "Annotations" / "huge.xml").write_text(_voc_xml("huge.jpg", [box]))
    _refused_then_skipped("voc", src, tmp_path, "many.xml",
                          f"{TOO_MANY} boxes on one image: over the {MAX_BOXES_PER_IMAGE}",
                          ["JPEGImages/huge.jpg", "JPEGImages/ok.jpg"])
    _sparse(src / "Annotations" / "huge.xml", MAX_LABEL_FILE_BYTES + 1)
    (src / "Annotations" / "many.xml").unlink()
    (src / "JPEGImages" / "many.jpg").unlink()
    _refused_then_skipped("voc", src, tmp_path, "huge.xml",
                          f"over the {MAX_LABEL_FILE_BYTES >> 20} MiB one image's labels take",
                          ["JPEGImages/ok.jpg"])


def test_a_yolo_label_of_too_many_lines_or_bytes_is_one_problem(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "labels").mkdir(parents=True)
    (src / "classes.txt").write_text("dent\n")
    line = "0 0.5 0.5 0.1 0.1\n"
    for stem, text in (("ok", line), ("many", line * TOO_MANY), ("huge", line)):
        _jpg(src / "images" / f"{stem}.jpg")
        (src / "labels" / f"{stem}.txt").write_text(text)
    _refused_then_skipped("yolo", src, tmp_path, "many.txt", f"{TOO_MANY} boxes on one image",
                          ["huge.jpg", "ok.jpg"])
    _sparse(src / "labels" / "huge.txt", MAX_LABEL_FILE_BYTES + 1)
    (src / "labels" / "many.txt").write_text(line)
    _refused_then_skipped("yolo", src, tmp_path, "huge.txt", "MiB: over the",
                          ["many.jpg", "ok.jpg"])


def test_a_coco_image_of_too_many_annotations_is_one_problem(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("ok.jpg", "many.jpg"):
        _jpg(src / "images" / name)
    images = [{"id": i, "file_name": n, "width": 128, "height": 96}
              for i, n in ((1, "ok.jpg"), (2, "many.jpg"))]
    anns = [{"id": i + 1, "image_id": 1 if i == 0 else 2, "category_id": 1,
             "bbox": [10, 10, 20, 20]} for i in range(TOO_MANY + 1)]
    (src / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "dent"}]}))
    _refused_then_skipped("coco", src, tmp_path, "annotations.json",
                          f"{TOO_MANY} boxes on one image", ["ok.jpg"])


def test_too_many_boxes_says_what_to_do(tmp_path: Path) -> None:
    """Session 52: the problem said the count was over the limit and "(not a part's
    defects)", nothing of what such a file likely is or what to do about it."""
    src = tmp_path / "src"
    (src / "labels").mkdir(parents=True)
    (src / "classes.txt").write_text("dent\n")
    _jpg(src / "images" / "many.jpg")
    (src / "labels" / "many.txt").write_text("0 0.5 0.5 0.1 0.1\n" * TOO_MANY)
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", src, tmp_path / "out")
    (problem,) = exc.value.problems
    assert "a dense real set has some hundreds" in problem.message, problem
    assert "a mask or polygon exported as a box per pixel" in problem.message, problem
    assert "merge the boxes that mark one defect" in problem.message, problem
    assert "split the image into tiles" in problem.message, problem


def test_a_voc_set_of_which_no_xml_reads_names_its_layout_whole(tmp_path: Path) -> None:
    """Session 52: a VOC set whose every XML is a problem said "(layout found: Pascal VOC;
    )", with or without --skip-invalid: the layout's parts were all empty."""
    src = tmp_path / "src"
    _jpg(src / "JPEGImages" / "a.jpg")
    (src / "Annotations").mkdir()
    (src / "Annotations" / "a.xml").write_text("<annotation><filename>a.jpg</filename")
    for skip in (False, True):
        with pytest.raises(DatasetError) as exc:
            import_dataset("voc", src, tmp_path / "out", skip_invalid=skip)
        said = str(exc.value)
        assert "; )" not in said and not said.rstrip(")").endswith(";"), said
        assert said.endswith("(layout found: Pascal VOC; no image's annotation read from "
                             "the 1 .xml file(s))"), said
