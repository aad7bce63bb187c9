"""Checks that find every problem in a dataset, each with its file and line or field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lineside_inspect.dataset.canonical import parse_dir, save_annotations
from lineside_inspect.dataset.duplicates import (
    DuplicateGroup,
    Fingerprint,
    dedupe,
    duplicate_problems,
    exact_groups,
    find_duplicates,
    fingerprint,
    label_conflicts,
)
from lineside_inspect.dataset.exif import turned_hint
from lineside_inspect.dataset.layout import MAX_BOXES_PER_IMAGE, too_many_boxes
from lineside_inspect.dataset.model import Dataset, ImageRecord
from lineside_inspect.errors import DatasetError, ImageError, Problem
from lineside_inspect.imageio import IMAGE_SUFFIXES, decode_image


def _check_pixels(dataset: Dataset, rec: ImageRecord,
                  prints: dict[str, Fingerprint] | None = None) -> list[Problem]:
    path = dataset.image_path(rec)
    where = rec.origin or str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [Problem(where, "", f"image file {path} is missing", rec.file_name)]
    except OSError as exc:
        return [Problem(where, "", f"image file {path} is unreadable: {exc}", rec.file_name)]
    if prints is not None:  # the bytes are read once for both checks
        prints[rec.file_name] = fingerprint(data)
    try:
        image = decode_image(data)
    except ImageError as exc:
        return [Problem(str(path), "", exc.message, rec.file_name)]
    height, width = image.shape[:2]
    wrong = size_problem(where, Path(path), rec, (width, height))
    return [] if wrong is None else [wrong]


def size_problem(where: str, path: Path, rec: ImageRecord,
                 size: tuple[int, int]) -> Problem | None:
    """The problem of ``rec``'s image at ``path`` being ``size`` (width, height) where its
    record says another (its boxes are in the size recorded), None when they agree:
    validate's and train's check alike."""
    recorded = (rec.width, rec.height)
    if size == recorded:
        return None
    return Problem(where, "width/height",
                   f"says {rec.width}x{rec.height} but {path.name} is {size[0]}x{size[1]}"
                   + turned_hint(path, recorded, size), rec.file_name)


def _check_boxes(categories: set[str], rec: ImageRecord) -> list[Problem]:
    problems: list[Problem] = []
    if len(rec.boxes) > MAX_BOXES_PER_IMAGE:  # one problem, not one a box (a COCO JSON's)
        file, _, loc = (rec.origin or rec.file_name).rpartition(":")
        return [Problem(file or loc, loc if file else "", too_many_boxes(len(rec.boxes)),
                        rec.file_name)]
    for box in rec.boxes:
        file, _, loc = (box.origin or rec.origin or rec.file_name).rpartition(":")
        if not file:
            file, loc = loc, ""
        def add(msg: str, file: str = file, loc: str = loc) -> None:
            problems.append(Problem(file, loc, msg, rec.file_name))

        if box.label not in categories:
            add(f"unknown class {box.label!r} (known: {', '.join(sorted(categories))})")
        if not all(math.isfinite(v) for v in box.xyxy()):
            add(f"box {box.xyxy()} is not four finite numbers")
        elif box.x2 <= box.x1 or box.y2 <= box.y1:
            add(f"empty box {box.xyxy()}: needs x2 > x1 and y2 > y1")
        elif box.x1 < 0 or box.y1 < 0 or box.x2 > rec.width or box.y2 > rec.height:
            add(f"box {box.xyxy()} lies outside the {rec.width}x{rec.height} image {rec.file_name}")
    return problems


def validate_dataset(dataset: Dataset, *, check_pixels: bool = True,
                     prints: dict[str, Fingerprint] | None = None) -> list[Problem]:
    """Every problem of an in-memory dataset: images (missing, corrupt, wrong size) and boxes.
    ``prints``, when given, is filled with each readable image's :class:`Fingerprint`."""
    problems: list[Problem] = []
    categories = set(dataset.categories)
    if len(categories) != len(dataset.categories):
        problems.append(Problem("categories", "", "duplicate class names"))
    seen: set[str] = set()
    by_name = {r.file_name: r for r in dataset.images}
    for rec in dataset.images:
        if rec.file_name in seen:
            problems.append(
                Problem(rec.origin or rec.file_name, "", "duplicate image file name", rec.file_name)
            )
        seen.add(rec.file_name)
        parts = PurePosixPath(rec.file_name.replace("\\", "/")).parts
        if not parts or parts[0] == "/" or ".." in parts or ":" in parts[0] \
                or "\x00" in rec.file_name:
            # names become paths under images/ when written, exported or deduplicated
            problems.append(Problem(rec.origin or rec.file_name, "file_name",
                                    f"{rec.file_name!r} must be a relative path inside images/",
                                    rec.file_name))
            continue
        if check_pixels:
            problems.extend(_check_pixels(dataset, rec, prints))
        problems.extend(_check_boxes(categories, rec))
        problems.extend(_check_reference(rec, by_name))
    return problems


def _check_reference(rec: ImageRecord, by_name: dict[str, ImageRecord]) -> list[Problem]:
    if rec.reference is None:
        return []
    where = f"{rec.origin or rec.file_name}"
    ref = by_name.get(rec.reference)
    if ref is None:
        return [Problem(where, "reference", f"names {rec.reference!r}, which is not an image of the "
                        "dataset", rec.file_name)]
    if ref.boxes:
        return [Problem(where, "reference", f"{rec.reference!r} has defect boxes: a reference must be "
                        "a good part", rec.file_name)]
    if (ref.width, ref.height) != (rec.width, rec.height):
        msg = (f"{rec.reference!r} is {ref.width}x{ref.height} but the image is "
               f"{rec.width}x{rec.height}: a reference must match its image")
        return [Problem(where, "reference", msg, rec.file_name)]
    return []


@dataclass
class Validation:
    dataset: Dataset
    problems: list[Problem]
    duplicates: list[DuplicateGroup]  # all groups; those across splits are also problems
    prints: dict[str, Fingerprint] | None = None  # each readable image's, by file name


def check_dir(root: str | Path, *, check_pixels: bool = True) -> Validation:
    """Every problem of a canonical folder (its JSON fields, then images, boxes, and
    duplicates on both sides of a split boundary) and every group of duplicate images
    (looked for only with ``check_pixels``)."""
    dataset, problems = parse_dir(root)
    prints: dict[str, Fingerprint] | None = {} if check_pixels else None
    problems = problems + validate_dataset(dataset, check_pixels=check_pixels, prints=prints)
    groups = find_duplicates(dataset, prints) if prints is not None else []
    return Validation(dataset, problems + duplicate_problems(groups), groups, prints)


def quick_check(dataset: Dataset, digests: dict[str, str] | None = None) -> Validation:
    """The checks of :func:`check_dir` that decode no pixels, which ``lineside train`` runs
    at every start (it trained on a set ``data validate`` refuses: copies of one picture
    labelled two ways; new-user review, session 41): class and file names, boxes,
    references, and byte-identical copies (:func:`exact_groups`: a stat per image, a hash
    only where sizes agree) across a split or labelled two ways. Left to ``data validate``:
    images that do not decode or whose size is not the one recorded, and near duplicates
    (decoding every image: 18 s for DeepPCB's 2,000 where this takes about 1 s).
    ``digests``: as :func:`exact_groups` takes it."""
    problems = validate_dataset(dataset, check_pixels=False)
    groups = exact_groups(dataset, digests)
    return Validation(dataset, problems + duplicate_problems(groups), groups)


def duplicate_warnings(groups: list[DuplicateGroup], said: set[str] | None = None) -> list[str]:
    """A line per group of duplicates that is no problem but worth a word (copies within
    one split: trained on twice); groups across a split or holding copies labelled two
    ways are problems (:func:`duplicate_problems`), and groups whose members are all in
    ``said`` were named already."""
    lines = []
    for group in groups:
        if group.across_splits or group.mislabelled:
            continue
        if said and all(r.file_name in said for r in group.members):
            continue
        keeps = "--dedupe leaves it whole" if group.labels_differ else "--dedupe keeps one"
        lines.append(f"{group.describe()} (lineside data validate {keeps})")
    return lines


def unlisted_warning(root: str | Path, dataset: Dataset) -> str | None:
    """The line for images under ``images/`` that ``annotations.json`` does not list."""
    unlisted = unlisted_images(root, dataset)
    if not unlisted:
        return None
    return (f"{len(unlisted)} image file(s) under images/ are not in annotations.json, so "
            f"training never sees them, e.g. {unlisted[0]!r} (import them with their labels: "
            "lineside data import)")


def unlisted_images(root: str | Path, dataset: Dataset) -> list[str]:
    """Image files under ``root/images/`` that ``annotations.json`` does not list (copied
    in by hand?): training never sees them, and nothing else says so. Sorted, "/"-separated."""
    images = Path(root) / "images"
    listed = {r.file_name for r in dataset.images} | {
        r.reference for r in dataset.images if r.reference}
    found = (p.relative_to(images).as_posix() for p in images.rglob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(f for f in found if f not in listed)


def dedupe_dir(root: str | Path) -> tuple[list[ImageRecord], list[DuplicateGroup]]:
    """Keep one image of each duplicate group of a canonical folder (see
    :func:`lineside_inspect.dataset.duplicates.dedupe`): the others leave
    ``annotations.json`` and ``images/``. Refused while other problems remain, because
    rewriting the annotations would drop what could not be read."""
    report = check_dir(root)
    # copies across the split are what --dedupe mends; a mislabelled copy it cannot
    dup = set(duplicate_problems(report.duplicates)) - set(label_conflicts(report.duplicates))
    other = [p for p in report.problems if p not in dup]
    if other:
        raise DatasetError(f"{root}: {len(other)} problem(s) to fix before --dedupe", other)
    removed = dedupe(report.dataset, report.duplicates)
    # again on what is left until nothing goes: an image alike to more than MAX_ALIKE
    # others joins no group, so of 10 copies of one picture a pass kept 2, which the
    # next validate called duplicates (new-user review)
    more = removed
    while more and report.prints is not None:
        more = dedupe(report.dataset, find_duplicates(report.dataset, report.prints))
        removed += more
    if removed:
        save_annotations(report.dataset)
        images = (Path(root) / "images").resolve()
        for rec in removed:
            target = (images / rec.file_name).resolve()
            if target.is_relative_to(images):  # a file_name of '../x' deletes nothing outside
                target.unlink(missing_ok=True)
    return removed, report.duplicates


def validate_dir(root: str | Path, *, check_pixels: bool = True) -> list[Problem]:
    """Every problem of a canonical folder (see :func:`check_dir`)."""
    return check_dir(root, check_pixels=check_pixels).problems


def drop_invalid(dataset: Dataset, problems: list[Problem]) -> tuple[Dataset, list[Problem]]:
    """Remove every image a problem concerns; return the kept dataset and problems that
    name no image (those cannot be skipped)."""
    bad = {p.subject for p in problems if p.subject is not None}
    unskippable = [p for p in problems if p.subject is None]
    kept = [r for r in dataset.images if r.file_name not in bad]
    names = {r.file_name for r in kept}
    for r in kept:
        if r.reference is not None and r.reference not in names:
            r.reference = None  # still a labelled image; only reference models lose it
    return Dataset(dataset.categories, kept, dataset.root, dict(dataset.info)), unskippable
