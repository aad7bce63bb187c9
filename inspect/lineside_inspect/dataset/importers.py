"""Importers from common labeled-defect layouts into the canonical form.

Each importer returns a draft :class:`Dataset` whose images still point at their
source files, plus the problems found while parsing. Nothing is written here:
:func:`lineside_inspect.dataset.import_dataset` validates the draft and writes it.
"""

from __future__ import annotations

import math
import os
import unicodedata
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from itertools import combinations
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from lineside_inspect.dataset.canonical import ANNOTATIONS, from_coco, load_json, polygon_bbox
from lineside_inspect.dataset.exif import SWAPS_SIDES, TURNS, file_orientation, turned_hint
from lineside_inspect.dataset.layout import (
    MAX_BOXES_PER_IMAGE,
    SPLIT_WORDS,
    folders_phrase,
    label_file_too_big,
    odd_file,
    role_of,
    split_of,
    split_word,
    subset_of,
    too_many_boxes,
    walk_files,
)
from lineside_inspect.dataset.layout import image_size as _size
from lineside_inspect.dataset.model import Box, Dataset, ImageRecord
from lineside_inspect.dataset.verdicts import import_mvtec, not_good_only
from lineside_inspect.errors import DatasetError, Problem
from lineside_inspect.imageio import IMAGE_SUFFIXES, UNSUPPORTED_IMAGE_SUFFIXES
from lineside_inspect.user_files import load_yaml

DEEPPCB_CLASSES = ("open", "short", "mousebite", "spur", "copper", "pin-hole")
DEEPPCB_LICENCE = ("MIT; the authors ask that DeepPCB be used for research: data and models "
                   "trained on it are for demonstration and evaluation only")

Draft = tuple[Dataset, list[Problem]]


def _read_text(path: Path) -> str:
    """A text file the import depends on (data.yaml, classes.txt), read as UTF-8 (a BOM
    accepted); another encoding is a clear refusal naming the file, not a traceback."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}; "
            "saved as latin-1 / Windows-1252?); save it as UTF-8 and import again") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def _xml_problem(xml: Path, exc: ET.ParseError) -> str:
    """The parse error, with the likely cause when the bytes are not UTF-8 and the file
    declares no encoding (XML's default is UTF-8, so a latin-1 'é' reads as an invalid token)."""
    msg = f"invalid XML: {exc}"
    try:
        data = xml.read_bytes()
    except OSError:
        return msg
    declared = data.lstrip()[:100].startswith(b"<?xml") and b"encoding" in data.split(b"?>", 1)[0]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        if not declared:
            msg += ("; the file is not UTF-8 and declares no encoding (saved as latin-1?): "
                    "save it as UTF-8, or start it with <?xml version=\"1.0\" "
                    "encoding=\"ISO-8859-1\"?>")
    return msg


EDGE_TOLERANCE = 1.0  # px: float rounding in Roboflow/CVAT exports, not a wrong box


def _clip_to_images(images: list[ImageRecord]) -> list[str]:
    """Clip box edges lying at most :data:`EDGE_TOLERANCE` px outside their image (a
    normalised 1.0000002 times the width) onto the edge; a box further out is left for
    validation to refuse. Returns a note when any was clipped."""
    clipped: list[Box] = []
    for rec in images:
        if rec.width <= 0 or rec.height <= 0:
            continue  # size unknown: the unreadable image is the problem
        for box in rec.boxes:
            before = box.xyxy()
            if -EDGE_TOLERANCE <= box.x1 < 0:
                box.x1 = 0.0
            if -EDGE_TOLERANCE <= box.y1 < 0:
                box.y1 = 0.0
            if rec.width < box.x2 <= rec.width + EDGE_TOLERANCE:
                box.x2 = float(rec.width)
            if rec.height < box.y2 <= rec.height + EDGE_TOLERANCE:
                box.y2 = float(rec.height)
            if box.xyxy() != before:
                clipped.append(box)
    if not clipped:
        return []
    return [f"{len(clipped)} box edge(s) up to {EDGE_TOLERANCE:g} px outside the image clipped "
            f"onto it, e.g. {clipped[0].origin}"]


def _exif_turned(images: list[ImageRecord], stated: set[int]) -> list[str]:
    """A warning for JPEGs whose EXIF orientation says to show them turned: Lineside reads
    pixels as stored, where Ultralytics, Roboflow and viewers (and so whoever drew the
    boxes) see the turned picture. ``stated`` holds the ``id()`` of records whose labels
    gave a size: one matching the stored sides (not square) shows the stored frame."""
    turned: list[tuple[ImageRecord, int]] = []
    for rec in images:
        turn = file_orientation(rec.source) if rec.source else 1
        confirmed = turn in SWAPS_SIDES and id(rec) in stated and rec.width != rec.height
        if turn != 1 and not confirmed:
            turned.append((rec, turn))
    if not turned:
        return []
    rec, turn = turned[0]
    return [f"warning: {len(turned)} JPEG(s) whose EXIF orientation says to show them turned "
            f"(e.g. {rec.file_name}, shown {TURNS[turn]}): Lineside reads pixels as stored, as a "
            "line camera writes them, and places the boxes on that picture; Ultralytics, "
            "Roboflow, labelling tools and image viewers show the turned one. Boxes drawn on "
            "the turned picture are misplaced here: save those images turned (e.g. exiftran "
            "-ai, or mogrify -auto-orient) and import again"]


# a 16-bit PNG whose brightest value is below this keeps fewer than 64 grey levels in the
# 8 bits Lineside reads (the top 8 of its 16): a 12- or 14-bit camera's values written as
# they are, rather than scaled to 16 bits as the PNG format asks
DIM_16BIT = 64 << 8


def dim_16bit_pngs(draft: Dataset) -> list[str]:
    """A warning for 16-bit PNGs whose values use only the low bits. Lineside decodes every
    image to 8 bits per pixel (OpenCV keeps the top byte), as the edge does, so a 12-bit
    camera's 0-4095 becomes 0-15: the model trains and judges on nearly black pictures
    with a few grey levels, and nothing said so."""
    import numpy as np

    from lineside_inspect.errors import ImageError
    from lineside_inspect.imageio import check_decodable
    from lineside_inspect.opencv import cv2

    dim: list[tuple[ImageRecord, int]] = []
    for rec in draft.images:
        try:
            path = draft.image_path(rec)
            with open(path, "rb") as f:
                head = f.read(26)
            # (a file cut inside its IHDR has no byte 24)
            if not (len(head) > 24 and head.startswith(b"\x89PNG\r\n\x1a\n")
                    and head[12:16] == b"IHDR" and head[24] == 16):
                continue
            data = path.read_bytes()
            # the decoder's own checks first: OpenCV's PNG reader allocates what a chunk
            # declares before reading it (a 4 GB text chunk took 3.9 GB)
            check_decodable(data)
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except (OSError, ValueError, ImageError, cv2.error):
            continue  # unreadable: validation names it
        if pixels is not None and pixels.dtype == np.uint16:
            top = int(pixels[..., :3].max()) if pixels.ndim == 3 else int(pixels.max())
            if top < DIM_16BIT:
                dim.append((rec, top))
    if not dim:
        return []
    rec, top = dim[0]
    return [f"warning: {len(dim)} 16-bit PNG(s) whose values use only the low bits (e.g. "
            f"{rec.file_name}: at most {top} of 65535): Lineside reads 8 bits per pixel, the "
            f"top 8 of the 16, so they train and are judged as nearly black pictures with at "
            f"most {(top >> 8) + 1} grey levels; save them scaled to the full range (a "
            "12-bit camera's values x 16) or as 8-bit images scaled by the camera's bit depth, "
            "and import again"]


def _unsupported_beside(stem: str, folders: list[Path]) -> Path | None:
    """An image of ``stem`` in a format Lineside does not read (TIFF, WebP ...), if any."""
    for folder in folders:
        for suffix in UNSUPPORTED_IMAGE_SUFFIXES:
            for name in (stem + suffix, stem + suffix.upper()):
                if (folder / name).is_file():
                    return folder / name
    return None


def _unsupported_named(name: str, xml_stem: str, unsupported: dict[str, Path]) -> Path | None:
    """The TIFF (WebP ...) file a ``<filename>`` or the XML's own name points at, if any."""
    base = PurePosixPath(name.replace("\\", "/")).name.lower()
    for stem in (PurePosixPath(base).stem, base, xml_stem.lower()):
        if stem in unsupported:
            return unsupported[stem]
    return None


def _no_image_message(label_file: Path, what: str) -> str:
    """Why a label file has no image: an unsupported format beside it, or none at all."""
    near = [label_file.parent, label_file.parent.parent / "images", label_file.parent.parent]
    other = _unsupported_beside(label_file.stem, near)
    if other is not None:
        return (f"{what} has no image: {other.name} is {other.suffix.lstrip('.').upper()}, "
                f"which is not supported (jpg, png or bmp only); convert it")
    return (f"{what} has no image (no {label_file.stem}.jpg/.png/.bmp where its images are): "
            "its boxes would be lost; add the image or remove the file")


def _drop_blank_labels(images: list[ImageRecord], problems: list[Problem]) -> None:
    """A box whose class name is empty or blank is a problem of the file it came from
    (and of its image), and leaves the draft: no dataset gets a nameless class."""
    for rec in images:
        kept = []
        for box in rec.boxes:
            if box.label.strip():
                kept.append(box)
                continue
            file, _, loc = (box.origin or rec.origin or rec.file_name).rpartition(":")
            problems.append(Problem(file or loc, loc if file else "",
                                    f"class name {box.label!r} is empty: name the class",
                                    rec.file_name))
        rec.boxes = kept


def _case_variants(categories: list[str]) -> list[str]:
    """A warning when class names differ only in case (scratch/Scratch/SCRATCH): almost
    always one class typed several ways, which would train as separate classes."""
    by_fold: dict[str, list[str]] = defaultdict(list)
    for name in categories:
        by_fold[name.strip().casefold()].append(name)
    groups = [v for v in by_fold.values() if len(v) > 1]
    if not groups:
        return []
    shown = "; ".join(" / ".join(repr(n) for n in g) for g in groups)
    return [f"warning: class names differing only in case are separate classes: {shown} "
            "(rename them to one spelling if they are one defect)"]


THIN = 3  # a class with fewer boxes than this is worth a word: a typo, or a class to merge


def _thin_classes(images: list[ImageRecord], categories: list[str]) -> list[str]:
    """Warnings for classes no box uses (a model would learn a class it never sees:
    Roboflow's YOLO exports list a dataset-level class 0) and for classes with almost no
    boxes (a name typed another way in one file becomes a class of its own)."""
    counts = Counter(b.label for r in images for b in r.boxes)
    unused = [c for c in categories if not counts[c]]
    thin = [f"{c!r} ({counts[c]})" for c in categories if 0 < counts[c] < THIN]
    notes = []
    if unused and counts:
        notes.append("warning: class(es) no box uses: " + ", ".join(map(repr, unused))
                     + " (the model will have a class it never sees: remove it from the "
                     "class list if it is not a defect of this set)")
    if thin and len(categories) > 1:
        notes.append(f"warning: class(es) with fewer than {THIN} boxes: " + ", ".join(thin)
                     + " (another class's name typed another way?)")
    return notes


def import_deeppcb(src: Path) -> Draft:
    """DeepPCB: ``*_test.jpg`` (defective, boxes in ``<dir>_not/<id>.txt`` as
    ``x1 y1 x2 y2 type``) and ``*_temp.jpg`` (its defect-free template: a good part,
    and the test image's ``reference``).
    The ``groupNNNNN`` folder (one board) is the group."""
    problems: list[Problem] = []
    images: list[ImageRecord] = []
    tests = sorted(p for p in walk_files(src) if p.name.endswith("_test.jpg"))
    if not tests:
        raise DatasetError(f"{src}: no DeepPCB '*_test.jpg' images found")
    for test in tests:
        stem = test.name[: -len("_test.jpg")]
        group_dir = test.parent.parent
        group = group_dir.name if group_dir != src.parent else test.parent.name
        rel = f"{group}/{test.name}"
        width, height = _size(test, rel, problems)
        if not width:
            continue  # unreadable: one problem, not a decode and a box problem as well
        label_file = test.parent.parent / f"{test.parent.name}_not" / f"{stem}.txt"
        boxes: list[Box] = []
        if not label_file.is_file():
            problems.append(Problem(str(label_file), "", "annotation file is missing", rel))
        else:
            for n, line in enumerate(label_file.read_text(errors="replace").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.replace(",", " ").split()
                if len(parts) != 5:
                    msg = f"expected 5 values 'x1 y1 x2 y2 type', got {len(parts)}: {line.strip()!r}"
                    problems.append(Problem(str(label_file), f"line {n}", msg, rel))
                    continue
                try:
                    x1, y1, x2, y2, kind = (int(float(p)) for p in parts)
                except (ValueError, OverflowError):  # OverflowError: 'inf', '1e999'
                    problems.append(Problem(str(label_file), f"line {n}",
                                            f"not finite numbers: {line.strip()!r}", rel))
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
            if tw:
                images.append(ImageRecord(trel, tw, th, [], group=group, source=template))
                record.reference = trel
    info: dict[str, object] = {"source": "DeepPCB (Tang et al. 2019, github.com/tangsanli5201/DeepPCB)",
            "licence": DEEPPCB_LICENCE}
    return Dataset(list(DEEPPCB_CLASSES), images, info=info), problems


def _fold(name: str) -> str:
    """A file name as names are matched: any case, and Unicode composed (NFC). A Mac
    writes 'é' as 'e' and a combining accent (NFD) where a labelling tool or a JSON
    writes one character: the same name, which was "not found" beside itself."""
    return unicodedata.normalize("NFC", name).lower()


def _rel(path: Path, src: Path) -> str:
    return path.relative_to(src).as_posix()


def _mirrored(rel: str) -> tuple[str, ...]:
    """A file's folders with images/annotations folders blanked: an XML and its image
    share them (``annotations/crack/`` and ``images/crack/``)."""
    return tuple(_label_key(rel).split("/")[:-1])


def _closest(hits: list[Path], near: Path, src: Path, folder: str | None = None) -> Path | None:
    """Of several files of one name, the one at ``near``'s own place: its path below the
    annotations folder repeated below the images folder (class sub-folders reuse names:
    ``annotations/crack/001.xml`` is ``images/crack/001.jpg``, not ``images/stain/``);
    then the one in the folder the annotation names (VOC's ``<folder>``, ``<path>``);
    then the one sharing the longest folder prefix with ``near``. None when two tie: a
    pick by sorted order put a stain's box on crack/001.jpg, unsaid (second review)."""
    if len(hits) == 1:
        return hits[0]
    mirror = _mirrored(_rel(near, src)) if near.is_relative_to(src) else None
    named = (folder or "").strip().lower()

    def shared(p: Path) -> tuple[bool, bool, int]:
        n = 0
        for a, b in zip(p.parts, near.parts, strict=False):
            if a != b:
                break
            n += 1
        return (mirror is not None and _mirrored(_rel(p, src)) == mirror,
                bool(named) and p.parent.name.lower() == named, n)

    ranked = sorted(hits, key=shared, reverse=True)
    return None if shared(ranked[0]) == shared(ranked[1]) else ranked[0]


class _ImageIndex:
    """The images of a source folder by split and by name or stem (any case), so that an
    annotation finds its image wherever the layout put it, but never in another sub-set."""

    def __init__(self, src: Path, pictures: list[Path]) -> None:
        self.src = src
        self.by_name: dict[tuple[str | None, str], list[Path]] = defaultdict(list)
        self.by_stem: dict[tuple[str | None, str], list[Path]] = defaultdict(list)
        self.rels: dict[str | None, list[str]] = defaultdict(list)
        self.split: dict[Path, str | None] = {}
        for p in pictures:
            rel = _rel(p, src)
            split = split_of(rel)
            self.by_name[(split, _fold(p.name))].append(p)
            self.by_stem[(split, _fold(p.stem))].append(p)
            self.rels[split].append(rel)
            self.split[p] = split

    def find(self, name: str, near: Path, split: str | None,
             folder: str | None = None) -> tuple[Path | None, str]:
        """The image ``name`` (a ``<filename>``, perhaps with a folder, perhaps without an
        extension) for an annotation file ``near`` in ``split``: by name, then by stem, then
        by the annotation file's own stem. Returns the path and how it was found; None and
        ``"ambiguous: a, b"`` when several fit alike (see :func:`_closest`)."""
        base = _fold(name.replace("\\", "/").rsplit("/", 1)[-1].strip())
        stem = base[: -len(Path(base).suffix)] if Path(base).suffix in IMAGE_SUFFIXES else base
        # a sub-set's annotations look in that sub-set, then in shared (split-less) folders;
        # split-less annotations look everywhere
        splits = [split, None] if split is not None else [None, *sorted(s for s in self.rels if s)]
        for key, table, how in ((base, self.by_name, "name"), (stem, self.by_stem, "stem"),
                                (_fold(near.stem), self.by_stem, "annotation name")):
            for s in splits:
                hits = table.get((s, key))
                if hits:
                    best = _closest(hits, near, self.src, folder)
                    if best is None:
                        return None, "ambiguous: " + ", ".join(_rel(h, self.src) for h in hits[:3])
                    return best, how
        return None, ""

    def folders(self, split: str | None) -> str:
        rels = self.rels.get(split) or [r for v in self.rels.values() for r in v]
        return folders_phrase(rels) if rels else "no image folder (no images found)"


VocLists = tuple[dict[str, tuple[str, Path]], dict[str, list[Path]]]


def _voc_imagesets(files: list[Path]) -> VocLists:
    """Stem -> (split, list file) from VOC's own split lists in ``ImageSets/Main/``:
    ``train.txt``, ``val.txt``, ``test.txt`` (any split word) and ``trainval.txt``, which in
    VOC is train + val: a specific list wins, so trainval.txt only puts the images no other
    list names into train. Per-class lists (``aeroplane_train.txt``) are not read.
    Also the stems two lists put in different splits (trainval.txt beside test.txt too),
    with those lists."""
    specific: dict[str, dict[Path, str]] = defaultdict(dict)  # stem -> {list file: split}
    combined: dict[str, Path] = {}
    for f in files:
        word = f.stem.lower()
        split = SPLIT_WORDS.get(word) if f.suffix.lower() == ".txt" else None
        if split and f.parent.name.lower() == "main" and f.parent.parent.name.lower() == "imagesets":
            # (a BOM, from Notepad, would hide the first name)
            for line in f.read_bytes().decode("utf-8-sig", errors="replace").splitlines():
                if line.strip():
                    stem = line.split()[0].lower()
                    if word == "trainval":
                        combined.setdefault(stem, f)
                    else:
                        specific[stem].setdefault(f, split)
    out: dict[str, tuple[str, Path]] = {}
    conflicts: dict[str, list[Path]] = {}
    for stem, lists in specific.items():
        if len(set(lists.values())) > 1:
            conflicts[stem] = sorted(lists)
        else:
            out[stem] = next((split, f) for f, split in lists.items())
    for stem, f in combined.items():
        if stem not in specific:
            out[stem] = ("train", f)
        elif stem not in conflicts and out[stem][0] not in ("train", "val"):
            conflicts[stem] = sorted([f, out.pop(stem)[1]])  # trainval's and test's
    return out, conflicts


# labelling tools' own formats, which no -f reads: what the tool exports that one does
FOREIGN_EXPORTS = {
    "labelme": ("LabelMe JSON (one file per image, with 'shapes')", "convert it to COCO "
                "(e.g. pip install labelme2coco; labelme2coco FOLDER) and import the COCO JSON "
                "it writes with -f coco"),
    "label-studio": ("a Label Studio JSON export (a list of tasks)", "export the project "
                     "as COCO, YOLO or Pascal VOC XML instead (the project's Export button) "
                     "and import that with -f coco, -f yolo or -f voc"),
    "cvat": ("CVAT's own XML ('CVAT for images')", "export the task as 'COCO 1.0', "
             "'Pascal VOC 1.1' or 'YOLO 1.1' instead and import that with -f coco, -f voc "
             "or -f yolo"),
}
MAX_SNIFFED = 5  # label files opened to tell which tool wrote them
MAX_SNIFFED_BYTES = 64 << 20


def _foreign_export(files: list[Path]) -> tuple[str, Path] | None:
    """The labelling tool whose own format the .json / .xml files of a source are in
    (LabelMe, Label Studio, CVAT), and one such file; None when none looks like one."""
    jsons = [f for f in files if f.suffix.lower() == ".json"][:MAX_SNIFFED]
    xmls = [f for f in files if f.suffix.lower() == ".xml"][:MAX_SNIFFED]
    for f in jsons + xmls:
        try:
            if f.stat().st_size > MAX_SNIFFED_BYTES:
                continue
            if f.suffix.lower() == ".xml":
                root = ET.parse(f).getroot()
                if root.tag == "annotations" and (root.find("image") is not None
                                                  or root.find("meta") is not None):
                    return "cvat", f
                continue
            doc = load_json(f)
        except (OSError, ET.ParseError, DatasetError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("shapes"), list) and "imagePath" in doc:
            return "labelme", f
        first = doc[0] if isinstance(doc, list) and doc else None
        # a Label Studio task: its JSON export's ("data" beside "annotations") or its
        # JSON-MIN's ("annotation_id", "annotator"). "annotations" alone is not one: Apple's
        # CreateML JSON (Roboflow exports it) is a list of {"image", "annotations"}
        if isinstance(first, dict) and ({"data", "annotations"} <= set(first)
                                        or {"annotation_id", "annotator"} & set(first)):
            return "label-studio", f
    return None


def _foreign_hint(src: Path, files: list[Path]) -> str:
    """What to do with a labelling tool's own format, when the source is in one."""
    found = _foreign_export(files)
    if found is None:
        return ""
    tool, example = found
    what, todo = FOREIGN_EXPORTS[tool]
    shown = _rel(example, src) if example.is_relative_to(src) else str(example)
    return f" {shown} is {what}, which Lineside does not read: {todo}."


def _looked_for(src: Path, files: list[Path], what: str, hint: str, asked: str = "") -> str:
    """Why ``-f asked`` found nothing to import: what was searched and found, and what the
    files are (a labelling tool's own format, or another -f than the one asked)."""
    others = Counter(f.suffix.lower() for f in files)
    seen = ", ".join(f"{n} {ext or 'no-extension'}" for ext, n in others.most_common(4)) or "no files"
    guess = _foreign_hint(src, files)
    if not guess and others.get(".xml") and asked != "voc":
        guess = " It holds .xml files: Pascal VOC? (-f voc)"
    elif not guess and others.get(".json") and asked != "coco":
        guess = " It holds .json files: COCO? (-f coco)"
    elif not guess and others.get(".txt") and asked != "yolo" and any(
            f.suffix.lower() in (".yaml", ".yml") for f in files):
        guess = " It holds .txt labels and a YAML file: YOLO? (-f yolo)"
    return (f"{src}: {what} (every folder searched, names in any case, symlinks followed; "
            f"found {seen})." + (f" {hint}" if hint else "") + guess)


def _images_beside(src: Path) -> str:
    """`` (perhaps PARENT, beside IMAGES/)`` when the folder given has a sibling named as an
    images folder: the user gave ANNOTATIONS/ where its parent was meant."""
    try:
        near = sorted(d.name for d in src.parent.iterdir()
                      if d != src and d.is_dir() and role_of(d.name) == "images")
    except OSError:
        return ""
    return f" (perhaps {src.parent}, which holds {near[0]}/)" if near else ""


def import_voc(src: Path, classes: list[str] | None = None) -> Draft:
    """Pascal VOC: one XML per image, in ``Annotations/`` beside ``JPEGImages/``, or any
    of the common variants (``ANNOTATIONS/`` + ``IMAGES/``, ``annotations/`` + ``images/``,
    XMLs beside their images, ``train/`` / ``valid/`` / ``Validation_*`` sub-sets, which
    become splits). A ``<filename>`` is found by name, by stem when it has no extension,
    or by the XML's own name; the layout found is described in ``info["layout"]``."""
    if not src.is_dir():
        raise DatasetError(f"{src}: a Pascal VOC set is a folder")
    files = walk_files(src)
    xmls = [p for p in files if p.suffix.lower() == ".xml"]
    pictures = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    unsupported = {p.stem.lower(): p for p in files if p.suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES}
    if not xmls:
        raise DatasetError(_looked_for(
            src, files, "no Pascal VOC .xml annotation files found",
            "A VOC set has one XML per image, in Annotations/ (or ANNOTATIONS/, annotations/) "
            "beside JPEGImages/ (or IMAGES/, images/), or beside the images."))
    if not pictures and not unsupported:
        # an annotations folder given alone: one problem per XML ("image not found ... in
        # no image folder") said 92 times what one line says (session 41, a new user)
        raise DatasetError(_looked_for(
            src, files, f"no images found beside the {len(xmls)} XML file(s)",
            "Give the folder that holds both the images and the XMLs" + _images_beside(src)
            + ", not the annotations folder alone.", "voc"))
    index = _ImageIndex(src, pictures)
    listed, listed_twice = _voc_imagesets(files)
    problems: list[Problem] = []
    images: list[ImageRecord] = []
    found_by: Counter[str] = Counter()
    xml_rels: dict[str | None, list[str]] = defaultdict(list)
    # images a sub-set folder (Validation_Images/) put in a split while their XMLs sit in
    # the main set's ANNOTATIONS/: the layout named the XMLs' folders only, and never said
    # that a split came from there
    from_image_folder: dict[str, set[str]] = defaultdict(set)
    used: set[Path] = set()
    owner: dict[Path, int] = {}  # image -> index in images of the record annotating it
    stated: set[int] = set()  # id() of records whose XML gives a <size>
    not_voc = difficult = 0
    # stems of XMLs that cannot be read: their images have an XML, just a broken one, and
    # were called "without an XML" beside the problems naming those XMLs (session 49)
    unread: set[str] = set()
    for xml in xmls:
        xml_rel = _rel(xml, src)
        if label_file_too_big(xml, xml_rel, problems):
            unread.add(xml.stem.lower())
            continue
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            unread.add(xml.stem.lower())
            problems.append(Problem(str(xml), f"line {exc.position[0]}", _xml_problem(xml, exc),
                                    xml_rel))
            continue
        if root.tag.lower() != "annotation":
            not_voc += 1  # another tool's XML (a project file, a class list): not an image's boxes
            continue
        name = (root.findtext("filename") or "").strip() or xml.stem
        split = split_of(xml_rel)
        xml_rels[split].append(xml_rel)
        # the folder the image was in when labelled (labelImg writes both)
        folder = PureWindowsPath((root.findtext("path") or "").strip()).parent.name or \
            (root.findtext("folder") or "").strip()
        path, how = index.find(name, xml, split, folder)
        if how.startswith("ambiguous"):
            problems.append(Problem(
                str(xml), "filename", f"image {name!r} could be any of "
                f"{how.removeprefix('ambiguous: ')}: nothing in the XML tells which (its "
                "<folder> or <path>, or an annotations folder mirroring the images "
                "folder); give <filename> with its folder", xml_rel))
            continue
        if path is None and (other := _unsupported_named(name, xml.stem, unsupported)):
            problems.append(Problem(
                str(xml), "filename", f"image {other.name!r} is "
                f"{other.suffix.lstrip('.').upper()}, which is not supported (jpg, png or bmp "
                "only): convert it", xml_rel))
            continue
        if path is None:
            where = f"sub-set {split!r}" if split else "the set"
            problems.append(Problem(
                str(xml), "filename",
                f"image {name!r} not found in {where}: looked for that name, its stem with any "
                f"image extension, and {xml.stem!r}, in {index.folders(split)}", xml_rel))
            continue
        found_by[how] += 1
        used.add(path)
        rel = _rel(path, src)
        split = split or index.split[path]
        width, height = _size(path, rel, problems)
        if not width:
            continue  # unreadable: one problem, not a decode and a box problem as well
        if (said := _voc_size(root)) is not None and said != (width, height):
            # boxes are in the pixels the XML was drawn on: on an image resized, turned or
            # swapped since, every box would land in the wrong place
            turned = turned_hint(path, said, (width, height))
            problems.append(Problem(
                str(xml), "size", f"<size> says {said[0]}x{said[1]} but image {rel!r} is "
                f"{width}x{height}{turned}: the boxes were drawn on another picture; fix the "
                "image or the XML", rel))
            continue
        objects = root.findall("object")
        if len(objects) > MAX_BOXES_PER_IMAGE:
            problems.append(Problem(str(xml), "object", too_many_boxes(len(objects)), rel))
            continue
        boxes = []
        for i, obj in enumerate(objects):
            label = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            where = f"object[{i}]"
            try:
                assert bb is not None
                coords = [float(bb.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")]
            except (AssertionError, ValueError):
                problems.append(Problem(str(xml), where, "bndbox needs numeric xmin ymin xmax ymax", rel))
                continue
            if not label:
                problems.append(Problem(str(xml), f"{where}.name",
                                        "<name> is empty: name the object's class", rel))
                continue
            x1, y1, x2, y2 = coords
            boxes.append(Box(x1, y1, x2, y2, label, origin=f"{xml}:{where}"))
            if (obj.findtext("difficult") or "").strip() == "1":
                difficult += 1
        if path.stem.lower() in listed:  # VOC's own split lists win over folder names
            split = listed[path.stem.lower()][0]
        elif split is not None and split_of(xml_rel) is None:
            from_image_folder[split].add(rel)
        record = ImageRecord(rel, width, height, boxes, split=split, source=path, origin=str(xml))
        if said is not None:
            stated.add(id(record))
        if path not in owner:
            owner[path] = len(images)
            images.append(record)
            continue
        # two XMLs name one image: the one named after the image is its annotation
        first = images[owner[path]]
        first_xml = Path(first.origin or "")
        first_rel = _rel(first_xml, src) if first_xml.is_relative_to(src) else str(first_xml)
        first_owns = first_xml.stem.lower() == path.stem.lower()
        new_owns = xml.stem.lower() == path.stem.lower()
        if new_owns and not first_owns:
            images[owner[path]] = record
            wrong, wrong_rel, right_rel = first_xml, first_rel, xml_rel
        elif first_owns and not new_owns:
            wrong, wrong_rel, right_rel = xml, xml_rel, first_rel
        else:  # neither is named after the image: which one is right cannot be told
            problems.append(Problem(str(xml), "filename", f"{rel!r} is also the image of "
                                    f"{first_rel}: one of the two XMLs names the wrong image",
                                    rel))
            continue
        problems.append(Problem(str(wrong), "filename",
                                f"names image {rel!r}, which {right_rel} (named after it) "
                                "annotates: fix this XML's <filename>", wrong_rel))
    if not_voc and not xml_rels and not problems:
        # every XML another tool's (CVAT's own XML): "no images found" said nothing of why
        raise DatasetError(_looked_for(
            src, files, f"no Pascal VOC annotation XML found ({not_voc} .xml file(s), none "
            "with VOC's <annotation> root)", "", "voc"))
    notes = _assign_rest_to_train(images) + _clip_to_images(images)
    notes += _exif_turned(images, stated)
    if found_by["stem"]:
        notes.append(f"{found_by['stem']} <filename>(s) without the image's extension found by stem")
    if found_by["annotation name"]:
        notes.append(f"{found_by['annotation name']} <filename>(s) naming no image; the image "
                     "named as the XML was taken")
    notes += _voc_lists_applied(images, listed, listed_twice, src, problems)
    unlabeled = [p for p in pictures if p not in used and p.stem.lower() not in unread]
    if unlabeled:
        notes.append(f"{len(unlabeled)} image(s) without an XML left out, e.g. "
                     f"{_rel(unlabeled[0], src)} (defect-free images import with -f good)")
    if not_voc:
        notes.append(f"{not_voc} XML file(s) that are not VOC annotations ignored")
    if difficult:  # VOC's own scoring ignores them; here they are defects like any other
        notes.append(f"{difficult} box(es) marked <difficult>1</difficult> imported as ordinary "
                     "boxes (trained on and scored; remove them from the XML to leave them out)")
    cats = classes if classes else sorted({b.label for r in images for b in r.boxes})
    notes += _case_variants(cats) + _thin_classes(images, cats)
    parts = [f"{_split_name(s)}: {len(v)} XML in {folders_phrase(v)}, images in "
             f"{index.folders(s)}" for s, v in sorted(xml_rels.items(), key=_split_order)]
    parts += [f"{_split_name(s)}: {len(v)} image(s) in {folders_phrase(v)}, their XMLs in "
              f"{folders_phrase(xml_rels[None])}"
              for s, v in sorted(from_image_folder.items(), key=_split_order)]
    # none read (every XML a problem): "Pascal VOC; " said nothing, and ended in "; )"
    read = parts or [f"no image's annotation read from the {len(xmls)} .xml file(s)"]
    layout = "; ".join(["Pascal VOC", *read, *notes])
    return Dataset(list(cats), images, info={"source": "Pascal VOC", "layout": layout}), problems


def _voc_lists_applied(images: list[ImageRecord], listed: dict[str, tuple[str, Path]],
                       listed_twice: dict[str, list[Path]], src: Path,
                       problems: list[Problem]) -> list[str]:
    """What the ``ImageSets/Main/`` lists did: how many images each list gave a split (only
    the lists that gave one), and a problem for an image two lists put in different splits."""
    if not listed and not listed_twice:
        return []
    applied: Counter[tuple[str, Path]] = Counter()
    for rec in images:
        stem = rec.source.stem.lower() if rec.source else ""
        if stem in listed_twice:
            names = " and ".join(_rel(f, src) for f in listed_twice[stem])
            problems.append(Problem(str(listed_twice[stem][0]), "", f"{rec.file_name!r} is "
                                    f"listed in {names}, which name different splits: a "
                                    "model would be checked on an image it trained on; list "
                                    "it in one only", rec.file_name))
        elif stem in listed:
            split, f = listed[stem]
            applied[(split, f)] += 1
    if not applied:
        return ["the ImageSets/Main/ split lists name none of the images: not used"]
    order = sorted(applied.items(), key=lambda kv: (("train", "val", "test").index(kv[0][0]), kv[0][1]))
    folder = _rel(order[0][0][1].parent, src)
    return [f"splits from {folder}/: " + ", ".join(
        f"{n} {split!r} ({f.name}{', in no other list' if f.stem.lower() == 'trainval' else ''})"
        for (split, f), n in order)]


def _listed(doc: object, key: str) -> list[Any]:
    """``doc[key]`` when ``doc`` is an object holding a list there, else ``[]``: a COCO file
    with ``"annotations": null`` (or a list at top level) is reported by ``from_coco``, and
    must not fail again here."""
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, list) else []


def _voc_size(root: ET.Element) -> tuple[int, int] | None:
    """The ``<size>`` an XML says its image has; None when absent, zero or not a number
    (several tools write 0 x 0, which says nothing)."""
    try:
        w = int(float(root.findtext("size/width") or ""))
        h = int(float(root.findtext("size/height") or ""))
    except (ValueError, OverflowError):  # OverflowError: 'inf' or '1e400'
        return None
    return (w, h) if w > 0 and h > 0 else None


def _split_name(split: str | None) -> str:
    return f"sub-set {split!r}" if split else "main set"


def _split_order(item: tuple[str | None, object]) -> int:
    return (None, "train", "val", "test").index(item[0])


def _assign_rest_to_train(images: list[ImageRecord]) -> list[str]:
    """Beside separate val/test sub-sets, the images of the main folders are the training
    set (not left out of training for want of a split)."""
    splits = {r.split for r in images}
    rest = [r for r in images if r.split is None]
    if rest and splits - {None}:
        for r in rest:
            r.split = "train"
        return [f"the {len(rest)} image(s) outside the sub-sets imported as split 'train'"]
    return []


def _names_from_yaml(cfg: Path) -> dict[int, str] | None:
    """Class id -> name from a YAML's ``names`` (a list, or a mapping of id to name).
    A mapping is read by integer key, never by its order: quoted keys ('10' sorts before
    '2' as text) and sparse ids ({0, 2, 3}) keep each id on its own name."""
    try:
        doc = load_yaml(_read_text(cfg)) or {}
    except yaml.YAMLError as exc:
        raise DatasetError(f"{cfg}: invalid YAML: {exc}") from exc
    names = doc.get("names") if isinstance(doc, dict) else None
    if names is None:
        return None
    if isinstance(names, dict):
        out: dict[int, str] = {}
        for key, name in names.items():
            try:
                cid = int(str(key).strip())
            except ValueError:
                raise DatasetError(f"{cfg}: 'names' key {key!r} is not a class id (an integer); "
                                   "write names as a list, or as a mapping of id to name") from None
            text = _class_name(cfg, cid, name)
            if cid in out:  # 2 and '2': one of the two names would silently go
                raise DatasetError(f"{cfg}: 'names' gives class id {cid} twice "
                                   f"({out[cid]!r} and {text!r})")
            out[cid] = text
        return dict(sorted(out.items()))
    if isinstance(names, list):
        return {i: _class_name(cfg, i, n) for i, n in enumerate(names)}
    raise DatasetError(f"{cfg}: field 'names' must be a list or a mapping of id to name")


def _class_name(cfg: Path, cid: int, name: object) -> str:
    """A class name as YAML gave it: a string (or a number, as written). YAML reads an
    empty entry as null and ``no``/``off`` as false: ``str`` of them made classes called
    'None' and 'False'; a list or mapping (an alias bomb, say) made one huge name."""
    if isinstance(name, bool) or not isinstance(name, str | int | float):
        raise DatasetError(f"{cfg}: class id {cid}: name {name!r} is not text; quote it "
                           "(YAML reads an empty entry as null and no/yes/on/off as true/false)"
                           if isinstance(name, bool) or name is None else
                           f"{cfg}: class id {cid}: name is a {type(name).__name__}, not text")
    # as VOC's reader and COCO's take names: no invisible tabs (a blank one is said later)
    return str(name).strip() or str(name)


def _yolo_names(src: Path, files: list[Path]) -> tuple[dict[int, str], Path]:
    """Class id -> name from ``data.yaml`` (or another YAML with ``names``), else from
    ``classes.txt`` / ``obj.names`` (one name a line), the shallowest found; and that file."""
    by_depth = sorted(files, key=lambda p: len(p.relative_to(src).parts))
    for f in by_depth:
        if f.suffix.lower() in (".yaml", ".yml"):
            names = _names_from_yaml(f)
            if names is not None:
                return names, f
    for f in by_depth:
        if f.name.lower() in ("classes.txt", "obj.names", "classes.names"):
            lines = [line.strip() for line in _read_text(f).splitlines() if line.strip()]
            return dict(enumerate(lines)), f
    raise DatasetError(_looked_for(
        src, files, "a YOLO set needs its class names: a data.yaml with 'names' (or "
        "classes.txt / obj.names, one name a line); none found", "", "yolo"))


def _label_key(rel: str) -> str:
    """Image and label files meet on this key: ``images``/``labels`` folders (any case,
    with split words) blanked, the extension dropped."""
    path = PurePosixPath(_fold(rel))
    folders = ["*" if role_of(f) else f for f in path.parts[:-1]]
    return "/".join([*folders, path.stem])


def _class_id(text: str) -> int:
    """A YOLO class id: an integer, or a float without a fraction (``0.0``: written by
    scripts that keep ids as floats, and read by Ultralytics); ValueError otherwise."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"class id {text!r} is not a whole number")
    return int(value)


def _yolo_boxes(label_file: Path, names: dict[int, str], names_file: str, width: int,
                height: int, rel: str, problems: list[Problem]) -> list[Box]:
    boxes: list[Box] = []
    if label_file_too_big(label_file, rel, problems):
        return boxes
    # utf-8-sig: a BOM (Notepad, some exporters) glued to the first class id refused the file
    text = label_file.read_bytes().decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if (count := sum(1 for line in lines if line.strip())) > MAX_BOXES_PER_IMAGE:
        problems.append(Problem(str(label_file), "", too_many_boxes(count), rel))
        return boxes
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"line {n}"
        try:
            cls = _class_id(parts[0])
            values = [float(p) for p in parts[1:]]
            if len(values) == 4:
                cx, cy, w, h = values
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            elif len(values) >= 6 and len(values) % 2 == 0:  # a polygon (segmentation export)
                xs, ys = values[0::2], values[1::2]
                x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
                if not all(map(math.isfinite, values)):  # min and max pass over a nan
                    x1 = y1 = x2 = y2 = math.nan  # refused by name as a box below
            else:
                raise ValueError
        except ValueError:
            problems.append(Problem(str(label_file), where,
                                    "expected 'class cx cy w h' (a whole class id and 4 numbers, or "
                                    f"a polygon), got {line!r}", rel))
            continue
        if cls not in names:
            known = ", ".join(str(k) for k in names)
            problems.append(Problem(str(label_file), where,
                                    f"class id {cls} is not in the names of {names_file} "
                                    f"(ids there: {known})", rel))
            continue
        label = names[cls]
        if not label.strip():
            problems.append(Problem(str(label_file), where, f"class id {cls} has an empty name "
                                    f"in {names_file}: name the class there", rel))
            continue
        # what the written decimals cannot tell apart, per axis: cx - w/2 carries both
        # values' rounding; a polygon's corners, the coarsest of its numbers'
        half = [_half_place(p) for p in parts[1:]]
        if len(values) == 4:
            blur_x, blur_y = half[0] + half[2] / 2, half[1] + half[3] / 2
        else:
            blur_x, blur_y = max(half[0::2]), max(half[1::2])
        boxes.append(Box(_yolo_px(x1, width, blur_x), _yolo_px(y1, height, blur_y),
                         _yolo_px(x2, width, blur_x), _yolo_px(y2, height, blur_y), label,
                         f"{label_file}:{where}"))
    return boxes


YOLO_HALF_PLACE = 5e-7  # half the last place of the 6 decimals YOLO tools write


def _half_place(number: str) -> float:
    """Half the last written place of a number's text, at most :data:`YOLO_HALF_PLACE`:
    ``0.123456`` 5e-7, ``0.5000005`` 5e-8; ``0.5`` 5e-7 too, as a writer of ``%g`` drops
    the zeros of 0.500000."""
    try:
        exponent = Decimal(number).as_tuple().exponent
    except InvalidOperation:  # (float() took it: nan, inf, refused as coordinates later)
        return 0.0
    if not isinstance(exponent, int):
        return 0.0
    # (1e999: 10.0 ** 999 overflowed, a traceback; any place from a unit up is the cap)
    return min(0.5 * 10.0 ** min(exponent, 0), YOLO_HALF_PLACE)


def _yolo_px(value: float, side: int, blur: float) -> float:
    """A normalised YOLO coordinate in pixels: the whole pixel when it is within ``blur``
    (of the side: what the written decimals cannot tell apart from it), else to 1/1000 px.
    Integer boxes came back as 122.9992 after an export and import (issue #18); a finer
    position than its text holds was never there, and one its text does hold is kept
    (review, session 46: 0.5000005 of 1000 px was snapped to 500 by 6 decimals' blur)."""
    px = value * side
    if not math.isfinite(px):  # nan, inf, 1e999: refused by name as a box (round() raised)
        return px
    near = round(px)
    if abs(px - near) <= blur * side + 1e-9:
        return float(near)
    return round(px, 3)


YAML_SPLITS = ("train", "val", "test")
MAX_YAML_ENTRIES = 256  # entries of one split in data.yaml (an alias bomb has millions)


def _said(entry: object) -> str:
    """An entry as a message shows it: text cut short, anything else by its type (a YAML
    alias bomb's list printed whole took every byte of memory)."""
    return repr(entry[:120]) if isinstance(entry, str) else f"a {type(entry).__name__}"


def _norm(path: Path) -> Path:
    """An absolute path with ``..`` and ``.`` folded, without touching the disk (a path
    outside the source is never looked at)."""
    return Path(os.path.normpath(os.path.abspath(path)))


class _YamlSplits:
    """The splits a ``data.yaml`` gives the images of ``src`` through its ``train`` /
    ``val`` / ``test`` entries, as Ultralytics reads them: each a folder, a ``.txt`` list
    of image paths, or a list of either; relative to ``path:`` when that is a folder inside
    ``src``, else to data.yaml's folder (``../train/images`` beside data.yaml, as Roboflow
    writes it, read as ``train/images``). Nothing outside ``src`` is read: an entry there
    is a warning, and so is one naming nothing."""

    def __init__(self, src: Path, cfg: Path, pictures: list[Path]) -> None:
        self.src, self.cfg = src, cfg
        self.cfg_rel = _rel(cfg, src)
        self.root = _norm(src)
        self.pictures = {_norm(p): p for p in pictures}
        self.by_name: dict[str, list[tuple[tuple[str, ...], Path]]] = defaultdict(list)
        for walked, p in self.pictures.items():
            self.by_name[walked.name].append((walked.relative_to(self.root).parts, p))
        self.notes: list[str] = []
        self.tail_found = 0
        # image -> [(split, entry as written)], more than one when named in several splits
        self.named: dict[Path, list[tuple[str, str]]] = defaultdict(list)
        self.applied: list[str] = []
        doc = load_yaml(_read_text(cfg)) or {}  # parsed before by _names_from_yaml
        if not isinstance(doc, dict) or not any(doc.get(k) for k in YAML_SPLITS):
            return
        self.base = self._base(doc.get("path"))
        by_split: dict[str, dict[Path, str]] = {}
        for key in YAML_SPLITS:
            value = doc.get(key)
            entries = value if isinstance(value, list) else [value] if value else []
            by_split[key] = {}
            if len(entries) > MAX_YAML_ENTRIES:
                self.notes.append(f"warning: {self.cfg_rel} {key}: {len(entries)} entries, over "
                                  f"the {MAX_YAML_ENTRIES} read: ignored")
                entries = []
            for entry in entries:
                if not isinstance(entry, str) or not entry.strip():
                    self.notes.append(f"warning: {self.cfg_rel} {key}: {_said(entry)} is not a "
                                      "folder or list file name: ignored")
                    continue
                try:
                    images = self._images(key, entry.strip())
                except (OSError, DatasetError) as exc:  # a name too long, a list not UTF-8
                    reason = exc.message if isinstance(exc, DatasetError) else (
                        exc.strerror or type(exc).__name__)
                    self.notes.append(f"warning: {self.cfg_rel} {key}: {_said(entry)} cannot be "
                                      f"read ({reason}): ignored")
                    continue
                for image in images:
                    by_split[key].setdefault(image, entry.strip())
        same = [(one, other) for one, other in combinations(YAML_SPLITS, 2)
                if by_split[one] and by_split[one].keys() == by_split[other].keys()]
        for one, other in same:  # Lineside's own export of a set without val: val is train
            self.notes.append(f"{self.cfg_rel}'s {one} and {other} name the same "
                              f"{len(by_split[one])} image(s) (no separate {other}): their "
                              "split is read from folder names")
        dropped = {k for pair in same for k in pair}
        for key in YAML_SPLITS:
            if key in dropped or not by_split[key]:
                continue
            used = dict.fromkeys(by_split[key].values())
            self.applied.append(f"{key}: " + ", ".join(used))
            for image, entry in by_split[key].items():
                self.named[image].append((key, entry))
        if self.tail_found:
            self.notes.append(f"{self.tail_found} line(s) of {self.cfg_rel}'s list files found "
                              "by the end of their path, not where they point (lists written "
                              "on another machine?)")

    def _shown(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix()
        return "the top folder" if rel == "." else f"{rel}/"

    def _base(self, given: object) -> Path:
        yaml_dir = _norm(self.cfg.parent)
        if not isinstance(given, str) or not given.strip():
            return yaml_dir
        base = _norm(yaml_dir / given.strip())
        try:
            if base.is_relative_to(self.root) and base.is_dir():
                return base
        except OSError:  # a name too long
            pass
        where = "outside " + str(self.src) if not base.is_relative_to(self.root) else "no folder"
        self.notes.append(f"{self.cfg_rel} path: {_said(given)} is {where}: not used; its train/val/"
                          f"test entries are read relative to {self._shown(yaml_dir)}")
        return yaml_dir

    def _images(self, key: str, entry: str) -> list[Path]:
        """The images (as walked) one entry names; a warning, and none, when it names nothing here."""
        written = entry.replace("\\", "/")
        target = _norm(self.base / written)
        if written.startswith("../") and not (target.is_relative_to(self.root)
                                              and target.exists()):
            # Roboflow's '../train/images' beside data.yaml (in the source's top folder or
            # in a project folder under it)
            inside = _norm(self.base / written[3:])
            if inside.is_relative_to(self.root) and inside.exists():
                target = inside
        said = f"warning: {self.cfg_rel} {key}: {_said(entry)}"
        if (written.startswith("../") and written[3:].split("/")[0].lower() in SPLIT_WORDS
                and _norm(self.base / written[3:]).is_relative_to(self.root)
                and not (target.is_relative_to(self.root) and target.exists())):
            # Roboflow writes all three entries, a split it did not export too: no alarm
            self.notes.append(f"{self.cfg_rel} {key}: {_said(entry)}: there is no "
                              f"{written[3:][:120]} here, so no {key} split from it")
            return []
        if not target.is_relative_to(self.root):
            self.notes.append(f"{said} is outside {self.src}: not read (only the folder given "
                              "is imported): ignored")
            return []
        if target.is_dir():
            found = [p for a, p in self.pictures.items() if a.is_relative_to(target)]
            if not found:
                self.notes.append(f"{said} is a folder with no images ({self._shown(target)}): "
                                  "ignored")
            return found
        if target.is_file() and target.suffix.lower() == ".txt":
            return self._listed(key, entry, target)
        self.notes.append(f"{said} " + ("is not a folder or a .txt list of images: ignored"
                                        if target.exists() else
                                        f"names nothing in {self.src} (no such folder or list "
                                        "file): ignored"))
        return []

    def _listed(self, key: str, entry: str, listing: Path) -> list[Path]:
        """The images a list file names, one path a line: relative to the list's folder or
        to the set's, or found by the end of their path (a list made on another machine)."""
        found: list[Path] = []
        missing: list[str] = []
        for line in _read_text(listing).splitlines():
            line = line.strip().replace("\\", "/")
            if not line or line.startswith("#"):
                continue
            tries = [Path(line)] if Path(line).is_absolute() else [listing.parent / line,
                                                                   self.base / line]
            hit = next((self.pictures[a] for a in map(_norm, tries) if a in self.pictures), None)
            if hit is None and (hit := self._by_tail(line)) is not None:
                self.tail_found += 1
            if hit is None:
                missing.append(line)
            else:
                found.append(hit)
        if missing:
            self.notes.append(f"warning: {self.cfg_rel} {key}: {len(missing)} line(s) of {_said(entry)} "
                              f"name no image in {self.src}, e.g. {missing[0][:120]!r}: ignored")
        if not found and not missing:
            self.notes.append(f"warning: {self.cfg_rel} {key}: {_said(entry)} lists no image: ignored")
        return found

    def _by_tail(self, line: str) -> Path | None:
        """The one image whose path under the source ends most like ``line``'s, if any."""
        parts = PurePosixPath(line).parts
        scored = []
        for rel, p in self.by_name.get(parts[-1], []):
            n = 0
            while n < min(len(rel), len(parts)) and rel[-1 - n] == parts[-1 - n]:
                n += 1
            scored.append((n, p))
        scored.sort(key=lambda t: -t[0])
        if not scored or (len(scored) > 1 and scored[0][0] == scored[1][0]):
            return None  # no image of that name, or several equally like it
        return scored[0][1]


def import_yolo(src: Path) -> Draft:
    """YOLO txt (``class cx cy w h`` normalised, or a polygon), names from ``data.yaml``.
    Ultralytics' ``images/<split>/`` + ``labels/<split>/``, Roboflow's
    ``<split>/images/`` + ``<split>/labels/``, or labels beside the images; folder names
    in any case. An image without a label file is a good part."""
    if not src.is_dir():
        raise DatasetError(f"{src}: a YOLO set is a folder")
    files = walk_files(src)
    names, names_path = _yolo_names(src, files)
    pictures = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not pictures:
        raise DatasetError(_looked_for(src, files, "no images found",
                                       "A YOLO set has images/ and labels/ (or train/images/ "
                                       "...), its images jpg, png or bmp.", "yolo"))
    labels: dict[str, Path] = {}
    for f in files:
        if f.suffix.lower() == ".txt" and f.name.lower() != "classes.txt":
            labels.setdefault(_label_key(_rel(f, src)), f)
    tops = {PurePosixPath(_rel(p, src)).parts[0] for p in pictures}
    # the classic layout keeps images/-relative names (images/train/x.jpg is train/x.jpg)
    strip = next(iter(tops)) if len(tops) == 1 and role_of(next(iter(tops))) == "images" \
        and all(len(PurePosixPath(_rel(p, src)).parts) > 1 for p in pictures) else None
    problems: list[Problem] = []
    images: list[ImageRecord] = []
    unlabeled = 0
    yaml_splits = _YamlSplits(src, names_path, pictures) if names_path.suffix.lower() in (
        ".yaml", ".yml") else None
    from_folders = 0
    twice: Counter[tuple[str, ...]] = Counter()  # images data.yaml puts in several splits
    for path in pictures:
        src_rel = _rel(path, src)
        rel = src_rel.split("/", 1)[1] if strip else src_rel
        named = yaml_splits.named.get(path, []) if yaml_splits else []
        # in two splits (Ultralytics' "train: [images/train, images/val]", for a final
        # model): the held-out one, since Lineside checks a model on what it never saw
        split = named[-1][0] if named else split_of(src_rel)
        from_folders += not named and split is not None
        if len({s for s, _ in named}) > 1:
            twice[tuple(dict.fromkeys(s for s, _ in named))] += 1
        width, height = _size(path, rel, problems)
        if not width:
            continue  # unreadable: one problem, not a decode and a box problem as well
        label_file = labels.get(_label_key(src_rel))
        boxes: list[Box] = []
        if label_file is None:
            unlabeled += 1
        else:
            boxes = _yolo_boxes(label_file, names, str(names_path), width, height, rel,
                                problems)
        images.append(ImageRecord(rel, width, height, boxes, split=split, source=path))
    matched = {_label_key(_rel(p, src)) for p in pictures}
    for key, f in sorted(labels.items(), key=lambda kv: kv[1]):
        # an empty one loses nothing; a notes .txt is no label file
        if key not in matched and _looks_like_yolo_label(f):
            label_rel = _rel(f, src)
            problems.append(Problem(str(f), "", _no_image_message(f, "label file"), label_rel))
    problems += _yolo_unread_images(src, files, matched, labels)
    categories = [n for n in names.values() if n.strip()]  # (_yolo_boxes refused blank ones)
    notes = list(yaml_splits.notes) if yaml_splits else []
    for splits, n in twice.items():
        notes.append(f"{n} image(s) {names_path.name} names in {' and '.join(splits)} imported "
                     f"as {splits[-1]} only: a model is checked on images it never trained on")
    if yaml_splits and yaml_splits.applied:
        notes.append(f"splits from {yaml_splits.cfg_rel} ({'; '.join(yaml_splits.applied)})"
                     + (f", {from_folders} image(s) it does not name from folder names"
                        if from_folders else ""))
    elif from_folders:
        notes.append("splits from folder names")
    notes += _assign_rest_to_train(images) + _clip_to_images(images) + _case_variants(categories)
    notes += _thin_classes(images, categories) + _exif_turned(images, set())
    if images and unlabeled == len(images) and _other_annotations(files):
        # a VOC folder with a labelImg classes.txt, a LabelMe or COCO set with a names
        # file: every defect would import as a good part (LabelMe's did, silently: review,
        # session 39)
        raise DatasetError(_looked_for(
            src, files, "no image has a YOLO label file, so all would import as good parts",
            "If they really are all good parts, give each image an empty .txt label file "
            "(YOLO's way to say so).", "yolo"))
    if unlabeled:
        notes.append(f"{unlabeled} image(s) without a label file imported as good parts")
    by_split: dict[str | None, list[str]] = defaultdict(list)
    for r in images:
        by_split[r.split].append(_rel(r.source, src) if r.source else r.file_name)
    parts = [f"{_split_name(s)}: {len(v)} images in {folders_phrase(v)}"
             for s, v in sorted(by_split.items(), key=_split_order)]
    info: dict[str, object] = {"source": "YOLO", "layout": "; ".join(["YOLO", *parts, *notes])}
    return Dataset(categories, images, info=info), problems


def _other_annotations(files: list[Path]) -> bool:
    """Whether a source holds another format's labels: Pascal VOC or CVAT .xml, or a
    LabelMe, Label Studio or COCO .json (any other .json, a notes file, is not one)."""
    if any(f.suffix.lower() == ".xml" for f in files) or _foreign_export(files) is not None:
        return True
    for f in [f for f in files if f.suffix.lower() == ".json"][:MAX_SNIFFED]:
        try:
            if f.stat().st_size > MAX_SNIFFED_BYTES:
                continue
            doc = load_json(f)
        except (OSError, DatasetError):
            continue
        if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
            return True
    return False


def _yolo_unread_images(src: Path, files: list[Path], matched: set[str],
                        labels: dict[str, Path]) -> list[Problem]:
    """A problem for each image in a format Lineside does not read (TIFF, WebP ...) with
    no label file or an empty one: in YOLO that is a good part, and it was left out unsaid
    (the import counted only the JPEGs' good parts). One with boxes is named by its label
    file's problem; one beside a readable image of its name is that part saved twice."""
    problems = []
    for f in files:
        if f.suffix.lower() not in UNSUPPORTED_IMAGE_SUFFIXES:
            continue
        key = _label_key(_rel(f, src))
        label = labels.get(key)
        if key in matched or (label is not None and _looks_like_yolo_label(label)):
            continue
        kind = f.suffix.lstrip(".").upper()
        why = "its label file is empty" if label is not None else "it has no label file"
        problems.append(Problem(
            str(f), "", f"{kind} image ({why}: a good part), which is not supported (jpg, png "
            "or bmp only): convert it", _rel(f, src)))
    return problems


def _coco_docs(src: Path) -> list[tuple[Path, Any]]:
    """The COCO JSON files of ``src``: the file itself, its ``annotations.json``, or every
    JSON under it with ``images`` and ``annotations`` (Roboflow's
    ``<split>/_annotations.coco.json``, COCO's ``instances_<split>.json``)."""
    if src.is_file():
        return [(src, load_json(src))]
    if (src / ANNOTATIONS).is_file():
        return [(src / ANNOTATIONS, load_json(src / ANNOTATIONS))]
    docs = []
    for f in walk_files(src):
        if f.suffix.lower() == ".json":
            doc = load_json(f)
            if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
                docs.append((f, doc))
    return docs


def _coco_split_folder(json_path: Path) -> str | None:
    """``train2017`` for COCO's ``instances_train2017.json`` (any ``<kind>_<X>.json``),
    the folder COCO keeps that split's images in."""
    stem = json_path.stem
    if "_" not in stem.strip("_"):
        return None
    return stem.rsplit("_", 1)[1] or None


def _coco_image_folders(json_path: Path, root: Path, limit: Path) -> list[Path]:
    """Where a COCO JSON's images may sit, in order: ``images/`` beside it, beside it, the
    folder named after its split (``instances_<X>.json`` -> ``<X>/``, beside the JSON, beside
    its ``annotations/`` folder or in the dataset root, also under ``images/``), the dataset
    root and its ``images/``; only folders inside ``limit`` (what the user gave)."""
    base = json_path.parent
    out = [base / "images", base]
    if role_of(base.name) == "annotations":  # CVAT's and COCO's annotations/ + images/
        out += [base.parent / "images", base.parent]
    named = _coco_split_folder(json_path)
    if named:
        for top in (base, base.parent, root):
            out += [top / named, top / "images" / named]
    out += [root, root / "images"]
    unique: list[Path] = []
    for folder in out:
        if folder not in unique and folder.is_relative_to(limit):
            unique.append(folder)
    return unique


def _shown(folder: Path, root: Path) -> str:
    """A searched folder as the user knows it: relative to the dataset root (the folder
    given), else as typed (beside the JSON the user gave)."""
    if not folder.is_relative_to(root) or role_of(root.name) == "annotations":
        # a JSON given in annotations/: "images/" was read as the one beside annotations/
        return f"{folder}/"
    rel = folder.relative_to(root).as_posix()
    return f"{folder.name}/ (the top folder)" if rel == "." else f"{rel}/"


def _coco_sources(dataset: Dataset, folders: list[Path], base: Path, root: Path,
                  json_path: Path, problems: list[Problem], sized: set[int]) -> list[ImageRecord]:
    """The records of one COCO JSON whose image was found, each with its source: in
    ``folders``, then by name below the JSON (a problem for one found nowhere). A size the
    JSON does not give (or gives as 0) is read from the image; ``sized`` gets their ``id()``."""
    index: _ImageIndex | None = None  # built only when a name is not where COCO puts it
    kept: list[ImageRecord] = []
    for rec in dataset.images:
        # a name written on Windows (images\x.jpg): a backslash separates folders, and
        # kept as written it became one file called 'images\x.jpg'
        rec.file_name = rec.file_name.replace("\\", "/")
        if rec.reference is not None:
            rec.reference = rec.reference.replace("\\", "/")
        found = next((f / rec.file_name for f in folders if (f / rec.file_name).is_file()), None)
        if found is None:
            if index is None:
                index = _ImageIndex(base, [p for p in walk_files(base)
                                           if p.suffix.lower() in IMAGE_SUFFIXES])
            found, how = index.find(rec.file_name, base, None)
            if how.startswith("ambiguous"):
                problems.append(Problem(
                    rec.origin or str(json_path), "file_name",
                    f"image {rec.file_name!r} is not where COCO puts it and could be any of "
                    f"{how.removeprefix('ambiguous: ')}: give file_name with its folder",
                    rec.file_name))
                continue
        if found is None:
            tried = ", ".join(_shown(f, root) for f in folders)
            problems.append(Problem(
                rec.origin or str(json_path), "file_name",
                f"image {rec.file_name!r} not found: looked in {tried}, and by name "
                f"below {_shown(base, root)}", rec.file_name))
            continue
        rec.source = found
        if not (rec.width and rec.height):
            rec.width, rec.height = _size(found, rec.file_name, problems)
            if not rec.width:
                continue  # unreadable: that is its problem
            sized.add(id(rec))
        kept.append(rec)
    return kept


def _coco_unlisted(src: Path, root: Path, docs: list[tuple[Path, Any]],
                   images: list[ImageRecord]) -> list[Path]:
    """Images on disk that no COCO JSON lists (a photo copied in, a split's JSON not
    re-exported): everything under the folder given, or, given a JSON file, the folders
    its images were found in."""
    used = {_norm(r.source) for r in images if r.source}
    listed = {_fold(PurePosixPath(str(img.get("file_name", "")).replace("\\", "/")).name)
              for _, doc in docs for img in _listed(doc, "images") if isinstance(img, dict)}
    if src.is_dir():
        on_disk = walk_files(root)
    else:
        folders = sorted({r.source.parent for r in images if r.source})
        on_disk = [p for f in folders for p in sorted(f.iterdir()) if p.is_file()]
    return [p for p in on_disk if p.suffix.lower() in IMAGE_SUFFIXES
            and _norm(p) not in used and _fold(p.name) not in listed]


def _no_coco_images(docs: list[tuple[Path, Any]], root: Path, on_disk: list[Path]) -> str:
    """Why a COCO import that lists no image at all is refused, and what a COCO JSON holds."""
    names = ", ".join(str(j) for j, _ in docs[:3])
    has_list = any(isinstance(d, dict) and "images" in d for _, d in docs)
    beside = (f"; {len(on_disk)} image file(s) are there but not listed, e.g. "
              f"{_rel(on_disk[0], root) if on_disk[0].is_relative_to(root) else on_disk[0]}"
              if on_disk else "")
    return (f"{names}: lists no images ({'its images list is empty' if has_list else 'no images list'})"
            f"{beside}. A COCO JSON lists each image under \"images\" (id, file_name, width, "
            "height) and its boxes under \"annotations\"; a folder of defect-free images "
            "imports with -f good")


def _coco_any_image(docs: list[tuple[Path, Any]], root: Path, limit: Path) -> bool:
    """Whether any image file is where :func:`_coco_sources` looks: in the folders COCO
    puts images in, or below a JSON's own folder."""
    for json_path, _ in docs:
        for folder in _coco_image_folders(json_path, root, limit):
            try:
                if any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.iterdir()):
                    return True
            except OSError:
                continue
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in walk_files(json_path.parent)):
            return True
    return False


def import_coco(src: Path) -> Draft:
    """COCO JSON: ``SRC`` is the JSON file, or a folder holding ``annotations.json`` or
    several COCO JSONs (one per sub-set, which become splits); images are looked up in the
    folders of :func:`_coco_image_folders` (COCO's own ``annotations/instances_<X>.json``
    beside ``<X>/`` among them), then by name below the JSON. A category no
    box uses that is another's supercategory (Roboflow's dataset-level parent) is dropped."""
    docs = _coco_docs(src)
    if not docs:
        raise DatasetError(_looked_for(
            src, walk_files(src) if src.is_dir() else [], "no COCO JSON found",
            "A COCO set has an annotations.json (or _annotations.coco.json, instances_*.json) "
            "with images, annotations and categories.", "coco"))
    root = src if src.is_dir() else src.parent
    categories: list[str] = []
    images: list[ImageRecord] = []
    problems: list[Problem] = []
    info: dict[str, object] = {}
    parts = []
    sized: set[int] = set()  # id() of records sized from their image
    for json_path, doc in docs:
        dataset, found = from_coco(doc, str(json_path), sizes_optional=True)
        problems += found
        info = info or dict(dataset.info)
        base = json_path.parent
        rel_json = _rel(json_path, root)
        split = split_of(f"{PurePosixPath(rel_json).parent}/{json_path.stem}/x")
        # given the JSON itself, its images may sit beside its annotations/ folder
        folders = _coco_image_folders(json_path, root, root if src.is_dir() else root.parent)
        named = _coco_split_folder(json_path)
        split = split or (split_word(named) if named else None)  # instances_val2017.json
        if len(docs) == 1 or base == root:
            prefix = ""
        elif named and base.name.lower() == "annotations":
            prefix = named + "/"  # COCO's annotations/instances_train2017.json: train2017/x.jpg
        else:
            prefix = _rel(base, root) + "/"
        listed = len(dataset.images)
        dataset.images = _coco_sources(dataset, folders, base, root, json_path, problems, sized)
        for rec in dataset.images:
            if prefix and not rec.file_name.startswith(prefix):
                rec.file_name = prefix + rec.file_name
                if rec.reference is not None:
                    rec.reference = prefix + rec.reference
            rec.split = rec.split or split
        used = {b.label for r in dataset.images for b in r.boxes}
        parents = {str(c.get("supercategory")) for c in _listed(doc, "categories")
                   if isinstance(c, dict)}
        for name in dataset.categories:
            if name not in categories and (name in used or name not in parents):
                categories.append(name)
        images += dataset.images
        missing = f", {listed - len(dataset.images)} not found" if listed > len(dataset.images) else ""
        parts.append(f"{rel_json} ({len(dataset.images)} images{missing}"
                     + (f", sub-set {split!r})" if split else ")"))
    unlisted = _coco_unlisted(src, root, docs, images)
    if not problems and not any(_listed(d, "images") for _, d in docs):
        raise DatasetError(_no_coco_images(docs, root, unlisted))
    if not images and any(_listed(d, "images") for _, d in docs) and \
            not _coco_any_image(docs, root, root if src.is_dir() else root.parent):
        # a JSON copied away from its images: one "not found" per image said N times what
        # one line says (session 41, a new user)
        listed = sum(len(_listed(d, "images")) for _, d in docs)
        names = ", ".join(_rel(j, root) for j, _ in docs[:3])
        raise DatasetError(
            f"{src}: {names} list(s) {listed} image(s), and no image file is where COCO "
            "puts them or below the JSON: give the folder the export came in (the JSON "
            "with its images: Roboflow's train/, valid/ and test/ folders, or COCO's "
            "annotations/ beside the image folders)")
    _drop_blank_labels(images, problems)
    categories = [c for c in categories if c.strip()]
    notes = (_assign_rest_to_train(images) if len(docs) > 1 else []) + _clip_to_images(images)
    notes += _case_variants(categories) + _thin_classes(images, categories)
    notes += _coco_notes(docs, images, sized, unlisted, root)
    info.update({"layout": "; ".join(["COCO", *parts, *notes])})
    return Dataset(categories, images, info=info), problems


def _coco_notes(docs: list[tuple[Path, Any]], images: list[ImageRecord], sized: set[int],
                unlisted: list[Path], root: Path) -> list[str]:
    """What a COCO import did that a user should know: crowd regions and polygons taken as
    boxes, sizes read from the images, images no JSON lists, JPEGs shown turned."""
    notes: list[str] = []
    anns = [a for _, d in docs for a in _listed(d, "annotations") if isinstance(a, dict)]
    if crowd := sum(1 for a in anns if a.get("iscrowd") == 1):
        # COCO's crowd regions (many objects in one box) are ignored by its evaluation;
        # here each is a defect box like any other, which a user should know
        notes.append(f"{crowd} iscrowd annotation(s) (a region of many objects) imported as "
                     "ordinary defect boxes")
    if shaped := sum(1 for a in anns if a.get("bbox") is None and polygon_bbox(a.get("segmentation"))):
        notes.append(f"{shaped} annotation(s) without a bbox boxed from their segmentation polygons")
    if sized:
        notes.append(f"{len(sized)} image(s) without a width/height in the JSON sized from "
                     "the image file")
    if unlisted:
        example = _rel(unlisted[0], root) if unlisted[0].is_relative_to(root) else unlisted[0]
        notes.append(f"{len(unlisted)} image(s) on disk that no COCO JSON lists left out, "
                     f"e.g. {example} (defect-free images import with -f good)")
    stated = {id(r) for r in images} - sized
    return notes + _exif_turned(images, stated)


def _looks_like_yolo_label(path: Path) -> bool:
    """A .txt whose first line is ``class cx cy w h`` (or a polygon): a YOLO label, not notes."""
    try:
        with path.open("rb") as f:
            head = f.read(4096).decode("utf-8-sig", errors="replace")
    except OSError:
        return False
    for line in head.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            _class_id(parts[0])
            [float(p) for p in parts[1:]]
        except ValueError:
            return False
        return len(parts) >= 5 and len(parts) % 2 == 1
    return False


def _label_files(files: list[Path]) -> tuple[str, list[Path]] | None:
    """The likely labelled format of a folder and its label files, or None: defect
    labels beside "good" images mean the user picked the wrong format."""
    by_format = (
        ("-f voc (Pascal VOC .xml)", [f for f in files if f.suffix.lower() == ".xml"]),
        ("-f coco (COCO .json)", [f for f in files if f.suffix.lower() == ".json"]),
        ("-f yolo (YOLO .txt labels)", [f for f in files if f.suffix.lower() == ".txt"
                                        and _looks_like_yolo_label(f)]),
    )
    for fmt, found in by_format:
        if found:
            return fmt, found
    return None


def import_good(src: Path) -> Draft:
    """A plain folder of defect-free images; the sub-folder (if any) is the group.
    Refused when the folder holds label files: those images are labelled, probably
    defective, and importing them as good parts would teach a model that defects are good."""
    if src.is_file():  # one image was "no images found" (new-user review, session 50)
        raise DatasetError(f"{src}: a set of good images is a folder (its sub-folders are "
                           "groups: boards, batches, coils); give the folder that holds it")
    odd: list[Path] = []
    files = walk_files(src, odd)  # one walk (none for a file): labels, images, unread formats
    labelled = _label_files(files)
    if labelled is not None:
        fmt, found = labelled
        raise DatasetError(
            f"{src}: holds {len(found)} label file(s) (e.g. {_rel(found[0], src)}), so its "
            f"images are labelled, not known-good parts; import it with {fmt}, or move the "
            "label files out if the images really are all good")
    pictures = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    why = not_good_only(src, [PurePosixPath(_rel(p, src)) for p in pictures])
    if why is not None:
        raise DatasetError(
            f"{src}: {why}, so not all its images are good parts; import an MVTec AD set "
            "with -f mvtec (its defects boxed from their masks), or import only the "
            "folder(s) of good parts with -f good")
    # a good part behind a broken link was left out unsaid (review, session 34)
    problems: list[Problem] = [odd_file(p, src) for p in odd
                               if p.suffix.lower() in IMAGE_SUFFIXES]
    images = []
    for path in pictures:
        rel = path.relative_to(src).as_posix()
        width, height = _size(path, rel, problems)
        if not width:
            continue  # unreadable: one problem, not a decode problem as well
        group = rel.rsplit("/", 1)[0] if "/" in rel else None
        # train/, valid/, test/ sub-sets stay splits: a good-only run trains and
        # calibrates on no split or train, never on someone's held-out set
        split = subset_of(rel.split("/", 1)[0]) if "/" in rel else None
        images.append(ImageRecord(rel, width, height, [], group=group, split=split,
                                  source=path))
    # a good part in a format Lineside does not read is named, not silently left out; one
    # beside a readable image of its name (camera software often saves both) is that part
    readable = {(r.source.parent, r.source.stem.lower()) for r in images if r.source}
    other = [p for p in files if p.suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES
             and (p.parent, p.stem.lower()) not in readable]
    for path in other:
        problems.append(Problem(
            str(path), "", f"{path.suffix.lstrip('.').upper()} image, which is not supported "
            "(jpg, png or bmp only): convert it", path.relative_to(src).as_posix()))
    if not images and other:
        raise DatasetError(f"{src}: no images it can read: {len(other)} "
                           f"{other[0].suffix.lstrip('.').upper()} (...) image(s), e.g. "
                           f"{_rel(other[0], src)}; convert them to png or jpg")
    if not images:
        raise DatasetError(f"{src}: no images found")
    groups = {r.group for r in images if r.group}
    layout = (f"good images; {len(images)} images in {folders_phrase(r.file_name for r in images)}"
              + (f"; {len(groups)} group(s) from sub-folder names" if groups else ""))
    return Dataset([], images, info={"source": "good images", "layout": layout}), problems


IMPORTERS: dict[str, Callable[[Path], Draft]] = {
    "deeppcb": import_deeppcb,
    "voc": import_voc,
    "yolo": import_yolo,
    "coco": import_coco,
    "good": import_good,
    "mvtec": import_mvtec,
}
