"""A store its server's user may read but not write, as a plant meets it (session 50): the
service runs as an unprivileged user while the files belong to another (root restored a
backup, ran a sqlite3 shell, or made the folders). `lineside serve` on a database it may
read but not write ended in the start-up's traceback ("attempt to write a readonly
database", exit 3, with -wal and -shm files made beside it); a journal folder it may not
write failed the application's start-up after it listened; an images folder it may not
write was found at the first save. Each is now one `error:` line naming it and what to do
(exit 2), before anything listens, the folder left as it was. `data pull`, which only
reads, still reads such a store.

Run as root (here and in CI), the commands run as ``nobody`` with only
CAP_DAC_READ_SEARCH (``setpriv``): it may read every file (the interpreter under /root
too) and write none it does not own; the one thing made unwritable belongs to root.
Run as another user, that thing is made read-only (0444, 0555) instead."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineside_inspect.runtime.detector import Detector
from lineside_inspect.serve_process import LINESIDE
from lineside_inspect.store.store import DB_FILE, Store

from .test_store import _inspection
from .test_store_file_checks import MODEL, NOBODY, _state, as_nobody

ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
ACCESS = ("give the user Lineside runs as read and write access to it, its -wal and -shm "
          "files and its folder")
DIR_ACCESS = "give the user Lineside runs as read and write access to the data folder"


def _as_plant_user(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """``args`` run as the service's unprivileged user (see the module's docstring)."""
    if ROOT:
        if SETPRIV is None:
            pytest.skip("setpriv (util-linux) is needed to run as nobody")
        args = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(Path(__file__).resolve().parents[2] / p) for p in ("inspect", "training"))}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env,
                          cwd=tempfile.gettempdir(), check=False, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def stored() -> Iterator[Path]:
    """A stopped server's store holding one reviewed failed inspection (its image too)."""
    folder = Path(tempfile.mkdtemp(prefix="lineside-store-write-"))
    with Store(folder / "made", pass_rate=1.0) as store:
        fail = _inspection(Detector(MODEL, device="cpu", threads=1), "fail")
        assert store.save(fail)
        store.flush()
        store.review(fail.id, reviewer="qa", action="confirm")
    yield folder / "made"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def data_dir(stored: Path) -> Iterator[Path]:
    """A copy of ``stored`` in a folder anyone may enter, owned by the plant user."""
    top = Path(tempfile.mkdtemp(prefix="lineside-store-write-"))
    top.chmod(0o755)
    folder = top / "store"
    shutil.copytree(stored, folder)
    if ROOT:
        for path in (folder, *folder.rglob("*")):
            os.chown(path, NOBODY, NOBODY)
    yield folder
    shutil.rmtree(top, ignore_errors=True)


def _unwritable(path: Path) -> None:
    """As a plant has it: root's (0644 / 0755) when run as root, else read-only."""
    if ROOT:
        os.chown(path, 0, 0)
        path.chmod(0o755 if path.is_dir() else 0o644)
    else:
        path.chmod(0o555 if path.is_dir() else 0o444)


def _serve(folder: Path) -> subprocess.CompletedProcess[str]:
    config = folder.parent / "serve.yaml"
    config.write_text(f"models: [{MODEL}]\ndata_dir: {folder}\n")
    config.chmod(0o644)
    with socket.socket() as taken:  # a server that got past the check stops at its bind
        taken.bind(("127.0.0.1", 0))  # (bound, nothing listening: its bind is refused)
        return _as_plant_user([*LINESIDE, "serve", "--config", str(config), "--port",
                               str(taken.getsockname()[1])])


# what is made unwritable, and the start of the one line that names it
CASES = {
    "database file": (DB_FILE, "the server's database {db} can be read but not written ("),
    "data folder": (".", "the server's database {db} cannot be written: its folder {dir} "
                         "cannot be written ("),
    "images folder": ("images", "data_dir {dir}: its folder images cannot be written ("),
    "journal folder": ("journal", "data_dir {dir}: its folder journal cannot be written ("),
}


@pytest.mark.parametrize("case", list(CASES))
def test_serve_on_a_store_it_may_read_but_not_write_is_one_line_and_leaves_it(
        case: str, data_dir: Path) -> None:
    name, said = CASES[case]
    _unwritable(data_dir / name)
    before = _state(data_dir)
    res = _serve(data_dir)
    output = res.stdout + res.stderr
    assert "Traceback" not in output and "Started server" not in output, output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, output
    assert errors[0].startswith("error: " + said.format(db=data_dir / DB_FILE, dir=data_dir))
    assert errors[0].endswith(ACCESS if "database" in said else
                              DIR_ACCESS + " and everything in it"), errors[0]
    assert res.returncode == 2, output
    assert _state(data_dir) == before  # nothing written, made (-wal, -shm) or lost


def test_data_pull_still_reads_a_store_it_may_not_write(data_dir: Path) -> None:
    """Reading is all `data pull` does: a store its user may not write is not refused."""
    _unwritable(data_dir / DB_FILE)
    out = data_dir.parent / "pulled"
    out.mkdir()
    if ROOT:
        os.chown(out, NOBODY, NOBODY)
    before = _state(data_dir)
    res = _as_plant_user([*LINESIDE, "data", "pull", str(data_dir), str(out / "ds")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pulled 1 images (0 good, 1 defective)" in res.stdout
    # the file, its images and journal as they were; SQLite's read of a WAL file it may
    # not write leaves an empty -wal (and its -shm index) behind, which holds nothing
    after = _state(data_dir)
    wal = data_dir / f"{DB_FILE}-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert {k: v for k, v in after.items() if not k.endswith(("-wal", "-shm"))} == before


@pytest.mark.parametrize("beside", ["-wal", "-shm"])
def test_a_log_beside_the_database_it_may_not_write_is_named_for_a_writer_only(
        data_dir: Path, beside: str) -> None:
    """A killed server's -wal or -shm another user owns: named for the server (``write``),
    not for a reader (checked as ``nobody`` when run as root)."""
    from lineside_inspect.errors import ConfigError
    from lineside_inspect.store.checks import check_sqlite_store

    from .test_store_file_checks import as_nobody

    db = data_dir / DB_FILE
    log = db.with_name(db.name + beside)
    log.write_bytes(b"")
    if ROOT:
        os.chown(log, NOBODY, NOBODY)
    _unwritable(log)
    with as_nobody():
        check_sqlite_store(f"sqlite:///{db}", data_dir, must_exist=True)  # a reader's
        with pytest.raises(ConfigError) as exc:
            check_sqlite_store(f"sqlite:///{db}", data_dir, whose="the server's database",
                               write=True)
    assert exc.value.message == (
        f"the server's database {db} cannot be written: {DB_FILE}{beside} beside it cannot "
        f"be written (Permission denied): {ACCESS}")


def test_an_images_folder_on_a_disk_of_its_own_starts(data_dir: Path) -> None:
    """Session 50's adversarial read: images/ on a disk of its own (a mount point) holds
    the file system's ``lost+found``, root's (0700). The start's check took every folder
    in images/ for a day's and refused a healthy store ("its folder images/lost+found
    cannot be written"). The store writes only its day folders and refs/: only those are
    checked; a day's folder it may not write is still named (checked as ``nobody`` when
    run as root)."""
    from lineside_inspect.errors import ConfigError
    from lineside_inspect.store.checks import check_data_dir

    lost = data_dir / "images" / "lost+found"
    lost.mkdir()
    _unwritable(lost)
    lost.chmod(0o700 if ROOT else 0o500)
    with as_nobody():
        check_data_dir(data_dir)  # nothing to say
    day = next(p for p in (data_dir / "images").iterdir() if p.name[:2] == "20")
    _unwritable(day)
    with as_nobody(), pytest.raises(ConfigError) as exc:
        check_data_dir(data_dir)
    assert f"its folder images/{day.name} cannot be written" in exc.value.message
