"""What the protocol libraries (pymodbus, asyncua) log about their peers, bounded.

Both log a peer's bytes at WARNING or ERROR: pymodbus appends a hex dump of the last 20
frames a connection received to each of its errors (a frame with a bad protocol id, as
anyone who reaches the Modbus port can send: megabytes of log per frame), asyncua
quotes the whole value of a write it refuses (a 1 MB string written to ``Trigger``) and,
on a logger it makes per subscription, a filter a client sent. A peer on the line
network (Modbus has no authentication) filled the server's log at megabytes a second,
and the disk with it, the store's included (line review, session 43). So each of their
records at WARNING and above is cut to :data:`MAX_CHARS`, without the frame dump, and
the same message is told at most once per :data:`EVERY_S` with a count of the ones not
told; a count still held back is told by :meth:`PeerLogBound.flush` (the line's ticker
calls it, and each adapter as it stops), so a burst that stops is counted too. DEBUG and
INFO (a deployment that turned the libraries up to see their traffic) pass as they are.

Where: a filter on each of the libraries' loggers (Python applies a logger's filters to
its own records only, so one on ``asyncua`` does not see ``asyncua.server``'s): on those
that exist when an adapter starts, and on each made later (asyncua makes one per
subscription, as a client creates it) as it is made, by :class:`_BoundAtBirth` in front
of the logging manager's ``getLogger``. So every record of theirs is bounded before any
handler sees it, and goes where it went before (propagation, levels and handlers as the
deployment set them); no other library's logger, nor Lineside's, gets the filter.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

MAX_CHARS = 300  # of one record's message
EVERY_S = 60.0  # the same message again at most this often
MAX_KEYS = 256  # messages remembered (distinct texts from a peer cannot grow it for ever)
_DUMP = "\n>>>>>"  # where pymodbus's dump of the last frames starts
BOUNDED = "lineside_peer_log_bounded"  # a record's attribute: the bound saw it (once is all)
_Key = tuple[str, int, str]  # (logger, level, message shape)


class PeerLogBound(logging.Filter):
    """Cuts and rate-limits a protocol library's WARNING and ERROR records (see module)."""

    def __init__(self, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        # key -> (when last told, how many not told since, the text last told)
        self._told: dict[_Key, tuple[float, int, str]] = {}
        self._held = 0  # of all keys: records held back and not yet told

    def untold(self, logger: str) -> int:
        """The records of ``logger`` (and under it) held back since they were last told."""
        with self._lock:
            return sum(n for (name, _, _), (_, n, _) in self._told.items()
                       if _under(name, (logger,)))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, BOUNDED, False):
            return True
        try:
            text = record.getMessage()
        except Exception as exc:
            # a library's message whose arguments do not format (or whose str() raises): a
            # handler would have reported it and gone on (handleError), and raised from a
            # filter it reached the library's code instead, asyncua's or pymodbus's
            # handling of a peer's request (session 43, late review)
            text = f"{_said(record.msg)} (its arguments did not format: {type(exc).__name__})"
        text = text.split(_DUMP, 1)[0]
        # its template when it has one (asyncua: "Write refused: Variant: %s ..."), else
        # its start with the numbers taken out (pymodbus formats its own: "... id: 7")
        shape = record.msg if record.args and isinstance(record.msg, str) else \
            re.sub(r"\d+", "#", text[:60])
        key = (record.name, record.levelno, shape[:200])
        if len(text) > MAX_CHARS:
            text = f"{text[:MAX_CHARS - 1]}\u2026 ({len(text)} characters)"
        now = self.clock()
        evicted: list[tuple[_Key, int, str]] = []
        with self._lock:
            told = self._told.get(key)
            if told is not None and now - told[0] < self.every_s:
                self._told[key] = (told[0], told[1] + 1, told[2])
                self._held += 1
                return False
            if told is None and len(self._told) >= MAX_KEYS:
                old = next(iter(self._told))
                _, n, said = self._told.pop(old)
                if n:  # its count is told, not lost with it
                    self._held -= n
                    evicted.append((old, n, said))
            self._told.pop(key, None)
            self._told[key] = (now, 0, text)  # (last: the oldest told goes first above)
            untold = 0 if told is None else told[1]
            self._held -= untold
        if untold:
            text += _more(untold)
        record.msg, record.args = text, None
        setattr(record, BOUNDED, True)
        _tell(evicted)
        return True

    def flush(self, *prefixes: str, due_only: bool = True) -> None:
        """Tell the counts held back (of the loggers under ``prefixes``, else all): those
        whose message was last told :attr:`every_s` ago, or every one (``due_only``
        False: an adapter stopping). Each is one record, as its message last told with
        the count; it counts as telling that message."""
        now = self.clock()
        due: list[tuple[_Key, int, str]] = []
        with self._lock:
            if not self._held:
                return
            for key, (when, n, text) in list(self._told.items()):
                if n and (not due_only or now - when >= self.every_s) \
                        and (not prefixes or _under(key[0], prefixes)):
                    self._told[key] = (now, 0, text)
                    self._held -= n
                    due.append((key, n, text))
        _tell(due)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _said(msg: object) -> str:
    try:
        return str(msg)
    except Exception:
        return f"a {type(msg).__name__} message"


def _more(n: int) -> str:
    return f" ({n} more such message(s) since last told)"


def _tell(counts: list[tuple[_Key, int, str]]) -> None:
    for (name, level, _), n, text in counts:
        logging.getLogger(name).log(level, "%s", text + _more(n), extra={BOUNDED: True})


class _BoundAtBirth:
    """``logging.Logger.manager.getLogger`` (what ``logging.getLogger`` and
    ``Logger.getChild`` call), putting :data:`BOUND` on each logger named under
    :attr:`prefixes` as it is made; any other logger is returned as it was."""

    def __init__(self, get: Callable[[str], logging.Logger], prefixes: set[str]) -> None:
        self.get = get
        self.prefixes = prefixes

    def __call__(self, name: str) -> logging.Logger:
        logger = self.get(name)
        if _under(name, tuple(self.prefixes)) and BOUND not in logger.filters:
            logger.addFilter(BOUND)
        return logger


BOUND = PeerLogBound()  # one for the process: the libraries' loggers are too


def bound_peer_logs(*prefixes: str) -> None:
    """Put the bound on the loggers named ``prefix`` and under it: a filter on each that
    exists now (the libraries make theirs at import; called at each adapter's start) and
    on each made later, as it is made. A library's own dump of frames at its errors is
    turned off too: built for each error (hex of up to 20 frames), it cost the event
    loop time before any filter saw it."""
    manager = logging.Logger.manager
    # a logger made later (asyncua makes one per subscription) is bounded as it is made
    get = manager.getLogger
    if isinstance(get, _BoundAtBirth):
        get.prefixes.update(prefixes)
    else:
        manager.getLogger = _BoundAtBirth(get, set(prefixes))  # type: ignore[method-assign]
    # and those made already: asked for through the wrapper, each is bounded as it is given
    for name in {*prefixes, *(n for n in list(manager.loggerDict) if _under(n, prefixes))}:
        logging.getLogger(name)
    if "pymodbus" in prefixes:
        try:
            from pymodbus.logging import Log
        except ImportError:  # pragma: no cover - the line extra is not installed
            return
        Log.MAX_FRAMES = 0  # frames are kept only to be dumped at an error: none kept
        Log.frame_dump = []
