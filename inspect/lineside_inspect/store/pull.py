"""Reviewed inspections -> a canonical dataset that ``lineside train`` takes directly.

Confirmed defects become boxes, false rejects good images, missed defects carry the
reviewer's boxes: the truth after an inspection's latest review.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import httpx
from pydantic import ValidationError

from lineside_inspect.atomic import link_or_copy
from lineside_inspect.bounded_read import IDENTITY, AnswerEncoded, AnswerTooSlow, read_at_most
from lineside_inspect.dataset import Box, Dataset, ImageRecord, write_dataset
from lineside_inspect.dataset.canonical import check_destination, writer_gone
from lineside_inspect.dataset.duplicates import DuplicateGroup, labels_said
from lineside_inspect.dataset.exif import HEAD_BYTES, as_stored, orientation
from lineside_inspect.dataset.painted import unjudged
from lineside_inspect.errors import (
    ConfigError,
    DatasetError,
    ImageError,
    NotFoundError,
    ServerUnreachable,
    UnreadableRecord,
    describe_validation,
)
from lineside_inspect.imageio import decode_image
from lineside_inspect.names import BIDI_RE, CONTROL_RE, NAME_RULE, is_name
from lineside_inspect.opencv import cv2
from lineside_inspect.package import ANOMALY_LABEL
from lineside_inspect.recipes.schema import RecipeRegions
from lineside_inspect.runtime.reference import shift_onto
from lineside_inspect.runtime.unchanged import ALIGN_MAX_SHIFT
from lineside_inspect.schemas import InspectionPage
from lineside_inspect.store.models import InspectionRow
from lineside_inspect.store.pull_regions import Regions, Source, painted, store_source
from lineside_inspect.store.pull_rules import left_out_why  # (the rules: one place)
from lineside_inspect.store.pull_rules import located as _located
from lineside_inspect.store.store import REFS_DIR, Store
from lineside_inspect.store.utc import as_utc

log = logging.getLogger("lineside.store")
PAGE = 500
# what another server may send (data pull review, session 32: two 1.5 GB "images" took
# 4.7 GB of memory; a list that never ended looped for ever; a byte every 5 s hung it):
# an image at most the server's own largest body could have been, each answer whole
# within its time, the list at most what its first page said plus what came meanwhile
MAX_PULL_IMAGE_BYTES = 64 << 20
ANSWER_TIMEOUT_S = 300.0
MAX_PAGE_BYTES = 64 << 20
# a recipe's regions answer: a server's versions file is 4 MB at most, its regions 2 MB of
# it (recipes/saved.py); 64 MB of polygons from a hostile server held a GB (session 56)
MAX_REGIONS_BYTES = 8 << 20


def _folder(camera_id: str | None, inspection_id: str) -> str:
    """The dataset folder of a camera's inspections: its id when that is a name
    (names.py), as every id the server takes now is; an older store (or another server)
    may hold one that is not ('../x', 'a/b', '/abs'): it gets a folder of its own named by
    its hash, never a path outside images/, and the pull goes on."""
    if not camera_id:
        return "upload"
    if is_name(camera_id):
        return camera_id
    folder = f"camera-{hashlib.sha256(camera_id.encode('utf-8', 'replace')).hexdigest()[:16]}"
    log.info("pull: inspection %s: camera id %r is not a name; its image goes in %s/",
             inspection_id, camera_id[:200], folder)
    return folder


def _record(item: dict[str, Any], source: Path, ext: str,
            shift: tuple[float, float] | None = None) -> ImageRecord | None:
    """The dataset's image of ``item``; with ``shift`` its frame was moved onto its golden
    by it (:func:`_align`), and its boxes, drawn on the frame as sent, move with it. None
    when every box it had lies outside the image: the defect is not in it, and as a good
    image it taught that the part was good."""
    truth = _located(item, item["reviews"][-1]["boxes"] if item["reviews"] else item["defects"])
    group = _folder(item.get("camera_id"), item["id"])
    width, height = item["width"], item["height"]
    dx, dy = shift or (0.0, 0.0)
    boxes = []
    for b in truth:  # (the whole image as anomaly says nowhere)
        # clipped to the image, as `data validate` wants it: a detector's box clipped at
        # the edge can have no width left (x1 == x2), a server may round a pixel out, and
        # an aligned frame's edge band shows the golden, not the part
        # (to 0.01 px, as the store keeps boxes and shifts)
        x1, y1, x2, y2 = (min(max(round(float(v) - d, 2), 0.0), limit)
                          for v, d, limit in zip(b["box"], (dx, dy, dx, dy),
                                                 (width, height, width, height), strict=True))
        if x2 <= x1 or y2 <= y1:
            log.info("pull: inspection %s: box %s has no area inside its %dx%d image%s: left "
                     "out", item["id"], b["box"], width, height,
                     f" aligned by ({dx}, {dy})" if shift else "")
            continue
        boxes.append(Box(x1, y1, x2, y2, b["label"], origin=f"inspection {item['id']}"))
    if truth and not boxes:
        log.info("pull: left out inspection %s: none of its %d defect box(es) is inside its "
                 "image%s", item["id"], len(truth), " once aligned" if shift else "")
        return None
    return ImageRecord(f"{group}/{item['id']}.{ext}", item["width"], item["height"], boxes,
                       group=item.get("part_id") or group, source=source,
                       origin=f"inspection {item['id']}", aligned=shift)


def _upright(path: Path, data: bytes) -> bytes:
    """The staged JPEG at ``path``, its bytes ``data``, rewritten with an EXIF orientation
    that says to show it turned set to 1 ("as stored"), and its bytes as written. Lineside
    judged its pixels as stored and the reviewer drew on them (the review page shows them
    so); kept turned, OpenCV's ``imread``, PIL's ``exif_transpose`` and Ultralytics read
    the pulled file turned, every box off its defect, and `data validate` said nothing (a
    square frame keeps its size). A new file: the staged one may be a link to the store's."""
    fixed = as_stored(data)
    if fixed is not data:
        path.unlink()
        path.write_bytes(fixed)
    return fixed


def _upright_golden(path: Path) -> None:
    """:func:`_upright` of a staged golden image, read only when its header says turned."""
    try:
        with path.open("rb") as f:
            if orientation(f.read(HEAD_BYTES)) == 1:
                return
        _upright(path, path.read_bytes())
    except OSError as exc:  # (read for its check already: the system's word, logged)
        log.warning("pull: golden image %s: could not set its EXIF orientation: %s",
                    path.name, exc.strerror)


def _stored_shift(item: dict[str, Any]) -> tuple[float, float] | None:
    """The shift ``align_reference`` moved the frame by onto its golden, as the store keeps
    it (``reference.shift``); None when the frame was not aligned (its recipe does not
    align, the unchanged gate passed it) or stored before the store kept the shift."""
    shift = (item.get("reference") or {}).get("shift")
    return None if shift is None else (float(shift[0]), float(shift[1]))


def _shift_problem(shift: tuple[float, float]) -> str | None:
    """Why a stored shift is none alignment found: it searches ALIGN_MAX_SHIFT px at most
    (a hub keeps what a box sent)."""
    if all(math.isfinite(v) and abs(v) <= ALIGN_MAX_SHIFT for v in shift):
        return None
    return (f"its stored alignment shift {list(shift)} is beyond align_reference's "
            f"{ALIGN_MAX_SHIFT} px")


def _align(item: dict[str, Any], frame: bytes, golden: bytes, shift: tuple[float, float],
           folder: Path) -> Path | str:
    """The frame moved onto its golden by its stored shift, as the server moved it before
    its reference model compared them (the stored shift, not a second search, which
    may land elsewhere), written to ``folder`` as PNG (lossless: a second JPEG pass would
    be a loss the model never saw); or why it cannot be."""
    if problem := _shift_problem(shift):
        return problem
    try:
        aligned = shift_onto(decode_image(frame), decode_image(golden), *shift)
    except ImageError as exc:  # (ReferenceImageError: not its golden's size)
        return f"its image or golden: {exc.message}"
    ok, buf = cv2.imencode(".png", aligned)
    if not ok:
        return "its aligned frame could not be encoded as PNG"
    folder.mkdir(exist_ok=True)
    path = folder / f"{item['id']}.png"
    path.write_bytes(buf.tobytes())
    return path


class _Unaligned:
    """Pairs pulled with no stored shift, said once at the end. A pair of a recipe whose
    other pairs carry one was aligned when served, but stored before the store kept the
    shift (2026-12-05): it is pulled unaligned, as stored, and the pull says how many."""

    def __init__(self) -> None:
        self.aligning: set[tuple[str, str]] = set()  # recipes (name, version) seen aligned
        self.without: list[tuple[tuple[str, str], str]] = []  # (recipe, id) with no shift

    def note(self, item: dict[str, Any], shift: tuple[float, float] | None) -> None:
        recipe = (str(item["recipe"]["name"]), str(item["recipe"]["version"]))
        if shift is not None:
            self.aligning.add(recipe)
        elif not (item.get("reference") or {}).get("unchanged"):
            # (a part the unchanged gate passed was not aligned when served either)
            self.without.append((recipe, item["id"]))

    def say(self) -> None:
        known = [i for recipe, i in self.without if recipe in self.aligning]
        if known:
            log.warning("pull: %d pair(s) of recipes that align (align_reference) were stored "
                        "without their shift, by a release before the store kept it: pulled "
                        "as stored, unaligned (e.g. inspection %s)", len(known), known[0])
        elif self.without:
            log.info("pull: %d pair(s) have no stored alignment shift (their recipe does not "
                     "align, or they were stored before the store kept it): pulled as stored",
                     len(self.without))


def _with_reference(records: list[ImageRecord], refs: dict[str, ImageRecord], rec: ImageRecord,
                    ref_source: Path) -> None:
    """Add ``rec`` with its reference: the reference file (content-addressed, shared by
    many inspections) becomes one good image of the dataset, in ``rec``'s group."""
    name = _reference_name(ref_source)
    if name not in refs:
        refs[name] = ImageRecord(name, rec.width, rec.height, [], group=rec.group,
                                 source=ref_source, origin=f"reference of {rec.origin}")
        records.append(refs[name])
    rec.reference = name
    records.append(rec)


def _reference_name(ref_source: Path) -> str:
    """The dataset's name of the reference image staged at ``ref_source``."""
    return f"references/{ref_source.name}"


def _ext(content_type: str) -> str:
    return {"image/png": "png", "image/bmp": "bmp"}.get(content_type.split(";")[0], "jpg")


def recipe_filter(recipes: Sequence[str] | None) -> tuple[str, ...]:
    """The recipes a pull is held to (``data pull --recipe``), each once, in the order
    given; () for every recipe's. Each must be a name as a recipe's is (names.py, the full
    match): one that is not is refused before anything is listed. The list takes ``""``
    as no filter, and would have pulled every recipe's inspections as one's."""
    if isinstance(recipes, str):  # (a str is a Sequence of one-letter "recipes")
        recipes = [recipes]
    out: list[str] = []
    for name in recipes or ():
        if not is_name(name):
            raise DatasetError(f"--recipe {str(name)[:140]!r}: must be {NAME_RULE}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _asked(part_id: str | None, since: datetime | None, reviewed: bool,
           recipes: Sequence[str] = ()) -> str:
    """What a pull asked for, as its "nothing matched" error says it: a part's pull that
    found none said only "no reviewed inspections ... match", neither the part nor where its
    inspections are reviewed (a new QA lead's walk, session 48)."""
    said = [f"of part {part_id!r}"] if part_id else []
    if recipes:
        said.append(f"of recipe {' or '.join(repr(r) for r in recipes)}")
    if since is not None:
        said.append(f"made since {since.isoformat()}")
    out = f" ({', '.join(said)})" if said else ""
    if part_id and reviewed:
        link = urlencode({"part_id": part_id, "verdict": "", "review_state": ""})
        out += f"; review them first on the review page, /review?{link}"
    return out


def _dataset(records: list[ImageRecord], classes: list[str], origin: str,
             asked: str = "", left_out: int = 0) -> Dataset:
    if not records and left_out:  # (it said "review them first" of reviewed ones, session 50)
        raise DatasetError(f"{origin}: nothing to pull: the {left_out} inspection(s) that "
                           f"match{asked.split(';')[0]} were all left out, as said above")
    if not records:
        raise DatasetError(f"{origin}: no reviewed inspections with a stored image match{asked}")
    return Dataset(classes, records, info={"source": f"lineside reviews from {origin}",
                                           "pulled_at": datetime.now(UTC).isoformat()})


class _Cursor:
    """Where the next page starts: the list is newest first (ties by id), and each page
    is asked for as "up to the oldest time seen, skipping the ones at that time already
    listed". By offset alone, a row retention removed meanwhile from a page already read
    (the quota takes passes' images before fails') moved every later row up one, and the
    row crossing the page boundary was never pulled; a row added meanwhile moves nothing."""

    def __init__(self) -> None:
        self.oldest: datetime | None = None  # the oldest time listed so far
        self.at_oldest: set[str] = set()  # the ids listed at that time (the first by id)
        self.passed = 0  # rows of pages passed over since it last moved (:meth:`pass_over`)

    def params(self) -> tuple[datetime | None, int]:
        """(until, offset) for the next page: ``until`` exclusive, so just past the time."""
        if self.oldest is None:
            return None, self.passed
        return self.oldest + timedelta(microseconds=1), len(self.at_oldest) + self.passed

    def pass_over(self, n: int) -> None:
        """A page of ``n`` rows none of which read (no time to page from): the next page
        starts past them by offset, until a page moves the cursor. Such a page was taken
        as the list's end, and every row after it was never pulled."""
        self.passed += n

    def advance(self, rows: list[tuple[datetime, str]]) -> bool:
        """After a page of ``rows`` (time, id) in list order; False when it listed nothing
        older than the pages before, nor anything new at their oldest time: a server that
        sends a page again (it ignored ``offset``, a cache keyed by path) would be asked for
        the same page for ever, the offset growing and nothing pulled."""
        oldest, seen = self.oldest, self.at_oldest
        moved = oldest is None or any(t < oldest or (t == oldest and i not in seen)
                                      for t, i in rows)
        if not moved:  # (rows listed before: where the next page starts stays as it was)
            return False
        last = rows[-1][0]
        at_last = {i for t, i in rows if t == last}
        self.at_oldest = seen | at_last if last == oldest else at_last
        self.oldest = last
        self.passed = 0  # (the rows passed over are before its new place)
        return True


class _Placing:
    """One pull's dataset, placed item by item: the steps a stored inspection goes
    through whether it was read from a store or fetched from a server. Each path carried
    its own copy, and the store's lacked the checks the server's had: an image that does
    not decode or is not its record's size, a golden that is not the one its record
    names by sha256, went into the set (session 41)."""

    def __init__(self, tmp: Path, regions: Source, keep_anomaly: bool = False) -> None:
        self.tmp = tmp  # the staging folder (:func:`_staging`)
        # where each recipe judged: the rest of a frame is painted out (pull_regions.py)
        self.regions = Regions(regions)
        # ``anomaly`` boxes kept as a class (``data pull --keep-anomaly``): the line's
        # defects for a good-only model's evaluation, which a good-only station's review
        # page can label with nothing else (adversarial read, session 50)
        self.keep_anomaly = keep_anomaly
        self.records: list[ImageRecord] = []
        self.refs: dict[str, ImageRecord] = {}  # reference images already in, by name
        self.classes: list[str] = []
        self.seen: set[str] = set()
        self.skipped: list[str] = []  # left out: "id: why"
        # left out as nothing a detector learns from, said in one line each at the end
        # (each was an INFO line `data pull` does not show: a pull said only how many it took),
        # by the reason pull_rules.left_out_why gave: the words the review page shows
        self.unlearnable: dict[str, list[str]] = {}
        self.unaligned = _Unaligned()
        # a golden's problem with an item of its size and named sha256 (one serves many)
        self.goldens: dict[tuple[Path, int, int, str | None], str | None] = {}
        # not pulled for want of an image, by :data:`NO_IMAGE` or :data:`GONE`: said at the
        # end. Each was an INFO line `data pull` does not show, or none at all: a disk
        # cleanup's or retention's reviewed inspections left the set unsaid (session 52)
        self.imageless: dict[str, list[str]] = {}
        # the pulled frames, to pull each picture once (:meth:`_one_picture_once`)
        self.pictures: list[_Picture] = []

    def first(self, inspection_id: str) -> bool:
        """Whether the inspection is new to this pull (a list's pages may repeat one)."""
        if inspection_id in self.seen:
            return False
        self.seen.add(inspection_id)
        return True

    def wanted(self, item: dict[str, Any]) -> bool:
        """Whether ``item`` is worth its images (asked before they are read)."""
        if any(CONTROL_RE.search(n) or BIDI_RE.search(n) for n in _labels_of(item)):
            # no Lineside server has one (a review's label and a card's class names are
            # refused so): a foreign server's or a hand-edited row's. It went into the
            # set's classes, a model package then refused, and a newline in it forged
            # lines of the pull's own log (adversarial read, session 52)
            self.unlearnable.setdefault(UNPLAIN, []).append(item["id"])
            return False
        if why := left_out_why(item, keep_anomaly=self.keep_anomaly):
            log.info("pull: left out inspection %s: %s", item["id"], why)
            self.unlearnable.setdefault(why, []).append(item["id"])
            return False
        return True

    def place(self, item: dict[str, Any], image: Path, golden: Path | None) -> None:
        """``item``'s record in the dataset, its image staged at ``image`` and its golden
        (the store's ``refs/<sha256>.<ext>``) at ``golden``; or left out, named."""
        data = _read(image, "image")  # (or why it does not read: the store's file's mode)
        stored = data  # (the frame as stored: what makes two inspections one picture)
        ref: bytes | str | None = None  # the golden's bytes, when its check read them
        problem = data if isinstance(data, str) else _image_problem(item, data)
        if problem is None and golden is not None:
            problem, ref = self._golden_problem(item, golden)
        shift = _stored_shift(item) if golden is not None else None
        aligned: Path | str | None = None
        if problem is None and isinstance(data, bytes) and golden is not None \
                and shift is not None and shift != (0.0, 0.0):
            # (read once: its check read it for the first item naming it)
            ref = _read(golden, "golden image") if ref is None else ref
            aligned = ref if isinstance(ref, str) else _align(item, data, ref, shift,
                                                              self.tmp / "aligned")
            if isinstance(aligned, str):
                problem = aligned
            else:  # (the frame as stored: a link to the store's file is never written to)
                image.unlink()
                image = aligned
        if problem is not None:
            self.skip(item["id"], problem)
            self._drop(image, golden)
            return
        rec = _record(item, image, image.suffix.lstrip("."), shift)
        if rec is None:
            self._drop(image, golden)
            return
        out = self._paint_out(item, rec, image, data, golden, ref, shift)
        if isinstance(out, str):
            self.skip(item["id"], out)
            self._drop(image, golden)
            return
        if out is not None:
            image, golden, data = out
        elif isinstance(data, bytes) and not isinstance(aligned, Path):
            data = _upright(image, data)
        # (``anomaly``, a good-only model's one class, labels no box pulled: anomaly_labelled)
        self.classes += [n for n in item["class_names"]
                         if n not in self.classes
                         and (n != ANOMALY_LABEL or self.keep_anomaly)]
        if golden is not None:
            self.unaligned.note(item, shift)
            _with_reference(self.records, self.refs, rec, golden)
        else:
            self.records.append(rec)
        # the bytes as written: as read (:func:`_upright`), painted out, or the aligned PNG
        written = image.read_bytes() if isinstance(aligned, Path) and out is None else data
        self.pictures.append(_Picture(_sha(stored), _sha(written), _last_word(item), rec))

    def _paint_out(self, item: dict[str, Any], rec: ImageRecord, image: Path,
                   data: bytes | str, golden: Path | None, ref: bytes | str | None,
                   shift: tuple[float, float] | None,
                   ) -> tuple[Path, Path | None, bytes] | str | None:
        """``rec``'s frame (staged at ``image``) and its golden painted out where its
        recipe never judged (pull_regions.py), as (frame, golden, the frame's bytes), the
        record renamed to the PNG; None when there is nothing to paint (no regions, or
        the whole frame judged), or why it cannot be. Regions not known are noted.
        ``ref``: the golden's bytes when :meth:`place` read them already (its check or
        the alignment), else None (read here)."""
        area = self.regions.of(item)
        if area is False:
            self.regions.note_unknown(item, rec.file_name)
            return None
        if area is None or isinstance(area, bool):
            return None
        mask = unjudged(area, rec.width, rec.height, shift, rec.boxes)
        if mask is None:
            return None
        frame = image.read_bytes() if rec.aligned is not None else data
        if isinstance(frame, str):
            return frame
        target = self.tmp / "painted" / f"{item['id']}.png"
        try:
            got = painted(frame, mask, target)
            if golden is None or isinstance(got, str):
                ref = None
            else:  # (read once: place's check or alignment may have read it)
                ref = _read(golden, "golden image") if ref is None else ref
                if not isinstance(ref, str):
                    ref = painted(ref, mask, self.tmp / "painted" / f"{item['id']}.golden.png")
        except ImageError as exc:
            return f"painting out where its recipe never judged: {exc.message}"
        if isinstance(got, str) or isinstance(ref, str):
            return str(got if isinstance(got, str) else ref)
        image.unlink()  # (the frame as staged: a link to the store's file is never written to)
        rec.source, rec.file_name = target, f"{rec.file_name.rsplit('.', 1)[0]}.png"
        self.regions.note_painted(item, rec.file_name, area)
        if ref is None:
            return target, None, got
        # (named by its content, as a stored golden: pairs whose masks agree share it)
        staged = self.tmp / REFS_DIR / f"{hashlib.sha256(ref).hexdigest()}.png"
        if not staged.exists():
            (self.tmp / "painted" / f"{item['id']}.golden.png").replace(staged)
        return target, staged, got

    def _one_picture_once(self) -> None:
        """Of frames stored byte for byte alike (one picture inspected twice: a line
        client's retry of a timed-out request, a simulated camera looping its files, a PLC
        re-trigger), the one whose latest review is newest, the reviewers' last word
        (:func:`_last_word`), stays; the others are left out, each kind said in one line.
        Both went in, and copies reviewed differently made `data validate` and `lineside
        train` refuse the whole pulled set, the pull saying nothing (session 52); copies
        labelled alike were reported as duplicates. The frames as stored are compared
        first: painted out (pull_regions.py), copies differ where a reviewer's box kept one
        unpainted or two recipe versions' regions painted them, and all went in, labelled
        two ways (session 56). Then those kept are compared as written (frames of other
        bytes, a frame counter's, read alike: aligned, or painted alike), which `data
        validate` would find copies. Golden images (``references/``, one many pairs share)
        are no frames: one whose pairs all went stays out with them."""
        out: dict[bool, list[tuple[ImageRecord, ImageRecord]]] = {True: [], False: []}
        kept = self.pictures
        for which in ("stored", "written"):  # (the second pass: of those the first kept)
            by: dict[str, list[_Picture]] = {}
            for picture in kept:
                by.setdefault(getattr(picture, which), []).append(picture)
            kept = []
            for copies in by.values():
                keep = max(copies, key=lambda c: c.last_word).rec
                for picture in copies:
                    if picture.rec is keep:
                        kept.append(picture)
                    else:  # (the validator's own rule for "labelled differently")
                        differ = DuplicateGroup("exact", [keep, picture.rec]).labels_differ
                        out[differ].append((picture.rec, keep))
        gone = {id(rec) for pairs in out.values() for rec, _ in pairs}
        if not gone:
            return
        frames = [r for r in self.records if id(r) not in gone and r.file_name not in self.refs]
        named = {r.reference for r in frames}
        self.records = [r for r in self.records
                        if id(r) not in gone and (r.file_name not in self.refs
                                                  or r.file_name in named)]
        if pairs := out[True]:
            rec, keep = pairs[0]
            log.warning("pull: %d inspection(s) left out, byte-identical copies of a picture "
                        "inspected again and reviewed differently: the copy reviewed last is "
                        "the reviewers' last word and is pulled (e.g. inspection %s [%s], a "
                        "copy of inspection %s [%s]); if that was wrong, review it again",
                        len(pairs), _stem(rec), labels_said(rec), _stem(keep), labels_said(keep))
        if pairs := out[False]:
            rec, keep = pairs[0]
            log.warning("pull: %d inspection(s) left out, byte-identical copies of a picture "
                        "inspected again and labelled alike: pulled once (e.g. inspection %s, "
                        "a copy of inspection %s)", len(pairs), _stem(rec), _stem(keep))

    def _golden_problem(self, item: dict[str, Any], golden: Path) -> tuple[str | None, bytes | None]:
        """Why ``golden`` does not serve ``item`` (None: it does), and its bytes when they
        were read for it now (a check cached for an item before reads nothing)."""
        said = (item.get("reference") or {}).get("sha256")
        key = (golden, item["width"], item["height"], None if said is None else str(said))
        if key in self.goldens:
            return self.goldens[key], None
        data = _read(golden, "golden image")
        self.goldens[key] = data if isinstance(data, str) else (
            _image_problem(item, data, "golden image") or _altered(item, data))
        return self.goldens[key], data if isinstance(data, bytes) else None

    def _drop(self, image: Path, golden: Path | None) -> None:
        """What an item left out staged: the staging folder holds what goes in. A server's
        golden is written as it comes, before its item is checked (:func:`_fetch`), and a
        hostile server's goldens of items left out, 64 MB each, were kept to the pull's
        end (review, session 41); one another item put in stays."""
        image.unlink(missing_ok=True)
        if golden is not None and _reference_name(golden) not in self.refs:
            golden.unlink(missing_ok=True)

    def no_image(self, inspection_id: str, why: str) -> None:
        """``inspection_id`` not pulled, its image not there (:data:`NO_IMAGE`,
        :data:`GONE`), said with the rest at the end (:meth:`write`)."""
        self.imageless.setdefault(why, []).append(inspection_id)

    def skip(self, inspection_id: str, why: str) -> None:
        """``inspection_id`` left out, said with the rest at the end (:meth:`write`)."""
        self.skipped.append(f"{inspection_id}: {why}")

    def write(self, origin: str, dst: str | Path, overwrite: bool, asked: str = "") -> Dataset:
        """The dataset written to ``dst``, once what was left out is said (``asked``: the
        pull's filters, said if nothing matched them, :func:`_asked`)."""
        self._one_picture_once()
        self.unaligned.say()
        for why, ids in self.unlearnable.items():
            log.warning("pull: %d inspection(s) left out, %s (e.g. inspection %s)",
                        len(ids), why, ids[0])
        for why, ids in self.imageless.items():
            log.warning("pull: %d inspection(s) not pulled, %s (e.g. inspection %s)",
                        len(ids), why, ids[0])
        if self.skipped:
            log.warning("pull: %d inspection(s) left out, their images broken (or a stored "
                        "shift out of range): %s%s", len(self.skipped),
                        "; ".join(self.skipped[:5]), " ..." if len(self.skipped) > 5 else "")
        for ref in self.refs.values():  # (once every pair's check read it as stored)
            if ref.source is not None:
                _upright_golden(ref.source)
        left_out = len(self.skipped) + sum(map(len, self.unlearnable.values()))
        dataset = _dataset(self.records, self.classes, origin, asked, left_out)
        dataset.info.update(self.regions.say({r.file_name for r in self.records}))
        return write_dataset(dataset, dst, overwrite=overwrite)


class _Picture(NamedTuple):
    """A pulled frame as :meth:`_Placing._one_picture_once` compares it: the sha256 of
    its bytes as stored and as written, and its :func:`_last_word`."""

    stored: str
    written: str
    last_word: tuple[Any, ...]
    rec: ImageRecord


def _last_word(item: dict[str, Any]) -> tuple[Any, ...]:
    """What orders copies of one picture (:meth:`_Placing._one_picture_once`), the
    largest kept: a reviewed one before any unreviewed (the model's word, with
    ``--no-reviewed``), then the time of its latest review, then the review's id, then the
    inspection's time and id (ties of a clock: the one made later)."""
    reviews = item["reviews"]
    last = reviews[-1] if reviews else None
    return (last is not None, _when(last["created_at"]) if last else _when(None),
            int(last["id"]) if last else -1, _when(item.get("created_at")), item["id"])


def _sha(data: bytes | str) -> str:
    """The sha256 of a frame's bytes (a frame that did not read is never placed)."""
    return hashlib.sha256(data if isinstance(data, bytes) else b"").hexdigest()


def _when(value: Any) -> datetime:
    """A JSON time as UTC (a time that does not read as one sorts first)."""
    try:
        return as_utc(datetime.fromisoformat(str(value)))
    except (TypeError, ValueError, OverflowError):
        return datetime.min.replace(tzinfo=UTC)


def _labels_of(item: dict[str, Any]) -> Iterator[str]:
    """Every class name ``item`` carries: its model's, its defects' and its reviews'."""
    yield from item["class_names"]
    yield from (d["label"] for d in item["defects"])
    yield from (b["label"] for r in item["reviews"] for b in r["boxes"])


# why an inspection whose class names are not plain text is left out (:meth:`_Placing.wanted`)
UNPLAIN = ("a class name holds a control or bidirectional character (NUL, LF, U+202E, ...), "
           "which no model package takes: not from a Lineside server, or its store edited by "
           "hand")


def _stem(rec: ImageRecord) -> str:
    """The inspection id a pulled frame is named by."""
    return Path(rec.file_name).stem


# why a listed inspection has no image to pull (:meth:`_Placing.no_image`)
NO_IMAGE = ("reviewed but with no stored image here (a pass the store did not sample, one whose "
            "image retention or a disk cleanup removed, or one another box of a shared database "
            "keeps: pull from that box too): their reviews are not in the set")
GONE = ("their stored image was missing when the pull came to it (removed by a disk cleanup "
        "or retention, or kept by another box of a shared database: pull from that box too): "
        "they are not in the set")


def _check_dst(dst: str | Path, overwrite: bool) -> None:
    """The destination, refused before the first download as it would be after the last
    (a pull of 2,630 images into a folder it may not replace failed after all of them)."""
    check_destination(Path(dst), sources=set(), overwrite=overwrite)


def _stage(source: Path, folder: Path, what: str) -> Path | str | None:
    """``source`` held in ``folder`` under its name (a hard link, else a copy), or None
    when it is gone: retention may remove an inspection's image after it was listed, and
    the dataset, written at the end, failed on the missing file (FileNotFoundError); or
    why it cannot be read (its link refused, then its copy: no permission, a folder put
    in its place since it was listed), which stopped the pull (session 41)."""
    folder.mkdir(exist_ok=True)
    staged = folder / source.name
    if staged.exists():  # (a reference many inspections share)
        return staged
    try:
        link_or_copy(source, staged)
    except FileNotFoundError:
        staged.unlink(missing_ok=True)
        return None
    except OSError as exc:
        # (a copy cut short is not left to be taken as the file by the next item naming it)
        staged.unlink(missing_ok=True)
        if exc.errno in _NOT_THE_SOURCE:  # the pull's own disk: every item would fail
            raise
        return _unread(what, exc)
    return staged


# errors of a copy that are the destination's or the process's, not the stored file's
_NOT_THE_SOURCE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE}


def _unread(what: str, exc: OSError) -> str:
    """Why a stored file did not read, as the system said it, without its path."""
    return f"its {what} cannot be read: {exc.strerror or type(exc).__name__}"


def _read(path: Path, what: str) -> bytes | str:
    """The bytes of a staged file, or why they cannot be read: the system refused (no
    permission: the hard link to a store's file keeps its mode), or it is no regular file
    (a folder or a pipe put in the store's place between its check and its link: a pipe
    nobody writes to would be waited on for ever). Its ``what`` is left out, named."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return _unread(what, exc)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"its stored {what} is not a file"
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        return _unread(what, exc)
    finally:
        os.close(fd)


def _not_a_file(store: Store, row: InspectionRow) -> str | None:
    """Why this box's stored image or golden of ``row`` is there but not a file the pull
    can read (a folder, a link to nothing): the store says "missing" for it as for a file
    retention removed, and it was left out with an INFO line the command does not show
    (review, session 41). None when it is gone, or on another box."""
    if row.box_id is not None and row.box_id != store.box_id:
        return None
    for rel, what in ((row.image_path, "image"), (row.reference_path, "golden image")):
        path = store.images_dir / rel if rel else None
        if path is None or path.is_file() or not os.path.lexists(path):
            continue
        if path.is_dir():
            return f"its stored {what} is a folder, not a file"
        if path.is_symlink() and not path.exists():
            return f"its stored {what} is a link to a file that is not there"
        return f"its stored {what} is not a file"
    return None


def pull_from_store(store: Store, dst: str | Path, *, since: datetime | None = None,
                    reviewed: bool = True, overwrite: bool = False,
                    part_id: str | None = None, keep_anomaly: bool = False,
                    recipes: Sequence[str] | None = None) -> Dataset:
    """The store's reviewed inspections (``part_id``: exactly this part's; ``recipes``:
    only these recipes') as a dataset; ``keep_anomaly``: those whose truth holds an
    ``anomaly`` box are pulled with it (a class ``anomaly``), not left out
    (``pull_rules.anomaly_labelled``)."""
    held = recipe_filter(recipes)
    _check_dst(dst, overwrite)
    with _staging(dst) as tmp:
        placing = _Placing(Path(tmp), store_source(store.data_dir / "recipes"), keep_anomaly)
        for rows in _stored_pages(store, since=since, reviewed=reviewed, part_id=part_id,
                                  recipes=held):
            for row in rows:
                # a time several rows share may be listed again: each once
                if not placing.first(row.id):
                    continue
                if row.image_path is None:  # (an unreviewed pass the store did not sample)
                    if row.review_state != "unreviewed":
                        placing.no_image(row.id, NO_IMAGE)
                    continue
                try:  # a shared database lists other boxes' inspections: their images are there
                    path = store.image_file(row)
                    ref_path = store.reference_file(row) if row.reference_path else None
                except NotFoundError as exc:
                    if broken := _not_a_file(store, row):
                        placing.skip(row.id, broken)
                    else:  # (gone: retention, or stored on another box)
                        log.info("pull: skipped: %s", exc.message)
                        placing.no_image(row.id, GONE)
                    continue
                try:
                    item = store.record(row).model_dump(mode="json")
                except UnreadableRecord as exc:  # (it stopped the pull with a traceback)
                    log.warning("pull: left out: %s", exc.message)
                    continue
                if not placing.wanted(item):
                    continue
                staged = _stage(path, Path(tmp), "image")
                staged_ref = (_stage(ref_path, Path(tmp) / REFS_DIR, "golden image")
                              if ref_path and isinstance(staged, Path) else None)
                if isinstance(staged, str) or isinstance(staged_ref, str):
                    placing.skip(row.id, staged if isinstance(staged, str) else str(staged_ref))
                elif staged is None or (ref_path is not None and staged_ref is None):
                    log.info("pull: skipped inspection %s: its image was removed meanwhile "
                             "(retention)", row.id)
                    placing.no_image(row.id, GONE)
                else:
                    placing.place(item, staged, staged_ref)
                    continue
                if isinstance(staged, Path):  # (the staging folder holds what goes in)
                    staged.unlink(missing_ok=True)
        return placing.write(str(store.data_dir), dst, overwrite,
                             _asked(part_id, since, reviewed, held))


def _stored_pages(store: Store, *, since: datetime | None, reviewed: bool, part_id: str | None,
                  recipes: tuple[str, ...]) -> Iterator[list[InspectionRow]]:
    """The store's matching rows, page by page (:class:`_Cursor`); with ``recipes``, each
    recipe's in turn (one query each, as the list's filter takes one)."""
    for recipe in recipes or (None,):
        cursor = _Cursor()
        while True:
            until, offset = cursor.params()
            _, rows = store.query(review_state="reviewed" if reviewed else None, since=since,
                                  until=until, part_id=part_id, recipe=recipe, limit=PAGE,
                                  offset=offset)
            if not rows:
                break
            # a row whose stored time does not read as one (store/utc.py) has no place in
            # the cursor; record() leaves it out, named
            timed = [(as_utc(r.created_at), r.id) for r in rows if isinstance(r.created_at, datetime)]
            if not timed:  # (SQLite lists text after every time first)
                log.warning("pull: left out %d inspections whose stored times do not read as "
                            "times", len(rows))
                cursor.pass_over(len(rows))  # (each page moves on: the store's rows are finite)
                continue
            cursor.advance(timed)
            yield rows


def _page(url: str, content: bytes) -> InspectionPage:
    try:
        page = InspectionPage.model_validate_json(content)
    except ValidationError as exc:
        raise ConfigError(f"{url}: the server's inspection list is not a Lineside one: "
                          f"{describe_validation(exc.errors())}") from None
    for item in page.items:
        try:  # the next page is asked for up to just past it, in UTC
            as_utc(item.created_at) + timedelta(microseconds=1)
        except OverflowError:  # (year 1 at +05:00, or the last microsecond of 9999)
            raise ConfigError(f"{url}: the server's inspection list is not a Lineside one: "
                              f"inspection {item.id} is dated {item.created_at.isoformat()}, "
                              "out of range in UTC") from None
    return page


def _failed(url: str, r: httpx.Response | _Answer, what: str) -> ConfigError:
    """A refusal from the server, with its own message when it sent a Lineside error."""
    try:
        msg = str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        msg = r.reason_phrase or r.text[:200]
    return ConfigError(f"{url}: {what} failed ({r.status_code}): {msg}")


def pull_from_server(url: str, dst: str | Path, *, key: str | None = None,
                     since: datetime | None = None, reviewed: bool = True,
                     overwrite: bool = False, part_id: str | None = None,
                     keep_anomaly: bool = False, recipes: Sequence[str] | None = None) -> Dataset:
    """The server's reviewed inspections as a dataset at ``dst`` (``part_id``: exactly
    this part's, the list's ``part_id`` filter; ``recipes``: only these recipes'
    inspections, the list's ``recipe`` filter, one listing each; ``keep_anomaly`` as
    :func:`pull_from_store`'s); a server that cannot be reached (bad URL,
    refused, TLS, timeout) is one :class:`ServerUnreachable` line."""
    held = recipe_filter(recipes)
    try:
        return _pull(url, dst, key=key, since=since, reviewed=reviewed, overwrite=overwrite,
                     part_id=part_id, keep_anomaly=keep_anomaly, recipes=held)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{url}: not a valid URL ({exc})") from None
    except httpx.TransportError as exc:  # refused, DNS, TLS, timeouts, a scheme httpx lacks
        reason = " ".join(str(exc).split()) or "no detail"
        raise ServerUnreachable(f"server unreachable at {url}: {type(exc).__name__}: {reason}") \
            from None


class _Answer:
    """An answer read whole within a byte and a time bound (httpx's timeout is per read:
    a byte every few seconds never ended)."""

    def __init__(self, status_code: int, headers: httpx.Headers, content: bytes,
                 reason_phrase: str) -> None:
        self.status_code, self.headers, self.content = status_code, headers, content
        self.reason_phrase = reason_phrase
        self.text = content[:2000].decode("utf-8", "replace")

    def json(self) -> Any:
        import json

        return json.loads(self.content)


def _get(c: httpx.Client, url: str, path: str, max_bytes: int, **kw: Any) -> _Answer:
    with c.stream("GET", path, **kw) as r:
        try:
            body = read_at_most(r, max_bytes, time.monotonic() + ANSWER_TIMEOUT_S)
        except AnswerTooSlow:
            raise ServerUnreachable(f"{url}{path}: the answer did not come whole within "
                                    f"{ANSWER_TIMEOUT_S:.0f} s") from None
        except AnswerEncoded as exc:
            raise ConfigError(f"{url}{path}: {exc}") from None
        if body is None:
            raise ConfigError(f"{url}{path}: the answer is over {max_bytes} bytes: not "
                              "what a Lineside server sends")
        return _Answer(r.status_code, r.headers, body, r.reason_phrase)


@contextlib.contextmanager
def _staging(dst: str | Path) -> Iterator[str]:
    """A staging folder beside ``dst`` for a pull's images, removed at the end. Beside it,
    not in the system's temp folder (twice the disk there, a tmpfs filled, and a killed
    pull's images left for good): a later pull removes what a killed one left."""
    out = Path(dst).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_left_staging(out)
    with tempfile.TemporaryDirectory(dir=out.parent,
                                     prefix=f".{out.name}.pull.w{os.getpid()}.") as tmp:
        yield tmp


def _remove_left_staging(out: Path) -> None:
    """What killed pulls into ``out`` left beside it (``.OUT.pull.w<pid>.XXXXXXXX``, its
    writer ended): a running pull's, or another folder's that merely looks alike, stays."""
    name = re.compile(rf"\.{re.escape(out.name)}\.pull\.w\d+\.[a-z0-9_]{{8}}")
    for left in out.parent.iterdir():
        if name.fullmatch(left.name) and not left.is_symlink() and left.is_dir() \
                and writer_gone(left.name):
            shutil.rmtree(left, ignore_errors=True)


def _image_problem(item: dict[str, Any], data: bytes, what: str = "image") -> str | None:
    """Why the inspection's image (or its golden, ``what``) cannot go in the dataset: it
    does not decode, or not at the size the inspection says (its boxes are clipped to
    it by :func:`_record`), which `data validate` would refuse. One such inspection is
    left out, not the pull: a hub stores what its boxes send, and one box's broken image
    stopped every pull (review, session 34)."""
    try:
        shape = decode_image(data).shape
    except ImageError as exc:  # not an image, a bomb
        return f"its {what}: {exc.message}"
    if (shape[1], shape[0]) != (item["width"], item["height"]):
        return (f"its {what} is {shape[1]}x{shape[0]}, its record says "
                f"{item['width']}x{item['height']}")
    return None


def _altered(item: dict[str, Any], data: bytes) -> str | None:
    """Why the golden image is not the one the inspection was compared with: the record
    names it by its sha256 (a box's and a hub's stores keep it under that name). A hub's
    reference object altered in its object store (one serves every inspection compared
    with it) went into the set as their golden image unseen."""
    said = (item.get("reference") or {}).get("sha256")
    got = hashlib.sha256(data).hexdigest()
    if said is None or got == said:  # (a record of a release before it named none)
        return None
    return f"its golden image has sha256 {got[:12]}…, its record says {str(said)[:12]}…"


def _bound(first: int) -> int:
    """The most rows a list whose first page said ``first`` in total may list: a list
    that never ends (a hostile server) is cut off at twice it and ten pages more."""
    return 2 * first + 10 * PAGE


def _pull(url: str, dst: str | Path, *, key: str | None, since: datetime | None,
          reviewed: bool, overwrite: bool, part_id: str | None = None,
          keep_anomaly: bool = False, recipes: tuple[str, ...] = ()) -> Dataset:
    _check_dst(dst, overwrite)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with _staging(dst) as tmp, \
            httpx.Client(base_url=url, headers={**headers, **IDENTITY}, timeout=60) as c:
        placing = _Placing(Path(tmp), lambda name: _regions(c, url, name), keep_anomaly)
        # (the list takes one recipe: one listing each, one after the other)
        listed = (item for recipe in recipes or (None,)
                  for item in _listed(c, url, since=since, reviewed=reviewed, part_id=part_id,
                                      recipe=recipe))
        for item in listed:
            # a review made during the pull moves later items onto the next page
            if not placing.first(item["id"]):
                continue
            if not item["has_image"]:  # (an unreviewed pass the server did not sample)
                if item["reviews"]:
                    placing.no_image(item["id"], NO_IMAGE)
                continue
            if not placing.wanted(item):
                continue
            if fetched := _fetch(c, url, item, Path(tmp)):
                placing.place(item, *fetched)
            else:
                placing.no_image(item["id"], GONE)
        return placing.write(url, dst, overwrite, _asked(part_id, since, reviewed, recipes))


def _regions(c: httpx.Client, url: str, name: str) -> RecipeRegions | None:
    """The server's recipe ``name``'s regions and version (``GET
    /v1/recipes/{name}/regions``); None when it does not say them (a recipe gone, a
    server of a release before the route: 404; an answer that is not a Lineside one): its
    frames are pulled whole, said at the end (``pull_regions.Regions.say``). Never a
    reason to stop the pull: a proxy's page for a path it does not know is no defect."""
    try:
        r = _get(c, url, f"/v1/recipes/{name}/regions", MAX_REGIONS_BYTES)
    except ConfigError as exc:  # (over the bound, or an encoding it does not read)
        log.warning("pull: recipe %s's regions not read (%s): its frames are pulled whole",
                    name, exc.message)
        return None
    if r.status_code != 200:
        log.info("pull: recipe %s's regions not read (%d)", name, r.status_code)
        return None
    try:
        got = RecipeRegions.model_validate_json(r.content)
    except ValidationError as exc:
        log.warning("pull: %s: recipe %s's regions are not a Lineside answer (%s): its "
                    "frames are pulled whole", url, name, describe_validation(exc.errors()))
        return None
    if got.name != name:
        log.warning("pull: %s: asked for recipe %s's regions, the server sent %s's: its "
                    "frames are pulled whole", url, name, got.name)
        return None
    return got


def _listed(c: httpx.Client, url: str, *, since: datetime | None,
            reviewed: bool, part_id: str | None = None,
            recipe: str | None = None) -> Iterator[dict[str, Any]]:
    """The server's inspections, page by page (:class:`_Cursor`; by offset from a server
    of a release before ``until``), each as its JSON; the next page is asked for once the
    items before it were taken. A list that never ends, or sends a page again, is stopped
    (:func:`_bound`). ``part_id``: a server listing another part's inspection ignores the
    filter (a release before 2026-12-07): stopped, not every part's pulled as one's;
    ``recipe`` alike (a server listing another recipe's inspection ignores it)."""
    cursor, listed, first = _Cursor(), 0, None
    by_offset: int | None = None  # a server of a release before `until`: by offset
    again = 0  # rows of pages by offset that listed only rows listed before
    while True:
        until, offset = (None, by_offset) if by_offset is not None else cursor.params()
        params: dict[str, Any] = {"limit": PAGE, "offset": offset}
        if reviewed:
            params["review_state"] = "reviewed"
        if since:
            params["since"] = since.isoformat()
        if until:
            params["until"] = until.isoformat()
        if part_id:
            params["part_id"] = part_id
        if recipe:
            params["recipe"] = recipe
        r = _get(c, url, "/v1/inspections", MAX_PAGE_BYTES, params=params)
        if r.status_code != 200:
            raise _failed(url, r, "listing inspections")
        # what another server sends is validated like any input: its ids become file
        # names here, so they must be inspection ids (32 hex digits) and nothing else
        page = _page(url, r.content)
        items = [i.model_dump(mode="json") for i in page.items]
        if page.left_out:
            log.warning("pull: %d inspection(s) the server could not read left out "
                        "(GET /v1/inspections' left_out)", page.left_out)
        if not items and page.left_out > 0:  # a page of rows that read as none
            if page.left_out < PAGE:  # a page short of its limit is the list's last
                return
            listed += page.left_out  # (held by the bound below, as any row listed)
            if listed > _bound(first if first is not None else page.total):
                raise ConfigError(f"{url}: the server lists over {listed} inspections "
                                  "that do not read: not a Lineside server's list")
            if by_offset is not None:
                by_offset += page.left_out
            else:
                cursor.pass_over(page.left_out)
            continue
        if not items:
            return
        if part_id and (other := next((i for i in page.items if i.part_id != part_id), None)):
            raise ConfigError(f"{url}: asked for part {part_id!r}, the server listed "
                              f"inspection {other.id} of another part: it does not filter by "
                              "part_id (a release before 2026-12-07); pull without --part-id")
        if recipe and (other := next((i for i in page.items if i.recipe.name != recipe), None)):
            # (a server's list has filtered by recipe since its first release: a hub or
            # server of another make, or one in front of it dropping the parameter)
            raise ConfigError(f"{url}: asked for recipe {recipe!r}, the server listed "
                              f"inspection {other.id} of recipe {other.recipe.name[:140]!r}: it "
                              "does not filter by recipe; pull without --recipe")
        if until and any(as_utc(i.created_at) >= until for i in page.items):
            # it ignored `until` (a page before this one may have been another than
            # asked for, unseen): from the start again by offset, each item taken once
            by_offset, cursor = 0, _Cursor()
            continue
        # a list that never ends (a hostile server) is cut off (_bound)
        first = page.total if first is None else first
        # (a page's total counts the rows up to its time: the first's is the list's)
        bound = _bound(first)
        listed += len(items)
        if not cursor.advance([(as_utc(i.created_at), i.id) for i in page.items]):
            # by offset, rows added at the top meanwhile send rows listed before again,
            # as many as were added: carried on while the list's total grew by as many
            # (else it would never end; a server claiming growth is then held by the
            # bound below, as one sending new ids is)
            again += len(items)
            if by_offset is None or again > page.total - first:
                raise ConfigError(f"{url}: the server sent again a page it had sent (it "
                                  f"ignores offset={offset}?): stopped, it would never "
                                  "end")
        if by_offset is not None:
            by_offset += len(items) + page.left_out
        if listed > bound:
            raise ConfigError(f"{url}: the server lists over {bound} inspections though "
                              f"it said {first} at first: not a Lineside server's list")
        yield from items


def _fetch(c: httpx.Client, url: str, item: dict[str, Any],
           tmp: Path) -> tuple[Path, Path | None] | None:
    """``item``'s image, and its golden when the server kept one, written to the staging
    folder ``tmp`` as :meth:`_Placing.place` takes them (the golden under its sha256, as a
    store keeps it); None when the server has it no more (a shared database's other box)."""
    img = _get(c, url, f"/v1/inspections/{item['id']}/image", MAX_PULL_IMAGE_BYTES)
    if img.status_code == 404:  # stored on another box of a shared database
        log.info("pull: skipped inspection %s: %s", item["id"], img.text[:200])
        return None
    if img.status_code != 200:
        raise _failed(url, img, f"fetching inspection {item['id']}'s image")
    golden = None
    if (item.get("reference") or {}).get("has_image"):
        got = _get(c, url, f"/v1/inspections/{item['id']}/reference", MAX_PULL_IMAGE_BYTES)
        if got.status_code == 404:
            log.info("pull: skipped inspection %s: %s", item["id"], got.text[:200])
            return None
        if got.status_code != 200:
            raise _failed(url, got, f"fetching inspection {item['id']}'s reference")
        sha = hashlib.sha256(got.content).hexdigest()
        golden = tmp / REFS_DIR / f"{sha}.{_ext(got.headers.get('content-type', ''))}"
        if not golden.exists():  # (named by its content: one many inspections share)
            golden.parent.mkdir(exist_ok=True)
            golden.write_bytes(got.content)
    path = tmp / f"{item['id']}.{_ext(img.headers.get('content-type', ''))}"
    path.write_bytes(img.content)
    return path, golden
