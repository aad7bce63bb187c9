"""Shadow mode: a candidate judges a sample of live frames beside the active model, off
the verdict path, and every disagreement is kept with both results for a reviewer.

Off the verdict path means: the service's output hook (:meth:`ShadowRunner.offer`) runs
after the verdict was made and stored, and only draws a random number and hands the frame
(the bytes as received, decoded there as the service decoded them, or the camera's
decoded frame) to the shadow's own process without waiting; when ``queue`` frames are
already waiting there, the frame is dropped and counted. That process
(:mod:`.shadow_worker`) runs at idle priority with a single-threaded session: the shadow
gets the CPU the line leaves over and can neither delay nor change a verdict. ``lineside
bench shadow`` measures it.

A collector thread per shadow takes the results back, compares each with the verdict
served, and stores every disagreement with both results (keeping the frame for the
reviewer, and putting it in the "to label" queue within the capture cap).

How a shadow judges a frame is the recipe's (:class:`Judging`, kept with each
disagreement): a version of the model that judged it is run on it under the same recipe,
beside the served good-only model's finding where the recipe fuses one; a version of the
good-only model a recipe fuses with a detector is judged as the line judges it, the
recipe's verdict with the candidate's finding fused with the served detector's result
(sent to its process, not run again); where a recipe serves that model alone, alone.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lineside_inspect.errors import PackageError
from lineside_inspect.inspector import Inspection
from lineside_inspect.lifecycle import shadow_worker
from lineside_inspect.lifecycle.config import ShadowSettings
from lineside_inspect.lifecycle.gate import rules_of
from lineside_inspect.package import ModelCard, ModelPackage, card_digest, default_recipe_name
from lineside_inspect.recipes import Recipe, card_recipe

if TYPE_CHECKING:
    from lineside_inspect.lifecycle.capture import CapturePolicy
    from lineside_inspect.lifecycle.records import Records
    from lineside_inspect.store import Store

log = logging.getLogger("lineside.shadow")
PERSIST_EVERY_S = 2.0  # the run's counters reach the database at least this often
START_TIMEOUT_S = 120.0  # the shadow process loads its model within this
SHADOW_CAPTURE = "shadow_disagreement"
STOPPED_BY = "lineside"  # the audit actor of a stop the server made (manager.SYSTEM)
SHUTDOWN_RECORD_S = 10.0  # what the shadows' rows and stops may take to write at shutdown
_spawn = multiprocessing.get_context("spawn")  # the server has threads: never fork it


@dataclass(frozen=True)
class Judging:
    """How a shadow judged one served frame (kept with a disagreement)."""

    active_version: str  # the version of the shadow's model that served the frame
    # "name version" of the other model of the recipe's fusion: the good-only model whose
    # served finding weighed in (kind "anomaly": the shadow is of the detector), or the
    # detector whose served detections the shadow's finding was fused with (kind
    # "detector": the shadow is of the good-only partner); None: judged alone
    fused_with: str | None = None
    fused_kind: Literal["anomaly", "detector"] | None = None


def shadow_rules(recipe: Recipe, active: ModelCard, shadow: ModelCard) -> Recipe:
    """The rules a shadow version (card ``shadow``) of the model whose ``active`` card
    served a frame under ``recipe`` judges it by. The card's own recipe follows the active
    card, so once the shadow's version is active the line judges by the recipe its card
    brings (its ``tiling``: a whole-frame version shadowing a tiled one, or the reverse,
    was judged as the served version judges; session 44), as a gate judges a candidate
    (``Admission._as_it_follows``); a recipe the line configured as it is. Each version
    at its own card's floors either way (:func:`rules_of`)."""
    if recipe.name == default_recipe_name(active.name) and recipe == card_recipe(active):
        own = card_recipe(shadow)
        if own.fused() == recipe.fused():  # the served finding it is judged beside
            recipe = own
    return rules_of(recipe)


@dataclass
class ShadowSession:
    run_id: str
    model: str
    package: ModelPackage
    sample_rate: float
    started_at: datetime
    started_by: str
    offered: int = 0
    compared: int = 0
    agreed: int = 0
    dropped: int = 0
    errors: int = 0
    stopped_at: datetime | None = None
    priority: str = ""
    ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=500))
    # sent, not answered yet: the served inspection and how the shadow judges it
    pending: dict[int, tuple[Inspection, Judging]] = field(default_factory=dict)
    process: Any = None
    jobs: Any = None
    results: Any = None
    collector: threading.Thread | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    # claimed by whoever ends it (a stop, a replacement, the shutdown, its process's death),
    # under the runner's lock: the one who claims it ends and records it, once (session 53)
    ending: bool = False

    @property
    def version(self) -> str:
        return self.package.card.version

    @property
    def sha256(self) -> str:
        return self.package.card.sha256

    def counts(self) -> dict[str, int]:
        return {"offered": self.offered, "compared": self.compared, "agreed": self.agreed,
                "dropped": self.dropped, "errors": self.errors}


class ShadowRunner:
    """The shadows of a server's models (at most one per model)."""

    def __init__(self, settings: ShadowSettings, records: Records, store: Store,
                 capture: CapturePolicy | None = None, *, device: str = "cpu",
                 max_pixels: int | None = None) -> None:
        self.settings = settings
        # the service's: a frame sent as bytes is decoded in the shadow's process as the
        # service decoded it (None: the built-in limit)
        self.max_pixels = max_pixels
        self.records = records
        self.store = store
        self.capture = capture
        self.device = device
        self._sessions: dict[str, ShadowSession] = {}
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._tokens = itertools.count()
        self._last_persist = 0.0

    # -- control ----------------------------------------------------------------------
    def start(self, model: str, package: ModelPackage, sample_rate: float, actor: str) -> ShadowSession:
        """Shadow ``model``'s active version with ``package`` (replacing any shadow it had);
        returns once the shadow's process has loaded it."""
        session = ShadowSession(uuid.uuid4().hex, model, package, sample_rate, datetime.now(UTC), actor)
        self._launch(session)
        self.records.start_shadow(session.run_id, model=model, version=package.card.version,
                                  sha256=package.card.sha256, sample_rate=sample_rate)
        with self._lock:
            old = self._claim(self._sessions.get(model))  # None: already being ended
            self._sessions[model] = session
        if old is not None:
            self._end(old)
        return session

    def _launch(self, session: ShadowSession) -> None:
        """Start the shadow's process and wait until its model is loaded."""
        session.jobs, session.results = _spawn.Queue(), _spawn.Queue()
        session.process = _spawn.Process(
            target=shadow_worker.serve, name=f"lineside-shadow-{session.model}", daemon=True,
            args=(str(session.package.path), self.device, self.settings.threads,
                  self.settings.nice, session.jobs, session.results,
                  card_digest(session.package.card),  # what was loaded, not what is there now
                  self.max_pixels))
        session.process.start()
        kind, info = self._ready(session)
        if kind != shadow_worker.READY:
            self._end_process(session)
            # the worker's error may name the package's folder: the caller named a version
            said = str(info).replace(str(session.package.path), f"package {session.version}")
            raise PackageError(f"shadow {session.model} {session.version} could not start: {said}")
        session.priority = info.get("priority", "")
        session.collector = threading.Thread(target=self._collect, args=(session,),
                                             name=f"shadow-results-{session.model}", daemon=True)
        session.collector.start()

    @staticmethod
    def _ready(session: ShadowSession) -> tuple[str, Any]:
        """The process's first word: ready, or why not. A process that ended without one
        (killed, a crash loading the graph) is said at once: the start waited out the whole
        START_TIMEOUT_S for it, the request held (session 42)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ended = not session.process.is_alive()
            try:  # once it ended, what it put before is still read (its FAILED)
                return session.results.get(timeout=0.5 if ended else 0.2)  # type: ignore[no-any-return]
            except queue.Empty:
                pass
            if ended:
                return shadow_worker.FAILED, (f"its process ended (exit code "
                                              f"{session.process.exitcode}) before its "
                                              "model was loaded")
            if time.monotonic() >= deadline:
                return shadow_worker.FAILED, f"not ready within {START_TIMEOUT_S:.0f} s"

    def stop(self, model: str) -> ShadowSession | None:
        """End ``model``'s shadow; returns it, or None if it had none or it is being ended
        already (its process died: the server records that stop): the caller records
        the stop it returns, once."""
        with self._lock:
            session = self._claim(self._sessions.get(model))
        if session is not None:
            self._end(session)
        return session

    def close(self, record_s: float | None = None) -> None:
        """End every shadow (the server stops). Each is in the audit log as a
        ``shadow_stop`` by the server, "the server stopped", with its final counts, as a
        stop and a death are: it showed a shadow started and never stopped (session 54).
        The processes end first; their rows and entries then get ``record_s`` seconds
        (default SHUTDOWN_RECORD_S; a database gone or answering nothing is logged: the
        shutdown goes on, the writes finish if it answers before the process exits)."""
        record_s = SHUTDOWN_RECORD_S if record_s is None else record_s
        with self._lock:
            sessions = [s for s in list(self._sessions.values()) if self._claim(s) is not None]
        if not sessions:
            return
        for s in sessions:
            s.stopped_at = datetime.now(UTC)
            try:
                self._halt(s)
            except Exception as exc:  # a process that would not end: its stop is recorded
                log.warning("shadow %s %s: its process not ended cleanly: %s", s.model,
                            s.version, exc)
        writer = threading.Thread(target=self._record_closed, args=(sessions,),
                                  name="shadow-close", daemon=True)
        writer.start()
        writer.join(record_s)
        if writer.is_alive():
            log.error("shadow %s: stopped with the server, not recorded within %.0f s (the "
                      "database answers nothing); the audit log may show it started and never "
                      "stopped", ", ".join(s.model for s in sessions), record_s)
        for s in sessions:
            self._forget(s)

    def _record_closed(self, sessions: list[ShadowSession]) -> None:
        for s in sessions:
            try:
                self.records.update_shadow(s.run_id, s.counts(), stopped=True)
            except Exception as exc:  # the database may be gone at shutdown
                log.warning("shadow %s: final counts not saved: %s", s.model, exc)
            self._record_stop(s, "the server stopped: the shadow is stopped with it; start it "
                                 "again to go on comparing", "with the server")

    def _record_stop(self, session: ShadowSession, reason: str, how: str) -> None:
        """The server's own stop of ``session`` in the audit log (its process's death, the
        shutdown), with the final counts: a database failing is a warning."""
        try:
            self.records.audit(actor=STOPPED_BY, action="shadow_stop", model=session.model,
                               version=session.version, reason=reason,
                               details={"run_id": session.run_id, **session.counts()})
        except Exception as exc:
            log.warning("shadow %s %s stopped (%s), not recorded: %s", session.model,
                        session.version, how, exc)

    @staticmethod
    def _claim(session: ShadowSession | None) -> ShadowSession | None:
        """``session``, now to be ended by the caller (who holds the runner's lock), or
        None if there is none or someone else is ending it. A stop and the collector
        finding the process dead both ended it and both recorded it: two ``shadow_stop``
        entries, the run row marked twice (session 53). It is offered no more frames."""
        if session is None or session.ending:
            return None
        session.ending = True
        session.stopping.set()
        return session

    def _end(self, session: ShadowSession) -> None:
        """End a claimed ``session`` (:meth:`_claim`): its process and collector, its run
        row marked stopped, then out of the running set. The row says stopped before the
        session goes: status reads the row once it has (it read "running": false with
        "stopped_at": null in between, a CI run found)."""
        session.stopped_at = datetime.now(UTC)
        try:
            self._halt(session)
            self.records.update_shadow(session.run_id, session.counts(), stopped=True)
        finally:  # (a database outage, a process that would not end: the session goes all
            # the same; claimed, it was left "running" for ever, and every stop a 404)
            self._forget(session)

    def _forget(self, session: ShadowSession) -> None:
        """``session`` out of the running set, unless a replacement took its place."""
        with self._lock:
            if self._sessions.get(session.model) is session:
                del self._sessions[session.model]

    def _halt(self, session: ShadowSession) -> None:
        """End a claimed ``session``'s process and collector thread."""
        self._end_process(session)
        if session.collector is not None and session.collector is not threading.current_thread():
            session.collector.join(5)

    @staticmethod
    def _end_process(session: ShadowSession) -> None:
        proc = session.process
        if proc is None:
            return
        if proc.is_alive():
            try:
                session.jobs.put(None)
                proc.join(5)
            finally:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
        for q in (session.jobs, session.results):
            q.close()
            q.cancel_join_thread()  # never wait at exit for what a dead process did not read

    def session(self, model: str) -> ShadowSession | None:
        with self._lock:
            return self._sessions.get(model)

    # -- the output hook: on the inspection's worker thread, after the verdict ------------
    def offer(self, inspection: Inspection) -> None:
        """Sample ``inspection`` for the shadow of the model that judged it and, where its
        recipe fuses a good-only model with that detector, for the good-only model's
        shadow: never waits for a shadow."""
        card = inspection.detector.card
        session = self._sessions.get(card.name)
        if session is not None:  # beside the served good-only finding, if the recipe fuses one
            self._offer(session, inspection, Judging(
                card.version, inspection.fused_with,
                None if inspection.fused_with is None else "anomaly"))
        fused, partner = inspection.recipe.fused(), inspection.fused
        if fused is None or partner is None:
            return
        # ``partner`` is a version of fused[0]: every inspection offered comes from the
        # service, which takes the recipe's good-only model by that name (Registry.pin)
        session = self._sessions.get(fused[0])
        if session is not None:  # the served version's shadow
            self._offer(session, inspection,
                        Judging(partner.version, f"{card.name} {card.version}", "detector"))

    def _offer(self, session: ShadowSession, inspection: Inspection, how: Judging) -> None:
        if how.active_version == session.version:
            return  # the shadow's version itself is serving (a pinned recipe)
        if session.stopping.is_set() or self._rng.random() >= session.sample_rate:
            return
        reference = None
        partner = None
        if how.fused_kind == "detector":  # the good-only partner of the served detector
            if inspection.gate is not None and inspection.gate.unchanged:
                # the recipe's unchanged gate passed it: no model ran, and none would with
                # the shadow's version either; the served pass, as a gate's replay counts it
                with self._count_lock:
                    session.offered += 1
                    session.compared += 1
                    session.agreed += 1
                return
            if inspection.detections is None:  # nothing to fuse the shadow's finding with
                with self._count_lock:
                    session.errors += 1
                return
            partner = (inspection.detector.card, inspection.detections)
            # the golden the detector compared the frame with: the verdict's view checks
            reference = None if inspection.reference is None else inspection.reference.raw
        elif session.package.card.needs_reference:
            if inspection.reference is None:  # the active model takes none: nothing to compare
                with self._count_lock:
                    session.errors += 1
                return
            reference = inspection.reference.raw
        with self._count_lock:  # several inspection threads call this at once
            session.offered += 1
            if len(session.pending) >= self.settings.queue:
                session.dropped += 1
                return
            token = next(self._tokens)
            session.pending[token] = (inspection, how)
        image = inspection.raw if inspection.raw is not None else inspection.image
        # a shadow of the detector in a fused recipe is judged with the same anomaly
        anomaly = inspection.anomaly if partner is None else None
        # put() hands the job to the queue's feeder thread: it does not wait for the process
        rules = (rules_of(inspection.recipe) if how.fused_kind == "detector" else
                 shadow_rules(inspection.recipe, inspection.detector.card, session.package.card))
        session.jobs.put((token, image, reference, rules.model_dump(mode="json"), anomaly, partner))

    # -- results ----------------------------------------------------------------------------
    def _collect(self, session: ShadowSession) -> None:
        while not session.stopping.is_set():
            try:
                token, doc = session.results.get(timeout=0.5)
            except queue.Empty:
                if not session.stopping.is_set() and not session.process.is_alive():
                    self._died(session)
                    return
                self._persist()
                continue
            except (EOFError, OSError):  # the queue closed under us: the session ended
                return
            with self._count_lock:
                sent = session.pending.get(token)
            if sent is None:
                continue
            inspection, how = sent
            try:
                if "error" in doc:
                    raise RuntimeError(doc["error"])
                self.judged(session, inspection, doc, how)
            except Exception:
                with self._count_lock:
                    session.errors += 1
                log.exception("shadow %s %s failed on inspection %s", session.model,
                              session.version, inspection.id)
            finally:  # pending until counted: drain() waited only until it was taken
                with self._count_lock:
                    session.pending.pop(token, None)
            self._persist()

    def _died(self, session: ShadowSession) -> None:
        with self._lock:
            if self._claim(session) is None:
                return  # a stop, a replacement or the shutdown ends it, and records it
        code = session.process.exitcode
        with self._count_lock:
            session.errors += len(session.pending)
            session.pending.clear()
        log.error("shadow %s %s: its process ended (exit code %s); the shadow is stopped",
                  session.model, session.version, code)
        try:
            self._end(session)
        except Exception as exc:  # a database outage: the session went all the same
            log.warning("shadow %s %s: final counts not saved: %s", session.model,
                        session.version, exc)
        # in the audit log as any other stop, by the server itself (session 52): the log
        # showed a shadow started and never stopped while its status said stopped, and
        # nowhere the operator reads said why
        self._record_stop(session, f"its process ended (exit code {code}): the shadow is "
                                   "stopped; start it again to go on comparing",
                          "its process ended")

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

    def judged(self, session: ShadowSession, inspection: Inspection, doc: dict[str, Any],
               how: Judging) -> bool:
        """The shadow's result ``doc`` on ``inspection``'s frame, judged ``how``: a
        disagreement is stored. True if the two verdicts agree."""
        session.ms.append(float(doc["ms"]))
        if doc["verdict"] == inspection.verdict:
            with self._count_lock:  # an unchanged part's pass is counted on offer
                session.compared += 1
                session.agreed += 1
            return True
        self.records.add_disagreement(
            session.run_id, inspection_id=inspection.id, model=session.model,
            active_version=how.active_version, active_verdict=inspection.verdict,
            active_defects=inspection.defects.to_json(), shadow_version=session.version,
            shadow_verdict=doc["verdict"], shadow_defects=doc["defects"],
            shadow_reasons=doc["reasons"], fused_with=how.fused_with,
            fused_kind=how.fused_kind)
        # a reviewer must see the frame to say who was right: keep it even if the pass
        # sampling did not; it joins the "to label" queue within the capture cap
        if inspection.stored:
            capture = self.capture is not None and self.capture.allow(SHADOW_CAPTURE)
            self.store.keep(inspection, SHADOW_CAPTURE if capture else None)
        with self._count_lock:
            session.compared += 1  # counted once all is written: "compared" means on record
        return False

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until every frame sent has come back (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            sessions = list(self._sessions.values())
        while any(s.pending for s in sessions) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._persist(force=True)

    # -- figures ---------------------------------------------------------------------------
    def status(self, model: str, active_version: str | None) -> dict[str, Any]:
        """Agreement so far, and escapes and false rejects of both models against the
        reviewers' truth on the frames they disagreed on (on the frames they agree on
        both are equally right or wrong)."""
        session = self.session(model)
        if session is not None:
            # claimed: a stop, a replacement, its death or the shutdown is ending it (its
            # process still up, its row not yet marked): a second stop then answered 404
            # "being stopped already" while this said running alone (session 54)
            state = "stopping" if session.ending else "running"
            counts, run_id = session.counts(), session.run_id
            version, sha, rate = session.version, session.sha256, session.sample_rate
            started, stopped, by = session.started_at, None, session.started_by
            ms, priority = list(session.ms), session.priority
        else:
            row = self.records.shadow_run(model)
            if row is None:
                return {"model": model, "active_version": active_version, "running": False,
                        "state": None, "shadow": None}
            state = "stopped"  # (a row never marked: the server was killed while it ran)
            counts = {k: getattr(row, k) for k in ("offered", "compared", "agreed", "dropped", "errors")}
            run_id, version, sha, rate = row.id, row.shadow_version, row.shadow_sha256, row.sample_rate
            started, stopped, by, ms, priority = row.created_at, row.stopped_at, None, [], None
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
            "state": state, "run_id": run_id, "shadow": {"version": version, "sha256": sha},
            "sample_rate": rate, "started_at": started, "stopped_at": stopped, "started_by": by,
            **counts,
            "agreement": counts["agreed"] / compared if compared else None,
            "disagreements": len(rows), "reviewed_disagreements": len(truth), **tally,
            "shadow_ms_p50": float(np.percentile(ms, 50)) if ms else None,
            "priority": priority,
        }
