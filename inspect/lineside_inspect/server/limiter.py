"""Bounded concurrency with load shedding: inference runs in worker threads, at most
``concurrency`` at once and ``queue`` waiting; beyond that a request is refused at once
(503 + Retry-After) instead of letting latency grow without bound."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from lineside_inspect.errors import LinesideError

T = TypeVar("T")


class Overloaded(LinesideError):
    code = "overloaded"
    status = 503


class DeadlineExceeded(LinesideError):
    code = "deadline_exceeded"
    status = 503


class Limiter:
    def __init__(self, concurrency: int, queue: int, timeout_s: float) -> None:
        self.capacity = anyio.CapacityLimiter(concurrency)
        self.max_waiting = concurrency + queue
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self.in_system = 0

    async def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self.in_system >= self.max_waiting:
                raise Overloaded(f"server busy: {self.in_system} requests in progress or "
                                 "queued; retry shortly")
            self.in_system += 1
        try:
            with anyio.fail_after(self.timeout_s):
                await self.capacity.acquire()
            try:
                return await anyio.to_thread.run_sync(fn)
            finally:
                self.capacity.release()
        except TimeoutError:
            raise DeadlineExceeded(
                f"request waited over {self.timeout_s:.1f}s for an inference slot") from None
        finally:
            with self._lock:
                self.in_system -= 1
