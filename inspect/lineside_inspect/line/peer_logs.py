"""What the protocol libraries (pymodbus, asyncua) log about their peers, bounded.

Both log a peer's bytes at WARNING or ERROR: pymodbus appends a hex dump of the last 20
frames a connection received to each of its errors (a frame with a bad protocol id, as
anyone who reaches the Modbus port can send: megabytes of log per frame), asyncua
quotes the whole value of a write it refuses (a 1 MB string written to ``Trigger``). A
peer on the line network (Modbus has no authentication) filled the server's log at
megabytes a second, and the disk with it, the store's included (line review, session
43). So each of their records at WARNING and above is cut to :data:`MAX_CHARS`, without
the frame dump, and the same message is told at most once per :data:`EVERY_S` with a
count of the ones not told. DEBUG and INFO (a deployment that turned the libraries up
to see their traffic) pass as they are.
"""

from __future__ import annotations

import logging
import re
import threading
import time

MAX_CHARS = 300  # of one record's message
EVERY_S = 60.0  # the same message again at most this often
MAX_KEYS = 256  # messages remembered (distinct texts from a peer cannot grow it for ever)
_DUMP = "\n>>>>>"  # where pymodbus's dump of the last frames starts


class PeerLogBound(logging.Filter):
    """Cuts and rate-limits a protocol library's WARNING and ERROR records (see module)."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        super().__init__()
        self.every_s = every_s
        self._lock = threading.Lock()
        # (logger, level, message shape) -> (when last told, how many not told since)
        self._told: dict[tuple[str, int, str], tuple[float, int]] = {}

    def untold(self, logger: str) -> int:
        """The records of ``logger`` (and under it) held back since they were last told."""
        with self._lock:
            return sum(n for (name, _, _), (_, n) in self._told.items()
                       if name == logger or name.startswith(logger + "."))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = record.getMessage().split(_DUMP, 1)[0]
        # its template when it has one (asyncua: "Write refused: Variant: %s ..."), else
        # its start with the numbers taken out (pymodbus formats its own: "... id: 7")
        shape = record.msg if record.args and isinstance(record.msg, str) else \
            re.sub(r"\d+", "#", text[:60])
        key = (record.name, record.levelno, shape[:200])
        now = time.monotonic()
        with self._lock:
            told = self._told.get(key)
            if told is not None and now - told[0] < self.every_s:
                self._told[key] = (told[0], told[1] + 1)
                return False
            if told is None and len(self._told) >= MAX_KEYS:
                self._told.pop(next(iter(self._told)))
            self._told.pop(key, None)
            self._told[key] = (now, 0)  # (last: the oldest told goes first above)
        untold = 0 if told is None else told[1]
        if len(text) > MAX_CHARS:
            text = f"{text[:MAX_CHARS - 1]}\u2026 ({len(text)} characters)"
        if untold:
            text += f" ({untold} more such message(s) since last told)"
        record.msg, record.args = text, None
        return True


BOUND = PeerLogBound()  # one for the process: the libraries' loggers are too


def bound_peer_logs(*prefixes: str) -> None:
    """Put the bound on every logger named ``prefix`` or under it that exists now (the
    libraries make theirs at import; call again after starting their servers). A
    library's own dump of frames at its errors is turned off too: built for each error
    (hex of up to 20 frames), it cost the event loop time before any filter saw it."""
    manager = logging.Logger.manager
    names = [n for n in list(manager.loggerDict)
             if any(n == p or n.startswith(p + ".") for p in prefixes)]
    for name in {*prefixes, *names}:
        logger = logging.getLogger(name)
        if BOUND not in logger.filters:
            logger.addFilter(BOUND)
    if "pymodbus" in prefixes:
        try:
            from pymodbus.logging import Log
        except ImportError:  # pragma: no cover - the line extra is not installed
            return
        Log.MAX_FRAMES = 0  # frames are kept only to be dumped at an error: none kept
        Log.frame_dump = []
