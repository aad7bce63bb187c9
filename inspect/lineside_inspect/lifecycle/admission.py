"""The admission rules of :class:`~lineside_inspect.lifecycle.manager.Lifecycle`: rules 1
to 5 of docs/lifecycle.md (section 3, "the admission rule"). Which recipes judge a
version once admitted (:meth:`AdmissionRules.judging`), whether its gate reports give it a
current pass under each (:meth:`AdmissionRules._reports`: a failure not cleared, a pass
against another active version, with another partner card, under other rules), why a
pass is stale, and what each refusal (409 ``gate_failed``) says; its words, with the gate
call that answers it, are :mod:`~lineside_inspect.lifecycle.refusals`'.

They are kept apart from the manager, which runs gates, shadows, promotions and
rollbacks and records them, so that the rules can be read, reviewed and changed in one
place (session 43 grew them into a large part of the manager). :class:`AdmissionRules` is
a mixin that ``Lifecycle`` inherits: its methods use the manager's registry, golden
library, records and settings, declared below. It imports no server code at run time (the
registry's type is imported for type checking only).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lineside_inspect.errors import ConfigError, GateRefused, LinesideError, NotFoundError
from lineside_inspect.lifecycle.config import LifecycleSettings
from lineside_inspect.lifecycle.gate import (
    fusion_partner,
    gated_as,
    rules_digest,
    rules_digests,
)
from lineside_inspect.lifecycle.golden import GoldenLibrary
from lineside_inspect.lifecycle.records import Records
from lineside_inspect.lifecycle.refusals import (
    NOW,
    PUT_FIRST,
    gate_call,
    missing_note,
    put_first_note,
    stale_note,
)
from lineside_inspect.names import is_name
from lineside_inspect.package import ModelCard, card_digest, default_recipe_name
from lineside_inspect.recipes import Recipe, card_recipe
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store.models import GateReportRow

if TYPE_CHECKING:
    from lineside_inspect.server.registry import Registry

log = logging.getLogger("lineside.lifecycle")


@dataclass
class _Standing:
    """What a version's gate reports say (:meth:`AdmissionRules._reports`)."""

    gate: GateReportRow | None = None  # admits: a current pass under each judging recipe
    passes: dict[str, GateReportRow] = field(default_factory=dict)  # by judging recipe
    any_pass: GateReportRow | None = None  # the newest current pass, under any recipe
    failed: GateReportRow | None = None  # a failure not cleared: refuses
    failures: list[GateReportRow] = field(default_factory=list)  # every one not cleared
    missing: dict[str, str] = field(default_factory=dict)  # judging recipe -> why no pass
    why: str = ""  # the refusal (after the model's name and version) when gate is None
    stale_row: GateReportRow | None = None  # a pass that no longer admits
    own: bool = False  # what judges is the card's own recipe taken for want of any


_Why = tuple[str, list[str], str]  # why a pass is stale: stale_note's why, recipes, how


@dataclass
class _Seen:
    """The passes against the active version, current or stale (:meth:`AdmissionRules._seen`)."""

    passes: dict[str, GateReportRow] = field(default_factory=dict)  # newest current, by recipe
    any_pass: GateReportRow | None = None  # the newest current pass, under any recipe
    first_stale: tuple[GateReportRow, _Why] | None = None  # the newest stale pass, and why
    stale_by: dict[str, tuple[GateReportRow, _Why]] = field(default_factory=dict)  # by recipe


class _Kept:
    """The ``recipe_sha256`` a report judged by a recipe's rules may keep: the digests
    (:func:`~lineside_inspect.lifecycle.gate.rules_digests`) of each of its ``variants``
    (:meth:`AdmissionRules._rules_kept`), each digested at most once and only as far as a
    digest asked about needs (a pass under the recipe as it stands matches the first)."""

    def __init__(self, variants: Sequence[Recipe] = ()) -> None:
        self._todo = list(variants)
        self._known: set[str] = set()

    def __contains__(self, digest: object) -> bool:
        while digest not in self._known and self._todo:
            self._known |= rules_digests(self._todo.pop(0))
        return digest in self._known


@dataclass(frozen=True)
class _Judge:
    """How one recipe judges a model now (:meth:`AdmissionRules._judge`), held against each
    pass under its name."""

    rule: Recipe | None = None  # as it judges once admitted; None: see stale
    stale: _Why | None = None  # why every pass under it is stale; None: no version judges
    again: list[str] = field(default_factory=list)  # the recipe a new gate names, if any
    partner: tuple[str, str | None] | None = None  # :meth:`AdmissionRules._partner_now`
    kept: _Kept = field(default_factory=_Kept)  # :meth:`AdmissionRules._rules_kept`


class AdmissionRules:
    """Admission rules 1 to 5 (docs/lifecycle.md), as methods of the
    :class:`~lineside_inspect.lifecycle.manager.Lifecycle` that inherits them."""

    # what the rules read, set by Lifecycle
    settings: LifecycleSettings
    registry: Registry
    library: GoldenLibrary

    if TYPE_CHECKING:
        @property
        def records(self) -> Records: ...

        def recipe_for(self, model: str, name: str | None, *,
                       as_partner: bool = False) -> Recipe: ...

    def _admission(self, det: Detector, *, force: bool, reason: str, role: str,
                   recipes: Sequence[Recipe] = ()
                   ) -> tuple[GateReportRow | None, bool, dict[str, Any]]:
        """The gate report that admits ``det``, whether the admission is forced, and what
        the audit entry adds (the current pass under each recipe that judges it, when more
        than one does: ``gate_reports``; a forced admission over passes that do not admit:
        ``gate_stale``, why, and ``gate_missing``, the recipes without one); raises
        :class:`GateRefused` when it may not judge parts. ``recipes``: recipes about to be
        put in place of those of their names (a recipe put, an activation's pending ones):
        a pass is judged by them (:meth:`_pass_stale`), and they may judge ``det``
        (:meth:`judging`). ``role``: ``pinned`` is judged by the recipes that pin it,
        ``active`` and ``shadow`` by every recipe that would judge it once active."""
        card = det.card
        st, refused = self._standing(det, recipes=recipes, role=role)
        gate, failed = st.gate, st.failed
        required = refused is None and gate is None and self.settings.gate.require_gate
        if required:
            refused = f"{card.name} {card.version} " + (
                st.why or self._never_gated(det, st, {r.name: r for r in recipes}, role))
        if refused is None:
            extra: dict[str, Any] = ({"gate_reports": {n: r.id for n, r in st.passes.items()}}
                     if gate is not None and len(st.passes) > 1 else {})
            return gate or st.any_pass, False, extra
        if not force:
            raise GateRefused(f"{refused}; it may not become {role} unless an admin forces it "
                              "with a reason (force: true, reason: ...), which is recorded",
                              failed=None if failed is None else failed.id)
        if not reason.strip():
            raise ConfigError("force needs a reason: it is recorded in the audit log")
        # the report that was overridden, recorded with it: a failed one, or the pass that
        # no longer admitted and why (session 43: it recorded none), and the recipes that
        # had no current pass (session 43, every judging recipe)
        if failed is None and gate is None:
            extra = {"gate_missing": list(st.missing)} if required else {}  # (a list)
            row = st.stale_row or st.any_pass
            if row is not None:
                return row, True, {"gate_stale": st.why or refused, **extra}
            return None, True, extra
        if failed is not None and len(st.failures) > 1:
            # every failure overridden, by the recipe it failed under: a forced promotion
            # that failed under several recipes recorded one (session 43, late review)
            return failed, True, {"gate_failed": {
                str(r.readable_report().get("recipe") or "?"): r.id
                for r in reversed(st.failures)}}
        return failed or gate, True, {}

    def _standing(self, det: Detector, *, any_pass_clears: bool = False,
                  recipes: Sequence[Recipe] = (), role: str = "active"
                  ) -> tuple[_Standing, str | None]:
        """(what the reports say, :meth:`_reports`; why it may not judge whatever
        require_gate says: a failed gate not cleared, or an automatic rollback not followed
        by a passing gate). ``any_pass_clears``: a
        failure counts as cleared by a later pass against any version (a rollback goes
        back to a version once admitted, whatever is active now)."""
        card = det.card
        st = self._reports(det, any_pass_clears=any_pass_clears, recipes=recipes, role=role)
        failed = st.failed
        refused = None
        if failed is not None:
            reasons = failed.readable_report().get("reasons")
            why = ("; ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""
                   ) or "it failed"
            # the recipe it failed under: with several judging it (require_gate), which one
            # is what an admin, or a hub's fleet page, must see (session 43, fleet pass)
            under = failed.readable_report().get("recipe")
            named = f" under recipe {under}" if isinstance(under, str) else ""
            refused = (f"{card.name} {card.version} failed its gate (report {failed.id}{named} "
                       f"on golden set {failed.golden_name}:{failed.golden_version}: {why})")
        # asked only when the gate's reports do not refuse it already
        rolled = None if refused is not None else self.records.last_rollback(card.name,
                                                                              card.version)
        passed = st.any_pass
        if rolled is not None and (passed is None or passed.created_at <= rolled["created_at"]):
            # the line judged it and took it off: only a new passing gate (or a forced,
            # recorded decision) puts it back, as after a failed gate
            refused = (f"{card.name} {card.version} was rolled back automatically at "
                       f"{rolled['created_at']:%Y-%m-%d %H:%M} UTC ({rolled['reason']}), and "
                       "has passed no gate since")
        return st, refused

    def _reports(self, det: Detector, *, any_pass_clears: bool = False,
                 recipes: Sequence[Recipe] = (), role: str = "active") -> _Standing:
        """What ``det``'s gate reports say (:class:`_Standing`): the pass that admits it, a
        failed report that refuses it, or why its passes do not admit it.
        Only reports made for this card count (the same graph re-calibrated is another
        candidate); reports from before cards were kept count only when they failed.

        A pass admits only if it compared ``det`` with the active version (graph and card):
        a pass against another version says nothing about replacing this one. Every
        failure (against whichever version) stands until a later pass against the active
        version on the same golden set (that version or a newer one) under the same
        recipe, fused with the same partner card when the recipe fuses one: a pass on a
        set, under a recipe or with a partner chosen to be easy does not clear it, nor
        does making another version active.

        A pass also admits only while its recipe (by name, as it stands now or about to
        be put: ``recipes``) fuses the partner card it was judged with, or none if it was
        judged alone (:meth:`_partner_now`; session 42): a pass with good-only version 1
        says nothing of the verdicts the line gives with version 2. A report from before
        gates kept the partner (none named) fits a recipe that fuses nothing only. And only
        while that recipe judges by the rules it was judged by (``recipe_sha256``; session
        43): a recipe replaced by one with other rules, or gone, stales it
        (:meth:`_pass_stale`).

        And it admits only with one such pass under each recipe that would judge ``det``
        once admitted as ``role`` (:meth:`judging`; session 43): a pass under one station's
        recipe says nothing of another's regions, floors or partner."""
        card = det.card
        mine = card_digest(card)
        active = self._active_card(card.name)

        def card_of(row: GateReportRow, side: str) -> str | None:
            half = row.readable_report().get(side)
            return half.get("card_sha256") if isinstance(half, dict) else None
        rows = [r for r in self.records.gates_of(card.name, card.version, card.sha256)
                if card_of(r, "candidate") == mine
                or (card_of(r, "candidate") is None and not r.passed)]
        now = [r for r in rows if card_of(r, "against") == active]
        failures = self._uncleared(rows, rows if any_pass_clears else now)
        if failures:  # (each is recorded by a forced admission: session 43, late review)
            return _Standing(failed=failures[0], failures=failures)
        pending = {r.name: r for r in recipes}
        judging, own = self.judging(card.name, card.version, role=role, pending=pending)
        seen = self._seen(det, now, judging, pending, own=own, role=role)
        if all(n in seen.passes for n in judging):
            return _Standing(gate=seen.passes[judging[0]], passes=seen.passes,
                             any_pass=seen.any_pass, own=own)
        return self._refused(det, rows, now, judging, seen, pending, own=own, role=role)

    def _uncleared(self, rows: list[GateReportRow],
                   clearing: list[GateReportRow]) -> list[GateReportRow]:
        """The failed reports among ``rows`` that no later pass in ``clearing`` clears
        (:meth:`_reports`), newest first."""
        @functools.cache
        def kept(name: str) -> frozenset[str]:
            # once per recipe and call: it was digested again for each failure and pass
            rule = self._recipe_now(name, {})
            return frozenset() if rule is None else frozenset(rules_digests(rule))
        failures: list[GateReportRow] = []
        for failed in (r for r in rows if not r.passed):
            bad = failed.readable_report()
            cleared = any(p.passed and p.created_at > failed.created_at
                          and p.golden_name == failed.golden_name
                          and p.golden_version >= failed.golden_version
                          # the same rules, not only the same name: a recipe can be replaced
                          and self._alike_rules(p.readable_report(), bad, kept)
                          # judged with the partner card that judged the failure: one that
                          # flags every part passes any detector, hiding the escapes that
                          # failed it (a failure naming none: fused with nothing, or judged
                          # before gates took the partner, session 41)
                          and bad.get("fused_card_sha256") in (
                              None, p.readable_report().get("fused_card_sha256"))
                          for p in clearing)
            if not cleared:
                failures.append(failed)
        return failures

    def _seen(self, det: Detector, now: list[GateReportRow], judging: list[str],
              pending: dict[str, Recipe], *, own: bool, role: str) -> _Seen:
        """Each pass in ``now`` (against the active version), current or stale, by the
        recipe it was judged under (:meth:`_reports`)."""
        @functools.cache
        def judge(name: str) -> _Judge:  # once per recipe and call, not once per report
            return self._judge(name, det, pending, own=own and name == judging[0])

        @functools.cache
        def put_first(name: str) -> bool:
            return self._put_first(name, pending, det, role)

        @functools.cache
        def golden(name: str) -> tuple[int, str] | str:  # once per set and call
            return self._golden_now(name)
        seen = _Seen()
        for r in (r for r in now if r.passed):
            name = r.readable_report().get("recipe")
            why = self._pass_stale(r, det, pending, judge, golden)
            if why is not None and isinstance(name, str) and put_first(name):
                why = (why[0], [name], PUT_FIRST)  # gated under it as it stands: no use
            if why is None:
                seen.any_pass = seen.any_pass or r
                if isinstance(name, str) and name in judging:
                    seen.passes.setdefault(name, r)
                continue
            seen.first_stale = seen.first_stale or (r, why)
            if isinstance(name, str) and name in judging:
                seen.stale_by.setdefault(name, (r, why))
        return seen

    def _refused(self, det: Detector, rows: list[GateReportRow], now: list[GateReportRow],
                 judging: list[str], seen: _Seen, pending: dict[str, Recipe], *, own: bool,
                 role: str) -> _Standing:
        """What :meth:`_reports` says of ``det`` without a current pass under each of
        ``judging``: which lack one, and why (the refusal's text, built only here)."""
        model = det.card.name
        missing = [n for n in judging if n not in seen.passes]
        blank = dict.fromkeys(missing, "")
        stale, old = seen.first_stale, next((r for r in rows if r.passed), None)
        if role == "pinned" and stale is not None:
            # a pass under another recipe than the one pinning it says nothing of it
            stale = seen.stale_by.get(judging[0])
            if stale is None:  # (a pass against the active version is not "another")
                old = next((r for r in rows if r.passed and r not in now), None)
        if len(judging) == 1 and seen.any_pass is None:
            # one recipe judges it and no pass under any recipe admits: said as before the
            # every-recipe rule (session 43)
            if stale is not None:
                return _Standing(missing=blank, stale_row=stale[0], own=own, why=stale_note(
                    stale[0], model, *stale[1], golden=self.golden_required(model)))
            if old is not None:
                return _Standing(missing=blank, own=own, stale_row=old, why=(
                    "has not been gated against the active version (lifecycle.gate."
                    f"require_gate); its passing gate report {old.id} compared it with "
                    f"version {old.against_version}, which is not the active one now: "
                    + self._gate_again(det, self.golden_required(model) or rows[0].golden_name,
                                       judging[0], pending, own=own, role=role)
                    + self._unmade(model)))
            return _Standing(missing=blank, own=own)
        if len(missing) == 1 and missing[0] in seen.stale_by:
            # the one recipe without a current pass had one that went stale: said so, as
            # before the every-recipe rule
            row, why = seen.stale_by[missing[0]]
            return _Standing(passes=seen.passes, any_pass=seen.any_pass, own=own, stale_row=row,
                             missing=blank, why=stale_note(
                                 row, model, *why, golden=self.golden_required(model)))
        return self._lacking(det, rows, judging, missing, seen, own=own, role=role)

    def _gate_again(self, det: Detector, golden: str, recipe: str, pending: dict[str, Recipe],
                    *, own: bool, role: str) -> str:
        """The gate call a refusal under the one recipe judging ``det`` ends with."""
        model, version = det.card.name, det.card.version
        if self._put_first(recipe, pending, det, role):
            return put_first_note(model, version, golden, recipe)
        return f"run {gate_call(model, version, golden, None if own else recipe)} first"

    def _lacking(self, det: Detector, rows: list[GateReportRow], judging: list[str],
                 missing: list[str], seen: _Seen, *, own: bool, role: str) -> _Standing:
        """The refusal of :meth:`_refused` under several recipes: each that lacks a current
        pass, and why (:func:`~lineside_inspect.lifecycle.refusals.missing_note`)."""
        lacking: dict[str, str] = {}
        for n in missing:
            if n in seen.stale_by:
                row, stale = seen.stale_by[n]
                lacking[n] = f"its passing gate report {row.id} {stale[0]}"
                continue
            other = next((r for r in rows if r.passed
                          and r.readable_report().get("recipe") == n), None)
            lacking[n] = ("no passing gate report under it" if other is None else
                          f"its passing gate report {other.id} compared it with version "
                          f"{other.against_version}, not the active one")
        stale_row = next((seen.stale_by[n][0] for n in missing if n in seen.stale_by), None)
        golden, held = ((rows[0].golden_name, "") if rows and self.golden_required(
            det.card.name) is None else self._golden_for(det.card.name))
        # the version the calls gate on (its latest), where the server holds the set
        now = self._golden_now(golden) if is_name(golden) else ""
        return _Standing(passes=seen.passes, any_pass=seen.any_pass, missing=lacking,
                         stale_row=stale_row, own=own,
                         why=missing_note(det.card.name, det.card.version, judging, lacking,
                                          golden, role=role, own=own, held=held,
                                          on=None if isinstance(now, str) else
                                          f"{golden}:{now[0]}"))

    def judging(self, model: str, version: str, *, role: str = "active",
                pending: dict[str, Recipe] | None = None) -> tuple[list[str], bool]:
        """The recipes (by name, sorted) whose inspections ``version`` of ``model`` would
        judge once admitted as ``role`` (session 43), ``pending`` ones in place of those of
        their names, and whether that is its card's own recipe taken for want of any
        (``<model>-default``, not put). ``active`` (and ``shadow``): recipes judging with
        the model that pin no other version of it (the card's own included: it follows the
        active card), and recipes fusing it, a good-only model, with their detector that
        pin no other version of it; none: its card's own. ``pinned``: the recipes that pin
        it. A recipe judged by an OIP v2 endpoint is not judged by a loaded version."""
        recipes = {r.name: r for r in self.registry.recipes()} | (pending or {})
        pin = role == "pinned"

        def judges(r: Recipe) -> bool:
            if r.model == model and r.remote is None:
                return r.model_version == version if pin else r.model_version in (None, version)
            fused = r.fused()
            if fused is not None and fused[0] == model:
                return fused[1] == version if pin else fused[1] in (None, version)
            return False
        names = sorted(n for n, r in recipes.items() if judges(r))
        return (names, False) if names else ([default_recipe_name(model)], True)

    def _never_gated(self, det: Detector, st: _Standing, pending: dict[str, Recipe],
                     role: str) -> str:
        """The refusal of a version with no passing report under the one recipe that
        would judge it (after its name and version), with the gate call (a recipe being
        put to pin it: :func:`~lineside_inspect.lifecycle.refusals.put_first_note`)."""
        model, version = det.card.name, det.card.version
        recipe = None if st.own else next(iter(st.missing), None)
        golden, held = self._golden_for(model)
        if recipe is not None and self._put_first(recipe, pending, det, role):
            return (f"has no passing gate report under recipe {recipe} (lifecycle.gate."
                    "require_gate): " + put_first_note(model, version, golden, recipe)
                    + held)
        return ("has not been gated against the active version (lifecycle.gate.require_gate): "
                f"run {gate_call(model, version, golden, recipe)} first{held}")

    def _golden_for(self, model: str) -> tuple[str, str]:
        """The golden set a suggested gate call names for ``model`` when no report of it
        names one, and what the refusal adds: the set named after the model (the one a
        fleet pull's promote takes), else this server's only one; else ``<golden set>``
        and the sets it holds (a few), or that it holds none (session 43, adversarial
        pass: it said ``<golden set>`` whatever the server held). The set
        ``lifecycle.gate.golden`` names for the model comes first, with a note when it is
        not made yet (session 47)."""
        required = self.golden_required(model)
        if required is not None:
            return required, self._unmade(model)
        names = self.library.held()
        if model in names:
            return model, ""
        if len(names) == 1:
            return names[0], ""
        if not names:
            return "<golden set>", (" (this server holds no golden set: make one first, "
                                    "POST /v1/golden/{name})")
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return "<golden set>", f" (golden sets here: {shown})"

    def golden_required(self, model: str) -> str | None:
        """The golden set ``lifecycle.gate.golden`` names for ``model``: only a pass on it
        admits a version of the model (:meth:`_pass_stale`; session 47); None: any set's."""
        return self.settings.gate.golden.get(model)

    def golden_set_for(self, model: str) -> str:
        """The golden set a fleet pull of ``model`` gates on: the one
        ``lifecycle.gate.golden`` names for it, else the set named after the model."""
        return self.golden_required(model) or model

    def _unmade(self, model: str) -> str:
        """What a refusal adds when the golden set ``lifecycle.gate.golden`` names for
        ``model`` is not made on this server yet (a gate on it is refused until it is);
        "" otherwise."""
        required = self.golden_required(model)
        if required is None or self._golden_held(required):
            return ""
        return (f" (golden set {required}, which lifecycle.gate.golden names for {model}, is "
                f"not made on this server yet: a gate on it is refused until it is; make it "
                f"first, POST /v1/golden/{required})")

    def _golden_held(self, name: str) -> bool:
        try:
            return bool(self.library.versions(name))
        except (LinesideError, OSError):
            return False

    def not_admitting(self, model: str, version: str, golden: str) -> str | None:
        """Why a gate of ``model`` ``version`` on golden set ``golden`` admits nothing
        here whatever it says (``lifecycle.gate.golden`` names another set for the model;
        session 47), with the gate call on that set; None when it may admit."""
        required = self.golden_required(model)
        if required is None or golden == required:
            return None
        return (f"run on golden set {golden}, while lifecycle.gate.golden requires golden set "
                f"{required} for {model}: a pass on {golden} admits nothing on this server "
                f"(a failure on it still refuses until a pass on it clears it). Gate on "
                f"{required}: {gate_call(model, version, required, None)}"
                + self._unmade(model))

    def _put_first(self, name: str, pending: dict[str, Recipe], det: Detector,
                   role: str) -> bool:
        """Whether recipe ``name`` is being put to pin ``det`` (``role`` pinned) with other
        content than the recipe of that name as it stands (a pin of ``det``'s version
        aside), or where none of that name stands: a gate judges under a recipe as it
        stands, so a gate call under ``name`` cannot admit the pin (session 43 docs pass:
        the refusal sent the admin round that loop, or to a 404)."""
        if role != "pinned" or name not in pending:
            return False
        standing = self._recipe_now(name, {})
        return standing is None or rules_digest(standing) not in self._rules_kept(pending[name],
                                                                                   det)

    def _partner_now(self, rule: Recipe, model: str) -> tuple[str, str | None] | None:
        """The other model of ``rule``'s fusion that versions of ``model`` are judged with
        now (:func:`fusion_partner`), as :meth:`_partner` takes it for a gate (the version
        it pins, else the active one): ("name version", its :func:`card_digest`, None when
        no such version is loaded or unloaded); None when ``rule`` fuses none."""
        other = fusion_partner(rule, model)
        if other is None:
            return None
        name = other.name
        slot = self.registry.models().get(name)
        version = other.pinned or (None if slot is None else slot.active)
        if slot is None or version is None:
            return f"{name} (not loaded)", None
        if version in slot.versions:
            return f"{name} {version}", card_digest(slot.versions[version].card)
        if version in slot.unloaded:
            return f"{name} {version}", card_digest(slot.unloaded[version].card)
        return f"{name} {version} (not loaded)", None

    def _judge(self, name: str, det: Detector, pending: dict[str, Recipe], *,
               own: bool = False) -> _Judge:
        """How recipe ``name`` (as it stands, or about to be put: ``pending``) judges
        ``det``'s model now, for :meth:`_pass_stale`: once per recipe and admission call
        (it was worked out, and its rules digested, again for each report).
        ``own``: what judges the model is its card's own recipe taken for want of any
        (:meth:`judging`), which the passes name: taken so, as a gate under every judging
        recipe took it."""
        model = det.card.name
        known = {r.name: r for r in self.registry.recipes()} | pending
        rule = pending.get(name)
        try:
            if own and name not in known:
                rule = card_recipe(self.registry.detector(model).card)
            elif rule is None:
                # as the gate took it: a recipe by that name, else (none judging the
                # model) the active card's own
                rule = self.recipe_for(model, name if name in known else None, as_partner=True)
            elif rule.name == name:
                gated_as(rule, model)  # a recipe put in its place may judge another model
        except ConfigError:
            rule = None  # put again judging another model
        except NotFoundError:
            return _Judge()  # no version of the model judges: nothing to compare with
        if rule is None or rule.name != name:
            what = ("is gone (deleted or put again under another name since)"
                    if name not in known else
                    f"judges model {known[name].model} now, not {model}")
            return _Judge(stale=(f"was judged under recipe {name}, which {what}",
                                 self._judging_now(model, pending), NOW))
        rule = self._as_it_follows(rule, det)
        # the card's own recipe the gate took for want of any is taken again with no
        # recipe named
        return _Judge(rule=rule, again=[name] if name in known else [],
                      partner=self._partner_now(rule, model), kept=self._rules_kept(rule, det))

    def _pass_stale(self, row: GateReportRow, det: Detector, pending: dict[str, Recipe],
                    judge: Callable[[str], _Judge],
                    golden: Callable[[str], tuple[int, str] | str] | None = None
                    ) -> _Why | None:
        """Why the passing report ``row`` of ``det`` no longer says what the line would do
        (:func:`~lineside_inspect.lifecycle.refusals.stale_note`'s ``why``, ``recipes``
        and ``how``), None when it still does.
        ``judge``: :meth:`_judge` of a recipe name. Its recipe (by name, as it
        stands or about to be put: ``pending``; a card's own recipe as it follows ``det``'s
        card, :meth:`_as_it_follows`) must still judge the model, fuse the partner card
        the pass was judged with (none if judged alone; session 42), and judge by the
        rules the pass was judged by (``recipe_sha256``; session 43). A recipe gone, or put
        again judging another model, stales it: what judges the model now is another
        recipe, or its card's own. And its golden set's latest version must hold what it
        replayed (the same digest; ``golden``: :meth:`_golden_now` of a set's name; session
        47): a pass on version 1 says nothing of the parts added as version 2. And where
        ``lifecycle.gate.golden`` names a set for the model, that set must be the one it
        replayed (session 47): a pass on a small lenient set says nothing of the line's."""
        report = row.readable_report()
        name = report.get("recipe")
        if not isinstance(name, str):
            return ("names no recipe it was judged under",
                    self._judging_now(det.card.name, pending), NOW)
        now = judge(name)
        if now.rule is None:
            return now.stale
        required = self.golden_required(det.card.name)
        if required is not None and row.golden_name != required:
            held = (golden or self._golden_now)(required)
            on = required if isinstance(held, str) else f"{required}:{held[0]}"
            return (f"was judged on golden set {row.golden_name}:{row.golden_version}, and "
                    f"the line requires golden set {required} for {det.card.name} "
                    "(lifecycle.gate.golden): a pass on another set admits nothing here"
                    + self._unmade(det.card.name), now.again, f"on {on}")
        then, then_card = report.get("fused_with"), report.get("fused_card_sha256")
        partner = now.partner
        if not (partner is None and then_card is None) and not (
                partner is not None and then_card is not None and partner[1] == then_card):
            # none named: the recipe fused none then, or the report is older than session
            # 41 (gates judged detectors alone): either way not what the line does now
            before = f"judged with {then}" if then_card is not None else "judged alone"
            after = ("which fuses no partner now" if partner is None else
                     f"whose partner is {partner[0]} now" if partner[0] != then else
                     f"whose partner {partner[0]} has another card now")
            return (f"was {before} under recipe {name}, {after}", now.again,
                    "with what the recipe fuses now")
        digest = report.get("recipe_sha256")
        if not (isinstance(digest, str) and digest in now.kept):
            return (self._other_rules(name, digest, now.rule, det, pending), now.again,
                    "under the recipe as it stands")
        held = (golden or self._golden_now)(row.golden_name)
        if not isinstance(held, str) and held[1] == row.golden_digest:
            return None  # (a version added with the same content replays alike)
        used = (f"was judged on golden set {row.golden_name}:{row.golden_version} (digest "
                f"{row.golden_digest[:12]})")
        if isinstance(held, str):
            return (f"{used}, {held}", now.again, "on a golden set this server holds")
        version, now_digest = held
        again = ("" if version > row.golden_version else
                 ": the set was made again since, with other images")
        return (f"{used}, and golden set {row.golden_name} is at version {version} now "
                f"(digest {now_digest[:12]}){again}; a pass counts only on the golden set "
                "as it stands", now.again, f"on {row.golden_name}:{version}")

    def _golden_now(self, name: str) -> tuple[int, str] | str:
        """Golden set ``name`` as it stands, which a pass must have replayed to admit
        (:meth:`_pass_stale`): (its latest version, that version's digest), or why it
        cannot be (after "was judged on golden set ...: ")."""
        try:
            latest = self.library.latest(name)
            if latest is None:
                names = self.library.held()
                return ("which this server no longer holds (golden sets here: "
                        + (", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
                           if names else "none") + ")")
            return latest
        except LinesideError as exc:  # its latest manifest broken: no gate can use it
            return f"whose latest version cannot be used now ({exc.message})"
        except (OSError, ValueError):  # (its text names a path: not for an answer)
            return "whose latest version cannot be read now"

    def _other_rules(self, name: str, digest: Any, rule: Recipe, det: Detector,
                     pending: dict[str, Recipe]) -> str:
        """Why a pass under recipe ``name`` whose ``recipe_sha256`` is ``digest`` was
        judged by other rules than ``rule``'s, as it judges now (:meth:`_pass_stale`)."""
        if not isinstance(digest, str):
            return (f"was judged under recipe {name} before gates kept the rules they judged "
                    "by (no recipe_sha256): whether the recipe as it stands judges alike "
                    "cannot be told")
        model = det.card.name
        follows = ("" if rule.name != default_recipe_name(model) or rule.model != model
                   or rule == self._recipe_now(name, pending) else
                   f" (the card's own, as {model} {det.card.version}'s card brings it: it "
                   "follows the active card)")
        return (f"was judged under recipe {name} by rules (recipe_sha256 {digest[:12]}) "
                f"other than the recipe's now{follows} ({rules_digest(rule)[:12]}): it was "
                "put again since with other regions, sizes, counts, classes or score "
                "floors")

    @staticmethod
    def _alike_rules(one: dict[str, Any], other: dict[str, Any],
                     kept: Callable[[str], frozenset[str]]) -> bool:
        """Whether two reports were judged by the same rules: the same ``recipe_sha256``,
        or the two digests a report under its recipe as it stands may keep (the canonical
        one, and that of its fields as put, kept before session 43:
        :func:`~lineside_inspect.lifecycle.gate.rules_digests`; ``kept``: those of a recipe
        by name, none when it is gone), so that a failure from before is cleared by a pass
        under the same recipe since."""
        mine, theirs = one.get("recipe_sha256"), other.get("recipe_sha256")
        if not isinstance(mine, str) or not isinstance(theirs, str):
            return False
        if mine == theirs:
            return True
        name = other.get("recipe")
        return isinstance(name, str) and one.get("recipe") == name and {mine, theirs} <= kept(name)

    def _recipe_now(self, name: str, pending: dict[str, Recipe]) -> Recipe | None:
        if name in pending:
            return pending[name]
        try:
            return self.registry.recipe(name)
        except NotFoundError:
            return None

    @staticmethod
    def _rules_kept(rule: Recipe, det: Detector) -> _Kept:
        """The ``recipe_sha256`` a report judged by ``rule``'s rules may keep, a pin of
        ``det``'s own version aside (a recipe put again pinning the version its pass
        judged, or unpinned from it, judges it by the same rules)."""
        version, variants = det.card.version, [rule]
        fused = rule.fused()
        if rule.model == det.card.name and rule.model_version in (None, version):
            variants += [rule.model_copy(update={"model_version": v}) for v in (None, version)]
        elif (fused is not None and rule.anomaly is not None and fused[0] == det.card.name
              and fused[1] in (None, version)):
            variants += [rule.model_copy(update={"anomaly": rule.anomaly.model_copy(
                update={"model_version": v})}) for v in (None, version)]
        return _Kept(variants)

    def _judging_now(self, model: str, pending: dict[str, Recipe]) -> list[str]:
        """The recipes that judge ``model`` now (with it, or fusing it with a detector),
        ``pending`` ones in place of those of their names; none: its card's own judges."""
        recipes = {r.name: r for r in self.registry.recipes()} | pending
        return sorted(n for n, r in recipes.items()
                      if r.model == model or (r.fused() or ("",))[0] == model)

    def _active_card(self, model: str) -> str | None:
        """The active version's :func:`card_digest` (graph and thresholds: the same graph
        under another card judges otherwise)."""
        slot = self.registry.models().get(model)
        if slot is None or slot.active is None:
            return None
        return card_digest(slot.versions[slot.active].card)

    def _follows(self, current: Recipe, old_card: ModelCard, det: Detector, *,
                 quiet: bool = False) -> Recipe | None:
        """The recipe ``det``'s card brings, when ``current`` is the card's own recipe of
        ``old_card`` (the active version's) and so follows the active card; None when it
        is a recipe the line configured, or the new card's recipe cannot be put (the old
        one stays: the line keeps judging)."""
        if current != card_recipe(old_card):
            return None
        recipe = card_recipe(det.card)  # its fields and classes checked when loaded
        try:  # what it fuses with and needs, against what is loaded now, as add_recipe
            self.registry.check_recipe(recipe, det)
        except LinesideError as exc:  # keep the old card's recipe: the line keeps judging
            if not quiet:
                log.warning("recipe %s not updated for %s %s: %s", recipe.name, det.card.name,
                            det.card.version, exc.message)
            return None
        return recipe

    def _as_it_follows(self, rule: Recipe, det: Detector) -> Recipe:
        """``rule`` as it judges once ``det`` is the active version: a card's own recipe
        (``<model>-default``) that follows the active card is the one ``det``'s card
        brings (:meth:`_card_recipe`): what a gate judges it by, and what its pass is
        compared with (session 43; a pass under the old card's recipe described rules the
        line would leave at activation). Any other recipe as it is."""
        card = det.card
        if rule.name != default_recipe_name(card.name) or rule.model != card.name:
            return rule
        slot = self.registry.models().get(card.name)
        active = None if slot is None else slot.active
        if slot is None or active is None or active == card.version:
            return rule
        old_card = slot.versions[active].card
        if rule.name not in {r.name for r in self.registry.recipes()}:
            # no recipe judges the model: the gate took the active card's own for want of
            # any, and takes ``det``'s once it is active
            return card_recipe(card) if rule == card_recipe(old_card) else rule
        return self._follows(rule, old_card, det, quiet=True) or rule
