"""Importers from common labeled-defect layouts into the canonical form.

Each importer returns a draft :class:`Dataset` whose images still point at their
source files, plus the problems found while parsing. Nothing is written here:
:func:`lineside_inspect.dataset.import_dataset` validates the draft and writes it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import yaml

from lineside_inspect.dataset.canonical import ANNOTATIONS, from_coco, load_json
from lineside_inspect.dataset.model import SPLITS, Box, Dataset, ImageRecord
from lineside_inspect.errors import DatasetError, ImageError, Problem
from lineside_inspect.imageio import IMAGE_SUFFIXES, header_size

DEEPPCB_CLASSES = ("open", "short", "mousebite", "spur", "copper", "pin-hole")
DEEPPCB_LICENCE = ("MIT; the authors ask that DeepPCB be used for research: data and models "
                   "trained on it are for demonstration and evaluation only")

Draft = tuple[Dataset, list[Problem]]


def _size(path: Path, subject: str, problems: list[Problem]) -> tuple[int, int]:
    """Image size from the header; a problem (and 0x0) when the file is missing or bad."""
    try:
        return header_size(path.read_bytes()[:65536])
    except FileNotFoundError:
        problems.append(Problem(str(path), "", "image file is missing", subject))
    except (OSError, ImageError) as exc:
        problems.append(Problem(str(path), "", f"unreadable image: {exc}", subject))
    return 0, 0


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def import_deeppcb(src: Path) -> Draft:
    """DeepPCB: ``*_test.jpg`` (defective, boxes in ``<dir>_not/<id>.txt`` as
    ``x1 y1 x2 y2 type``) and ``*_temp.jpg`` (its defect-free template: a good part,
    and the test image's ``reference``).
    The ``groupNNNNN`` folder (one board) is the group."""
    problems: list[Problem] = []
    images: list[ImageRecord] = []
    tests = sorted(src.rglob("*_test.jpg"))
    if not tests:
        raise DatasetError(f"{src}: no DeepPCB '*_test.jpg' images found")
    for test in tests:
        stem = test.name[: -len("_test.jpg")]
        group_dir = test.parent.parent
        group = group_dir.name if group_dir != src.parent else test.parent.name
        rel = f"{group}/{test.name}"
        width, height = _size(test, rel, problems)
        label_file = test.parent.parent / f"{test.parent.name}_not" / f"{stem}.txt"
        boxes: list[Box] = []
        if not label_file.is_file():
            problems.append(Problem(str(label_file), "", "annotation file is missing", rel))
        else:
            for n, line in enumerate(label_file.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.replace(",", " ").split()
                if len(parts) != 5:
                    msg = f"expected 5 values 'x1 y1 x2 y2 type', got {len(parts)}: {line.strip()!r}"
                    problems.append(Problem(str(label_file), f"line {n}", msg, rel))
                    continue
                try:
                    x1, y1, x2, y2, kind = (int(float(p)) for p in parts)
                except ValueError:
                    problems.append(
                        Problem(str(label_file), f"line {n}", f"not numbers: {line.strip()!r}", rel)
                    )
                    continue
                label = DEEPPCB_CLASSES[kind - 1] if 1 <= kind <= 6 else f"type-{kind}"
                boxes.append(Box(x1, y1, x2, y2, label, origin=f"{label_file}:line {n}"))
        record = ImageRecord(rel, width, height, boxes, group=group, source=test,
                             origin=str(label_file))
        images.append(record)
        template = test.with_name(f"{stem}_temp.jpg")
        if template.is_file():
            trel = f"{group}/{template.name}"
            tw, th = _size(template, trel, problems)
            images.append(ImageRecord(trel, tw, th, [], group=group, source=template))
            record.reference = trel
    info: dict[str, object] = {"source": "DeepPCB (Tang et al. 2019, github.com/tangsanli5201/DeepPCB)",
            "licence": DEEPPCB_LICENCE}
    return Dataset(list(DEEPPCB_CLASSES), images, info=info), problems


def _find_image(name: str, candidates: list[Path]) -> Path:
    for folder in candidates:
        if (folder / name).is_file():
            return folder / name
    return candidates[0] / name


def import_voc(src: Path, classes: list[str] | None = None) -> Draft:
    """Pascal VOC: one XML per image (``Annotations/`` or beside the images)."""
    problems: list[Problem] = []
    images: list[ImageRecord] = []
    xmls = sorted(src.rglob("*.xml"))
    if not xmls:
        raise DatasetError(f"{src}: no Pascal VOC .xml files found")
    seen: list[str] = []
    for xml in xmls:
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            problems.append(Problem(str(xml), f"line {exc.position[0]}", f"invalid XML: {exc}"))
            continue
        name = (root.findtext("filename") or "").strip()
        if not name:
            problems.append(Problem(str(xml), "filename", "missing <filename>"))
            continue
        path = _find_image(name, [src / "JPEGImages", xml.parent, src / "images", src])
        rel = path.relative_to(src).as_posix() if path.is_relative_to(src) else name
        width, height = _size(path, rel, problems)
        boxes = []
        for i, obj in enumerate(root.findall("object")):
            label = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            where = f"object[{i}]"
            try:
                assert bb is not None
                coords = [float(bb.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")]
            except (AssertionError, ValueError):
                problems.append(Problem(str(xml), where, "bndbox needs numeric xmin ymin xmax ymax", rel))
                continue
            if label not in seen:
                seen.append(label)
            x1, y1, x2, y2 = coords
            boxes.append(Box(x1, y1, x2, y2, label, origin=f"{xml}:{where}"))
        images.append(ImageRecord(rel, width, height, boxes, source=path, origin=str(xml)))
    cats = classes if classes else sorted(seen)
    return Dataset(list(cats), images, info={"source": "Pascal VOC"}), problems


def _yolo_names(src: Path) -> list[str]:
    cfg = src / "data.yaml"
    if not cfg.is_file():
        raise DatasetError(f"{src}: YOLO dataset needs a data.yaml with class names")
    try:
        doc = yaml.safe_load(cfg.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DatasetError(f"{cfg}: invalid YAML: {exc}") from exc
    names = doc.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DatasetError(f"{cfg}: field 'names' must be a list or a mapping of id to name")


def import_yolo(src: Path) -> Draft:
    """YOLO txt: ``images/**`` and ``labels/**`` (``class cx cy w h``, normalised), names
    from ``data.yaml``. A ``train``/``val``/``test`` folder under ``images/`` sets the split."""
    names = _yolo_names(src)
    problems: list[Problem] = []
    images: list[ImageRecord] = []
    image_root = src / "images"
    for path in _images_under(image_root):
        rel = path.relative_to(image_root).as_posix()
        width, height = _size(path, rel, problems)
        label_file = (src / "labels" / rel).with_suffix(".txt")
        boxes: list[Box] = []
        if label_file.is_file():
            for n, line in enumerate(label_file.read_text().splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                where = f"line {n}"
                try:
                    if len(parts) != 5:
                        raise ValueError
                    cls, cx, cy, w, h = int(parts[0]), *(float(p) for p in parts[1:])
                except ValueError:
                    problems.append(
                        Problem(str(label_file), where, f"expected 'class cx cy w h', got {line!r}", rel)
                    )
                    continue
                label = names[cls] if 0 <= cls < len(names) else f"class-{cls}"
                x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height
                box = Box(x1, y1, x1 + w * width, y1 + h * height, label, f"{label_file}:{where}")
                boxes.append(box)
        top = rel.split("/", 1)[0]
        split = top if top in SPLITS else None
        images.append(ImageRecord(rel, width, height, boxes, split=split, source=path))
    if not images:
        raise DatasetError(f"{image_root}: no images found")
    return Dataset(names, images, info={"source": "YOLO"}), problems


def import_coco(src: Path) -> Draft:
    """COCO JSON (``SRC`` is the JSON file or a folder holding ``annotations.json``);
    images are looked up under ``images/`` beside it, then beside the JSON."""
    json_path = src if src.is_file() else src / ANNOTATIONS
    if not json_path.is_file():
        raise DatasetError(f"{src}: no COCO JSON found")
    dataset, problems = from_coco(load_json(json_path), str(json_path))
    base = json_path.parent
    for rec in dataset.images:
        rec.source = _find_image(rec.file_name, [base / "images", base])
    return dataset, problems


def import_good(src: Path) -> Draft:
    """A plain folder of defect-free images; the sub-folder (if any) is the group."""
    problems: list[Problem] = []
    images = []
    for path in _images_under(src):
        rel = path.relative_to(src).as_posix()
        width, height = _size(path, rel, problems)
        group = rel.rsplit("/", 1)[0] if "/" in rel else None
        images.append(ImageRecord(rel, width, height, [], group=group, source=path))
    if not images:
        raise DatasetError(f"{src}: no images found")
    return Dataset([], images, info={"source": "good images"}), problems


IMPORTERS: dict[str, Callable[[Path], Draft]] = {
    "deeppcb": import_deeppcb,
    "voc": import_voc,
    "yolo": import_yolo,
    "coco": import_coco,
    "good": import_good,
}
