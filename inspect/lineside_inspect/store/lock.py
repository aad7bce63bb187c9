"""One process per data folder: an OS file lock on ``<data_dir>/.lock``, held for the
lifetime of the store.

A second server on the same folder would run start-up cleanup against files the live
one is writing (and delete them as orphans), so it must stop before touching anything.
``flock`` is tied to the open file, not the process: a second lock in the same process
is refused too, and the OS drops the lock when the holder exits, even on kill -9, so no
stale lock is ever left behind. The holder's pid is written into the file so the refusal
can say who holds it. (The ``filelock`` package truncates the file when it opens it,
which would erase the holder's pid, hence ``fcntl`` directly; POSIX only, like the box.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from lineside_inspect.errors import ConfigError, DataDirLockedError

LOCK_NAME = ".lock"


class DataDirLock:
    """Exclusive lock on a data folder; :meth:`acquire` raises
    :class:`DataDirLockedError` naming the holder's pid when another open file holds it."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> DataDirLock:
        if self._file is not None:
            return self
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # "a+": create if missing, never truncate (the holder's pid must survive our open)
            f = open(self.path, "a+", encoding="ascii")  # noqa: SIM115 - held for the lifetime
        except OSError as exc:
            raise ConfigError(f"data_dir {self.data_dir}: cannot create its lock file "
                              f"({exc.strerror})") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read(32).strip()
            f.close()
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise DataDirLockedError(
                f"data_dir {self.data_dir} is in use by {who} (lock {LOCK_NAME}): stop that "
                "process first, or use another data_dir") from None
        except BaseException:
            f.close()
            raise
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()  # closing the last descriptor of the open file drops the flock

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
