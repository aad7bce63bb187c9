"""The canonical on-disk form: ``images/`` plus a COCO detection ``annotations.json``.

COCO is kept as is, with three additions inspection needs: images with no annotations
are first-class good parts, each image may carry a ``group`` (board, serial, batch)
for leakage-free splits, a ``split`` (train/val/test), and a ``reference``: the
``file_name`` of a defect-free image of the same part (a golden template).

The field-level parsing here is hand-written because pycocotools asserts on the
first bad field without saying where it is; every problem is collected with its JSON
path so a user can fix them all in one pass.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from lineside_inspect.dataset.model import SPLITS, Box, Dataset, ImageRecord, inside_images
from lineside_inspect.errors import DatasetError, Problem
from lineside_inspect.names import MAX_CLASS_NAME, MAX_CLASSES

ANNOTATIONS = "annotations.json"
FORMAT_VERSION = 1


def to_coco(dataset: Dataset) -> dict[str, Any]:
    """The COCO dict of ``dataset`` (ids renumbered from 1 in list order)."""
    cat_ids = {name: i + 1 for i, name in enumerate(dataset.categories)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, rec in enumerate(dataset.images, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": rec.file_name,
                "width": rec.width,
                "height": rec.height,
                "group": rec.group,
                "split": rec.split,
                **({"reference": rec.reference} if rec.reference is not None else {}),
                **({"aligned": list(rec.aligned)} if rec.aligned is not None else {}),
            }
        )
        for box in rec.boxes:
            w, h = box.x2 - box.x1, box.y2 - box.y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[box.label],
                    "bbox": [box.x1, box.y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {**dataset.info, "lineside_format": FORMAT_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "defect"} for n, i in cat_ids.items()],
    }


def _whole(value: object) -> int | None:
    """An integer, or a float without a fraction (some exporters write 160.0); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _image_id(value: object) -> int | str | None:
    """An image id as a key: an integer (160.0 read as 160) or text; None for anything
    else (a list as a key was a traceback)."""
    return value if isinstance(value, str) else _whole(value)


def _image_record(img: object, file: str, where: str, problems: list[Problem],
                  sizes_optional: bool) -> ImageRecord | None:
    """One ``images`` entry, or None and a problem. The problem's subject is the entry's
    file name when it has one, so that --skip-invalid can leave that image out.
    With ``sizes_optional`` a missing width/height is 0: an importer reads it from the image."""
    if not isinstance(img, dict):
        problems.append(Problem(file, where, "must be an object"))
        return None
    subject = None if img.get("file_name") is None else str(img["file_name"])
    required = ("id", "file_name") if sizes_optional else ("id", "file_name", "width", "height")
    missing = [k for k in required if k not in img]
    if missing:
        problems.append(Problem(file, where, f"missing field(s) {', '.join(missing)}", subject))
        return None
    if _image_id(img["id"]) is None:
        problems.append(Problem(file, f"{where}.id", f"id {img['id']!r} is not an integer",
                                subject))
        return None
    size = [0 if sizes_optional and img.get(k) is None else _whole(img.get(k))
            for k in ("width", "height")]
    if size[0] is None or size[1] is None or size[0] < 0 or size[1] < 0:
        problems.append(Problem(file, where, "width and height must be whole numbers "
                                f"(got {img.get('width')!r} x {img.get('height')!r})", subject))
        return None
    split = img.get("split")
    if split is not None and split not in SPLITS:
        problems.append(
            Problem(file, f"{where}.split", f"split must be one of {SPLITS}, got {split!r}")
        )
        split = None
    try:
        aligned = _shift(img.get("aligned"))
    except ValueError:
        aligned = None
        problems.append(Problem(file, f"{where}.aligned", "aligned must be [dx, dy], two "
                                f"finite numbers (px), got {str(img.get('aligned'))[:80]}",
                                subject))
    return ImageRecord(
        file_name=str(img["file_name"]),
        width=size[0],
        height=size[1],
        group=None if img.get("group") is None else str(img["group"]),
        split=split,
        reference=None if img.get("reference") is None else str(img["reference"]),
        id=img["id"],
        origin=f"{file}:{where}",
        aligned=aligned,
    )


def _shift(value: object) -> tuple[float, float] | None:
    """An image's ``aligned`` (``[dx, dy]``) as a pair, None when absent; ValueError when
    it is not two finite numbers."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value):
        raise ValueError(value)
    return float(value[0]), float(value[1])


def _by_id(records: list[ImageRecord], refused: set[Any], file: str,
           problems: list[Problem]) -> tuple[dict[Any, ImageRecord], set[Any]]:
    """Images by id, and the ids several entries share (``refused``: ids of entries left
    out for their own fields). An annotation names its image by id alone, so for a shared
    id which image a box belongs to cannot be told: every image of that id is left out
    (a problem each), and with them that id's annotations."""
    by_id: dict[Any, list[ImageRecord]] = {}
    for rec in records:
        by_id.setdefault(_image_id(rec.id), []).append(rec)
    shared = {k for k, v in by_id.items() if len(v) + (k in refused) > 1}
    for rec in records:
        key = _image_id(rec.id)
        if key not in shared:
            continue
        recs = by_id[key]
        n = len(recs) + (key in refused)
        names = " and ".join(repr(r.file_name) for r in recs[:3])
        problems.append(Problem(
            file, f"{rec.origin.rpartition(':')[2]}.id", f"duplicate image id {key!r}, given to "
            f"{n} images ({names}{' ...' if len(recs) > 3 else ''}): an annotation names its image "
            "by id, so which of them its boxes belong to cannot be told; give each image "
            "its own id",
            rec.file_name))
    return {k: v[0] for k, v in by_id.items() if k not in shared}, shared


def from_coco(doc: Any, file: str, *,
              sizes_optional: bool = False) -> tuple[Dataset, list[Problem]]:
    """Parse a COCO dict; return what could be read and every problem found.
    ``sizes_optional`` (an import: the image is at hand to read its size from) takes a
    missing width/height as 0."""
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        return Dataset([], []), [Problem(file, "", "top level must be a JSON object")]
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            problems.append(Problem(file, key, "must be a list"))
    if problems:
        return Dataset([], []), problems

    categories: dict[int, str] = {}
    for i, cat in enumerate(doc.get("categories", [])):
        where = f"categories[{i}]"
        # a name's surrounding spaces are not the class's (VOC's reader strips them: one
        # set imported as COCO and as VOC had other classes, told apart by invisible tabs)
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not cat.get("name"):
            problems.append(Problem(file, where, "needs an integer 'id' and a 'name'"))
            continue
        if cat["id"] in categories:
            problems.append(Problem(file, f"{where}.id", f"duplicate category id {cat['id']}"))
        categories[cat["id"]] = str(cat["name"]).strip() or str(cat["name"])  # blank: said below

    records: list[ImageRecord] = []
    refused: set[Any] = set()  # ids of images refused for their own fields
    unkeyed: list[Any] = []  # ids of images refused for an id of the wrong type
    for i, img in enumerate(doc.get("images", [])):
        rec = _image_record(img, file, f"images[{i}]", problems, sizes_optional)
        if rec is not None:
            records.append(rec)
        elif isinstance(img, dict) and _image_id(img.get("id")) is not None:
            refused.add(_image_id(img["id"]))
        elif isinstance(img, dict) and "id" in img:  # an id no key can be ([3], {...})
            unkeyed.append(img["id"])
    images, shared = _by_id(records, refused, file, problems)
    names = Counter(r.file_name for r in records)
    for name, n in names.items():
        if n > 1:
            problems.append(Problem(file, "images", f"file_name {name!r} listed {n} times", name))

    for i, ann in enumerate(doc.get("annotations", [])):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            problems.append(Problem(file, where, "must be an object"))
            continue
        image_id = _image_id(ann.get("image_id"))
        if image_id in shared or image_id in refused or (
                image_id is None and ann.get("image_id") in unkeyed):
            # the image's own problem says it is left out, with its boxes (an image with
            # the id [3] took its annotations' "missing image [3]", which --skip-invalid
            # could not skip: second review)
            continue
        rec_or_none = images.get(image_id)
        if rec_or_none is None:
            problems.append(
                Problem(file, f"{where}.image_id", f"annotation for missing image {ann.get('image_id')!r}")
            )
            continue
        rec = rec_or_none
        if ann.get("category_id") not in categories:
            problems.append(
                Problem(
                    file,
                    f"{where}.category_id",
                    f"unknown class id {ann.get('category_id')!r}",
                    rec.file_name,
                )
            )
            continue
        bbox = ann.get("bbox")
        if bbox is None and (from_polygon := polygon_bbox(ann.get("segmentation"))) is not None:
            bbox = from_polygon  # a segmentation-only annotation: its polygons' extent
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            seg = ann.get("segmentation")
            hint = ("; its segmentation is RLE, which is not read: give it a bbox"
                    if bbox is None and isinstance(seg, dict) else
                    "; its segmentation is not polygons of finite numbers"
                    if bbox is None and isinstance(seg, list) and seg else "")
            problems.append(
                Problem(file, f"{where}.bbox", f"bbox must be 4 finite numbers [x, y, w, h]{hint}",
                        rec.file_name)
            )
            continue
        x, y, w, h = (float(v) for v in bbox)
        label = categories[ann["category_id"]]
        rec.boxes.append(Box(x, y, x + w, y + h, label, origin=f"{file}:{where}"))

    cats = [categories[k] for k in sorted(categories)]
    return Dataset(cats, list(images.values()), info=dict(doc.get("info") or {})), problems


def polygon_bbox(segmentation: object) -> list[float] | None:
    """``[x, y, w, h]`` around COCO polygons (``[[x1, y1, x2, y2, ...], ...]``); None for
    anything else (RLE, empty, not numbers)."""
    if not isinstance(segmentation, list) or not segmentation:
        return None
    xs: list[float] = []
    ys: list[float] = []
    for poly in segmentation:
        if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           and math.isfinite(v) for v in poly)):
            return None
        xs += [float(v) for v in poly[0::2]]
        ys += [float(v) for v in poly[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def parse_dir(root: str | Path) -> tuple[Dataset, list[Problem]]:
    """Read a canonical folder; JSON problems are returned, not raised."""
    root = Path(root)
    path = root / ANNOTATIONS
    if not root.exists():  # the hint below offered the missing path as the labels to import
        raise DatasetError(f"{root}: no such folder (a dataset is a folder made by lineside "
                           "data import -f voc|yolo|coco|good|deeppcb SRC DST)")
    if not path.is_file():
        raise DatasetError(f"{root}: not a Lineside dataset (no {ANNOTATIONS}); make one "
                           "from your labels with lineside data import -f voc|yolo|coco|good "
                           f"{root} DST")
    dataset, problems = from_coco(load_json(path), str(path))
    dataset.root = root
    return dataset, problems


def load_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error or a non-UTF-8 file becomes a :class:`DatasetError`
    naming the file and the line. A UTF-8 byte-order mark (Notepad, some exporters) is
    accepted, as are UTF-16/32 with their mark, as the JSON standard allows."""
    raw = path.read_bytes()
    try:
        # bytes, not text: json detects a BOM and UTF-16/32 itself, where read_text()
        # would use the locale's encoding and keep a BOM as a stray character
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        message = (f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}; perhaps "
                   "Latin-1 or Windows-1252): re-save the file as UTF-8")
        raise DatasetError(f"{path}: {message}", [Problem(str(path), f"line {line}", message)]) from None
    except RecursionError:  # json's parser recurses once per level of nesting
        message = "JSON nested too deeply to read (thousands of levels): not an annotation file"
        raise DatasetError(f"{path}: {message}", [Problem(str(path), "", message)]) from None
    except json.JSONDecodeError as exc:
        problem = Problem(str(path), f"line {exc.lineno}", f"invalid JSON: {exc.msg}")
        raise DatasetError(f"{path}: invalid JSON", [problem]) from exc
    except ValueError:  # int()'s limit: a number of more than 4300 digits, a traceback
        message = "invalid JSON: a number too long to read (thousands of digits)"
        raise DatasetError(f"{path}: {message}", [Problem(str(path), "", message)]) from None


def read_dataset(root: str | Path) -> Dataset:
    """Read a canonical folder, raising :class:`DatasetError` listing all JSON problems."""
    dataset, problems = parse_dir(root)
    if problems:
        raise DatasetError(f"{root}: {len(problems)} problem(s) in {ANNOTATIONS}", problems)
    return dataset


def source_folders(dataset: Dataset) -> set[Path]:
    """The folders ``dataset``'s pixels are read from (its root, and each image's and
    reference's folder), symlinks resolved: the places a write must not replace."""
    # the file resolved before its folder is taken: a folder of links to another dataset's
    # images protects that dataset, not the folder of links
    folders = {p.resolve().parent for r in dataset.images
               for p in (r.source, r.reference_source) if p}
    if dataset.root is not None:
        folders.add(dataset.root.resolve())
    return folders


def check_destination(
    dst: Path, *, sources: set[Path], overwrite: bool, what: str = "DST"
) -> Path:
    """Refuse (before anything is written) a destination that is, holds or lies inside a
    source folder, and one ``--overwrite`` would replace though it is not a Lineside
    dataset; return ``dst`` with symlinks resolved. ``sources`` must be resolved already.
    A dataset an interrupted overwrite set aside is put back first
    (:func:`restore_interrupted`), and without ``overwrite`` that is refused too.

    Why: replacing ``DST`` deletes it, so ``import SRC SRC/..`` used to delete the very
    files being imported and whatever else lived beside them."""
    real = check_apart(dst, sources=sources, what=what)
    restored = restore_interrupted(real, sources=sources)
    if restored is not None and not overwrite:
        raise DatasetError(
            f"{dst}: an earlier overwrite of it was interrupted; the dataset it had set "
            f"aside in {restored.name} is back in place. Pass --overwrite to replace it")
    if real.exists():
        if not real.is_dir():
            raise DatasetError(f"{dst}: exists and is not a folder; choose another {what}")
        if not overwrite:
            raise DatasetError(f"{dst}: already exists (pass --overwrite to replace it)")
        if any(real.iterdir()) and not (real / ANNOTATIONS).is_file():
            raise DatasetError(
                f"{dst}: not a Lineside dataset (no {ANNOTATIONS}) and not empty; "
                "--overwrite only replaces a dataset folder. Choose a new or empty folder")
    return real


def _identities(path: Path) -> list[tuple[int, int]]:
    """(device, inode) of ``path`` and of each of its ancestors that exists, nearest first."""
    out = []
    for p in (path, *path.parents):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((st.st_dev, st.st_ino))
    return out


def check_apart(dst: Path, *, sources: set[Path], what: str = "DST") -> Path:
    """Refuse a destination that is, holds or lies inside one of ``sources`` (resolved);
    return ``dst`` resolved. Folders are compared by path and by device and inode, which
    also catches a second name that resolving does not see (a bind mount, another case of
    a name on a case-insensitive file system)."""
    real = dst.resolve()
    dst_ids = _identities(real)
    dst_own = dst_ids[0] if dst_ids and real.exists() else None
    for src in sorted(sources):
        src_ids = _identities(src)
        if real == src or src.is_relative_to(real) or (dst_own is not None
                                                        and dst_own in src_ids):
            raise DatasetError(
                f"{dst}: {what} is or holds the source being read; writing there would "
                "replace the source. Choose a new folder outside it; nothing was written")
        if real.is_relative_to(src) or (src.exists() and src_ids[:1] and src_ids[0] in dst_ids):
            raise DatasetError(
                f"{dst}: {what} lies inside the source folder being read; choose a folder "
                "outside it; nothing was written")
    return real


def _label_problems(dataset: Dataset) -> list[Problem]:
    """Empty, duplicate or unknown class names: checked before writing, because COCO
    cannot hold them (a category needs a name) and the folder would not read back."""
    problems: list[Problem] = []
    if len(dataset.categories) > MAX_CLASSES:  # a model's card holds no more
        problems.append(Problem("classes", "", f"{len(dataset.categories)} classes, over the "
                                f"{MAX_CLASSES} a model may have"))
    seen: set[str] = set()
    for i, name in enumerate(dataset.categories):
        if not name.strip():
            problems.append(Problem("classes", f"[{i}]", "empty class name"))
        elif len(name) > MAX_CLASS_NAME:  # an XML entity expansion made one of 1.4 MB
            problems.append(Problem("classes", f"[{i}]", f"class name of {len(name)} "
                                    f"characters (at most {MAX_CLASS_NAME}): {name[:40]!r}..."))
        elif name in seen:
            problems.append(Problem("classes", f"[{i}]", f"class {name!r} listed twice"))
        seen.add(name)
    for rec in dataset.images:
        for box in rec.boxes:
            where = box.origin or rec.origin or rec.file_name
            if not box.label.strip():
                problems.append(Problem(where, "", f"box with an empty class name in image "
                                        f"{rec.file_name!r}: name the class", rec.file_name))
            elif box.label not in seen:
                problems.append(Problem(where, "", f"class {box.label!r} is not in the "
                                        "dataset's class list", rec.file_name))
    return problems


def writer_gone(name: str) -> bool:
    """Whether the process that named a staging folder or holder ``...w<pid>.XXXXXXXX``
    has ended, as this process sees it: a writer on another host or in another pid
    namespace (a container sharing the folder) looks ended. A name without a pid counts as
    ended."""
    found = re.search(r"\.w(\d+)\.[a-z0-9_]{8}$", name)
    if found is None:
        return True
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # alive under another user (or no such pid on this platform)
    return False


def _leftovers(dst: Path, *, sources: set[Path], kind: str, legacy: bool = False) -> list[Path]:
    """Hidden folders beside ``dst`` that an interrupted :func:`write_dataset` for this
    very DST left, whose writer has ended: ``kind`` "old" for holders
    ``.DST.old.w<pid>.XXXXXXXX`` (their only entry ``old``), "staging" for
    ``.DST.w<pid>.XXXXXXXX`` (nothing but ``images`` and ``annotations.json``). With
    ``legacy``, also holders named as versions before the pid did (``.DST.old.XXXXXXXX``:
    to put back, never to delete).

    The contents matter as much as the name: ``X``'s holder is named exactly like the
    staging folder of a dataset called ``X.old``. Never links, never a folder being read."""
    label = r"\.old" if kind == "old" else ""
    pid = r"(?:\.w\d+)?" if legacy else r"\.w\d+"
    name = re.compile(rf"\.{re.escape(dst.name)}{label}{pid}\.[a-z0-9_]{{8}}")  # mkdtemp's suffix
    allowed = {"old"} if kind == "old" else {"images", ANNOTATIONS}
    found: list[Path] = []
    if not dst.parent.is_dir():
        return found
    for folder in dst.parent.iterdir():
        if (not name.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir()
                or not writer_gone(folder.name)):
            continue
        try:
            entries = {e.name for e in folder.iterdir()}
            check_apart(folder, sources=sources)  # never touch a folder being read
        except (OSError, DatasetError):
            continue
        if entries <= allowed and (kind != "old" or entries):
            found.append(folder)
    return found


def restore_interrupted(dst: Path, *, sources: set[Path]) -> Path | None:
    """Put back a dataset that an overwrite killed between its two renames (below) left in
    its hidden holder ``.DST.old.w<pid>.XXXXXXXX/old`` with no ``DST``; return the holder,
    or None when there was nothing to do. Only a holder named exactly as
    :func:`write_dataset` names one for this DST (or as versions before the pid did,
    ``.DST.old.XXXXXXXX``), whose writer has ended, holding nothing but ``old``, neither it
    nor ``old`` a link, ``old`` a dataset apart from every folder being read, and only
    when there is exactly one such."""
    if dst.exists() or dst.is_symlink() or not dst.parent.is_dir():
        return None
    held = []
    for holder in _leftovers(dst, sources=sources, kind="old", legacy=True):
        old = holder / "old"
        if old.is_symlink() or not (old / ANNOTATIONS).is_file():
            continue
        try:
            check_apart(old, sources=sources)
        except DatasetError:
            continue
        held.append(old)
    if len(held) != 1:  # none, or more than one to choose from: leave them as they are
        return None
    held[0].rename(dst)
    with contextlib.suppress(OSError):  # an emptied holder; harmless if it stays
        held[0].parent.rmdir()
    return held[0].parent


def remove_leftovers(dst: Path, *, sources: set[Path]) -> list[str]:
    """Once a write put ``dst`` in place, delete what earlier, killed writes of it left
    beside it: half-written staging folders (a kill while copying leaves a copy of every
    image) and holders of a replaced dataset not yet deleted (:func:`_leftovers` says
    which). Returns the names removed. Folders named as versions before the pid did are
    never deleted (a user's ``.DST.old.20240115`` backup has such a name)."""
    removed: list[str] = []
    if not (dst / ANNOTATIONS).is_file():
        return removed
    for kind in ("staging", "old"):
        for folder in _leftovers(dst, sources=sources, kind=kind):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def write_dataset(
    dataset: Dataset, dst: str | Path, *, overwrite: bool = False, source: str | Path | None = None
) -> Dataset:
    """Write ``dataset`` to ``dst`` atomically: a sibling temp folder, read back and
    checked, then renamed into place.

    ``source`` is the folder or file imported from, if any; with the folders the
    dataset's pixels come from, ``dst`` may not be, hold, or lie inside it. A failure at
    any point leaves ``dst`` as it was (absent, or the old dataset). Returns the dataset
    as read back from ``dst``.
    """
    given = Path(dst)
    sources = source_folders(dataset)
    if source is not None:
        src = Path(source).resolve()
        if src.is_dir():
            sources.add(src)
        elif given.resolve() == src or src.is_relative_to(given.resolve()):
            # a COCO JSON file: its own path is protected (its images' folders are above)
            raise DatasetError(f"{given}: DST is or holds the source {source}; nothing was written")
    dst = check_destination(given, sources=sources, overwrite=overwrite)
    label_problems = _label_problems(dataset)
    if label_problems:
        raise DatasetError(
            f"{given}: {len(label_problems)} problem(s) with class names; nothing was written",
            label_problems)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: a later write removes what a killed one left
    prefix = f".{dst.name}.w{os.getpid()}."
    before = set(dst.parent.glob(f"{glob.escape(prefix)}*"))
    tmp: Path | None = None
    holder: Path | None = None
    moved_old = False
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dst.parent))
        images_dir = tmp / "images"
        images_dir.mkdir()
        for rec in dataset.images:
            target = inside_images(images_dir, rec.file_name)
            target.parent.mkdir(parents=True, exist_ok=True)
            src_file = dataset.image_path(rec)
            shutil.copyfile(src_file, target)
        doc = to_coco(dataset)
        with open(tmp / ANNOTATIONS, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        # read back before anything is put in place: a folder that does not read back
        # must never replace DST (or appear where there was none)
        written, problems = parse_dir(tmp)
        if problems:
            tmp_prefix = str(tmp)
            raise DatasetError(
                f"{given}: the written dataset does not read back ({len(problems)} "
                "problem(s)); nothing was put in place",
                [Problem(p.file.replace(tmp_prefix, str(given), 1), p.location, p.message,
                         p.subject) for p in problems])
        if dst.exists():
            # a fresh, uniquely named holder: never delete a folder we did not create
            holder = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.w{os.getpid()}.",
                                           dir=dst.parent))
            dst.rename(holder / "old")
            moved_old = True
        tmp.rename(dst)
        moved_old = False
    except BaseException:
        # a Ctrl-C as mkdtemp returns leaves its folder unnamed here: this process's own new
        # one by its name (a stopped import left it for the next write to remove)
        made = [tmp] if tmp is not None else \
            sorted(set(dst.parent.glob(f"{glob.escape(prefix)}*")) - before)
        for left in made:
            shutil.rmtree(left, ignore_errors=True)
        if holder is not None and moved_old:
            try:
                (holder / "old").rename(dst)  # put the old dataset back
            except OSError:
                holder = None  # could not: leave it where it is rather than delete it
        if holder is not None:
            shutil.rmtree(holder, ignore_errors=True)
        raise
    if holder is not None:
        shutil.rmtree(holder, ignore_errors=True)
    remove_leftovers(dst, sources=sources)  # only now: a refused write deletes nothing
    written.root = dst
    return written


def save_annotations(dataset: Dataset) -> None:
    """Rewrite only ``annotations.json`` of a dataset already on disk (e.g. after a split)."""
    if dataset.root is None:
        raise ValueError("dataset has no root folder")
    path = dataset.root / ANNOTATIONS
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as fh:
        json.dump(to_coco(dataset), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
