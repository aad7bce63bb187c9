"""Findings of a new-user pass over dataset import: each test builds the user's layout in
tmp_path and checks what the import says and keeps."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineside_inspect.dataset import import_dataset
from lineside_inspect.errors import DatasetError


def _jpg(path: Path, width: int = 128, height: int = 96) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 3), 128, np.uint8)
    cv2.rectangle(image, (10, 10), (40, 30), (0, 0, 255), -1)
    assert cv2.imwrite(str(path), image)


def _messages(exc: pytest.ExceptionInfo[DatasetError]) -> str:
    return str(exc.value) + "\n" + "\n".join(str(p) for p in exc.value.problems)


def _yolo(src: Path, yaml_text: str, labels: dict[str, str]) -> None:
    (src / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (src / "data.yaml").write_text(yaml_text)
    for stem, text in labels.items():
        _jpg(src / "images" / f"{stem}.jpg")
        (src / "labels").mkdir(parents=True, exist_ok=True)
        (src / "labels" / f"{stem}.txt").write_text(text)


# --- finding 2: YOLO class ids by integer key --------------------------------------------

def test_yolo_quoted_name_keys_keep_each_id_on_its_name(tmp_path: Path) -> None:
    names = "".join(f"  '{i}': c{i}\n" for i in range(12))
    _yolo(tmp_path / "src", "names:\n" + names,
          {"a": "2 0.5 0.5 0.2 0.2\n", "b": "10 0.5 0.5 0.2 0.2\n"})
    ds, skipped = import_dataset("yolo", tmp_path / "src", tmp_path / "out")
    assert not skipped
    labels = {r.file_name: [b.label for b in r.boxes] for r in ds.images}
    assert labels == {"a.jpg": ["c2"], "b.jpg": ["c10"]}
    assert ds.categories == [f"c{i}" for i in range(12)]


def test_yolo_sparse_names_keep_their_ids_and_refuse_a_missing_id(tmp_path: Path) -> None:
    yaml_text = "names:\n  0: scratch\n  2: dent\n  3: crack\n"
    _yolo(tmp_path / "src", yaml_text,
          {"a": "2 0.5 0.5 0.2 0.2\n", "b": "3 0.5 0.5 0.2 0.2\n"})
    ds, _ = import_dataset("yolo", tmp_path / "src", tmp_path / "out")
    labels = {r.file_name: [b.label for b in r.boxes] for r in ds.images}
    assert labels == {"a.jpg": ["dent"], "b.jpg": ["crack"]}

    _yolo(tmp_path / "bad", yaml_text, {"c": "1 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", tmp_path / "bad", tmp_path / "out2")
    text = _messages(exc)
    assert "class id 1 is not in the names" in text and "c.txt:line 1" in text


# --- finding 3: -f good refuses a labelled folder ----------------------------------------

@pytest.mark.parametrize(("name", "text", "fmt"), [
    ("p0.xml", "<annotation><filename>p0.jpg</filename></annotation>", "-f voc"),
    ("p0.txt", "0 0.5 0.5 0.2 0.2\n", "-f yolo"),
    ("_annotations.coco.json", '{"images": [], "annotations": []}', "-f coco"),
])
def test_good_refuses_a_folder_with_label_files(tmp_path: Path, name: str, text: str,
                                                 fmt: str) -> None:
    src = tmp_path / "src"
    _jpg(src / "p0.jpg")
    (src / name).write_text(text)
    with pytest.raises(DatasetError) as exc:
        import_dataset("good", src, tmp_path / "out")
    assert fmt in str(exc.value) and name in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_good_accepts_notes_beside_the_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _jpg(src / "p0.jpg")
    (src / "README.txt").write_text("good parts from line 3, week 12\n")
    ds, _ = import_dataset("good", src, tmp_path / "out")
    assert [r.file_name for r in ds.images] == ["p0.jpg"]


def test_good_names_images_in_formats_it_does_not_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _jpg(src / "lot1" / "p0.jpg")
    (src / "lot1" / "p1.tif").write_bytes(b"II*\x00")  # a TIFF header: skipped unseen before
    with pytest.raises(DatasetError) as exc:
        import_dataset("good", src, tmp_path / "out")
    assert "lot1/p1.tif: TIF image, which is not supported (jpg, png or bmp only): convert it" \
        in _messages(exc)
    ds, skipped = import_dataset("good", src, tmp_path / "out", skip_invalid=True)
    assert [r.file_name for r in ds.images] == ["lot1/p0.jpg"] and len(skipped) == 1
    (src / "lot1" / "p0.TIFF").write_bytes(b"II*\x00")  # the same part saved twice: fine
    _jpg(src / "lot1" / "p1.png")
    ds, _ = import_dataset("good", src, tmp_path / "out3")
    assert sorted(r.file_name for r in ds.images) == ["lot1/p0.jpg", "lot1/p1.png"]
    (src / "lot1" / "p1.png").unlink()
    (src / "lot1" / "p0.TIFF").unlink()
    (src / "lot1" / "p0.jpg").unlink()
    with pytest.raises(DatasetError, match=r"no images it can read: 1 TIF .*lot1/p1\.tif"):
        import_dataset("good", src, tmp_path / "out2")


# --- finding 7: non-UTF-8 data.yaml and XML ----------------------------------------------

def test_latin1_data_yaml_is_a_clear_refusal_naming_the_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "", {"a": "0 0.5 0.5 0.2 0.2\n"})
    (src / "data.yaml").write_bytes("names: [rayure, fissuré]\n".encode("latin-1"))
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", src, tmp_path / "out")
    assert "data.yaml: not UTF-8" in str(exc.value) and "save it as UTF-8" in str(exc.value)


def test_data_yaml_with_a_bom_is_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "", {"a": "0 0.5 0.5 0.2 0.2\n"})
    (src / "data.yaml").write_bytes("\ufeffnames: [fissuré]\n".encode())
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert ds.categories == ["fissuré"]


def _voc_xml(filename: str, objects: list[tuple[str, tuple[float, ...]]],
             size: tuple[int, int] = (128, 96)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height></size>{objs}</annotation>")


def test_latin1_xml_without_declaration_hints_at_the_encoding(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _jpg(src / "JPEGImages" / "a.jpg")
    (src / "Annotations").mkdir()
    (src / "Annotations" / "a.xml").write_bytes(
        _voc_xml("a.jpg", [("rayé", (10, 10, 40, 30))]).encode("latin-1"))
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out")
    text = _messages(exc)
    assert "a.xml" in text and "not UTF-8 and declares no encoding" in text


def test_latin1_xml_with_its_declaration_imports(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _jpg(src / "JPEGImages" / "a.jpg")
    (src / "Annotations").mkdir()
    decl = '<?xml version="1.0" encoding="ISO-8859-1"?>'
    (src / "Annotations" / "a.xml").write_bytes(
        (decl + _voc_xml("a.jpg", [("rayé", (10, 10, 40, 30))])).encode("latin-1"))
    ds, _ = import_dataset("voc", src, tmp_path / "out")
    assert ds.categories == ["rayé"]


# --- finding 6: the standard COCO layout -------------------------------------------------

def _coco_doc(names: list[str]) -> str:
    images = [{"id": i + 1, "file_name": n, "width": 128, "height": 96}
              for i, n in enumerate(names)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 20, 20]}
            for i in range(len(names))]
    return json.dumps({"images": images, "annotations": anns,
                       "categories": [{"id": 1, "name": "scratch"}]})


def test_coco_standard_layout_finds_images_in_the_split_folder(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    (src / "annotations").mkdir(parents=True)
    for split, names in (("train2017", ["a.jpg", "b.jpg"]), ("val2017", ["c.jpg"])):
        (src / "annotations" / f"instances_{split}.json").write_text(_coco_doc(names))
        for n in names:
            _jpg(src / split / n)
    ds, skipped = import_dataset("coco", src, tmp_path / "out")
    assert not skipped
    assert {(r.file_name, r.split) for r in ds.images} == {
        ("train2017/a.jpg", "train"), ("train2017/b.jpg", "train"), ("val2017/c.jpg", "val")}
    # given the JSON itself, its images beside annotations/ are found too
    ds, _ = import_dataset("coco", src / "annotations" / "instances_val2017.json",
                           tmp_path / "out2")
    assert [r.file_name for r in ds.images] == ["c.jpg"]


def test_coco_image_in_the_dataset_root_and_a_missing_one_names_every_place(
        tmp_path: Path) -> None:
    src = tmp_path / "coco"
    (src / "annotations").mkdir(parents=True)
    (src / "annotations" / "instances_train.json").write_text(_coco_doc(["a.jpg", "gone.jpg"]))
    _jpg(src / "a.jpg")
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out")
    (problem,) = exc.value.problems
    assert "'gone.jpg' not found" in problem.message
    for place in ("annotations/images/", "annotations/train/", "train/", "images/train/",
                  "coco/ (the top folder)"):
        assert place in problem.message
    assert str(tmp_path) not in problem.message
    ds, skipped = import_dataset("coco", src, tmp_path / "out", skip_invalid=True)
    assert [r.file_name for r in ds.images] == ["a.jpg"] and len(skipped) == 1


# --- finding 11: a box a hair outside the image ------------------------------------------

def test_box_within_one_pixel_outside_is_clipped_and_noted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    # x2 = (0.9 + 0.2004 / 2) * 128 = 128.0256: an export's rounding, past the edge
    # (128.0000256, within what 6 decimals tell apart, is the whole pixel 128 since
    # session 46: on the edge, nothing to clip)
    _yolo(src, "names: [scratch]\n", {"a": "0 0.9 0.5 0.2004 0.2\n"})
    ds, skipped = import_dataset("yolo", src, tmp_path / "out")
    assert not skipped
    (box,) = ds.images[0].boxes
    assert box.x2 == 128.0 and box.x1 == pytest.approx(102.374, abs=1e-3)
    assert "1 box edge(s) up to 1 px outside the image clipped" in str(ds.info["layout"])


def test_box_further_outside_is_still_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _jpg(src / "JPEGImages" / "a.jpg")
    (src / "Annotations").mkdir()
    (src / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg", [("scratch", (-3, 10, 40, 30))]))
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out")
    assert "lies outside the 128x96 image" in _messages(exc)


# --- finding 10: two XMLs name one image -------------------------------------------------

def test_duplicate_filename_blames_the_xml_not_named_after_the_image(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _jpg(src / "JPEGImages" / "ok0.jpg")
    (src / "Annotations").mkdir()
    (src / "Annotations" / "ok0.xml").write_text(_voc_xml("ok0.jpg", [("dent", (10, 10, 40, 30))]))
    # sorts first, so the old code kept it and blamed ok0.xml
    (src / "Annotations" / "dup_ref.xml").write_text(
        _voc_xml("ok0.jpg", [("scratch", (50, 50, 60, 60))]))
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out")
    (problem,) = exc.value.problems
    assert problem.file.endswith("dup_ref.xml") and "Annotations/ok0.xml" in problem.message
    ds, skipped = import_dataset("voc", src, tmp_path / "out", skip_invalid=True)
    assert [(r.file_name, [b.label for b in r.boxes]) for r in ds.images] == [
        ("JPEGImages/ok0.jpg", ["dent"])]
    assert ds.categories == ["dent"] and len(skipped) == 1


# --- finding 13: YOLO label files with no image ------------------------------------------

def test_yolo_label_file_without_an_image_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "names: [scratch]\n", {"a": "0 0.5 0.5 0.2 0.2\n"})
    (src / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (src / "labels" / "tiff.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (src / "images" / "tiff.tif").write_bytes(b"II*\\x00")
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", src, tmp_path / "out")
    by_file = {Path(p.file).name: p.message for p in exc.value.problems}
    assert set(by_file) == {"orphan.txt", "tiff.txt"}
    assert "label file has no image" in by_file["orphan.txt"]
    assert "TIF, which is not supported (jpg, png or bmp only)" in by_file["tiff.txt"]
    ds, skipped = import_dataset("yolo", src, tmp_path / "out", skip_invalid=True)
    assert [r.file_name for r in ds.images] == ["a.jpg"] and len(skipped) == 2


# --- finding 14: an unreadable image is one problem; counts say images; TIFF -------------

@pytest.mark.parametrize("content", [b"", b"this is not an image\n"])
def test_unreadable_image_is_one_problem(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "src"
    _jpg(src / "JPEGImages" / "ok.jpg")
    (src / "JPEGImages" / "bad.jpg").write_bytes(content)
    (src / "Annotations").mkdir()
    for stem in ("ok", "bad"):
        (src / "Annotations" / f"{stem}.xml").write_text(
            _voc_xml(f"{stem}.jpg", [("dent", (1, 1, 5, 5))]))
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out")
    (problem,) = exc.value.problems
    assert "unreadable image" in problem.message and problem.subject == "JPEGImages/bad.jpg"
    ds, skipped = import_dataset("voc", src, tmp_path / "out", skip_invalid=True)
    assert [r.file_name for r in ds.images] == ["JPEGImages/ok.jpg"] and len(skipped) == 1


def test_skipped_count_says_images_not_label_files(tmp_path: Path) -> None:
    from lineside_inspect.dataset.problems import images_concerned
    from lineside_inspect.errors import Problem

    problems = [Problem("a.xml", "line 1", "invalid XML", "Annotations/a.xml"),
                Problem("b.jpg", "", "unreadable image", "JPEGImages/b.jpg"),
                Problem("b.xml", "object[0]", "empty box", "JPEGImages/b.jpg"),
                Problem("orphan.txt", "", "label file has no image", "labels/orphan.txt"),
                Problem("categories", "", "duplicate class names")]
    assert images_concerned(problems) == 1


def test_voc_tiff_image_says_tiff_is_not_supported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "t0.tif").write_bytes(b"II*\x00" + bytes(64))
    (src / "t0.xml").write_text(_voc_xml("t0.tif", [("dent", (1, 1, 5, 5))]))
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out")
    (problem,) = exc.value.problems
    assert problem.file.endswith("t0.xml")
    assert "'t0.tif' is TIF, which is not supported (jpg, png or bmp only)" in problem.message


# --- finding 4 (per file): an empty class name is a problem of its file ------------------

def test_voc_empty_name_is_a_problem_of_that_xml(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "Annotations").mkdir(parents=True)
    for stem, name in (("ok", "dent"), ("blank", "  ")):
        _jpg(src / "JPEGImages" / f"{stem}.jpg")
        (src / "Annotations" / f"{stem}.xml").write_text(
            _voc_xml(f"{stem}.jpg", [(name, (1, 1, 5, 5))]))
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, tmp_path / "out")
    (problem,) = exc.value.problems
    assert problem.file.endswith("blank.xml") and problem.location == "object[0].name"
    ds, _ = import_dataset("voc", src, tmp_path / "out", skip_invalid=True)
    assert ds.categories == ["dent"] and [r.file_name for r in ds.images] == ["JPEGImages/ok.jpg"]


def _coco_named(src: Path, name: str) -> Path:
    """A COCO set of one image whose one category is called ``name``."""
    src.mkdir()
    doc = json.loads(_coco_doc(["a.jpg"]))
    doc["categories"] = [{"id": 1, "name": name}]
    (src / "annotations.json").write_text(json.dumps(doc))
    _jpg(src / "images" / "a.jpg")
    return src


def test_yolo_and_coco_blank_class_names_are_problems(tmp_path: Path) -> None:
    _yolo(tmp_path / "y", "names: [dent, ' ']\n",
          {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", tmp_path / "y", tmp_path / "out")
    (problem,) = exc.value.problems
    assert "class id 1 has an empty name in" in problem.message and problem.subject == "b.jpg"
    ds, _ = import_dataset("yolo", tmp_path / "y", tmp_path / "out", skip_invalid=True)
    assert ds.categories == ["dent"]

    src = _coco_named(tmp_path / "c", " ")
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out2")
    (problem,) = exc.value.problems
    assert "class name ' ' is empty" in problem.message and problem.location == "annotations[0]"


# --- finding 16: class names differing only in case --------------------------------------

def test_class_names_differing_in_case_are_warned(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "Annotations").mkdir(parents=True)
    for i, name in enumerate(("scratch", "Scratch", "SCRATCH", "dent")):
        _jpg(src / "JPEGImages" / f"p{i}.jpg")
        (src / "Annotations" / f"p{i}.xml").write_text(
            _voc_xml(f"p{i}.jpg", [(name, (1, 1, 5, 5))]))
    ds, _ = import_dataset("voc", src, tmp_path / "out")
    assert len(ds.categories) == 4
    assert ("warning: class names differing only in case are separate classes: "
            "'SCRATCH' / 'Scratch' / 'scratch'") in str(ds.info["layout"])


def test_spaces_around_class_names_are_not_the_class(tmp_path: Path) -> None:
    """YOLO and COCO kept ' scratch' and 'dent\\t' while VOC stripped them: one set
    imported two ways had other classes, told apart by invisible tabs (training review,
    session 33)."""
    _yolo(tmp_path / "y", "names: [' scratch', \"dent\\t\"]\n",
          {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    ds, _ = import_dataset("yolo", tmp_path / "y", tmp_path / "out")
    assert sorted(ds.categories) == ["dent", "scratch"]
    ds, _ = import_dataset("coco", _coco_named(tmp_path / "c", " scratch\t"), tmp_path / "out2")
    assert ds.categories == ["scratch"]


# --- a 12-bit camera's 16-bit PNGs, read as 8 bits --------------------------------------

def test_16bit_pngs_using_only_the_low_bits_are_named(tmp_path: Path) -> None:
    """A mono 12-bit camera's frames saved as 16-bit PNGs with their values as they are
    (0-4095): Lineside reads the top 8 of the 16 bits, so they trained as nearly black
    pictures of at most 16 grey levels, and the import said nothing. Full-range 16-bit PNGs
    are not named."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    (src / "data.yaml").write_text("names:\n  0: cold shut\n")
    grey = np.full((96, 128), 2000, np.uint16)
    grey[40:44, 10:110] = 400  # a cold shut, dark on the casting
    assert cv2.imwrite(str(src / "images" / "cam12.png"), grey)
    assert cv2.imwrite(str(src / "images" / "full.png"), grey * 16)
    for stem in ("cam12", "full"):
        (src / "labels" / f"{stem}.txt").write_text("0 0.5 0.4375 0.78125 0.041667\n")
    ds, skipped = import_dataset("yolo", src, tmp_path / "out")
    assert not skipped and len(ds.images) == 2  # imported all the same: pixels are the user's
    layout = str(ds.info.get("layout"))
    assert "1 16-bit PNG(s) whose values use only the low bits" in layout, layout
    assert "cam12.png: at most 2000 of 65535" in layout and "8 grey levels" in layout
    assert "full.png" not in layout


def _yolo_with_pngs(src: Path, pngs: dict[str, bytes]) -> None:
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    (src / "data.yaml").write_text("names:\n  0: cold shut\n")
    for stem, data in pngs.items():
        (src / "images" / f"{stem}.png").write_bytes(data)
        (src / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")


def test_a_png_cut_inside_its_header_is_skipped_not_a_crash(tmp_path: Path) -> None:
    """A COCO set whose PNG was cut short inside its IHDR chunk (a copy interrupted after
    20 bytes): the 16-bit look read its bit depth at byte 24 of what it had, and the
    import ended in an IndexError instead of naming the file as unreadable."""
    ok, encoded = cv2.imencode(".png", np.full((96, 128), 2000, np.uint16))
    assert ok
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "cut.png").write_bytes(encoded.tobytes()[:20])
    (src / "images" / "good.png").write_bytes(encoded.tobytes())
    (src / "annotations.json").write_text(_coco_doc(["cut.png", "good.png"]))
    with pytest.raises(DatasetError) as exc:
        import_dataset("coco", src, tmp_path / "out")
    assert "cut.png" in _messages(exc)
    ds, skipped = import_dataset("coco", src, tmp_path / "out", skip_invalid=True)
    assert [r.file_name for r in ds.images] == ["good.png"]
    assert any("cut.png" in str(p) for p in skipped)


def test_a_16bit_png_whose_chunk_claims_gigabytes_is_not_decoded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A corrupt 16-bit PNG whose chunk declares far more bytes than the file has: the
    16-bit look handed it to OpenCV, whose PNG reader allocates a chunk's declared length
    first (4 GB for 4 GB declared; decode_image refuses such a file before OpenCV sees
    it). The look must apply the same checks as the decoder."""
    ok, encoded = cv2.imencode(".png", np.full((96, 128), 2000, np.uint16))
    assert ok
    data = encoded.tobytes()  # a text chunk after IHDR claiming ~4 GB (3.9 GB of RSS)
    bomb = data[:33] + (0xF0000000).to_bytes(4, "big") + b"tEXt" + bytes(64) + data[33:]
    _yolo_with_pngs(tmp_path / "src", {"bomb": bomb})
    real = cv2.imdecode
    decoded: list[int] = []

    def imdecode(buf: np.ndarray, flags: int) -> np.ndarray | None:
        decoded.append(len(buf))
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    with pytest.raises(DatasetError):
        import_dataset("yolo", tmp_path / "src", tmp_path / "out")
    assert decoded == [], "a PNG with a chunk longer than the file was decoded"


def test_a_deeppcb_label_of_infinite_numbers_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """A DeepPCB label line ``1 1 inf 9 1`` (or ``1e999``) was an OverflowError traceback:
    only a ValueError (``nan``, a word) was taken as not numbers."""
    board = tmp_path / "pcb" / "group1"
    _jpg(board / "g1" / "000_test.jpg")
    (board / "g1_not").mkdir(parents=True)
    (board / "g1_not" / "000.txt").write_text("1 1 inf 9 1\n1 1 9 9 1e999\nnan 1 9 9 1\n")
    with pytest.raises(DatasetError) as exc:
        import_dataset("deeppcb", tmp_path / "pcb", tmp_path / "out")
    text = _messages(exc)
    for n, line in enumerate(("1 1 inf 9 1", "1 1 9 9 1e999", "nan 1 9 9 1"), start=1):
        assert f"000.txt:line {n}: not finite numbers: {line!r}" in text, text
    assert not (tmp_path / "out").exists()


def test_a_yolo_label_of_non_finite_numbers_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """Final read, session 46: whole-pixel snapping rounded each coordinate, and a label of
    ``nan``, ``inf`` or ``1e999`` (or one whose pixels overflow) was a ValueError or
    OverflowError traceback (``round``, ``10.0 ** 999``), where it was refused by name before."""
    lines = ("0 nan 0.5 0.2 0.2", "0 0.5 inf 0.2 0.2", "0 0.5 0.5 1e999 0.2",
             "0 0.5 0.5 0.2 1e308",
             "0 0.1 0.1 nan 0.1 0.2 0.2")  # a polygon: min and max passed over its nan
    _yolo(tmp_path / "src", "names:\n  0: scratch\n",
          {f"i{n}": line + "\n" for n, line in enumerate(lines)})
    with pytest.raises(DatasetError) as exc:
        import_dataset("yolo", tmp_path / "src", tmp_path / "out")
    text = _messages(exc)
    for n in range(len(lines)):
        assert f"i{n}.txt:line 1: box (" in text and "is not four finite numbers" in text, text
    assert text.count("is not four finite numbers") == len(lines), text
    assert not (tmp_path / "out").exists()
