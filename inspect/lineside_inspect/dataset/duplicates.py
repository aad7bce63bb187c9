"""Exact and near-duplicate images of a dataset.

Public sets often hold the same picture twice (re-exported, re-encoded, copied into a
validation folder). A copy on each side of the train/val boundary inflates every
validation figure, so duplicates are found here, reported by ``data validate``, removed
by ``--dedupe`` and kept on one side by ``data split``.

Exact: byte-identical files (sha256). Near: two pictures whose 32x32 grey thumbnails
correlate at ``ALIKE`` or more (a copy re-encoded, resized, brighter). Candidates come
from two searches, costing a reduced-size decode per image and nothing but numpy and
OpenCV:

- a difference hash (dHash) of a small thumbnail, 256 bits, equal within a few bits:
  survives re-encoding of line art and parts, and an index makes it cheap at any size;
- the correlation itself, every pair (a matrix product by blocks): a texture's dHash
  (steel, fabric, wood) rests on gradients near zero, and a re-save at JPEG quality 80
  flipped 12-17 of its bits. Found this way alone, a pair must correlate at
  ``COPY_ALIKE`` and neither image may look like more than ``MAX_ALIKE`` others: the
  units of a part under a fixed camera all look alike (0.85-0.99) without being copies.

A dHash pair is confirmed by the correlation too. A hash of mostly flat
pictures holds few set bits, so unrelated pictures with large flat areas (blank boards,
copper pours) sit within a few bits of each other, and a chain of them joined three
DeepPCB boards into one group before the confirmation. Defect-free references of a
reference dataset look like their defective twin by design and are not reported as its
duplicate.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lineside_inspect.boxes import box_iou
from lineside_inspect.dataset.model import Dataset, ImageRecord
from lineside_inspect.errors import DatasetError, ImageError, Problem
from lineside_inspect.imageio import header_size
from lineside_inspect.opencv import MAX_IMAGE_PIXELS, cv2
from lineside_inspect.package import sha256_file

HASH_ROWS = 16  # a 17x16 thumbnail gives 16x16 = 256 horizontal-gradient bits
NEAR_BITS = 8  # at most this many of 256 bits differ: re-encoded copies differ in 0-2, unrelated
# images in ~128, different boards of one PCB design in 18 or more
THUMB = 32  # side of the grey thumbnail that confirms a near pair
ALIKE = 0.9  # their correlation: copies 0.99+, unrelated DeepPCB pairs within 8 bits <= 0.5
FLAT_STD = 2.0  # grey levels: a thumbnail this flat has nothing to correlate
COARSE = 16  # side of the thumbnails whose correlation proposes near pairs
COARSE_ALIKE = 0.85  # below COPY_ALIKE: a copy's 16x16 thumbnail loses its noise, not likeness
COPY_ALIKE = 0.98  # a pair found by correlation alone is a copy only this close at 32x32:
# re-encoded, resized or re-lit copies of DeepPCB frames 0.99+; overlapping tiles of one board
# 0.90-0.96, and units of one part under a fixed camera (placement jitter, light, sensor
# noise) 0.85-0.99, so closeness alone cannot be the test (see MAX_ALIKE)
MAX_ALIKE = 8  # an image with more 16x16 look-alikes than this looks like its product, not
# like a copy of one picture: on a line every unit does, and chaining them grouped 30 units
_NAMED = 10  # members a group's message names
_ALIKE_BLOCK = 512  # thumbnails correlated at once (memory ~ 4 * _ALIKE_BLOCK * N bytes)
_BLOCK = 32  # rows compared at once in the pairwise search (memory ~ 2 * _BLOCK * N * 32 bytes:
# 200 MB at 100k images; 128 rows held 0.8 GB and were no faster)
# which copy --dedupe keeps when labels tie: evaluation sets stay as they were
_KEEP_ORDER = {"test": 0, "val": 1, "train": 2, None: 3}


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    dhash: np.ndarray | None  # 32 packed bytes; None when the pixels cannot be decoded
    thumb: np.ndarray | None = None  # THUMB x THUMB grey, uint8; None with ``dhash``


def fingerprint(data: bytes) -> Fingerprint:
    """The sha256 of ``data`` and the dHash of its pixels (decoded grey at half size; the
    header's pixel count is checked first, as everywhere else)."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        width, height = header_size(data)
    except ImageError:
        return Fingerprint(sha, None)
    if width <= 0 or height <= 0 or width * height > MAX_IMAGE_PIXELS:
        return Fingerprint(sha, None)
    # a side of 1 px has no half size (OpenCV raises): such an image is read whole
    reduced = cv2.IMREAD_REDUCED_GRAYSCALE_2 if min(width, height) >= 2 else cv2.IMREAD_GRAYSCALE
    try:
        grey = cv2.imdecode(np.frombuffer(data, np.uint8), reduced | cv2.IMREAD_IGNORE_ORIENTATION)
        if grey is None or grey.size == 0:
            return Fingerprint(sha, None)
        small = cv2.resize(grey, (HASH_ROWS + 1, HASH_ROWS), interpolation=cv2.INTER_AREA)
        thumb = cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    except cv2.error:
        return Fingerprint(sha, None)
    small = small.astype(np.int16)
    return Fingerprint(sha, np.packbits((small[:, 1:] > small[:, :-1]).ravel()), thumb)


def look_alike(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two thumbnails show one picture: correlated at ``ALIKE`` or more, which a
    change of brightness or contrast keeps. A flat one (a blank frame) looks like no other:
    blank frames of different boards are alike without being copies, and a ladder of them
    at slowly changing brightness would tie every group it touches (byte-identical ones
    are still found by their sha256)."""
    x, y = a.astype(np.float32).ravel(), b.astype(np.float32).ravel()
    sx, sy = float(x.std()), float(y.std())
    if sx < FLAT_STD or sy < FLAT_STD:
        return False
    return float(((x - x.mean()) * (y - y.mean())).mean()) >= ALIKE * sx * sy


def fingerprints(dataset: Dataset) -> dict[str, Fingerprint]:
    """Fingerprints of every readable image of ``dataset`` by file name."""
    out = {}
    for rec in dataset.images:
        try:
            out[rec.file_name] = fingerprint(Path(dataset.image_path(rec)).read_bytes())
        except (OSError, ValueError):
            continue  # a missing file (or no pixels at all) is validation's problem to report
    return out


@dataclass
class DuplicateGroup:
    kind: str  # "exact" (every member byte-identical) or "near"
    members: list[ImageRecord]
    # the sets of two or more byte-identical members (an exact group is one such set); a
    # near group may hold some, e.g. two copies of a file and a re-encoding of it
    copies: list[list[ImageRecord]] = field(default_factory=list)

    @property
    def mislabelled(self) -> list[DuplicateGroup]:
        """Its sets of byte-identical copies labelled differently: one picture cannot be
        both, so one label is wrong, and ``--dedupe`` must not pick one for the user."""
        sets = self.copies or ([self.members] if self.kind == "exact" else [])
        return [g for g in (DuplicateGroup("exact", m) for m in sets) if g.labels_differ]

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.members if r.split})

    @property
    def across_splits(self) -> bool:
        """Copies on both sides of a split boundary: validation sees training images."""
        # an unsplit image is on no side of it: lineside train takes the train split only
        return len(self.splits) > 1

    @property
    def labels_differ(self) -> bool:
        """Members labelled differently (other classes, or defective beside good). For a
        byte-identical group one label is wrong; a near group may also be photos of one
        part region with different defects (DeepPCB holds such), so no copy is removed."""
        if len({tuple(sorted(b.label for b in r.boxes)) for r in self.members}) > 1:
            return True
        # a byte-identical copy's boxes are in the same pixels: one class in two places
        # is two labellings, and dropping a copy would drop a box
        first = self.members[0]
        return self.kind == "exact" and any(not _same_boxes(first, r) for r in self.members[1:])

    @property
    def leak(self) -> str:
        """What copies in several splits do to the figures (validate and import say it)."""
        if "train" in self.splits:
            return "evaluation would score training images"
        return f"{' and '.join(self.splits)} would score one picture twice"

    @property
    def remedy(self) -> str:
        """What to run about copies on both sides of a split (validate and import say it)."""
        if self.mislabelled:
            return ("fix the mislabelled copies, then run 'lineside data split', which keeps "
                    "them together")
        if self.labels_differ:
            return ("run 'lineside data split', which keeps them together; --dedupe leaves "
                    "near copies labelled differently whole")
        return ("run 'lineside data validate --dedupe', or 'lineside data split', which "
                "keeps them together")

    def describe(self) -> str:
        labelled = self.labels_differ or bool(self.mislabelled)  # once: they compare boxes
        names = ", ".join(f"'{r.file_name}'" + (f" ({r.split})" if r.split else "")
                          + (f" [{labels_said(r)}]" if labelled else "")
                          for r in self.members[:_NAMED])
        if len(self.members) > _NAMED:  # a message that lists 1,500 names is not read
            names += f" and {len(self.members) - _NAMED} more"
        where = "in different splits" if self.across_splits else "in one split"
        differ = ", labelled differently" if labelled else ""
        if labelled and len({labels_said(r) for r in self.members}) == 1:
            differ += " (the same classes, boxed in other places)"
        return f"{self.kind} duplicate images {where}{differ}: {names}"


def _same_boxes(a: ImageRecord, b: ImageRecord) -> bool:
    """Whether every box of ``a`` has one of ``b``'s boxes of its class over it (IoU 0.5 or
    more, each used once): two tools' rounding of one box is the same labelling."""
    rest = list(b.boxes)
    for box in a.boxes:
        match = next((o for o in rest if o.label == box.label and box_iou(box.xyxy(), o.xyxy()) >= 0.5), None)
        if match is None:
            return False
        rest.remove(match)
    return not rest


def labels_said(rec: ImageRecord) -> str:
    """``rec``'s box labels as a report names them, sorted (``good``: none)."""
    return ", ".join(sorted(b.label for b in rec.boxes)) or "good"


def _compare_all(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` within ``max_bits`` bits, every pair compared."""
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start:start + _BLOCK]
        rest = hashes[start:]
        bits = np.bitwise_count(block[:, None, :] ^ rest[None, :, :]).sum(axis=2, dtype=np.int32)
        ii, jj = np.nonzero(bits <= max_bits)
        pairs.extend((start + int(i), start + int(j)) for i, j in zip(ii, jj, strict=True) if j > i)
    return pairs


def _near_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` whose packed hashes differ in at most ``max_bits`` bits.

    Comparing every pair costs N^2 (20,000 images: about a minute here). By pigeonhole,
    two hashes within ``max_bits`` bits agree exactly on at least one of ``max_bits + 1``
    disjoint byte ranges (multi-index hashing), so only hashes that share one range's
    value are compared; when that is not fewer comparisons (hashes with little in them
    share most values), every pair is compared as before."""
    n, width = hashes.shape
    if n < 2 or max_bits + 1 > width:
        return _compare_all(hashes, max_bits)
    pairs: set[tuple[int, int]] = set()
    large: list[np.ndarray] = []  # runs of many equal values: compared block-wise at the end
    cost = 0
    for cols in np.array_split(np.arange(width), max_bits + 1):
        keys = np.zeros(n, np.uint64)
        for c in cols:
            keys = (keys << np.uint64(8)) | hashes[:, c].astype(np.uint64)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], n]
        keep = ends - starts > 1
        small: list[tuple[int, int]] = []  # pairs from this range's short runs
        for start, end in zip(starts[keep].tolist(), ends[keep].tolist(), strict=True):
            cost += (end - start) ** 2
            idx = sorted(order[start:end].tolist())
            if end - start > _BLOCK:
                large.append(np.asarray(idx))
            else:
                small.extend(itertools.combinations(idx, 2))
        if cost >= n * n:  # hashes with little in them share most values
            return _compare_all(hashes, max_bits)
        if small:  # checked per range, so the candidates never pile up
            cand = np.asarray(small, np.int64)
            bits = np.bitwise_count(hashes[cand[:, 0]] ^ hashes[cand[:, 1]]).sum(axis=1)
            pairs.update((int(i), int(j)) for i, j in cand[bits <= max_bits].tolist())
    for run in large:
        pairs.update((int(run[a]), int(run[b])) for a, b in _compare_all(hashes[run], max_bits))
    return sorted(pairs)


def _unit_rows(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``thumbs`` ``[N, K]`` centred and scaled so that a dot product of two is
    their correlation, and the indices of the rows kept (flat ones look like no other)."""
    flat = thumbs.astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    std = np.sqrt((flat * flat).mean(axis=1))
    keep = np.flatnonzero(std >= FLAT_STD)
    return flat[keep] / (std[keep, None] * np.sqrt(flat.shape[1])), keep


def _alike_pairs(thumbs: list[np.ndarray]) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` of thumbnails that are copies of one picture by correlation:
    every pair compared at 16x16 (20,000 images: 4e8 dot products of 256 numbers by
    blocks, about 4.5 s here), a candidate kept only when neither image has more than ``MAX_ALIKE``
    look-alikes, then confirmed at 32x32 at ``COPY_ALIKE``. This finds copies whose
    gradient hash moved (textures, flat synthetic frames) without calling the units of a
    fixed-camera line copies of each other; block by block, so memory stays
    ``_ALIKE_BLOCK`` rows by N whatever the images look like."""
    if len(thumbs) < 2:
        return []
    full = np.stack(thumbs).reshape(len(thumbs), -1)
    small = np.stack([cv2.resize(t, (COARSE, COARSE), interpolation=cv2.INTER_AREA)
                      for t in thumbs]).reshape(len(thumbs), -1)
    unit, keep = _unit_rows(small)
    if len(unit) < 2:  # flat thumbnails look like no other
        return []
    # each block against every row: a row's look-alikes are all counted in its own block,
    # so only rows with few of them give candidates (at most MAX_ALIKE each, memory ~ 8N)
    alike = np.zeros(len(unit), np.int64)
    cand: list[np.ndarray] = []
    for start in range(0, len(unit), _ALIKE_BLOCK):
        close = unit[start:start + _ALIKE_BLOCK] @ unit.T >= COARSE_ALIKE
        alike[start:start + _ALIKE_BLOCK] = close.sum(axis=1) - 1
        close[alike[start:start + _ALIKE_BLOCK] > MAX_ALIKE] = False
        ii, jj = np.nonzero(close)
        upper = jj > start + ii
        cand.append(np.stack([start + ii[upper], jj[upper]], axis=1))
    pairs = np.concatenate(cand)
    pairs = pairs[alike[pairs[:, 1]] <= MAX_ALIKE]
    i, j = keep[pairs[:, 0]], keep[pairs[:, 1]]
    # then each confirmed at 32x32
    unit_full, kept = _unit_rows(full)
    row = np.full(len(thumbs), -1)
    row[kept] = np.arange(len(kept))
    a, b = row[i], row[j]
    both = (a >= 0) & (b >= 0)
    i, j, a, b = i[both], j[both], a[both], b[both]
    out: list[tuple[int, int]] = []
    chunk = _ALIKE_BLOCK * 16  # pairs confirmed at once (two 4 KB rows each: ~64 MB)
    for s in range(0, len(a), chunk):
        part = slice(s, s + chunk)
        copy = np.einsum("ij,ij->i", unit_full[a[part]], unit_full[b[part]]) >= COPY_ALIKE
        out.extend(zip(i[part][copy].tolist(), j[part][copy].tolist(), strict=True))
    return out


def exact_groups(dataset: Dataset, digests: dict[str, str] | None = None) -> list[DuplicateGroup]:
    """Groups of byte-identical images only, by their bytes' SHA-256: what a label conflict
    needs, without :func:`find_duplicates`' decoding and pairing (import's check of a set
    that brought no split of its own, and train's of every set). Only files of one size
    are hashed (byte-identical files are): a stat per image otherwise, so the 2,000
    DeepPCB images cost 0.1 s, not the 1.5 s of reading them all. ``digests`` (image path
    -> SHA-256): those known already, and those hashed here are added (train compares
    merged sets by content after this check: each file hashed once)."""
    by_size: dict[int, list[ImageRecord]] = {}
    for rec in dataset.images:
        try:
            size = Path(dataset.image_path(rec)).stat().st_size
        except (OSError, ValueError):
            continue  # validation's problem to report
        by_size.setdefault(size, []).append(rec)
    by_sha: dict[str, list[ImageRecord]] = {}
    for same_size in (m for m in by_size.values() if len(m) > 1):
        for rec in same_size:
            path = str(dataset.image_path(rec))
            try:
                digest = (digests[path] if digests is not None and path in digests
                          else sha256_file(Path(path)))
            except OSError:
                continue  # validation's problem to report
            if digests is not None:
                digests[path] = digest
            by_sha.setdefault(digest, []).append(rec)
    return [DuplicateGroup("exact", members) for members in by_sha.values() if len(members) > 1]


def find_duplicates(dataset: Dataset, prints: dict[str, Fingerprint] | None = None,
                    *, max_bits: int = NEAR_BITS) -> list[DuplicateGroup]:
    """Groups of two or more images that are byte-identical or look the same, in dataset
    order. ``prints`` (from :func:`fingerprints`) is computed when not given."""
    prints = fingerprints(dataset) if prints is None else prints
    records = [r for r in dataset.images if r.file_name in prints]
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def twins(i: int, j: int) -> bool:
        """A reference and its defective image: alike by design, never duplicates."""
        a, b = records[i], records[j]
        return a.reference == b.file_name or b.reference == a.file_name

    def join(i: int, j: int) -> None:
        if not twins(i, j):
            parent[root(j)] = root(i)

    by_sha: dict[str, int] = {}
    for i, rec in enumerate(records):
        first = by_sha.setdefault(prints[rec.file_name].sha256, i)
        if first != i:
            join(first, i)
    hashed = [i for i, r in enumerate(records) if prints[r.file_name].dhash is not None]
    near: set[tuple[int, int]] = set()
    if len(hashed) > 1:
        matrix = np.stack([prints[records[i].file_name].dhash for i in hashed])  # type: ignore[misc]
        for a, b in _near_pairs(matrix, max_bits):
            ta = prints[records[hashed[a]].file_name].thumb
            tb = prints[records[hashed[b]].file_name].thumb
            if ta is None or tb is None or look_alike(ta, tb):
                near.add((hashed[a], hashed[b]))
        thumbed = [i for i, h in enumerate(hashed) if prints[records[h].file_name].thumb is not None]
        thumbs = [prints[records[hashed[i]].file_name].thumb for i in thumbed]
        near.update((hashed[thumbed[a]], hashed[thumbed[b]])
                    for a, b in _alike_pairs(thumbs))  # type: ignore[arg-type]
    # an image near more than MAX_ALIKE others looks like its product, not like a copy of
    # one picture: its near pairs would chain every unit of a line into one group
    partners = np.zeros(len(records), np.int64)
    for a, b in near:
        if not twins(a, b):
            partners[a] += 1
            partners[b] += 1
    for a, b in sorted(near):
        if partners[a] <= MAX_ALIKE and partners[b] <= MAX_ALIKE:
            join(a, b)
    groups: dict[int, list[ImageRecord]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(root(i), []).append(rec)
    out = []
    for members in groups.values():
        if len(members) > 1:
            same_bytes: dict[str, list[ImageRecord]] = {}
            for r in members:
                same_bytes.setdefault(prints[r.file_name].sha256, []).append(r)
            copies = [m for m in same_bytes.values() if len(m) > 1]
            out.append(DuplicateGroup("exact" if len(same_bytes) == 1 else "near", members, copies))
    return out


def duplicate_problems(groups: list[DuplicateGroup]) -> list[Problem]:
    """One problem per group straddling a split boundary (a leak from training into
    evaluation), and per group of byte-identical copies labelled differently (one of
    them is mislabelled; a group that is just such a set is said once, as that conflict,
    which names the split too); other duplicates within one split are only worth a warning."""
    leaks = [Problem(g.members[0].origin or g.members[0].file_name, "",
                     f"{g.describe()}: {g.leak} ({g.remedy})", g.members[0].file_name)
             for g in groups if g.across_splits and not _one_conflict(g)]
    return leaks + label_conflicts(groups)


def _one_conflict(group: DuplicateGroup) -> bool:
    """Whether ``group`` is nothing but one set of copies labelled differently: its label
    conflict (:func:`label_conflicts`) says the split too, so the pair is reported once
    (it was twice, as a leak and as a conflict: session 49)."""
    sets = group.mislabelled
    return len(sets) == 1 and len(sets[0].members) == len(group.members)


def label_conflicts(groups: list[DuplicateGroup]) -> list[Problem]:
    """A problem per set of byte-identical copies labelled differently (a near group may
    hold one): one picture cannot be both, and ``--dedupe`` must not pick a label."""
    return [Problem(c.members[0].origin or c.members[0].file_name, "",
                    f"{c.describe().replace('duplicate images', 'copies of one picture', 1)}: "
                    + ("one of them is mislabelled; fix the labels (or remove the wrong copy) "
                       "before --dedupe" if not c.across_splits else
                       f"one of them is mislabelled, and {c.leak}; fix the labels (or remove "
                       "the wrong copy), then run 'lineside data validate --dedupe' or "
                       "'lineside data split', which keeps them together"),
                    c.members[0].file_name)
            for g in groups for c in g.mislabelled]


def dedupe(dataset: Dataset, groups: list[DuplicateGroup]) -> list[ImageRecord]:
    """Keep one image of each group whose members are labelled alike (the one with the
    most boxes, then the one in test, val, train, then the first), drop the others from
    ``dataset`` in place and point references at the kept copy; returns the dropped
    records. A group labelled differently is left whole, but for its byte-identical copies
    labelled alike (one of each is kept)."""
    dropped: dict[str, str] = {}
    for g in groups:
        # a group labelled differently is kept but for its byte-identical copies labelled
        # alike: no other copy's labels stand for the others' (see labels_differ)
        alike = [g.members] if not g.labels_differ else [
            c for c in g.copies if not DuplicateGroup("exact", c).labels_differ]
        for members in alike:
            keep = min(members, key=lambda r: (-len(r.boxes), _KEEP_ORDER.get(r.split, 3)))
            for r in members:
                if r is not keep:
                    dropped[r.file_name] = keep.file_name
    removed = [r for r in dataset.images if r.file_name in dropped]
    left = {r.split for r in dataset.images if r.file_name not in dropped}
    emptied = sorted({r.split for r in removed if r.split} - left)
    if emptied:  # refused before anything changes: a split of copies is a split, not noise
        raise DatasetError(f"--dedupe would remove every image of the {', '.join(emptied)} "
                           "split (each is a copy of an image kept in another split); run "
                           "'lineside data split' to re-split with copies kept together")
    dataset.images = [r for r in dataset.images if r.file_name not in dropped]
    for r in dataset.images:
        if r.reference in dropped:
            r.reference = dropped[r.reference]
    return removed
