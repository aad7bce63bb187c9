"""All cameras of a server: workers, triggered inspection, continuous inspection."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

from lineside_inspect.cameras.sources import make_source
from lineside_inspect.cameras.worker import CameraWorker, Frame
from lineside_inspect.config import CameraConfig
from lineside_inspect.errors import CameraUnavailable, NotFoundError, echo
from lineside_inspect.opencv import MAX_IMAGE_PIXELS

# once the server is stopping, how long a trigger still waits for its frame: a live camera
# delivers one well within it; a stalled one held its trigger's whole timeout_s (up to
# 30 s), and with it the shutdown past docker stop's 10 s
STOPPING_WAIT_S = 1.0

# at the process's end (``lineside`` returning), how much longer a worker that
# :meth:`CameraManager.stop` left in a read is waited for before the process ends without
# finalizing (see :func:`end_if_left_in_a_read`)
EXIT_WAIT_S = 1.0

log = logging.getLogger("lineside.cameras")

# workers CameraManager.stop left in a read, each with the time its own timeouts end
_LEFT: list[tuple[CameraWorker, float]] = []
# managers started and not stopped: the process may end without their server's shutdown
# (an exception out of start-up or serving), stopped by end_if_left_in_a_read
_RUNNING: weakref.WeakSet[CameraManager] = weakref.WeakSet()


class CameraManager:
    def __init__(self, cameras: list[CameraConfig], *,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.configs = {c.id: c for c in cameras}
        self.max_pixels = max_pixels  # a bigger frame is refused (the camera goes offline)
        self.workers: dict[str, CameraWorker] = {}
        self.last_results: dict[str, Any] = {}  # camera id -> its last inspection (live view)
        # camera id -> ((frame seq, last inspection id), the frame drawn as JPEG): shared by
        # every viewer (server/routes/cameras.py)
        self.drawn: dict[str, tuple[tuple[int, str], bytes]] = {}
        # the recipe a camera's PLC station triggers with (the line sets this): a PLC may
        # switch it, while HTTP triggers and continuous cameras keep the configured one
        self.plc_recipe: Callable[[str], str | None] | None = None
        # set on SIGTERM (``close``): triggers still waiting for a frame wait at most
        # STOPPING_WAIT_S more; ``_wakers`` wake them (each called on the event loop)
        self.stopping_at: float | None = None
        self._wakers: set[Callable[[], None]] = set()

    async def close(self) -> None:
        """The server is stopping (SIGTERM): a trigger still waiting for its frame gets it
        within :data:`STOPPING_WAIT_S`, else its 503 at once."""
        if self.stopping_at is None:
            self.stopping_at = time.monotonic()
        for wake in list(self._wakers):
            wake()

    def start(self) -> None:
        _RUNNING.add(self)
        for cfg in self.configs.values():
            def make(cfg: CameraConfig = cfg) -> Any:
                return make_source(cfg.source, open_timeout_s=cfg.open_timeout_s,
                                   read_timeout_s=cfg.read_timeout_s, loop=cfg.loop, fps=cfg.fps,
                                   max_pixels=self.max_pixels)

            # a continuous camera re-judging one frozen picture would report parts that are
            # not there: it reconnects. A triggered one sees a still scene between parts,
            # which must not take it offline (docs/line-integration.md, "Cameras")
            worker = CameraWorker(cfg.id, make, stale_after_s=cfg.stale_after_s,
                                  detect_frozen=cfg.mode == "continuous",
                                  max_pixels=self.max_pixels)
            worker.start()
            self.workers[cfg.id] = worker

    def stop(self, timeout_s: float = 2.0) -> dict[str, bool]:
        """Stop every worker; all are asked at once so the total stays within ``timeout_s``."""
        _RUNNING.discard(self)
        deadline = time.monotonic() + timeout_s
        # every read interrupted first: one worker stuck opening its camera took the whole
        # wait, and the stream after it was interrupted with none left (session 49)
        for w in self.workers.values():
            w.ask_stop()
        stopped = {cid: w.stop(max(0.0, deadline - time.monotonic()))
                   for cid, w in self.workers.items()}
        if left := [cid for cid, ok in stopped.items() if not ok]:
            # a worker still inside an OpenCV read (an open or a read blocked up to its
            # timeout): were the interpreter to finalize under it, its read returning takes
            # the GIL, Python ends the thread (pthread_exit) through OpenCV's catch (...) and
            # the process aborts ("FATAL: exception not rethrown", exit 134 on Ctrl-C; soak,
            # session 40). At exit, before finalizing, each is waited for until its own
            # timeouts have passed, then let be
            bound = {cid: time.monotonic() + 1.0 + max(self.configs[cid].open_timeout_s,
                                                       self.configs[cid].read_timeout_s)
                     for cid in left}
            waiting = [(self.workers[cid], bound[cid]) for cid in left]
            _LEFT.extend(waiting)
            atexit.register(_join_at_exit, waiting)
        return stopped

    def worker(self, camera_id: str) -> CameraWorker:
        if camera_id not in self.workers:
            raise NotFoundError(f"unknown camera {echo(camera_id)} (configured: "
                                f"{', '.join(self.workers) or 'none'})")
        return self.workers[camera_id]

    def health(self) -> list[dict[str, Any]]:
        out = []
        for cid, w in self.workers.items():
            cfg = self.configs[cid]
            out.append({**w.health(), "source": cfg.source, "mode": cfg.mode, "recipe": cfg.recipe,
                        "plc_recipe": self.plc_recipe(cid) if self.plc_recipe else None})
        return out

    async def fresh_frame(self, camera_id: str, *, after: float, timeout_s: float) -> Frame:
        """The first frame captured after ``after`` (``time.monotonic()`` of the trigger),
        waiting up to ``timeout_s``; else :class:`CameraUnavailable`. Never a frame from
        before the trigger, however fresh (there is no fallback to the newest one).

        Waits on the event loop (the capture thread wakes it), never in a worker thread:
        any number of pending triggers costs no thread, and ``timeout_s`` bounds the wait."""
        worker = self.worker(camera_id)
        if worker.state in ("offline", "stopped"):  # known down: answer at once
            h = worker.health()
            raise CameraUnavailable(f"camera {camera_id} is {h['state']}: {h['last_error']}", h)
        frame = await _frame_after(worker, after, timeout_s, self)
        if frame is None:
            h = worker.health()
            if self.stopping_at is not None:
                raise CameraUnavailable(f"camera {camera_id} ({h['state']}): the server is "
                                        "stopping and no frame came; trigger again", h)
            raise CameraUnavailable(
                f"camera {camera_id} ({h['state']}): no frame captured within {timeout_s:.1f}s "
                "of the trigger", h)
        return frame


async def _frame_after(worker: CameraWorker, t: float, timeout_s: float,
                       manager: CameraManager) -> Frame | None:
    """The first frame of ``worker`` captured after ``t`` (``time.monotonic()``), or None.
    Only when that frame was already replaced before this looked (a loop late to run the
    trigger) is it the newest one, still captured after ``t``. Once ``manager`` is
    stopping (:meth:`CameraManager.close` wakes the wait), it ends
    :data:`STOPPING_WAIT_S` after that (or after it began, if later) at the latest."""
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()
    first: list[Frame] = []  # written on the capture thread, read after ``arrived``

    def on_frame(frame: Frame) -> None:
        if not first and frame.monotonic > t:
            # kept here: the worker keeps only its newest frame, and a busy loop may wake
            # after later ones replaced this one
            first.append(frame)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(arrived.set)

    unsubscribe = worker.subscribe(on_frame)
    manager._wakers.add(arrived.set)
    try:
        latest = worker.latest()
        if latest is not None and latest.monotonic > t:
            # already captured (the earliest known of it and any frame seen since)
            return min([latest, *first], key=lambda f: f.seq)
        began = time.monotonic()
        deadline = began + timeout_s
        while not first:
            stopping_at = manager.stopping_at
            if stopping_at is not None:
                # from the stop, or from this trigger if it came later (during drain_s,
                # which serves on: a live camera's trigger is still answered)
                deadline = min(deadline, max(stopping_at, began) + STOPPING_WAIT_S)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            arrived.clear()  # a frame sets it again; ``first`` is checked before each wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), left)
        return first[0] if first else None
    finally:
        manager._wakers.discard(arrived.set)
        unsubscribe()


def _join_at_exit(left: list[tuple[CameraWorker, float]]) -> None:
    """Wait for workers :meth:`CameraManager.stop` left in a read, each until its bound
    (``time.monotonic()``), before the interpreter finalizes."""
    for worker, bound in left:
        worker.stop(max(0.0, bound - time.monotonic()))


def end_if_left_in_a_read(code: int, wait_s: float = EXIT_WAIT_S) -> None:
    """Called by ``lineside`` as it returns ``code``: a camera worker still in a read of
    its source (a stalled stream, its ``read_timeout_s`` up to 300 s) is waited for
    ``wait_s`` more at most; one still there then ends the process here with ``code``
    (``os._exit``: logs and output flushed, the store already closed by the server's
    shutdown), not finalized. Waiting for its own timeouts held a Ctrl-C for as long as
    ``read_timeout_s`` (20 s, silently), and a read outlasting them met the finalizing
    interpreter: "FATAL: exception not rethrown", an abort (docs/security.md, session 49)."""
    deadline = time.monotonic() + wait_s
    # a manager its server never stopped (``lineside`` ending on an exception from the
    # application's start-up or from serving): its reads interrupted, all before any is
    # waited for, as the server's shutdown does; rather than finalizing under them
    for manager in list(_RUNNING):
        manager.stop(max(0.0, deadline - time.monotonic()))
    stuck = [w.camera_id for w, bound in _LEFT
             if not w.stop(max(0.0, min(bound, deadline) - time.monotonic()))]
    if not stuck:
        return
    log.warning("camera %s still in a read of its source (a stalled stream): the process "
                "ends without waiting for its read_timeout_s", ", ".join(stuck))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
