"""All cameras of a server: workers, triggered inspection, continuous inspection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from lineside_inspect.cameras.sources import make_source
from lineside_inspect.cameras.worker import CameraWorker, Frame
from lineside_inspect.config import CameraConfig
from lineside_inspect.errors import CameraUnavailable, NotFoundError


class CameraManager:
    def __init__(self, cameras: list[CameraConfig]) -> None:
        self.configs = {c.id: c for c in cameras}
        self.workers: dict[str, CameraWorker] = {}
        self.last_results: dict[str, Any] = {}  # camera id -> its last inspection (live view)

    def start(self) -> None:
        for cfg in self.configs.values():
            def make(cfg: CameraConfig = cfg) -> Any:
                return make_source(cfg.source, open_timeout_s=cfg.open_timeout_s,
                                   read_timeout_s=cfg.read_timeout_s, loop=cfg.loop, fps=cfg.fps)

            worker = CameraWorker(cfg.id, make, stale_after_s=cfg.stale_after_s)
            worker.start()
            self.workers[cfg.id] = worker

    def stop(self, timeout_s: float = 2.0) -> dict[str, bool]:
        """Stop every worker; all are asked at once so the total stays within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for w in self.workers.values():
            w._stop.set()
        stopped = {cid: w.stop(max(0.0, deadline - time.monotonic()))
                   for cid, w in self.workers.items()}
        return stopped

    def worker(self, camera_id: str) -> CameraWorker:
        if camera_id not in self.workers:
            raise NotFoundError(f"unknown camera {camera_id!r} (configured: "
                                f"{', '.join(self.workers) or 'none'})")
        return self.workers[camera_id]

    def health(self) -> list[dict[str, Any]]:
        out = []
        for cid, w in self.workers.items():
            cfg = self.configs[cid]
            out.append({**w.health(), "source": cfg.source, "mode": cfg.mode, "recipe": cfg.recipe})
        return out

    async def fresh_frame(self, camera_id: str, *, trigger_time: float, timeout_s: float) -> Frame:
        """The first frame captured after the trigger, or the newest one if it is at most
        ``max_frame_age_s`` old; else :class:`CameraUnavailable`.

        Waits on the event loop (the capture thread wakes it), never in a worker thread:
        any number of pending triggers costs no thread, and ``timeout_s`` bounds the wait."""
        worker = self.worker(camera_id)
        cfg = self.configs[camera_id]
        if worker.state in ("offline", "stopped"):  # known down: answer at once
            h = worker.health()
            raise CameraUnavailable(f"camera {camera_id} is {h['state']}: {h['last_error']}", h)
        latest = worker.latest()
        if latest is not None and trigger_time - latest.timestamp <= 0:
            return latest
        frame = await _frame_after(worker, trigger_time, timeout_s)
        if frame is None:
            if latest is not None and time.time() - latest.timestamp <= cfg.max_frame_age_s:
                return latest
            h = worker.health()
            raise CameraUnavailable(
                f"camera {camera_id} ({h['state']}): no fresh frame within {timeout_s:.1f}s "
                "of the trigger", h)
        return frame


async def _frame_after(worker: CameraWorker, t: float, timeout_s: float) -> Frame | None:
    """The first frame of ``worker`` captured after ``t`` (``time.time()``), or None."""
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()

    def on_frame(frame: Frame) -> None:
        if frame.timestamp > t:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(arrived.set)

    unsubscribe = worker.subscribe(on_frame)
    try:
        frame = worker.latest()
        if frame is None or frame.timestamp <= t:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), timeout_s)
            frame = worker.latest()
        return frame if frame is not None and frame.timestamp > t else None
    finally:
        unsubscribe()
