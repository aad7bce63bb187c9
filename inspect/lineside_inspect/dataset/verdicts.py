"""Sets sorted into folders by verdict, the usual shape of good-only (anomaly) data:
MVTec AD's ``train/good/``, ``test/good/``, ``test/<defect>/`` with pixel masks in
``ground_truth/<defect>/<stem>_mask.png`` (``-f mvtec``), and the checks that keep such a
set out of ``-f good`` (a folder of good parts only).

A defective image is known only by its mask: each connected region of it becomes a box
labelled with its defect folder's name, so ``lineside evaluate`` can count escapes and
image AUROC on the test split, and a detector can be trained on the same set.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from lineside_inspect.dataset.layout import image_size, odd_file, subset_of, walk_files
from lineside_inspect.dataset.model import Box, Dataset, ImageRecord
from lineside_inspect.errors import DatasetError, Problem
from lineside_inspect.imageio import IMAGE_SUFFIXES
from lineside_inspect.opencv import cv2

GOOD_FOLDERS = frozenset({"good", "ok", "pass", "normal"})
# folder names that say what they hold is defective (OK/NG sets, anomaly benchmarks)
DEFECT_FOLDERS = frozenset({"ng", "nok", "bad", "defect", "defects", "defective", "anomaly",
                            "anomalies", "anomalous", "abnormal", "reject", "rejects", "fail"})
MASK_FOLDERS = frozenset({"ground_truth", "groundtruth", "gt", "mask", "masks"})
MIN_REGION_PX = 4  # a mask's speck under this is the mask tool's, not a defect
# MVTec AD 2: its labelled test set, and its unlabelled ones (left out, said once)
LABELLED_TEST = frozenset({"test_public"})
UNLABELLED_TEST = ("test_private",)  # test_private/, test_private_mixed/

Draft = tuple[Dataset, list[Problem]]


def _split_of(folder: str) -> str | None:
    """The split a category's top folder names: train, val or test (MVTec AD 2's
    ``test_public`` too)."""
    return "test" if folder.lower() in LABELLED_TEST else subset_of(folder)


def _under(rel: PurePosixPath, names: frozenset[str]) -> bool:
    """Whether a folder of ``rel`` has one of ``names`` (any case)."""
    return any(p.lower() in names for p in rel.parts[:-1])


def not_good_only(src: Path, rels: list[PurePosixPath]) -> str | None:
    """Why the images ``rels`` (under ``src``) are not all good parts, or None: masks of
    an MVTec-like set (a mask folder beside train/ or test/), folders named as defective,
    or folders named good beside folders that are not. Said before ``-f good`` imports an
    MVTec AD or OK/NG set as good parts, and a good-only model is trained and calibrated
    on its defects (review, session 34). A name alone is no mask: a PCB's "solder mask"
    capture, a face-mask line's masks/ folder are good parts."""
    split_folders = {p.lower() for r in rels for p in r.parts[:-1]} & {"train", "test"}
    masks = [r for r in rels if _under(r, MASK_FOLDERS)] if split_folders else []
    if masks:
        return (f"holds {len(masks)} defect mask(s) (e.g. {masks[0]}), as an MVTec AD "
                "set's ground_truth/ does")
    named = [r for r in rels if _under(r, DEFECT_FOLDERS)]
    if named:
        return f"holds {len(named)} image(s) in folders named as defective (e.g. {named[0]})"
    if any(_under(r, GOOD_FOLDERS) for r in rels):
        other = [r for r in rels if not _under(r, GOOD_FOLDERS)]
        if other:
            return (f"sorts its images by verdict (folders named good), and {len(other)} are "
                    f"in no good folder (e.g. {other[0]}), as MVTec AD's test/<defect>/")
    return None


def _category_root(src: Path, rels: list[PurePosixPath]) -> PurePosixPath:
    """Where ``train/`` and ``test/`` sit: ``src`` itself (one category), refusing a
    folder of several categories (each is a product of its own)."""
    tops = ("train", "test", *LABELLED_TEST)
    if any(r.parts[0].lower() in tops for r in rels if len(r.parts) > 1):
        return PurePosixPath(".")
    categories = sorted({r.parts[0] for r in rels if len(r.parts) > 2
                         and r.parts[1].lower() in tops})
    if len(categories) == 1:
        return PurePosixPath(categories[0])
    if categories:
        shown = ", ".join(categories[:6]) + (", ..." if len(categories) > 6 else "")
        raise DatasetError(f"{src}: holds {len(categories)} MVTec AD categories ({shown}); "
                           f"each is a product of its own: import one, e.g. {src / categories[0]}")
    raise DatasetError(f"{src}: no train/ or test/ folder (an MVTec AD category holds "
                       "train/good/, test/good/, test/<defect>/ and ground_truth/<defect>/; "
                       "folder names in any case)")


def _mask_boxes(mask_paths: list[Path], label: str, size: tuple[int, int], rel: str,
                problems: list[Problem]) -> list[Box]:
    """A box around each connected region of the masks (any non-zero pixel of any)."""
    union = np.zeros((size[1], size[0]), dtype=bool)
    for mask_path in mask_paths:
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            problems.append(Problem(str(mask_path), "", "mask image is unreadable", rel))
            return []
        if (mask.shape[1], mask.shape[0]) != size:
            problems.append(Problem(str(mask_path), "", f"mask is {mask.shape[1]}x"
                                    f"{mask.shape[0]}, its image {size[0]}x{size[1]}", rel))
            return []
        union |= mask > 0
    first = str(mask_paths[0])
    n, _, stats, _ = cv2.connectedComponentsWithStats(union.astype("uint8"), connectivity=8)
    boxes = [Box(float(x), float(y), float(x + w), float(y + h), label, origin=first)
             for x, y, w, h, area in stats[1:n].tolist() if area >= MIN_REGION_PX]
    if not boxes:
        problems.append(Problem(first, "", "mask marks no defect (no pixel set): the "
                                "image is in a defect folder, so it cannot be taken as good",
                                rel))
    return boxes


def import_mvtec(src: Path) -> Draft:
    """One MVTec AD category (any case): ``train/good/`` (split train), ``test/good/``
    (split test) and ``test/<defect>/`` boxed from ``ground_truth/<defect>/<stem>_mask.png``
    (split test, label ``<defect>``); a ``validation/`` (or ``val/``) folder of good images
    is split val. MVTec LOCO's ``ground_truth/<defect>/<stem>/*.png`` and MVTec AD 2's
    ``test_public/`` (its ``ground_truth/`` inside; ``test_private*/`` left out, said in
    the layout) are read too."""
    if not src.is_dir():
        raise DatasetError(f"{src}: an MVTec AD set is a folder")
    odd: list[Path] = []
    files = walk_files(src, odd)
    rels = [PurePosixPath(p.relative_to(src).as_posix()) for p in files]
    root = _category_root(src, rels)
    # (defect, image stem) -> its masks, any case: MVTec AD's ground_truth/D/S_mask.png,
    # MVTec LOCO's ground_truth/D/S/000.png (one image's masks in a folder of its own: by
    # file name alone each image took the last image's mask; review, session 34)
    masks: dict[tuple[str, str], list[Path]] = {}
    pictures: list[tuple[PurePosixPath, Path]] = []
    unlabelled = 0
    for rel, path in zip(rels, files, strict=True):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not rel.is_relative_to(root):
            continue
        inner = rel.relative_to(root)
        if len(inner.parts) >= 4 and inner.parts[0].lower() in LABELLED_TEST \
                and inner.parts[1].lower() in MASK_FOLDERS:
            # MVTec AD 2 keeps its masks inside its test set: test_public/ground_truth/...
            inner = PurePosixPath(*inner.parts[1:])
        if inner.parts[0].lower().startswith(UNLABELLED_TEST):
            unlabelled += 1  # MVTec AD 2's private test sets: no verdicts to learn or judge
            continue
        if len(inner.parts) == 3 and inner.parts[0].lower() in MASK_FOLDERS:
            stem = inner.stem[:-5] if inner.stem.lower().endswith("_mask") else inner.stem
            masks.setdefault((inner.parts[1].lower(), stem.lower()), []).append(path)
        elif len(inner.parts) >= 4 and inner.parts[0].lower() in MASK_FOLDERS:
            masks.setdefault((inner.parts[1].lower(), inner.parts[2].lower()), []).append(path)
        else:
            pictures.append((inner, path))
    problems = [odd_file(p, src) for p in odd if p.suffix.lower() in IMAGE_SUFFIXES]
    images: list[ImageRecord] = []
    labels: list[str] = []
    for inner, path in pictures:
        name = inner.as_posix()
        split = _split_of(inner.parts[0]) if len(inner.parts) == 3 else None
        verdict = inner.parts[1] if len(inner.parts) == 3 else ""
        if split is None:
            problems.append(Problem(str(path), "", "not in train/<verdict>/, test/<verdict>/ "
                                    "or validation/<verdict>/: left out", name))
            continue
        width, height = image_size(path, name, problems)
        if not width:
            continue
        boxes: list[Box] = []
        if verdict.lower() not in GOOD_FOLDERS:
            if split != "test":
                problems.append(Problem(str(path), "", f"a defect folder ({verdict}) in "
                                        f"{inner.parts[0]}/: MVTec AD keeps defects in test/ "
                                        "only", name))
                continue
            mask = masks.get((verdict.lower(), inner.stem.lower()))
            if mask is None:
                problems.append(Problem(str(path), "", f"no mask ground_truth/{verdict}/"
                                        f"{inner.stem}_mask.png: its defect cannot be boxed",
                                        name))
                continue
            boxes = _mask_boxes(mask, verdict, (width, height), name, problems)
            if not boxes:
                continue
            if verdict not in labels:
                labels.append(verdict)
        images.append(ImageRecord(name, width, height, boxes, split=split, source=path))
    if not images and not problems:
        raise DatasetError(f"{src}: no images in train/good/ or test/")
    good = sum(r.is_good for r in images)
    layout = (f"MVTec AD{'' if root == PurePosixPath('.') else f' category {root}'}: "
              f"{good} good and {len(images) - good} defective images (boxes from masks), "
              f"{len(labels)} defect kind(s)"
              + (f"; {unlabelled} unlabelled image(s) of test_private*/ left out"
                 if unlabelled else ""))
    return Dataset(sorted(labels), images, info={"source": "MVTec AD", "layout": layout}), problems
