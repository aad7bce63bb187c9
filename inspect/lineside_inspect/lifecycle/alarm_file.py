"""The fail-rate alarm's counts in a file, so that a restart resumes them.

Why: without it a restart (a power cut at night, an update) learns every recipe's usual
rate again from the parts after it, and an alarm raised before ends without a word. On a
line whose new look began before the restart, that look would be learned as usual.

The counts are written whole (temp file, fsync, rename) every ``save_every_s`` when
inspections were counted since, and at shutdown; a crash loses at most the last few
seconds of counts. A file that cannot be read or does not fit the settings is set aside
as ``<name>.bad`` (kept for a look, never deleted) and the alarm learns afresh, said so.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from lineside_inspect.atomic import write_atomic
from lineside_inspect.lifecycle.alarm import FailRateAlarm

log = logging.getLogger("lineside.alarm")
MAX_BYTES = 64 << 20  # a larger file is not the alarm's (a recipe's tracks take ~2 KB)


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
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("fail-rate alarm: cannot read %s (%s): learned afresh", self.path, exc)
            return
        try:
            if size > MAX_BYTES:
                raise ValueError(f"{size} bytes")
            doc = json.loads(self.path.read_bytes())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            n = self.alarm.restore(doc)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            bad = self.path.with_name(self.path.name + ".bad")
            log.warning("fail-rate alarm: the counts saved in %s are not resumed (%s): learned "
                        "afresh; the file is kept as %s", self.path, exc, bad.name)
            try:
                os.replace(self.path, bad)
            except OSError as move:
                log.warning("fail-rate alarm: cannot set %s aside: %s", self.path, move)
            return
        self._saved = self.alarm.counted
        log.info("fail-rate alarm: resumed the counts of %d recipe(s) saved at %s", n,
                 doc.get("saved_at"))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alarm-file", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and save what was counted since the last save."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.save()

    def save(self) -> None:
        """Write the counts if any inspection was counted since the last save."""
        with self._lock:
            counted = self.alarm.counted
            if counted == self._saved:
                return
            data = json.dumps(self.alarm.saved(), separators=(",", ":")).encode()
            try:
                write_atomic(self.path, data)
            except OSError as exc:
                if not self._failing:
                    log.error("fail-rate alarm: cannot save its counts to %s (%s): a restart "
                              "would learn afresh; tried again every %.0f s", self.path, exc,
                              self.every_s)
                self._failing = True
                return
            if self._failing:
                log.info("fail-rate alarm: its counts are saved to %s again", self.path)
            self._failing = False
            self._saved = counted

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.save()
            except Exception:  # the thread must go on: the next save may work
                log.exception("fail-rate alarm: saving its counts failed")
