"""One shape for the box's loops that talk to its hub: the forwarder (``forward.py``), the
review sync (``reviews.py``) and the status reporter (``status.py``).

A :class:`PeriodicHubTask` is a daemon thread that runs a step, then waits
``interval_s`` (or goes on at once when the step says more is pending, or when woken).
A step that fails is logged (the first time and every 50th in a row, so an outage of
hours is not a log line a second), counted, and tried again after an exponential
backoff with jitter (``retry_min_s`` doubling up to ``retry_max_s``), so a fleet of
boxes does not hammer a hub that comes back, in step. A bug in a step is logged with
its traceback and retried like an outage: the loop outlives it.

Every task's figures go to the box's ``/metrics`` (:class:`TaskMetrics`):
``lineside_fleet_task_errors_total{task, kind}``,
``lineside_fleet_task_last_success_timestamp_seconds{task}`` and
``lineside_fleet_task_consecutive_failures{task}``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from lineside_inspect.errors import HubRefused, HubUnavailable, LinesideError

if TYPE_CHECKING:
    from lineside_inspect.server.metrics import Metrics

log = logging.getLogger("lineside.fleet")
LOG_EVERY = 50  # failures in a row between two log lines
GROW_AFTER = 8  # batches through in a row before a halved batch doubles again


class BatchSize:
    """How many events a task sends at once: halved when the hub refuses a body for its
    size or cuts it off (the same size again would fail again, for good), doubled back
    after :data:`GROW_AFTER` batches in a row went through, up to ``most``. The forwarder
    and the review sync share it."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.size = most
        self._through = 0

    def halve(self, sent: int) -> bool:
        """``sent`` was refused for its size: half as many next time; False when it was
        one already (nothing smaller to try)."""
        self._through = 0
        if sent <= 1:
            return False
        self.size = max(1, sent // 2)
        return True

    def went_through(self) -> None:
        self._through += 1
        if self._through >= GROW_AFTER and self.size < self.most:
            self.size, self._through = min(self.most, self.size * 2), 0


class TaskMetrics:
    """The fleet tasks' figures, one set per registry (shared by every task of a box)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "lineside_fleet_task_errors", "Failed rounds of the box's hub tasks (forward, "
            "reviews, status, models) by kind (hub_unavailable, hub_refused, internal, and "
            "for models package_refused)", ["task", "kind"], registry=registry)
        self.last_success = Gauge(
            "lineside_fleet_task_last_success_timestamp_seconds", "When each hub task last "
            "completed a round with the hub (Unix time; 0: not yet)", ["task"],
            registry=registry)
        self.failing = Gauge(
            "lineside_fleet_task_consecutive_failures", "Failed rounds in a row of each hub "
            "task (0: the last one worked)", ["task"], registry=registry)

    def succeeded(self, task: str) -> None:
        self.last_success.labels(task).set(time.time())
        self.failing.labels(task).set(0)

    def failed(self, task: str, kind: str, in_a_row: int | None = None) -> None:
        self.errors.labels(task, kind).inc()
        if in_a_row is not None:
            self.failing.labels(task).set(in_a_row)


_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, TaskMetrics] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def task_metrics(metrics: Metrics) -> TaskMetrics:
    """The registry's :class:`TaskMetrics`, made by the first task that asks."""
    with _SHARED_LOCK:
        found = _SHARED.get(metrics.registry)
        if found is None:
            found = _SHARED[metrics.registry] = TaskMetrics(metrics.registry)
        return found


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, HubUnavailable):
        return "hub_unavailable"
    if isinstance(exc, HubRefused):
        return "hub_refused"
    return "internal"


class PeriodicHubTask:
    """``step`` (True: more is pending, run again at once) every ``interval_s`` on its own
    daemon thread, with backoff while it fails. ``on_failure(kind, message)`` lets the
    owner count or refresh its own figures too."""

    def __init__(self, name: str, step: Callable[[], bool], *, interval_s: float,
                 retry_min_s: float, retry_max_s: float, waiting: str,
                 metrics: Metrics | None = None,
                 on_failure: Callable[[str, str], None] | None = None) -> None:
        self.name = name
        self.step = step
        self.interval_s = interval_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = max(retry_min_s, retry_max_s)
        self.waiting = waiting  # what the log says waits meanwhile
        self.metrics = task_metrics(metrics) if metrics is not None else None
        self.on_failure = on_failure
        self.failures = 0  # in a row
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fleet-{name}", daemon=True)

    # -- life ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                more = self.step()
            except LinesideError as exc:
                self._failed(error_kind(exc), exc.message)
                continue
            except Exception as exc:  # a bug or a local database outage: logged, retried
                log.exception("fleet: %s failed", self.name)
                self._failed("internal", type(exc).__name__)
                continue
            self._succeeded()
            if not more:  # caught up: wait for the next round, or to be woken
                self._wake.wait(self.interval_s)
                self._wake.clear()

    def _succeeded(self) -> None:
        if self.failures:
            log.info("fleet: %s: the hub is reachable again", self.name)
        self.failures, self.last_error = 0, None
        if self.metrics is not None:
            self.metrics.succeeded(self.name)

    def _failed(self, kind: str, message: str) -> None:
        self.failures += 1
        self.last_error = message
        if self.metrics is not None:
            self.metrics.failed(self.name, kind, self.failures)
        if self.failures == 1 or self.failures % LOG_EVERY == 0:
            log.warning("fleet: %s: %s (attempt %d); %s", self.name, message, self.failures,
                        self.waiting)
        if self.on_failure is not None:
            try:
                self.on_failure(kind, message)
            except Exception as exc:  # figures must not end the loop
                log.debug("fleet: %s: failure hook: %s", self.name, exc)
        delay = min(self.retry_max_s, self.retry_min_s * 2 ** min(self.failures - 1, 16))
        self._stop.wait(delay * random.uniform(0.8, 1.0))  # jitter: boxes do not retry in step


class HubTask:
    """What the forwarder, the review sync and the status reporter show of their
    :class:`PeriodicHubTask` (``loop``): start, stop (after ``stop_timeout_s`` unless
    told), wake, and the failures in a row with the last error."""

    loop: PeriodicHubTask
    stop_timeout_s = 15.0

    def start(self) -> None:
        self.loop.start()

    def stop(self, timeout_s: float | None = None) -> None:
        self.loop.stop(self.stop_timeout_s if timeout_s is None else timeout_s)

    def wake(self) -> None:
        self.loop.wake()

    @property
    def failures(self) -> int:
        """Failed rounds in a row."""
        return self.loop.failures

    @property
    def last_error(self) -> str | None:
        return self.loop.last_error
