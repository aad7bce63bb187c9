"""The lifecycle of a server's models: what may judge parts (active or shadow), decided
by gate reports and recorded with who, when and why.

Admission rule (:mod:`lineside_inspect.lifecycle.admission`, which ``Lifecycle`` inherits;
:meth:`~lineside_inspect.lifecycle.admission.AdmissionRules._reports`): a version with a
failed gate report (for its graph and card) not cleared by a later pass against the
active version on the same golden set and recipe is refused (409 ``gate_failed``)
unless an admin forces it with a reason; the forced admission is recorded in the audit
log and the admissions table. A passing
report admits only while the version it was compared with is the active one, while its
recipe fuses the partner card it was judged with (or none, if judged alone), and while that
recipe still judges the model by the rules it was judged by (``recipe_sha256``; a card's
own recipe as the candidate's card brings it), and, where ``lifecycle.gate.golden`` names
a golden set for the model, while it was replayed on that set (session 47). With
``lifecycle.gate.require_gate`` a version without such a report under every recipe that
would judge it once admitted (:meth:`Lifecycle.judging`; session 43) is refused the same
way, and so is a version rolled back automatically that has passed no gate since.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineside_inspect.errors import (
    ActiveChanged,
    Busy,
    ConfigError,
    GateRefused,
    GateTooLarge,
    NotFoundError,
)
from lineside_inspect.lifecycle.admission import AdmissionRules
from lineside_inspect.lifecycle.alarm import Change, FailRateAlarm
from lineside_inspect.lifecycle.capture import CapturePolicy
from lineside_inspect.lifecycle.config import LifecycleSettings
from lineside_inspect.lifecycle.gate import (
    GateReport,
    fusion_partner,
    gated_as,
    run_gate,
)
from lineside_inspect.lifecycle.golden import GOLDEN_DIR, GoldenLibrary, GoldenManifest
from lineside_inspect.lifecycle.kept import KeptModels
from lineside_inspect.lifecycle.records import Records
from lineside_inspect.lifecycle.refusals import gate_call
from lineside_inspect.lifecycle.rollout import RolloutWatcher, Watch
from lineside_inspect.lifecycle.shadow import ShadowRunner
from lineside_inspect.package import default_recipe_name
from lineside_inspect.recipes import Recipe, card_recipe
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.server.registry import Registry
from lineside_inspect.store.models import GateReportRow
from lineside_inspect.store.utc import iso_times

if TYPE_CHECKING:
    from lineside_inspect.server.service import InspectionService
    from lineside_inspect.store import Store

log = logging.getLogger("lineside.lifecycle")
AUDIT_DRAIN_S = 5.0  # what the alarm's audit writer may take at shutdown
SYSTEM = "lineside"  # the actor of what the server does by itself (an automatic rollback)


MAX_TOLD = 3  # failing recipes a refused promotion tells in full


def _few(names: list[str], most: int = 10) -> str:
    """``names``, the first ``most`` of them and how many more."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more"
                                      if len(names) > most else "")


class Lifecycle(AdmissionRules):
    def __init__(self, settings: LifecycleSettings, *, registry: Registry, data_dir: str | Path,
                 device: str = "auto", max_pixels: int | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.device = device
        self.max_pixels = max_pixels
        self.library = GoldenLibrary(Path(data_dir) / GOLDEN_DIR)
        self.store: Store | None = None
        self._records: Records | None = None
        self.shadow: ShadowRunner | None = None
        self.capture: CapturePolicy | None = None
        self.rollout: RolloutWatcher | None = None
        self.alarm: FailRateAlarm | None = None  # set by install() unless disabled
        # what was loaded and activated over the API, kept across a restart (install())
        self.kept: KeptModels | None = None
        # told (model, version) when a rollback made ``version`` judge: an automatic one
        # before its audit entry is written (a database failing then loses that entry, not
        # the rollback), an admin's once recorded (one that cannot be is undone; session
        # 49): a fleet box's puller marks the pull it went back from held (session 48). Called
        # by what is told, never imported here (a room above: fleet/box/models.py)
        self.went_back: list[Callable[[str, str], None]] = []
        # told (model, version) when an activation (an admin's, a promotion, a restore)
        # made ``version`` judge, after its audit entry is written: a fleet box's puller
        # takes a held pull up again at once (its held mark, left set until the next pull,
        # read at a restart as a rollback the audit log lost: last read, session 48)
        self.taken_up: list[Callable[[str, str], None]] = []
        # the alarm's audit entries, written in order off the verdict path (a database
        # that is slow or down must not hold an inspection)
        self._alarm_audit = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alarm-audit")
        self._alarm_writes: set[Future[None]] = set()
        self._gate_lock = threading.Lock()
        self._admit_lock = threading.Lock()  # one activation decision at a time
        registry.add_holder(self._holding)

    # -- wiring ---------------------------------------------------------------------------
    def attach(self, store: Store, service: InspectionService) -> None:
        """With the store (at start-up): records, the shadow worker and the rollout watch."""
        self.store = store
        self._records = Records(store)
        self.capture = CapturePolicy(self.settings.capture)
        store.capture_policy = self.capture
        self.shadow = ShadowRunner(self.settings.shadow, self._records, store, self.capture,
                                   device=self.device, max_pixels=service.max_pixels)
        self.rollout = RolloutWatcher(self.settings.rollout, self._records, self._auto_rollback,
                                      self._watch_ended)
        service.add_output(self.shadow.offer)
        self.library.delete_partial()

    def record_startup(self) -> None:
        """The server starts with the versions its config names and those restored as kept
        (:mod:`.kept`, recorded as ``restore``): where that differs from the last activation the
        audit log holds (or there is none), it says so, so the log stays true. Under the
        admission lock: a fleet pull may be activating a version meanwhile."""
        with self._admit_lock:
            try:
                self._record_startup()
            except Exception:  # a database failing at start: the server starts (session 48)
                log.exception("the versions the server started with not compared with the "
                              "audit log (no startup entry written)")

    def _record_startup(self) -> None:
        for model, slot in self.registry.models().items():
            if slot.active is None:
                continue
            last = self.records.last_activation(model)
            if last is not None and last["version"] == slot.active:
                continue
            before = "" if last is None else f"; the last activation recorded was {last['version']}"
            self.records.audit(actor=SYSTEM, action="startup", model=model, version=slot.active,
                               reason=f"the server started with {model} {slot.active}{before}")

    def _holding(self, model: str) -> dict[str, str]:
        """The versions of ``model`` the shadow run and the rollout watch need loaded."""
        held: dict[str, str] = {}
        session = None if self.shadow is None else self.shadow.session(model)
        if session is not None:
            held.setdefault(session.version, f"its shadow run compares it with the active version "
                                     f"(DELETE /v1/models/{model}/shadow stops it)")
        # read without the watch's lock: it calls the registry and the admission lock
        # under it (an automatic rollback), and an unload holds the admission lock
        watch = None if self.rollout is None else self.rollout.watching(model)
        if watch is not None:
            held.setdefault(watch.previous, f"the rollout watch of {model} {watch.version} "
                                            "rolls back to it if the line's fail rate jumps")
        return held

    def unload(self, model: str, version: str, *, actor: str, force: bool = False,
               reason: str = "") -> None:
        """Take ``version`` out of memory (:meth:`Registry.unload`), recorded as ``unload``
        (``force_unload``: the version a rollback goes back to); an unload that cannot be
        recorded is undone."""
        with self._admit_lock:
            self.registry.unload(model, version, force=force)
            if self._records is None:
                return
            try:
                self.records.audit(actor=actor, action="force_unload" if force else "unload",
                                   model=model, version=version, reason=reason)
            except Exception:
                self.registry.reload(model, version)
                raise

    def close(self) -> None:
        # the alarm's last audit entries get a few seconds; a database that hangs must not
        # hold the server's stop (what is left is logged)
        pending = list(self._alarm_writes)
        if pending and wait(pending, timeout=AUDIT_DRAIN_S).not_done:
            log.error("fail-rate alarm: %d audit entries not written at shutdown", len(pending))
        self._alarm_audit.shutdown(wait=False, cancel_futures=True)
        if self.shadow is not None:
            self.shadow.close()
        if self.rollout is not None:
            self.rollout.close()

    @property
    def records(self) -> Records:
        if self._records is None:
            raise NotFoundError("this server keeps no inspection store: gate reports, shadow "
                                "results and the audit log live in it")
        return self._records

    # -- the gate -------------------------------------------------------------------------
    def recipe_for(self, model: str, name: str | None, *, as_partner: bool = False) -> Recipe:
        """The named recipe, else the server's default recipe if it judges ``model``, else
        the first recipe of ``model``, else the active card's own. ``as_partner``: the
        named recipe may instead fuse ``model``, a good-only model, with its detector (a
        gate judges its versions as that detector's partner)."""
        if name is not None:
            recipe = self.registry.recipe(name)
            if as_partner:
                gated_as(recipe, model)  # its model, or the good-only model it fuses
            elif recipe.model != model:
                # judged under another model's rules, the watch counted none of this
                # model's inspections (lifecycle review, session 32); nor would it count a
                # partner's: inspections are stored under the detector that judged them
                fused = recipe.fused()
                raise ConfigError(
                    f"recipe {name} judges model {recipe.model}, not {model}"
                    + ("" if fused is None or fused[0] != model else
                       f" (it fuses {model} with it: a promotion's watch counts inspections "
                       f"by the model that judged them, {recipe.model} there; gate {model} "
                       f"under it, POST /v1/models/{model}/gate with recipe {name}, then "
                       "activate)"))
            return recipe
        recipes = [r for r in self.registry.recipes() if r.model == model]
        default = self.registry.default_recipe
        for r in recipes:
            if r.name == default:
                return r
        return recipes[0] if recipes else card_recipe(self.registry.detector(model).card)

    def gate(self, model: str, version: str, *, golden: str, golden_version: int | None = None,
             against: str | None = None, recipe: str | None = None, actor: str) -> GateReport:
        """Replay a golden set through ``version`` and ``against`` (default: the active
        version), both loaded, each with the other model of the recipe's fusion of a
        detector with a good-only model (as the line judges): the good-only model for
        versions of the detector, the recipe's detector for versions of its good-only
        model (named recipe only); store the report and say so in the audit log."""
        records = self.records
        with contextlib.ExitStack() as held:
            held.enter_context(self.registry.loaded(model, version, against))
            rule = self.recipe_for(model, recipe, as_partner=True)
            # a card's own recipe that follows the active card: judged by the one the
            # candidate's card brings, which judges the line once it is active (session 43)
            rule = self._as_it_follows(rule, self.registry.detector(model, version))
            partner = self._partner(rule, model, held)
            candidate, active = self._gate_pair(model, version, against)
            manifest = self._manifest(model, golden, golden_version)
            with self._gate_slot():
                report = self._replay(candidate, active, manifest, rule, partner)
            # stored outside the lock: a slow database must not turn other gates away
            return self._stored(records, self._judged(report), model, version, actor=actor)

    def _manifest(self, model: str, golden: str, version: int | None) -> GoldenManifest:
        """The golden set version a gate of ``model`` replays; one missing that
        ``lifecycle.gate.golden`` names for the model is said to be so."""
        try:
            return self.library.get(golden, version)
        except NotFoundError as exc:
            if golden != self.golden_required(model) or self._golden_held(golden):
                raise
            raise NotFoundError(f"{exc.message}: golden set {golden}, which lifecycle.gate."
                                f"golden names for {model}, is not made on this server yet "
                                f"(only a pass on it admits {model}); make it first, POST "
                                f"/v1/golden/{golden}") from None

    def _judged(self, report: GateReport) -> GateReport:
        """``report`` saying it admits nothing here when it was run on another golden set
        than the one ``lifecycle.gate.golden`` names for its model (session 47: it ran, a
        report is useful, but only a pass on that set admits)."""
        c = report.candidate
        why = self.not_admitting(c.model, c.version, report.golden.name)
        return report if why is None else report.model_copy(update={"will_not_admit": why})

    def _partner(self, rule: Recipe, model: str,
                 held: contextlib.ExitStack) -> Detector | None:
        """The other model of ``rule``'s fusion for gating versions of ``model``
        (:func:`fusion_partner`). As an inspection under it takes it (the pinned version,
        else the active one), loaded again if it was unloaded and held loaded for the
        gate; None when the rule fuses none."""
        other = fusion_partner(rule, model)
        if other is None:
            return None
        if other.detector:
            what = (f"recipe {rule.name} fuses good-only model {model} with detector "
                    f"{other.name}, and the gate judges each version of {model} with it as "
                    "the line does")
        else:
            what = (f"recipe {rule.name} fuses good-only model {other.name} with its "
                    "detector, and the gate judges with it as the line does")
        try:
            held.enter_context(self.registry.loaded(other.name, other.pinned))
            partner = self.registry.detector(other.name, other.pinned)
        except NotFoundError as exc:
            raise NotFoundError(f"{what}: {exc.message}") from None
        held.enter_context(self.registry.holding(other.name, partner.card.version))
        return partner

    def gate_all(self, model: str, version: str, *, golden: str,
                 golden_version: int | None = None, against: str | None = None,
                 actor: str) -> list[GateReport]:
        """:meth:`gate` under each recipe that would judge ``version`` once it is active
        (:meth:`judging`; the card's own recipe as it follows, when nothing else judges
        it): one report each, stored, in the order of the recipes' names. Every recipe,
        its partner and the golden set's version are taken (loaded and held) before the
        first replay, so what cannot be gated refuses the call before any report is
        stored; one gate lock is held across the replays (and their stores)."""
        records = self.records
        with contextlib.ExitStack() as held:
            held.enter_context(self.registry.loaded(model, version, against))
            runs = self._gate_runs(model, version, held)
            manifest = self._manifest(model, golden, golden_version)  # one for every run
            self._bounded(model, version, [rule.name for rule, _ in runs], manifest)
            with self._gate_slot():
                candidate, active = self._gate_pair(model, version, against)
                return [self._stored(records, self._judged(
                                         self._replay(candidate, active, manifest, rule,
                                                      partner)),
                                     model, version, actor=actor)
                        for rule, partner in runs]

    def _bounded(self, model: str, version: str, recipes: list[str],
                 manifest: GoldenManifest) -> None:
        """:class:`GateTooLarge` when a gate under every one of ``recipes`` would replay
        more images than ``lifecycle.gate.max_every_recipe_images`` under the one gate
        lock (session 47: it had no bound, and every other gate waited it out)."""
        cap, images = self.settings.gate.max_every_recipe_images, len(manifest.items)
        if len(recipes) <= 1 or len(recipes) * images <= cap:
            return  # (one recipe: a named gate's replay, bounded by the set's own cap)
        calls = "; ".join(gate_call(model, version, manifest.name, n) for n in recipes[:5]) + (
            f"; ... ({len(recipes) - 5} more)" if len(recipes) > 5 else "")
        raise GateTooLarge(
            f"a gate of {model} {version} under every recipe that would judge it would replay "
            f"golden set {manifest.ref} ({images} images) under {len(recipes)} recipes "
            f"({_few(recipes, 5)}): {len(recipes) * images} images, over "
            f"lifecycle.gate.max_every_recipe_images ({cap}), while it holds the gate lock. "
            # a call per recipe, as the admission refusals give them: "recipe": NAME was a
            # placeholder to fill in (session 47, QA walk)
            f"Gate under each recipe by name, one call each ({calls}; with require_gate "
            "then activate, as a promotion gates under every one), use a smaller golden "
            "set, or raise the setting")

    def _gate_runs(self, model: str, version: str,
                   held: contextlib.ExitStack) -> list[tuple[Recipe, Detector | None]]:
        """Each recipe that would judge ``version`` once active, as it follows, and its
        partner, taken and held in ``held`` (:meth:`gate_all`)."""
        det = self.registry.detector(model, version)
        names, own = self.judging(model, version)
        runs: list[tuple[Recipe, Detector | None]] = []
        for name in names:
            rule = (card_recipe(self.registry.detector(model).card) if own else
                    self.recipe_for(model, name, as_partner=True))
            rule = self._as_it_follows(rule, det)
            runs.append((rule, self._partner(rule, model, held)))
        return runs

    def _gate_pair(self, model: str, version: str,
                   against: str | None) -> tuple[Detector, Detector]:
        """The candidate and the version it is gated against (default: the active one),
        both loaded; a version is never gated against itself."""
        candidate = self.registry.detector(model, version)
        active = self.registry.detector(model, against)
        if active is candidate:
            raise ConfigError(f"{model} {version} cannot be gated against itself: name another "
                              "loaded version in against (default: the active one)")
        return candidate, active

    @contextlib.contextmanager
    def _gate_slot(self) -> Iterator[None]:
        """The gate lock, or :class:`Busy` at once: replays are heavy, one at a time, and a
        second caller is told to retry rather than held waiting."""
        if not self._gate_lock.acquire(blocking=False):
            raise Busy("a gate is running on this server: retry when it is done")
        try:
            yield
        finally:
            self._gate_lock.release()

    def _replay(self, candidate: Detector, active: Detector, manifest: GoldenManifest,
                rule: Recipe, partner: Detector | None) -> GateReport:
        """One gate's replay and decision (:func:`run_gate`); the caller holds the slot."""
        return run_gate(candidate, active, self.library, manifest, rule,
                        allowance=self.settings.gate.false_reject_allowance,
                        max_pixels=self.max_pixels, partner=partner)

    @staticmethod
    def _stored(records: Records, report: GateReport, model: str, version: str, *,
                actor: str) -> GateReport:
        """``report`` stored, and said in the audit log."""
        records.save_gate(report, actor)
        records.audit(actor=actor, action="gate", model=model, version=version,
                      reason="; ".join(report.reasons),
                      details={"report_id": report.id, "passed": report.passed,
                               "against": report.against.version,
                               "golden": f"{report.golden.name}:{report.golden.version}",
                               "fused_with": report.fused_with,
                               **({} if report.will_not_admit is None else
                                  {"will_not_admit": True}),
                               "escapes": report.candidate.escapes,
                               "false_rejects": report.candidate.false_rejects})
        return report

    # -- activation -----------------------------------------------------------------------
    def activate(self, model: str, version: str, *, actor: str, force: bool = False,
                 reason: str = "", action: str = "activate",
                 replacing: str | None = None,
                 pending_recipes: Sequence[Recipe] = (),
                 details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make ``version`` active if its gate allows (or an admin forces it): recorded.
        The version already active is left as it is, with nothing to record.
        ``replacing``: the version that must be active now (a promotion's gate compared
        the candidate with it), else :class:`ActiveChanged` and nothing changes.
        ``pending_recipes``: see :meth:`Registry.activate` (``pending``). ``details``:
        more for the audit entry's details (a promotion's watch)."""
        with self.registry.loaded(model, version):
            return self._activate(model, version, actor=actor, force=force, reason=reason,
                                  action=action, replacing=replacing,
                                  pending_recipes=pending_recipes, details=details or {})

    def _activate(self, model: str, version: str, *, actor: str, force: bool, reason: str,
                  action: str, replacing: str | None,
                  pending_recipes: Sequence[Recipe],
                  details: dict[str, Any]) -> dict[str, Any]:
        det = self.registry.detector(model, version)
        if self._records is None:  # no store: nothing to check against or record in
            with self._admit_lock:
                previous = self.registry.models()[model].active
                if previous != version:
                    self.registry.activate(model, version,
                                           recipe=self._card_recipe(model, previous, version),
                                           pending=pending_recipes)
            if previous != version:
                self._tell(self.taken_up, model, version)
            return {"forced": False, "gate_report_id": None}
        with self._admit_lock:
            slot = self.registry.models()[model]
            previous, history = slot.active, list(slot.history)
            if replacing is not None and previous != replacing:
                raise ActiveChanged(f"{model} {previous} was made active while {version} was "
                                    f"gated against {replacing}: nothing changed; promote again")
            if previous == version:
                return {"forced": False, "gate_report_id": None}
            gate, forced, stale = self._admission(det, force=force, reason=reason,
                                                  role="active", recipes=pending_recipes)
            self.registry.activate(model, version,
                                   recipe=self._card_recipe(model, previous, version),
                                   pending=pending_recipes)
            try:  # an activation that cannot be recorded does not stand
                self._admit(det, role="active", actor=actor, gate=gate, forced=forced,
                            reason=reason, action=f"force_{action}" if forced else action,
                            details={"from": previous,
                                     "gate_report_id": None if gate is None else gate.id,
                                     "gate_passed": None if gate is None else gate.passed,
                                     **stale, **self._pins_of(model, previous),
                                     **details})
            except Exception:
                if previous is not None:
                    # the history as it was: the activation took ``version`` out of it
                    # (each earlier version once), and a pop alone lost it for good
                    self.registry.revert(model, version, previous, history=history,
                                         recipe=self._card_recipe(model, version, previous))
                raise
        self._tell(self.taken_up, model, version)
        self._shadow_now_active(model, version, actor=actor, how=f"{action}d by {actor}")
        if self.rollout is not None and action == "activate":
            self.rollout.stop(model, f"{actor} activated {version}")
        return {"forced": forced, "gate_report_id": None if gate is None else gate.id}

    def _shadow_now_active(self, model: str, version: str, *, actor: str, how: str) -> None:
        """A shadowed version that became the active one has nothing left to be compared
        with: its shadow is stopped and recorded (it would go on showing as running while
        it compared nothing)."""
        runner = self.shadow
        session = None if runner is None else runner.session(model)
        if runner is None or session is None or session.version != version:
            return
        if runner.stop(model) is not session:
            return  # stopped by someone else meanwhile
        try:  # the activation stands: a failed audit row must not answer it as failed
            self.records.audit(actor=actor, action="shadow_stop", model=model, version=version,
                               reason=f"{model} {version} became the active version ({how})",
                               details={"run_id": session.run_id, **session.counts()})
        except Exception as exc:
            log.warning("shadow of %s %s stopped (it is active now), not recorded: %s",
                        model, version, exc)

    def first_version(self, det: Detector, *, actor: str, action: str = "activate",
                      reason: str = "the first version of a model: there is nothing to gate "
                                    "it against") -> None:
        """Record that the first loaded version of a new model name became active (the
        registry makes it so when it loads it: nothing else could judge for that name);
        ``action`` ``restore``: loaded again at start-up as kept (:mod:`.kept`)."""
        if self._records is None:
            return
        self._admit(det, role="active", actor=actor, gate=None, forced=False, reason=reason,
                    action=action,
                    details={"from": None, "gate_report_id": None, "gate_passed": None})

    def _admit(self, det: Detector, *, role: str, actor: str, gate: GateReportRow | None,
               forced: bool, reason: str, action: str, details: dict[str, Any]) -> None:
        """An admission of ``det`` and its audit entry (``action``), in one transaction."""
        card = det.card
        self.records.admit(model=card.name, version=card.version, sha256=card.sha256, role=role,
                           actor=actor, gate=gate, forced=forced, reason=reason,
                           lineage=self._lineage(det),
                           audit={"actor": actor, "action": action, "model": card.name,
                                  "version": card.version, "reason": reason, "details": details})

    def put_recipe(self, recipe: Recipe, *, actor: str) -> None:
        """Add or replace a recipe (over the API), recorded as ``recipe_put``. A recipe
        that pins a version other than the active one makes that version judge parts: it
        must be admitted as an activation would be (no force here: activate or force that
        version first)."""
        pins = [(recipe.model, recipe.model_version)]
        if (fused := recipe.fused()) is not None:
            pins.append(fused)
        with contextlib.ExitStack() as held:
            for model, version in pins:
                # a pinned version that was unloaded is loaded again (on disk, it is the
                # version chosen); held until the recipe pins it
                held.enter_context(self.registry.loaded(model, version))
                self.registry.detector(model, version)  # 404 for a model or version never loaded
            self._put_recipe(recipe, pins, actor=actor)

    def _put_recipe(self, recipe: Recipe, pins: list[tuple[str, str | None]], *,
                    actor: str) -> None:
        with self._admit_lock:
            pinned: list[str] = []
            admitted: list[tuple[Detector, GateReportRow | None]] = []
            for model, version in pins:
                if version is None or self.registry.models()[model].active == version:
                    continue  # a version already judging
                if self._records is not None:
                    det = self.registry.detector(model, version)
                    try:
                        gate, _, _ = self._admission(det, force=False, reason="",
                                                     role="pinned", recipes=[recipe])
                    except GateRefused as exc:
                        raise GateRefused(
                            f"recipe {recipe.name} pins {model} {version}, which may not judge "
                            f"parts: {exc.message.split('; it may not')[0]}. Pin an admitted "
                            "version, or activate this one first (forced with a reason if need "
                            "be)") from None
                    admitted.append((det, gate))
                pinned.append(f"{model} {version}")
            try:
                before = self.registry.recipe(recipe.name)
            except NotFoundError:
                before = None
            self.registry.add_recipe(recipe)
            if self._records is None:
                return
            try:  # a change that cannot be recorded does not stand
                self._record_recipe(recipe, before, pinned, admitted, actor)
            except Exception:
                self.registry.restore_recipe(recipe.name, before)
                raise

    def recipe_dropped(self, name: str, *, configured: bool, actor: str,
                       waits: bool = False) -> None:
        """``recipe_delete`` in the audit log: a recipe put over the API was dropped, and
        the configuration's judges again (``configured``), waits again for its model on a
        fleet box (``waits``: recorded only then; the record said the name was gone), or
        the name is gone."""
        if self._records is not None:
            details: dict[str, Any] = {"recipe": name, "configured": configured}
            if waits:
                details["waits"] = True
            self._records.audit(actor=actor, action="recipe_delete", details=details)

    def _record_recipe(self, recipe: Recipe, before: Recipe | None, pinned: list[str],
                       admitted: list[tuple[Detector, GateReportRow | None]], actor: str) -> None:
        """``recipe_put`` in the audit log, and an admission (role ``pinned``, with the gate
        report that admitted it) for each version it pins beside the active one: one
        transaction."""
        audit: dict[str, Any] = {"actor": actor, "action": "recipe_put", "model": recipe.model,
                 "version": recipe.model_version,
                 "details": {"recipe": recipe.name, "pinned": pinned,
                             "anomaly_model": None if recipe.anomaly is None else recipe.anomaly.model,
                             "before": None if before is None else {
                                 "model": before.model, "model_version": before.model_version}}}
        if not admitted:
            self.records.audit(**audit)
            return
        self.records.admit_all([
            {"model": det.card.name, "version": det.card.version, "sha256": det.card.sha256,
             "role": "pinned", "actor": actor, "gate": gate, "forced": False,
             "reason": f"pinned by recipe {recipe.name}", "lineage": self._lineage(det)}
            for det, gate in admitted], audit=audit)

    def _pins_of(self, model: str, version: str | None) -> dict[str, Any]:
        """Recipes that pin ``version`` of ``model`` (they keep judging with it whatever is
        active): named in the audit entry of what replaced it."""
        if version is None:
            return {}
        names = [r.name for r in self.registry.recipes()
                 if (r.model, r.model_version) == (model, version)
                 or (r.anomaly is not None and (r.anomaly.model, r.anomaly.model_version)
                     == (model, version))]
        return {"still_pinned_by": names} if names else {}

    def rollback(self, model: str, *, actor: str, reason: str = "",
                 expect: str | None = None) -> str:
        """Make the previous version active again, unless it may not judge parts (a failed
        gate, an automatic rollback since its last passing gate: an admin activates the
        version they want instead, forcing it with a reason if need be); ``expect``: the
        active version the caller saw (two admins rolling back at once went back two).
        Recorded as ``rollback``; one whose audit entry cannot be written is undone and
        raises (nothing changed: a retry goes back once; session 49)."""
        with self._admit_lock:
            previous = self.registry.models().get(model)
            old = None if previous is None else previous.active
            if expect is not None and old != expect:
                raise ActiveChanged(f"{model} {expect} is not the active version now "
                                    f"({old}): nothing rolled back; look again")
            target = self.registry.previous(model)
            # unloaded from memory: loaded again from its package, and held until active
            with self.registry.loaded(model, target):
                if target is not None and self._records is not None:
                    refused = self._standing(self.registry.detector(model, target),
                                             any_pass_clears=True)[1]
                    if refused is not None:
                        raise GateRefused(f"a rollback would make {refused}: activate the "
                                          f"version you want (POST /v1/models/{model}/activate;"
                                          " force with a reason if need be)")
                history = [] if previous is None else list(previous.history)
                version = self.registry.rollback(
                    model, expect=target,
                    recipe=None if target is None else self._card_recipe(model, old, target))
                if self._records is not None:
                    # a rollback that cannot be recorded does not stand, as an activation:
                    # it stood and answered 5xx, so the admin rolled back again, two back,
                    # and a standalone server's restart brought the version back (session 49)
                    try:
                        self.records.audit(actor=actor, action="rollback", model=model,
                                           version=version, reason=reason,
                                           details={"from": old, **self._pins_of(model, old)})
                    except Exception:
                        if old is not None:
                            self.registry.revert(model, version, old, history=history,
                                                 recipe=self._card_recipe(model, version, old))
                        raise
        # (an automatic rollback stands unrecorded: it tells before its entry is written)
        self._went_back(model, version)
        if self._records is not None:
            self._shadow_now_active(model, version, actor=actor, how=f"rolled back to by {actor}")
        if self.rollout is not None:
            self.rollout.stop(model, f"{actor} rolled back to {version} by hand")
        return version

    def _card_recipe(self, model: str, old: str | None, new: str) -> Recipe | None:
        """The recipe to put with making ``new`` active in place of ``old`` (the registry
        does both in one step): the recipe a card brought follows the active card, so a
        new version is judged at its own calibrated thresholds, as the gate judged it.
        None when a recipe the line configured holds that name (anything but the old
        card's own), or there is none."""
        if old is None or old == new:
            return None
        try:
            current = self.registry.recipe(default_recipe_name(model))
            old_card = self.registry.detector(model, old).card
            det = self.registry.detector(model, new)
        except NotFoundError:
            return None
        return self._follows(current, old_card, det)

    @staticmethod
    def _lineage(det: Detector) -> dict[str, Any]:
        return {} if det.card.lineage is None else det.card.lineage.model_dump(mode="json")

    # -- shadow ---------------------------------------------------------------------------
    def start_shadow(self, model: str, version: str, *, sample_rate: float | None, actor: str,
                     force: bool = False, reason: str = "") -> dict[str, Any]:
        with self.registry.loaded(model, version):  # until its session holds it
            return self._start_shadow(model, version, sample_rate=sample_rate, actor=actor,
                                      force=force, reason=reason)

    def _start_shadow(self, model: str, version: str, *, sample_rate: float | None, actor: str,
                      force: bool, reason: str) -> dict[str, Any]:
        loaded = self.registry.detector(model, version)
        active = self.registry.models()[model].active
        if version == active:
            raise ConfigError(f"{model} {version} is the active version: shadow another one")
        gate, forced, stale = self._admission(loaded, force=force, reason=reason, role="shadow")
        assert self.shadow is not None
        rate = self.settings.shadow.sample_rate if sample_rate is None else sample_rate
        session = self.shadow.start(model, loaded.package, rate, actor)
        self._admit(loaded, role="shadow", actor=actor, gate=gate, forced=forced, reason=reason,
                    action="force_shadow" if forced else "shadow_start",
                    details={"run_id": session.run_id, "sample_rate": rate, "active": active,
                             "gate_report_id": None if gate is None else gate.id,
                             **stale, "judged_as": self.judged_as(model, version)})
        return self.shadow_status(model)

    def stop_shadow(self, model: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        self.registry.detector(model)  # 404 for an unknown model
        runner = self._runner()
        session = runner.stop(model)
        if session is None:
            if runner.session(model) is not None:  # claimed by another stop, or its death
                raise NotFoundError(f"{model}'s shadow is being stopped already (by another "
                                    "stop, or its process ended): its status says stopping "
                                    "until it has, then stopped")
            raise NotFoundError(f"{model} has no shadow running")
        self.records.audit(actor=actor, action="shadow_stop", model=model, version=session.version,
                           reason=reason, details={"run_id": session.run_id, **session.counts()})
        return self.shadow_status(model)

    def shadow_status(self, model: str) -> dict[str, Any]:
        active = self.registry.models()[model].active if model in self.registry.models() else None
        if active is None:
            self.registry.detector(model)  # 404 naming the loaded models
        status = self._runner().status(model, active)
        shadow = status.get("shadow") or {}
        return {**status, "judged_as": self.judged_as(model, shadow.get("version"))}

    def judged_as(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """How a shadow of ``model`` (``version``) judges under each recipe whose
        inspections it is offered (:meth:`ShadowRunner.offer`): alone or beside the
        good-only model the recipe fuses with it, or, for that good-only model, fused with
        the recipe's detector (its name, and version where the recipe pins one). A recipe
        pinning ``version`` itself is left out: its frames are not offered (the shadow's
        version serves them)."""
        out = []
        for r in sorted(self.registry.recipes(), key=lambda r: r.name):
            fused = r.fused()
            if version is not None and ((r.model, r.model_version) == (model, version) or (
                    fused is not None and fused == (model, version))):
                continue
            if r.model == model:
                other = None if fused is None else " ".join(v for v in fused if v)
                out.append({"recipe": r.name, "fused_with": other,
                            "fused_kind": None if fused is None else "anomaly"})
            elif fused is not None and fused[0] == model:
                other = r.model if r.model_version is None else f"{r.model} {r.model_version}"
                out.append({"recipe": r.name, "fused_with": other, "fused_kind": "detector"})
        return out

    def _runner(self) -> ShadowRunner:
        self.records  # noqa: B018 - raises the no-store error
        assert self.shadow is not None
        return self.shadow

    # -- promotion ------------------------------------------------------------------------
    def promote(self, model: str, version: str, *, golden: str, golden_version: int | None = None,
                recipe: str | None = None, actor: str, force: bool = False,
                reason: str = "") -> dict[str, Any]:
        """Gate ``version`` against the active one, activate it, and watch it."""
        # an unloaded version is loaded again, and held from its gate to its activation
        with self.registry.loaded(model, version):
            return self._promote(model, version, golden=golden, golden_version=golden_version,
                                 recipe=recipe, actor=actor, force=force, reason=reason)

    def _promote(self, model: str, version: str, *, golden: str, golden_version: int | None,
                 recipe: str | None, actor: str, force: bool, reason: str) -> dict[str, Any]:
        previous = self.registry.models()[model].active if model in self.registry.models() else None
        self.registry.detector(model, version)
        if previous is None or previous == version:
            raise ConfigError(f"{model} {version} is already active: nothing to promote")
        rule = self.recipe_for(model, recipe)
        if rule.model_version not in (None, version):
            # it goes on judging with the pinned version: the watch, counting the promoted
            # version's inspections under it, would count none and never roll back
            # (lifecycle review, session 36)
            raise ConfigError(f"recipe {rule.name} pins {model} {rule.model_version}: it does "
                              f"not judge with {version}, and the promotion's watch would count "
                              "none of its inspections; promote with a recipe that follows the "
                              "active version (recipe: NAME)")
        # (held loaded from its gate to its activation by promote)
        required = self.golden_required(model)
        if (self.settings.gate.require_gate and required not in (None, golden)
                and not force):
            # its passes would admit nothing: refused before any replay (session 47)
            raise ConfigError(
                f"lifecycle.gate.golden requires golden set {required} for {model}: a "
                f"promotion gated on {golden} would not admit {model} {version} "
                f"(lifecycle.gate.require_gate); promote on it, POST /v1/models/{model}/"
                f"promote {{\"version\": \"{version}\", \"golden\": \"{required}\"}}, or "
                "force it with a reason (recorded)" + self._unmade(model))
        # a recipe following the active version that cannot serve it refuses the
        # activation, forced or not: said before the gate replays the golden set (a fleet
        # box's pull spent minutes of CPU on it each time, to be refused; session 49)
        self.registry.check_followers(model, version,
                                      recipe=self._card_recipe(model, previous, version))
        if self.settings.gate.require_gate:
            # admission wants a pass under every recipe that would judge it (rule 5): one
            # gate under one recipe, then a 409 at activation, was a promotion that could
            # not succeed (session 43). The watch's recipe's report is the one answered.
            reports = self.gate_all(model, version, golden=golden,
                                    golden_version=golden_version, actor=actor)
            report = next((r for r in reports if r.recipe == rule.name), reports[0])
            failed = [r for r in reports if not r.passed]
            if failed and not force:
                # every recipe it failed under, and why: the activation would name one (a
                # fleet box reports this to its hub; session 43, fleet pass)
                passed = [r.recipe for r in reports if r.passed]
                # a few in full: one per recipe grew the 409 without end (session 43,
                # late review); the reports are stored, and listed by /gates
                more = len(failed) - MAX_TOLD
                raise GateRefused(
                    f"{model} {version} failed its gate under {len(failed)} of {len(reports)} "
                    f"recipe(s) that would judge it, on golden set {failed[0].golden.name}:"
                    f"{failed[0].golden.version}: "
                    + "; ".join(f"recipe {r.recipe} (report {r.id}): {'; '.join(r.reasons)}"
                                for r in failed[:MAX_TOLD])
                    + (f"; and under {more} more (GET /v1/models/{model}/gates lists each)"
                       if more > 0 else "")
                    + (f" (passed under {_few(passed)})" if passed else "")
                    + "; it may not become active unless an admin forces it with a reason "
                    "(force: true, reason: ...), which is recorded")
        else:
            report = self.gate(model, version, golden=golden, golden_version=golden_version,
                               recipe=rule.name if recipe is not None else None, actor=actor)
        # the watch's previous version is the one the gate compared with: refused if
        # another admin made another active meanwhile (lifecycle review, session 32)
        # what its watch needs is recorded with it: a restart during the watch starts it
        # again from the audit log (:meth:`resume_watch`; session 47)
        self.activate(model, version, actor=actor, force=force, reason=reason,
                      action="promote", replacing=previous,
                      details={"rollout": {"previous": previous, "recipe": rule.name,
                                           "gate_report_id": report.id}})
        assert self.rollout is not None
        watch = self.rollout.start(model=model, version=version, previous=previous,
                                   recipe=rule.name, actor=actor, gate_report_id=report.id)
        return {"report": report, "rollout": watch.to_json()}

    def resume_watch(self, model: str, version: str) -> Watch | None:
        """At start-up (:mod:`.kept`, then a fleet box's pulled models:
        ``fleet/box/models.py``), ``version`` judging again: when the audit log's last
        promotion of ``model`` is of it and nothing ended its watch after it (the server
        stopped during the watch), it is watched again, as the promotion recorded it
        (previous version, recipe, gate report), counted afresh from now. Not when the
        version to roll back to is not loaded, or the promotion was recorded by a release
        before session 47 (a WARNING each), nor again when it is watched already (both
        restores asking). The watch resumed, or None."""
        if not self._resumable(model, version):  # (the audit log not asked for nothing)
            return None
        return self.resume_promotion(model, version, self.records.open_promotion(model))

    def _resumable(self, model: str, version: str) -> bool:
        """Whether a watch of ``version`` of ``model`` may be resumed: the server keeps an
        audit log and rollouts, and it is not watched already (both restores asking: a
        fleet box's after the kept models')."""
        if self._records is None or self.rollout is None:
            return False
        running = self.rollout.watching(model)
        return running is None or running.version != version

    def resume_promotion(self, model: str, version: str,
                         promoted: dict[str, Any] | None) -> Watch | None:
        """:meth:`resume_watch` on ``promoted``, the open promotion of ``model`` read by
        the caller (``Records.open_promotion``): a fleet box's restore reads it once for
        the pulled version it loads to roll back to and for the watch (session 49: two
        reads, one failing, loaded none and resumed, or loaded one and resumed none)."""
        if not self._resumable(model, version) or promoted is None \
                or promoted["version"] != version:
            return None
        at = promoted["created_at"]
        said = (f"{model} {version}, promoted by {promoted['actor']} (audit entry "
                f"{promoted['id']}, {at.isoformat() if isinstance(at, datetime) else at}), was "
                "being watched when the server stopped")
        spec = (promoted["details"] or {}).get("rollout")
        previous = spec.get("previous") if isinstance(spec, dict) else None
        recipe = spec.get("recipe") if isinstance(spec, dict) else None
        gate_id = spec.get("gate_report_id") if isinstance(spec, dict) else None
        if not (isinstance(previous, str) and isinstance(recipe, str | None)
                and isinstance(gate_id, str | None)):
            log.warning("%s; its watch cannot resume: the promotion was recorded by an older "
                        "release, without what its watch needs (the recipe it watched). It "
                        "judges unwatched: to watch it, roll back and promote it again", said)
            return None
        slot = self.registry.models().get(model)
        if slot is None or slot.active != version:
            return None
        if previous not in slot.versions:
            log.warning("%s; its watch cannot resume: %s %s, the version to roll back to, is "
                        "not loaded. It judges unwatched: load %s again (POST /v1/models), "
                        "then roll back and promote %s again to watch it", said, model,
                        previous, previous, version)
            return None
        assert self.rollout is not None  # (_resumable)
        watch = self.rollout.start(model=model, version=version, previous=previous,
                                   recipe=recipe, actor=SYSTEM, gate_report_id=gate_id)
        reason = (f"{said}: watched again from the restart, its counts afresh (inspections "
                  "before the restart are not counted)")
        log.info("rollout watch resumed: %s (rolls back to %s past the bounds)", reason,
                 previous)
        try:  # the watch stands: the safety net matters more than its entry
            self.records.audit(actor=SYSTEM, action="rollout_resumed", model=model,
                               version=version, reason=reason,
                               details={"promote_audit_id": promoted["id"],
                                        "promoted_by": promoted["actor"],
                                        **iso_times(watch.to_json())})
        except Exception as exc:
            log.error("rollout watch of %s %s resumed, not in the audit log: %s", model,
                      version, exc)
        return watch

    def rollout_status(self, model: str) -> dict[str, Any]:
        self.registry.detector(model)
        self.records  # noqa: B018
        assert self.rollout is not None
        watch = self.rollout.get(model)
        if watch is None:
            raise NotFoundError(f"{model} has not been promoted since the server started")
        return watch.to_json()

    def _auto_rollback(self, w: Watch, why: str) -> bool:
        """Called by the watch, under its lock: the previous version judges again, as a
        rollback (the rejected version is not left in the history for a later rollback to
        bring back), and only if the watched version is still the active one (an admin may
        have chosen another meanwhile)."""
        with self._admit_lock:
            if not self.registry.revert(w.model, w.version, w.previous, forget=True,
                                        recipe=self._card_recipe(w.model, w.version, w.previous)):
                log.warning("rollout of %s %s not rolled back (%s): %s is no longer active",
                            w.model, w.version, why, w.version)
                return False
        log.warning("rollout of %s %s rolled back to %s: %s", w.model, w.version, w.previous, why)
        if self.kept is not None:  # a restart must not bring the rejected version back
            self.kept.activated(w.model, w.previous)
        self._went_back(w.model, w.previous)  # nor a fleet box's pull (held) bring it back
        try:  # the rollback stands: its watch ends as rolled back, not as "not rolled back"
            self.records.audit(actor=SYSTEM, action="auto_rollback", model=w.model,
                               version=w.previous, reason=why,
                               details={"from": w.version, "promoted_by": w.actor,
                                        "gate_report_id": w.gate_report_id,
                                        **self._pins_of(w.model, w.version)})
        except Exception as exc:  # a database failing: the kept file has it (kept.py)
            log.error("rollout of %s %s rolled back to %s, not in the audit log (%s): the "
                      "models kept across a restart keep %s active", w.model, w.version,
                      w.previous, type(exc).__name__, w.previous)
        # a shadow of the version now active stops all the same (its own entry's failure
        # is logged there): it ran on, comparing the version with itself (last read, s. 48)
        self._shadow_now_active(w.model, w.previous, actor=SYSTEM, how="an automatic rollback")
        return True

    def _went_back(self, model: str, version: str) -> None:
        """Tell each of :attr:`went_back` that a rollback made ``version`` of ``model``
        judge; one that fails is logged (the rollback stands)."""
        self._tell(self.went_back, model, version)

    @staticmethod
    def _tell(listeners: list[Callable[[str, str], None]], model: str, version: str) -> None:
        """Call each of ``listeners`` (:attr:`went_back`, :attr:`taken_up`) with ``model``
        and the version now judging; one that fails is logged (what it was told stands)."""
        for told in list(listeners):
            try:
                told(model, version)
            except Exception:
                log.exception("%s %s judging, not kept by %r", model, version, told)

    def alarm_changed(self, c: Change) -> None:
        """A recipe's fail-rate alarm raised or cleared: in the audit log, with a store
        (handed to a thread of its own; one that cannot be written is logged)."""
        records = self._records
        if records is None:
            return

        def write() -> None:
            try:
                records.audit(actor=SYSTEM, action=f"fail_rate_{c.state}", model=c.model,
                              version=c.version, reason=c.why, details=c.details)
            except Exception as exc:
                log.error("fail-rate alarm of %s not in the audit log: %s", c.recipe, exc)

        try:
            future = self._alarm_audit.submit(write)
        except RuntimeError:  # shutting down
            log.warning("fail-rate alarm of %s not in the audit log: shutting down", c.recipe)
            return
        self._alarm_writes.add(future)
        future.add_done_callback(self._alarm_writes.discard)

    def _watch_ended(self, w: Watch) -> None:
        if w.state == "rolled_back":
            return  # _auto_rollback said it
        self.records.audit(actor=SYSTEM, action=f"rollout_{w.state}", model=w.model,
                           version=w.version, reason=w.why, details=iso_times(w.to_json()))
