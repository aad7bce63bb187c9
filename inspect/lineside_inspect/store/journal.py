"""The store's write-ahead journal: how an inspection is stored without an fsync on the
request path.

An inspection is *stored* once its record (the row's fields, the image and the reference
image) is appended to the current journal segment with a single ``write`` system call.
From then on it survives the server process dying in any way (kill -9, OOM, a crash):
the bytes belong to the kernel. A background writer then, in a loop, closes the segment
fsyncs the open segment every ``sync_interval_s`` (:meth:`Journal.sync`: from here the
record survives power loss too) and, less often (``apply_interval_s``, or at once when a
record carries outbox events or a read needs it), closes the segment (rotation), applies
its records to the database and image files (each durable on its own), and only then
deletes it. At
start-up every segment left over is applied again; applying is idempotent by inspection
id, and a record torn by a power cut fails its CRC and ends its segment; one whose body
is damaged in the middle is skipped by its head's lengths, and a segment with bytes that
held no record is kept in ``journal/damaged/`` rather than deleted.

Record layout (little-endian): ``LSJ1`` magic, u32 lengths of the JSON header, the image
and the reference image, u32 CRC32 of the three, then the three.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"LSJ1"
_HEAD = struct.Struct("<4sIIII")
SUFFIX = ".journal"


# one encoder for every record (``json.dumps`` with arguments builds a new one per call);
# a record's fields are made by the store, never circular
_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)


@dataclass(frozen=True)
class Record:
    fields: dict[str, Any]
    image: bytes | None
    reference: bytes | None
    size: int = 0  # bytes it took in its segment (0 for a record not read from one)


def encode(record: Record) -> bytes:
    header = _JSON.encode(record.fields).encode()
    image, ref = record.image or b"", record.reference or b""
    crc = zlib.crc32(ref, zlib.crc32(image, zlib.crc32(header)))
    return b"".join((_HEAD.pack(MAGIC, len(header), len(image), len(ref), crc), header, image, ref))


def read_segment(path: Path) -> Iterator[Record]:
    """The records of a segment, in order (:func:`read_records`)."""
    yield from read_records(path.read_bytes())[0]


def read_records(data: bytes) -> tuple[list[Record], int]:
    """The whole records in ``data``, in order, and how many bytes held none. A record
    whose head is whole but whose body fails its CRC (a bad sector, a flipped bit) is
    skipped by the lengths its head gives: it ended the segment, and every record after
    it was dropped with it (store review). Anything else ends the data: a torn record (a
    power cut mid-write), or a damaged head. Never is a record looked for by its magic
    inside another: an uploaded image may hold a whole, CRC-valid record of its sender's
    making (session 36 read-through), so those bytes stay in the segment kept aside."""
    records: list[Record] = []
    pos = skipped = 0
    while pos + _HEAD.size <= len(data):
        magic, hl, il, rl, crc = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + hl + il + rl
        if magic != MAGIC or end > len(data):
            break  # torn, or its head damaged: where the next one starts is unknown
        record = _body(data, pos, end, (hl, il), crc)
        if record is None:
            skipped += end - pos
        else:
            records.append(record)
        pos = end
    return records, skipped + len(data) - pos


def _body(data: bytes, pos: int, end: int, lengths: tuple[int, int], crc: int) -> Record | None:
    """The record whose head at ``pos`` gives ``end``, the header's and image's
    ``lengths`` and ``crc``; None when its body fails the CRC (or is no JSON header)."""
    hl, il = lengths
    body = memoryview(data)[pos + _HEAD.size:end]
    header, image, ref = bytes(body[:hl]), bytes(body[hl:hl + il]), bytes(body[hl + il:])
    if zlib.crc32(ref, zlib.crc32(image, zlib.crc32(header))) != crc:
        return None
    try:
        fields = json.loads(header)
    except ValueError:  # (a CRC that matched by chance, or a writer's bug)
        return None
    return Record(fields, image if il else None, ref if ref else None, end - pos)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Numbered segments ``<folder>/<n>.journal``; ``append`` writes to the newest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        numbers = [int(p.stem) for p in folder.glob(f"*{SUFFIX}") if p.stem.isdigit()]
        self._number = max(numbers, default=0) + 1
        self._fd = self._open(self._number)
        self.pending_bytes = 0  # appended to the open segment, not yet rotated out
        self._unsynced = False  # appended since the last sync

    def _open(self, number: int) -> int:
        fd = os.open(self.folder / f"{number:012d}{SUFFIX}",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_path(self.folder)  # the new segment's name survives a power cut
        return fd

    def append(self, record: Record | bytes) -> None:
        """One ``write``: a kill -9 leaves the whole record or none of it. ``record`` may
        come encoded already (:func:`encode`: the store sizes it for its quota first)."""
        data = record if isinstance(record, bytes) else encode(record)
        with self._lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, "the journal is closed (the store is shutting down)")
            written = os.write(self._fd, data)
            if written != len(data):  # a full disk: cut the partial record off again
                os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
                raise OSError(28, "journal write was short (disk full?)")
            self.pending_bytes += written
            self._unsynced = True

    def sync(self) -> None:
        """Make every record appended so far survive power loss, without closing the
        segment. The fsync runs on a duplicate of the descriptor outside the lock, so
        appends on the request path never wait for the disk."""
        with self._lock:
            if not self._unsynced:
                return
            self._unsynced = False
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)  # the file's data and size: enough to read the records back
        except OSError:
            with self._lock:
                self._unsynced = True
            raise
        finally:
            os.close(fd)

    def rotate(self) -> list[Path]:
        """Start a new segment; return every closed one, oldest first (left-overs from an
        earlier run included). An empty open segment is not rotated."""
        with self._lock:
            rotating, number = self.pending_bytes > 0, self._number + 1
        if rotating:
            # the new segment is made (and its name synced) outside the lock: appends on
            # the request path never wait for the disk. Only the applier rotates
            # (``Store.flush``, under its lock), and it fsyncs every closed segment
            fd = self._open(number)
            with self._lock:
                old, self._fd, self._number = self._fd, fd, number
                self.pending_bytes = 0
                self._unsynced = False
            os.close(old)
        with self._lock:
            current = self._number
        return sorted((p for p in self.folder.glob(f"*{SUFFIX}")
                       if p.stem.isdigit() and int(p.stem) < current), key=lambda p: int(p.stem))

    def close(self) -> None:
        """Close the open segment. Appends after this raise ``OSError`` (a save answers not
        stored): the closed descriptor's number may already name another open file."""
        with self._lock:
            if self._fd < 0:
                return
            os.close(self._fd)
            self._fd = -1
            path = self.folder / f"{self._number:012d}{SUFFIX}"
            if not self.pending_bytes and path.stat().st_size == 0:
                path.unlink(missing_ok=True)
