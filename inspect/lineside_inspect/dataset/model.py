"""In-memory form of a canonical dataset.

Boxes are ``[x1, y1, x2, y2]`` floats in image pixels with a class *name*; COCO's
``[x, y, w, h]`` with category ids exists only on disk (see :mod:`.canonical`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lineside_inspect.errors import DatasetError

SPLITS = ("train", "val", "test")


@dataclass
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    origin: str = ""  # "file:line" or JSON path it was read from, for error messages

    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def inside_images(images: Path, file_name: str) -> Path:
    """``images / file_name``, refusing a name that leaves the folder (absolute, ``..``, a
    symlink out) or holds a NUL: a dataset from elsewhere must not read or write outside
    its own tree."""
    path = images / file_name
    # a NUL first: resolving one is a ValueError (a traceback from data validate, export)
    if "\x00" in file_name or Path(file_name).is_absolute() \
            or not path.resolve().is_relative_to(images.resolve()):
        raise DatasetError(f"image file_name {file_name!r} leaves the dataset's images/ folder")
    return path


@dataclass
class ImageRecord:
    file_name: str  # relative to the dataset's images/ folder, "/"-separated
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    group: str | None = None
    split: str | None = None
    # file_name of a defect-free image of the same part and view (a golden template),
    # for models that compare the frame with it
    reference: str | None = None
    id: int = 0
    source: Path | None = None  # where the pixels are read from before the dataset is written
    reference_source: Path | None = None  # likewise for the reference's pixels
    origin: str = ""
    # (dx, dy) px a reference station moved this frame by onto its reference before its
    # model compared them (align_reference), as ``data pull`` writes it aligned: a point
    # at (x, y) here was at (x + dx, y + dy) in the frame the camera sent
    aligned: tuple[float, float] | None = None

    @property
    def is_good(self) -> bool:
        """A good part: an image with no defect boxes."""
        return not self.boxes


@dataclass
class Dataset:
    categories: list[str]
    images: list[ImageRecord]
    root: Path | None = None  # the canonical folder, once written or read
    info: dict[str, object] = field(default_factory=dict)
    _index: tuple[tuple[int, int], dict[str, ImageRecord]] | None = field(
        default=None, init=False, repr=False, compare=False)

    def image_path(self, record: ImageRecord) -> Path:
        if record.source is not None:
            return record.source
        if self.root is None:
            raise ValueError(f"image {record.file_name!r} has neither a source nor a dataset root")
        return inside_images(self.root / "images", record.file_name)

    def reference_path(self, record: ImageRecord) -> Path | None:
        """Where ``record``'s reference pixels are read from, or None if it has none."""
        if record.reference is None:
            return None
        if record.reference_source is not None:
            return record.reference_source
        other = self._by_name().get(record.reference)
        if other is None or other.file_name != record.reference:  # renamed since indexed
            other = next((r for r in self.images if r.file_name == record.reference), None)
        if other is not None:
            return self.image_path(other)
        if self.root is None:
            raise ValueError(f"reference {record.reference!r} of {record.file_name!r} is not in the dataset")
        return self.root / "images" / record.reference

    def _by_name(self) -> dict[str, ImageRecord]:
        # looked up once per image by training and evaluation: index instead of scanning,
        # rebuilt when the list is replaced or grows or shrinks
        key = (id(self.images), len(self.images))
        if self._index is None or self._index[0] != key:
            index: dict[str, ImageRecord] = {}
            for r in self.images:
                index.setdefault(r.file_name, r)  # the first of duplicates, as a scan finds
            self._index = (key, index)
        return self._index[1]

    def in_split(self, split: str | None) -> list[ImageRecord]:
        if split is None:
            return list(self.images)
        return [r for r in self.images if r.split == split]
