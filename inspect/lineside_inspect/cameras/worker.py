"""One capture worker per camera: keeps only the newest frame, detects a lost source (and,
when asked, a frozen picture), and reconnects with exponential backoff and jitter.

Freshness is measured on the monotonic clock (``Frame.monotonic``): a step of the wall
clock (NTP, PTP, an operator) must never make a frame from before a trigger look newer
than it. The wall time (``Frame.timestamp``) is for display and storage only."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lineside_inspect.cameras.h26x import StreamStalled
from lineside_inspect.cameras.sources import FrameSource, SourceChanged
from lineside_inspect.errors import ImageError
from lineside_inspect.opencv import MAX_IMAGE_PIXELS
from lineside_inspect.redact import hide_secrets

log = logging.getLogger("lineside.cameras")


@dataclass
class Frame:
    image: np.ndarray
    timestamp: float  # time.time() when captured: shown and stored, never compared
    seq: int
    monotonic: float  # time.monotonic() when captured: every freshness and age check


HEALTHY_FRAMES = 10  # frames read after an open that make it a healthy spell (back-off)
REFUSED_IN_A_ROW = 5  # broken frames in a row that end a connection (one alone is skipped)


class CameraWorker:
    def __init__(self, camera_id: str, make: Callable[[], FrameSource], *,
                 stale_after_s: float = 2.0, backoff_base_s: float = 0.2,
                 backoff_max_s: float = 5.0, detect_frozen: bool = False,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.camera_id = camera_id
        # a frame over the server's max_pixels is no frame (as an upload over it is a 413):
        # a stream's 10000x10000 frames were kept, judged, stored and drawn (1.5 GB), past
        # the memory bound max_concurrency x max_pixels (docs/security.md)
        self.max_pixels = max_pixels
        self.make = make
        self.stale_after_s = stale_after_s
        # an unchanged picture for stale_after_s means a frozen source (reconnect). Off
        # unless asked: a still or dark scene (an idle station, H.264 skip frames, a
        # strobe-lit enclosure) repeats its picture too, and must not flap offline
        self.detect_frozen = detect_frozen
        # the picture a source froze on: kept across the reconnect, so the same picture
        # after it is not judged again for another stale_after_s each time (a frozen
        # continuous camera was inspected 37 times in 10 s; camera review, session 32)
        self._frozen_on: np.ndarray | None = None
        self._outage = False  # offline since the last frame delivered (logged once)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "starting"
        self._opened_at = 0.0  # monotonic time the source last opened
        self.reconnects = 0
        self.last_error: str | None = None
        self.frames = 0
        self._fps_window: list[float] = []
        self._source: FrameSource | None = None
        # called with each new frame on the capture thread; they must not block (the
        # inspection service uses them to wake an async trigger without holding a thread)
        self._listeners: list[Callable[[Frame], None]] = []

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.camera_id}",
                                        daemon=True)
        self._thread.start()

    def ask_stop(self) -> None:
        """Tell the worker to stop, not waiting: a read in progress is interrupted where
        its source can be (the packet path pulls packets until one makes a frame)."""
        self._stop.set()
        interrupt = getattr(self._source, "interrupt", None)
        if interrupt is not None:
            interrupt()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Ask the worker to stop; True if it ended within ``timeout_s``. A worker stuck
        in a blocking read is a daemon thread: it cannot hold up shutdown, and it exits
        when the read's own timeout returns."""
        self.ask_stop()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        self.state = "stopped"
        return not self._thread.is_alive()

    # -- frames ---------------------------------------------------------------------
    def latest(self) -> Frame | None:
        with self._cond:
            return self._frame

    def wait_frame_after(self, t: float, timeout_s: float) -> Frame | None:
        """The newest frame once one captured after ``t`` (``time.monotonic()``) is there,
        or None."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._frame is None or self._frame.monotonic <= t:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(remaining)
            return self._frame

    def subscribe(self, listener: Callable[[Frame], None]) -> Callable[[], None]:
        """Call ``listener(frame)`` for each new frame until the returned function is called."""
        with self._cond:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._cond:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def health(self) -> dict[str, Any]:
        frame = self.latest()
        now = time.monotonic()
        age = now - frame.monotonic if frame else None
        online = self.state == "online" and age is not None and age <= self.stale_after_s
        state = "online" if online else ("stale" if self.state == "online" else self.state)
        if state == "stale" and frame is None and now - self._opened_at <= self.stale_after_s:
            # opened, its first frame not in yet: "stale" went out retained over MQTT at
            # every start, and an MES alarm on it flickered (line review, 34). After a
            # reconnect it stays "stale" (a PLC's ErrorCode 2, re-trigger, not 1)
            state = "starting"
        return {
            "id": self.camera_id,
            "state": state,
            "fps": round(self.fps(), 2),
            "last_frame_age_s": None if age is None else round(age, 3),
            "frames": self.frames,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    def online(self) -> bool:
        return self.health()["state"] == "online"

    def fps(self) -> float:
        w = [t for t in self._fps_window if t > time.monotonic() - 5]
        return (len(w) - 1) / (w[-1] - w[0]) if len(w) > 1 and w[-1] > w[0] else 0.0

    # -- the loop -------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                source = self.make()
                self._source = source
                source.open()
            except Exception as exc:  # OpenCV and sources raise many types
                self._failed(f"open failed: {exc}")
                attempt += 1
                self._backoff(attempt)
                continue
            self._opened_at = time.monotonic()
            self.state = "online"
            if attempt:
                self.reconnects += 1
            opened, frames = time.monotonic(), self.frames
            try:
                reason = self._read_loop(source)
            except Exception as exc:  # a source's read raising killed the thread, unseen
                reason = f"read failed: {type(exc).__name__}: {exc}"
            source.close()
            self._source = None
            if self._stop.is_set():
                break
            if source.ended:  # loop: false, played to its end
                self._failed("played to its end (loop: false): not started again")
                log.info("camera %s played to its end (loop: false)", self.camera_id)
                break
            if self.frames - frames >= HEALTHY_FRAMES or time.monotonic() - opened >= self.backoff_max_s:
                # a healthy spell starts the count afresh; a source that opens and fails at
                # once (a stream dropped right after connecting) backs off as one that
                # cannot open, not every 0.1-0.2 s forever
                attempt = 0
            self._failed(reason)
            attempt += 1
            self._backoff(attempt)
        self.state = "stopped"

    def _read_loop(self, source: FrameSource) -> str:
        previous = self._frozen_on
        changed = time.monotonic()  # when the picture last changed (detect_frozen only)
        refused = 0  # frames refused in a row
        while not self._stop.is_set():
            try:
                image = source.read()
            except StreamStalled as exc:  # not a frame refused: no frame comes at all
                return f"stalled: {exc}"
            except SourceChanged as exc:  # not a frame refused: the file is another now
                return str(exc)
            except ImageError as exc:  # over max_pixels, cut short, broken: never judged
                # a lossy link's lone broken JPEG is skipped (each cost a reconnect, the
                # stream's start again); only a stream of them is a failure
                refused += 1
                self.last_error = hide_secrets(f"a frame refused: {exc}")
                if refused >= REFUSED_IN_A_ROW:
                    return f"a frame refused: {exc} ({refused} in a row)"
                continue
            refused = 0
            now = time.monotonic()
            if image is None:
                return "source failed or ended"
            height, width = image.shape[:2]
            if width * height > self.max_pixels:
                return (f"a frame of {width}x{height} = {width * height} pixels, over the "
                        f"limit of {self.max_pixels} (max_pixels)")
            if self.detect_frozen:
                small = image[::16, ::16]
                if previous is None or not np.array_equal(small, previous):
                    changed, self._frozen_on = now, None
                elif now - changed > self.stale_after_s:
                    self._frozen_on = small
                    return f"frozen: the same picture for over {self.stale_after_s:g}s"
                elif self._frozen_on is not None:
                    continue  # still the picture it froze on: not a frame to judge
                previous = small
            if self._outage:
                self._outage = False
                log.info("camera %s online again", self.camera_id)
            with self._cond:
                self.frames += 1
                frame = self._frame = Frame(image, time.time(), self.frames, now)
                self._cond.notify_all()
                listeners = list(self._listeners)
            for listener in listeners:
                listener(frame)
            self._fps_window = [t for t in self._fps_window[-60:] if t > now - 5] + [now]
        return "stopped"

    def _failed(self, reason: str) -> None:
        self.state = "offline"
        # an open error quotes the source: its password never leaves here (a 503's body,
        # the PLC's log, the retained MQTT camera state)
        self.last_error = hide_secrets(reason)
        if not self._outage:  # once per outage (until a frame comes): a line to alert on
            self._outage = True
            log.warning("camera %s offline: %s", self.camera_id, self.last_error)

    def _backoff(self, attempt: int) -> None:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        self._stop.wait(delay * random.uniform(0.5, 1.0))  # jitter spreads reconnect storms
