"""A failure that repeats while an outage lasts, said once (and again every
:data:`SAY_AGAIN_S` with how many times it came meanwhile), and its end said with the
count. A review page polling every few seconds while PostgreSQL was down logged two lines
per read, about a line a second for the whole outage (session 50)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

SAY_AGAIN_S = 60.0  # a failure still going on is said again this often, with its count
# requests ("METHOD path") whose success may end an outage: requests name them, so bounded
MAX_ENDS = 256


class OutageLog:
    """Per cause: the first failure is logged; the next ones within ``again_s`` only
    counted, then said again with the count; :meth:`ended` says the end and the total."""

    def __init__(self, log: logging.Logger, again_s: float = SAY_AGAIN_S) -> None:
        self.log = log
        self.again_s = again_s
        self._lock = threading.Lock()
        # cause -> [when last said, times since last said, times in all, when last failed]
        self._open: dict[str, list[Any]] = {}
        self.ends: set[str] = set()  # "METHOD path": a success there ends it (see ended)

    @property
    def open(self) -> bool:
        return bool(self._open)

    def failed(self, cause: str, level: int, msg: str, *args: Any, ends: str = "") -> None:
        """One more failure of ``cause``: logged as ``msg % args`` if it is the first, or
        the last one said is ``again_s`` old."""
        now = time.monotonic()
        with self._lock:
            if ends and len(self.ends) < MAX_ENDS:
                self.ends.add(ends)
            entry = self._open.get(cause)
            if entry is None:
                self._open[cause] = [now, 0, 1, now]
                first, since = True, 0
            else:
                entry[2] += 1
                entry[3] = now
                if now - entry[0] < self.again_s:
                    entry[1] += 1
                    return
                first, since = False, entry[1]
                entry[0], entry[1] = now, 0
        if first:
            self.log.log(level, msg + " (said once while it lasts, and each minute)", *args)
        else:
            self.log.log(level, msg + " (still; %d more time(s) since last said)",
                         *args, since)

    def quiet(self, quiet_s: float | None) -> list[tuple[str, int, int]]:
        """The causes with no failure for ``quiet_s`` (None: all), forgotten, each as
        (cause, times in all, times not said since last said): for failures no success
        ends (a client's unparseable request), whose count was otherwise never said when
        they stopped within a minute of the last line (session 52)."""
        now = time.monotonic()
        with self._lock:
            done = [(cause, entry) for cause, entry in self._open.items()
                    if quiet_s is None or now - entry[3] >= quiet_s]
            for cause, _ in done:
                del self._open[cause]
        return [(cause, entry[2], entry[1]) for cause, entry in done]

    def ended(self, what: str, cause: str | None = None) -> None:
        """The failures are over (``what`` worked again): each cause's count is said. With
        ``cause``, only that one is over (the others still fail)."""
        with self._lock:
            if cause is not None:
                entry = self._open.pop(cause, None)
                done = {} if entry is None else {cause: entry}
            else:
                done, self._open, self.ends = self._open, {}, set()
        for cause, entry in done.items():
            self.log.warning("%s: over (%s answered again), after %d time(s)", cause, what,
                             entry[2])
