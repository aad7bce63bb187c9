"""The read-only checks of a store's database, made before anything is opened or created:
a SQLite store's file (:func:`check_sqlite_store`: read from its bytes and opened
read-only, never made, changed or "repaired") and a PostgreSQL store's server
(:func:`check_database`: one connection, :func:`look_at_postgres` reading the catalogs,
:func:`check_postgres_store` judging what it found), with the schema generation they
compare (:data:`SCHEMA_VERSION`, :data:`SCHEMA_TABLE`).

They are separate from :mod:`lineside_inspect.store.store` because they run where no
store is: ``serve``, the hub and the ``data`` commands check a database before a
:class:`Store` (or anything else) is made on it, so that a folder, an empty or cut-short
file, another program's database or a newer release's store is one line naming it, not a
traceback, nor Lineside's tables made in someone else's database. :class:`Store` runs the
same checks when it opens a store (``Store.__init__``, ``Store._claim_postgres``), before
it makes or marks anything: the writing (tables, the schema mark) stays in the store.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from lineside_inspect.errors import ConfigError, DatabaseUnavailable
from lineside_inspect.redact import hide_secrets
from lineside_inspect.store.engine import (
    LOGIN_REFUSED,
    driver_said,
    login_refused,
    make_engine,
)

SQLITE_MAGIC = b"SQLite format 3\0"  # the first bytes of every SQLite database file
# a data folder's images (<data_dir>/IMAGES_DIR/<day>/<id>.<ext>): a folder holding them is
# a store in use (in_use); the store lays them out there (store.py takes the name from here)
IMAGES_DIR = "images"
# the folders in IMAGES_DIR the store writes: a day's (2026-12-07) and refs/ (REFS_DIR)
_WRITTEN_IN_IMAGES = re.compile(r"\d{4}-\d{2}-\d{2}|refs")
# the store's schema generation, kept in a SQLite store's header (PRAGMA user_version,
# Store._mark_schema) and in a PostgreSQL store's SCHEMA_TABLE: raised by a release whose
# tables an older one would misread, which then refuses the store (check_sqlite_store,
# check_postgres_store). Columns added (nullable, ADDED_COLUMNS) do not raise it: an older
# release reads and writes such a store as before
SCHEMA_VERSION = 1
# PostgreSQL: the one-row table holding the generation, in the schema the store's tables
# are in (a table, not COMMENT ON DATABASE: that needs the database's owner, and a table
# the store's user makes as it makes the others)
SCHEMA_TABLE = "lineside_schema"
# columns of the inspections table every Lineside release made: a SQLite file whose tables
# lack them is another program's database (check_sqlite_store)
LINESIDE_COLUMNS = frozenset({"id", "created_at", "recipe_name", "model_sha256", "verdict",
                              "image_path"})


def _sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for an in-memory database or a ``file:`` URI."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def in_use(data_dir: Path | None) -> bool:
    """A store ran in ``data_dir`` before: its journal folder (made once the database was)
    or a stored image is there."""
    return data_dir is not None and ((data_dir / "journal").is_dir() or any(
        (data_dir / IMAGES_DIR).glob("*")))


ACCESS = ("give the user Lineside runs as read and write access to it, its -wal and -shm "
          "files and its folder")


def check_sqlite_store(url: str, data_dir: str | Path | None = None, *,
                       whose: str = "the store's database", must_exist: bool = False,
                       write: bool = False) -> None:
    """A SQLite store's file, read only (:func:`_check_sqlite_reads`); ``write`` (a server
    that will write it: ``serve``, the hub) also whether this process may write it, its
    -wal, -shm and -journal files and its folder (:func:`_check_sqlite_writes`). Commands
    that only read a store (``data pull``, ``golden create --store``) leave ``write``
    off: a store its reader may not write is theirs to read."""
    _check_sqlite_reads(url, data_dir, whose=whose, must_exist=must_exist)
    path = _sqlite_file(url)
    if write and path is not None:
        _check_sqlite_writes(path, whose)


def _cannot_write_file(path: Path) -> str | None:
    """Why this process may not write ``path`` (None: it may, or it is not there): a write
    open that writes nothing (no O_CREAT, no O_TRUNC), so the kernel judges it as it will
    judge SQLite's: the effective user, ACLs, a read-only mount (EROFS) and ``chattr +i``
    (EPERM, root too). O_NONBLOCK: a pipe in its place does not hold it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    return None


def _cannot_write_folder(folder: Path) -> str | None:
    """Why this process may not make (and remove) files in ``folder`` (None: it may, or it
    is not there); asked of the kernel (access(2), W_OK and X_OK), nothing made: it
    refuses a read-only mount and ``chattr +i`` to root too."""
    if not folder.is_dir():
        return None
    if os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return None
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "Read-only file system"
    except OSError:
        pass
    return "Permission denied"


def _check_sqlite_writes(path: Path, whose: str) -> None:
    """A server's SQLite file it may read (checked first) but not write, or whose folder
    it may not make its -wal and -shm files in: one :class:`ConfigError` line naming it,
    before anything is opened for writing (it was the start-up's traceback, "attempt to
    write a readonly database", exit 3; session 50). Nothing is written or made."""
    real = path.resolve()
    why = _cannot_write_file(real)
    if why:
        raise ConfigError(f"{whose} {path} can be read but not written ({why}): {ACCESS}")
    for name in ("-wal", "-shm", "-journal"):
        beside = real.with_name(real.name + name)
        why = _cannot_write_file(beside)
        if why:
            raise ConfigError(f"{whose} {path} cannot be written: {beside.name} beside it "
                              f"cannot be written ({why}): {ACCESS}")
    why = _cannot_write_folder(real.parent)
    if why:
        raise ConfigError(f"{whose} {path} cannot be written: its folder {real.parent} "
                          f"cannot be written ({why}; SQLite makes its -wal and -shm files "
                          f"there): {ACCESS}")


def check_data_dir(data_dir: str | Path, whose: str = "data_dir") -> None:
    """A server's data folder, its images folder (and each day's in it) and its journal
    folder, which it will write: one :class:`ConfigError` line naming the first this
    process may not write, before anything is served (an image, or the journal record of
    an acknowledged inspection, failed at the first save; session 50). Nothing is made;
    a folder not there yet is made by the store in its parent, checked first."""
    folder = Path(data_dir)
    todo = [folder, folder / IMAGES_DIR, folder / "journal"]
    with suppress(OSError):  # not there yet (or not readable: its own check says so)
        # the folders the store writes in: each day's and refs/, not any other (images/ on
        # a disk of its own holds root's lost+found: a healthy store was refused, session 50)
        todo += sorted(p for p in (folder / IMAGES_DIR).iterdir()
                       if _WRITTEN_IN_IMAGES.fullmatch(p.name) and p.is_dir())
    for path in todo:
        why = _cannot_write_folder(path)
        if why:
            what = "" if path == folder else f": its folder {path.relative_to(folder)}"
            raise ConfigError(f"{whose} {folder}{what} cannot be written ({why}): give the "
                              "user Lineside runs as read and write access to the data "
                              "folder and everything in it")


def _check_sqlite_reads(url: str, data_dir: str | Path | None = None, *,
                        whose: str = "the store's database", must_exist: bool = False) -> None:
    """A SQLite store's file, read only (never made, changed or "repaired"), before a
    server starts or a command reads it: one :class:`ConfigError` line naming the file and
    what to do when it is a folder, cannot be read, is empty or cut short, is no SQLite
    database, is another program's database, or was written by a newer release
    (:data:`SCHEMA_VERSION`). Opened as it was, such a file was a start-up traceback, or
    Lineside's tables were made in another program's database. ``must_exist`` (a command
    that reads a store): a file that is not there, or holds no tables, is refused too. An
    empty file, or one without tables, is taken for a new store only where no store ran
    before (``data_dir``): otherwise its rows were lost, and start-up cleanup would take
    the folder's images for orphans."""
    path = _sqlite_file(url)
    if path is None:
        return
    folder = Path(data_dir) if data_dir is not None else None
    keep = "restore it from a backup" + (
        "" if must_exist else ", or move it (with any -wal and -shm file beside it) out of "
        "the way to start a new store") + "; Lineside left it as it is"
    access = ACCESS

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"{whose} {path} {problem}")

    try:
        st = path.stat()
    except FileNotFoundError:
        if must_exist:
            raise refuse("does not exist") from None
        return
    except OSError as exc:  # a parent that is a file, a folder it may not enter
        raise refuse(f"cannot be read ({exc.strerror or exc}): {access}") from None
    if stat.S_ISDIR(st.st_mode):
        raise refuse("is a folder, not a database file: move it out of the way (or point "
                     "the store at its own folder)")
    if not stat.S_ISREG(st.st_mode):  # a pipe would hold the reader for good
        raise refuse("is not a regular file (a pipe or a device?): move it out of the way")
    try:  # O_NONBLOCK: a pipe put in its place since the stat does not wait
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            head = os.read(fd, 100)
        finally:
            os.close(fd)
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror or exc}): {access}") from None
    if not head:
        if must_exist:
            raise refuse(f"is empty (0 bytes): it holds no inspections; {keep}")
        if in_use(folder):
            raise refuse(f"is empty (0 bytes) though a store ran in {folder}: it was cut "
                         f"short (its inspections are gone from it); {keep}")
        return
    if not head.startswith(SQLITE_MAGIC):
        raise refuse(f"is not a SQLite database (damaged, or another program's file); {keep}")
    if len(head) < 100:
        raise refuse(f"is damaged: cut short ({len(head)} bytes); {keep}")
    # SQLite keeps the -wal beside the file a symlink names (session 42 review: looked for
    # beside the link, a live store's log was missed and its file read "immutable")
    real = path.resolve()
    wal = real.with_name(real.name + "-wal").exists()
    # a rollback journal beside a file in rollback mode (header bytes 18-19: 1; a sqlite3
    # shell's user switched it from WAL): a write in progress, or one that did not finish
    # (a "hot" journal SQLite rolls back before any read). Read "immutable" the file's
    # half-written pages were taken for the store (review of session 42)
    journal = head[18:20] == b"\x01\x01" and real.with_name(real.name + "-journal").exists()
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    # the header's size is the file's only at rest (no -wal): a checkpoint of a live store
    # writes page 1 (the new count) before the pages that grow the file (session 42
    # review: a second `serve`, or `data pull` of a running box, called it "cut short")
    if not (wal or journal) and head[24:28] == head[92:96] and pages and st.st_size < pages * page:
        raise refuse(f"is damaged: cut short ({st.st_size} of the {pages * page} bytes its "
                     f"header counts); {keep}")
    # read only: "immutable" when no -wal or journal is beside it (nothing waits to be
    # folded in or rolled back), as a read-only open of a WAL database made -wal and -shm
    # files beside it; with a journal SQLite judges it (a rollback-mode file read "mode=ro"
    # makes no file)
    uri = real.as_uri() + ("?mode=ro" if wal or journal else "?immutable=1")
    try:
        db = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            tables = {str(r[0]) for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")
                if not str(r[0]).startswith("sqlite_")}
            columns = {str(r[1]) for r in db.execute("PRAGMA table_info(inspections)")}
            schema = int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_READONLY_ROLLBACK":
            # a hot journal: a write that did not finish, which only a writer may roll
            # back. That is SQLite's own recovery, not damage: the store's writable open
            # puts the file back as it was (as before session 42), and a box restarted
            # after a power cut comes up by itself. Its tables are read after that
            return
        if "locked" in reason:
            raise refuse(f"is locked by another process ({reason}): stop it, then start "
                         "again") from None
        if "unable to open" in reason:
            # the file itself was read above: a -wal or -shm beside it this user may not
            # read (another user's server made it) is what SQLite could not open; named
            # (it said the database "cannot be read", though it could: session 43)
            for log_file in (real.with_name(real.name + "-wal"),
                             real.with_name(real.name + "-shm")):
                try:
                    os.close(os.open(log_file, os.O_RDONLY | os.O_NONBLOCK))
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise refuse(f"cannot be opened: {log_file.name} beside it cannot be read "
                                 f"({exc.strerror or exc}): {access}") from None
            raise refuse(f"cannot be read ({reason}): {access}") from None
        raise refuse(f"is damaged ({reason}); {keep}") from None
    if not tables:
        if must_exist:
            raise refuse("holds no tables: it is no Lineside store (no inspections to "
                         "read); Lineside left it as it is")
        if in_use(folder):
            raise refuse(f"holds no tables though a store ran in {folder}: it was replaced "
                         f"or emptied (its inspections are gone from it); {keep}")
        return
    if not columns >= LINESIDE_COLUMNS:
        shown = ", ".join(sorted(tables)[:8]) + (", ..." if len(tables) > 8 else "")
        raise refuse(f"is another program's SQLite database (its tables: {shown}), not a "
                     "Lineside store: point the store at its own folder (data_dir, or "
                     "database_url), or move this file out of the way; Lineside left it as "
                     "it is")
    if schema > SCHEMA_VERSION:
        raise refuse(f"was written by a newer Lineside release (store schema {schema}; this "
                     f"release reads up to {SCHEMA_VERSION}): run that release or a newer "
                     "one on it; this one left it as it is")


# PostgreSQL: the schema the store's tables go in (the first of search_path that exists,
# where an unqualified CREATE TABLE puts them), the relations it holds, the columns of
# its inspections table, and whether the user may make tables there (and who it is); one
# round trip, catalogs only (no table is locked)
_PG_LOOK = text("""
SELECT current_schema(), current_user::text,
  coalesce(has_schema_privilege(current_schema(), 'CREATE'), false),
  ARRAY(SELECT c.relname::text FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'f', 'v', 'm')
        ORDER BY 1),
  ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = to_regclass(quote_ident(current_schema()) || '.inspections')
          AND a.attnum > 0 AND NOT a.attisdropped)""")


@dataclass(frozen=True)
class PostgresStore:
    """What a PostgreSQL database holds of a store (:func:`look_at_postgres`):
    ``generation`` is None when it has no :data:`SCHEMA_TABLE` (a new database, a store
    of a release before the mark, or another program's)."""
    schema: str | None
    tables: tuple[str, ...]
    columns: frozenset[str]
    generation: int | None
    user: str = ""
    may_create: bool = True  # CREATE on the schema: a new store's tables can be made

    @property
    def lineside(self) -> bool:
        """An ``inspections`` table with the columns every release made."""
        return self.columns >= LINESIDE_COLUMNS


def look_at_postgres(conn: Any, whose: str, where: str) -> PostgresStore:
    """One query of the catalogs, and a second reading the generation when the schema has
    a :data:`SCHEMA_TABLE`; nothing written or locked. A marker that does not read as
    the one Lineside makes (one row, ``id`` 1, a whole number ``generation``: a table of
    that name another program made) is one :class:`ConfigError` line."""
    schema, user, may_create, tables, columns = conn.execute(_PG_LOOK).one()
    generation = None
    if schema is not None and SCHEMA_TABLE in tables:
        quote = conn.dialect.identifier_preparer.quote

        def wrong(reason: str) -> ConfigError:
            return ConfigError(
                f"{whose} {where}: its table {schema}.{SCHEMA_TABLE} does not read as "
                f"Lineside's schema mark ({reason[:200]}): another program's table of that "
                "name? Point the store at a database (or schema) of its own; Lineside left "
                "it as it is")

        try:
            rows = conn.execute(text(f"SELECT id, generation FROM {quote(schema)}."
                                     f"{SCHEMA_TABLE} LIMIT 2")).all()
        except DBAPIError as exc:
            if isinstance(exc, OperationalError):
                raise
            reason = str(exc.orig or exc).strip().splitlines()
            raise wrong((reason or ["?"])[0]) from None
        # Lineside's mark is one row (id 1, CHECK) holding an integer: several rows, none,
        # text or a fraction (taken as the largest, or 0, or cut to a whole number) are
        # another program's table (session 43, adversarial pass)
        if len(rows) != 1:
            raise wrong("no row" if not rows else "more than one row: Lineside's has one")
        ident, found = rows[0]
        if ident != 1 or not isinstance(found, int) or isinstance(found, bool):
            raise wrong(f"id {str(ident)[:20]!r}, generation {str(found)[:20]!r}: Lineside's "
                        "is id 1 and a whole number")
        generation = found
    return PostgresStore(schema, tuple(tables), frozenset(columns or ()), generation,
                         str(user), bool(may_create))


def check_postgres_store(found: PostgresStore, whose: str, where: str, *,
                         must_exist: bool = False) -> None:
    """PostgreSQL's :func:`check_sqlite_store`, on what :func:`look_at_postgres` found:
    one :class:`ConfigError` line when the database was written by a newer release
    (:data:`SCHEMA_VERSION`), holds another program's tables in the store's schema and no
    Lineside mark or store, or has no schema to make tables in; ``must_exist`` (a command
    that reads a store): also when it holds no Lineside store. A schema holding no tables
    is a new store; one with Lineside's tables and no mark a store of a release before
    the mark (:meth:`Store._claim_postgres` marks both)."""
    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"{whose} {where} {problem}")

    if found.schema is None:
        raise refuse("has no schema to make the store's tables in (no schema of its "
                     "search_path exists): create one the user may write, or set search_path "
                     "(options=-csearch_path=SCHEMA in the URL)")
    if found.generation is not None and found.generation > SCHEMA_VERSION:
        raise refuse(f"was written by a newer Lineside release (store schema "
                     f"{found.generation} in {found.schema}.{SCHEMA_TABLE}; this release "
                     f"reads up to {SCHEMA_VERSION}): run that release or a newer one on it; "
                     "this one left it as it is")
    if found.generation is None and found.tables and not found.lineside:
        shown = ", ".join(found.tables[:8]) + (", ..." if len(found.tables) > 8 else "")
        raise refuse(f"is another program's database (schema {found.schema} holds its "
                     f"tables: {shown}), not a Lineside store: point database_url at a "
                     "database of its own, or give Lineside a schema of its own in it "
                     "(options=-csearch_path=SCHEMA in the URL); Lineside left it as it is")
    if must_exist and not found.lineside:
        raise refuse(f"holds no Lineside store (no inspections table in schema "
                     f"{found.schema}): no inspections to read; Lineside left it as it is")
    if not must_exist and not found.lineside and not found.may_create:
        # a new store's tables cannot be made: PostgreSQL 15 gives no CREATE on public to
        # every user; it was CREATE TABLE's traceback, three times (session 43, adversarial)
        raise refuse(f"holds no Lineside store yet, and its user {found.user} may not make "
                     f"tables in schema {found.schema} (no CREATE privilege on it): GRANT "
                     f"CREATE ON SCHEMA {found.schema} TO {found.user} (or start Lineside "
                     "once as a user who may, then this one needs only USAGE and its "
                     "tables' rows); Lineside left it as it is")


def check_database(url: str, whose: str = "the database", named: str = "database_url", *,
                   data_dir: str | Path | None = None, must_exist: bool = False,
                   write: bool = False) -> None:
    """One connection to a PostgreSQL database before a server starts or a command reads
    it: a database that cannot be reached is one line naming it
    (:class:`DatabaseUnavailable`), and a URL SQLAlchemy cannot parse one line
    (:class:`ConfigError`), not the application start-up's 160-line traceback; on that
    connection what it holds is read (:func:`look_at_postgres`, nothing written) and
    judged by :func:`check_postgres_store` (a newer release's store, another program's
    tables; ``must_exist``: no store to read). A SQLite file is read by
    :func:`check_sqlite_store` (``data_dir``: the folder of the store whose database it
    is; ``must_exist``: a command that reads a store; ``write``: a server that writes it,
    whose user must be allowed to)."""

    if url.startswith("sqlite"):
        check_sqlite_store(url, data_dir, whose=whose, must_exist=must_exist, write=write)
        return
    try:
        engine = make_engine(url)
    # ValueError: a port that is no number, an IPv6 host without its ']' (review, session
    # 37: a traceback from the check meant to make it one line)
    except (ArgumentError, ValueError):  # the URL is not repeated: a password may be in it
        raise ConfigError(f"{named}: not a database URL SQLAlchemy reads (write "
                          "postgresql://USER:PASSWORD@HOST:PORT/DATABASE)") from None
    except ModuleNotFoundError as exc:  # a driver not installed (mysql://, oracle://)
        raise ConfigError(f"{named}: its driver {exc.name} is not installed (PostgreSQL "
                          "and SQLite are supported)") from None
    where, secrets = database_address(url)

    def said(exc: DBAPIError) -> str:
        # each attempt's reason where psycopg tried several addresses (session 51)
        reason = driver_said(exc.orig or exc)
        for secret in secrets:
            reason = reason.replace(secret, "***")
        return hide_secrets(reason)[:300]

    try:
        try:
            conn = engine.connect()
        except DBAPIError as exc:
            if not isinstance(exc, OperationalError):
                # the driver refused the URL's own settings before connecting (psycopg's
                # ProgrammingError: an unknown option, connect_timeout=abc): a traceback
                raise ConfigError(f"{named}: the driver refuses it: {said(exc)}") from None
            if login_refused(exc.orig):
                # a wrong password, a role dropped, pg_hba.conf: it was "cannot be reached"
                # with libpq's words, read as the network's fault (session 50)
                raise DatabaseUnavailable(
                    f"{whose} {where} {LOGIN_REFUSED}: fix {named}'s credentials (PostgreSQL "
                    f"said: {said(exc).rpartition('FATAL:')[2].strip()})") from None
            raise DatabaseUnavailable(f"{whose} {where} cannot be reached: {said(exc)}") from None
        # what it holds, read only: a newer release's store, another program's tables
        # (Lineside's were made among them), no store to read (session 43)
        try:
            with conn:
                found = look_at_postgres(conn, whose, where)
        except DBAPIError as exc:
            if isinstance(exc, OperationalError):
                raise DatabaseUnavailable(f"{whose} {where} cannot be reached: "
                                          f"{said(exc)}") from None
            raise ConfigError(f"{whose} {where} cannot be read: {said(exc)}") from None
    finally:
        engine.dispose()
    check_postgres_store(found, whose, where, must_exist=must_exist)


def database_address(url: str) -> tuple[str, list[str]]:
    """``url`` as shown (no user, password or query: a password may sit there), and the
    secrets a driver's message may quote, longest first. The host is the text after the
    last '@': a raw '@' in a password moved SQLAlchemy's parsed host into it (``u:pa@ss@h``
    gives host ``ss@h``), and so the driver's message quotes part of it."""
    scheme, _, rest = url.partition("://")
    userinfo, _, hostpart = rest.rpartition("@")
    host = hostpart.split("/", 1)[0].split("?", 1)[0]
    database = make_url(url).database or ""
    secrets = [userinfo.split(":", 1)[1]] if ":" in userinfo else []
    secrets += [part for s in list(secrets) for part in s.split("@")]
    query = rest.split("?", 1)[1] if "?" in rest else ""
    secrets += [v for k, v in parse_qsl(query)
                if any(w in k.lower() for w in ("pass", "pwd", "secret", "token", "key"))]
    return (f"{scheme}://{host}/{database}",
            sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True))
