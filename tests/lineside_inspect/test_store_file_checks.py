"""A store's SQLite file that is not what it should be, as an operator and an ML engineer
meet it (review, session 42): cut short, garbage, a folder in its place, unreadable,
another program's database, one written by a newer release. `lineside serve` ended in a
start-up traceback on most (and made its tables in another program's database, or started
on a file cut to nothing, taking the folder's images for orphans); `data pull DIR` made
Lineside's tables in another program's database. Each is now one line naming the file and
what to do (exit 2), checked read only: the file is left byte for byte as it was.

The stores are made by the server's :class:`Store` and damaged with Python; the commands
run as an operator runs them (the CLI's own entry point, the bundled model)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.errors import ConfigError
from lineside_inspect.store.checks import SCHEMA_VERSION, check_sqlite_store
from lineside_inspect.store.store import DB_FILE, Store

from .conftest import ROOT

MODEL = ROOT / "models" / "deeppcb" / "1"
NOBODY = 65534
runner = CliRunner()


def _made(folder: Path) -> bytes:
    """A store folder as a stopped server leaves it; its database's bytes."""
    Store(folder).close()
    return (folder / DB_FILE).read_bytes()


def _foreign(db: Path) -> None:
    with sqlite3.connect(db) as conn:  # another program's database, in WAL mode as many are
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO recipes (name) VALUES ('soup')")
    conn.close()


def _newer(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


# how each file is damaged (given the store's folder and its database's bytes), and what
# the one line says of it
DAMAGED: dict[str, tuple[Callable[[Path, bytes], None], str]] = {
    "cut short": (lambda d, b: (d / DB_FILE).write_bytes(b[:len(b) // 2]),
                  "is damaged: cut short"),
    "garbage": (lambda d, b: (d / DB_FILE).write_bytes(b"\x8f not a database " * 300),
                "is not a SQLite database (damaged, or another program's file)"),
    "pages garbage": (lambda d, b: (d / DB_FILE).write_bytes(b[:100] + b"\xff" * (len(b) - 100)),
                      "is damaged (database disk image is malformed)"),
    "cut to nothing": (lambda d, b: (d / DB_FILE).write_bytes(b""),
                       "is empty (0 bytes) though a store ran in"),
    "a folder": (lambda d, b: ((d / DB_FILE).unlink(), (d / DB_FILE).mkdir()),
                 "is a folder, not a database file"),
    "another program's": (lambda d, b: ((d / DB_FILE).unlink(), _foreign(d / DB_FILE)),
                          "is another program's SQLite database (its tables: recipes)"),
    "newer release": (lambda d, b: _newer(d / DB_FILE),
                      f"was written by a newer Lineside release (store schema "
                      f"{SCHEMA_VERSION + 1}; this release reads up to {SCHEMA_VERSION})"),
}


def _state(folder: Path) -> dict[str, str]:
    """Every file of the folder but the lock: name -> sha256 (a folder: "folder")."""
    return {str(p.relative_to(folder)): "folder" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.name != ".lock"}


@pytest.fixture(params=list(DAMAGED))
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """A server's store folder whose database is damaged one way; what the line says."""
    folder = tmp_path / "store"
    damage, said = DAMAGED[request.param]
    damage(folder, _made(folder))
    return folder, said


def _one_line(output: str, said: str, db: Path, whose: str) -> None:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"error: {whose} {db} {said}"), output


def test_serve_on_a_damaged_store_is_one_line_and_leaves_it_as_it_was(
        damaged: tuple[Path, str], tmp_path: Path) -> None:
    """`lineside serve` (and `make serve`'s path, `--config`): a start-up traceback (exit
    3) on a damaged file; on another program's database its tables made in it, on a file
    cut to nothing a new empty store and the folder's images taken for orphans."""
    folder, said = damaged
    before = _state(folder)
    config = tmp_path / "serve.yaml"
    config.write_text(f"models: [{MODEL}]\ndata_dir: {folder}\n")
    with socket.socket() as taken:  # a server that got past the check stops at its bind
        taken.bind(("127.0.0.1", 0))  # (bound, nothing listening: its bind is refused)
        res = runner.invoke(app, ["serve", "--config", str(config), "--port",
                                  str(taken.getsockname()[1])])
    assert res.exit_code == 2, res.output
    _one_line(res.output, said, folder / DB_FILE, "the server's database")
    assert _state(folder) == before  # nothing written, made ("-wal", "-shm") or repaired


@pytest.mark.parametrize("kind", ["another program's", "cut to nothing", "garbage", "a folder"])
def test_data_pull_and_golden_from_a_damaged_store_are_one_line_and_leave_it(
        kind: str, tmp_path: Path) -> None:
    """`data pull DIR` made Lineside's tables in another program's database (then said
    no inspection matched); `golden create --store` the same."""
    folder = tmp_path / "store"
    damage, said = DAMAGED[kind]
    damage(folder, _made(folder))
    if kind == "cut to nothing":
        said = "is empty (0 bytes): it holds no inspections"
    before = _state(folder)
    res = runner.invoke(app, ["data", "pull", str(folder), str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    _one_line(res.output, said, folder / DB_FILE, "the store's database")
    res = runner.invoke(app, ["golden", "create", "g", "--data-dir", str(tmp_path / "d"),
                              "--store", str(folder)])
    assert res.exit_code == 2, res.output
    _one_line(res.output, said, folder / DB_FILE, "--store's database")
    # the same file named by URL
    res = runner.invoke(app, ["data", "pull", str(tmp_path), str(tmp_path / "out"),
                              "--database-url", f"sqlite:///{folder / DB_FILE}"])
    assert res.exit_code == 2, res.output
    _one_line(res.output, said, folder / DB_FILE, "--database-url")
    assert _state(folder) == before and not (tmp_path / "out").exists()


def test_the_hub_on_another_programs_sqlite_database_is_one_line(tmp_path: Path) -> None:
    _foreign(tmp_path / "hub.db")
    hub = tmp_path / "hub.yaml"
    hub.write_text(f"database_url: sqlite:///{tmp_path / 'hub.db'}\ndata_dir: {tmp_path / 'd'}\n"
                   "objects: {endpoint: '127.0.0.1:9', access_key: a, secret_key: s}\n")
    before = _state(tmp_path)
    with socket.socket() as taken:  # a hub that got past the check stops at its bind
        taken.bind(("127.0.0.1", 0))  # (bound, nothing listening: its bind is refused)
        res = runner.invoke(app, ["hub", "--config", str(hub), "--port",
                                  str(taken.getsockname()[1])])
    assert res.exit_code == 2, res.output
    _one_line(res.output, DAMAGED["another program's"][1], tmp_path / "hub.db",
              "the hub's database")
    assert _state(tmp_path) == before


def test_the_store_itself_refuses_another_programs_database(tmp_path: Path) -> None:
    """Every other way in (the fleet bench, a hub's start-up, the API) opens it by
    :class:`Store`, which checks it the same way before anything is written."""
    (tmp_path / "store").mkdir()
    _foreign(tmp_path / "store" / DB_FILE)
    before = _state(tmp_path)
    with pytest.raises(ConfigError, match="another program's SQLite database"):
        Store(tmp_path / "store")
    assert _state(tmp_path) == before


def test_a_new_or_earlier_store_opens_and_is_marked_with_its_schema(tmp_path: Path) -> None:
    """What the check takes: no file, an empty file where no store ran, a store of a
    release before the mark (``user_version`` 0), marked once opened."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / DB_FILE).write_bytes(b"")
    for folder in (tmp_path / "new", tmp_path / "empty"):
        Store(folder).close()
    db = tmp_path / "new" / DB_FILE
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("PRAGMA user_version = 0")  # as a release before the mark left it
    conn.close()
    Store(tmp_path / "new").close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder under /tmp anyone may enter (pytest's own are private to their user)."""
    path = Path(tempfile.mkdtemp(prefix="lineside-store-file-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def as_nobody() -> Iterator[None]:
    """Run as ``nobody`` when run as root (root reads any file), else as the user."""
    root = os.geteuid() == 0
    if root:
        os.seteuid(NOBODY)
    try:
        yield
    finally:
        if root:
            os.seteuid(0)


def test_a_database_the_user_may_not_read_is_one_line(open_folder: Path) -> None:
    """Mode 000: as root, checked as ``nobody`` (root reads any file)."""
    folder = open_folder / "store"
    _made(folder)
    (folder / DB_FILE).chmod(0)
    with as_nobody(), pytest.raises(ConfigError) as exc:
        check_sqlite_store(f"sqlite:///{folder / DB_FILE}", folder)
    assert exc.value.message.startswith(
        f"the store's database {folder / DB_FILE} cannot be read (Permission denied): give "
        "the user Lineside runs as read and write access to it"), exc.value.message


@pytest.mark.parametrize("beside", ["-wal", "-shm"])
def test_a_log_beside_the_database_the_user_may_not_read_is_named(
        open_folder: Path, beside: str) -> None:
    """A second `serve` as another user, on a store whose server (run as its owner) was
    killed: its -wal or -shm may not be read by this user. The line said the database
    "cannot be read (unable to open database file)", though the file itself read; it now
    names the file SQLite could not open. (Mode 000, as ``nobody`` when run as root.)"""
    live, folder = open_folder / "live", open_folder / "store"
    folder.mkdir()
    with Store(live):  # as a server killed (-9) leaves it: the file, its -wal and -shm
        for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm"):
            shutil.copy(live / name, folder / name)
    before = _state(folder)
    (folder / (DB_FILE + beside)).chmod(0)
    with as_nobody(), pytest.raises(ConfigError) as exc:
        check_sqlite_store(f"sqlite:///{folder / DB_FILE}", folder)
    assert exc.value.message == (
        f"the store's database {folder / DB_FILE} cannot be opened: {DB_FILE}{beside} beside "
        "it cannot be read (Permission denied): give the user Lineside runs as read and "
        "write access to it, its -wal and -shm files and its folder"), exc.value.message
    (folder / (DB_FILE + beside)).chmod(0o644)
    assert _state(folder) == before


def _wal_pages(db: Path) -> dict[int, bytes]:
    """The latest copy of each page in ``db``'s -wal (its frames: 24-byte header, page)."""
    log = db.with_name(db.name + "-wal").read_bytes()
    size = int.from_bytes(log[8:12], "big")
    pages = {}
    for at in range(32, len(log) - size - 23, 24 + size):
        pages[int.from_bytes(log[at:at + 4], "big")] = log[at + 24:at + 24 + size]
    return pages


def test_a_live_store_caught_mid_checkpoint_is_not_called_cut_short(tmp_path: Path) -> None:
    """Review of session 42: a checkpoint of a running store writes page 1 (the header's
    new page count) before the pages that grow the file, so a second `serve`, or `data
    pull` of a running box, read it as "damaged: cut short ... restore it from a backup"
    (about 1 check in 200 against a busy writer). Frozen here at that moment: page 1 is
    folded in, the rest still only in the -wal, and every reader reads it whole."""
    folder = tmp_path / "store"
    db = folder / DB_FILE
    _made(folder)
    live = sqlite3.connect(db, isolation_level=None)  # the running server's connection
    try:
        live.execute("PRAGMA journal_mode=WAL")
        live.execute("PRAGMA wal_autocheckpoint=0")
        live.execute("CREATE TABLE grown (b BLOB)")
        live.execute("INSERT INTO grown VALUES (?)", (b"x" * 64 * 1024,))
        with db.open("r+b") as f:  # the checkpoint's first write
            f.write(_wal_pages(db)[1])
        head = db.read_bytes()[:100]
        counted = int.from_bytes(head[28:32], "big") * int.from_bytes(head[16:18], "big")
        assert db.stat().st_size < counted  # what the check took for a file cut short
        reader = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        assert reader.execute("PRAGMA quick_check").fetchone() == ("ok",)  # whole, as read
        reader.close()
        check_sqlite_store(f"sqlite:///{db}", folder)
        check_sqlite_store(f"sqlite:///{db}", folder, must_exist=True)
    finally:
        live.close()


def test_a_symlinked_database_is_read_with_the_log_beside_its_target(tmp_path: Path) -> None:
    """Review of session 42: SQLite keeps the -wal beside the file a symlink names; the
    check looked beside the link (database_url naming it), found none and read the file
    "immutable", the live log unseen: here a newer release's store (its mark still in the
    log) passed, and one whose tables were only in the log was "no Lineside store"."""
    (tmp_path / "disk").mkdir()
    (tmp_path / "box").mkdir()
    real, link = tmp_path / "disk" / "real.db", tmp_path / "box" / DB_FILE
    link.symlink_to(real)
    live = sqlite3.connect(real, isolation_level=None)  # a newer release serving on it
    try:
        live.execute("PRAGMA journal_mode=WAL")
        live.execute("PRAGMA wal_autocheckpoint=0")
        live.execute("CREATE TABLE inspections (id TEXT, created_at TEXT, recipe_name TEXT, "
                      "model_sha256 TEXT, verdict TEXT, image_path TEXT)")
        live.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        assert not (tmp_path / "box" / f"{DB_FILE}-wal").exists()
        with pytest.raises(ConfigError, match="written by a newer Lineside release"):
            check_sqlite_store(f"sqlite:///{link}", tmp_path / "box")
        live.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        check_sqlite_store(f"sqlite:///{link}", tmp_path / "box", must_exist=True)
    finally:
        live.close()


def test_a_store_with_a_write_that_did_not_finish_is_rolled_back_by_sqlite(tmp_path: Path) -> None:
    """Review of session 42: a file with no -wal beside it was read "immutable", which
    ignores a rollback journal. A store someone's sqlite3 shell switched to rollback mode
    (DELETE) and whose write was stopped mid-way leaves a "hot" journal SQLite rolls back
    before any read; read past it, the half-written file was "damaged: cut short ...
    restore it from a backup" or "written by a newer release". The check leaves it to
    SQLite's own recovery (the store's writable open rolls it back). Made here by copying the
    file and its journal while a write is open, then writing into the copy the first page
    the write's commit wrote (its page count and mark) as a stop mid-commit leaves it."""
    folder = tmp_path / "store"
    db = folder / DB_FILE
    _made(folder)
    with sqlite3.connect(db) as conn:  # the shell's user, as Lineside's files are WAL
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    hot = tmp_path / "hot"
    hot.mkdir()
    for name in ("journal", "images"):
        (hot / name).mkdir()
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("PRAGMA cache_size=2")  # its pages spill into the file before commit
        writer.execute("BEGIN")
        writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        journal = folder / f"{DB_FILE}-journal"
        assert journal.exists()
        # a write open, nothing in the file yet: the check reads what was committed
        check_sqlite_store(f"sqlite:///{db}", folder, must_exist=True)
        writer.execute("CREATE TABLE scratch (b BLOB)")
        for _ in range(32):
            writer.execute("INSERT INTO scratch VALUES (zeroblob(4000))")
        assert journal.stat().st_size > 0
        shutil.copyfile(db, hot / DB_FILE)
        shutil.copyfile(journal, hot / journal.name)
        writer.execute("COMMIT")
    finally:
        writer.close()
    with (hot / DB_FILE).open("r+b") as f:  # the commit's first write, then stopped
        f.write(db.read_bytes()[:int.from_bytes(db.read_bytes()[16:18], "big")])
    before = _state(hot)
    for must_exist in (False, True):  # SQLite's own recovery, left to the writable open
        check_sqlite_store(f"sqlite:///{hot / DB_FILE}", hot, must_exist=must_exist)
        assert _state(hot) == before  # nothing rolled back, written or made by the check
    # the store's open rolls it back as SQLite does: the store as it was, nothing lost
    Store(hot).close()
    assert not (hot / f"{DB_FILE}-journal").exists()
    with sqlite3.connect(hot / DB_FILE) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'scratch'"
                            ).fetchone() == (0,)
    conn.close()
    check_sqlite_store(f"sqlite:///{hot / DB_FILE}", hot, must_exist=True)
