"""Golden sets: a line's own images with the verdict each must get (and the defect boxes
where they are known), against which every candidate model is replayed before it judges
parts.

A golden set is named and versioned; each version is immutable, content-addressed (its
``digest`` is the sha256 of its items: image hashes, expected verdicts and boxes) and
self-contained, so it travels with the box::

    <data_dir>/golden/<name>/<version>/manifest.json
    <data_dir>/golden/<name>/<version>/images/<sha256>.<ext>

``add`` makes the next version from the latest plus new items (an image already in the
set takes the new expectation: a later review wins; given without a reference it keeps
the reference it had, a reference given replaces it); unchanged images are hard links to
the previous version's files where the file system allows, so versions cost little.

Items come from a canonical dataset split, a folder of good (or bad) parts, or reviewed
inspections in the store (the truth after each one's latest review).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from lineside_inspect.atomic import link_or_copy
from lineside_inspect.errors import (
    GoldenSetError,
    ImageError,
    NotFoundError,
    UnreadableRecord,
    describe_validation,
    echo,
)
from lineside_inspect.imageio import (
    IMAGE_SUFFIXES,
    decode_frame,
    decode_image,
    header_size,
    sniff_format,
)
from lineside_inspect.names import NAME_RULE, Name, is_name
from lineside_inspect.opencv import MAX_IMAGE_PIXELS
from lineside_inspect.schemas import Outcome, TimeText
from lineside_inspect.store.models import reviewed_verdict

if TYPE_CHECKING:
    from lineside_inspect.store import Store

GOLDEN_DIR = "golden"
MANIFEST = "manifest.json"
IMAGES = "images"
MAX_ITEMS = 5000  # a golden set is replayed in full by every gate: it stays small
_SHA256 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("lineside.lifecycle")


def _sha256(value: str) -> str:
    # full-matched: a manifest's hashes become file names (names.py says why not "^...$")
    if not _SHA256.fullmatch(value):
        raise ValueError("must be a sha256: 64 lowercase hex digits")
    return value


Sha256 = Annotated[str, AfterValidator(_sha256)]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GoldenBox(_Shape):
    label: str
    box: tuple[float, float, float, float] = Field(description="[x1, y1, x2, y2] in image pixels")


class GoldenItem(_Shape):
    sha256: Sha256
    ext: Literal["jpg", "png", "bmp"]
    expected: Outcome
    boxes: list[GoldenBox] | None = Field(description=(
        "the defects, where known ([] for a good part); None: only the verdict is known"))
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    reference: Sha256 | None = Field(None, description=(
        "sha256 of the reference (golden template) image in the set, for reference models"))
    reference_ext: Literal["jpg", "png", "bmp"] | None = None
    source: str = Field("", max_length=1024, description="where it came from (not content)")

    @property
    def file(self) -> str:
        return f"{IMAGES}/{self.sha256}.{self.ext}"

    @property
    def reference_file(self) -> str | None:
        return None if self.reference is None else f"{IMAGES}/{self.reference}.{self.reference_ext}"

    def content(self) -> dict[str, object]:
        """What the digest covers: everything but the provenance."""
        return self.model_dump(mode="json", exclude={"source"})


class GoldenManifest(_Shape):
    name: Name
    version: int = Field(ge=1)
    digest: Sha256 = Field(description="sha256 of the items' content")
    parent: int | None = Field(None, description="the version this one was added to")
    created_at: TimeText
    classes: list[str]
    note: str = ""
    items: list[GoldenItem]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def summary(self) -> dict[str, object]:
        fails = sum(1 for i in self.items if i.expected == "fail")
        return {"name": self.name, "version": self.version, "digest": self.digest,
                "parent": self.parent, "created_at": self.created_at, "items": len(self.items),
                "expected_fail": fails, "expected_pass": len(self.items) - fails,
                "with_boxes": sum(1 for i in self.items if i.boxes is not None), "note": self.note}


def digest(items: list[GoldenItem]) -> str:
    doc = json.dumps([i.content() for i in sorted(items, key=lambda i: i.sha256)],
                     sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


@dataclass
class Candidate:
    """An item on its way in: its pixels still where they were found."""

    item: GoldenItem
    data: bytes
    reference: bytes | None = None


def _ext(data: bytes) -> Literal["jpg", "png", "bmp"]:
    fmt = sniff_format(data)
    return "jpg" if fmt == "jpeg" else "png" if fmt == "png" else "bmp"


def candidate(data: bytes, *, expected: Literal["pass", "fail"], boxes: list[GoldenBox] | None,
              source: str, reference: bytes | None = None,
              max_pixels: int = MAX_IMAGE_PIXELS, reference_decoded: bool = False) -> Candidate:
    """An item from an encoded image (decoded in full, as is its reference: a truncated
    file is refused here, naming it, not when a gate replays the set). Decoded as a gate
    replays it (:func:`~lineside_inspect.lifecycle.gate.replay`): the image as the service
    decodes a frame, the reference as a golden, under ``max_pixels`` (a server's own; the
    CLI, which takes no settings, the built-in limit). ``reference_decoded``: the caller
    decoded the reference so already (one template for many images)."""
    try:
        width, height = header_size(data)
        decode_frame(data, max_pixels)
        # a template is its own: decoded
        if reference is not None and reference != data and not reference_decoded:
            try:
                decode_image(reference, max_pixels)
            except ImageError as exc:
                raise GoldenSetError(f"{source}: its reference image: {exc.message}") from None
        ref = None if reference is None else (hashlib.sha256(reference).hexdigest(), _ext(reference))
        item = GoldenItem(sha256=hashlib.sha256(data).hexdigest(), ext=_ext(data), expected=expected,
                          boxes=boxes, width=width, height=height,
                          reference=None if ref is None else ref[0],
                          reference_ext=None if ref is None else ref[1], source=source[:1024])
    except ImageError as exc:
        raise GoldenSetError(f"{source}: {exc.message}") from None
    return Candidate(item, data, reference)


# -- where items come from --------------------------------------------------------------
def from_dataset(root: str | Path, split: str | None = None, *, limit: int | None = None,
                 seed: int = 0, max_pixels: int = MAX_IMAGE_PIXELS,
                 ) -> tuple[list[Candidate], list[str]]:
    """Items of a canonical dataset (``split`` None or "all": every image): an image with
    boxes must fail, one without must pass. ``limit`` keeps a seeded sample, defective and
    good images in their proportion. Returns the items and the dataset's classes."""
    from lineside_inspect.dataset import read_dataset

    dataset = read_dataset(root)
    records = dataset.in_split(None if split in (None, "all") else split)
    if not records:
        raise GoldenSetError(f"{root}: no images in split {split!r}" if split not in (None, "all")
                             else f"{root}: the dataset has no images")
    if limit is not None and len(records) > limit:
        rng = random.Random(seed)
        bad = [r for r in records if not r.is_good]
        good = [r for r in records if r.is_good]
        n_bad = round(limit * len(bad) / len(records))
        records = rng.sample(bad, min(n_bad, len(bad))) + rng.sample(good, min(limit - n_bad, len(good)))
    # in a set of pairs, a good image without a reference is its own (nothing changed), as
    # training and evaluation take it: DeepPCB's templates could not gate a reference model
    pairs = any(r.reference is not None for r in dataset.images)
    out = []
    for rec in records:
        ref_path = dataset.reference_path(rec)
        boxes = [GoldenBox(label=b.label, box=b.xyxy()) for b in rec.boxes]
        data = dataset.image_path(rec).read_bytes()
        reference = ref_path.read_bytes() if ref_path is not None else (
            data if pairs and not boxes else None)
        out.append(candidate(data, expected="fail" if boxes else "pass", boxes=boxes,
                             source=f"dataset {Path(root).name}:{rec.split or '-'} {rec.file_name}",
                             reference=reference, max_pixels=max_pixels))
    return out, list(dataset.categories)


def from_folder(folder: str | Path, *, expected: Literal["pass", "fail"] = "pass",
                reference: str | Path | None = None, limit: int | None = None,
                max_pixels: int = MAX_IMAGE_PIXELS) -> list[Candidate]:
    """Every image under ``folder``: good parts (``expected`` pass, no defects) or parts
    known to be bad (fail, boxes unknown). ``reference``: one template image for all."""
    root = Path(folder)
    if not root.is_dir():
        raise GoldenSetError(f"{folder}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GoldenSetError(f"{folder}: no JPEG, PNG or BMP images in it")
    ref = None
    if reference is not None:  # once, named: a bad one was blamed on the folder's first image
        ref = Path(reference).read_bytes()
        try:
            decode_image(ref, max_pixels)
        except ImageError as exc:
            raise GoldenSetError(f"reference {Path(reference).name}: {exc.message}") from None
    return [candidate(p.read_bytes(), expected=expected, boxes=[] if expected == "pass" else None,
                      source=f"folder {p.relative_to(root).as_posix()}", reference=ref,
                      max_pixels=max_pixels, reference_decoded=True)
            for p in files[:limit]]


def from_store(store: Store, *, ids: list[str] | None = None, since: datetime | None = None,
               limit: int = 500, max_pixels: int = MAX_IMAGE_PIXELS,
               ) -> tuple[list[Candidate], list[str]]:
    """Reviewed inspections with a stored image (``ids``: those, each reviewed): each must
    get the verdict its latest review's truth implies, with those boxes. ``max_pixels``:
    the limit the server took them under (its own, from the API)."""
    rows = []
    if ids is not None:
        if len(ids) > limit:
            raise GoldenSetError(f"{len(ids)} inspections named, over the limit of {limit}: raise "
                                 "limit or add them in several versions")
        rows = [store.get(i) for i in ids]
        unreviewed = [r.id for r in rows if r.review_state == "unreviewed"]
        if unreviewed:  # its verdict is the model's word, not the truth
            raise GoldenSetError(f"inspection(s) {', '.join(unreviewed)} not reviewed yet: a golden "
                                 "set takes only reviewed truth")
    else:
        # this box's rows where boxes share the database: another box's image is not here,
        # and its reviewed rows took the places of this box's (limit 50: none of this
        # box's, "no reviewed inspection with a stored image to take")
        mine = None if store.own_database else store.box_id
        offset = 0
        while len(rows) < limit:
            _, page = store.query(review_state="reviewed", since=since, limit=min(500, limit),
                                  offset=offset, box_id=mine)
            if not page:
                break
            offset += len(page)
            rows += page
        rows = rows[:limit]
    out: list[Candidate] = []
    classes: list[str] = []
    for row in rows:
        try:  # a row that does not read as an inspection: named, or left out as unpictured
            store.record(row)
        except UnreadableRecord as exc:
            if ids is not None:
                raise
            log.warning("golden set: left out: %s", exc.message)
            continue
        try:
            with store.open_image(row) as f:
                data = f.read()
            ref = None
            if row.reference_path:
                with store.open_reference(row) as f:
                    ref = f.read()
        except NotFoundError:
            if ids is not None:
                raise
            continue  # a pass whose image was not kept, or another box's
        truth = row.reviews[-1].boxes if row.reviews else row.defects
        boxes = [GoldenBox(label=b["label"], box=tuple(b["box"])) for b in truth]
        # what the reviews say (store.models.reviewed_verdict): a fail confirmed with no box
        # (not the golden's view) must fail, its boxes unknown; a confirmed pass with the
        # defects its recipe tolerates must pass (each was taken the other way; reviews, 34)
        expected = reviewed_verdict(row.verdict, [(r.action, r.boxes) for r in row.reviews]) \
            or ("fail" if boxes else "pass")
        out.append(candidate(data, expected=expected,
                             boxes=None if expected == "fail" and not boxes else boxes,
                             source=f"inspection {row.id} ({row.review_state})", reference=ref,
                             max_pixels=max_pixels))
        classes += [c for c in row.class_names if c not in classes]
    if not out:
        raise GoldenSetError("no reviewed inspection with a stored image to take")
    return out, classes


# -- the library ------------------------------------------------------------------------
class GoldenLibrary:
    """The golden sets under ``root`` (``<data_dir>/golden``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    @staticmethod
    def check_name(name: str) -> str:
        if not is_name(name):
            raise GoldenSetError(f"golden set name {name!r} must be {NAME_RULE}")
        return name

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_name(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.root / self.check_name(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir()
                      if p.name.isdigit() and (p / MANIFEST).is_file())

    def held(self) -> list[str]:
        """The sets with at least one version (a folder alone holds none)."""
        return [n for n in self.names() if self.versions(n)]

    def latest(self, name: str) -> tuple[int, str] | None:
        """Set ``name`` as it stands: its latest version and that version's digest (what a
        gate pass must have replayed to admit); None when it has no version. Raises as
        :meth:`get` when that version's manifest is broken."""
        versions = self.versions(name)
        return None if not versions else (versions[-1], self.get(name, versions[-1]).digest)

    def get(self, name: str, version: int | None = None) -> GoldenManifest:
        versions = self.versions(name)
        if not versions:
            raise NotFoundError(f"no golden set {echo(name)} (sets: {', '.join(self.names()) or 'none'})")
        v = versions[-1] if version is None else version
        if v not in versions:
            raise NotFoundError(f"golden set {name!r} has no version {v} "
                                f"(versions: {', '.join(map(str, versions))})")
        path = self.root / name / str(v) / MANIFEST
        try:
            manifest = GoldenManifest.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise GoldenSetError(f"golden set {name}:{v}: manifest invalid: "
                                 f"{describe_validation(exc.errors())}") from None
        if digest(manifest.items) != manifest.digest:
            raise GoldenSetError(f"golden set {name}:{v}: items do not match the manifest's digest "
                                 "(the manifest was edited)")
        if (manifest.name, manifest.version) != (name, v):  # read() finds images by these
            raise GoldenSetError(f"golden set {name}:{v}: its manifest names "
                                 f"{manifest.name}:{manifest.version} (the manifest was edited)")
        return manifest

    def summaries(self) -> list[dict[str, object]]:
        """Every set's versions; one that cannot be read (an edited manifest) is listed
        under ``broken`` with why, and hides no other."""
        out: list[dict[str, object]] = []
        for n in self.names():
            good, broken = [], []
            for v in self.versions(n):
                try:
                    good.append(self.get(n, v).summary())
                except GoldenSetError as exc:
                    broken.append({"version": v, "error": exc.message})
                except (OSError, ValueError):  # its text names a path: not for an answer
                    broken.append({"version": v, "error": f"golden set {n}:{v}: its manifest "
                                   "cannot be read"})
            out.append({"name": n, "versions": good, "broken": broken})
        return out

    def read(self, manifest: GoldenManifest, item: GoldenItem, *, reference: bool = False) -> bytes:
        """An item's image (or its reference) bytes, checked against its sha256."""
        rel = item.reference_file if reference else item.file
        sha = item.reference if reference else item.sha256
        if rel is None or sha is None:
            raise GoldenSetError(f"golden set {manifest.ref}: item {item.sha256[:12]} has no reference")
        try:
            data = (self.root / manifest.name / str(manifest.version) / rel).read_bytes()
        except FileNotFoundError:
            raise GoldenSetError(f"golden set {manifest.ref}: image {sha} is missing") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise GoldenSetError(f"golden set {manifest.ref}: image {sha[:12]}… was altered")
        return data

    def create(self, name: str, candidates: list[Candidate], classes: list[str], *,
               note: str = "") -> GoldenManifest:
        """Version 1 of a new set."""
        with self._lock:
            if self.versions(name):
                raise GoldenSetError(f"golden set {name!r} exists: add to it (a new version: "
                                     f"lineside golden add {name} ...)")
            return self._write(name, 1, None, [], candidates, classes, note)

    def add(self, name: str, candidates: list[Candidate], classes: Iterable[str] = (), *,
            note: str = "") -> GoldenManifest:
        """The next version: the latest one's items plus ``candidates`` (version 1 if the set
        is new); an image already in it takes what is given now, its reference kept unless
        one is given (:meth:`_merged`)."""
        with self._lock:
            versions = self.versions(name)
            if not versions:
                return self._write(name, 1, None, [], candidates, list(classes), note)
            last = self.get(name, versions[-1])
            merged_classes = last.classes + [c for c in classes if c not in last.classes]
            return self._write(name, versions[-1] + 1, last, last.items, candidates, merged_classes,
                               note)

    def _write(self, name: str, version: int, parent: GoldenManifest | None,
               kept: list[GoldenItem], candidates: list[Candidate], classes: list[str],
               note: str) -> GoldenManifest:
        self.check_name(name)
        if not candidates:
            raise GoldenSetError(f"golden set {name!r}: nothing to add")
        new = self._merged(kept, candidates)
        items = [i for i in kept if i.sha256 not in new] + [c.item for c in new.values()]
        if len(items) > MAX_ITEMS:
            raise GoldenSetError(f"golden set {name!r} would hold {len(items)} images, over "
                                 f"{MAX_ITEMS}: a golden set is replayed in full by every gate")
        for i in items:
            unknown = {b.label for b in i.boxes or []} - set(classes)
            if unknown:
                raise GoldenSetError(f"{i.source}: class(es) {sorted(unknown)} not among {classes}")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=folder))
        try:
            (tmp / IMAGES).mkdir()
            for i in items:
                for sha, ext, data in self._files(i, new.get(i.sha256)):
                    dst = tmp / IMAGES / f"{sha}.{ext}"
                    if dst.exists():
                        continue
                    old = None if parent is None else folder / str(parent.version) / IMAGES / dst.name
                    if old is not None and data is None and old.is_file():
                        link_or_copy(old, dst)  # unchanged since the last version: share it
                    elif data is not None:
                        dst.write_bytes(data)
                    else:
                        raise GoldenSetError(f"golden set {name}: image {sha[:12]} is missing")
            manifest = GoldenManifest(
                name=name, version=version, digest=digest(items),
                parent=None if parent is None else parent.version,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"), classes=classes,
                note=note[:2000], items=sorted(items, key=lambda i: i.sha256))
            (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=1) + "\n")
            tmp.chmod(0o755)
            tmp.rename(folder / str(version))  # a version appears whole or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    @staticmethod
    def _merged(kept: list[GoldenItem], candidates: list[Candidate]) -> dict[str, Candidate]:
        """``candidates`` by image, the last of duplicates winning, each given without a
        reference keeping the one it had (an earlier duplicate's, else its item's in
        ``kept``): its verdict and boxes are the ones given now, a reference given replaces
        the old one. An image given again whole replaced its entry, and a station's parts
        given again without ``--reference`` lost the reference a reference model's gate
        needs (session 47); given again alike, its content, and so the digest, is unchanged.
        """
        had = {i.sha256: i for i in kept}
        new: dict[str, Candidate] = {}
        for c in candidates:
            sha = c.item.sha256
            if c.item.reference is None:
                earlier, old = new.get(sha), had.get(sha)
                if earlier is not None and earlier.item.reference is not None:
                    c = Candidate(c.item.model_copy(update={
                        "reference": earlier.item.reference,
                        "reference_ext": earlier.item.reference_ext}), c.data, earlier.reference)
                elif old is not None and old.reference is not None:
                    # its file comes from the version before (_write links it)
                    c = Candidate(c.item.model_copy(update={
                        "reference": old.reference, "reference_ext": old.reference_ext}),
                        c.data, None)
            new[sha] = c
        return new

    @staticmethod
    def _files(item: GoldenItem, new: Candidate | None) -> list[tuple[str, str, bytes | None]]:
        files: list[tuple[str, str, bytes | None]] = [
            (item.sha256, item.ext, None if new is None else new.data)]
        if item.reference is not None and item.reference_ext is not None:
            files.append((item.reference, item.reference_ext, None if new is None else new.reference))
        return files

    def delete_partial(self) -> None:
        """Remove temp folders a killed writer left (start-up)."""
        for name in self.names():
            for p in (self.root / name).glob(".*"):
                with contextlib.suppress(OSError):
                    shutil.rmtree(p)
