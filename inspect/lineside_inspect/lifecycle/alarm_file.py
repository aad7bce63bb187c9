"""The fail-rate alarm's counts in a file, so that a restart resumes them.

Why: without it a restart (a power cut at night, an update) learns every recipe's usual
rate again from the parts after it, and an alarm raised before ends without a word. On a
line whose new look began before the restart, that look would be learned as usual.

The counts are written whole (temp file, fsync, rename) every ``save_every_s`` when
inspections were counted since, and at shutdown; a crash loses the last seconds' counts.
A file that does not parse is set aside as ``<name>.bad``, one counted under other
settings as ``<name>.old`` (the last one of each is kept for a look); the alarm then
learns afresh, said so.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from lineside_inspect.atomic import write_atomic
from lineside_inspect.lifecycle.alarm import FailRateAlarm, SettingsChanged

log = logging.getLogger("lineside.alarm")
# far above what a server saves (a recipe's four tracks take ~2 KB at window 400, ~70 KB
# at the largest window): a file beyond it is not the alarm's
MAX_BYTES = 256 << 20
CLOSE_WAIT_S = 5.0  # close() waits this long for a save in progress (a hung disk)


class AlarmFile:
    """Loads the alarm's saved counts (:meth:`load`, before any inspection), saves them from
    a thread of its own (:meth:`start`) and a last time at :meth:`close`."""

    def __init__(self, alarm: FailRateAlarm, path: Path, every_s: float) -> None:
        self.alarm = alarm
        self.path = path
        self.every_s = every_s
        self._saved = alarm.counted  # when last saved (nothing counted: nothing to write)
        self._failing = False  # the last save failed (told once, and again when it works)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one save at a time (the thread's, close's)

    def load(self) -> None:
        """Resume the saved counts; a file that cannot be resumed is set aside (never an
        error that stops the server)."""
        try:
            if not self.path.exists():
                return
            if self.path.stat().st_size > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES >> 20} MB")
            doc = json.loads(self.path.read_bytes(), parse_constant=_no_constant)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            n = self.alarm.restore(doc)
        except SettingsChanged as exc:
            set_aside(self.path, f"the counts saved in {self.path} are not resumed: {exc}; "
                                 "the recipes learn afresh", ".old")
            return
        except Exception as exc:  # whatever is in the file: learned afresh, said so
            what = str(exc) if isinstance(exc, ValueError | TypeError) else \
                f"{type(exc).__name__}: {exc}"  # a missing key, a recursion: named
            set_aside(self.path, f"the counts saved in {self.path} cannot be resumed ({what}); "
                                 "the recipes learn afresh")
            return
        self._saved = self.alarm.counted
        log.info("fail-rate alarm: resumed the counts of %d recipe(s) saved at %s", n,
                 doc.get("saved_at"))

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alarm-file", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and save what was counted since the last save (a save still
        running on a hung disk is waited for :data:`CLOSE_WAIT_S` at most)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CLOSE_WAIT_S)
        self.save(wait_s=CLOSE_WAIT_S)

    def save(self, wait_s: float = -1) -> None:
        """Write the counts if any inspection was counted since the last save."""
        if not self._lock.acquire(timeout=wait_s):
            log.error("fail-rate alarm: a save of its counts to %s still runs after %.0f s: "
                      "the last counts are not saved", self.path, wait_s)
            return
        try:
            counted = self.alarm.counted
            if counted == self._saved:
                return
            data = json.dumps(self.alarm.saved(), separators=(",", ":")).encode()
            try:
                write_atomic(self.path, data, own_tmp=True)
            except OSError as exc:
                if not self._failing:
                    log.error("fail-rate alarm: cannot save its counts to %s (%s): a restart "
                              "would lose what was counted since; tried again every %g s",
                              self.path, exc, self.every_s)
                self._failing = True
                return
            if self._failing:
                log.info("fail-rate alarm: its counts are saved to %s again", self.path)
            self._failing = False
            self._saved = counted
        finally:
            self._lock.release()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.save()
            except Exception:  # the thread must go on: the next save may work
                log.exception("fail-rate alarm: saving its counts failed")


def set_aside(path: Path, why: str, suffix: str = ".bad", *,
              what: str = "fail-rate alarm", logger: logging.Logger | None = None) -> None:
    """Rename ``path`` to ``<name><suffix>`` (replacing an older one), saying ``why``
    (a WARNING of ``what``, on ``logger``: the alarm's by default)."""
    bad = path.with_name(path.name + suffix)
    say = logger or log
    say.warning("%s: %s; the file is kept as %s", what, why, bad.name)
    try:
        os.replace(path, bad)
    except OSError as exc:
        say.warning("%s: cannot set %s aside: %s", what, path, exc)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a count")
