"""A watched rollout: after a promotion the new version's fail rate is compared with the
previous version's over the same recipe, and reviewer-confirmed false rejects of the new
version are counted; past a bound the previous version comes back by itself.

The bounds (``lifecycle.rollout`` settings, docs/lifecycle.md):

- once the new version made ``min_inspections`` inspections, its fail rate may be at most
  ``max(previous + max_fail_rate_increase, min(previous x max_fail_rate_ratio,
  1 - (1 - previous) / max_fail_rate_ratio))`` (:func:`~lineside_inspect.lifecycle.config.bound_of`:
  the fail rate grown by the ratio, or the pass rate shrunk by it), the previous
  rate taken over its last ``baseline_inspections`` inspections of the recipe before the
  promotion (no previous inspections: this bound is not applied, and said so);
- reviewers may mark at most ``max_false_rejects`` of its fails as false rejects.

The watch ends (complete) after ``watch_inspections`` inspections of the new version and
at least ``min_watch_s`` seconds.
Each decision is a pure function of the counts (:func:`judge_watch`), checked by a
thread every ``check_interval_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from lineside_inspect.lifecycle.config import RolloutSettings, bound_of

if TYPE_CHECKING:
    from lineside_inspect.lifecycle.records import Records

log = logging.getLogger("lineside.rollout")
State = Literal["watching", "rolled_back", "complete", "stopped"]


@dataclass
class Watch:
    model: str
    version: str
    previous: str
    recipe: str | None
    started_at: datetime
    actor: str
    gate_report_id: str | None
    baseline_inspections: int
    baseline_fails: int
    state: State = "watching"
    inspections: int = 0
    fails: int = 0
    false_rejects: int = 0
    checks: int = 0  # times the watch counted and decided (a status reader can wait for one)
    ended_at: datetime | None = None
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        base = self.baseline_fails / self.baseline_inspections if self.baseline_inspections else None
        return {"model": self.model, "version": self.version, "previous": self.previous,
                "recipe": self.recipe, "started_at": self.started_at, "actor": self.actor,
                "gate_report_id": self.gate_report_id, "state": self.state,
                "inspections": self.inspections, "fails": self.fails,
                "fail_rate": self.fails / self.inspections if self.inspections else None,
                "baseline_inspections": self.baseline_inspections,
                "baseline_fail_rate": base, "false_rejects": self.false_rejects,
                "checks": self.checks, "ended_at": self.ended_at, "why": self.why}


def judge_watch(w: Watch, bounds: RolloutSettings, now: datetime | None = None) -> tuple[State, str]:
    """What the counts of ``w`` call for at ``now`` (default: the present), and why."""
    if w.false_rejects > bounds.max_false_rejects:
        return "rolled_back", (f"{w.false_rejects} reviewer-confirmed false rejects of {w.model} "
                               f"{w.version}, over the bound of {bounds.max_false_rejects}")
    if w.inspections >= bounds.min_inspections and w.baseline_inspections:
        base = w.baseline_fails / w.baseline_inspections
        bound = bound_of(base, bounds)
        rate = w.fails / w.inspections
        if rate > bound:
            return "rolled_back", (
                f"fail rate {rate:.1%} over {w.inspections} inspections of {w.model} {w.version}, "
                f"above the bound {bound:.1%} (version {w.previous}: {base:.1%} over its last "
                f"{w.baseline_inspections} inspections of recipe {w.recipe or 'any'})")
    elapsed = ((now or datetime.now(UTC)) - w.started_at).total_seconds()
    if w.inspections >= bounds.watch_inspections and elapsed >= bounds.min_watch_s:
        note = "" if w.baseline_inspections else " (no earlier inspections: fail rate not compared)"
        if w.baseline_inspections and bound_of(base := w.baseline_fails / w.baseline_inspections,
                                               bounds) >= 1:
            note = (f" (version {w.previous} failed {base:.1%}: a bound of 100% or more, the "
                    "fail rate could not roll it back)")
        return "complete", (f"{w.inspections} inspections in {elapsed / 60:.0f} min within the "
                            "bounds: fail rate "
                            f"{w.fails / w.inspections:.1%}, {w.false_rejects} false rejects{note}")
    return "watching", ""


class RolloutWatcher:
    """Watches at most one rollout per model. ``on_rollback(watch, why)`` restores the
    previous version (False when it did not: another version was made active meanwhile);
    ``on_end(watch)`` records how a watch ended."""

    def __init__(self, bounds: RolloutSettings, records: Records,
                 on_rollback: Callable[[Watch, str], bool],
                 on_end: Callable[[Watch], None]) -> None:
        self.bounds = bounds
        self.records = records
        self.on_rollback = on_rollback
        self.on_end = on_end
        self._watches: dict[str, Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, model: str, version: str, previous: str, recipe: str | None, actor: str,
              gate_report_id: str | None) -> Watch:
        n, fails = self.records.verdict_counts(model=model, version=previous, recipe=recipe,
                                               last=self.bounds.baseline_inspections)
        watch = Watch(model, version, previous, recipe, datetime.now(UTC), actor, gate_report_id,
                      n, fails)
        with self._lock:
            old = self._watches.get(model)
            if old is not None and old.state == "watching":
                self._end(old, "stopped", f"superseded by the promotion of {version}")
            self._watches[model] = watch
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rollout-watch", daemon=True)
                self._thread.start()
        return watch

    def get(self, model: str) -> Watch | None:
        with self._lock:
            return self._watches.get(model)

    def watching(self, model: str) -> Watch | None:
        """The running watch of ``model``, read without the lock (one dict read), for
        callers that may hold locks the watch takes after its own."""
        w = self._watches.get(model)
        return w if w is not None and w.state == "watching" else None

    def stop(self, model: str, why: str) -> None:
        """End a watch because someone acted on the model by hand."""
        with self._lock:
            w = self._watches.get(model)
            if w is not None and w.state == "watching":
                self._end(w, "stopped", why)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.bounds.check_interval_s)
            self._wake.clear()
            try:
                self.check()
            except Exception as exc:  # a database outage: try again next time
                log.warning("rollout watch: check failed: %s", exc)

    def check(self) -> None:
        """Count and decide every running watch once."""
        with self._lock:
            watching = [w for w in self._watches.values() if w.state == "watching"]
        for w in watching:
            w.inspections, w.fails = self.records.verdict_counts(
                model=w.model, version=w.version, recipe=w.recipe, since=w.started_at)
            w.false_rejects = self.records.false_rejects(model=w.model, version=w.version,
                                                         since=w.started_at)
            w.checks += 1
            state, why = judge_watch(w, self.bounds)
            if state == "watching":
                continue
            with self._lock:
                if w.state != "watching" or self._watches.get(w.model) is not w:
                    continue
                if state == "rolled_back" and not self.on_rollback(w, why):
                    # another version was made active meanwhile: nothing was rolled back
                    state, why = "stopped", f"{why}; not rolled back: {w.version} was no longer active"
                self._end(w, state, why)

    def _end(self, w: Watch, state: State, why: str) -> None:
        w.state, w.why, w.ended_at = state, why, datetime.now(UTC)
        try:
            self.on_end(w)
        except Exception:
            log.exception("rollout watch: recording the end of %s %s failed", w.model, w.version)
