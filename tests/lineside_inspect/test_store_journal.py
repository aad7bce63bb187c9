"""The store's journal: what ``stored: true`` promises. An acknowledged inspection that
was never applied to the database (its process killed first) is applied at the next
start; a record torn by a power cut ends its segment; applying twice changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from lineside_inspect.store import Store
from lineside_inspect.store.journal import Journal, Record, encode, read_records, read_segment
from lineside_inspect.store.outbox import Outbox, event

ROOT = Path(__file__).resolve().parents[2]

# saves with a writer that never gets to apply anything, prints each acknowledged id
UNAPPLIED_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store
import test_store as t
det = Detector(t.MODEL, device="cpu", threads=1)
store = Store(sys.argv[1], pass_rate=1.0, sync_interval_s=3600)
for verdict in ("fail", "pass", "fail", "pass", "fail"):
    i = t._inspection(det, verdict)
    assert store.save(i)
    print(i.id, i.verdict, flush=True)
print("done", flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_acknowledged_but_unapplied_inspections_survive_kill_9(tmp_path: Path) -> None:
    script = UNAPPLIED_WRITER.format(tests=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    acked: dict[str, str] = {}
    for line in proc.stdout:
        if line.strip() == "done":
            break
        iid, verdict = line.split()
        acked[iid] = verdict
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    segments = list((tmp_path / "journal").glob("*.journal"))
    assert segments and sum(len(list(read_segment(p))) for p in segments) == 5  # all unapplied
    with Store(tmp_path) as store:  # replays the journal before anything else
        total, rows = store.query(limit=50)
        assert total == 5 and {r.id: r.verdict for r in rows} == acked
        for r in rows:
            assert store.image_file(r).is_file()  # pass_rate 1.0: every image kept
        assert store.cleanup()["orphans_removed"] == 0
    assert not list((tmp_path / "journal").glob("*.journal"))  # applied, then deleted


def test_a_torn_record_ends_its_segment_and_replay_is_idempotent(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    journal = Journal(folder)
    records = [Record({"n": i}, bytes([i]) * 100, None) for i in range(3)]
    for r in records:
        journal.append(r)
    (segment,) = journal.rotate()
    data = segment.read_bytes()
    segment.write_bytes(data + data[:40])  # a power cut in the middle of a fourth record
    assert [r.fields["n"] for r in read_segment(segment)] == [0, 1, 2]
    # each record read back says what it took (the store counts it off its unapplied bytes)
    assert [r.size for r in read_segment(segment)] == [len(encode(r)) for r in records]
    assert sum(r.size for r in read_segment(segment)) == len(data)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF  # the last record's image damaged: its CRC fails, it is dropped
    segment.write_bytes(bytes(flipped))
    assert [r.fields["n"] for r in read_segment(segment)] == [0, 1]
    journal.close()


def test_replaying_an_applied_segment_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import test_store as t  # type: ignore[import-not-found]

    from lineside_inspect.runtime.detector import Detector

    det = Detector(t.MODEL, device="cpu", threads=1)
    with Store(tmp_path, pass_rate=1.0) as store:
        inspection = t._inspection(det, "fail")
        record = store._record(inspection, keep_image=True)
        assert store.save(inspection)
        assert store.flush() == 1
        store.journal.append(record)  # as if the process died after commit, before unlink
        assert store.flush() == 1
        total, rows = store.query()
        assert total == 1 and rows[0].id == inspection.id
        assert store.image_file(rows[0]).read_bytes() == inspection.raw


def _rows_in_database(folder: Path) -> int:
    """Rows applied so far, read past the store (which would apply the journal first)."""
    import sqlite3

    with sqlite3.connect(folder / "lineside.db") as conn:
        return int(conn.execute("SELECT count(*) FROM inspections").fetchone()[0])


def _until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_the_writer_syncs_at_once_and_applies_in_batches(tmp_path: Path, monkeypatch) -> None:
    """Issue #12: the journal is fsynced within ``sync_interval_s`` (power-loss safe) but
    applied to the database only every ``apply_interval_s``, so a row's database cost is
    shared by a batch; a read still sees every acknowledged inspection, and an inspection
    with outbox events (line outputs, the fleet wait for them) is applied at once."""
    from lineside_inspect.store.outbox import event

    with Store(tmp_path, pass_rate=1.0, sync_interval_s=0.01, apply_interval_s=3600) as store:
        *plain, urgent = _inspections(monkeypatch, "fail", "pass", "fail", "fail")
        for inspection in plain:
            assert store.save(inspection)
        # synced by the writer (the open segment is fdatasync'ed), not applied
        _until(lambda: not store.journal._unsynced, "the writer never synced the journal")
        assert _rows_in_database(tmp_path) == 0
        assert sum(len(list(read_segment(p))) for p in (tmp_path / "journal").glob("*.journal")) == 3
        total, _ = store.query()  # a read applies first
        assert total == 3 and _rows_in_database(tmp_path) == 3

        store.event_makers.append(lambda i: [event(f"line/{i.id}", {"verdict": i.verdict})])
        assert store.save(urgent)
        _until(lambda: _rows_in_database(tmp_path) == 4,
               "an inspection with outbox events waited for the apply interval")


def test_every_closed_segment_is_synced_even_while_applying_fails(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """A database outage makes every apply fail on the oldest segment: the newer ones
    (inspections acknowledged during the outage) must still be fsynced, or a power cut
    would lose them long after ``sync_interval_s`` (found by an adversarial read)."""
    import pytest

    import lineside_inspect.store.store as store_module

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import test_store as t

    from lineside_inspect.runtime.detector import Detector

    det = Detector(t.MODEL, device="cpu", threads=1)
    synced: list[str] = []
    real_fsync = store_module.fsync_path
    def recording_fsync(path: Path) -> None:
        synced.append(Path(path).name)
        real_fsync(path)

    monkeypatch.setattr(store_module, "fsync_path", recording_fsync)
    with Store(tmp_path, pass_rate=1.0, sync_interval_s=3600, apply_interval_s=3600) as store:
        def outage(records: list[Record]) -> None:
            raise OSError("the database is down")

        monkeypatch.setattr(store, "_apply", outage)
        ids = []
        for verdict in ("fail", "pass"):
            inspection = t._inspection(det, verdict)
            assert store.save(inspection)
            ids.append(inspection.id)
            with pytest.raises(OSError, match="down"):
                store.flush()  # rotates the segment holding it, then fails applying
        segments = sorted((tmp_path / "journal").glob("*.journal"))
        holding = {r.fields["id"]: p.name for p in segments for r in read_segment(p)}
        assert set(holding) == set(ids)
        assert set(holding.values()) <= set(synced), (holding, synced)
        monkeypatch.undo()  # the database is back: everything is applied
        store.flush()
        total, _ = store.query()
        assert total == 2


def test_a_save_after_close_is_not_stored_and_writes_nowhere(tmp_path: Path, monkeypatch) -> None:
    """An inspection whose request was cancelled can still finish after shutdown closed
    the store: its save must answer not stored. It wrote into whatever file had reused
    the journal's closed descriptor number, and answered stored (found by the adversarial
    review)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import test_store as t

    from lineside_inspect.runtime.detector import Detector

    det = Detector(t.MODEL, device="cpu", threads=1)
    store = Store(tmp_path / "store", pass_rate=1.0)
    stored = t._inspection(det, "fail")
    assert store.save(stored)
    store.close()
    bystander = tmp_path / "unrelated.txt"
    fd = os.open(bystander, os.O_WRONLY | os.O_CREAT)  # likely the journal's old number
    try:
        assert not store.save(t._inspection(det, "fail"))
    finally:
        os.close(fd)
    assert bystander.read_bytes() == b""
    store.journal.close()  # a second close is harmless
    with Store(tmp_path / "store") as again:  # what was acknowledged is there
        total, rows = again.query()
        assert total == 1 and rows[0].id == stored.id


def test_the_filesystems_own_quota_error_is_logged(tmp_path: Path, monkeypatch, caplog) -> None:
    """Only the store's own full quota is logged once per period; a filesystem's EDQUOT
    (a user quota on the data disk) is an error to log on every save, like a full disk
    (it was muted with it; found by the adversarial review)."""
    import errno

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import test_store as t

    from lineside_inspect.runtime.detector import Detector

    det = Detector(t.MODEL, device="cpu", threads=1)
    with Store(tmp_path, pass_rate=1.0) as store:
        def over_quota(record: object) -> None:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

        monkeypatch.setattr(store.journal, "append", over_quota)
        inspection = t._inspection(det, "fail")
        with caplog.at_level("ERROR", logger="lineside.store"):
            assert not store.save(inspection)
        assert any(inspection.id in r.getMessage() and "quota exceeded" in r.getMessage()
                   for r in caplog.records)


def test_a_batch_syncs_each_image_and_each_folder_once(tmp_path: Path, monkeypatch) -> None:
    """Applying a batch: every image file is fsynced before its rename, and each folder
    the batch wrote into (and the images folder above it) once, before the rows commit and
    the journal segment goes, not once per file (two fsyncs per image cost the writer
    ~0.4 ms of CPU per inspection)."""
    import lineside_inspect.atomic as atomic
    import lineside_inspect.store.store as store_module

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import test_store as t

    from lineside_inspect.runtime.detector import Detector

    det = Detector(t.MODEL, device="cpu", threads=1)
    synced_files: list[str] = []
    synced_folders: list[Path] = []
    real_fsync, real_folder = os.fsync, atomic.fsync_folder

    def fsync(fd: int) -> None:
        synced_files.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def fsync_folder(folder: Path) -> None:
        assert _rows_in_database(tmp_path) == 0  # before the rows
        synced_folders.append(folder)
        real_folder(folder)

    with Store(tmp_path, pass_rate=1.0, sync_interval_s=3600, apply_interval_s=3600) as store:
        inspections = [t._inspection(det, v) for v in ("fail", "pass", "fail", "fail", "pass")]
        for inspection in inspections:
            assert store.save(inspection)
        monkeypatch.setattr(atomic.os, "fsync", fsync)
        monkeypatch.setattr(store_module, "fsync_folder", fsync_folder)
        assert store.flush() == 5
        monkeypatch.undo()
        rows = [store.get(i.id) for i in inspections]
        assert all(store.image_file(r).read_bytes() == i.raw for r, i in zip(rows, inspections,
                                                                            strict=True))
    day = store.image_file(rows[0]).parent
    assert sorted(synced_folders) == [tmp_path / "images", day]  # each once
    images = [f for f in synced_files if f.startswith(str(day) + "/")]
    assert len(images) == 5 and all(Path(f).name.endswith(".tmp") for f in images)
    assert synced_files.count(str(day)) == 1  # the folder itself: once, by fsync_folder


def test_a_record_the_database_refuses_is_set_aside_and_holds_up_nothing(
        tmp_path: Path, database_url: str | None) -> None:
    """PostgreSQL's text cannot hold a NUL. An inspection whose part id had one was
    journalled (``stored: true``), then refused at every apply: every later inspection
    waited behind it, unread, and the next start-up failed replaying it. Now it goes into
    ``journal/refused/`` (readable as a journal) and the rest is applied. SQLite stores
    the NUL as it is."""
    from lineside_inspect.runtime.detector import Detector

    from .test_store import MODEL, _inspection

    det = Detector(MODEL, device="cpu", threads=1)
    bad, after = _inspection(det, "fail"), _inspection(det, "fail")
    bad.part_id = "a\x00b"
    with Store(tmp_path, database_url, pass_rate=1.0) as store:
        # as a line output does: an event per inspection, sent from the store's outbox
        store.event_makers.append(lambda i: [event(f"t/{i.id}", {"part": i.part_id}),
                                             event(i.id, {}, channel="fleet")])
        outbox = Outbox(store.engine, store.box_id)
        assert store.save(bad) and store.save(after)
        assert store.get(after.id).id == after.id  # a read applies the journal first
        total, _ = store.query(limit=10)
        refused = list((tmp_path / "journal" / "refused").glob("*.journal"))
        # the line hears both verdicts, the refused one too
        assert [e.topic for e in outbox.pending()] == [f"t/{bad.id}", f"t/{after.id}"]
        if database_url is None:
            assert total == 2 and not refused and store.get(bad.id).part_id == "a\x00b"
            assert store.refused_count() == 0
        else:
            assert total == 1 and store.refused_count() == 1
            # the fleet's event stands for a row there is not: only the kept one's goes
            assert [e.topic for e in Outbox(store.engine, store.box_id, "fleet").pending()] \
                == [after.id]
            assert [p.name for p in refused] == [f"{bad.id}.journal"]
            (kept,) = read_segment(refused[0])
            assert kept.fields["part_id"] == "a\x00b" and kept.image == bad.raw
            # replayed after a crash (its segment not yet gone): neither its row nor its
            # event again
            store._apply([kept])
            assert len(outbox.pending()) == 2 and store.query(limit=10)[0] == 1
            # the quota counts what is kept aside
            with_it = store.overhead_bytes()
            moved = refused[0].rename(tmp_path / "away")
            assert with_it - store.overhead_bytes() == moved.stat().st_size
            moved.rename(refused[0])
    assert not list((tmp_path / "journal").glob("*.journal"))  # nothing left to replay
    with Store(tmp_path, database_url) as store:  # and the next start-up goes through
        assert store.get(after.id).verdict == "fail"
        assert store.query(limit=10)[0] == (2 if database_url is None else 1)


def test_a_record_another_writer_applied_first_is_neither_set_aside_nor_sent_twice(
        tmp_path: Path, database_url: str | None) -> None:
    """Two writers applying the same journal record (a replay at start-up while the last
    process's commit was still in flight): the second's insert is refused as a duplicate
    of the row the first committed. It was taken for a value the database cannot hold:
    set aside in ``journal/refused/``, its line events sent a second time."""
    from lineside_inspect.runtime.detector import Detector

    from .test_store import MODEL, _inspection

    det = Detector(MODEL, device="cpu", threads=1)
    inspection, after = _inspection(det, "fail"), _inspection(det, "fail")
    with Store(tmp_path, database_url, pass_rate=1.0) as store:
        store.event_makers.append(lambda i: [event(f"t/{i.id}", {})])
        insert, raced = store._insert, []

        def racing(records: list[Record]) -> int:
            if not raced:  # the other writer's commit of the same records lands first
                raced.append(insert([r for r in records if r.fields["id"] == inspection.id]))
            return insert(records)

        store._insert = racing  # type: ignore[method-assign]
        assert store.save(inspection) and store.save(after)
        assert store.get(after.id).id == after.id  # a read applies the journal first
        assert raced == [1]
        outbox = Outbox(store.engine, store.box_id)
        assert sorted(e.topic for e in outbox.pending()) == sorted([f"t/{inspection.id}",
                                                                    f"t/{after.id}"])
        assert store.query(limit=10)[0] == 2 and store.refused_count() == 0
        assert not list((tmp_path / "journal" / "refused").glob("*.journal"))


def test_a_record_damaged_mid_segment_loses_only_itself_and_the_segment_is_kept(
        tmp_path: Path) -> None:
    """A flipped bit in the second of five records ended the segment there: records three
    to five, acknowledged as stored, were never applied and the segment was deleted."""
    folder = tmp_path / "journal"
    journal = Journal(folder)
    for i in range(5):
        journal.append(Record({"n": i}, bytes([i]) * 100, None))
    (segment,) = journal.rotate()
    data = bytearray(segment.read_bytes())
    size = len(data) // 5
    data[size + 60] ^= 0x01  # a bit of the second record's body
    segment.write_bytes(bytes(data))
    assert [r.fields["n"] for r in read_segment(segment)] == [0, 2, 3, 4]
    records, skipped = read_records(bytes(data))
    assert skipped == size and sum(r.size for r in records) == 4 * size
    data[3 * size + 2] ^= 0x01  # the fourth's magic too: where the next starts is unknown
    segment.write_bytes(bytes(data))
    assert [r.fields["n"] for r in read_segment(segment)] == [0, 2]
    assert read_records(bytes(data) + b"LSJ1\0\0")[1] == 3 * size + 6  # a torn tail counts
    journal.close()


def test_a_record_inside_an_image_is_never_applied(tmp_path: Path) -> None:
    """Resyncing by the magic found a record of the uploader's making inside an image (a
    JPEG comment holding a whole, CRC-valid record) once the image's own record was torn
    by a power cut, and applied it with the fields it chose."""
    forged = encode(Record({"id": "forged", "image_path": "/etc/passwd"}, b"x", None))
    image = b"\xff\xd8" + b"a" * 50 + forged + b"b" * 500 + b"\xff\xd9"
    honest = encode(Record({"n": 0}, b"\x00" * 100, None))
    uploaded = encode(Record({"n": 1}, image, None))
    torn = honest + uploaded[: len(uploaded) - 200]  # the cut falls after the forged bytes
    records, skipped = read_records(torn)
    assert [r.fields for r in records] == [{"n": 0}] and skipped == len(torn) - len(honest)
    damaged = bytearray(honest + uploaded + honest)
    damaged[len(honest) + 30] ^= 0x01  # the upload's own body damaged, its head whole
    records, _ = read_records(bytes(damaged))
    assert [r.fields for r in records] == [{"n": 0}, {"n": 0}]  # never the forged one


def test_the_store_applies_the_records_after_a_damaged_one_and_keeps_its_segment(
        tmp_path: Path, monkeypatch) -> None:
    with Store(tmp_path, pass_rate=1.0, sync_interval_s=3600, apply_interval_s=3600) as store:
        saved = _inspections(monkeypatch, "fail", "pass", "fail")
        for inspection in saved:
            assert store.save(inspection)
        (segment,) = (tmp_path / "journal").glob("*.journal")
        first = next(read_segment(segment)).size
        with open(segment, "r+b") as fh:  # a bit of the second record's body
            fh.seek(first + 40)
            byte = fh.read(1)
            fh.seek(first + 40)
            fh.write(bytes([byte[0] ^ 0x01]))
        total, rows = store.query()  # a read applies first
        assert total == 2 and {r.id for r in rows} == {saved[0].id, saved[2].id}
        kept = list((tmp_path / "journal" / "damaged").glob("*.journal"))
        assert [p.name for p in kept] == [segment.name] and not segment.exists()
        assert store.overhead_bytes() >= kept[0].stat().st_size


def _inspections(monkeypatch: Any, *verdicts: str) -> list[Any]:
    """Inspections by the sample model with these verdicts (``test_store._inspection``)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import test_store as t

    from lineside_inspect.runtime.detector import Detector

    det = Detector(t.MODEL, device="cpu", threads=1)
    return [t._inspection(det, v) for v in verdicts]


def test_a_damaged_segment_never_replaces_one_kept_before(tmp_path: Path, monkeypatch) -> None:
    """Segments are numbered again from 1 once a run left none: a second damaged segment of
    the same name replaced the one kept in journal/damaged/ by an earlier run (lost)."""
    kept: list[bytes] = []
    for verdict in ("fail", "pass"):
        with Store(tmp_path, pass_rate=1.0, sync_interval_s=3600, apply_interval_s=3600) as store:
            assert store.save(*_inspections(monkeypatch, verdict))
            (segment,) = (tmp_path / "journal").glob("*.journal")
            with open(segment, "ab") as fh:  # a record torn by a power cut
                fh.write(b"LSJ1\0\0" + verdict.encode())
            kept.append(segment.read_bytes())
            store.query()  # a read applies first
    damaged = sorted((tmp_path / "journal" / "damaged").glob("*.journal"))
    assert sorted(p.read_bytes() for p in damaged) == sorted(kept)
