"""`lineside data pull DIR` from a store folder whose files do not all read: an image or
golden the system refuses (no permission), a folder or a link to nothing where a file
should be. Each stopped the pull (a PermissionError, its store path quoted) or was left
out unsaid (an INFO line the command does not show); now each is left out and named in
the pull's WARNING ("id: why"), and the rest pulled. A database that does not read as
one is one line (review, session 41).

A real server run with the bundled reference model stores the inspections; it is
stopped, then the command pulls from its folder as an operator runs it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import read_dataset, validate_dir
from lineside_inspect.opencv import cv2
from lineside_inspect.store.models import InspectionRow
from lineside_inspect.store.pull import pull_from_store
from lineside_inspect.store.store import DB_FILE, Store

from .conftest import ROOT, keyed, start_server

REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"
PAIR = ROOT / "datasets" / "deeppcb-sample" / "images" / "group00041"
NOBODY = 65534
runner = CliRunner()


def _png(image: np.ndarray) -> bytes:
    return bytes(cv2.imencode(".png", image)[1])


def _store(data_dir: Path, names: list[str]) -> dict[str, tuple[str, Path, Path]]:
    """A stopped server's store folder with one failed inspection per name (each against
    a golden of its own when its name starts with "own-golden"): name -> (id, image file,
    golden file)."""
    part = cv2.imread(str(PAIR / "00041000_test.jpg"))
    golden = cv2.imread(str(PAIR / "00041000_temp.jpg"))
    srv, stop = start_server(keyed(models=[str(REF_MODEL)], data_dir=str(data_dir),
                                   recipes=[str(ROOT / "configs" / "recipes" / "deeppcb-ref.yaml")],
                                   store_pass_rate=1.0))
    try:
        ids = {}
        with srv.client("admin") as c:
            for i, name in enumerate(names):
                ref = golden.copy()
                ref[0, 0] = (i * 7) % 256  # a golden of its own, as a line's goldens are
                assert c.put(f"/v1/references/g{i}", content=_png(ref),
                             headers={"content-type": "image/png"}).status_code == 200
                r = c.post("/v1/inspect", params={"recipe": "deeppcb-ref", "reference": f"g{i}",
                                                  "part_id": name},
                           files={"image": ("f.png", _png(part), "image/png")})
                assert r.status_code == 200 and r.json()["stored"], r.text
                assert r.json()["verdict"] == "fail" and r.json()["defects"], r.text
                ids[name] = r.json()["id"]
        store = srv.app.state.store
        store.flush()
        with Session(store.engine) as s:
            files = {}
            for name, iid in ids.items():
                row = s.get(InspectionRow, iid)
                assert row is not None and row.image_path and row.reference_path
                files[name] = (iid, store.images_dir / row.image_path,
                               store.images_dir / row.reference_path)
    finally:
        stop()
    return files


def _left_out(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """The pull's WARNING naming what it left out, as {id: why}."""
    [said] = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING" and "inspection(s) left out" in r.getMessage()]
    return dict(e.split(": ", 1) for e in said.split("): ", 1)[1].split("; "))


def _pulled(dst: Path) -> set[str]:
    assert validate_dir(dst) == []
    return {Path(r.file_name).stem for r in read_dataset(dst).images
            if not r.file_name.startswith("references/")}


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder under /tmp anyone may enter (pytest's own are private to their user): the
    pull is run as ``nobody`` there when the tests run as root (root reads any file)."""
    path = Path(tempfile.mkdtemp(prefix="lineside-pull-files-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _as_nobody(owned: Path, kept: Path) -> Iterator[None]:
    """As root, the pull run as ``nobody`` (its effective user: file access is checked as
    that user's, and root reads a file whose mode is 000), ``owned`` given to it but for
    ``kept``; not root, as this user."""
    if os.geteuid() != 0:
        yield
        return
    for path in [owned, *owned.rglob("*")]:
        if path != kept:
            os.chown(path, NOBODY, -1)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


def test_a_stored_file_the_system_refuses_is_left_out_named_and_the_rest_pulled(
        folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An image whose mode is 000 stopped `data pull DIR` with a PermissionError naming
    the box's file; now it, and an item whose golden is 000, are left out, each named, and
    the rest pulled. As root, the pull runs as ``nobody`` (root reads a 000 file), and one
    more image is root's own (its hard link refused: the copy fails)."""
    names = ["kept", "image", "golden", "root-owned"]
    files = _store(folder / "store", names)
    files["image"][1].chmod(0)  # (its owner may link it: the read fails)
    files["golden"][2].chmod(0)
    root_owned = files["root-owned"][1]
    if os.geteuid() == 0:  # nobody may not link it (fs.protected_hardlinks): copied, refused
        root_owned.chmod(0)
    else:
        names.remove("root-owned")
    with Store(folder / "store") as store, _as_nobody(folder, root_owned), \
            caplog.at_level(logging.WARNING, logger="lineside"):
        pull_from_store(store, folder / "out", reviewed=False)
    assert _pulled(folder / "out") == {files["kept"][0]}
    left_out = _left_out(caplog)
    assert left_out == {files[n][0]: left_out[files[n][0]] for n in names[1:]}
    assert left_out[files["image"][0]] == "its image cannot be read: Permission denied"
    assert left_out[files["golden"][0]] == "its golden image cannot be read: Permission denied"
    if "root-owned" in names:
        assert left_out[files["root-owned"][0]] == "its image cannot be read: Permission denied"
    assert str(folder) not in " ".join(left_out.values())
    assert sorted(p.name for p in folder.iterdir()) == ["out", "store"]  # no staging left


def test_a_folder_or_a_link_to_nothing_in_place_of_a_stored_file_is_named(
        folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder where an image or its golden should be, or a link to a file that is not
    there, was left out by `data pull DIR` with an INFO line the command does not show
    (a golden shared by every item of a line, and the pull said only "no reviewed
    inspections ... match"). Each is named in the pull's WARNING now, as the command
    shows it, and the rest pulled; no path of the store is quoted."""
    files = _store(folder / "store", ["kept", "folder", "link", "golden-folder"])
    for name, which in (("folder", 1), ("golden-folder", 2)):
        path = files[name][which]
        path.unlink()
        path.mkdir()
    files["link"][1].unlink()
    files["link"][1].symlink_to(folder / "gone.png")
    # one part's (session 48): only its inspections are read, the others' not even listed
    with caplog.at_level(logging.WARNING, logger="lineside"):
        result = runner.invoke(app, ["data", "pull", str(folder / "store"),
                                     str(folder / "one"), "--no-reviewed", "--part-id", "kept"])
    assert result.exit_code == 0 and "pulled 2 images" in result.output, result.output
    assert _pulled(folder / "one") == {files["kept"][0]}
    assert not [r for r in caplog.records if "left out" in r.getMessage()]
    # none of the part's reviewed: the error names the part and the page that reviews it
    # (it said only "no reviewed inspections ... match"; a new QA lead's walk, session 48)
    result = runner.invoke(app, ["data", "pull", str(folder / "store"), str(folder / "no"),
                                 "--part-id", "kept"])
    assert result.exit_code == 2 and "no reviewed inspections with a stored image match (of " \
        "part 'kept'); review them first on the review page, " \
        "/review?part_id=kept&verdict=&review_state=" in result.output, result.output
    for bad, why in (("k\u202e", "must not contain a bidirectional control character"),
                     ("k" * 257, "at most 256 characters, not 257"), ("", "is empty")):
        result = runner.invoke(app, ["data", "pull", str(folder / "store"), str(folder / "no"),
                                     "--part-id", bad])
        assert result.exit_code == 2 and f"--part-id{':' if bad else ''} " in result.output \
            and why in result.output, result.output
    shutil.rmtree(folder / "one")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lineside"):
        result = runner.invoke(app, ["data", "pull", str(folder / "store"),
                                     str(folder / "out"), "--no-reviewed"])
    assert result.exit_code == 0, result.output
    assert "pulled 2 images" in result.output  # the one kept and its golden
    assert _pulled(folder / "out") == {files["kept"][0]}
    assert _left_out(caplog) == {
        files["folder"][0]: "its stored image is a folder, not a file",
        files["link"][0]: "its stored image is a link to a file that is not there",
        files["golden-folder"][0]: "its stored golden image is a folder, not a file"}


@pytest.mark.parametrize(("content", "said"), [
    (b"not a database at all\n" * 10, "is not a SQLite database"),
    (b"SQLite format 3\0", "is damaged: cut short (16 bytes)")])
def test_a_store_database_that_does_not_read_is_one_line(tmp_path: Path, content: bytes,
                                                         said: str) -> None:
    """A store folder whose lineside.db is not a database (or a damaged one) was a
    160-line sqlalchemy DatabaseError traceback from `data pull DIR`. Read before the
    store opens it since session 42 (``check_sqlite_store``: more cases in
    ``test_store_file_checks.py``)."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / DB_FILE).write_bytes(content)
    result = runner.invoke(app, ["data", "pull", str(tmp_path / "store"),
                                 str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"the store's database {tmp_path / 'store' / DB_FILE} {said}" in result.output
    assert not (tmp_path / "out").exists()
