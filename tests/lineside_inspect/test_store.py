"""The store on SQLite: sampling, retention order, orphans, crash safety, a full disk."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lineside_inspect.errors import ConfigError
from lineside_inspect.imageio import decode_image
from lineside_inspect.inspector import inspect
from lineside_inspect.recipes import Recipe
from lineside_inspect.references import Reference
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "deeppcb" / "1"
SAMPLE = ROOT / "datasets" / "deeppcb-sample" / "images"


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL, device="cpu", threads=1)


def _inspection(detector: Detector, verdict: str, when: datetime | None = None):  # type: ignore[no-untyped-def]
    path = next(SAMPLE.rglob("*_test.jpg"))
    raw = path.read_bytes()
    # a recipe that passes everything or fails on anything, so the verdict is chosen
    recipe = Recipe(name="r", model="deeppcb", default_min_score=1.0 if verdict == "pass" else 0.0)
    result = inspect(decode_image(raw), detector, recipe)
    if verdict == "fail" and result.verdict != "fail":
        result.verdict = "fail"
    result.raw, result.raw_ext = raw, "jpg"
    if when is not None:
        result.created_at = when
    return result


def test_fails_always_kept_passes_sampled(tmp_path: Path, detector: Detector,
                                         database_url: str | None) -> None:
    store = Store(tmp_path, database_url, pass_rate=0.0, seed=1)
    f, p = _inspection(detector, "fail"), _inspection(detector, "pass")
    assert store.save(f) and store.save(p)
    assert store.get(f.id).image_path is not None
    assert store.get(p.id).image_path is None  # pass, not sampled: row only
    stored = store.image_file(store.get(f.id)).read_bytes()
    assert stored == f.raw  # the original frame, unaltered
    total, rows = store.query(verdict="fail")
    assert total == 1 and rows[0].id == f.id
    assert store.query(label="nope")[0] == 0


def test_retention_order_passes_then_reviewed_then_unreviewed(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    store = Store(tmp_path, database_url, pass_rate=1.0)
    t0 = datetime.now(UTC) - timedelta(hours=5)
    old_fail = _inspection(detector, "fail", t0)
    reviewed_fail = _inspection(detector, "fail", t0 + timedelta(hours=1))
    new_pass = _inspection(detector, "pass", t0 + timedelta(hours=2))
    newest_fail = _inspection(detector, "fail", t0 + timedelta(hours=3))
    for i in (old_fail, reviewed_fail, new_pass, newest_fail):
        assert store.save(i)
    store.review(reviewed_fail.id, reviewer="qa", action="confirm")
    assert [r.action for r in store.get(reviewed_fail.id).reviews] == ["confirm"]
    size = len(old_fail.raw or b"")
    store.checkpoint()  # the database's share of the quota (SQLite), measured with no WAL
    store.max_bytes = store.overhead_bytes() + size * 3  # one must go: the pass, although
    assert store.enforce_retention() == 1                # it is the newest but one
    ids = {r.id for r in store.query(limit=10)[1]}
    assert new_pass.id not in ids and old_fail.id in ids
    store.checkpoint()
    store.max_bytes = store.overhead_bytes() + size  # two more: the reviewed fail, then
    assert store.enforce_retention() == 2             # the oldest unreviewed fail
    assert {r.id for r in store.query(limit=10)[1]} == {newest_fail.id}
    store.max_bytes, store.max_age_days = None, 0.1  # 2.4 h: the newest (2 h old) stays
    assert store.enforce_retention() == 0
    store.max_age_days = 0.05  # 1.2 h: now it goes too
    assert store.enforce_retention() == 1 and store.query()[0] == 0


def test_age_retention(tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    store = Store(tmp_path, database_url, pass_rate=1.0, max_age_days=1)
    old = _inspection(detector, "fail", datetime.now(UTC) - timedelta(days=3))
    new = _inspection(detector, "fail")
    store.save(old)
    store.save(new)
    assert {r.id for r in store.query()[1]} == {new.id}
    assert not any(p.name.startswith(old.id) for p in (tmp_path / "images").rglob("*"))


def test_a_kept_image_keeps_its_reference_file_when_its_last_other_user_goes_meanwhile(
        tmp_path: Path, detector: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    """``keep()`` (a shadow model's disagreement on a pass whose image was not sampled)
    found the reference file there, and retention removed the file's last other user (and
    so the file) before keep's row named it: the row pointed at a file that was gone. The
    look and the commit are under the lock retention removes files under now."""
    import threading

    store = Store(tmp_path, pass_rate=0.0, max_age_days=1)
    template = next(SAMPLE.rglob("*_temp.jpg")).read_bytes()
    golden = Reference.from_bytes("golden", template)
    old = _inspection(detector, "fail", datetime.now(UTC) - timedelta(days=3))
    passed = _inspection(detector, "pass")
    old.reference = passed.reference = golden
    store.max_age_days = 10  # the old fail stays until retention is asked below
    store.save(old)
    store.save(passed)  # no image: passes are not sampled here
    store.flush()
    ref_file = tmp_path / "images" / "refs" / f"{golden.sha256}.jpg"
    assert ref_file.is_file() and store.get(passed.id).image_path is None
    real = store._hold_reference
    retention = threading.Thread(target=store.enforce_retention)

    def then_retention(rel: str, raw: bytes) -> None:
        real(rel, raw)  # the file is there: keep goes on to name it
        store.max_age_days = 1  # the old fail, the file's last other user, goes now
        retention.start()
        retention.join(timeout=1.0)  # (it waits for keep's commit, holding no lock)

    monkeypatch.setattr(store, "_hold_reference", then_retention)
    assert store.keep(passed, capture="shadow")
    retention.join(timeout=30)
    assert not retention.is_alive()
    row = store.get(passed.id)
    assert row.reference_path == f"refs/{golden.sha256}.jpg"
    assert {r.id for r in store.query()[1]} == {passed.id}  # the old one went
    assert store.reference_file(row).read_bytes() == template  # its file did not
    store.close()


def test_startup_cleanup_removes_orphans(tmp_path: Path, detector: Detector,
                                        database_url: str | None) -> None:
    store = Store(tmp_path, database_url)
    kept = _inspection(detector, "fail")
    store.save(kept)
    orphan = tmp_path / "images" / "2026-01-01" / "orphan.jpg"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    (tmp_path / "images" / "2026-01-01" / ".half.jpg.tmp").write_bytes(b"x")
    assert store.cleanup() == {"adopted": 0, "orphans_removed": 2, "missing_cleared": 0}
    assert store.image_file(store.get(kept.id)).is_file()


def test_references_are_shared_and_leave_with_their_last_user(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    store = Store(tmp_path, database_url, pass_rate=1.0, max_age_days=1)
    template = next(SAMPLE.rglob("*_temp.jpg")).read_bytes()
    golden = Reference.from_bytes("golden", template)
    old = _inspection(detector, "fail", datetime.now(UTC) - timedelta(days=3))
    new = _inspection(detector, "fail")
    old.reference = new.reference = golden
    store.save(new)
    store.save(old)  # saved after new, so retention runs now with both rows present
    row = store.get(new.id)
    assert row.reference_name == "golden" and row.reference_path == f"refs/{golden.sha256}.jpg"
    assert store.reference_file(row).read_bytes() == template  # kept as sent
    assert [p.name for p in (tmp_path / "images" / "refs").iterdir()] == [f"{golden.sha256}.jpg"]
    assert {r.id for r in store.query()[1]} == {new.id}  # old one aged out, the file stays
    assert store.cleanup() == {"adopted": 0, "orphans_removed": 0, "missing_cleared": 0}
    assert store.reference_file(row).is_file()
    store.max_age_days = 1e-9
    store.enforce_retention()
    assert store.query()[0] == 0
    assert list((tmp_path / "images" / "refs").iterdir()) == []


def test_database_of_an_earlier_release_is_upgraded(tmp_path: Path, detector: Detector) -> None:
    store = Store(tmp_path, pass_rate=0.0)
    kept, row_only = _inspection(detector, "fail"), _inspection(detector, "pass")
    store.save(kept)
    store.save(row_only)
    store.close()
    db = sqlite3.connect(tmp_path / "lineside.db")  # as the first release made it
    for index in ("ix_inspections_box_id", "ix_inspections_reference_path"):
        db.execute(f"DROP INDEX {index}")
    for column in ("reference_name", "reference_path", "box_id"):
        db.execute(f"ALTER TABLE inspections DROP COLUMN {column}")
    db.commit()
    db.close()
    (tmp_path / "box_id").unlink()
    with Store(tmp_path) as again:
        row = again.get(kept.id)
        assert row.verdict == "fail" and row.reference_path is None and row.box_id is None
        # its own database: every row from before box ids is this box's
        assert again.cleanup() == {"adopted": 2, "orphans_removed": 0, "missing_cleared": 0}
        assert {r.box_id for r in again.query()[1]} == {again.box_id}
        assert again.image_file(again.get(kept.id)).read_bytes() == kept.raw
        assert again.save(_inspection(detector, "pass"))
    # and the indexes came back: deleting a row asks whether its golden image has
    # another user, which scanned every inspection without one
    db = sqlite3.connect(tmp_path / "lineside.db")
    plan = " ".join(str(r) for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM inspections WHERE reference_path = 'refs/x.jpg'"))
    db.close()
    assert "ix_inspections_reference_path" in plan


def test_a_tiled_inspections_tiles_are_stored_and_a_store_without_the_column_opens(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    """Session 47: ``tiles`` (the passes a recipe's tiling cut the frame into) was the
    answer's alone. Now a column: added to a store of an earlier release (SQLite and
    PostgreSQL), whose rows are kept and read with no ``tiles``, as a frame judged whole
    is (its record byte for byte as before); a tiled frame's record says its tiles."""
    from sqlalchemy import create_engine, text

    from lineside_inspect.runtime.tiles import Tiling

    whole = _inspection(detector, "fail")
    with Store(tmp_path, database_url, pass_rate=0.0) as store:
        store.save(whole)
        before = store.record(store.get(whole.id)).model_dump_json()
    engine = create_engine(database_url or f"sqlite:///{tmp_path / 'lineside.db'}")
    with engine.begin() as conn:  # as the release before made it
        conn.execute(text("ALTER TABLE inspections DROP COLUMN tiles"))
    engine.dispose()
    raw = next(SAMPLE.rglob("*_test.jpg")).read_bytes()
    tiled = inspect(decode_image(raw), detector,
                    Recipe(name="big", model="deeppcb", tiling=Tiling(tile=480, overlap=0.2)))
    assert tiled.tiles == 4  # a 640 px frame in 2 x 2 tiles of 480
    with Store(tmp_path, database_url, pass_rate=0.0) as again:
        kept = again.record(again.get(whole.id))
        assert kept.tiles is None and kept.model_dump_json() == before
        assert again.save(tiled)
        assert again.record(again.get(tiled.id)).tiles == 4
        listed = {r.id: r.model_dump(mode="json") for r in again.records(again.query()[1])}
        assert listed[tiled.id]["tiles"] == 4 and "tiles" not in listed[whole.id]


def test_one_parts_inspections_are_listed_and_an_old_store_gets_their_index(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    """Session 47: a reviewer's look-up of one part (``query(part_id=...)``, exact: '%'
    is no wildcard), indexed on a store of an earlier release too (SQLite, PostgreSQL)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy import inspect as sa_inspect

    mine, other, like = (_inspection(detector, "fail") for _ in range(3))
    mine.part_id, other.part_id, like.part_id = "SN-123", "SN-124", "SN-12%"
    with Store(tmp_path, database_url, pass_rate=0.0) as store:
        for result in (mine, other, like):
            store.save(result)
    engine = create_engine(database_url or f"sqlite:///{tmp_path / 'lineside.db'}")
    with engine.begin() as conn:  # as the release before made it
        conn.execute(text("DROP INDEX ix_inspections_part_id"))
    with Store(tmp_path, database_url, pass_rate=0.0) as again:
        assert [r.id for r in again.query(part_id="SN-123")[1]] == [mine.id]
        assert [r.id for r in again.query(part_id="SN-12%")[1]] == [like.id]
        assert again.query(part_id="SN-12")[0] == 0 and again.query()[0] == 3
    indexes = {i["name"]: i["column_names"] for i in sa_inspect(engine).get_indexes("inspections")}
    engine.dispose()
    assert indexes["ix_inspections_part_id"] == ["part_id"]


OLD_REVIEWS = """CREATE TABLE reviews (
    id INTEGER NOT NULL, inspection_id VARCHAR(64) NOT NULL, created_at VARCHAR NOT NULL,
    reviewer VARCHAR(128) NOT NULL, action VARCHAR(32) NOT NULL, boxes JSON NOT NULL,
    note TEXT NOT NULL, origin VARCHAR(8), PRIMARY KEY (id),
    FOREIGN KEY(inspection_id) REFERENCES inspections (id) ON DELETE CASCADE)"""


def reviews_as_before(db: sqlite3.Connection, table: str = OLD_REVIEWS) -> list[tuple[object, ...]]:
    """The store's reviews table made again as an earlier release made it (``table``),
    its rows kept in the columns it has (not ``box_id``, added since); the rows."""
    db.executescript("ALTER TABLE reviews RENAME TO reviews_now; " + table + ";")
    cols = ", ".join(r[1] for r in db.execute("PRAGMA table_info(reviews)"))
    rows = db.execute(f"SELECT {cols} FROM reviews_now").fetchall()
    db.execute("DROP TABLE reviews_now")
    db.executemany(f"INSERT INTO reviews VALUES ({', '.join('?' * len(rows[0]))})", rows)
    return rows


def test_review_ids_never_go_back(tmp_path: Path, detector: Detector) -> None:
    """A hub's review id is its boxes' cursor: SQLite gave the id of the newest review,
    removed with its inspection by retention, to the next review, which every box past it
    skipped for good (review, session 34). A table of an earlier release is rebuilt, its
    reviews kept, its ids going on past any it gave."""
    from lineside_inspect.store.store import REVIEW_IDS_FROM

    old, new = _inspection(detector, "fail"), _inspection(detector, "fail")
    with Store(tmp_path / "now", pass_rate=0.0) as store:
        store.save(old)
        store.save(new)
        store.review(new.id, reviewer="qa", action="confirm")
        top = store.review(old.id, reviewer="qa", action="confirm").reviews[-1].id
        store.max_age_days = 1e-9  # the old inspection and its review go
        store.enforce_retention()
    with Store(tmp_path / "now", pass_rate=0.0) as store:
        assert store.query()[0] == 0
        again = _inspection(detector, "fail")
        store.save(again)
        assert store.review(again.id, reviewer="qa", action="confirm").reviews[-1].id > top

    with Store(tmp_path / "before", pass_rate=0.0) as store:  # as an earlier release made it
        store.save(old)
        store.review(old.id, reviewer="qa", action="confirm", note="kept")
    db = sqlite3.connect(tmp_path / "before" / "lineside.db")
    rows = reviews_as_before(db)
    db.commit()
    db.close()
    with Store(tmp_path / "before", pass_rate=0.0) as store:
        reviews = store.get(old.id).reviews
        assert [(r.id, r.note, r.action) for r in reviews] == [(rows[0][0], "kept", "confirm")]
        later = store.review(old.id, reviewer="qa", action="false_reject").reviews[-1]
        assert later.id == REVIEW_IDS_FROM + 1
    db = sqlite3.connect(tmp_path / "before" / "lineside.db")
    made = db.execute("SELECT sql FROM sqlite_master WHERE name = 'reviews'").fetchone()[0]
    plan = " ".join(str(r) for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM reviews WHERE inspection_id = 'x'"))
    db.close()
    assert "AUTOINCREMENT" in made and "ix_reviews_inspection_id" in plan
    with Store(tmp_path / "before", pass_rate=0.0) as store:  # once only
        assert len(store.get(old.id).reviews) == 2



def test_a_failed_review_table_rebuild_loses_no_review(tmp_path: Path, detector: Detector) -> None:
    """Python's sqlite3 committed each DDL statement of the rebuild on its own: a copy
    that failed (a full disk) left the reviews in a renamed table and an empty new one,
    and the next start found nothing to do (review, session 34). One transaction now; a
    rebuild an earlier run left half done is finished at the next start."""
    old = _inspection(detector, "fail")
    with Store(tmp_path, pass_rate=0.0) as store:
        store.save(old)
        store.review(old.id, reviewer="qa", action="confirm", note="kept")
    db = sqlite3.connect(tmp_path / "lineside.db")
    # a note that may be NULL lets the copy fail
    reviews_as_before(db, OLD_REVIEWS.replace("note TEXT NOT NULL", "note TEXT"))
    db.execute("INSERT INTO reviews (id, inspection_id, created_at, reviewer, action, boxes, "
               "note) SELECT 7, inspection_id, created_at, 'x', 'confirm', '[]', NULL FROM reviews")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"could not be rebuilt .* nothing was changed"):
        Store(tmp_path, pass_rate=0.0)  # the copy fails: NOT NULL note
    db = sqlite3.connect(tmp_path / "lineside.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "reviews_before_autoincrement" not in tables  # all of it rolled back
    assert db.execute("SELECT count(*) FROM reviews").fetchone()[0] == 2
    db.execute("UPDATE reviews SET note = '' WHERE note IS NULL")
    # as an earlier run left it: every review in the renamed table, a new empty one
    db.executescript("ALTER TABLE reviews RENAME TO reviews_before_autoincrement; "
                     "DROP INDEX IF EXISTS ix_reviews_inspection_id;")
    db.commit()
    db.close()
    with Store(tmp_path, pass_rate=0.0) as store:  # made empty, then refilled from the old
        assert sorted(r.note for r in store.get(old.id).reviews) == ["", "kept"]
    db = sqlite3.connect(tmp_path / "lineside.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert "reviews_before_autoincrement" not in tables


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store
import test_store as t
det = Detector(t.MODEL, device="cpu", threads=1)
store = Store(sys.argv[1], pass_rate=0.5)
store.cleanup()
while True:
    i = t._inspection(det, "fail")
    if store.save(i):
        print(i.id, flush=True)  # acknowledged
"""


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_inspection(tmp_path: Path) -> None:
    acked: list[str] = []
    script = WRITER.format(tests=str(Path(__file__).parent))
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        got = 0
        while got < 3 + round_ and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                acked.append(line.strip())
                got += 1
        time.sleep(0.01 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        acked += [ln.strip() for ln in proc.stdout.read().splitlines() if ln.strip()]
    store = Store(tmp_path)  # the killed writers' lock went with them
    store.cleanup()
    _, rows = store.query(limit=500)
    ids = {r.id for r in rows}
    assert set(acked) <= ids, "an acknowledged inspection was lost"
    for r in rows:
        assert r.image_path is None or store.image_file(r).is_file()
    files = {p.relative_to(tmp_path / "images").as_posix()
             for p in (tmp_path / "images").rglob("*") if p.is_file()}
    assert files == {r.image_path for r in rows if r.image_path}


def test_full_disk_still_answers_not_stored(tmp_path: Path, detector: Detector) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    # room for an empty store (its tables and indexes: 256k no longer held one with the
    # part_id index of session 47) and a few inspections, not twelve
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(mnt)],
                         capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.decode().strip()}")
    try:
        store = Store(mnt, pass_rate=1.0)
        results = []
        for _ in range(12):
            results.append(store.save(_inspection(detector, "fail")))
            # each applied before the next: what refuses is the disk, not how far the
            # writer is behind (a save waiting on an unapplied one is refused, and the
            # next, after the apply freed its share, taken: CI saw True after ten Falses)
            store.flush()
        assert results[0] is True and results[-1] is False  # filled up, then refused
        assert results == sorted(results, reverse=True), results  # refused from then on
        total, rows = store.query(limit=50)
        assert total == sum(results)
        for r in rows:
            assert store.image_file(r).is_file()
    finally:
        store.close()
        subprocess.run(["umount", str(mnt)], check=False)


def test_every_review_keeps_at_most_1000_boxes_of_truth(tmp_path: Path, detector: Detector) -> None:
    """A confirm keeps every detection (a card allows 5,000), and the fleet hub takes a
    review of at most 1,000 boxes: the cap holds for every action, not missed_defect
    alone (review, session 32)."""
    import numpy as np

    from lineside_inspect.errors import ReviewError
    from lineside_inspect.runtime.types import Detections

    store = Store(tmp_path, None, pass_rate=1.0)
    result = _inspection(detector, "fail")
    n = 1200
    boxes = np.tile(np.array([[1.0, 1.0, 5.0, 5.0]], np.float32), (n, 1))
    result.defects = Detections(boxes, np.full(n, 0.9), np.zeros(n, np.int64),
                                detector.class_names)
    assert store.save(result)
    for action, extra in (("confirm", {}), ("relabel", {"index": 0, "label": "short"})):
        with pytest.raises(ReviewError, match="would hold 1200 boxes; an inspection's truth "
                                              "holds at most 1000"):
            store.review(result.id, reviewer="r", action=action, **extra)
    assert store.get(result.id).reviews == []  # nothing saved
    # a false reject (no boxes) stands, and so does a confirm of it after
    store.review(result.id, reviewer="r", action="false_reject")
    assert store.review(result.id, reviewer="s", action="confirm").reviews[-1].boxes == []


def test_remove_box_drops_one_box_and_keeps_the_models_others(
        tmp_path: Path, detector: Detector, database_url: str | None) -> None:
    """A false detection beside real defects could not be taken out alone: a false_reject
    then redrawing every real box lost the model's exact boxes (QA review, session 55).
    ``remove_box`` drops the box at ``index`` of the truth after the latest review; a bad
    index names the range, and removing the last box is refused (a false_reject says the
    part is good, and the false-reject figures count those), nothing saved."""
    import numpy as np

    from lineside_inspect.errors import ReviewError
    from lineside_inspect.runtime.types import Detections

    store = Store(tmp_path, database_url, pass_rate=1.0)
    try:
        result = _inspection(detector, "fail")
        boxes = np.array([[10, 10, 40, 40], [100, 100, 130, 140], [200, 210, 260, 250]], np.float32)
        result.defects = Detections(boxes, np.array([0.9, 0.4, 0.8]), np.array([0, 1, 2]),
                                    detector.class_names)
        assert store.save(result)
        model = [{"label": d["label"], "box": d["box"]} for d in store.get(result.id).defects]
        assert len(model) == 3
        after = store.review(result.id, reviewer="qa", action="remove_box", index=1,
                             note="glare, not a defect")
        assert after.review_state == "corrected"
        assert [(r.action, r.boxes) for r in after.reviews] == [
            ("remove_box", [model[0], model[2]])]  # the model's own boxes, exactly
        for bad in (2, 5, None):
            with pytest.raises(ReviewError, match=r"remove_box needs an index in 0\.\.1 \(the "
                                                  r"inspection has 2 box\(es\)\)"):
                store.review(result.id, reviewer="qa", action="remove_box", index=bad)
        # a review that names no box says so, not Python's "got None" (session 55)
        with pytest.raises(ReviewError, match=r"box\(es\)\), no index given$"):
            store.review(result.id, reviewer="qa", action="remove_box")
        # it follows the latest review: a box drawn after it is one more to remove
        drawn = {"label": detector.class_names[3], "box": [300.0, 300.0, 320.0, 330.0]}
        store.review(result.id, reviewer="qa", action="missed_defect", boxes=[drawn])
        last = store.review(result.id, reviewer="qa", action="remove_box", index=0)
        assert last.reviews[-1].boxes == [model[2], drawn]
        store.review(result.id, reviewer="qa", action="remove_box", index=1)
        with pytest.raises(ReviewError, match=r"would leave inspection .* with no box: use "
                                              r"false_reject: the part has no defect"):
            store.review(result.id, reviewer="qa", action="remove_box", index=0)
        kept = store.get(result.id)
        assert [r.action for r in kept.reviews] == ["remove_box", "missed_defect", "remove_box",
                                                    "remove_box"]  # no refusal saved
        assert kept.reviews[-1].boxes == [model[2]]
        # still a defective part: a reviewed fail, no false reject
        q = store.stats(24)["quality"]
        assert (q["reviewed_fails"], q["false_rejects"]) == (1, 0), q
        # what a false_reject leaves has no box to remove
        store.review(result.id, reviewer="qa", action="false_reject")
        with pytest.raises(ReviewError, match="has no boxes to remove"):
            store.review(result.id, reviewer="qa", action="remove_box", index=0)
        assert store.stats(24)["quality"]["false_rejects"] == 1
    finally:
        store.close()


def test_startup_cleanup_keeps_images_a_database_that_is_not_theirs_does_not_know(
        tmp_path: Path, detector: Detector, database_url: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    """A box's database_url switched (SQLite to PostgreSQL) without moving its rows: the
    new database knew none of the folder's images, and the first start removed every one
    as an orphan (store review, session 35). More orphans than known images, past a few,
    are kept and said; a few are still removed."""
    from lineside_inspect.store.store import ORPHANS_ALWAYS_REMOVED

    first = Store(tmp_path, None)
    saved = [_inspection(detector, "fail") for _ in range(3)]
    for inspection in saved:
        first.save(inspection)
    first.close()  # (the journal applied: the images written)
    images = {p for p in (tmp_path / "images").rglob("*") if p.is_file()}
    assert len(images) >= len(saved)
    day = tmp_path / "images" / "2026-01-01"
    day.mkdir(parents=True, exist_ok=True)
    extra = [day / f"crash-{i}.png" for i in range(ORPHANS_ALWAYS_REMOVED)]
    for path in extra:
        path.write_bytes(b"x")
    (day / ".half.jpg.tmp").write_bytes(b"x")
    other = database_url or f"sqlite:///{tmp_path / 'another.db'}"
    switched = Store(tmp_path, other)
    try:
        with caplog.at_level("WARNING", logger="lineside"):
            got = switched.cleanup()
        assert got["orphans_removed"] == 1  # the write cut short, only
        assert all(p.is_file() for p in images | set(extra))
        assert "have no row in the database" in caplog.text
    finally:
        switched.close()
    # kept for good, listed: a later start, on a database that knows more of the folder's
    # images than those (the ratio no longer trips), removed them unsaid
    from lineside_inspect.store.store import ORPHANS_KEPT_FILE

    listed = (tmp_path / ORPHANS_KEPT_FILE).read_text().splitlines()
    assert len(listed) == len(images) + len(extra)
    back = Store(tmp_path, None)
    try:
        for path in extra[3:]:
            path.unlink()
        assert back.cleanup()["orphans_removed"] == 0  # listed: kept
        assert all(p.is_file() for p in images | set(extra[:3]))
        (tmp_path / ORPHANS_KEPT_FILE).unlink()  # the user let them go: its few orphans go
        assert back.cleanup()["orphans_removed"] == 3
        assert all(p.is_file() for p in images)
    finally:
        back.close()


def test_a_read_waits_for_the_writers_attempt_once_the_database_is_back(
        tmp_path: Path, detector: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the writer's applies fail (PostgreSQL down or locked), a read does not wait
    for its attempt; but the attempt that succeeds (the database back) held the apply lock,
    and a read then skipped it: a review right after a save found no inspection. A read
    waits for an attempt up to READ_WAITS_S."""
    import threading

    import lineside_inspect.store.store as store_module

    monkeypatch.setattr(store_module, "READ_WAITS_S", 60.0)  # a bound, not a timing
    store = Store(tmp_path)
    try:
        saved = _inspection(detector, "fail")
        assert store.save(saved)
        store._apply_failing = True  # as after a failed batch
        held, done = threading.Event(), threading.Event()

        def writer() -> None:  # the writer's next attempt, which goes through
            with store._apply_lock:
                held.set()
                time.sleep(0.3)
                store._flush()
                store._apply_failing = False
            done.set()

        threading.Thread(target=writer, daemon=True).start()
        assert held.wait(30)
        assert store.get(saved.id).id == saved.id  # read during the attempt: waited for it
        assert done.wait(30)
    finally:
        store.close()


def test_startup_cleanup_keeps_images_a_database_restored_from_an_old_backup_does_not_know(
        tmp_path: Path, detector: Detector) -> None:
    """A database restored from a backup older than the folder's images: it names images
    retention removed since (as many as the folder holds now, or more), none of the ones
    there. Compared with every path it names, the folder's images were "fewer orphans than
    known images" and every one was removed at the first start; compared with the folder's
    images it knows (none), they are kept."""
    from lineside_inspect.store.store import DB_FILE

    with Store(tmp_path) as store:
        old = [_inspection(detector, "fail") for _ in range(30)]
        for inspection in old:
            assert store.save(inspection)
    (tmp_path / "backup.db").write_bytes((tmp_path / DB_FILE).read_bytes())
    backup = sqlite3.connect(tmp_path / "backup.db")
    assert backup.execute("SELECT count(image_path) FROM inspections").fetchone() == (30,)
    backup.close()
    with Store(tmp_path) as store:
        for inspection in old:  # retention, since the backup
            with store.locked_inspection(inspection.id) as (s, row):
                store._delete(s, row, None, [])
        new = [_inspection(detector, "fail") for _ in range(25)]
        for inspection in new:
            assert store.save(inspection)
    images = {p for p in (tmp_path / "images").rglob("*") if p.is_file()}
    assert len(images) == 25
    for leftover in tmp_path.glob(DB_FILE + "-*"):
        leftover.unlink()
    (tmp_path / DB_FILE).write_bytes((tmp_path / "backup.db").read_bytes())  # restored
    with Store(tmp_path) as store:
        got = store.cleanup()
        assert got["orphans_removed"] == 0, got
        assert all(p.is_file() for p in images)


def test_startup_cleanup_removes_the_images_of_records_the_database_refused(
        tmp_path: Path, detector: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new box whose database refuses every record (a value it cannot hold): each is
    set aside in journal/refused/ with its image inside, and its image file, written
    before the refusal, is garbage for the start-up cleanup to remove. Past 20 of them on
    a box whose database knows fewer images, they were kept for good and taken for
    another database's ("is this the database of this folder?")."""
    from sqlalchemy.exc import StatementError

    def refuse(records: list) -> int:  # type: ignore[type-arg]
        raise StatementError("refused", None, None, ValueError("a value it cannot hold"))

    with Store(tmp_path) as store:
        monkeypatch.setattr(store, "_insert", refuse)
        monkeypatch.setattr(store, "_insert_events", lambda record: 0)
        for _ in range(25):
            assert store.save(_inspection(detector, "fail"))
        store.flush()
        assert store.refused_count() == 25
    assert len([p for p in (tmp_path / "images").rglob("*") if p.is_file()]) == 25
    with Store(tmp_path) as store:
        assert store.cleanup()["orphans_removed"] == 25
    assert not [p for p in (tmp_path / "images").rglob("*") if p.is_file()]


def test_a_read_makes_no_attempt_of_its_own_after_the_writers_failed(
        tmp_path: Path, detector: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that waited for the writer's attempt, which failed (the database still down,
    or a lock another session holds, up to LOCK_TIMEOUT_S): it went on to make an attempt
    of its own at once, holding the apply lock that long (the read answered after 2 s plus
    the whole attempt, where it had answered at once; the writer's retry and other reads
    waited behind it). It reads what the database has."""
    import threading

    import lineside_inspect.store.store as store_module

    monkeypatch.setattr(store_module, "READ_WAITS_S", 60.0)
    store = Store(tmp_path)
    try:
        saved = _inspection(detector, "fail")
        assert store.save(saved)
        store.flush()
        store._apply_failing = True
        attempts: list[str] = []
        real = store._flush

        def flush() -> int:
            attempts.append(threading.current_thread().name)
            return real()

        monkeypatch.setattr(store, "_flush", flush)
        held, done = threading.Event(), threading.Event()

        def writer() -> None:  # the writer's attempt, which fails
            with store._apply_lock:
                held.set()
                time.sleep(0.3)
            done.set()

        threading.Thread(target=writer, name="attempt", daemon=True).start()
        assert held.wait(30)
        assert store.get(saved.id).id == saved.id  # (applied before: it is there)
        assert done.wait(30)
        assert "MainThread" not in attempts
    finally:
        store._apply_failing = False
        store.close()


@pytest.mark.parametrize("days", [1e6, float("inf")])
def test_an_age_limit_past_the_calendar_keeps_everything_and_breaks_nothing(
        tmp_path: Path, detector: Detector, days: float) -> None:
    """A "keep forever" age limit (a million days, inf) reached back before year 1: every
    retention pass raised OverflowError, so every apply ended in "applying the journal
    failed", a quota was never enforced (every save refused once it filled), and a journal
    left by a killed run stopped the next start (review, session 36)."""
    store = Store(tmp_path, pass_rate=1.0, max_age_days=days, apply_interval_s=60)
    old = _inspection(detector, "fail", datetime.now(UTC) - timedelta(days=3650))
    assert store.save(old)
    assert store.flush() == 1  # (raised)
    assert store.enforce_retention() == 0 and store.get(old.id).image_path is not None
    assert store._next_age_out() > time.monotonic()
    # a killed run: its record left in the journal for the next start to apply
    assert store.save(_inspection(detector, "fail"))
    store._stop.set()
    store._wake.set()
    store._writer.join(30)
    store.journal.close()
    store.engine.dispose()
    store.dir_lock.release()
    with Store(tmp_path, pass_rate=1.0, max_age_days=days) as again:  # (raised)
        assert again.query()[0] == 2


def test_store_max_age_days_is_bounded_in_the_config() -> None:
    from pydantic import ValidationError

    from lineside_inspect.config import Settings

    for days in (1e6, float("inf")):
        with pytest.raises(ValidationError, match="store_max_age_days"):
            Settings(store_max_age_days=days)
    assert Settings(store_max_age_days=36500).store_max_age_days == 36500


@pytest.mark.parametrize("name", ["line 1?x=1", "pct%20x", "zürich ü#2"])
def test_the_database_is_in_a_data_dir_whatever_its_name(
        tmp_path: Path, detector: Detector, name: str) -> None:
    """The SQLite URL was the path pasted in: a data_dir with "?" put lineside.db beside
    the folder (named by the part before "?"), outside its lock, where another data_dir
    could share it; one with "%20" failed to open at start (review, session 36)."""
    folder = tmp_path / name
    with Store(folder) as store:
        assert store.save(_inspection(detector, "fail"))
        assert store.query()[0] == 1
        assert store._sqlite_files()[0] == (folder / "lineside.db").resolve()
    assert (folder / "lineside.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_data_dir_whose_database_an_earlier_release_kept_elsewhere_is_not_emptied(
        tmp_path: Path, detector: Detector) -> None:
    """A data_dir named with "?" had its database beside it (the path cut at "?"): after the
    upgrade that quoted the path, the store opened a new empty database in the folder, and
    start-up cleanup removed every image (up to 20) as an orphan; the rows stayed behind in
    the old file (review of session 36's URL quoting). It stops, naming the file to move."""
    folder = tmp_path / "line?1"
    legacy_url = f"sqlite:///{(folder / 'lineside.db').resolve()}"  # as the release before
    with Store(folder, legacy_url, pass_rate=1.0) as store:
        for _ in range(3):
            assert store.save(_inspection(detector, "fail"))
        store.flush()
    legacy = tmp_path / "line"
    assert legacy.is_file() and not (folder / "lineside.db").exists()
    images = sorted(p.name for p in (folder / "images").rglob("*.jpg"))
    assert len(images) == 3
    with pytest.raises(ConfigError, match="move that file") as info:
        Store(folder)
    assert str(legacy) in info.value.message
    assert sorted(p.name for p in (folder / "images").rglob("*.jpg")) == images
    legacy.replace(folder / "lineside.db")  # as the error says
    with Store(folder) as store:
        assert store.cleanup()["orphans_removed"] == 0
        assert store.query()[0] == 3


def test_rows_whose_images_were_found_gone_at_start_are_not_removed_for_their_bytes(
        tmp_path: Path, detector: Detector) -> None:
    """Start-up cleanup cleared the image path of a row whose file was gone (a lost or
    restored images folder) but kept its image_bytes: the quota counted bytes no file took,
    and removed such rows to free them, which freed nothing, so it removed every one of
    them, reviewed ones too (review, session 36)."""
    import shutil

    store = Store(tmp_path, pass_rate=1.0)
    t0 = datetime.now(UTC) - timedelta(hours=5)
    saved = [_inspection(detector, "fail", t0 + timedelta(minutes=i)) for i in range(3)]
    for inspection in saved:
        assert store.save(inspection)
    store.review(saved[0].id, reviewer="qa", action="confirm")
    store.close()
    shutil.rmtree(tmp_path / "images")
    store = Store(tmp_path, pass_rate=1.0)
    try:
        assert store.cleanup()["missing_cleared"] == 3
        store.checkpoint()
        assert store.used_bytes() == store.overhead_bytes()  # no image is left to count
        store.max_bytes = store.overhead_bytes() + 10
        assert store.enforce_retention() == 0
        assert store.query()[0] == 3 and store.get(saved[0].id).review_state == "confirmed"
    finally:
        store.close()


def test_the_age_limit_applies_at_start_and_to_an_idle_box(
        tmp_path: Path, detector: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    """The age limit ran only after a batch was applied: a box whose line stopped, or one
    started with a shorter limit, kept every image past it for as long as nothing new was
    stored (review, session 36). Start-up cleanup applies it, and the writer at least every
    AGE_CHECK_S."""
    import lineside_inspect.store.store as store_module

    month = _inspection(detector, "fail", datetime.now(UTC) - timedelta(days=30))
    with Store(tmp_path, pass_rate=1.0) as store:
        assert store.save(month)
    with Store(tmp_path, pass_rate=1.0, max_age_days=7) as store:  # the limit set at a restart
        assert store.query()[0] == 1
        store.cleanup()
        assert store.query()[0] == 0
        assert not list((tmp_path / "images").rglob("*.jpg"))

    monkeypatch.setattr(store_module, "AGE_CHECK_S", 0.05)
    with Store(tmp_path, pass_rate=1.0, max_age_days=7) as store:
        store.cleanup()
        days = _inspection(detector, "fail", datetime.now(UTC) - timedelta(days=3))
        assert store.save(days) and store.query()[0] == 1  # within the limit when applied
        store.max_age_days = 1  # ... and past it while the line stands still
        deadline = time.monotonic() + 30
        while store.query()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.query()[0] == 0


def test_an_inspection_larger_than_the_quota_removes_nothing_for_it(
        tmp_path: Path, detector: Detector, caplog: pytest.LogCaptureFixture) -> None:
    """Making room for a frame that could never fit (larger than the quota, or than what it
    holds beside the database) removed every stored inspection, a reviewed one too, and the
    frame was refused all the same (review, session 36)."""
    with Store(tmp_path, pass_rate=1.0, apply_interval_s=3600) as store:
        t0 = datetime.now(UTC) - timedelta(hours=5)
        kept = [_inspection(detector, "fail", t0 + timedelta(minutes=i)) for i in range(3)]
        for inspection in kept:
            assert store.save(inspection)
        store.flush()
        store.review(kept[0].id, reviewer="qa", action="confirm")
        store.checkpoint()
        store.max_bytes = store.overhead_bytes() + 4 * len(kept[0].raw or b"") + 200_000
        assert store.enforce_retention() == 0
        huge = _inspection(detector, "fail")
        huge.raw = (huge.raw or b"") + b"\0" * store.max_bytes
        assert not store.save(huge)
        assert store.query()[0] == 3 and store.get(kept[0].id).review_state == "confirmed"
        assert "more than the store's disk quota" in caplog.text
        assert store.save(_inspection(detector, "fail"))  # one that fits is still stored
