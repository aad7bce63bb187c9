"""The inspection store: every inspection in a database (SQLite by default, PostgreSQL
by URL), images as files under a data folder.

An inspection is acknowledged as stored once it is in the store's write-ahead journal
(``store/journal.py``: one ``write`` on the request path, no fsync): from then on it
survives the process being killed. A writer thread syncs the journal within
``sync_interval_s`` (from then on the inspection survives power loss too) and applies it
within ``apply_interval_s`` (at once when the inspection carries outbox events, which
someone waits for): each image file written atomically and synced before the rows are
committed in one transaction, then the journal segment deleted. Applying in batches is
what keeps the database's cost off the inspections' CPU budget (issue #12). So a crash
can leave an orphan file (removed at start-up) or a journal segment (applied again at
start-up, idempotently), but never a row pointing at a missing file, nor lose an
acknowledged inspection. Reads apply the journal first, so they see every acknowledged
inspection.

One process owns a data folder (:class:`DataDirLock`, taken before anything else), and
each row names the box that wrote it (``box_id``), so servers sharing one database never
clean up, age out or count each other's rows and files. Reading sees every box's rows; a
row's image is served only by the box that holds it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import random
import shutil
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import (
    ColumnElement,
    Delete,
    Engine,
    Table,
    Update,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    StatementError,
)
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.schema import CreateIndex, CreateTable

from lineside_inspect.atomic import fsync_folder, write_atomic
from lineside_inspect.errors import (
    ConfigError,
    DatabaseUnavailable,
    NotFoundError,
    ReviewConflict,
    ReviewError,
    StoreQuotaFull,
    UnreadableRecord,
    describe_validation,
    echo,
)
from lineside_inspect.inspector import Inspection
from lineside_inspect.opencv import cv2
from lineside_inspect.outage_log import OutageLog
from lineside_inspect.schemas import StoredInspection
from lineside_inspect.store import history
from lineside_inspect.store import stats as figures
from lineside_inspect.store.box import BOX_ID_FILE, resolve_box_id
from lineside_inspect.store.checks import (
    IMAGES_DIR,
    SCHEMA_TABLE,
    SCHEMA_VERSION,
    SQLITE_MAGIC,
    check_postgres_store,
    check_sqlite_store,
    database_address,
    in_use,
    look_at_postgres,
)
from lineside_inspect.store.engine import (
    WAL_CHECKPOINT_PAGES,
    WAL_FRAME_HEADER,
    WAL_ROOM_PAGES,
    _wal_bytes,
    make_engine,
)
from lineside_inspect.store.images import ImageBackend
from lineside_inspect.store.journal import Journal, Record, encode, fsync_path, read_records
from lineside_inspect.store.lock import DataDirLock
from lineside_inspect.store.models import (
    ADDED_COLUMNS,
    ADDED_INDEXES,
    LIFECYCLE_TABLES,
    Base,
    InspectionRow,
    OutboxRow,
    ReviewRow,
    ShadowResultRow,
    delete_any,
    label_pattern,
    labels_column,
    review_origin,
)
from lineside_inspect.store.outbox import (
    MQTT,
    Event,
    EventMaker,
    add_events,
    events_for,
    set_aside_channel,
)
from lineside_inspect.store.utc import Unreadable, as_utc

log = logging.getLogger("lineside.store")
T = TypeVar("T")
# the layout of a data folder: <data_dir>/DB_FILE, <data_dir>/IMAGES_DIR/<day>/<id>.<ext>,
# shared reference copies in <data_dir>/IMAGES_DIR/REFS_DIR/<sha256>.<ext>
DB_FILE = "lineside.db"
# PostgreSQL: the key of the advisory lock under which processes sharing the database look
# at it (checks.look_at_postgres) and mark it (SCHEMA_TABLE) one at a time
SCHEMA_LOCK_KEY = 0x4C696E6573696465  # "Lineside"
# how long a start waits for that lock (for the rest of the marking's transaction too):
# past it, one line. Another session holding the key (a collision with another program's
# key, a start stuck) ran into lock_timeout, was tried again three times and ended in a
# traceback, or waited for ever where the URL's options set lock_timeout=0
SCHEMA_LOCK_WAIT_S = 30.0
REFS_DIR = "refs"
# room one inspection's row may take in the database (its pages and their write-ahead log
# copies, the outbox row, indexes): measured ~50 KiB for a first row in a fresh SQLite file
DB_ROOM = 64 * 1024
# the writer applies the journal before ``apply_interval_s`` when this much waits
APPLY_RECORDS = 256
APPLY_BYTES = 16 * 1024 * 1024


# the disk quota (``max_bytes``, :meth:`Store.enforce_retention`) counts SQLite's write-ahead
# log at no less than WAL_ROOM_PAGES (store/engine.py)
# pages a row may take besides its own text: a leaf of the id index its random id lands in,
# and one for its outbox rows
ROW_EXTRA_PAGES = 2
# the writer leaves this share of the quota free for what arrives before it runs again
HEADROOM_SHARE, HEADROOM_MAX = 16, 64 * 1024 * 1024
# a full quota with nothing in it to remove (:meth:`Store._quota_room`) is remembered: saves
# are refused at once, with no retention pass each, until something that may free room
# happens in this store (its ``_generation`` moves: rows applied, deleted or forwarded, a
# claim given back; or the quota settings change), and at least every QUOTA_RECHECK_S for
# what the store does not see (the age limit passing, files removed by hand)
QUOTA_RECHECK_S = 2.0
# the age limit is applied by the writer at least this often while nothing is applied (a
# line stopped, a box whose rows leave only once forwarded), and by start-up cleanup: it ran
# only after a batch was applied, so an idle box kept every image past it for good
AGE_CHECK_S = 60.0
# the last time a row can hold: stored text after it is not a time (enforce_retention)
LAST_TIME = datetime.max.replace(tzinfo=UTC)
# the free-disk floor of a save is measured (a statvfs) at most this often; what the store
# appended to its journal since is taken off the measure
DISK_CHECK_S = 0.5


# the writer's wait after a failed apply (Store._write_behind). A database outage (refused,
# reset, gone, read-only): WRITER_BACKOFF_S doubling per failure up to WRITER_BACKOFF_MAX_S.
# A lock another session holds (PostgreSQL's lock_timeout, a deadlock or serialization
# failure; SQLite's "database is locked" after its busy timeout): LOCK_RETRY_S, fixed. The
# wait for the lock already spaced that attempt (LOCK_TIMEOUT_S, SQLITE_BUSY_S), and the
# backoff grown over a long lock (5 s) kept the records (the review page, the outbox, the
# hub) waiting that much longer once it was released. Fixed, it still bounds the rate of
# attempts that fail at once (an operator's lock_timeout of a few ms) to 1 / LOCK_RETRY_S
WRITER_BACKOFF_S, WRITER_BACKOFF_MAX_S = 0.2, 5.0
LOCK_RETRY_S = 0.5
# PostgreSQL's codes of a statement that lost to another session's lock: lock_not_available
# (lock_timeout), serialization_failure, deadlock_detected
LOCK_CODES = {"55P03", "40001", "40P01"}
# while the writer's applies keep failing, the log says so again at most this often (with
# the count), and whenever the kind of failure changes (a lock, an outage)
WRITER_LOG_S = 60.0
# at close, the most it waits for the writer's apply in flight: a database that holds its
# connections open but answers nothing (its server stopped or frozen) holds a statement
# for ever, and a box's shutdown must still end
CLOSE_WAIT_S = 30.0


def _lock_lost(exc: BaseException) -> bool:
    """``exc`` is a statement that waited for a lock another session holds and gave up
    (worth trying again soon), as against the database being down or refusing."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in LOCK_CODES:
        return True
    return isinstance(orig, sqlite3.OperationalError) and (
        "database is locked" in str(orig) or "database table is locked" in str(orig))


# records the database refused (see Store._set_aside), under the journal's folder
REFUSED_DIR = "refused"
DAMAGED_DIR = "damaged"  # journal segments with bytes that held no whole record


def _refused(exc: StatementError) -> bool:
    """The database refused these values (it will again: a NUL in PostgreSQL text, a
    constraint), as against being unreachable or busy (worth retrying)."""
    return isinstance(exc, DataError | IntegrityError) or not isinstance(exc, DBAPIError)


@dataclass(frozen=True)
class _QuotaFull:
    """The quota was found full with nothing to remove, as of ``generation`` and
    ``settings``; checked again once either moves, or from ``until`` (monotonic) on."""
    generation: int
    settings: tuple[object, ...]
    until: float


# remove_box (session 55): one box of the truth dropped (a false detection beside real
# defects); a fleet side of a release before it skips such a review, logged (docs/upgrading.md)
ACTIONS = ("confirm", "false_reject", "missed_defect", "relabel", "remove_box")
# reviews one inspection keeps: each review (and each box's resent batch) reads them all,
# and a box sending 1,000 reviews of one inspection made each one cost more (37 ms at 500)
MAX_REVIEWS = 100
# boxes an inspection's truth holds (each review row keeps the whole truth, and a hub takes
# a review of at most this many): repeated missed_defect reviews of 1,000 boxes each made
# one inspection 140 MB that every page and data pull then read (QA review, session 32)
MAX_TRUTH_BOXES = 1000


# while the writer's applies fail, the most a read waits for its attempt before it reads
# what the database has (Store._applied)
READ_WAITS_S = 2.0


CHECKED = ("sha256", "shift", "unchanged", "difference")  # reference_check's keys


def _written(path: Path, size: int) -> bool:
    """Whether ``path`` is already a file of ``size`` bytes."""
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def reference_check(inspection: Inspection) -> dict[str, Any] | None:
    """What ``reference_check`` keeps of an inspection's comparison with its golden: the
    answer's ``reference`` (:meth:`Inspection.reference_used`) but its name."""
    used = inspection.reference_used()
    return None if used is None else used.model_dump(mode="json", include=set(CHECKED), exclude_none=True)


def default_url(data_dir: str | Path) -> str:
    """The URL of a data folder's own SQLite database (``data_dir/lineside.db``). The path
    quoted: a data_dir with "?" put the database beside the folder (the rest taken for the
    URL's query), one with "%20" failed to open it (unquoted)."""
    return URL.create("sqlite", database=str((Path(data_dir) / DB_FILE).resolve())
                      ).render_as_string()


CREATE_ATTEMPTS = 5  # looks at a table another process is making (create_tables)
# start-up cleanup: orphan images up to this many are removed whatever the database knows
# (past it, and past the images it knows, the database is taken for another's: kept)
ORPHANS_ALWAYS_REMOVED = 20
ORPHANS_KEPT_FILE = "orphans-kept.txt"  # in the data folder: the images so kept


def looked_again(what: str, step: Callable[[], None]) -> None:
    """``step`` (schema work that looks before it writes), once more after a database error,
    up to CREATE_ATTEMPTS times: processes sharing the database (boxes of a site, a hub) run
    it at the same moment, and between one's look and its write the other made the table or
    column ("already exists", "duplicate column"); the next look sees it."""
    for attempt in range(CREATE_ATTEMPTS):
        try:
            step()
            return
        except DBAPIError as exc:
            if attempt == CREATE_ATTEMPTS - 1:
                raise
            log.info("store: %s failed (%s); looking again (another process sharing the "
                     "database may be doing it)", what, str(exc.orig).splitlines()[0][:120])
            time.sleep(0.05 * (attempt + 1))


def create_tables(engine: Engine, tables: list[Table]) -> None:
    """``create_all`` of ``tables``, which processes sharing the database may run at the
    same moment: the box stopped at start with "table outbox already exists" (PostgreSQL:
    DuplicateTable, or a unique violation on ``pg_type``). See :func:`looked_again`."""
    looked_again(f"making {', '.join(t.name for t in tables)}",
                 lambda: Base.metadata.create_all(engine, tables=tables))


# where a rebuilt SQLite reviews table goes on (Store._review_ids_never_reused): past any
# id an earlier table gave, within the fleet protocol's 31-bit seq
REVIEW_IDS_FROM = 2**30
ROOM_AFTER_COMMIT = "lineside_room_after_commit"  # key in a pooled connection's info


class Store:
    """``max_bytes`` bounds the store's disk use: kept images, reference copies, the
    journal and, on SQLite, the database file with its -wal and -shm files (a PostgreSQL
    database lives on its server and is not counted). Room is made before anything is
    written (:meth:`_quota_room`), so the bound holds at every moment, not only after
    retention. ``box_id``: see :func:`resolve_box_id`. ``lock``:
    a :class:`DataDirLock` on ``data_dir`` the caller took already (the server takes it
    before loading models); the store releases it on :meth:`close`."""

    def __init__(self, data_dir: str | Path, url: str | None = None, *, pass_rate: float = 0.1,
                 max_bytes: int | None = None, max_age_days: float | None = None,
                 seed: int | None = None, box_id: str | None = None,
                 lock: DataDirLock | None = None, sync_interval_s: float = 0.05,
                 apply_interval_s: float = 1.0, images: ImageBackend | None = None,
                 guard_channel: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        # a hub's store: every row's image is in this backend (store/images.py)
        self.central_images = images
        # before any file or database work: a second process on this folder stops here
        self.dir_lock = (lock or DataDirLock(self.data_dir)).acquire()
        try:
            if url is None:  # (before anything is made in it: a store ran here before?)
                self._check_database_moved()
            self.url = url or default_url(self.data_dir)
            if self.url.startswith("sqlite"):  # read only, before anything is written
                check_sqlite_store(self.url, self.data_dir)
            self.box_id = resolve_box_id(self.data_dir, box_id)
            self._shadows_made = False  # (_shadow_table)
            self.images_dir = self.data_dir / IMAGES_DIR
            self.images_dir.mkdir(parents=True, exist_ok=True)
            # the default database is this box's own: nobody else's rows can be in it
            self.own_database = url is None
            self.engine = make_engine(self.url)
            # PostgreSQL: what the database holds judged, and a new store marked, before
            # any table is made (SQLite's file was judged above)
            self._pg_schema = ""  # PostgreSQL: the store's schema (_claim_postgres)
            self._schema_found = (self._claim_postgres()
                                  if self.engine.dialect.name == "postgresql" else None)
            # table by table, folding SQLite's log into the database after each: every
            # statement rewrites the schema page into the log, and all at once the log of
            # creating the tables is twice their size (a small disk fills up at start)
            for table in Base.metadata.sorted_tables:
                if table.name not in LIFECYCLE_TABLES:  # the lifecycle makes its own
                    create_tables(self.engine, [table])
                    self.checkpoint()
            self._add_columns()
            self._review_ids_never_reused()
            self._mark_schema()
            self.db_page = self._page_size()
            self._watch_database_file()
        except BaseException:
            self.dir_lock.release()
            raise
        self.pass_rate = pass_rate
        self.max_bytes = max_bytes
        self.max_age_days = max_age_days
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._review_lock = threading.Lock()  # SQLite has no SELECT ... FOR UPDATE
        # what reviews made here are marked as (a hub's store says "hub"): the fleet's
        # merge rule breaks a tie of two reviews' times in favour of the hub's
        self.review_origin: str = "box"
        # fleet (fleet/box/reviews.py): events of a review made here, outboxed with it
        self.review_event_makers: list[Callable[[ReviewRow], list[Event]]] = []
        self.sync_interval_s = sync_interval_s
        self.apply_interval_s = max(apply_interval_s, sync_interval_s)
        self._urgent = False  # a record with outbox events waits to be applied
        self._apply_lock = threading.Lock()
        self._read_applies = OutageLog(log)  # reads' own applies that failed
        # the last apply failed on PostgreSQL (down, read-only, or a lock another session
        # holds): the request path does not wait for it to make room (_make_room)
        self._apply_failing = False
        # the writer's waits after failed applies: (kind, seconds) -> times chosen, kind
        # "lock" or "outage" (a handful of distinct keys: the backoff's steps, the lock's)
        self.writer_retries: Counter[tuple[str, float]] = Counter()
        # the writer's last attempt failed (the database down, refusing its login, its
        # tables gone, a lock): /metrics says so (lineside_store_writer_failing)
        self.writer_failing = False
        self._space_lock = threading.Lock()
        self._unapplied = 0  # acknowledged since start, not applied yet
        self._unapplied_bytes = 0
        # the quota: the most the store's files may take once everything acknowledged is
        # applied (measured by retention, plus what was claimed since), what saves have
        # claimed in all, and the room each acknowledged inspection needs to be applied
        self._projected: int | None = None
        self._claimed = 0
        self._apply_rooms: dict[str, int] = {}
        # SQLite reuses the pages rows left (age retention) before its file grows: bytes of
        # them no claim counted on yet (measured by retention), and what each acknowledged
        # inspection's claim counted on
        self._db_free = 0
        self._credits: dict[str, int] = {}
        # a full quota with nothing to remove (see QUOTA_RECHECK_S), and the saves refused
        # while it lasts (logged once it ends)
        self.quota_recheck_s = QUOTA_RECHECK_S
        self.age_check_s = AGE_CHECK_S
        self._generation = 0
        self._full: _QuotaFull | None = None
        self._refused = 0
        # the free-disk floor's last measure: (monotonic time, free bytes, journal bytes
        # appended by then)
        self._disk: tuple[float, int, int] = (-math.inf, 0, 0)
        self._appended = 0
        # line outputs (store/outbox.py): an inspection's events are made with its journal
        # record and enter the outbox with its row; then the listeners are told (no blocking)
        self.event_makers: list[EventMaker] = []
        self.outbox_listeners: list[Callable[[], None]] = []
        # the fleet (fleet/box/): the site and line written into each row, and the outbox
        # channel whose undelivered events retention keeps (their rows are not forwarded
        # yet: age never removes them, the quota removes only their images, and counts it)
        self.site: str | None = None
        self.line: str | None = None
        # (given here by a server forwarding to a hub: retention runs before its start-up
        # hooks do, when a journal left by the last run is applied and at cleanup, and with
        # none set it took every row for forwarded and removed those still waiting)
        self.guard_channel: str | None = guard_channel
        self.dropped_unforwarded = 0
        # active-learning capture (lifecycle/capture.py): asked of each inspection on the
        # request path (so it must be quick); a reason keeps the image for labelling
        self.capture_policy: Callable[[Inspection], str | None] | None = None
        self.journal = Journal(self.data_dir / "journal")
        # an outbox event delivered (a row forwarded to the hub) may make its row removable
        event.listen(self.engine, "after_execute", self._outbox_written)
        event.listen(self.engine, "checkin", self._checked_in)
        self.flush()  # what an earlier run acknowledged but had not applied yet
        if self.max_bytes is not None and self._projected is None:
            with Session(self.engine) as s:  # counted now: a first save need not wait for it
                self._projected = self._used(s)[0]
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._close_lock = threading.Lock()  # (close and the writer's end: who closes)
        self._writer_done = self._left_to_writer = False
        self._writer = threading.Thread(target=self._run_writer, name="store-writer",
                                        daemon=True)
        self._writer.start()

    def _check_database_moved(self) -> None:
        """ConfigError when this data folder's database is where a release before the
        quoted URL put it: the path pasted into the URL, cut at a "?" (or "%XX" decoded).
        Opened here instead, the new empty database left the folder's rows behind, and
        start-up cleanup removed its images as orphans (review of session 36)."""
        path = (self.data_dir / DB_FILE).resolve()
        legacy = make_url(f"sqlite:///{path}").database
        if not legacy or Path(legacy) == path or path.exists():
            return
        used = in_use(self.data_dir)
        try:
            with open(legacy, "rb") as f:
                is_sqlite = f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
        except OSError:  # none there (or a folder)
            return
        if used and is_sqlite:
            raise ConfigError(
                f"data_dir {self.data_dir}: its database was kept at {legacy} by an earlier "
                f"release (the folder's name has '?' or '%', which the database URL took for "
                f"its own syntax); move that file (and any -wal and -shm beside it) to "
                f"{path}, then start again (unless another data_dir used it too: copy it "
                "then). Started without it, this folder's inspections would be missing and "
                "their images removed as orphans")

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Apply what the journal holds, close the database connections and release the
        data folder. A writer still applying after ``wait_s`` (the database does not
        answer) is left: what the journal holds is applied at the next start, and the
        data folder stays held until that writer's apply ends (or the process does)."""
        self._stop.set()
        self._wake.set()
        self._writer.join(wait_s)
        with self._close_lock:
            if not self._writer_done:
                # its apply holds the apply lock: a flush here waited for it for ever. The
                # folder stays locked until the apply ends (_run_writer releases it): a
                # store opened on it meanwhile applied the same journal segment beside
                # it, its rows then refused as duplicates, set aside and their line
                # events sent twice (session 51, adversarial pass)
                self._left_to_writer = True
                self.journal.close()  # (saves from here on answer not stored)
                log.warning("store: the database did not answer the writer within %.0f s; "
                            "what the journal holds is applied at the next start (the data "
                            "folder stays locked until the writer's apply ends)", wait_s)
                return
        with contextlib.suppress(Exception):  # what is left is applied at the next start
            self.flush()
        self._closed()

    def _closed(self) -> None:
        self.journal.close()
        self.engine.dispose()
        self.dir_lock.release()

    def _run_writer(self) -> None:
        """The writer thread: :meth:`_write_behind`, then, when :meth:`close` stopped
        waiting for it, the rest of the close."""
        try:
            self._write_behind()
        finally:
            with self._close_lock:
                self._writer_done = True
                left = self._left_to_writer
            if left:
                self._closed()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_columns(self) -> None:
        """Bring a database made by an earlier release up to date: only nullable columns
        are ever added, so old rows stay valid and nothing stored is touched. Processes
        sharing a SQLite file that upgrade at once: the second's ADD COLUMN fails on the
        first's column (SQLite has no IF NOT EXISTS there), and it looks again."""
        looked_again("adding columns", self._add_missing_columns)

    def _add_missing_columns(self) -> None:
        inspector = sa_inspect(self.engine)
        # a lifecycle table is made by the lifecycle (Records), after this: one not there
        # yet is made with every column
        tables = {t for t, _, _ in ADDED_COLUMNS if inspector.has_table(t)}
        present = {(t, c["name"]) for t in tables for c in inspector.get_columns(t)}
        # only the missing indexes: PostgreSQL's CREATE INDEX IF NOT EXISTS takes its SHARE
        # lock on the table before it finds the index there, so at every start it waited for
        # every open write on the table (another box's batch or retention, a DBA's session),
        # and past lock_timeout (LOCK_TIMEOUT_S, five attempts) the box did not start at all
        indexed = {(t, i["name"]) for t in {t for _, t, _ in ADDED_INDEXES}
                   if inspector.has_table(t) for i in inspector.get_indexes(t)}
        # PostgreSQL: IF NOT EXISTS, because processes sharing one database (a hub's, boxes')
        # upgrade at once, and the second's plain ADD COLUMN failed on the first's column
        # (SQLite has no IF NOT EXISTS here: _add_columns looks again)
        maybe = " IF NOT EXISTS" if self.engine.dialect.name == "postgresql" else ""
        with self.engine.begin() as conn:
            for table, column, sql_type in ADDED_COLUMNS:
                if table in tables and (table, column) not in present:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN{maybe} {column} {sql_type}"))
                    log.info("store: added column %s.%s", table, column)
            for name, table, column in ADDED_INDEXES:
                if (table, name) not in indexed:
                    conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({column})"))

    def _claim_postgres(self) -> int | None:
        """PostgreSQL, before any table is made: :func:`check_postgres_store` of what the
        database holds (a newer release's store, another program's tables: one
        :class:`ConfigError` line, nothing made or changed). A database without the mark
        (a new one, or a store of a release before it) is marked at once, under an
        advisory lock: processes starting on it together (boxes of a site, a hub) look
        and mark one at a time, and a first start stopped half way still leaves a mark.
        The generation found (a store of a release before the mark: 0, raised by
        :meth:`_mark_schema` once its columns are added). A marked store costs two
        queries, no write. None: a store from before the mark its user may not mark
        (no CREATE on the schema), opened unmarked as before."""
        where, whose = database_address(self.url)[0], "the store's database"
        with self.engine.connect() as conn:
            found = look_at_postgres(conn, whose, where)
        check_postgres_store(found, whose, where)
        self._pg_schema = found.schema or ""
        if found.generation is not None:
            return found.generation
        if not found.may_create:
            # a store of a release before the mark, opened by a user who may not make
            # tables (USAGE and its tables' rows): it opened so before the mark, and
            # still does, unmarked (it stopped at the mark's CREATE TABLE with a
            # traceback; session 43, adversarial pass)
            log.warning("store: %s is a Lineside store from before its schema mark, and its "
                        "user %s may not make the mark's table %s.%s (no CREATE on the "
                        "schema): opened as it is, unmarked; start it once as a user who "
                        "may (its owner) to mark it", where, found.user, found.schema,
                        SCHEMA_TABLE)
            return None
        marked: list[int] = []

        def mark() -> None:
            with self.engine.begin() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = {int(SCHEMA_LOCK_WAIT_S * 1000)}"))
                try:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": SCHEMA_LOCK_KEY})
                except OperationalError as exc:
                    if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                        raise
                    raise ConfigError(
                        f"{where} is not marked as a Lineside store yet, and another "
                        f"session held the lock Lineside marks stores under "
                        f"(pg_advisory_xact_lock({SCHEMA_LOCK_KEY})) for "
                        f"{SCHEMA_LOCK_WAIT_S:g} s: start again once it is released (a "
                        "Lineside process stuck starting, or another program using the "
                        "same advisory lock key: see pg_locks)") from None
                again = look_at_postgres(conn, whose, where)  # another may have marked it
                check_postgres_store(again, whose, where)
                if again.generation is not None or again.schema is None:  # (None: refused)
                    marked[:] = [again.generation or 0]
                    return
                table = f"{conn.dialect.identifier_preparer.quote(again.schema)}.{SCHEMA_TABLE}"
                conn.execute(text(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY "
                                  "KEY CHECK (id = 1), generation INTEGER NOT NULL)"))
                generation = 0 if again.lineside else SCHEMA_VERSION
                conn.execute(text(f"INSERT INTO {table} (id, generation) VALUES (1, :g) "
                                  "ON CONFLICT (id) DO NOTHING"), {"g": generation})
                log.info("store: marked %s as a Lineside store (schema %s, generation %d)",
                         where, again.schema, generation)
                marked[:] = [generation]

        looked_again("marking the store's schema", mark)
        return marked[0]

    def _mark_schema(self) -> None:
        """The store's schema generation, raised to :data:`SCHEMA_VERSION` once the store
        is brought up to date: SQLite's in the file's header (``user_version``), which
        :func:`check_sqlite_store` of an older release refuses when it is past its own;
        PostgreSQL's in :data:`SCHEMA_TABLE` (:meth:`_claim_postgres` made it), which
        :func:`check_postgres_store` refuses so. Written once: a store already marked is
        only read (PostgreSQL: read by the claim, not again)."""
        if self.engine.dialect.name == "postgresql":
            if self._schema_found is not None and self._schema_found < SCHEMA_VERSION:
                table = (f"{self.engine.dialect.identifier_preparer.quote(self._pg_schema)}."
                         f"{SCHEMA_TABLE}")  # the schema the claim found it in
                with self.engine.begin() as conn:  # never lowered (GREATEST)
                    conn.execute(text(f"UPDATE {table} SET generation = GREATEST("
                                      "generation, :g)"), {"g": SCHEMA_VERSION})
                self._schema_found = SCHEMA_VERSION
            return
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect() as conn:
            marked = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
            if marked < SCHEMA_VERSION:
                conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.commit()

    def _review_ids_never_reused(self) -> None:
        """Rebuild a SQLite ``reviews`` table made before its ids were AUTOINCREMENT
        (PostgreSQL's sequences never go back). The ids it gave before may have been given
        twice, and a box's cursor may be past the highest left: the ids go on from
        :data:`REVIEW_IDS_FROM` (no SQLite store made that many reviews), past any.

        One explicit transaction, DDL and all: Python's sqlite3 commits each DDL statement
        on its own in its default mode, and a copy that failed (a full disk) left every
        review in a renamed table and an empty new one, for good (review, session 34)."""
        if self.engine.dialect.name != "sqlite":
            return
        table = Base.metadata.tables[ReviewRow.__tablename__]
        cols = ", ".join(c.name for c in table.columns)
        but_id = ", ".join(c.name for c in table.columns if c.name != "id")
        old = "reviews_before_autoincrement"
        raw = self.engine.raw_connection()
        db = raw.driver_connection
        assert db is not None
        level = db.isolation_level
        db.isolation_level = None  # autocommit: BEGIN and COMMIT are this code's own

        def made(name: str) -> str | None:
            """The CREATE statement of table ``name``, None when there is none."""
            row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                             (name,)).fetchone()
            return None if row is None else str(row[0])

        def needed() -> bool:
            reviews = made("reviews")
            return reviews is None or "AUTOINCREMENT" not in reviews.upper() \
                or made(old) is not None

        try:
            # a plain read first: a start with nothing to rebuild takes no write lock
            if not needed():
                return
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:  # another process holds the write lock
                raise ConfigError(f"store: the reviews table could not be rebuilt (ids that "
                                  f"never go back): {exc}; nothing was changed, start again "
                                  "once the database is free") from None
            try:
                if not needed():  # another process did it meanwhile
                    db.execute("ROLLBACK")
                    return
                if made(old) is not None:
                    # a rebuild an earlier release began and did not end: its rows back, a
                    # row whose id the new table gave again under a new id (none dropped).
                    # Its columns only: that release's table lacks the ones added since
                    # (reviews.box_id), and naming them stopped the start
                    have = {r[1] for r in db.execute(f"PRAGMA table_info({old})")}
                    cols = ", ".join(c.name for c in table.columns if c.name in have)
                    but_id = ", ".join(c.name for c in table.columns
                                       if c.name in have and c.name != "id")
                    db.execute(f"CREATE TEMP TABLE lineside_reused AS SELECT id FROM {old} "
                               "WHERE id IN (SELECT id FROM reviews)")
                    moved = db.execute("SELECT count(*) FROM lineside_reused").fetchone()[0]
                    db.execute(f"INSERT INTO reviews ({cols}) SELECT {cols} FROM {old} "
                               "WHERE id NOT IN (SELECT id FROM lineside_reused)")
                    db.execute(f"INSERT INTO reviews ({but_id}) SELECT {but_id} FROM {old} "
                               "WHERE id IN (SELECT id FROM lineside_reused) ORDER BY id")
                    db.execute("DROP TABLE lineside_reused")
                    db.execute(f"DROP TABLE {old}")
                    if moved:
                        log.warning("store: %d review(s) of an unfinished rebuild took new "
                                    "ids (theirs had been given again)", moved)
                else:
                    db.execute(f"ALTER TABLE reviews RENAME TO {old}")
                    for index in table.indexes:  # they went with the old table
                        db.execute(f"DROP INDEX IF EXISTS {index.name}")
                    db.execute(str(CreateTable(table).compile(self.engine)))
                    for index in table.indexes:
                        db.execute(str(CreateIndex(index).compile(self.engine)))
                    db.execute(f"INSERT INTO reviews ({cols}) SELECT {cols} FROM {old}")
                    db.execute(f"DROP TABLE {old}")
                top = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM reviews").fetchone()[0])
                db.execute("DELETE FROM sqlite_sequence WHERE name = 'reviews'")
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('reviews', ?)",
                           (max(top, REVIEW_IDS_FROM),))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise ConfigError(f"store: the reviews table could not be rebuilt (ids that "
                                  f"never go back): {exc}; nothing was changed, start again "
                                  "once that is mended (free disk space?)") from None
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.isolation_level = level
            raw.close()
        log.info("store: reviews table rebuilt: review ids never go back (from %d on)",
                 max(top, REVIEW_IDS_FROM) + 1)

    def _watch_database_file(self) -> None:
        """SQLite: every transaction first checks that the database file is still the one
        the store opened. Removed (or replaced) under a running server, its connections
        went on writing into the removed file: saves said stored, the journal was applied
        into it and deleted, reviews were saved, and at the next start all of it was gone
        (and the images taken for orphans). Now nothing is written (a request answers 503,
        the writer keeps the journal and retries) until the server is restarted on the
        file that is there then."""
        files = self._sqlite_files()
        if not files:
            return
        path = files[0]
        opened = path.stat()
        identity = (opened.st_dev, opened.st_ino)
        said = threading.Event()  # logged once, not at every retry and read

        def check(_conn: Any) -> None:
            try:
                now = path.stat()
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != identity:
                if not said.is_set():
                    said.set()
                    log.error("store: the database file %s was %s while the server ran; "
                              "nothing more is written to it: restart the server (the "
                              "journal keeps every inspection acknowledged since)", path,
                              "removed" if now is None else "replaced")
                raise DatabaseUnavailable(
                    f"the store's database file was {'removed' if now is None else 'replaced'} "
                    "while the server ran: nothing more is written to it until the server is "
                    "restarted (every inspection acknowledged since is kept in its journal)")

        event.listen(self.engine, "begin", check)

    def _mine(self) -> ColumnElement[bool]:
        return InspectionRow.box_id == self.box_id

    @staticmethod
    def _has_image() -> ColumnElement[bool]:
        """Rows whose image the quota counts and may remove: one they still name. A row
        whose file was found gone at start-up (cleanup) kept its ``image_bytes`` before:
        the quota counted them, and removed the row to free them, which freed nothing, so
        it went on to remove every such row, reviewed ones too (review, session 36)."""
        return InspectionRow.image_path.is_not(None) & (InspectionRow.image_bytes > 0)

    def _mine_or_unowned(self) -> ColumnElement[bool]:
        return or_(InspectionRow.box_id == self.box_id, InspectionRow.box_id.is_(None))

    # -- writing --------------------------------------------------------------------
    def _encoded(self, inspection: Inspection) -> tuple[bytes, str]:
        if inspection.raw is not None:
            return inspection.raw, inspection.raw_ext or "jpg"
        ok, buf = cv2.imencode(".png", inspection.image)  # camera frames: lossless
        if not ok:
            raise OSError("could not encode the frame")
        return bytes(buf.tobytes()), "png"

    def save(self, inspection: Inspection) -> bool:
        """Record ``inspection``: True once it is in the journal (see the module docstring
        for what survives what). Never raises for a full disk: the verdict is still
        answered, marked as not stored."""
        capture = None
        if self.capture_policy is not None:
            try:
                capture = self.capture_policy(inspection)
            except Exception:  # a policy's bug must not cost the inspection its record
                log.exception("capture policy failed on inspection %s", inspection.id)
        keep_image = (inspection.verdict == "fail" or capture is not None
                      or self._rng.random() < self.pass_rate)
        try:
            record = self._record(inspection, keep_image)
            if capture is not None:
                record.fields["capture"] = capture
            data = encode(record)  # once: its size is what the quota counts
            size = len(data)
            room, reusable = self._room_to_apply(record, size)
            # made first if short, else OSError; ``credit``: free database pages it takes
            with self._quota_room(size + room, reusable) as credit:
                # acknowledge only what can be applied: the journal holds the images until
                # they are written beside it (twice their size), and each row needs room in
                # the database; what is acknowledged but not applied yet counts too
                need = 2 * (self._unapplied_bytes + size) + DB_ROOM * (self._unapplied + 1)
                if self._free_disk() < need:
                    raise OSError(28, "not enough free disk space for the journal, its images "
                                      "and the database")
                self.journal.append(data)
                self._appended += size
                self._unapplied_bytes += size
                self._unapplied += 1
                self._apply_rooms[record.fields["id"]] = room - credit
                if credit:
                    self._credits[record.fields["id"]] = credit
                if record.fields.get("events"):
                    self._urgent = True
        except OSError as exc:
            if not isinstance(exc, StoreQuotaFull):  # (logged once per period: _quota_room)
                log.error("inspection %s not stored: %s", inspection.id, exc)
            return False
        if not self._wake.is_set():  # (setting it takes a lock; the writer clears it)
            self._wake.set()
        return True

    def _free_disk(self) -> int:
        """Free bytes on the data folder's disk (under the space lock): measured at most
        every DISK_CHECK_S and after each apply, less what the journal took since (the
        statvfs was the largest cost of a save). Between two measures only the journal
        grows by this store's hand; other processes' writes are what the floor's margin
        (twice the images, DB_ROOM a row) is for, as they were between a save and its apply."""
        now = time.monotonic()
        at, free, appended = self._disk
        if now - at >= DISK_CHECK_S:
            at, free, appended = self._disk = (now, shutil.disk_usage(self.data_dir).free,
                                               self._appended)
        return free - (self._appended - appended)

    def _record(self, inspection: Inspection, keep_image: bool) -> Record:
        """The journal record of ``inspection``: the row's fields, its image if kept and
        the reference image it was compared with."""
        image: bytes | None = None
        rel = ref_rel = None
        if keep_image:
            image, ext = self._encoded(inspection)
            rel = f"{inspection.created_at.strftime('%Y-%m-%d')}/{inspection.id}.{ext}"
        ref = inspection.reference
        if ref is not None and keep_image:
            ref_rel = f"{REFS_DIR}/{ref.sha256}.{ref.ext}"
        card = inspection.detector.card
        labels = inspection.defects.labels
        fields = {
            "id": inspection.id, "created_at": inspection.created_at.isoformat(),
            "camera_id": inspection.camera_id, "part_id": inspection.part_id,
            "recipe_name": inspection.recipe.name, "recipe_version": inspection.recipe.version,
            "model_name": card.name, "model_version": card.version, "model_sha256": card.sha256,
            "class_names": inspection.class_names, "verdict": inspection.verdict,
            "reasons": [r.model_dump() for r in inspection.reasons],
            "defects": inspection.defects.to_json(),
            "labels": labels_column(labels),
            "max_score": float(inspection.defects.scores.max()) if len(labels) else 0.0,
            "timings_ms": inspection.timings_ms, "image_path": rel,
            "width": int(inspection.image.shape[1]), "height": int(inspection.image.shape[0]),
            "image_bytes": len(image) if image is not None else 0,
            "review_state": "unreviewed", "box_id": self.box_id,
            "site": self.site, "line": self.line,
            "reference_name": None if ref is None else ref.name, "reference_path": ref_rel,
            "reference_check": reference_check(inspection),
            "tiles": inspection.tiles,
        }
        if self.event_makers:
            fields["events"] = events_for(self.event_makers, inspection)
        return Record(fields, image, ref.raw if ref_rel is not None and ref is not None else None)

    # -- the journal's writer ------------------------------------------------------------
    def _write_behind(self) -> None:
        """Group commit: wait for a save, let others join it for ``sync_interval_s``,
        then sync the journal (one fsync for all of them); apply what it holds once
        ``apply_interval_s`` has passed since the last apply, or at once when a record
        carries outbox events (line outputs and the fleet wait for them), or when much is
        waiting. A failure is retried, soon after a lock another session holds, with a
        growing backoff after an outage (see LOCK_RETRY_S); the journal keeps everything
        meanwhile."""
        failures = outages = 0  # failed attempts in a row; of them, not on a lock
        said: tuple[str, float] | None = None  # the failure last logged: kind, when
        last_apply = last_aged = time.monotonic()  # (start-up cleanup applies the age limit)
        while not self._stop.is_set():
            waiting = self._unapplied > 0
            timeout = (max(0.0, last_apply + self.apply_interval_s - time.monotonic())
                       if waiting else None)
            if self.max_age_days is not None:  # (an idle box too: see AGE_CHECK_S)
                aged = max(0.0, last_aged + self.age_check_s - time.monotonic())
                timeout = aged if timeout is None else min(timeout, aged)
            self._wake.wait(timeout)
            self._stop.wait(self.sync_interval_s)
            self._wake.clear()
            try:
                self.journal.sync()
                with self._space_lock:
                    due = (self._urgent or self._unapplied >= APPLY_RECORDS
                           or self._unapplied_bytes >= APPLY_BYTES
                           or time.monotonic() - last_apply >= self.apply_interval_s)
                if due:
                    self.flush()
                    last_apply = time.monotonic()
                if (self.max_age_days is not None and not self._stop.is_set()
                        and time.monotonic() - last_aged >= self.age_check_s):
                    self.enforce_retention(room=self.headroom())
                    last_aged = time.monotonic()
                if failures:
                    log.warning("store: the journal is applied again, after %d failed "
                                "attempt%s", failures, "" if failures == 1 else "s")
                failures = outages = 0
                said = None
                self.writer_failing = False
            except Exception as exc:
                failures += 1
                self.writer_failing = True
                kind = "lock" if _lock_lost(exc) else "outage"
                if kind == "lock":  # the attempt already waited for the lock: try soon
                    delay = LOCK_RETRY_S
                else:
                    outages += 1
                    delay = min(WRITER_BACKOFF_MAX_S, WRITER_BACKOFF_S * 2 ** (outages - 1))
                self.writer_retries[kind, delay] += 1
                # once per run of failures (and per change of kind; again every
                # WRITER_LOG_S): a lock held for an hour retried every few seconds
                # logged a line each time
                now = time.monotonic()
                if said is None or said[0] != kind or now - said[1] >= WRITER_LOG_S:
                    log.error("store: applying the journal failed (%s); retrying (%s, "
                              "attempt %d)", exc,
                              "a lock another session holds" if kind == "lock"
                              else "the database", failures)
                    said = (kind, now)
                retry = time.monotonic() + delay
                while not self._stop.wait(self.sync_interval_s) and time.monotonic() < retry:
                    with contextlib.suppress(OSError):  # new records stay power-loss safe
                        self.journal.sync()
                self._wake.set()

    @property
    def unapplied(self) -> int:
        """Inspections acknowledged since the start and not yet in the database (the
        journal holds them: an outage's backlog)."""
        return self._unapplied

    @contextlib.contextmanager
    def writer_paused(self) -> Iterator[None]:
        """No journal batch is applied while this is held, so outbox events written
        meanwhile commit wholly before or after the writer's. On PostgreSQL ids are handed
        out at insert but seen in commit order: an event written beside the writer could
        be seen after one with a higher id, which a receiver tracking ids (the hub, per
        box) has then passed."""
        with self._apply_lock:
            yield

    def flush(self) -> int:
        """Sync and apply every closed journal segment, oldest first; the number of
        inspections applied. Called by the writer, and by reads so they see every
        acknowledged inspection."""
        with self._apply_lock:
            try:
                applied = self._flush()
            except BaseException as exc:
                # PostgreSQL's own refusal (down, read-only, a lock): nothing this store
                # removes makes it take the batch. (Not a full disk here, nor SQLite's file
                # on it: retention is what frees that room, and must still run)
                self._apply_failing = not self.db_page and isinstance(exc, DBAPIError)
                raise
            self._apply_failing = False
        if applied and (self.max_bytes is not None or self.max_age_days is not None):
            self.enforce_retention(room=self.headroom())
        return applied

    def _flush(self) -> int:
        """(Under the apply lock.) :meth:`flush` but its retention."""
        applied = 0
        with self._space_lock:
            self._urgent = False  # (a save from here on sets it again)
        segments = self.journal.rotate()
        for segment in segments:  # every one before any is applied: an apply that
            fsync_path(segment)   # fails must not leave later segments unsynced
        for segment in segments:
            records, skipped = read_records(segment.read_bytes())
            self._apply(records)
            if skipped:
                self._keep_damaged(segment, len(records), skipped)
            else:
                segment.unlink()
            applied += len(records)
            with self._space_lock:  # (records of an earlier run were never counted)
                for r in records:  # applied: the quota measures their files now
                    self._apply_rooms.pop(r.fields["id"], None)
                    self._credits.pop(r.fields["id"], None)
                # rows applied without a credit may have taken free pages too: none is
                # counted on until retention measures them again (it runs next)
                self._db_free = 0
                self._unapplied = max(0, self._unapplied - len(records))
                self._unapplied_bytes = max(
                    0, self._unapplied_bytes - sum(r.size for r in records))
                # applied: the disk holds their files and rows, no longer counted as
                # unapplied, so the floor measures the disk again
                self._disk = (-math.inf, 0, 0)
        if applied:
            fsync_path(self.journal.folder)
            self.room_changed()
        return applied

    def _apply(self, records: list[Record]) -> None:
        """Image files first (atomic and synced), then the rows in one transaction;
        records already in the database (a replay after a crash) are skipped."""
        if not records:
            return
        ids = [r.fields["id"] for r in records]
        with Session(self.engine) as s:
            present = set(s.scalars(select(InspectionRow.id).where(InspectionRow.id.in_(ids))))
        present |= self._refused_ids()  # set aside before a crash: their events went then
        todo = [r for r in records if r.fields["id"] not in present]
        folders: set[Path] = set()
        for r in todo:
            files = []
            if r.image is not None and r.fields["image_path"]:
                files.append((r.fields["image_path"], r.image))
            ref_rel = r.fields["reference_path"]
            if r.reference is not None and ref_rel and not (self.images_dir / ref_rel).is_file():
                files.append((ref_rel, r.reference))  # one file per reference content
            for rel, data in files:
                path = self.images_dir / rel
                # a file named for this inspection with its size: an earlier attempt of this
                # batch wrote it whole (write_atomic renames only synced files) before the
                # database failed; an outage retried every few seconds rewrote and synced
                # every image of the batch each time
                if not _written(path, len(data)):
                    write_atomic(path, data, sync_folder=False)
                folders.add(path.parent)  # (synced again: a crash may have come before)
        # the files' names survive a power cut before their rows commit and the journal
        # segment goes: one fsync per folder a batch wrote into (a day's folder, and the
        # images folder that may have gained it), not one per file (each cost ~0.4 ms of
        # the writer's CPU per inspection)
        for folder in sorted(folders | {f.parent for f in folders}):
            fsync_folder(folder)
        try:
            events = self._insert(todo)
        except StatementError as exc:
            if not _refused(exc):
                raise  # the database is down or busy: the writer retries, the journal waits
            # one record the database refuses (a value it cannot hold) must not hold up
            # every record after it, now and at each start-up: each goes in alone, and
            # what is refused is set aside, never dropped
            events = 0
            for r in todo:
                try:
                    events += self._insert([r])
                except StatementError as one:
                    if not _refused(one):
                        raise
                    if self._present(r.fields["id"]):
                        # another writer's apply of this record committed first (a replay
                        # racing a commit still in flight), its events with it: set aside,
                        # its events went out twice (session 51)
                        continue
                    # the line still hears the verdict it was answered (events first: a
                    # crash before the record is set aside sends them again on replay,
                    # rather than never)
                    events += self._insert_events(r)
                    self._set_aside(r, one)
        for listener in self.outbox_listeners if events else ():
            try:
                listener()
            except Exception:
                log.exception("outbox listener %r failed", listener)

    def _insert(self, records: list[Record]) -> int:
        """The rows of ``records`` and their outbox events in one transaction; the number
        of events."""
        events = 0
        # (a record journaled by an earlier release has no reference_check nor tiles: None,
        # as every row of one multi-row statement names the same columns)
        rows = [{"reference_check": None, "tiles": None,
                 **{k: v for k, v in r.fields.items() if k != "events"},
                 "created_at": datetime.fromisoformat(r.fields["created_at"])} for r in records]
        with Session(self.engine) as s, s.begin():
            if rows:  # one multi-row statement: a batch costs about what one row does
                s.execute(insert(InspectionRow), rows)
            for r in records:
                events += add_events(s, self.box_id, r.fields.get("events") or ())
        return events

    def _present(self, inspection_id: str) -> bool:
        """Whether the database holds a row of ``inspection_id``."""
        with Session(self.engine) as s:
            return s.scalar(select(InspectionRow.id).where(InspectionRow.id == inspection_id)) \
                is not None

    def _insert_events(self, record: Record) -> int:
        """``record``'s line-output events without its row (the database refused the row).
        Other channels' events (the fleet's) stand for the row itself: there is none to send."""
        line = [e for e in record.fields.get("events") or () if e.get("channel") in (None, MQTT)]
        try:
            with Session(self.engine) as s, s.begin():
                return add_events(s, self.box_id, line)
        except StatementError as exc:
            if not _refused(exc):
                raise
            log.error("store: the events of inspection %s were refused too: %s",
                      record.fields["id"], type(exc).__name__)
            return 0

    def _keep_damaged(self, segment: Path, records: int, skipped: int) -> None:
        """Move a segment with bytes that held no whole record (torn by a power cut, or
        damaged) to ``journal/damaged/`` after its whole records are applied, and say so:
        what it lost may be recovered by hand, and it no longer counts as unapplied."""
        folder = self.journal.folder / DAMAGED_DIR
        folder.mkdir(exist_ok=True)
        # segments are numbered from 1 again once a run left none: a name kept by an
        # earlier run is never replaced (it would lose what that segment held)
        target, n = folder / segment.name, 0
        while target.exists():
            n += 1
            target = folder / f"{segment.stem}-{n}{segment.suffix}"
        segment.replace(target)
        fsync_path(folder)
        log.error("store: journal segment %s had %d byte(s) that held no whole record (a "
                  "power cut mid-write, or damage); its %d whole record(s) were applied and "
                  "it is kept in %s as %s", segment.name, skipped, records, folder, target.name)

    @property
    def refused_dir(self) -> Path:
        """Where records the database refused are kept (:meth:`_set_aside`)."""
        return self.journal.folder / REFUSED_DIR

    def _refused_ids(self) -> set[str]:
        folder = self.refused_dir
        return {p.stem for p in folder.glob("*.journal")} if folder.is_dir() else set()

    def refused_count(self) -> int:
        """How many records the database refused are kept aside (a metric: someone should
        look at them)."""
        return len(self._refused_ids())

    def _set_aside(self, record: Record, exc: Exception) -> None:
        """Keep a record the database refused in ``journal/refused/`` (the journal's own
        format: ``read_segment`` reads it) and say so; its image file, already written,
        goes at the next start-up's orphan cleanup."""
        folder = self.refused_dir
        folder.mkdir(exist_ok=True)
        write_atomic(folder / f"{record.fields['id']}.journal", encode(record))
        log.error("store: inspection %s was refused by the database and set aside in %s: %s",
                  record.fields["id"], folder,
                  (str(getattr(exc, "orig", exc)).splitlines() or [type(exc).__name__])[0])

    def _applied(self) -> None:
        """Before a read: apply the journal (an outage only delays it: the read goes on).
        While the writer's applies fail and it is trying again, the read does not wait for
        its attempt past READ_WAITS_S (a lock another session holds lasts up to
        LOCK_TIMEOUT_S each); an attempt that ends sooner (the database back: its first
        batch) is waited for, so the read sees what it applied."""
        if self._apply_failing and self._apply_lock.locked():
            if not self._apply_lock.acquire(timeout=READ_WAITS_S):
                return
            self._apply_lock.release()
            if self._apply_failing:  # that attempt failed too: not another one from here
                return
        try:
            self.flush()
        except Exception as exc:
            # once per outage (and each minute), not at every read of a polling page
            self._read_applies.failed("store: applying the journal before reads",
                                      logging.ERROR, "store: applying the journal before a "
                                      "read failed: %s", exc)
        else:
            if self._read_applies.open:
                self._read_applies.ended("the database")

    def keep(self, inspection: Inspection, capture: str | None = None) -> bool:
        """Keep a stored inspection's image if the pass sampling did not, and mark it as
        captured for labelling (``capture``: why; None: keep the image only): for what is
        learnt after the verdict (a shadow model's disagreement). False when the inspection
        is not in the store, or the quota or the disk has no room for its image."""
        self._applied()
        with Session(self.engine) as s:
            row = s.get(InspectionRow, inspection.id)
            if row is None:
                return False
            missing = row.image_path is None
        image_path = image_bytes = ref_rel = None
        claim = f"keep:{inspection.id}"  # its files count in the quota until its row names them
        try:
            if missing:
                data, ext = self._encoded(inspection)
                ref = inspection.reference
                room = len(data) + (0 if ref is None else len(ref.raw))
                with self._quota_room(room):
                    self._apply_rooms[claim] = room
                image_path = f"{inspection.created_at.strftime('%Y-%m-%d')}/{inspection.id}.{ext}"
                write_atomic(self.images_dir / image_path, data)
                image_bytes = len(data)
            # retention removes a reference file whose last user it deletes under this
            # lock: the file found here (or written) is still there when the row naming
            # it commits. Outside it, retention could remove the file's last other user
            # between the look and the commit, and the row named a file that was gone
            with self._apply_lock:
                if missing and inspection.reference is not None:
                    ref = inspection.reference
                    ref_rel = f"{REFS_DIR}/{ref.sha256}.{ref.ext}"
                    self._hold_reference(ref_rel, ref.raw)
                with Session(self.engine) as s, s.begin():
                    row = s.get(InspectionRow, inspection.id)
                    if row is None:  # removed by retention meanwhile
                        return False
                    row.capture = row.capture or capture
                    if missing and row.image_path is None:
                        row.image_path, row.image_bytes = image_path, image_bytes or 0
                        if ref_rel is not None:
                            row.reference_path = ref_rel
            return True
        except OSError as exc:  # the quota or the disk is full: the record stands without it
            log.error("inspection %s: its image was not kept: %s", inspection.id, exc)
            return False
        finally:
            with self._space_lock:
                if self._apply_rooms.pop(claim, None):  # (given back unused, if it failed)
                    self._generation += 1
                    self._disk = (-math.inf, 0, 0)  # files written beside the journal

    def _hold_reference(self, rel: str, raw: bytes) -> None:
        """(Under the apply lock.) The reference file ``rel``, written if it is not there."""
        if not (self.images_dir / rel).is_file():
            write_atomic(self.images_dir / rel, raw)

    # -- start-up and retention -----------------------------------------------------
    def cleanup(self) -> dict[str, int]:
        """Start-up: adopt this box's rows from before box ids, remove orphan and temp
        files, clear this box's image paths whose file is gone. Another box's rows and
        files are never touched, nor a pre-box-id row this box cannot prove is its own.
        Then the age limit and the quota, as they are now (either may have changed since
        the last run, and nothing else applies them to a box that inspects nothing)."""
        self.flush()  # a journaled image is not an orphan
        with self._lock:  # (the writer's retention waits: it would remove rows under it)
            counts = self._cleanup()
        if self.max_bytes is not None or self.max_age_days is not None:
            self.enforce_retention(room=self.headroom())
        return counts

    def _cleanup(self) -> dict[str, int]:
        adopted = self._adopt_unowned()
        with Session(self.engine) as s:
            paths = s.execute(select(InspectionRow.image_path, InspectionRow.reference_path)
                              .where(self._mine_or_unowned())).all()
        known = {p for pair in paths for p in pair if p}
        refused = self._refused_ids()  # their rows were never written: their images go
        kept_list = self.data_dir / ORPHANS_KEPT_FILE
        kept = set(kept_list.read_text().splitlines()) if kept_list.is_file() else set()
        removed = matched = 0
        orphans: list[Path] = []
        for path in self.images_dir.rglob("*"):
            if not path.is_file():
                continue
            rel = path.relative_to(self.images_dir).as_posix()
            if path.name.startswith(".") or (rel not in known and path.stem in refused
                                             and not rel.startswith(f"{REFS_DIR}/")):
                path.unlink(missing_ok=True)  # a write cut short, a set-aside record's image
                removed += 1
            elif rel in kept:  # kept at an earlier start: never removed here
                continue
            elif rel not in known:
                orphans.append(path)
            else:
                matched += 1
        # an orphan is an image whose row a crash never wrote: a few. More of them than the
        # folder's images the database knows is a database that is not this folder's (a
        # database_url switched without moving the rows, a database emptied or restored
        # from an old backup, whose rows name images retention removed since): every image
        # was removed as an orphan at the first start. Kept and said
        # ... and listed: the ratio holds only until the database knows more of the
        # folder's images, and a later start removed the kept ones, unsaid
        if len(orphans) > max(ORPHANS_ALWAYS_REMOVED, matched):
            listed = sorted(kept | {p.relative_to(self.images_dir).as_posix() for p in orphans})
            write_atomic(kept_list, ("\n".join(listed) + "\n").encode())
            log.warning("store: %d images in %s have no row in the database (which knows %d of "
                        "the folder's): is this the database of this folder (database_url)? "
                        "They are kept, listed in %s, and never removed at start while it "
                        "lists them; remove them (and the list) by hand if they are not wanted",
                        len(orphans), self.images_dir, matched, kept_list)
        else:
            for path in orphans:
                path.unlink(missing_ok=True)
            removed += len(orphans)
        cleared = 0
        with Session(self.engine) as s, s.begin():
            for row in s.scalars(select(InspectionRow).where(
                    self._mine(), InspectionRow.image_path.is_not(None))):
                if not (self.images_dir / str(row.image_path)).is_file():
                    row.image_path, row.image_bytes = None, 0  # (no longer on this disk)
                    cleared += 1
                if row.reference_path and not (self.images_dir / row.reference_path).is_file():
                    row.reference_path = None
                    cleared += 1
        return {"adopted": adopted, "orphans_removed": removed, "missing_cleared": cleared}

    def _adopt_unowned(self) -> int:
        """Rows written before box ids (NULL ``box_id``) become this box's: all of them
        when the database is this box's own default SQLite file, else those whose image
        file is in this box's folder (an image path names one inspection)."""
        unowned = InspectionRow.box_id.is_(None)
        with Session(self.engine) as s, s.begin():
            if self.own_database:
                res = s.execute(update(InspectionRow).where(unowned).values(box_id=self.box_id))
                return int(getattr(res, "rowcount", 0) or 0)
            candidates = s.execute(select(InspectionRow.id, InspectionRow.image_path)
                                   .where(unowned, InspectionRow.image_path.is_not(None))).all()
            ids = [i for i, p in candidates if (self.images_dir / str(p)).is_file()]
            for start in range(0, len(ids), 500):
                s.execute(update(InspectionRow).where(unowned, InspectionRow.id.in_(ids[start:start + 500]))
                          .values(box_id=self.box_id))
        return len(ids)

    def _deletion_order(self) -> list[Any]:
        """Who goes first: passes, then reviewed fails, then unreviewed fails; oldest first."""
        return [
            InspectionRow.verdict == "pass",
            (InspectionRow.verdict == "fail") & (InspectionRow.review_state != "unreviewed"),
            (InspectionRow.verdict == "fail") & (InspectionRow.review_state == "unreviewed"),
        ]

    def _forwarded(self) -> ColumnElement[bool]:
        """Rows whose fleet event is delivered (all rows when nothing is forwarded)."""
        if self.guard_channel is None:
            return InspectionRow.id.is_not(None)
        # an event set aside (the hub refused its record) waits for an admin's retry
        channels = (self.guard_channel, set_aside_channel(self.guard_channel))
        waiting = select(OutboxRow.topic).where(
            OutboxRow.box_id == self.box_id, OutboxRow.channel.in_(channels),
            OutboxRow.delivered_at.is_(None))
        return InspectionRow.id.not_in(waiting)

    def enforce_retention(self, now: datetime | None = None, *, room: int = 0) -> int:
        """Apply the age limit, then the disk quota, to this box's rows. Returns rows
        deleted. Rows without an image (unsampled passes) leave by age only; their
        database space counts against the quota, and images make way for it. Rows not
        forwarded to the hub yet (``guard_channel``) never leave by age; when the quota
        still needs room after every forwarded image is gone, their images go (the rows
        stay, and are forwarded without them), counted in ``dropped_unforwarded``. The passes
        and fails of the rows deleted are kept in ``yield_history`` (``store/history.py``).

        The quota counts :meth:`used_bytes`, what is on disk and what applying the
        journal will add, and leaves ``room`` bytes of ``max_bytes`` free besides (the
        writer leaves :meth:`headroom` for what is acknowledged before it runs again)."""
        deleted, dropped = 0, self.dropped_unforwarded
        quota = self.max_bytes
        # no batch is applied while the quota is measured: its rows in the sum and its
        # claims given back would otherwise be seen both missing (an adversarial read)
        with self._lock, self._apply_lock:
            if quota is not None:
                self.checkpoint(self._wal_checkpoint_bytes())
            with Session(self.engine) as s, s.begin():
                gone: list[tuple[Any, ...]] = []  # the deleted rows' history keys
                # each row's verdict after review, read with it: its reviews go with it
                judged = history.judged(s)
                pages = self._db_pages(s)
                cutoff = self._age_cutoff(now or datetime.now(UTC))
                if cutoff is not None:
                    # and rows whose stored time is text sorting after every time (SQLite
                    # keeps any text: a hand edit, another writer): no age ever reached
                    # them, and they were kept for good (review, session 40). Asked apart:
                    # one range each on the created_at index, where an OR could scan
                    for old in (InspectionRow.created_at < cutoff,
                                InspectionRow.created_at > LAST_TIME):
                        for row, after in s.execute(select(InspectionRow, judged).where(
                                self._mine(), self._forwarded(), old)):
                            self._delete(s, row, after, gone)
                            deleted += 1
                if quota is not None:
                    limit = quota - room
                    used, claimed = self._used(s)
                    if used > limit and self.db_page:
                        # delivered events stay a while for a look only (keep_delivered_s, up
                        # to 30 days), yet their pages count in the quota and nothing here
                        # removed them: the file outgrew the quota and every inspection
                        # after was refused (soak, session 38). Their pages are free for new
                        # rows now (the file keeps its size: that is counted as before)
                        # (looked for first: a DELETE of the outbox, even of nothing, tells
                        # a full quota to look again, and a save refused at once then ran
                        # retention every time)
                        delete_any(s, OutboxRow, OutboxRow.box_id == self.box_id,
                                   OutboxRow.delivered_at.is_not(None))
                    for tier in self._deletion_order():
                        if used <= limit:
                            break
                        q = (select(InspectionRow, judged)
                             .where(self._mine(), self._forwarded(), tier, self._has_image())
                             .order_by(InspectionRow.created_at))
                        for row, after in s.execute(q):
                            if used <= limit:
                                break
                            used -= self._delete(s, row, after, gone)
                            deleted += 1
                    if used > limit and self.guard_channel is not None:
                        used = self._drop_unforwarded_images(s, used, limit)
                # their passes and fails stay in the figures: counted in this transaction,
                # so a crash commits neither the deletes nor the counts (store/history.py)
                history.count_removed(s, gone)
                history.prune(s, now or datetime.now(UTC), self.box_id or "")
                if quota is not None:
                    # the history's own pages, where the pages the rows freed did not hold it
                    used += max(0, self._db_pages(s) - pages) * self.db_page
                    slack = self._db_slack(s)  # (after the history took any free page)
                    if used > quota:
                        log.warning("store: %d bytes in use or acknowledged with no image left "
                                    "to remove; the quota of %d bytes is too small for the "
                                    "database: inspections are not stored until there is room",
                                    used, quota)
            if quota is not None:
                if deleted:
                    self.checkpoint(self._wal_checkpoint_bytes())  # the deletions' log entries
                with self._space_lock:  # what saves claimed meanwhile stays claimed
                    self._projected = used + self._claimed - claimed
                    self._db_free = max(0, slack - sum(self._credits.values()))
        if deleted or self.dropped_unforwarded != dropped:
            self.room_changed()
        return deleted

    def _drop_unforwarded_images(self, s: Session, used: int, limit: int) -> int:
        """The quota forces it: remove images of rows not forwarded yet (in the deletion
        order), keeping the rows, until ``used`` is within ``limit``; the bytes still in use."""
        dropped = 0
        for tier in self._deletion_order():
            q = (select(InspectionRow).where(self._mine(), ~self._forwarded(), tier,
                                             self._has_image())
                 .order_by(InspectionRow.created_at))
            for row in s.scalars(q):
                if used <= limit:
                    break
                if row.image_path:
                    (self.images_dir / row.image_path).unlink(missing_ok=True)
                used -= row.image_bytes
                row.image_path, row.image_bytes = None, 0
                dropped += 1
        if dropped:
            self.dropped_unforwarded += dropped
            log.warning("store: the disk quota forced removing the images of %d inspection(s) "
                        "not forwarded to the hub yet; their records are kept and forwarded "
                        "without them", dropped)
        return used

    def _sqlite_files(self) -> list[Path]:
        """The SQLite database file and its -wal and -shm companions ([] on PostgreSQL)."""
        db = self.engine.url.database if self.engine.url.get_backend_name() == "sqlite" else None
        if not db or db == ":memory:":
            return []
        return [Path(db + suffix) for suffix in ("", "-wal", "-shm")]

    def overhead_bytes(self) -> int:
        """The store's files besides the inspection images: reference copies (images/refs),
        the SQLite database files, the journal (its refused records and damaged segments too),
        the box id and lock files. The write-ahead
        log counts at no less than the room one transaction takes in it (WAL_ROOM_PAGES)."""
        files = [*self.journal.folder.glob("*.journal"), *self.refused_dir.glob("*.journal"),
                 *(self.journal.folder / DAMAGED_DIR).glob("*.journal"), self.data_dir / BOX_ID_FILE,
                 self.dir_lock.path]
        refs = self.images_dir / REFS_DIR
        if refs.is_dir():
            files += [p for p in refs.iterdir() if p.is_file()]
        total = self._sqlite_bytes(self._sqlite_files())
        for p in files:
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    def _sqlite_bytes(self, files: list[Path]) -> int:
        """What the SQLite database ``files`` (:meth:`_sqlite_files`, or its first two) take
        in the quota: their sizes, the write-ahead log (the second) at no less than the
        room one transaction takes in it."""
        total = 0
        for i, path in enumerate(files):
            with contextlib.suppress(FileNotFoundError):  # a -wal that was never made
                size = path.stat().st_size
                total += max(size, self._wal_room_bytes()) if i == 1 else size
        return total

    def used_bytes(self) -> int:
        """What the quota counts: the store's files (:meth:`overhead_bytes` and this box's
        images) and the room applying what the journal holds will take."""
        with self._apply_lock, Session(self.engine) as s:  # (see enforce_retention)
            return self._used(s)[0]

    def _used(self, s: Session) -> tuple[int, int]:
        """:meth:`used_bytes` in ``s``, and the bytes saves had claimed when it was taken
        (measured under the lock that saves claim and append under, so none is missed)."""
        images = s.scalar(select(func.coalesce(func.sum(InspectionRow.image_bytes), 0))
                          .where(self._mine(), self._has_image())) or 0
        with self._space_lock:
            return (images + self.overhead_bytes() + sum(self._apply_rooms.values()),
                    self._claimed)

    def headroom(self) -> int:
        """What the writer's retention leaves free of the quota for inspections that arrive
        before it runs again; a save that finds less makes room itself (:meth:`_quota_room`)."""
        return min((self.max_bytes or 0) // HEADROOM_SHARE, HEADROOM_MAX)

    def _room_to_apply(self, record: Record, journal_bytes: int) -> tuple[int, int]:
        """The most applying ``record`` (``journal_bytes`` in the journal) adds on disk: its
        image and reference files and, on SQLite, its row's pages in the write-ahead log
        and again in the database (the row's text is shorter than its journal record); and
        the part of it free pages of the database file can take instead."""
        files = len(record.image or b"") + len(record.reference or b"")
        if not self.db_page:  # PostgreSQL: the database is not on this disk
            return files, 0
        pages = -(-(journal_bytes - files) // self.db_page) + ROW_EXTRA_PAGES
        return files + 2 * pages * (self.db_page + WAL_FRAME_HEADER), pages * self.db_page

    def _db_pages(self, s: Session) -> int:
        """Pages of the SQLite database in ``s``'s view (0 on PostgreSQL)."""
        if not self.db_page:
            return 0
        return int(s.connection().exec_driver_sql("PRAGMA page_count").scalar() or 0)

    def _db_slack(self, s: Session) -> int:
        """Bytes of the SQLite database file that no live page takes (pages rows left, in
        ``s``'s view): new rows take them before the file grows. 0 on PostgreSQL."""
        files = self._sqlite_files()
        if not files:
            return 0
        conn = s.connection()
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)
        free = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)
        try:  # (pages past the file's end are in the write-ahead log only: not counted)
            size = files[0].stat().st_size
        except FileNotFoundError:
            return 0
        return max(0, min(free * self.db_page, size - (pages - free) * self.db_page))

    def room_changed(self) -> None:
        """Something may have freed room in the quota (rows applied, deleted or forwarded):
        a save that finds it full looks for room again instead of refusing at once."""
        with self._space_lock:
            self._generation += 1

    def _outbox_written(self, conn: Any, statement: Any, *_: Any) -> None:
        """(The engine's ``after_execute``.) Outbox rows marked delivered or purged: an
        inspection forwarded to the hub may go now."""
        if (isinstance(statement, Update | Delete)  # (the ORM's is an annotated copy)
                and getattr(statement.table, "name", None) == OutboxRow.__tablename__):
            self.room_changed()
            # and again once committed: a save looking for room before the commit saw the
            # rows still waiting and remembered "full" at this generation
            conn.info[ROOM_AFTER_COMMIT] = True

    def _checked_in(self, _dbapi_conn: Any, record: Any) -> None:
        """(The pool's ``checkin``: the connection's transaction has ended.)"""
        if record.info.pop(ROOM_AFTER_COMMIT, False):
            self.room_changed()

    def _quota_settings(self) -> tuple[object, ...]:
        return self.max_bytes, self.max_age_days, self.guard_channel

    def _quota_full_error(self) -> StoreQuotaFull:
        return StoreQuotaFull(errno.EDQUOT, f"the store's disk quota ({self.max_bytes} bytes) "
                                            "is full and nothing in it can be removed")

    def _claim_size(self, nbytes: int, reusable: int) -> tuple[int, int]:
        """(Under the space lock.) What a claim of ``nbytes`` counts, ``reusable`` of which
        free database pages can take, and the credit it takes of them."""
        credit = min(self._db_free, reusable)
        return nbytes - credit, credit

    def _fits(self, nbytes: int, reusable: int) -> bool:
        """(Under the space lock.)"""
        return self.max_bytes is None or (
            self._projected is not None
            and self._projected + self._claim_size(nbytes, reusable)[0] <= self.max_bytes)

    @contextlib.contextmanager
    def _quota_room(self, nbytes: int, reusable: int = 0) -> Iterator[int]:
        """The space lock, held with ``nbytes`` of the quota claimed (given back if the
        block fails). When the quota is short, room is made first: by retention, and when
        it finds nothing to remove, by applying the journal (whose oldest inspections may
        then go); when neither does anything, OSError and nothing is written: the store's
        files never take more than ``max_bytes``. That outcome is remembered (QUOTA_RECHECK_S):
        until something may have freed room, a save that does not fit is refused at once.
        ``reusable``: bytes of the claim free database pages can take (:meth:`_db_slack`);
        the block gets the credit taken of them."""
        while True:
            self._space_lock.acquire()
            if self._fits(nbytes, reusable):
                # (a record smaller than the one refused may fit what is left: the quota is
                # not found to have room again until something freed some)
                if self._full is not None and self._full.generation != self._generation:
                    log.warning("store: room in the disk quota again; %d inspection(s) were "
                                "answered but not stored meanwhile", self._refused)
                    self._full, self._refused = None, 0
                break
            full, generation = self._full, self._generation
            if (full is not None and full.generation == generation
                    and full.settings == self._quota_settings()
                    and time.monotonic() < full.until):
                self._refused += 1
                self._space_lock.release()
                raise self._quota_full_error()
            self._space_lock.release()
            self._check_fits_at_all(nbytes, reusable)  # (no room is made for what never fits)
            if not self._make_room(nbytes, reusable):
                ages = self._next_age_out()
                with self._space_lock:
                    if self._full is None:  # once per period, not per inspection
                        log.error("store: %s: inspections are answered but not stored until "
                                  "something can go (a row forwarded to the hub or past the "
                                  "age limit)", self._quota_full_error().strerror)
                    self._refused += 1
                    # as of the generation before looking: what moved it meanwhile counts
                    self._full = _QuotaFull(generation, self._quota_settings(),
                                            min(time.monotonic() + self.quota_recheck_s, ages))
                raise self._quota_full_error()
        credit = 0
        try:
            if self.max_bytes is not None:
                assert self._projected is not None
                nbytes, credit = self._claim_size(nbytes, reusable)
                self._projected += nbytes
                self._claimed += nbytes
                self._db_free -= credit
            try:
                yield credit
            except BaseException:
                if self.max_bytes is not None and self._projected is not None:
                    self._projected -= nbytes
                    self._claimed -= nbytes
                    self._db_free += credit
                raise
        finally:
            self._space_lock.release()

    def _check_fits_at_all(self, nbytes: int, reusable: int) -> None:
        """OSError when a claim of ``nbytes`` would not fit the quota even with every image
        gone (beside the SQLite database, which never shrinks): making room for it removed
        every stored inspection, reviewed ones too, and it was refused all the same (a frame
        larger than a small quota; review, session 36)."""
        if self.max_bytes is None:
            return
        floor = self._sqlite_bytes(self._sqlite_files()[:2])  # the database and its log
        if nbytes - reusable + floor > self.max_bytes:
            beside = f" beside its database ({floor} bytes)" if floor else ""
            raise OSError(errno.EFBIG, f"its files and row need {nbytes - reusable} bytes, more "
                                       f"than the store's disk quota ({self.max_bytes} bytes) "
                                       f"holds{beside}; nothing was removed for it")

    def _make_room(self, nbytes: int, reusable: int) -> bool:
        """Steps towards ``nbytes`` of room and :meth:`headroom` in the quota: retention,
        then applying the journal and retention again (the applied are measured now, and
        the oldest of them may go). False when none of it did anything."""
        def fits() -> bool:
            with self._space_lock:
                return self._fits(nbytes, reusable)

        if self._apply_failing:
            # the database takes no batch (down, read-only, a lock another session holds):
            # retention and applying would fail too, after waiting for the writer's attempt
            # and the lock (the line's verdicts waited that long); the writer's next batch
            # applied moves the generation and the saves look again
            return False
        dropped = self.dropped_unforwarded  # (images removed, their rows kept)
        try:
            removed = self.enforce_retention(room=nbytes + self.headroom())
            if fits():
                return True
            applied = self.flush()
            removed += self.enforce_retention(room=nbytes + self.headroom())
            return fits() or bool(removed or applied or self.dropped_unforwarded != dropped)
        except Exception as exc:  # a database outage: no room can be made
            log.error("store: making room in the disk quota failed: %s", exc)
            return False

    def _next_age_out(self) -> float:
        """When (monotonic) the oldest row the age limit may remove passes it (inf: none)."""
        if self.max_age_days is None or self._apply_failing:  # (no read of a failing database)
            return math.inf
        try:
            with Session(self.engine) as s:
                oldest = s.scalar(select(func.min(InspectionRow.created_at))
                                  .where(self._mine(), self._forwarded()))
        except Exception as exc:  # a database outage: looked at again after a while
            log.error("store: reading the oldest inspection failed: %s", exc)
            return math.inf
        if oldest is None:
            return math.inf
        if not isinstance(oldest, datetime):  # stored text that is not a time: it goes now
            return time.monotonic()
        cutoff = self._age_cutoff(datetime.now(UTC))
        if cutoff is None:  # a limit past the calendar: never
            return math.inf
        due = as_utc(oldest) - cutoff
        return time.monotonic() + max(0.0, due.total_seconds())

    def _age_cutoff(self, now: datetime) -> datetime | None:
        """Rows made before this leave by age; None: no age limit, or one reaching back
        before the calendar (a "keep forever" of a million days, or inf: every apply and
        every retention pass failed with OverflowError, a store on a quota refused every
        save once full, and a journal left at start stopped the server)."""
        if self.max_age_days is None:
            return None
        try:
            return as_utc(now) - timedelta(days=self.max_age_days)
        except OverflowError:
            return None

    def _page_size(self) -> int:
        """SQLite's page size (0 on PostgreSQL)."""
        if not self._sqlite_files():
            return 0
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 4096)

    def _wal_room_bytes(self) -> int:
        return _wal_bytes(WAL_ROOM_PAGES, self.db_page)

    def _wal_checkpoint_bytes(self) -> int:
        return _wal_bytes(WAL_CHECKPOINT_PAGES, self.db_page)

    def checkpoint(self, budget: int = 0) -> None:
        """SQLite checkpoints its write-ahead log by itself past WAL_CHECKPOINT_PAGES (see
        make_engine), but cuts the file back only when the next transaction starts: past
        ``budget`` bytes, checkpoint it and truncate it now."""
        files = self._sqlite_files()
        if not files:
            return
        try:
            size = files[1].stat().st_size
        except FileNotFoundError:
            return
        if size <= budget:
            return
        with self.engine.connect() as conn:
            busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").scalar()
        if busy:
            log.info("store: write-ahead log (%d bytes) busy, not truncated this time", size)

    def _delete(self, s: Session, row: InspectionRow, after: str | None,
                gone: list[tuple[Any, ...]]) -> int:
        """Delete ``row`` and its files; the bytes this freed on disk. Its history key
        and ``after``, its verdict after review (history.judged), go to ``gone`` when this
        delete removed it (not when another process did first: it is counted once, by
        that one)."""
        freed = 0
        if row.image_path:
            (self.images_dir / row.image_path).unlink(missing_ok=True)
            freed += row.image_bytes
        ref = row.reference_path
        # a statement, not the session's delete: its row count says whether this removed it
        # (reviews go by the foreign key's ON DELETE CASCADE, as they did). Not synchronized
        # with the session: that scanned every row the round had loaded for each delete, and
        # a day of a busy line's rows by age took hours under the writer's lock (review,
        # session 37); nothing reads a deleted row's object again
        removed = s.execute(delete(InspectionRow).where(InspectionRow.id == row.id),
                            execution_options={"synchronize_session": False})
        if getattr(removed, "rowcount", 0) == 1:
            gone.append(history.key_of(row, after))
        if ref and not s.scalar(select(func.count()).where(
                InspectionRow.reference_path == ref, self._mine_or_unowned())):
            path = self.images_dir / ref  # its last user is gone
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        return freed

    # -- reading --------------------------------------------------------------------
    def query(self, *, verdict: str | None = None, camera_id: str | None = None,
              part_id: str | None = None, recipe: str | None = None, label: str | None = None,
              site: str | None = None, line: str | None = None, box_id: str | None = None,
              min_score: float | None = None, max_score: float | None = None,
              since: datetime | None = None, until: datetime | None = None,
              review_state: str | None = None, limit: int = 50,
              offset: int = 0, queue: str | None = None) -> tuple[int, list[InspectionRow]]:
        """``queue``: "shadow" (a shadow model disagreed with the verdict) or "to_label"
        (kept by active-learning capture). ``part_id``: exactly this part's (any text: it is
        compared, never a pattern)."""
        self._applied()
        q = select(InspectionRow)
        conds: list[Any] = []
        if verdict:
            conds.append(InspectionRow.verdict == verdict)
        if camera_id is not None:  # "" is the uploads, as on the dashboard (stats.py): it
            # listed every inspection, where /v1/stats?camera_id= counted the uploads only
            conds.append(InspectionRow.camera_id == camera_id if camera_id
                         else InspectionRow.camera_id.is_(None))
        if part_id:  # a QA reviewer's lookup of one part (session 47)
            conds.append(InspectionRow.part_id == part_id)
        if recipe:
            conds.append(InspectionRow.recipe_name == recipe)
        if site:  # a hub's fleet filters
            conds.append(InspectionRow.site == site)
        if line:
            conds.append(InspectionRow.line == line)
        if box_id:
            conds.append(InspectionRow.box_id == box_id)
        if label:  # exactly this class: '%' and '_' in a label are not LIKE wildcards
            conds.append(InspectionRow.labels.contains(label_pattern(label), autoescape=True))
        if min_score is not None:
            conds.append(InspectionRow.max_score >= min_score)
        if max_score is not None:
            conds.append(InspectionRow.max_score <= max_score)
        if since:  # compared in UTC; a naive time means UTC
            conds.append(InspectionRow.created_at >= as_utc(since))
        if until:
            conds.append(InspectionRow.created_at < as_utc(until))
        if review_state == "reviewed":
            conds.append(InspectionRow.review_state != "unreviewed")
        elif review_state:
            conds.append(InspectionRow.review_state == review_state)
        if queue == "shadow":
            # the lifecycle makes this table: a store it never ran on (a hub, a data pull)
            # has no shadow disagreements, and querying the missing table was a 500
            if not self._shadow_table():
                return 0, []
            conds.append(InspectionRow.id.in_(select(ShadowResultRow.inspection_id)))
        elif queue == "to_label":
            conds.append(InspectionRow.capture.is_not(None))
        elif queue:
            raise ConfigError(f"unknown queue {queue!r} (queues: shadow, to_label)")
        with Session(self.engine) as s:
            total = s.scalar(select(func.count()).select_from(InspectionRow).where(*conds)) or 0
            rows = list(s.scalars(q.where(*conds).options(selectinload(InspectionRow.reviews))
                                  .order_by(InspectionRow.created_at.desc(), InspectionRow.id)
                                  .limit(limit).offset(offset)))
        return total, rows

    def _shadow_table(self) -> bool:
        """Whether the lifecycle has made the shadow table here; looked up until it has (a
        table is never dropped: then kept, not asked of the database on every listing)."""
        if not self._shadows_made:
            self._shadows_made = sa_inspect(self.engine).has_table(ShadowResultRow.__tablename__)
        return self._shadows_made

    def get(self, inspection_id: str) -> InspectionRow:
        self._applied()
        with Session(self.engine) as s:
            row = s.scalar(select(InspectionRow).where(InspectionRow.id == inspection_id)
                           .options(selectinload(InspectionRow.reviews)))
        if row is None:
            raise NotFoundError(f"no inspection {echo(inspection_id)}")
        return row

    def record(self, row: InspectionRow, *, origins: bool = False) -> StoredInspection:
        """``row`` in the HTTP contract: what a verdict was, plus what the store and the
        reviewers added. ``has_image`` says whether this box can serve its image.
        ``origins``: each review says where it was made (``GET /v1/inspections/{id}``'s;
        the list leaves it out, a data pull of an earlier release refusing the field).
        :class:`UnreadableRecord` (422) naming what is wrong when its stored fields do not
        read as an inspection (text that is not JSON or not a time, a field missing or of
        another type: a hand-edited row, one an older or foreign writer left): each read
        of such a row was a 500."""
        bad = [f"{name}: {value!r} is not {value.expected}" for name, value in _unreadable(row)]
        if bad:
            raise UnreadableRecord(self._unreadable_message(row, "; ".join(bad)))
        try:
            return self._as_stored(row, origins)
        except (ValidationError, TypeError, AttributeError, KeyError, ValueError) as exc:
            why = describe_validation(exc.errors()) if isinstance(exc, ValidationError) \
                else f"{type(exc).__name__}: {exc}"
            raise UnreadableRecord(self._unreadable_message(row, why)) from None

    @staticmethod
    def _unreadable_message(row: InspectionRow, why: str) -> str:
        return (f"inspection {row.id}: its stored fields do not read as an inspection ({why}); "
                "a row edited by hand or left by another writer. Its images are still served")

    def _as_stored(self, row: InspectionRow, origins: bool = False) -> StoredInspection:
        here = row.box_id is None or row.box_id == self.box_id or self.central_images is not None
        check = row.reference_check or {}
        reference = None if row.reference_path is None and row.reference_name is None \
            and not check else {
                **{k: check.get(k) for k in CHECKED}, "name": row.reference_name,
                "sha256": Path(row.reference_path).stem if row.reference_path
                else check.get("sha256"),
                "has_image": here and row.reference_path is not None}
        return StoredInspection.model_validate({
            "id": row.id, "created_at": row.created_at, "verdict": row.verdict,
            "reasons": row.reasons, "defects": row.defects,
            "recipe": {"name": row.recipe_name, "version": row.recipe_version},
            "model": {"name": row.model_name, "version": row.model_version,
                      "sha256": row.model_sha256},
            "camera_id": row.camera_id, "part_id": row.part_id, "timings_ms": row.timings_ms,
            "reference": reference, "stored": True, "box_id": row.box_id,
            "class_names": row.class_names, "width": row.width, "height": row.height,
            "has_image": here and row.image_path is not None, "review_state": row.review_state,
            "tiles": row.tiles,
            "reviews": [{"id": r.id, "created_at": r.created_at, "reviewer": r.reviewer,
                         "action": r.action, "boxes": r.boxes, "note": r.note,
                         **({"origin": review_origin(r)} if origins else {})}
                        for r in row.reviews]})

    def records(self, rows: list[InspectionRow]) -> list[StoredInspection]:
        """``rows`` as :meth:`record` has them, but a row whose stored fields do not read as
        an inspection (timings missing from its JSON: a hand-edited row, a damaged
        database) is left out, logged with what is wrong: one such row made the whole
        list a 500, and the review page and ``data pull`` stopped at it."""
        out = []
        for row in rows:
            try:
                out.append(self.record(row))
            except UnreadableRecord as exc:
                log.warning("store: left out of the list: %s", exc.message)
        return out

    def reference_file(self, row: InspectionRow) -> Path:
        if not row.reference_path:
            raise NotFoundError(f"inspection {row.id} has no stored reference image")
        return self._file_here(row, row.reference_path, "reference image")

    def image_file(self, row: InspectionRow) -> Path:
        if not row.image_path:
            raise NotFoundError(f"inspection {row.id} has no stored image (passes are sampled)")
        return self._file_here(row, row.image_path, "image")

    def _file_here(self, row: InspectionRow, rel: str, what: str) -> Path:
        """The file of ``row`` in this box's folder; messages name boxes, never paths."""
        if row.box_id is not None and row.box_id != self.box_id:
            raise NotFoundError(f"inspection {row.id}: its {what} is stored on box {row.box_id}, "
                                f"not on this one ({self.box_id})")
        path = self.images_dir / rel
        if not path.is_file():
            raise NotFoundError(f"inspection {row.id}: its stored {what} is missing from this box")
        return path

    def open_image(self, row: InspectionRow) -> IO[bytes]:
        """The stored image, opened: once open it survives retention removing the file."""
        if self.central_images is not None:
            if not row.image_path:
                raise NotFoundError(f"inspection {row.id} has no stored image (passes are sampled)")
            return self.central_images.open(row.image_path)
        return self._open(row, self.image_file(row), "image")

    def open_reference(self, row: InspectionRow) -> IO[bytes]:
        if self.central_images is not None:
            if not row.reference_path:
                raise NotFoundError(f"inspection {row.id} has no stored reference image")
            return self.central_images.open(row.reference_path)
        return self._open(row, self.reference_file(row), "reference image")

    @staticmethod
    def _open(row: InspectionRow, path: Path, what: str) -> IO[bytes]:
        try:
            return path.open("rb")
        except FileNotFoundError:  # removed since the check (retention)
            raise NotFoundError(f"inspection {row.id}: its stored {what} is missing from this box") \
                from None

    # -- reviews --------------------------------------------------------------------
    def review(self, inspection_id: str, *, reviewer: str, action: str,
               boxes: list[dict[str, Any]] | None = None, index: int | None = None,
               label: str | None = None, note: str = "",
               seen_reviews: int | None = None) -> InspectionRow:
        """Record a review; the truth after it (``boxes`` of the review row) is what
        ``lineside data pull`` turns into training data. ``seen_reviews``: how many reviews
        the reviewer saw; if there are more now, :class:`ReviewConflict` and nothing is
        saved (two reviewers on one inspection never overwrite each other unseen)."""
        self._applied()
        if action not in ACTIONS:
            raise ReviewError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        with self.locked_inspection(inspection_id) as (s, row):
            self.record(row)  # a row that does not read as an inspection: 422, nothing saved
            if seen_reviews is not None and seen_reviews != len(row.reviews):
                last = row.reviews[-1] if row.reviews else None
                latest = (f"; the latest: {last.action} by {last.reviewer} at "
                          f"{as_utc(last.created_at).isoformat(timespec='seconds')}") if last else ""
                raise ReviewConflict(
                    f"inspection {row.id} has {len(row.reviews)} review(s), you saw {seen_reviews}"
                    f"{latest}. Nothing was saved: look at it again, then review.")
            if len(row.reviews) >= MAX_REVIEWS:
                raise ReviewError(f"inspection {row.id} holds {MAX_REVIEWS} reviews, the most "
                                  "one inspection keeps; nothing was saved")
            truth = [dict(b) for b in (row.reviews[-1].boxes if row.reviews else
                                       [{"label": d["label"], "box": d["box"]} for d in row.defects])]
            if action == "false_reject":
                truth = []
            elif action == "missed_defect":
                if not boxes:
                    raise ReviewError("missed_defect needs the reviewer's boxes")
                truth += [self._check_box(b, row) for b in boxes]
            elif action == "relabel":
                if not truth:
                    raise ReviewError(f"inspection {row.id} has no boxes to relabel (add one "
                                      "with missed_defect)")
                if index is None or not 0 <= index < len(truth) or not label:
                    raise ReviewError(f"relabel needs an index in 0..{len(truth) - 1} and a label")
                if label not in row.class_names:
                    raise ReviewError(f"unknown class {label!r} (model classes: "
                                      f"{', '.join(row.class_names)})")
                truth[index]["label"] = label
            elif action == "remove_box":
                # the false detection beside real defects goes, the model's other boxes kept
                # as they are (a false_reject then redrawing every real box lost them)
                if not truth:
                    raise ReviewError(f"inspection {row.id} has no boxes to remove")
                if index is None or not 0 <= index < len(truth):
                    raise ReviewError(f"remove_box needs an index in 0..{len(truth) - 1} (the "
                                      f"inspection has {len(truth)} box(es)), "
                                      + ("no index given" if index is None else f"got {index}"))
                if len(truth) == 1:
                    # no box left is a good part: a false reject says so, and the false-reject
                    # figures (stats.review_quality, the rollout watch) count those
                    raise ReviewError(f"remove_box would leave inspection {row.id} with no "
                                      "box: use false_reject: the part has no defect")
                del truth[index]
            if len(truth) > MAX_TRUTH_BOXES:  # any action: a confirm keeps every detection
                raise ReviewError(f"inspection {row.id} would hold {len(truth)} boxes; an "
                                  f"inspection's truth holds at most {MAX_TRUTH_BOXES} (what "
                                  "the fleet hub takes): nothing was saved")
            # made after the reviews shown: it follows the latest whatever the clocks say
            # (a review pulled from a hub whose clock is ahead must not outrank it)
            now = datetime.now(UTC)
            if row.reviews:
                newest = as_utc(row.reviews[-1].created_at)
                if newest >= datetime.max.replace(tzinfo=UTC) - timedelta(microseconds=1):
                    # nothing can follow it (a hostile hub's review at the end of time)
                    raise ReviewError(f"inspection {row.id}'s newest review is dated "
                                      f"{newest.isoformat()}: no review can follow it")
                now = max(now, newest + timedelta(microseconds=1))
            added = ReviewRow(inspection_id=row.id, created_at=now, reviewer=reviewer,
                              action=action, boxes=truth, note=note, origin=self.review_origin,
                              box_id=self.box_id)
            s.add(added)
            row.review_state = "confirmed" if action == "confirm" else "corrected"
            if self.review_event_makers:
                s.flush()
                # filed under the box the inspection is recorded under: with boxes sharing
                # one database, a review made on another box's page is its owner's to send
                add_events(s, row.box_id or self.box_id, [e for make in self.review_event_makers
                                                          for e in make(added)])
        return self.get(inspection_id)

    @contextlib.contextmanager
    def locked_inspection(self, inspection_id: str) -> Iterator[tuple[Session, InspectionRow]]:
        """A transaction holding inspection ``inspection_id`` (with its reviews) for a
        review: its row is locked (PostgreSQL, boxes sharing a database) and reviews in
        this process are taken one at a time (SQLite), so a check and the write after it
        are one step. Committed when the block ends without an exception."""
        with self._review_lock, Session(self.engine) as s, s.begin():
            row = s.scalar(select(InspectionRow).where(InspectionRow.id == inspection_id)
                           .with_for_update().options(selectinload(InspectionRow.reviews)))
            if row is None:
                raise NotFoundError(f"no inspection {echo(inspection_id)}")
            yield s, row

    @staticmethod
    def _check_box(b: dict[str, Any], row: InspectionRow) -> dict[str, Any]:
        box, label = b.get("box"), b.get("label")
        if label not in row.class_names:
            raise ReviewError(f"unknown class {label!r} (model classes: {', '.join(row.class_names)})")
        if not isinstance(box, list) or len(box) != 4 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in box):
            raise ReviewError("box must be [x1, y1, x2, y2], four finite numbers")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (0 <= x1 < x2 <= row.width and 0 <= y1 < y2 <= row.height):
            raise ReviewError(f"box {box} must lie inside the {row.width}x{row.height} image "
                              "with x2 > x1 and y2 > y1")
        return {"label": label, "box": [x1, y1, x2, y2]}

    def stats(self, hours: int = 24, *, shifts: figures.Shifts | None = None,
              camera_id: str | None = None, recipe: str | None = None,
              part_id: str | None = None,
              site: str | None = None, line: str | None = None, box_id: str | None = None,
              now: datetime | None = None, here: bool = False) -> dict[str, Any]:
        """Dashboard figures over the last ``hours`` (``store/stats.py``): yield per hour and
        per shift (default: one shift a day from 00:00 UTC), the defect Pareto, model-version
        changes, review outcomes and reviewers; ``camera_id`` ("" for uploads),
        ``recipe``, ``part_id`` (exactly; of the kept inspections only: retention's history
        keeps no part ids) and (on a hub) ``site``, ``line`` and ``box_id`` narrow every
        figure. ``here``: this box's figures, unless ``box_id`` names another (boxes sharing a
        database: :meth:`stats.Scope.of`)."""
        self._applied()
        with Session(self.engine) as s:
            return figures.dashboard(s, hours=hours, now=now or datetime.now(UTC),
                                     shifts=shifts or figures.Shifts(("00:00",), UTC),
                                     camera_id=camera_id, recipe=recipe, part_id=part_id,
                                     site=site, line=line, box_id=box_id,
                                     here=self.box_id if here else None)

    def read(self, query: Callable[[Session], T]) -> T:
        """``query`` on a session of this store, after the journal is applied: for the
        read-only figures of ``store/stats.py``."""
        self._applied()
        with Session(self.engine) as s:
            return query(s)


def _unreadable(row: InspectionRow) -> Iterator[tuple[str, Unreadable]]:
    """The stored values of ``row`` and its reviews that their column's type could not
    read (``store/utc.py``): (column, value)."""
    for column in InspectionRow.__table__.columns:
        value = row.__dict__.get(column.key)
        if isinstance(value, Unreadable):
            yield column.key, value
    for i, review in enumerate(row.reviews):
        for column in ReviewRow.__table__.columns:
            value = review.__dict__.get(column.key)
            if isinstance(value, Unreadable):
                yield f"reviews.{i}.{column.key}", value
