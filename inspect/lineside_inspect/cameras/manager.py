"""All cameras of a server: workers, triggered inspection, continuous inspection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from lineside_inspect.cameras.sources import make_source
from lineside_inspect.cameras.worker import CameraWorker, Frame
from lineside_inspect.config import CameraConfig
from lineside_inspect.errors import LinesideError, NotFoundError


class CameraUnavailable(LinesideError):
    """Offline camera or no fresh frame in time: never a verdict on a stale frame."""

    code = "camera_unavailable"
    status = 503

    def __init__(self, message: str, health: dict[str, Any]) -> None:
        super().__init__(message)
        self.health = health


class CameraManager:
    def __init__(self, cameras: list[CameraConfig]) -> None:
        self.configs = {c.id: c for c in cameras}
        self.workers: dict[str, CameraWorker] = {}
        self._continuous: list[threading.Thread] = []
        self._stop = threading.Event()
        self.last_results: dict[str, Any] = {}

    def start(self) -> None:
        for cfg in self.configs.values():
            def make(cfg: CameraConfig = cfg) -> Any:
                return make_source(cfg.source, open_timeout_s=cfg.open_timeout_s,
                                   read_timeout_s=cfg.read_timeout_s, loop=cfg.loop, fps=cfg.fps)

            worker = CameraWorker(cfg.id, make, stale_after_s=cfg.stale_after_s)
            worker.start()
            self.workers[cfg.id] = worker

    def start_continuous(self, inspect: Callable[[str, Frame], Any]) -> None:
        """Inspect each continuous-mode camera's newest frame at its ``rate_hz``."""
        for cfg in self.configs.values():
            if cfg.mode != "continuous":
                continue

            def loop(cfg: CameraConfig = cfg) -> None:
                worker, last_seq = self.workers[cfg.id], 0
                while not self._stop.wait(1.0 / cfg.rate_hz):
                    frame = worker.latest()
                    if frame is None or frame.seq == last_seq or not worker.online():
                        continue
                    last_seq = frame.seq
                    try:
                        self.last_results[cfg.id] = inspect(cfg.id, frame)
                    except LinesideError:
                        continue

            t = threading.Thread(target=loop, name=f"continuous-{cfg.id}", daemon=True)
            t.start()
            self._continuous.append(t)

    def stop(self, timeout_s: float = 2.0) -> dict[str, bool]:
        """Stop every worker; all are asked at once so the total stays within ``timeout_s``."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for w in self.workers.values():
            w._stop.set()
        stopped = {cid: w.stop(max(0.0, deadline - time.monotonic()))
                   for cid, w in self.workers.items()}
        for t in self._continuous:
            t.join(max(0.0, deadline - time.monotonic()))
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

    def fresh_frame(self, camera_id: str, *, trigger_time: float, timeout_s: float) -> Frame:
        """The first frame captured after the trigger, or the newest one if it is at most
        ``max_frame_age_s`` old; else :class:`CameraUnavailable`."""
        worker = self.worker(camera_id)
        cfg = self.configs[camera_id]
        if worker.state in ("offline", "stopped"):  # known down: answer at once
            h = worker.health()
            raise CameraUnavailable(f"camera {camera_id} is {h['state']}: {h['last_error']}", h)
        latest = worker.latest()
        if latest is not None and trigger_time - latest.timestamp <= 0:
            return latest
        frame = worker.wait_frame_after(trigger_time, timeout_s)
        if frame is None:
            if latest is not None and time.time() - latest.timestamp <= cfg.max_frame_age_s:
                return latest
            h = worker.health()
            raise CameraUnavailable(
                f"camera {camera_id} ({h['state']}): no fresh frame within {timeout_s:.1f}s "
                "of the trigger", h)
        return frame
