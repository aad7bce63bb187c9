"""Shadow mode: a candidate judges a sample of live frames beside the active model, off
the verdict path, and every disagreement is kept with both results for a reviewer.

Off the verdict path means: the service's output hook (:meth:`ShadowRunner.offer`) runs
after the verdict was made and stored, and only draws a random number and puts the
inspection into a bounded queue without waiting (a full queue drops the frame and counts
it). One worker thread, at the lowest scheduling priority (``nice`` 19) and with its own
single-threaded onnxruntime session (so the inference runs on that thread, not in a pool
at normal priority), takes frames from the queue: the shadow gets the CPU the line leaves
over and can neither delay nor change a verdict. ``lineside bench shadow`` measures it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from lineside_inspect.inspector import Inspection, inspect
from lineside_inspect.lifecycle.config import ShadowSettings
from lineside_inspect.lifecycle.gate import rules_of
from lineside_inspect.runtime.detector import Detector

if TYPE_CHECKING:
    from lineside_inspect.lifecycle.capture import CapturePolicy
    from lineside_inspect.lifecycle.records import Records
    from lineside_inspect.store import Store

log = logging.getLogger("lineside.shadow")
PERSIST_EVERY_S = 2.0  # the run's counters reach the database at least this often
SHADOW_CAPTURE = "shadow_disagreement"


@dataclass
class ShadowSession:
    run_id: str
    model: str
    detector: Detector
    sample_rate: float
    started_at: datetime
    started_by: str
    offered: int = 0
    compared: int = 0
    agreed: int = 0
    dropped: int = 0
    errors: int = 0
    stopped_at: datetime | None = None
    ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=500))

    @property
    def version(self) -> str:
        return self.detector.card.version

    @property
    def sha256(self) -> str:
        return self.detector.card.sha256

    def counts(self) -> dict[str, int]:
        return {"offered": self.offered, "compared": self.compared, "agreed": self.agreed,
                "dropped": self.dropped, "errors": self.errors}


class ShadowRunner:
    """The shadows of a server's models (at most one per model) and their worker."""

    def __init__(self, settings: ShadowSettings, records: Records, store: Store,
                 capture: CapturePolicy | None = None) -> None:
        self.settings = settings
        self.records = records
        self.store = store
        self.capture = capture
        self._sessions: dict[str, ShadowSession] = {}
        self._queue: queue.Queue[tuple[ShadowSession, Inspection]] = queue.Queue(settings.queue)
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_persist = 0.0

    # -- control ----------------------------------------------------------------------
    def start(self, model: str, detector: Detector, sample_rate: float, actor: str) -> ShadowSession:
        """Shadow ``model``'s active version with ``detector`` (replacing any shadow it had)."""
        session = ShadowSession(uuid.uuid4().hex, model, detector, sample_rate,
                                datetime.now(UTC), actor)
        self.records.start_shadow(session.run_id, model=model, version=detector.card.version,
                                  sha256=detector.card.sha256, sample_rate=sample_rate)
        with self._lock:
            old = self._sessions.get(model)
            self._sessions[model] = session
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
                self._thread.start()
        if old is not None:
            self._finish(old)
        return session

    def stop(self, model: str) -> ShadowSession | None:
        with self._lock:
            session = self._sessions.pop(model, None)
        if session is not None:
            self._finish(session)
        return session

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(10)
        for s in sessions:
            with contextlib.suppress(Exception):  # the database may be gone at shutdown
                self._finish(s)

    def _finish(self, session: ShadowSession) -> None:
        session.stopped_at = datetime.now(UTC)
        self.records.update_shadow(session.run_id, session.counts(), stopped=True)

    def session(self, model: str) -> ShadowSession | None:
        with self._lock:
            return self._sessions.get(model)

    # -- the output hook: on the inspection's worker thread, after the verdict ------------
    def offer(self, inspection: Inspection) -> None:
        """Sample ``inspection`` for its model's shadow: never waits, never raises."""
        session = self._sessions.get(inspection.detector.card.name)
        if session is None or inspection.detector.card.version == session.version:
            return  # no shadow, or the shadow's version itself is serving (a pinned recipe)
        if self._rng.random() >= session.sample_rate:
            return
        with self._count_lock:  # several inspection threads call this at once
            session.offered += 1
            try:
                self._queue.put_nowait((session, inspection))
            except queue.Full:
                session.dropped += 1

    # -- the worker -----------------------------------------------------------------------
    def _work(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: a thread's own niceness
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.settings.nice)
        while not self._stop.is_set():
            try:
                session, inspection = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._persist()
                continue
            try:
                if session.stopped_at is None:
                    self.compare(session, inspection)
            except Exception:
                session.errors += 1
                log.exception("shadow %s %s failed on inspection %s", session.model,
                              session.version, inspection.id)
            finally:
                self._queue.task_done()
            self._persist()

    def _persist(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_persist < PERSIST_EVERY_S:
            return
        self._last_persist = now
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            try:
                self.records.update_shadow(s.run_id, s.counts())
            except Exception as exc:  # a database outage: the counts are kept in memory
                log.warning("shadow %s: counts not saved: %s", s.model, exc)

    def compare(self, session: ShadowSession, inspection: Inspection) -> bool:
        """Judge ``inspection``'s frame with the shadow; store a disagreement. True if the
        two verdicts agree."""
        det = session.detector
        ref = inspection.reference if det.needs_reference else None
        if det.needs_reference and ref is None:
            session.errors += 1  # the active model takes no reference: nothing to compare with
            return False
        t = time.perf_counter()
        shadow = inspect(inspection.image, det, rules_of(inspection.recipe), reference=ref)
        session.ms.append((time.perf_counter() - t) * 1000)
        if shadow.verdict == inspection.verdict:
            session.compared += 1
            session.agreed += 1
            return True
        card = inspection.detector.card
        self.records.add_disagreement(
            session.run_id, inspection_id=inspection.id, model=session.model,
            active_version=card.version, active_verdict=inspection.verdict,
            active_defects=inspection.defects.to_json(), shadow_version=det.card.version,
            shadow_verdict=shadow.verdict, shadow_defects=shadow.defects.to_json(),
            shadow_reasons=[r.model_dump() for r in shadow.reasons])
        # a reviewer must see the frame to say who was right: keep it even if the pass
        # sampling did not; it joins the "to label" queue within the capture cap
        if inspection.stored:
            capture = self.capture is not None and self.capture.allow(SHADOW_CAPTURE)
            self.store.keep(inspection, SHADOW_CAPTURE if capture else None)
        session.compared += 1  # counted once all is written: "compared" means on record
        return False

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until the queue is empty and the last frame handled (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        self._persist(force=True)

    # -- figures ---------------------------------------------------------------------------
    def status(self, model: str, active_version: str | None) -> dict[str, Any]:
        """Agreement so far, and escapes and false rejects of both models against the
        reviewers' truth on the frames they disagreed on (on the frames they agree on
        both are equally right or wrong)."""
        session = self.session(model)
        if session is not None:
            counts, run_id = session.counts(), session.run_id
            version, sha, rate = session.version, session.sha256, session.sample_rate
            started, stopped, by = session.started_at, None, session.started_by
            ms = list(session.ms)
        else:
            row = self.records.shadow_run(model)
            if row is None:
                return {"model": model, "active_version": active_version, "running": False,
                        "shadow": None}
            counts = {k: getattr(row, k) for k in ("offered", "compared", "agreed", "dropped", "errors")}
            run_id, version, sha, rate = row.id, row.shadow_version, row.shadow_sha256, row.sample_rate
            started, stopped, by, ms = row.created_at, row.stopped_at, None, []
        rows = self.records.disagreements(run_id=run_id, limit=100_000)
        truth = self.records.reviewed_truth([r["inspection_id"] for r in rows])
        tally = dict.fromkeys(("shadow_escapes", "shadow_false_rejects", "active_escapes",
                               "active_false_rejects", "shadow_right", "active_right"), 0)
        for r in rows:
            t = truth.get(r["inspection_id"])
            if t is None:
                continue
            for who in ("shadow", "active"):
                got = r[who]["verdict"]
                if got == t:
                    tally[f"{who}_right"] += 1
                elif t == "fail":
                    tally[f"{who}_escapes"] += 1
                else:
                    tally[f"{who}_false_rejects"] += 1
        compared = counts["compared"]
        return {
            "model": model, "active_version": active_version, "running": session is not None,
            "run_id": run_id, "shadow": {"version": version, "sha256": sha},
            "sample_rate": rate, "started_at": started, "stopped_at": stopped, "started_by": by,
            **counts,
            "agreement": counts["agreed"] / compared if compared else None,
            "disagreements": len(rows), "reviewed_disagreements": len(truth), **tally,
            "shadow_ms_p50": float(np.percentile(ms, 50)) if ms else None,
        }
