"""Forwarded inspections in (``fleet.protocol.FORWARD``): the hub's side of
store-and-forward.

A batch is applied in ``seq`` order, all or nothing:

1. ids the hub already holds from this box are duplicates (skipped: forwarding is
   idempotent by inspection id, and a retried batch changes nothing); an id it holds from
   another box is refused (409 ``inspection_id_taken``); an id the hub does not hold at or
   below the box's cursor is refused (409 ``sequence_behind``: the box's outbox went back,
   and storing it would break the box's order while skipping it would lose it);
2. the new items' images go to the object store (``fleet/hub/images.py`` keys: an
   inspection's image under its box and day, a reference image content-addressed by the
   sha256 the hub computes itself);
3. only then the rows, the box's count (``fleet_box_counts``, the fleet page's) and its
   cursor moved to the batch's last ``seq``, in one database transaction.

So a row never points at an image that is not in the store: an object store that is down
answers 503 before any row is written (the box keeps the batch and retries), and a hub
killed between 2 and 3 leaves only objects the retry writes again under the same keys.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import logging
import math
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from lineside_inspect.errors import (
    Busy,
    ConfigError,
    Forbidden,
    ImageError,
    InspectionIdTaken,
    LinesideError,
    NotFoundError,
    ObjectStoreUnavailable,
    RecordError,
    SequenceBehind,
    with_time_hints,
)
from lineside_inspect.fleet.hub.config import HubSettings
from lineside_inspect.fleet.hub.images import CONTENT_TYPES, image_key, reference_key
from lineside_inspect.fleet.hub.pins import check_pinned
from lineside_inspect.fleet.hub.tables import BoxCountRow, CursorRow
from lineside_inspect.fleet.objects import ObjectStore
from lineside_inspect.fleet.protocol import (
    FORWARD,
    MAX_CLOCK_AHEAD,
    NAME_PATTERN,
    SHA256_PATTERN,
    ForwardAck,
    ForwardBatch,
    ForwardedInspection,
)
from lineside_inspect.imageio import check_decodable
from lineside_inspect.names import BIDI_RE, CONTROL_RE, MAX_CLASS_NAME, scrub_text
from lineside_inspect.names import MAX_CLASSES as MAX_CARD_CLASSES
from lineside_inspect.opencv import MAX_IMAGE_PIXELS
from lineside_inspect.outage_log import OutageLog
from lineside_inspect.package import MAX_DETECTIONS
from lineside_inspect.schemas import ReferenceUsed, StoredInspection
from lineside_inspect.server.deps import Principal, RoleFirstRoute, require
from lineside_inspect.server.handlers import database_failed
from lineside_inspect.server.responses import errors
from lineside_inspect.store.models import InspectionRow, labels_column
from lineside_inspect.store.utc import as_utc

log = logging.getLogger("lineside.hub")
router = APIRouter(route_class=RoleFirstRoute, tags=["fleet"])
STREAM = "inspections"  # this stream's name in fleet_cursors
PUT_THREADS = 4
# column widths of InspectionRow: a longer value is refused (422), never a database error
_WIDTHS = {"camera_id": 128, "part_id": 256, "recipe_name": 128, "recipe_version": 64,
           "model_name": 128, "model_version": 64, "model_sha256": 64, "reference_name": 128}
# a record's lists, as far as a box's cards allow (package.py): a detector's and a fused
# good-only model's boxes, both models' classes, a reason per class and the anomaly's
MAX_DEFECTS = 2 * MAX_DETECTIONS
MAX_CLASSES = 2 * MAX_CARD_CLASSES
MAX_REASONS = 2 * MAX_CARD_CLASSES + 1
_MAGIC = {"jpg": (b"\xff\xd8",), "png": (b"\x89PNG\r\n\x1a\n",)}


class Ingest:
    """Applies forwarded batches to the hub's store and object store."""

    def __init__(self, engine: Any, objects: ObjectStore) -> None:
        self.engine = engine
        self.objects = objects
        # one batch per box at a time in this process (boxes go side by side); the cursor
        # row is also locked (FOR UPDATE) for hubs sharing one database
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # a batch's images go up side by side: each put is a round trip to the store
        self._puts = ThreadPoolExecutor(max_workers=PUT_THREADS, thread_name_prefix="hub-put")
        self._bucket_ready = False
        # per box: its inspections dated ahead of the hub's clock, said once while it lasts
        # (a line each, a box whose clock ran a day ahead wrote one per inspection)
        self._clocks: dict[str, OutageLog] = {}

    def close(self) -> None:
        self._puts.shutdown(wait=True)

    def _box_lock(self, box_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(box_id, threading.Lock())

    def cursor(self, box_id: str) -> int:
        with Session(self.engine) as s:
            row = s.get(CursorRow, (box_id, STREAM))
            return row.seq if row is not None else 0

    def apply(self, box_id: str, batch: ForwardBatch) -> ForwardAck:
        items = sorted(batch.items, key=lambda i: i.seq)
        seqs = [i.seq for i in items]
        if len(set(seqs)) != len(seqs):
            raise RecordError("a batch must not repeat a seq")
        ids = [i.id for i in items]
        twice = next((iid for iid, n in collections.Counter(ids).items() if n > 1), None)
        if twice is not None:  # else the database's unique key refused it as "busy"
            raise RecordError(f"a batch must not repeat an inspection id: {twice} is sent "
                              f"under seq {', '.join(str(i.seq) for i in items if i.id == twice)}")
        now = datetime.now(UTC)
        rows = {i.seq: _row(box_id, i, now) for i in items}  # each checked before any write
        with self._box_lock(box_id):
            cursor = self.cursor(box_id)
            held = self._held(box_id, ids)
            behind = [i for i in items if i.seq <= cursor and i.id not in held]
            if behind:
                raise SequenceBehind(
                    f"box {box_id} sent inspection {behind[0].id} as seq {behind[0].seq}, but "
                    f"the hub holds box {box_id} through seq {cursor} without it: the box's "
                    "outbox went back (a reset or restored data folder, or two boxes with one "
                    "id). Nothing was stored; give the box a box id of its own")
            new = [i for i in items if i.seq > cursor and i.id not in held]
            if new and not self._bucket_ready:
                self.objects.ensure_bucket()
                self._bucket_ready = True
            # images first: a row never points at a missing image (any failure: no rows)
            try:
                for put in [self._puts.submit(self._put_images, rows[i.seq]) for i in new]:
                    put.result()
            except ObjectStoreUnavailable:
                # checked again next time: a bucket deleted (or the store replaced) while
                # the hub ran made every forward a 503 until a restart
                self._bucket_ready = False
                raise
            # (read before the commit, which expires the rows' attributes)
            refs = {rows[i.seq].row.reference_path: rows[i.seq].reference for i in new
                    if rows[i.seq].reference is not None and rows[i.seq].row.reference_path}
            ahead = [(i.id, rows[i.seq].dated) for i in new]
            stored = self._commit(box_id, [rows[i.seq].row for i in new], seqs[-1])
            self._keep_references(refs)
            if new:
                self._say_clock(box_id, ahead, now)
        if stored:
            log.info("hub: box %s: %d inspection(s) stored through seq %d", box_id, stored,
                     seqs[-1])
        return ForwardAck(through_seq=max(cursor, seqs[-1]), stored=stored,
                          duplicates=len(items) - stored)

    def _say_clock(self, box_id: str, stored: list[tuple[str, datetime | None]],
                   now: datetime) -> None:
        """Of the inspections of ``box_id`` just stored (id, the box's date when it was
        over MAX_CLOCK_AHEAD after ``now``), those stored at the hub's time: said once
        while the box's clock is ahead, and each minute with their count; its first batch
        dated right again says how many were."""
        clock = self._clocks.get(box_id)  # (box ids are key names: as many as keys)
        ahead = [(i, dated) for i, dated in stored if dated is not None]
        if not ahead:
            if clock is not None and clock.open:
                for _, total, _unsaid in clock.quiet(None):
                    log.warning("hub: box %s dates its inspections by the hub's clock again; "
                                "%d of them had been stored at the hub's time", box_id, total)
            return
        if clock is None:
            clock = self._clocks[box_id] = OutageLog(log)
        for inspection_id, dated in ahead:
            clock.failed("ahead", logging.WARNING,
                         "hub: box %s dates inspections ahead of the hub's clock (%s is dated "
                         "%s, %s ahead): they are stored at the hub's time; is the box's clock "
                         "right (NTP)?", box_id, inspection_id, dated.isoformat(),
                         str(dated - now).split(".")[0])

    def _held(self, box_id: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` the hub holds from ``box_id``; an id held from another box is
        refused (409): it is not this box's to resend, and counting it as a duplicate
        would settle this box's inspection as delivered while the hub never had it."""
        if not ids:
            return set()
        with Session(self.engine) as s:
            owners = {i: b for i, b in s.execute(
                select(InspectionRow.id, InspectionRow.box_id).where(InspectionRow.id.in_(ids)))}
        _refuse_foreign(box_id, owners)
        return set(owners)

    def _put_images(self, p: _Prepared) -> None:
        row = p.row
        if p.image is not None and row.image_path:
            self.objects.put(row.image_path, p.image, CONTENT_TYPES[row.image_path[-3:]])
        if p.reference is not None and row.reference_path \
                and not self.objects.exists(row.reference_path):  # content-addressed: once
            self.objects.put(row.reference_path, p.reference,
                             CONTENT_TYPES[row.reference_path[-3:]])

    def _keep_references(self, refs: dict[str | None, bytes | None]) -> None:
        """Put back a reference image (key: bytes) the hub's retention deleted between this
        batch's look (the object was there, so it was not put) and its commit: the last
        inspection that pointed at it had gone meanwhile (fleet/hub/retention.py). Its rows
        are stored: a failure here is logged, not answered."""
        for key, data in refs.items():
            if key is None or data is None:
                continue
            try:
                if not self.objects.exists(key):
                    self.objects.put(key, data, CONTENT_TYPES[key[-3:]])
                    log.info("hub: reference image %s put back (deleted by retention as this "
                             "batch was stored)", key)
            except ObjectStoreUnavailable as exc:
                log.error("hub: could not check reference image %s after storing its "
                          "inspections: %s", key, exc)

    def _commit(self, box_id: str, rows: list[InspectionRow], through: int) -> int:
        """The new rows and the cursor in one transaction; rows another request stored
        meanwhile are skipped. The number of rows added."""
        now = datetime.now(UTC)
        try:
            with Session(self.engine) as s, s.begin():
                cur = s.scalar(select(CursorRow).where(CursorRow.box_id == box_id,
                                                       CursorRow.stream == STREAM).with_for_update())
                if cur is None:
                    cur = CursorRow(box_id=box_id, stream=STREAM, seq=0, updated_at=now)
                    s.add(cur)
                ids = [r.id for r in rows]
                owners = {i: b for i, b in s.execute(
                    select(InspectionRow.id, InspectionRow.box_id)
                    .where(InspectionRow.id.in_(ids)))} if ids else {}
                _refuse_foreign(box_id, owners)  # stored by another box meanwhile
                present = set(owners)
                added = [r for r in rows if r.id not in present]
                s.add_all(added)
                if added:  # the fleet page's count, kept with the rows it counts
                    _count(s, box_id, added)
                cur.seq = max(cur.seq, through)
                cur.updated_at = now
        except IntegrityError:  # another hub process took the same batch at the same time
            raise Busy(f"a batch of box {box_id} is being applied by another request; "
                       "retry") from None
        return len(added)


def _count(s: Session, box_id: str, added: list[InspectionRow]) -> None:
    counts = s.get(BoxCountRow, box_id, with_for_update=True)
    if counts is None:
        counts = BoxCountRow(box_id=box_id, held=0, last_at=None)
        s.add(counts)
    newest = max(as_utc(r.created_at) for r in added)
    counts.held += len(added)
    if counts.last_at is None or as_utc(counts.last_at) < newest:
        counts.last_at = newest


def _refuse_foreign(box_id: str, owners: dict[str, str | None]) -> None:
    foreign = sorted(i for i, owner in owners.items() if owner != box_id)
    if foreign:
        log.warning("hub: box %s forwarded inspection %s, held from box %s: refused", box_id,
                    foreign[0], owners[foreign[0]])
        # the other box is not named: a box key learns nothing of other boxes' records
        raise InspectionIdTaken(
            f"inspection {foreign[0]} is held by the hub from another box, not box {box_id}"
            f"{f' (and {len(foreign) - 1} more in this batch)' if len(foreign) > 1 else ''}: "
            "ids are random, so this record was copied. Nothing was stored")


def _decode(b64: str, ext: str | None, what: str, seq: int) -> tuple[bytes, int, int]:
    """The image's bytes and its size from its header: refused when it is not the ``ext``
    it says, or its header is unreadable or over ``MAX_IMAGE_PIXELS`` (a reviewer's page
    decodes it: a 196 KB PNG of 8192x8192 took 360 MB per drawing)."""
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(f"item seq {seq}: {what}_b64 is not base64") from None
    if not data or ext is None or not data.startswith(_MAGIC[ext]):
        raise RecordError(f"item seq {seq}: {what}_b64 is not a {ext or '(no image_ext)'} image")
    try:
        # decode_image's checks before OpenCV (header size within MAX_IMAGE_PIXELS, structure):
        # a JPEG of its header alone was stored, and stopped every data pull from the hub
        width, height, _ = check_decodable(data)
    except ImageError as exc:
        raise RecordError(f"item seq {seq}: {what}_b64: {exc.message}") from None
    return data, width, height


@dataclass(frozen=True)
class _Prepared:
    row: InspectionRow
    image: bytes | None
    reference: bytes | None
    dated: datetime | None = None  # the box's date, when too far ahead to keep


INT_RANGE = 2**31  # the database's INTEGER columns


def _out_of_range(value: Any, where: str = "") -> str | None:
    """Where in ``value`` (a JSON document) a number is NaN, infinite or an integer the
    database cannot hold; None when every number is fine."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else where or "value"
    if isinstance(value, int):
        return None if -INT_RANGE <= value < INT_RANGE else where or "value"
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _out_of_range(v, f"{where}.{k}" if where else str(k))
        if found is not None:
            return found
    return None


def _row(box_id: str, item: ForwardedInspection, now: datetime | None = None) -> _Prepared:
    """The hub's row of ``item`` and its decoded images: the box's record, checked, under
    the keys its images will have; the box id is the caller's (never the record's). A
    record dated over ``MAX_CLOCK_AHEAD`` after ``now`` is dated ``now``: newest first, it
    would head every reviewer's queue for good (a box whose clock ran ahead before NTP, or
    a hostile one)."""
    # a NUL in the box's text (a box on SQLite stored one before URLs were checked) or a
    # lone surrogate becomes U+FFFD: the database cannot hold either, and refusing the item
    # would stop the box's stream
    record = scrub_text(item.record)
    bad = _out_of_range(record)
    if bad is not None:
        # NaN or infinity cannot be answered as JSON (every listing with the row would be a
        # 500) and an integer past 32 bits is a database error: refused here, as a 422
        raise RecordError(f"item seq {item.seq}: record.{bad}: not a finite number in range")
    try:
        rec = StoredInspection.model_validate({**record, "reviews": []})
    except ValidationError as exc:
        first = with_time_hints(exc.errors()[:1])[0]  # a created_at that is no time: what it takes
        where = ".".join(str(p) for p in first["loc"])
        raise RecordError(f"item seq {item.seq}: record.{where}: {first['msg']}") from None
    if rec.id != item.id:
        raise RecordError(f"item seq {item.seq}: record id {rec.id} is not the item's id {item.id}")
    if (item.image_b64 is None) != (item.image_ext is None) \
            or (item.reference_b64 is None) != (item.reference_ext is None):
        raise RecordError(f"item seq {item.seq}: an image needs its ext, and an ext its image")
    try:
        created = as_utc(rec.created_at)
    except OverflowError:  # 0001-01-01T00:00+05:00 is before year 1 in UTC
        raise RecordError(f"item seq {item.seq}: record.created_at: out of range once taken "
                          "to UTC") from None
    now = now or datetime.now(UTC)
    dated = None
    if created > now + MAX_CLOCK_AHEAD:  # (said by Ingest.apply once stored)
        dated, created = created, now
    if rec.width * rec.height > MAX_IMAGE_PIXELS or min(rec.width, rec.height) < 1:
        raise RecordError(f"item seq {item.seq}: record size {rec.width}x{rec.height} is not "
                          f"an image of 1 to {MAX_IMAGE_PIXELS} pixels")
    _check_defects(item.seq, rec)
    ref = rec.reference
    ref_key = reference = image = None
    if item.reference_b64 is not None and item.reference_ext is not None:
        reference, *_ = _decode(item.reference_b64, item.reference_ext, "reference", item.seq)
        # content-addressed by what the hub computes, not by what the box says it is
        ref_key = reference_key(hashlib.sha256(reference).hexdigest(), item.reference_ext)
    if item.image_b64 is not None:
        image, width, height = _decode(item.image_b64, item.image_ext, "image", item.seq)
        if (width, height) != (rec.width, rec.height):
            raise RecordError(f"item seq {item.seq}: image_b64 is {width}x{height}, the record "
                              f"says {rec.width}x{rec.height}")
    values: dict[str, Any] = {
        "id": rec.id, "created_at": created, "camera_id": _in_order(rec.camera_id),
        "part_id": _in_order(rec.part_id),
        "recipe_name": rec.recipe.name, "recipe_version": rec.recipe.version,
        "model_name": rec.model.name, "model_version": rec.model.version,
        "model_sha256": rec.model.sha256, "class_names": list(rec.class_names),
        "verdict": rec.verdict, "reasons": [r.model_dump() for r in rec.reasons],
        "defects": [{"label": d.label, "score": d.score, "box": list(d.box)} for d in rec.defects],
        "labels": labels_column(d.label for d in rec.defects),
        "max_score": max((d.score for d in rec.defects), default=0.0),
        "timings_ms": rec.timings_ms.model_dump(),
        "image_path": image_key(box_id, created, rec.id, item.image_ext)
        if item.image_ext is not None else None,
        "width": rec.width, "height": rec.height, "image_bytes": len(image or b""),
        "reference_name": _in_order(ref.name) if ref is not None else None,
        "reference_path": ref_key, "reference_check": _reference_check(ref),
        # what the reviews the hub holds say, never what the record claims: a box's
        # "confirmed" with no review made its detections reviewed truth for data pull
        # (review, session 34); the box's reviews come up after it (fleet/review_merge.py)
        "review_state": "unreviewed", "box_id": box_id, "site": item.site,
        "line": item.line, "received_at": now, "tiles": rec.tiles}
    for column, width in _WIDTHS.items():
        v = values[column]
        if v is not None and len(v) > width:
            raise RecordError(f"item seq {item.seq}: {column} is over {width} characters")
    return _Prepared(InspectionRow(**values), image, reference, dated)


def _reference_check(ref: ReferenceUsed | None) -> dict[str, Any] | None:
    """The box's comparison with its golden (store.reference_check), finite numbers only:
    a JSON column takes no NaN."""
    if ref is None:
        return None
    out: dict[str, Any] = {}
    if ref.sha256 is not None and re.fullmatch(SHA256_PATTERN, ref.sha256):
        out["sha256"] = ref.sha256
    if ref.shift is not None and all(math.isfinite(v) for v in ref.shift):
        out["shift"] = [float(v) for v in ref.shift]
    if ref.unchanged is not None:
        out["unchanged"] = bool(ref.unchanged)
    if ref.difference is not None and math.isfinite(ref.difference):
        out["difference"] = float(ref.difference)
    return out or None


def _in_order(value: str | None) -> str | None:
    """An id a page shows, its bidirectional controls and control characters made U+FFFD:
    a box's part id holding U+202E reversed the review page's line, and a camera id holding
    a line break split its row of the stations CSV in two (a box of this release refuses
    both; an older or broken one's records are taken, not refused for good)."""
    return None if value is None else CONTROL_RE.sub("\ufffd", BIDI_RE.sub("\ufffd", value))


def _check_defects(seq: int, rec: StoredInspection) -> None:
    """Each defect a class of the record's model, its box inside the image (a detector's
    boxes are clipped to it; a pixel of slack for rounding): the hub's pages draw them,
    and an unknown class or an endless box would make every drawing of the record fail.
    The lists are bounded: a record of 400,000 defects took the hub minutes to check and
    made every review page that listed it half a gigabyte."""
    for field, values, most in (("defects", rec.defects, MAX_DEFECTS),
                                ("class_names", rec.class_names, MAX_CLASSES),
                                ("reasons", rec.reasons, MAX_REASONS)):
        if len(values) > most:
            raise RecordError(f"item seq {seq}: record.{field} has {len(values)} entries, "
                              f"over the {most} a record may carry")
    long = next((n for n, c in enumerate(rec.class_names) if len(c) > MAX_CLASS_NAME), None)
    if long is not None:
        raise RecordError(f"item seq {seq}: record.class_names.{long} is over {MAX_CLASS_NAME} "
                          "characters")
    classes = set(rec.class_names)
    for n, d in enumerate(rec.defects):
        if d.label not in classes:
            raise RecordError(f"item seq {seq}: record.defects.{n}.label {d.label[:64]!r} is "
                              "not one of the record's class_names")
        x1, y1, x2, y2 = d.box
        if not (all(-1 <= x <= rec.width + 1 for x in (x1, x2))
                and all(-1 <= y <= rec.height + 1 for y in (y1, y2))):
            raise RecordError(f"item seq {seq}: record.defects.{n}.box is not inside the "
                              f"{rec.width}x{rec.height} image")


def get_ingest(request: Request) -> Ingest:
    ingest: Ingest | None = getattr(request.app.state, "ingest", None)
    if ingest is None:
        raise NotFoundError("this hub is not ready to take inspections")
    return ingest


BoxKey = Annotated[Principal, require("box")]
BoxId = Annotated[str, Path(description="the sending box's id (its key's name)")]
_NAME = re.compile(NAME_PATTERN)


@router.post(FORWARD, responses=errors(), summary="Forwarded inspections from a box")
def forward(box_id: BoxId, batch: ForwardBatch, who: BoxKey, request: Request,
            ingest: Annotated[Ingest, Depends(get_ingest)]) -> ForwardAck:
    """Store a box's batch (idempotent: see the module docstring): 503 while the object
    store or the database is unreachable, nothing half-stored."""
    if not _NAME.fullmatch(box_id):
        raise ConfigError(f"box id must match {NAME_PATTERN}")
    if who.name != box_id:
        raise Forbidden(f"key {who.name!r} may forward only for box {who.name!r}, not {box_id!r}")
    for item in batch.items:
        check_pinned(who, item.site, item.line, f"item seq {item.seq}")
    try:
        ack = ingest.apply(box_id, batch)
        received = getattr(request.app.state, "hub_received", None)
        if received is not None:
            received.labels(box_id, "stored").inc(ack.stored)
            received.labels(box_id, "duplicate").inc(ack.duplicates)
        return ack
    except LinesideError:
        raise
    except OperationalError as exc:  # refused, reset, timed out, the login refused (said
        # as such: session 51): the box keeps the batch, retries
        raise database_failed(request, exc) from None
    except ValueError as exc:
        raise RecordError(str(exc)) from None


def install(app: FastAPI, settings: HubSettings) -> None:
    """Made once the hub's store and object store are (after ``app.setup_store``)."""

    def start() -> None:
        app.state.ingest = Ingest(app.state.store.engine, app.state.objects)

    def stop() -> None:
        if app.state.ingest is not None:
            app.state.ingest.close()

    app.state.ingest = None
    # per box: a box's key is its id, so the label set is as small as the fleet
    app.state.hub_received = Counter(
        "lineside_hub_inspections_received", "Forwarded inspections, new (stored) or already "
        "held (duplicate), by box", ["box", "outcome"], registry=app.state.metrics.registry)
    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
