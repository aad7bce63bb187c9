"""The limiter's slots: a cancelled caller's thread keeps its slot until it returns, so
cancelled requests can never put more inferences on the cores than ``max_concurrency``."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import anyio
import pytest

from lineside_inspect.server.limiter import Limiter

_who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_a_cancelled_run_holds_its_slot_until_its_thread_returns() -> None:
    async def main() -> None:
        limiter = Limiter(1, 4, 5.0)
        release, started = threading.Event(), threading.Event()
        running: list[int] = []

        def slow() -> str:
            running.append(1)
            started.set()
            release.wait(10)
            running.pop()
            return "slow"

        def fast() -> int:
            return len(running)  # inferences running beside this one

        first = asyncio.create_task(limiter.run(slow))
        while not started.is_set():
            await asyncio.sleep(0.01)
        first.cancel()
        second = asyncio.create_task(limiter.run(fast))
        await asyncio.sleep(0.2)
        assert not first.done() and not second.done()  # the slot is still the first's
        assert limiter.capacity.borrowed_tokens == 1
        release.set()
        assert await second == 0  # ran only once the slow one had returned
        try:
            await first
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the cancelled run completed as if not cancelled")
        assert limiter.capacity.borrowed_tokens == 0 and limiter.in_system == 0
        limiter.close()

    asyncio.run(main())


def test_runs_see_the_callers_context_and_threads_restart_after_close() -> None:
    async def main() -> None:
        limiter = Limiter(2, 0, 5.0)
        _who.set("line-3")
        assert await limiter.run(_who.get) == "line-3"
        limiter.close()
        assert await limiter.run(lambda: threading.current_thread().name.startswith("inspect"))
        limiter.close()

    asyncio.run(main())


def test_an_anyio_cancelled_run_waits_for_its_thread_without_spinning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """anyio cancels a task in a cancelled scope again on every pass of the loop: the wait
    for the thread must not wake for each (it did: ~10,000 wake-ups, a whole core, for a
    0.5 s inference). Found by the adversarial review."""
    waits: list[int] = []
    real_wait = asyncio.wait

    async def counted(fs: Any, **kwargs: Any) -> Any:
        waits.append(1)
        return await real_wait(fs, **kwargs)

    monkeypatch.setattr(asyncio, "wait", counted)

    async def main() -> None:
        limiter = Limiter(1, 4, 5.0)
        release = threading.Event()
        threading.Timer(0.4, release.set).start()
        with anyio.move_on_after(0.05) as scope:
            await limiter.run(lambda: release.wait(10))
        assert scope.cancelled_caught
        assert release.is_set()  # the scope ended only once the thread had returned
        assert len(waits) <= 3, f"{len(waits)} wake-ups while the thread ran"
        assert limiter.capacity.borrowed_tokens == 0 and limiter.in_system == 0
        assert limiter.drain(1.0)
        limiter.close()

    asyncio.run(main())


def test_free_slots_are_taken_at_once_and_never_past_concurrency_or_a_waiter() -> None:
    """A free slot is taken without waiting; never more than ``concurrency`` run at once;
    waiters are served in arrival order (a newcomer does not take a slot a waiter is
    owed), and a waiter past its deadline gets DeadlineExceeded."""
    from lineside_inspect.errors import DeadlineExceeded

    async def main() -> None:
        limiter = Limiter(2, 8, 5.0)
        # each run held until let go, one at a time: with one gate for all, the two runs
        # let in together appended to ``order`` from two threads in either order
        gates = [threading.Event() for _ in range(6)]
        lock = threading.Lock()
        now = peak = 0
        order: list[int] = []

        def work(i: int) -> int:
            nonlocal now, peak
            with lock:
                now += 1
                peak = max(peak, now)
                order.append(i)
            if i < len(gates):
                gates[i].wait(30)
            with lock:
                now -= 1
            return i

        async def until(n: int) -> None:  # the runs' threads have started (not a fixed wait)
            deadline = time.monotonic() + 30
            while len(order) < n:
                assert time.monotonic() < deadline, order
                await asyncio.sleep(0.01)

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(limiter.run(lambda i=i: work(i))))
            await asyncio.sleep(0.02)  # arrive one after another
        await until(2)
        assert limiter.capacity.borrowed_tokens == 2 and sorted(order) == [0, 1]
        with pytest.raises(DeadlineExceeded, match=r"waited over 0\.1s"):
            await limiter.run(lambda: work(99), timeout_s=0.1)
        for i in range(6):  # each slot given back goes to the waiter that came first
            gates[i].set()
            await until(min(i + 3, 6))
        assert await asyncio.gather(*tasks) == list(range(6))
        assert peak == 2 and order[2:] == [2, 3, 4, 5]  # first come, first served
        assert limiter.capacity.borrowed_tokens == 0 and limiter.in_system == 0
        limiter.close()

    asyncio.run(main())


def test_a_caller_cancelled_or_out_of_time_before_run_starts_no_inspection() -> None:
    """A free slot is taken without waiting, but not by a caller whose scope is cancelled
    already or whose deadline has passed: its inspection never runs (no decode, inference,
    save or line output for an answer nobody will read)."""
    from lineside_inspect.errors import DeadlineExceeded

    async def main() -> None:
        limiter = Limiter(2, 4, 5.0)
        ran: list[str] = []
        with anyio.CancelScope() as scope:
            scope.cancel()
            await limiter.run(lambda: ran.append("cancelled scope"))
        for timeout in (0.0, -1.0):
            with pytest.raises(DeadlineExceeded):
                await limiter.run(lambda: ran.append("past deadline"), timeout_s=timeout)
        assert ran == [] and limiter.in_system == 0 and limiter.capacity.borrowed_tokens == 0
        assert await limiter.run(lambda: "runs") == "runs"
        limiter.close()

    asyncio.run(main())


def test_the_lines_triggers_have_places_of_their_own() -> None:
    """A few API clients filling the shared places made a PLC's parts fail at once with
    "no inference slot" (ErrorCode 4), unjudged: a trigger takes one of the line's
    reserved places then, and waits for a slot in line with the rest."""
    from lineside_inspect.errors import Overloaded

    async def main() -> None:
        limiter = Limiter(1, 1, 5.0)
        limiter.reserve(1)
        release = threading.Event()
        api = [asyncio.create_task(limiter.run(lambda: release.wait(10))) for _ in range(2)]
        await asyncio.sleep(0.1)
        assert limiter.in_system == 2
        with pytest.raises(Overloaded):  # the shared places are full for the API
            await limiter.run(lambda: "api")
        line = asyncio.create_task(limiter.run(lambda: "part", reserved=True))
        await asyncio.sleep(0.1)
        assert (limiter.in_system, limiter.reserved_in) == (3, 1)
        with pytest.raises(Overloaded):  # one per station: the reserve is taken
            await limiter.run(lambda: "second part", reserved=True)
        with pytest.raises(Overloaded):  # and not the API's to take
            await limiter.run(lambda: "api")
        release.set()
        assert await line == "part" and all(await asyncio.gather(*api))
        assert (limiter.in_system, limiter.reserved_in) == (0, 0)
        assert await limiter.run(lambda: "api again") == "api again"

    asyncio.run(main())
