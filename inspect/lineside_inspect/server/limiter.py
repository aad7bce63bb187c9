"""Bounded concurrency with load shedding.

A request is *admitted* before its body is read: at most ``concurrency + queue`` are in
the system at once, and beyond that one is refused at once (503 + Retry-After) instead of
letting latency and memory grow without bound. An admitted request then waits (up to
``timeout_s``) for one of ``concurrency`` slots, in which decoding, inference and judging
run in a worker thread. So memory for bodies is bounded by ``(concurrency + queue) x
max_body_bytes`` and for decoded pixels by ``concurrency x max_pixels``: by configuration.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import anyio.to_thread

from lineside_inspect.errors import DeadlineExceeded, Overloaded

T = TypeVar("T")

# set while the current task holds an admission, so run() inside it does not count twice
_admitted: contextvars.ContextVar[bool] = contextvars.ContextVar("lineside_admitted", default=False)


class Limiter:
    def __init__(self, concurrency: int, queue: int, timeout_s: float) -> None:
        self.capacity = anyio.CapacityLimiter(concurrency)
        self.max_waiting = concurrency + queue
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self.in_system = 0

    @asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """A place in the system for the whole request, or :class:`Overloaded` at once."""
        if _admitted.get():
            yield
            return
        with self._lock:
            if self.in_system >= self.max_waiting:
                raise Overloaded(f"server busy: {self.in_system} requests in progress or "
                                 "queued; retry shortly")
            self.in_system += 1
        token = _admitted.set(True)
        try:
            yield
        finally:
            _admitted.reset(token)
            with self._lock:
                self.in_system -= 1

    async def run(self, fn: Callable[[], T], *, timeout_s: float | None = None) -> T:
        """Run ``fn`` in a worker thread once a slot is free (admitting the request first
        if the caller has not). ``timeout_s`` (default: the limiter's) bounds the wait."""
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        async with self.admission():
            try:
                with anyio.fail_after(wait_s):
                    await self.capacity.acquire()
            except TimeoutError:
                raise DeadlineExceeded(
                    f"request waited over {wait_s:.1f}s for an inference slot") from None
            try:
                return await anyio.to_thread.run_sync(fn)
            finally:
                self.capacity.release()
