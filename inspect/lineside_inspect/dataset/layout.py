"""How users lay labeled sets out on disk: walking a source folder and reading roles and
splits from folder names.

Real sets come in many shapes: ``JPEGImages/`` + ``Annotations/`` (Pascal VOC),
``IMAGES/`` + ``ANNOTATIONS/`` (Kaggle), ``images/`` + ``labels/`` (YOLO),
``train/`` / ``valid/`` / ``test/`` sub-sets (Roboflow), ``Validation_Images/`` beside
the training folders, or XMLs flat beside the images, often behind a symlink. Folder
names are matched case-insensitively and split words are read from them, so that a
separate sub-set becomes a split instead of being merged into training.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from lineside_inspect.errors import ImageError, Problem
from lineside_inspect.imageio import header_size
from lineside_inspect.opencv import MAX_IMAGE_PIXELS

# a folder word that names a split (Roboflow writes "valid", Kaggle "Validation_...")
SPLIT_WORDS = {
    "train": "train", "training": "train", "trainval": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
IMAGE_DIRS = ("jpegimages", "images", "image", "imgs", "img", "jpg", "jpeg", "pictures", "photos")
ANNOTATION_DIRS = ("annotations", "annotation", "annots", "xml", "xmls", "labels", "label")
SKIPPED_DIRS = ("__MACOSX",)  # resource forks of a zip made on a Mac
# words that may stand beside a split word in a sub-set's folder name (``test_set``,
# ``Validation_Images``, ``train_data``); any other word makes it a name of its own:
# ``pcb_test_fixture`` put a whole class in test (new-user review). ``obj``: Darknet's
# ``obj_train_data/`` + ``obj_valid_data/``, as CVAT's YOLO 1.1 export writes its subsets
SUBSET_WORDS = ("set", "sets", "data", "dataset", "split", "subset", "part", "images", "obj",
                *IMAGE_DIRS, *ANNOTATION_DIRS)


def walk_files(root: Path, odd: list[Path] | None = None) -> list[Path]:
    """Every file under ``root`` (sorted, as paths *under* ``root``), symlinked folders
    followed; a folder reached twice (a link cycle, or two links to one folder) is walked
    once. Hidden files and folders, and macOS ``__MACOSX`` folders, are skipped. What is
    not a regular file (a link to nothing, a FIFO, a device) goes into ``odd``, if given,
    for the importer to name."""
    out: list[Path] = []
    for dirpath, _, filenames in _folders(root):
        # regular files only (links to them followed): reading a FIFO or a device named
        # like an image would hang or never end
        for p in (Path(dirpath) / f for f in filenames):
            if p.is_file():
                out.append(p)
            elif odd is not None:
                odd.append(p)
    return out


def _folders(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """Each folder under ``root`` with its sub-folders and files (sorted), as the importer
    walks them: symlinked folders followed, a folder reached twice (a link cycle, two
    links to one folder) once, hidden names and ``__MACOSX`` skipped."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS)
        yield dirpath, dirnames, sorted(f for f in filenames if not f.startswith("."))


def links_out(root: Path) -> list[tuple[str, str]]:
    """Each symbolic link under the folder ``root`` (a file or a folder) whose target lies
    outside it, as (its path under ``root``, the target), found without reading through
    any of them. Folders are walked as the importer walks them (:func:`_folders`, a folder
    linked out too: the importer reads it); a link to nothing is left to the importer to
    name (it reads nothing). A link to a file in the set proper is named if it leads out
    of the set; one within a folder linked out only if it leads out of that folder too
    (one archive's ``images/ -> ../other`` holding ``a.jpg -> ~/private.jpg``: review,
    session 53); a folder link there only if it leads out of every folder linked out so
    far. A dataset is the folder a user hands over: a set from elsewhere can hold
    ``labels/a.txt`` linked to a secret, whose lines a problem would show."""
    top = os.path.realpath(root)
    folders: list[tuple[str, str]] = []
    files: list[tuple[str, str]] = []

    def inside(target: str, base: str) -> bool:
        return target == base or target.startswith(base.rstrip(os.sep) + os.sep)

    def target_of(path: str) -> str | None:
        if not os.path.islink(path) or not os.path.exists(path):
            return None
        return os.path.realpath(path)

    for dirpath, dirnames, filenames in _folders(root):
        # within the set, every folder link out is said; within a folder linked out, one
        # leading out of every folder followed so far (the share's own links are its own)
        real = os.path.realpath(dirpath)
        home = top if inside(real, top) else next((t for _, t in folders if inside(real, t)), top)
        bases = [top] if home == top else [top, *(t for _, t in folders)]
        for d in dirnames:
            target = target_of(os.path.join(dirpath, d))
            if target is not None and not any(inside(target, b) for b in bases):
                folders.append((Path(dirpath, d).relative_to(root).as_posix() + "/", target))
        # a file link may lead within the set, or, in a folder linked out, within that
        # folder (a share's links to its own files); not into another followed folder: a
        # set's labels/b.txt -> ~/.aws/credentials beside x/ -> ~/.aws was read all the same
        for f in filenames:
            target = target_of(os.path.join(dirpath, f))
            if target is not None and not inside(target, top) and not inside(target, home):
                files.append((Path(dirpath, f).relative_to(root).as_posix(), target))
    return sorted(folders + files)


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def split_word(word: str) -> str | None:
    """The split a folder or file word names (``valid``, ``val2017``, ``Training``)."""
    return SPLIT_WORDS.get(re.sub(r"\d+$", "", word.lower()))


def role_of(folder: str) -> str | None:
    """``"images"`` or ``"annotations"`` when a folder's name (any case, split words such
    as ``Validation_`` left out) says it holds them, else None."""
    rest = "".join(w for w in _words(folder) if split_word(w) is None)
    if rest in IMAGE_DIRS:
        return "images"
    if rest in ANNOTATION_DIRS:
        return "annotations"
    return None


def subset_of(folder: str) -> str | None:
    """The split a folder's name gives a sub-set (``valid``, ``Validation_Images``,
    ``test-set``, ``train2017``): a split word, the other words at most ones like
    ``images`` or ``set``; None for a name of its own that holds one (``pcb_test_fixture``)."""
    words = _words(folder)
    splits = [w for w in words if split_word(w) is not None]
    if not splits or any(w not in SUBSET_WORDS and not w.isdigit()
                         for w in words if split_word(w) is None):
        return None
    return split_word(splits[0])


def split_of(rel: PurePosixPath | str) -> str | None:
    """The split a file's folders name, or None: a split word in a folder name down to the
    first images/annotations folder (``valid/images/x.jpg``, ``Validation_Images/x.jpg``),
    or a folder right below that one named exactly as a split (``images/train/x.jpg``)."""
    folders = PurePosixPath(rel).parts[:-1]
    for i, folder in enumerate(folders):
        if (split := subset_of(folder)) is not None:
            return split
        if role_of(folder) is not None:
            below = folders[i + 1].lower() if i + 1 < len(folders) else ""
            return SPLIT_WORDS.get(below)
    return None


def role_folder(rel: PurePosixPath | str) -> str:
    """The folder a file sits in, cut after its images/annotations folder (class
    sub-folders below it are not part of the layout): ``train/images`` for
    ``train/images/crazing/x.jpg``; ``.`` for a file at the top."""
    folders = PurePosixPath(rel).parts[:-1]
    for i, folder in enumerate(folders):
        if role_of(folder) is not None:
            return "/".join(folders[: i + 1])
    return "/".join(folders) or "."


def folders_phrase(rels: Iterable[PurePosixPath | str], limit: int = 3) -> str:
    """``IMAGES/`` or ``train/images/, valid/images/ and 2 more``: where files sit."""
    counts = Counter(role_folder(r) for r in rels)
    names = [("the top folder" if f == "." else f"{f}/") for f, _ in counts.most_common()]
    if len(names) > limit:
        names = [*names[:limit], f"{len(names) - limit} more folder(s)"]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# the largest image file taken: the pixel limit as an uncompressed 32-bit BMP, and a
# little header (a PNG padded to 3 GB was read whole into memory: training review)
MAX_IMAGE_FILE_BYTES = MAX_IMAGE_PIXELS * 4 + (1 << 20)


# one image's label file (a VOC XML, a YOLO .txt) and its boxes: a 104 MB XML of 10^6
# <object>s, or a YOLO label of 10^6 lines, took 1.8 GB and 30 s to import one image of a
# million boxes (session 51). A dense real set (SKU-110K) has some hundreds an image.
MAX_LABEL_FILE_BYTES = 16 << 20
MAX_BOXES_PER_IMAGE = 10_000


def label_file_too_big(path: Path, subject: str, problems: list[Problem]) -> bool:
    """True (and a problem naming the file) when a label file is over
    :data:`MAX_LABEL_FILE_BYTES`: it is then not read at all."""
    size = path.stat().st_size
    if size <= MAX_LABEL_FILE_BYTES:
        return False
    problems.append(Problem(str(path), "", f"label file of {size >> 20} MiB: over the "
                            f"{MAX_LABEL_FILE_BYTES >> 20} MiB one image's labels take (at most "
                            f"{MAX_BOXES_PER_IMAGE} boxes); not read", subject))
    return True


def too_many_boxes(count: int) -> str:
    """The problem of an image with ``count`` boxes, over :data:`MAX_BOXES_PER_IMAGE`."""
    return (f"{count} boxes on one image: over the {MAX_BOXES_PER_IMAGE} an image may hold "
            "(a dense real set has some hundreds; more is no part's defects, and one image's "
            "labels then take gigabytes to read). Likely a mask or polygon exported as a box "
            "per pixel or segment, or many images' labels in one file: give each defect one "
            "box (merge the boxes that mark one defect), or split the image into tiles that "
            "hold fewer")


def image_size(path: Path, subject: str, problems: list[Problem]) -> tuple[int, int]:
    """Image size from the header; a problem (and 0x0) when the file is missing or bad."""
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            problems.append(Problem(str(path), "", f"image file of {size >> 20} MiB: over the "
                                    f"{MAX_IMAGE_FILE_BYTES >> 20} MiB an image of at most "
                                    f"{MAX_IMAGE_PIXELS} pixels takes", subject))
            return 0, 0
        # the whole file: a JPEG's frame header comes after its metadata, and a 70 KB
        # ICC profile put it past the first 64 KiB this read (second review)
        return header_size(path.read_bytes())
    except FileNotFoundError:
        problems.append(Problem(str(path), "", "image file is missing", subject))
    except (OSError, ImageError) as exc:
        problems.append(Problem(str(path), "", f"unreadable image: {exc}", subject))
    return 0, 0


def odd_file(path: Path, src: Path) -> Problem:
    """The problem of an image name under ``src`` that is no regular file."""
    what = "a link to nothing" if path.is_symlink() and not path.exists() else \
        "not a regular file (a FIFO or a device)"
    return Problem(str(path), "", f"{what}: its image cannot be read", path.relative_to(src).as_posix())
