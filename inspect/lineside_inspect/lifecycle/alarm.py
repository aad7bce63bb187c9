"""A running line's fail rate, watched: an alarm when it jumps.

Why: a threshold rests on the parts it was calibrated on. A new look of good parts
(another coil, lot or supplier, a lamp ageing, a camera knocked) can push many of them
over it, and nothing in one verdict says so. docs/training/good-only.md measured it: one
unseen coil's good parts scored fifty to two hundred times higher than the others', and the card's
threshold rejected about 6% of all good parts instead of 1%. The rate says so: on that coil
the alarm came after a median 33 of its parts (docs/lifecycle.md, section 6).

The rule (``lifecycle.fail_rate_alarm`` settings, docs/lifecycle.md section 6), per recipe
and what judges with it (the recipe's content, the model version, the version of a
good-only model fused with it; any change starts afresh):

- its first ``baseline_inspections`` inspections learn its usual fail rate;
- from then on, after every inspection, its fail rate over its last ``window``
  inspections (the baseline's last ones among them, until newer ones replace them) is
  compared with ``bound = max(usual + max_fail_rate_increase, min(usual x
  max_fail_rate_ratio, 1 - (1 - usual) / max_fail_rate_ratio))`` (the fail rate grown by
  the ratio, or the pass rate shrunk by it; :func:`~lineside_inspect.lifecycle.config.bound_of`):
  above it, the recipe is in alarm;
- the alarm clears when that rate falls to halfway between the usual rate and the bound
  or below (a rate hovering at the bound does not flap).

An alarm does not change a verdict: a jump may be a real run of defects, which the line
must keep rejecting. It tells people (log, metrics, the status page, ``GET /v1/alarms``,
MQTT, the audit log: the listeners) so someone looks. When other models start judging
with the recipe, its alarm ends (said so); a version back after a rollback resumes its
counts, and an alarm it was in is said again. The counts are saved to a file every few
seconds (:mod:`lineside_inspect.lifecycle.alarm_file`), so a restart resumes them
(:meth:`FailRateAlarm.resume`, once the server's recipes are loaded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from lineside_inspect.errors import Busy, NotFoundError, echo
from lineside_inspect.lifecycle.alarm_track import Track
from lineside_inspect.lifecycle.config import FailRateAlarmSettings, bound_of

if TYPE_CHECKING:
    from lineside_inspect.inspector import Inspection
    from lineside_inspect.recipes import Recipe
    from lineside_inspect.server.metrics import Metrics

log = logging.getLogger("lineside.alarm")
TRACKS_PER_RECIPE = 4  # kept per recipe: a version back after a rollback resumes its own
SAVED_FORMAT = 1  # of saved() documents


def judge_rate(usual: float, recent: float, alarm: bool, s: FailRateAlarmSettings) -> bool:
    """Whether a recipe is in alarm now, from its usual and recent fail rates and whether
    it was before (clearing needs the rate back to halfway between usual and the bound)."""
    bound = bound_of(usual, s)
    # a hair of slack: a rate exactly at the line (75/500 vs 45/200) is at it, not above
    return recent - (usual + bound) / 2 > 1e-9 if alarm else recent - bound > 1e-9


class SettingsChanged(ValueError):
    """Saved counts that were counted under other settings (:meth:`FailRateAlarm.restore`)."""


@dataclass(frozen=True)
class Change:
    """An alarm raised or cleared, as it was when it happened."""

    recipe: str
    model: str
    version: str
    state: Literal["alarm", "cleared"]
    why: str
    details: dict[str, Any]


@dataclass
class _Recipe:
    """A recipe's tracks by what judged with it (recipe content, models), latest last."""

    tracks: OrderedDict[tuple[str, str], Track] = field(default_factory=OrderedDict)
    current: tuple[str, str] | None = None
    # restored from a save and not inspected since the restart: not shown (status, metrics,
    # the PLC) until an inspection says what judges it now
    resumed: bool = False


def judged_by_of(model: str, version: str, fused_with: str | None) -> str:
    """What judges, as the alarm names it: "model version" (+ " + good-only model version")."""
    return f"{model} {version}" + (f" + {fused_with}" if fused_with else "")


# what judges a recipe name now (the recipe and judged_by_of() of its models), None when
# no recipe has that name: the server's registry answers it (lifecycle/install.py)
JudgingNow = Callable[[str], "tuple[Recipe, str] | None"]


class FailRateAlarm:
    """An output of the inspection service (:meth:`offer`). Each of :attr:`listeners`
    (``on_change`` first: the audit log; line outputs add theirs) is called with a
    :class:`Change` on an inspection's worker thread, outside the counting lock, once for
    each alarm raised or cleared, in the order they happened. Listeners must hand work off
    rather than block (a database write belongs on a thread of its own); one that raises
    is logged, the others still hear it."""

    def __init__(self, settings: FailRateAlarmSettings, *, metrics: Metrics | None = None,
                 on_change: Callable[[Change], None] | None = None,
                 judging_now: JudgingNow | None = None) -> None:
        """``judging_now``: what judges a recipe now. An inspection pinned to anything
        else (it started before a swap, a drop or a recipe put, and finished after) is
        counted for its own models without making them the recipe's current ones again.
        Without it every inspection is taken as current (a replay, a test)."""
        self.settings = settings
        self.metrics = metrics
        self.judging_now = judging_now
        self.listeners: list[Callable[[Change], None]] = [] if on_change is None else [on_change]
        self._recipes: dict[str, _Recipe] = {}  # bounded by the server's recipes: forget()
        self._digests: dict[int, tuple[Recipe, str]] = {}  # id(recipe) -> (it, its content)
        self._lock = threading.Lock()
        self._pending: deque[Change] = deque()  # appended under _lock, told under _telling
        self._telling = threading.Lock()
        self.counted = 0  # inspections counted, relearns and drops: what a save compares
        self._settled = False  # resume() ran: the resumed counts met what judges now

    def offer(self, inspection: Inspection) -> None:
        recipe = inspection.recipe
        card = inspection.detector.card
        judged_by = judged_by_of(card.name, card.version, inspection.fused_with)
        digest = self._digest(recipe)
        key = (digest, judged_by)
        s = self.settings
        late = False
        if self.judging_now is not None:  # outside the lock: the registry's own lookups
            now = self.judging_now(recipe.name)
            late = now is None or (self._digest(now[0]), now[1]) != key
        with self._lock:
            r = self._recipes.get(recipe.name)
            track = r.tracks.get(key) if r is not None else None
            resumed_alarm = created = False
            if r is not None and r.resumed and key != r.current and not self._settled \
                    and self.judging_now is not None:
                # judged before the server's recipes are all loaded (a PLC trigger while a
                # fleet box restores): resume() settles the recipe, not a passing recipe
                late = True
            if late:  # counted for its own models if they are still kept, never made current
                if r is None or track is None:
                    return
            else:
                if r is None:
                    r = self._recipes[recipe.name] = _Recipe()
                created = track is None
                if track is None:
                    track = r.tracks[key] = Track(recipe.name, card.name, card.version,
                                                  judged_by, digest, s.window,
                                                  declared=recipe.usual_fail_rate)
                r.tracks.move_to_end(key)  # kept by last use
                if r.current != key:
                    self._switch(r, key)
                    while len(r.tracks) > TRACKS_PER_RECIPE:
                        r.tracks.popitem(last=False)
                # the same models as before the restart: an alarm that stands after this
                # inspection is said again (a consumer that lost it with the restart hears it)
                resumed_alarm = r.current == key and r.resumed and track.state == "alarm"
                r.resumed = False
            self.counted += 1
            # what is shown (status, metrics, changes told) is the current track's; a late
            # inspection of the current models (no inspection of the new ones yet) is too
            shown = r.current == key and not r.resumed
            failed = inspection.verdict == "fail"
            before = track.state
            if len(track.recent) == track.recent.maxlen:
                track.recent_fails -= track.recent[0]
            track.recent.append(failed)
            track.recent_fails += failed
            if track.state == "learning":
                track.baseline_inspections += 1
                track.baseline_fails += failed
                if track.baseline_inspections == s.baseline_inspections:
                    track.state = "ok"
            # judged once the window is full (the baseline's last inspections count in it)
            if track.state != "learning" and len(track.recent) == s.window:
                usual, rate = track.usual or 0.0, track.recent_fails / len(track.recent)
                track.state = "alarm" if judge_rate(usual, rate, track.state == "alarm", s) \
                    else "ok"
            if track.state != before and "alarm" in (track.state, before):
                track.changed_at = datetime.now(UTC)
                track.why = _why(track, s)
                if shown:
                    self._pending.append(_change(track, s))
            elif not late and resumed_alarm:
                self._pending.append(_still_in_alarm(track, s))
            if (created and track.declared is not None) or (
                    before == "learning" and track.state != "learning"):
                _warn_if_blind(track, s)  # its usual rate is known from now on
            if self.metrics is not None and shown:
                self.metrics.set_fail_rate(recipe.name, track.recent_rate, track.state == "alarm")
        self._tell()

    def recipes_in_alarm(self) -> frozenset[str]:
        """The names of the recipes in alarm now (cheap: polled by the PLC stations)."""
        with self._lock:
            return frozenset(name for name, r in self._recipes.items()
                             if (t := self._shown(r)) is not None and t.state == "alarm")

    def raised(self) -> list[dict[str, Any]]:
        """The latest tracks of the recipes in alarm, by recipe name."""
        return [t for t in self.status() if t["state"] == "alarm"]

    def status(self) -> list[dict[str, Any]]:
        """Each recipe's latest track, by recipe name."""
        with self._lock:
            return [t.to_json(self.settings) for _, r in sorted(self._recipes.items())
                    if (t := self._shown(r)) is not None]

    def track(self, recipe: str) -> Track:
        """Recipe ``recipe``'s latest track (:class:`NotFoundError` naming the watched
        recipes when it has none)."""
        with self._lock:
            return self._current(recipe)

    def relearn(self, recipe: str, *, of: Track | None = None, actor: str = "") -> Track:
        """Forget what recipe ``recipe``'s latest models learned: its usual rate is learned
        again from its next inspections (after a cause was found and accepted as the new
        normal, or fixed). ``of``: only if that track (its recipe content and models) is
        still the current one (:class:`Busy` if others took over meanwhile). An alarm it
        was in ends, said so. Returns the old track."""
        with self._lock:
            old = self._current(recipe)
            if of is not None and (old.content, old.judged_by) != (of.content, of.judged_by):
                raise Busy(f"recipe {echo(recipe)} is judged by {old.judged_by} now (or was put "
                           "again): look at GET /v1/alarms again")
            r = self._recipes[recipe]
            assert r.current is not None  # _current() found it
            r.tracks[r.current] = Track(old.recipe, old.model, old.version, old.judged_by,
                                        old.content, self.settings.window,
                                        declared=old.declared)
            if old.state == "alarm":
                who = f" by {actor}" if actor else ""
                again = ("its window starts again (its usual fail rate is the recipe's)"
                         if old.declared is not None else "its usual fail rate is learned again")
                self._pending.append(_change(old, self.settings, "cleared", (
                    f"recipe {recipe} ({old.judged_by}): {again} (relearned{who}); "
                    "alarm ended")))
            if self.metrics is not None:
                self.metrics.set_fail_rate(recipe, None, False)
            self.counted += 1
        self._tell()
        return old

    def forget(self, recipe: str) -> None:
        """Recipe ``recipe`` was dropped over the API: its counts and metrics go (what
        judges with the name now, if anything, is learned afresh); an alarm it was in
        ends, said so. Its inspections still running are not counted (they are late)."""
        with self._lock:
            r = self._recipes.pop(recipe, None)
            if r is None:
                return
            t = r.tracks.get(r.current) if r.current is not None else None
            if t is not None and t.state == "alarm":
                self._pending.append(_change(t, self.settings, "cleared",
                                             f"recipe {t.recipe} was dropped: its alarm ended"))
            if self.metrics is not None:
                self.metrics.drop_fail_rate(recipe)
            self.counted += 1
        self._tell()

    # -- saved and resumed (lifecycle/alarm_file.py) ---------------------------------------
    def saved(self) -> dict[str, Any]:
        """Every recipe's tracks as JSON-able data, for :meth:`restore` after a restart.
        The counting lock is taken one recipe at a time and only to copy: a save never
        holds inspections up for long, whatever the window and the number of recipes."""
        with self._lock:
            names = list(self._recipes)
        recipes: dict[str, Any] = {}
        for name in names:
            with self._lock:
                r = self._recipes.get(name)
                if r is None:  # dropped meanwhile
                    continue
                current = r.current
                copies = [(dataclasses.replace(t), bytes(t.recent))  # its scalars, its window
                          for t in r.tracks.values()]
            recipes[name] = {"current": None if current is None else list(current),
                             "tracks": [t.saved(bits) for t, bits in copies]}
        return {"format": SAVED_FORMAT, "saved_at": datetime.now(UTC).isoformat(),
                "baseline_inspections": self.settings.baseline_inspections,
                "window": self.settings.window, "recipes": recipes}

    def restore(self, doc: dict[str, Any]) -> int:
        """Resume the counts :meth:`saved` gave (before any inspection); returns how many
        recipes. They are shown once :meth:`resume` (the server's recipes loaded) or the
        recipe's first inspection settles them with what judges it now. Counts saved under
        another ``baseline_inspections`` or ``window`` are not resumed (a ValueError says
        why), nor is a document of another format or shape."""
        if doc.get("format") != SAVED_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, not {SAVED_FORMAT}")
        s = self.settings
        for key in ("baseline_inspections", "window"):
            if doc.get(key) != getattr(s, key):
                raise SettingsChanged(f"they were counted with {key} {doc.get(key)!r}; the "
                                      f"settings now say {getattr(s, key)}")
        recipes: dict[str, _Recipe] = {}
        saved_recipes = doc["recipes"]
        if not isinstance(saved_recipes, dict):
            raise TypeError("recipes: not an object")
        for name, saved in saved_recipes.items():
            r = _Recipe(resumed=True)
            tracks, current = saved["tracks"], saved["current"]
            if not isinstance(tracks, list) or len(tracks) > TRACKS_PER_RECIPE:
                raise ValueError(f"recipe {name}: tracks is not a list of up to "
                                 f"{TRACKS_PER_RECIPE}")
            for d in tracks:
                t = Track.from_saved(name, d, s)
                r.tracks[(t.content, t.judged_by)] = t
            if current is not None:
                if not (isinstance(current, list) and len(current) == 2
                        and all(isinstance(c, str) for c in current)):
                    raise TypeError(f"recipe {name}: current is not [content, judged_by]")
                r.current = (current[0], current[1])
                if r.current not in r.tracks:
                    raise ValueError(f"recipe {name}: its current track is not among its tracks")
            recipes[name] = r
        with self._lock:
            if self._recipes:
                raise ValueError("inspections were counted already: not resumed")
            self._recipes = recipes
        return len(recipes)

    def resume(self) -> None:
        """Once the server's recipes are all loaded (config, API puts, a fleet box's
        restore), each recipe whose counts were resumed is settled with what judges it now:
        the same recipe content and models are shown at once (status, metrics, the PLC tag;
        an alarm that stands is said again); other ones end an alarm of the ones before,
        said so, and are learned from the recipe's next inspection; a recipe no longer
        loaded loses its counts (its alarm ends, said so)."""
        if self.judging_now is None:
            return
        with self._lock:
            resumed = [name for name, r in self._recipes.items() if r.resumed]
        s = self.settings
        for name in resumed:
            now = self.judging_now(name)  # outside the lock: the registry's own lookups
            key = None if now is None else (self._digest(now[0]), now[1])
            with self._lock:
                r = self._recipes.get(name)
                if r is None or not r.resumed:  # inspected meanwhile: settled by offer()
                    continue
                t = r.tracks.get(r.current) if r.current is not None else None
                in_alarm = t is not None and t.state == "alarm"
                r.resumed = False
                self.counted += 1
                if t is not None and key == r.current:
                    if in_alarm:
                        self._pending.append(_still_in_alarm(t, s))
                elif key is not None and key in r.tracks:  # e.g. a version back since
                    self._switch(r, key, "since the restart")
                else:
                    if key is None:
                        del self._recipes[name]
                    else:
                        r.current = None  # the recipe's next inspection makes its track
                    if t is not None and in_alarm:
                        why = (f"recipe {name} is not loaded since the restart; its alarm "
                               f"with {t.judged_by} ended" if key is None
                               else _what_changed(t, key[1], "since the restart"))
                        self._pending.append(_change(t, s, "cleared", why))
                    continue
                shown = self._shown(r)  # the settled track, the same or a version back
                if self.metrics is not None and shown is not None:
                    self.metrics.set_fail_rate(name, shown.recent_rate, shown.state == "alarm")
        self._settled = True
        self._tell()

    def _current(self, recipe: str) -> Track:
        """Under the lock: the recipe's latest track, resumed ones too (a relearn in the
        moment before :meth:`resume`), or :class:`NotFoundError`."""
        r = self._recipes.get(recipe)
        t = None if r is None or r.current is None else r.tracks.get(r.current)
        if t is None:
            seen = ", ".join(sorted(self._recipes)) or "none yet"
            raise NotFoundError(f"recipe {echo(recipe)} has no fail-rate counts: not inspected "
                                f"since it was loaded, and none saved before a restart "
                                f"(recipes with counts: {seen})")
        return t

    @staticmethod
    def _shown(r: _Recipe) -> Track | None:
        """Under the lock: the track shown for ``r`` (none while its resumed counts are not
        settled: see :meth:`resume`)."""
        if r.resumed or r.current is None:
            return None
        return r.tracks.get(r.current)

    def _switch(self, r: _Recipe, key: tuple[str, str], when: str = "now") -> None:
        """Under the lock: other models (or recipe content) now judge with the recipe. An
        alarm of the ones before ends there; one of these (a version back after a rollback)
        is said again."""
        old = r.tracks.get(r.current) if r.current is not None else None
        new = r.tracks[key]
        r.current = key
        if old is not None and old.state == "alarm":
            self._pending.append(_change(old, self.settings, "cleared",
                                         _what_changed(old, new.judged_by, when)))
        if new.state == "alarm":
            self._pending.append(_change(new, self.settings, "alarm", (
                f"judged by {new.judged_by} again, still in alarm: {_why(new, self.settings)}")))

    def _tell(self) -> None:
        """Say the pending changes in order, one teller at a time, outside the counting lock."""
        if not self._pending:
            return
        with self._telling:
            while True:
                try:
                    change = self._pending.popleft()
                except IndexError:
                    return
                (log.warning if change.state == "alarm" else log.info)("%s", change.why)
                for listener in self.listeners:
                    try:
                        listener(change)
                    except Exception:
                        log.exception("fail-rate alarm: %r failed on the change of %s",
                                      listener, change.recipe)

    def _digest(self, recipe: Recipe) -> str:
        """The recipe's content, hashed once per recipe object (recipes are immutable)."""
        hit = self._digests.get(id(recipe))
        if hit is not None and hit[0] is recipe:
            return hit[1]
        # what the recipe sets, not every default: a release that adds a recipe field keeps
        # the digests of saved counts (lifecycle/alarm_file.py)
        digest = hashlib.sha256(recipe.model_dump_json(exclude_defaults=True).encode()
                                ).hexdigest()[:16]
        if len(self._digests) > 256:
            self._digests.clear()
        self._digests[id(recipe)] = (recipe, digest)
        return digest


def _change(t: Track, s: FailRateAlarmSettings, state: Literal["alarm", "cleared"] | None = None,
            why: str | None = None) -> Change:
    """What is told of ``t``: raised or cleared now (``state``, default its own), ``why``
    (default its own). The track's own state is not part of it: the change says it."""
    details = t.details(s)
    del details["state"]
    details["changed_at"] = datetime.now(UTC).isoformat()
    return Change(t.recipe, t.model, t.version,
                  state or ("alarm" if t.state == "alarm" else "cleared"), why or t.why, details)


def _warn_if_blind(t: Track, s: FailRateAlarmSettings) -> None:
    """A usual rate whose bound is 100% or more can never raise the alarm: said once, when
    it is learned or first used."""
    usual = t.usual or 0.0
    if bound_of(usual, s) >= 1:
        source = "given by the recipe (usual_fail_rate)" if t.declared is not None else (
            f"learned over its first {t.baseline_inspections} inspections")
        log.warning("fail-rate alarm: recipe %s (%s): its usual fail rate %.1f%%, %s, puts "
                    "the bound at %.0f%%: its alarm cannot be raised", t.recipe, t.judged_by,
                    usual * 100, source, bound_of(usual, s) * 100)


def _still_in_alarm(t: Track, s: FailRateAlarmSettings) -> Change:
    """An alarm resumed after a restart, with the models it had: said again, rates of now."""
    return _change(t, s, "alarm", f"still in alarm after a restart: {_why(t, s)}")


def _what_changed(old: Track, judged_by: str, when: str) -> str:
    """Why an alarm of ``old`` ended when ``judged_by`` took over with its recipe."""
    if judged_by == old.judged_by:
        return (f"recipe {old.recipe}: its rules changed ({when}); its alarm with "
                f"{old.judged_by} ended")
    return f"recipe {old.recipe}: judged by {judged_by} {when}; its alarm with {old.judged_by} ended"


def _why(t: Track, s: FailRateAlarmSettings) -> str:
    usual, rate = t.usual or 0.0, t.recent_rate or 0.0
    where = (f"recipe {t.recipe} ({t.judged_by}): fail rate {rate:.1%} over the last "
             f"{len(t.recent)} inspections")
    learned = f"its usual {usual:.1%} " + (
        "(the recipe's usual_fail_rate)" if t.declared is not None
        else f"over its first {t.baseline_inspections}")
    if t.state == "alarm":
        return (f"{where}, above the bound {bound_of(usual, s):.1%} ({learned}). A new look of "
                "good parts (a lot, a light, the camera) or a run of defects: look at its fails")
    return f"{where}: back near {learned}; alarm cleared"
