"""Bounded concurrency with load shedding.

A request is *admitted* before its body is read: at most ``concurrency + queue`` are in
the system at once, and beyond that one is refused at once (503 + Retry-After) instead of
letting latency and memory grow without bound. An admitted request then waits (up to
``timeout_s``) for one of ``concurrency`` slots, in which decoding, inference and judging
run in a worker thread. So memory for bodies is bounded by ``(concurrency + queue) x
max_body_bytes`` and for decoded pixels by ``concurrency x max_pixels``: by configuration.

A *holder* (an API key) may hold at most ``per_holder`` of those places: one key's slow
uploads, each allowed ``body_timeout_s`` + size / ``min_body_rate``, would otherwise hold
every place for over an hour while every other key and the cameras got 503.

A PLC's triggers have places of their own (``reserved``: one per station, since a
station's handshake has one part in flight at a time): a few API clients filling the
shared places made the line's parts fail with "no inference slot" at once, unjudged,
while slots freed every 100 ms. Admitted, they wait for a slot in line with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from lineside_inspect.errors import DeadlineExceeded, Overloaded

T = TypeVar("T")

# set while the current task holds an admission, so run() inside it does not count twice
_admitted: contextvars.ContextVar[bool] = contextvars.ContextVar("lineside_admitted", default=False)


class Limiter:
    def __init__(self, concurrency: int, queue: int, timeout_s: float,
                 per_holder: int | None = None) -> None:
        self.capacity = anyio.CapacityLimiter(concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._running: set[futures.Future[Any]] = set()  # inspections in threads now
        self.max_waiting = concurrency + queue
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self.in_system = 0
        self.per_holder = self.max_waiting if per_holder is None else per_holder
        self._held: dict[str, int] = {}  # places each holder has now
        self.reserved = 0  # places only the line's triggers take (``reserve``)
        self.reserved_in = 0  # of them, taken now

    def reserve(self, places: int) -> None:
        """Keep ``places`` more places for the line's triggers (``admission(reserved=True)``)."""
        with self._lock:
            self.reserved += places

    @asynccontextmanager
    async def admission(self, holder: str | None = None,
                        reserved: bool = False) -> AsyncIterator[None]:
        """A place in the system for the whole request, or :class:`Overloaded` at once.
        ``holder`` (a key's name) may have at most ``per_holder`` places; None: no share.
        ``reserved``: one of the line's own places when the shared ones are taken."""
        if _admitted.get():
            yield
            return
        with self._lock:
            full = self.in_system - self.reserved_in >= self.max_waiting
            own = reserved and full and self.reserved_in < self.reserved
            if full and not own:
                raise Overloaded(f"server busy: {self.in_system} requests in progress or "
                                 "queued; retry shortly")
            held = self._held.get(holder, 0) if holder is not None else 0
            if holder is not None and held >= self.per_holder:
                raise Overloaded(f"key {holder!r} has {held} requests in progress or queued, "
                                 f"its share of the server (max_places_per_key); retry once "
                                 "one is answered")
            self.in_system += 1
            self.reserved_in += own
            if holder is not None:
                self._held[holder] = held + 1
        token = _admitted.set(True)
        try:
            yield
        finally:
            _admitted.reset(token)
            with self._lock:
                self.in_system -= 1
                if own:
                    self.reserved_in -= 1
                if holder is not None:
                    left = self._held[holder] - 1
                    if left:
                        self._held[holder] = left
                    else:
                        del self._held[holder]

    async def run(self, fn: Callable[[], T], *, timeout_s: float | None = None,
                  reserved: bool = False, holder: str | None = None) -> T:
        """Run ``fn`` in a worker thread once a slot is free (admitting the request first
        if the caller has not; ``reserved``: the line's trigger, see :meth:`admission`).
        ``timeout_s`` (default: the limiter's) bounds the wait."""
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        async with self.admission(holder, reserved=reserved):
            # a caller cancelled already (its scope, or a deadline) starts no inspection
            await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                # a free slot is taken at once (none is free while others wait for one):
                # the deadline's cancel scope and anyio's checkpoint after acquiring cost a
                # pass of the event loop per inspection otherwise. A deadline already
                # passed waits for nothing.
                if wait_s <= 0:
                    raise anyio.WouldBlock
                self.capacity.acquire_nowait()
            except anyio.WouldBlock:
                try:
                    with anyio.fail_after(wait_s):
                        await self.capacity.acquire()
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"request waited over {wait_s:.1f}s for an inference slot") from None
            try:
                return await self._in_thread(fn)
            finally:
                self.capacity.release()

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """``fn`` in one of this limiter's own threads. A thread cannot be stopped, so a
        caller cancelled meanwhile (shutdown, a deadline) still holds its slot until ``fn``
        returns, then sees the cancellation: cancelled requests never put more inferences
        on the cores than ``concurrency``. (anyio's ``to_thread.run_sync`` did this for
        anyio's cancel scopes but not for a task's own ``cancel()``.) The standard library's
        executor hands work over in ~0.19 ms where anyio's worker took ~0.37 (measured side
        by side), and every inspection pays the hand-over."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(int(self.capacity.total_tokens),
                                            thread_name_prefix="inspect")
        work = self._pool.submit(contextvars.copy_context().run, fn)
        self._running.add(work)
        work.add_done_callback(self._running.discard)
        future = asyncio.wrap_future(work)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # shielded: anyio re-cancels a task in a cancelled scope on every loop pass,
            # which would wake this wait in a busy loop until the thread returns
            with anyio.CancelScope(shield=True):
                while not future.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({future})
            raise

    def drain(self, timeout_s: float) -> bool:
        """Wait (blocking, up to ``timeout_s``) for the inspections running in threads; True
        if none is left. Shutdown calls it before the store closes: an inspection whose
        request was cancelled still ends in a save."""
        running = list(self._running)
        return not futures.wait(running, timeout=timeout_s).not_done if running else True

    def close(self) -> None:
        """Let the threads go (a new run starts new ones)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
