"""Loaded models and recipes, with atomic hot swap and rollback.

A request takes a reference to the detector it will use once, at its start; swapping
the active version replaces a dict entry under a lock, so in-flight requests finish on
the version they started with and new ones get the new version. A failed load leaves
the old version serving.

A version no longer judging can be unloaded (:meth:`Registry.unload`, and beyond
``keep_loaded`` versions of a model at each load): it leaves the dict, and its
onnxruntime sessions are freed once the last inspection that took it finishes (nothing
closes them under a running inference). Its package stays where it is, remembered in
``ModelSlot.unloaded``: whatever chooses it again (an activation, a rollback, a recipe
pinning it, a gate or shadow run of it) loads it again from there (:meth:`Registry.loaded`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lineside_inspect.errors import (
    ActiveChanged,
    ConfigError,
    NotFoundError,
    PackageError,
    RecipesCannotFollow,
    VersionInUse,
    echo,
)
from lineside_inspect.package import ModelPackage, card_digest, load_package, version_clash
from lineside_inspect.recipes import Recipe, check_card_recipe
from lineside_inspect.runtime.detector import Detector

log = logging.getLogger("lineside.registry")


@dataclass(frozen=True)
class Loaded:
    """What :meth:`Registry.load` did: the detector, and whether it became active for
    being its model's first version (nothing else could judge for that name; the
    lifecycle records such an activation, which no gate decided)."""

    detector: Detector
    first: bool


@dataclass
class ModelSlot:
    versions: dict[str, Detector] = field(default_factory=dict)
    active: str | None = None
    history: list[str] = field(default_factory=list)  # previously active versions
    # versions unloaded from memory, oldest first: their packages (card and folder), to load
    # them again (a rollback) and to keep a version name to one card while unloaded
    unloaded: dict[str, ModelPackage] = field(default_factory=dict)


# what else holds versions of a model (a shadow run, a rollout watch's way back): version ->
# why, asked before an unload (never under the registry's lock: the rollout watch calls
# the registry under its own lock)
Holder = Callable[[str], Mapping[str, str]]


class Registry:
    def __init__(self, *, device: str = "auto", threads: int | None = None,
                 spinning: bool = True, concurrency: int = 1,
                 keep_loaded: int | None = None) -> None:
        """``concurrency``: inferences that may run at once (``max_concurrency``);
        ``keep_loaded``: versions of a model kept in memory beyond which a load unloads the
        oldest unused ones (None: no bound)."""
        self.device = device
        self.threads = threads
        self.spinning = spinning
        self.concurrency = concurrency
        self.keep_loaded = keep_loaded
        self._holders: list[Holder] = []
        self._lock = threading.Lock()
        # versions held loaded by a running step (an activation, a gate, a recipe put), read
        # under ``_lock`` with the unload's and the bound's checks: a hold taken is seen by
        # both at once (a holder asked outside the lock could miss one taken meanwhile)
        self._busy: Counter[tuple[str, str]] = Counter()
        # one load from an unloaded package at a time: two activations of the same version
        # at once loaded it twice (the second replaced the first's sessions)
        self._reload_lock = threading.Lock()
        # versions loaded again by a block of :meth:`loaded` not settled yet: (model, version)
        # -> the detector loaded and the unloaded as they were (their order). Settled by the
        # last block to hold it (``_leave``): a block that did not stand while another held
        # the version left it loaded, and the other standing applied no keep_loaded (or not
        # standing either, unloaded nothing): over keep_loaded for good (session 49, attack3)
        self._again: dict[tuple[str, str], tuple[Detector, list[str]]] = {}
        self._models: dict[str, ModelSlot] = {}
        self._recipes: dict[str, Recipe] = {}
        self._remote: dict[str, Detector] = {}  # recipe name -> its OIP v2 endpoint's
        self.default_recipe: str | None = None
        # a fleet box's configured recipes not put (yet), in the configuration's order:
        # name -> (the recipe, why), the why said by the 404 of each inspection that asks
        # for one (it was "unknown recipe", as if never configured) and in the box's
        # model_errors; replaced whole under ``_lock``, never changed in place
        self._waiting: dict[str, tuple[Recipe, str]] = {}
        self.configured_order: list[str] = []  # the configuration's recipes, in its order

    # -- models ---------------------------------------------------------------------
    def load_model(self, path: str | Path, *, activate: bool = True,
                   expect_card: str | None = None) -> Detector:
        """Load and warm up a package beside whatever serves now; then (optionally)
        make it active. Raises (leaving everything as it was) if the package is bad.
        ``expect_card``: the ``card_digest`` the caller checked; another card is refused."""
        return self.load(path, activate=activate, expect_card=expect_card).detector

    def load(self, path: str | Path, *, activate: bool = True,
             expect_card: str | None = None, trim: bool = True) -> Loaded:
        """:meth:`load_model`, saying whether the version became active as the first of
        its model: decided here under the lock, where a caller comparing snapshots before
        and after could be misled by a concurrent load or activation. ``trim``: False,
        nothing unloaded beyond ``keep_loaded`` here (:meth:`loaded` does it once its
        block stood)."""
        detector = Detector(load_package(path), device=self.device, threads=self.threads,
                            spinning=self.spinning, overlap=self.concurrency)
        card = detector.card
        if expect_card is not None and card_digest(card) != expect_card:
            # the package is read again here: a card changed on disk after the caller
            # checked it (a pulled package, between its checks and this load) would serve
            # unchecked (mopup, session 38)
            raise PackageError(f"model {card.name} {card.version}: its card or graph changed "
                               "on disk after it was checked: not loaded")
        check_card_recipe(card, detector.class_names)
        held = self._held(card.name)
        with self._lock:
            slot = self._models.setdefault(card.name, ModelSlot())
            # an unloaded version keeps its card: the same name with another graph or card
            # must not come back under it (its gate reports and history name that card)
            known = {**{v: p.card for v, p in slot.unloaded.items()},
                     **{v: d.card for v, d in slot.versions.items()}}
            clash = version_clash(known, card, placed="loaded")
            if clash:
                raise PackageError(clash)
            first = slot.active is None
            if activate and not first:
                self._check_followers_locked(card.name, detector, None)
            slot.versions[card.version] = detector
            slot.unloaded.pop(card.version, None)
            if activate or first:
                self._activate_locked(card.name, card.version)
            if trim:
                self._trim_locked(card.name, card.version, held)
        return Loaded(detector, first)

    # -- unloading ----------------------------------------------------------------------
    def add_holder(self, holder: Holder) -> None:
        """``holder(model)``: the versions of ``model`` something else needs loaded, and why."""
        self._holders.append(holder)

    def _held(self, name: str) -> dict[str, str]:
        held: dict[str, str] = {}
        for holder in self._holders:
            for version, why in holder(name).items():
                held.setdefault(version, why)
        return held

    def _uses_locked(self, name: str, version: str, held: Mapping[str, str]) -> list[str]:
        """Why ``version`` of ``name`` must stay loaded (judging, pinned, held), if it must."""
        slot = self._models[name]
        uses = ["it is the active version"] if slot.active == version else []
        for r in self._recipes.values():
            if r.remote is None and (r.model, r.model_version) == (name, version):
                uses.append(f"recipe {r.name} pins it")
            # (one following the active version: that one is active)
            if r.fused() == (name, version):
                uses.append(f"recipe {r.name} fuses with it")
        if self._busy[(name, version)] > 0:
            uses.append("an activation, recipe, gate, shadow run, promotion or rollback "
                        "of it is being put in place")
        if version in held:
            uses.append(held[version])
        return uses

    def _previous_locked(self, slot: ModelSlot) -> str | None:
        return next((v for v in reversed(slot.history) if v != slot.active), None)

    def unload(self, name: str, version: str, *, force: bool = False) -> None:
        """Take ``version`` of ``name`` out of memory; its package stays on disk (whatever
        chooses it again loads it again: :meth:`loaded`). Refused (:class:`VersionInUse`)
        for a version that judges (active, pinned or fused by a recipe) or that something
        else holds (a shadow run, a rollout watch's way back), and, unless ``force``, for
        the one a rollback goes back to. Inspections that took it before finish on it: it
        is freed after them."""
        held = self._held(name)
        with self._lock:
            slot = self._slot(name)
            if version not in slot.versions:
                raise NotFoundError(self._not_loaded_locked(name, version))
            uses = self._uses_locked(name, version, held)
            if uses:
                raise VersionInUse(f"model {name} {version} cannot be unloaded: "
                                   f"{'; '.join(uses)}")
            if not force and self._previous_locked(slot) == version:
                raise VersionInUse(
                    f"model {name} {version} is the version a rollback goes back to: unload "
                    "it with force and a reason (?force=true&reason=..., recorded; a rollback "
                    "then loads it again from its package, which takes as long as a load)")
            self._unload_locked(slot, version)
        log.info("model %s: version %s unloaded%s", name, version, " (forced)" if force else "")

    def _unload_locked(self, slot: ModelSlot, version: str) -> None:
        # references in flight keep the detector (and its sessions) alive until they finish
        slot.unloaded[version] = slot.versions.pop(version).package

    def _trim_locked(self, name: str, loaded: str, held: Mapping[str, str]) -> None:
        """Beyond ``keep_loaded`` versions of ``name``, unload the oldest loaded that nothing
        uses: never the one just ``loaded`` (or activated), the active one, the one a
        rollback goes back to, nor one pinned or held (so more may stay loaded than the
        bound). At each load and activation: a load beside the active version (one the
        lifecycle activates after its gate) leaves the old previous one until then."""
        slot = self._models[name]
        if self.keep_loaded is None:
            return
        keep = {loaded, slot.active, self._previous_locked(slot)}
        for version in list(slot.versions):
            if len(slot.versions) <= self.keep_loaded:
                return
            if version in keep or self._uses_locked(name, version, held):
                continue
            self._unload_locked(slot, version)
            log.info("model %s: version %s unloaded (keep_loaded %d: %s %s was loaded; "
                     "whatever chooses it again loads it from its package)", name, version,
                     self.keep_loaded, name, loaded)

    @contextlib.contextmanager
    def holding(self, name: str, *versions: str | None) -> Iterator[None]:
        """Keep ``versions`` of ``name`` loaded while the block runs: an unload of one is
        refused (409 naming why) and the bound passes it over."""
        keys = [(name, v) for v in versions if v is not None]
        with self._lock:
            self._busy.update(keys)
        stood = False
        try:
            yield
            stood = True
        finally:
            self._leave(name, keys, stood)

    @contextlib.contextmanager
    def loaded(self, name: str, *versions: str | None) -> Iterator[None]:
        """:meth:`holding`, each of ``versions`` that was unloaded loaded again first (from
        its package, held to its card): whatever chooses a version (an activation, a
        recipe pinning it, a gate, a rollback) finds it in memory, as long as it runs.

        A block that raises (a refusal: a gate, ``expect``, a recipe that cannot follow;
        a change undone: its audit entry not written) leaves the registry as it found it:
        the versions it loaded again are unloaded again (unless something else uses them
        by then), and nothing was unloaded beyond ``keep_loaded`` for them: that is done
        when the block stands. A refused rollback left the version it went back to in
        memory, in GET /v1/models and counted against keep_loaded, and the version
        the bound unloaded for it gone from memory (session 49, reload pass). Two blocks
        holding the same version: the last to leave settles it (``_again``)."""
        # (holding's end settles what was loaded again here, a reload failing partway too)
        with self.holding(name, *versions):
            order: list[str] = []
            again = False
            for version in dict.fromkeys(v for v in versions if v is not None):
                if not again:  # the unloaded as they were, in their order
                    with self._lock:
                        order = list(self._slot(name).unloaded)
                detector = self._reload(name, version, trim=False)
                if detector is not None:
                    again = True
                    with self._lock:
                        self._again.setdefault((name, version), (detector, order))
            yield

    def _leave(self, name: str, keys: Sequence[tuple[str, str]], stood: bool) -> None:
        """A block of :meth:`holding` or :meth:`loaded` ends. The versions loaded again for
        a block are settled by the last block to hold them (an outer block, or the one of two
        at once to end last): it stood, keep_loaded applied as a load would have; it did
        not, unloaded again where nothing uses them (kept and keep_loaded applied where
        something does). Its holds released whatever that raises (a trim that raised left
        them held for good, never unloaded, and the change that stood reported failed)."""
        held: Mapping[str, str] = {}
        try:
            if any(k in self._again for k in keys):
                held = self._held(name)
        except Exception:  # a holder failing: nothing unloaded for want of knowing
            log.exception("model %s: what holds its versions could not be asked", name)
            held = {v: "what holds versions could not be asked" for _, v in keys}
        with self._lock:
            counts = Counter(keys)
            last = [k for k in counts if k in self._again and self._busy[k] <= counts[k]]
            again = {k: self._again.pop(k) for k in last}
            try:
                if stood:  # before the holds go: the block's other versions kept
                    self._trim_again_locked(name, list(again), held)
            finally:
                self._release_locked(keys)
            if not stood and again:  # (a model not known at all: nothing loaded again)
                kept = self._unload_again_locked(name, again, held)
                self._trim_again_locked(name, kept, held)

    def _trim_again_locked(self, name: str, keys: Sequence[tuple[str, str]],
                           held: Mapping[str, str]) -> None:
        """keep_loaded applied for each of ``keys``, loaded again and staying loaded: one
        raising is logged (the bound is kept at the next load)."""
        for _, version in keys:
            try:
                self._trim_locked(name, version, held)
            except Exception:
                log.exception("model %s: keep_loaded not applied after %s was loaded again",
                              name, version)

    def _release_locked(self, keys: Sequence[tuple[str, str]]) -> None:
        self._busy.subtract(keys)
        for key in keys:
            if self._busy[key] <= 0:
                del self._busy[key]

    def _unload_again_locked(self, name: str,
                             again: Mapping[tuple[str, str], tuple[Detector, list[str]]],
                             held: Mapping[str, str]) -> list[tuple[str, str]]:
        """``again``, loaded again for blocks the last of which did not stand, unloaded
        again where nothing uses them now, in their places among the unloaded (the order
        they had); those something uses (made active, pinned, held), returned."""
        slot = self._models[name]
        orders: list[list[str]] = []
        kept: list[tuple[str, str]] = []
        for key, (detector, order) in again.items():
            version = key[1]
            if slot.versions.get(version) is not detector:
                continue  # (loaded anew meanwhile, POST /v1/models: that load trimmed)
            if self._uses_locked(name, version, held):
                kept.append(key)
                continue
            self._unload_locked(slot, version)
            orders.append(order)
            log.info("model %s: version %s unloaded again (what loaded it again did "
                     "not stand)", name, version)
        if orders:
            place = {v: i for i, v in enumerate(dict.fromkeys(v for o in orders for v in o))}
            slot.unloaded = dict(sorted(slot.unloaded.items(),
                                        key=lambda kv: place.get(kv[0], len(place))))
        return kept

    def reload(self, name: str, version: str) -> None:
        """Load ``version`` of ``name`` again from its package if it was unloaded (nothing
        when it is loaded): its card must be the one it was unloaded with."""
        self._reload(name, version)

    def _reload(self, name: str, version: str, *, trim: bool = True) -> Detector | None:
        """:meth:`reload`; the detector it loaded ``version`` again as (None: it did not)."""
        with self._reload_lock:
            with self._lock:
                slot = self._slot(name)
                package = slot.unloaded.get(version)
                if version in slot.versions or package is None:
                    return None
            try:
                loaded = self.load(package.path, activate=False,
                                   expect_card=card_digest(package.card), trim=trim)
            except PackageError as exc:
                raise PackageError(f"model {name} {version} was unloaded from memory and "
                                   "cannot be loaded again from its package: "
                                   f"{exc.message}") from None
        log.info("model %s: version %s loaded again from its package", name, version)
        return loaded.detector

    def _not_loaded_locked(self, name: str, version: str | None) -> str:
        slot = self._models[name]
        if version is not None and version in slot.unloaded:
            return (f"model {name} version {echo(version)} was unloaded from memory: "
                    "activating it, a recipe pinning it or a rollback to it loads it again "
                    "(or POST /v1/models its package; GET /v1/models lists its folder)")
        return (f"model {name} has no loaded version {echo(version)} "
                f"(loaded: {', '.join(slot.versions)})")

    def _check_followers_locked(self, name: str, detector: Detector,
                                replacing: Recipe | None,
                                pending: Sequence[Recipe] = ()) -> None:
        """Refuse making ``detector`` the active version of ``name`` while a recipe that
        judges with whatever version is active (it pins none) cannot serve it: rules naming
        classes it does not have, a reference it takes no image for. Those were checked
        against the version active when the recipe was put; a new version (one a fleet
        box pulled, a renamed class) made them dead rules unseen, a stricter ``min_score``
        of a class gone judged at the card's threshold (fleet review). ``replacing``: the
        recipe put in the same step (the new card's own), not checked here. ``pending``:
        recipes that will be put over the ones of their names before anything is judged (a
        box's recipes saved over the API, restoring its pulled version at start-up: they are
        put after the start-up hooks), checked in their place."""
        recipes = {**self._recipes, **{r.name: r for r in pending}}
        for r in recipes.values():
            if r.model != name or r.model_version is not None or r.remote is not None:
                continue
            if replacing is not None and r.name == replacing.name:
                continue
            fused = r.fused()
            try:
                anomaly = None if fused is None else self._detector_locked(*fused)
            except NotFoundError:
                anomaly = None
            try:
                r.check_models(detector.card.kind, detector.class_names,
                               None if anomaly is None else anomaly.card.kind)
                r.check_reference_use(detector.needs_reference)
            except ConfigError as exc:
                raise RecipesCannotFollow(
                    f"{name} {detector.card.version} cannot judge under recipe {r.name}, "
                    f"which follows the active version: {exc.message}. Pin the recipe to "
                    f"the version it was written for (PUT /v1/recipes/{r.name} with "
                    "model_version), activate, then put it anew for the new version (a "
                    "recipe following the active version is checked against the active one: "
                    "rules for the new classes only are refused until the new version is "
                    "active)") from None

    def check_followers(self, name: str, version: str, *, recipe: Recipe | None = None,
                        pending: Sequence[Recipe] = ()) -> None:
        """:class:`RecipesCannotFollow` when :meth:`activate` (``recipe``, ``pending`` as
        there) would refuse making loaded ``version`` of ``name`` active because a recipe
        that follows the active version cannot serve it; nothing when it is active. Asked
        before a promotion's gate: a refusal knowable from the card and the recipes came
        only after the whole golden set was replayed (session 49)."""
        with self._lock:
            if self._slot(name).active != version:
                self._check_followers_locked(name, self._detector_locked(name, version),
                                             recipe, pending)

    def _activate_locked(self, name: str, version: str) -> None:
        slot = self._models[name]
        if version not in slot.versions:
            raise NotFoundError(self._not_loaded_locked(name, version))
        if slot.active is not None and slot.active != version:
            # each earlier version once, the most recent last: a box swapping between two
            # versions for weeks grew the list (and GET /v1/models) by one per swap, and a
            # rollback walked back and forth through the same two (soak, session 38)
            slot.history = [v for v in slot.history if v not in (slot.active, version)]
            slot.history.append(slot.active)
        slot.active = version

    def activate(self, name: str, version: str, *, recipe: Recipe | None = None,
                 pending: Sequence[Recipe] = ()) -> None:
        """Make ``version`` active; with ``recipe`` (its card's, checked), put that in the
        same step, so no inspection pins the new version with the old card's recipe.
        ``pending``: as in :meth:`_check_followers_locked`. An unloaded version is loaded
        again first."""
        with self.loaded(name, version):
            held = self._held(name)
            with self._lock:
                slot = self._slot(name)
                if slot.active != version:
                    self._check_followers_locked(name, self._detector_locked(name, version),
                                                 recipe, pending)
                self._activate_locked(name, version)
                self._put_recipe_locked(recipe)
                # the version before the one replaced is no longer a rollback's way back
                self._trim_locked(name, version, held)

    def _put_recipe_locked(self, recipe: Recipe | None, remote: Detector | None = None) -> None:
        """``recipe`` (checked) in place, with its OIP v2 endpoint's detector if it has one."""
        if recipe is None:
            return
        self._recipes[recipe.name] = recipe
        if remote is not None:
            self._remote[recipe.name] = remote
        else:
            self._remote.pop(recipe.name, None)
        if self.default_recipe is None:
            self.default_recipe = recipe.name

    def previous(self, name: str) -> str | None:
        """The version a rollback would make active now (None: there is none)."""
        with self._lock:
            return self._previous_locked(self._slot(name))

    def rollback(self, name: str, *, expect: str | None = None,
                 recipe: Recipe | None = None) -> str:
        """Make the previous version active again. ``expect``: the version that must be
        made active (it may be only what :meth:`previous` said); ``recipe`` as in
        :meth:`activate`. A previous version unloaded from memory is loaded again first."""
        with self.loaded(name, self.previous(name)):
            return self._rollback(name, expect, recipe)

    def _rollback(self, name: str, expect: str | None, recipe: Recipe | None) -> str:
        with self._lock:
            slot = self._slot(name)
            while slot.history and slot.history[-1] == slot.active:
                slot.history.pop()  # (the version itself, left there by a forgotten one)
            if not slot.history:
                raise ConfigError(f"model {name}: no earlier version to roll back to")
            if expect is not None and slot.history[-1] != expect:
                raise ActiveChanged(f"model {name}: the version to roll back to changed "
                                    "meanwhile: look again")
            # a recipe put for the version rolled back from may name its classes: checked
            # as an activation is (a sensitive floor of a class the old version lacks was
            # dropped unseen, and its defects judged at the card's threshold; review, 36)
            self._check_followers_locked(
                name, self._detector_locked(name, slot.history[-1]), recipe)
            previous = slot.history.pop()
            slot.active = previous
            self._put_recipe_locked(recipe)
            return previous

    def revert(self, name: str, from_version: str, to_version: str, *,
               forget: bool = False, recipe: Recipe | None = None,
               history: Sequence[str] | None = None) -> bool:
        """Make ``to_version`` active again in place of ``from_version``, as a rollback
        (``from_version`` is not put in the history, ``to_version`` is taken out of its
        end; with ``forget``, ``from_version`` leaves the history wherever it was, so no
        later rollback can bring it back); False, changing nothing, when ``from_version``
        is no longer the active one. ``history``: the history to put back, an activation
        undone (it took ``from_version`` out of wherever it was)."""
        with self._lock:
            slot = self._slot(name)
            if slot.active != from_version or to_version not in slot.versions:
                return False
            if history is not None:
                slot.history = list(history)
            elif slot.history and slot.history[-1] == to_version:
                slot.history.pop()
            if forget:
                slot.history = [v for v in slot.history if v != from_version]
            try:  # gone back all the same (a rejected version must not judge), but said
                self._check_followers_locked(
                    name, self._detector_locked(name, to_version), recipe)
            except RecipesCannotFollow as exc:
                # the rule of a class the version lacks is dropped unseen otherwise (its
                # defects judged at the card's threshold; lifecycle review, session 36)
                log.warning("model %s: rolled back to %s although %s", name, to_version,
                            exc.message)
            slot.active = to_version
            self._put_recipe_locked(recipe)
            return True

    def _slot(self, name: str) -> ModelSlot:
        if name not in self._models:
            raise NotFoundError(f"unknown model {echo(name)} (loaded: {', '.join(self._models) or 'none'})")
        return self._models[name]

    def detector(self, name: str, version: str | None = None) -> Detector:
        with self._lock:
            return self._detector_locked(name, version)

    def _detector_locked(self, name: str, version: str | None) -> Detector:
        slot = self._slot(name)
        key = version or slot.active
        if key not in slot.versions:
            raise NotFoundError(self._not_loaded_locked(name, key))
        return slot.versions[key]

    def pin(self, recipe: str | None) -> tuple[Recipe, Detector, Detector | None]:
        """The recipe (None: the default), its detector and the good-only model it fuses
        with, read in one step: an activation puts a version and its card's recipe in one
        step too, so an inspection never pairs one with the other's."""
        with self._lock:
            rule = self._recipe_locked(recipe)
            detector = self._detector_for_locked(rule)
            fused = rule.fused()
            anomaly = None if fused is None else self._detector_locked(*fused)
            return rule, detector, anomaly

    def models(self) -> dict[str, ModelSlot]:
        with self._lock:
            return {k: ModelSlot(dict(v.versions), v.active, list(v.history), dict(v.unloaded))
                    for k, v in self._models.items()}

    # -- recipes --------------------------------------------------------------------
    def add_recipe(self, recipe: Recipe) -> None:
        """Put ``recipe`` (checked against its models). A version it pins or fuses with that
        was unloaded is loaded again; held from its check until the recipe is in place (a
        load meanwhile unloaded it beyond keep_loaded, and the recipe pinned a version no
        longer in memory: 404 on each of its inspections)."""
        remote = self._remote_detector(recipe) if recipe.remote is not None else None
        fused = recipe.fused()
        with contextlib.ExitStack() as held:
            if remote is None:
                held.enter_context(self.loaded(recipe.model, recipe.model_version))
            if fused is not None:
                held.enter_context(self.loaded(*fused))
            detector = remote or self.detector(recipe.model, recipe.model_version)
            self.check_recipe(recipe, detector)
            with self._lock:
                self._put_recipe_locked(recipe, remote)

    def check_recipe(self, recipe: Recipe, detector: Detector) -> None:
        """Refuse ``recipe`` if ``detector`` (its model's) or what it fuses with cannot
        serve it: classes, kinds, a reference it needs."""
        fused = recipe.fused()
        anomaly = None if fused is None else self.detector(*fused)
        recipe.check_models(detector.card.kind, detector.class_names,
                            None if anomaly is None else anomaly.card.kind)
        recipe.check_reference_use(detector.needs_reference)

    def restore_recipe(self, name: str, before: Recipe | None) -> None:
        """Put back what ``name`` was before a change that could not be recorded: the
        recipe as it was (already checked when it was added), or none. A fleet box's
        configured recipe of that name waiting for its model stays the default when it was:
        its 404 says it waits, as before the change (the next recipe became the default, and
        triggers naming no recipe judged with another product's, before the pull and after;
        review, session 46)."""
        with self._lock:
            if before is not None:
                self._recipes[name] = before
                return
            self._recipes.pop(name, None)
            self._remote.pop(name, None)
            if self.default_recipe == name and name not in self._waiting:
                self.default_recipe = next(iter(self._recipes), None)

    def _remote_detector(self, recipe: Recipe) -> Detector:
        """The detector of a recipe that names an OIP v2 endpoint (its card must be the
        recipe's model); the one already made for the same endpoint is kept."""
        from lineside_inspect.runtime.remote import RemoteDetector

        assert recipe.remote is not None
        with self._lock:
            known = self._remote.get(recipe.name)
        if isinstance(known, RemoteDetector) and known.remote == recipe.remote:
            return known
        detector = RemoteDetector(recipe.remote)
        card = detector.card
        if card.name != recipe.model or recipe.model_version not in (None, card.version):
            raise ConfigError(f"recipe {recipe.name}: its remote card is {card.name} "
                              f"{card.version}, the recipe names {recipe.model} "
                              f"{recipe.model_version or ''}".rstrip())
        return detector

    def detector_for(self, recipe: Recipe) -> Detector:
        """The detector ``recipe`` judges with: its remote endpoint's, else the loaded
        package's (the pinned version, or the active one)."""
        with self._lock:
            return self._detector_for_locked(recipe)

    def _detector_for_locked(self, recipe: Recipe) -> Detector:
        remote = self._remote.get(recipe.name)
        if remote is not None and recipe.remote is not None:
            return remote
        return self._detector_locked(recipe.model, recipe.model_version)

    def recipe(self, name: str | None) -> Recipe:
        with self._lock:
            return self._recipe_locked(name)

    def _recipe_locked(self, name: str | None) -> Recipe:
        key = name or self.default_recipe
        if key is not None and key not in self._recipes and key in self._waiting:
            raise NotFoundError(f"recipe {echo(key)} is not loaded: {self._waiting[key][1]}")
        if key is None or key not in self._recipes:
            known = ", ".join(self._recipes) or "none"
            raise NotFoundError(f"unknown recipe {echo(key)} (loaded: {known})")
        return self._recipes[key]

    def recipes(self) -> list[Recipe]:
        with self._lock:
            return list(self._recipes.values())

    # -- a fleet box's configured recipes waiting for a model its hub gives ------------------
    @property
    def waiting(self) -> dict[str, str]:
        """The configured recipes waiting (server/waiting.py): name -> why, in order."""
        return {n: why for n, (_, why) in self._waiting.items()}

    def waiting_recipes(self) -> list[Recipe]:
        return [r for r, _ in self._waiting.values()]

    def wait(self, recipe: Recipe, why: str) -> None:
        """``recipe`` waits (a name waiting already keeps its place, with this why)."""
        with self._lock:
            self._waiting = {**self._waiting, recipe.name: (recipe, why)}

    def stop_waiting(self, name: str) -> None:
        with self._lock:
            self._waiting = {n: w for n, w in self._waiting.items() if n != name}

    def order_recipes(self, first: list[str]) -> None:
        """The recipes named in ``first`` (those put) first, in that order, then the rest as
        they were: a recipe put late (a fleet box's configured one, once its model is pulled)
        takes the place the configuration gives it (a Modbus PLC's recipe index)."""
        with self._lock:
            head = [n for n in first if n in self._recipes]
            order = head + [n for n in self._recipes if n not in head]
            self._recipes = {n: self._recipes[n] for n in order}
