"""What an admin loaded and activated over the API, kept across a restart
(``<data_dir>/lifecycle/models.json``; session 47).

Written whole (:func:`~lineside_inspect.atomic.write_atomic`) after each change made over
the API: a package loaded by ``POST /v1/models`` (its resolved path, its card's digest and
graph sha256), a version made active by an activation, promotion or rollback (and by an
automatic rollback: the version it went back to), a version unloaded by
``DELETE /v1/models/{name}/versions/{version}`` (dropped). Packages the config names are
not listed: the config loads them.

At start-up, after the store and the lifecycle (:meth:`KeptModels.restore`), before the
recipes put over the API are loaded again:

- **The config changed**, judged per model (session 49). The file keeps, for each model
  the config loads, a digest of its config entries (each package's version and resolved
  path). A model whose entries changed since (a version named in place of another, one
  added or taken away, the model added to the config or removed from it) is not
  restored: the config wins for it (its kept active version and its kept packages), a
  WARNING names it, and the file as it was is copied to ``models.json.config-changed``.
  The other models keep what the API made of them: an operator adding model B to the
  config does not undo an admin's rollback of model A. A file of an older release keeps
  one digest of the whole ``models`` section (no ``config_entries``): when it differs,
  which model changed is unknown, so nothing is restored, as before (the file is set
  aside as ``models.json.config-changed``).
- **Each package** must still lie inside ``model_roots`` (checked again, as the API
  checked it; resolving to the same folder) and still hold the card (its digest) and graph
  it was loaded with; else a WARNING names it and it is not loaded.
- **Each model's recorded version** is activated through the lifecycle, recorded as
  ``restore`` by actor ``lineside`` (``force_restore`` where the gate refuses it now: it
  was admitted before), unless the audit log's last activation of the model is another
  version (activated since by something that does not write this file, e.g. a fleet
  box's pull: that one stands) or its package was not loaded (WARNING; the config's
  version judges). Where the audit log's last activation is another version this file
  keeps (the file not written at an automatic rollback: a full disk), that one is made
  active, the file's loaded beside (WARNING); a model new to a standalone server whose
  audited version is not kept here is not loaded (session 48).
- **A promotion's watch** the restart cut short (the audit log's last promotion of the
  model is of the version active again, and nothing ended its watch after it) is watched
  again, counted afresh (``Lifecycle.resume_watch``, recorded as ``rollout_resumed``).
- **A damaged file**: WARNING, set aside as ``models.json.bad``, the config's versions.

On a fleet box the fleet's ``pulled.json`` is restored after this, and wins: a version the
fleet activated after the admin's is the audit log's last, so this file's is not
restored; a version left by the admin after the fleet's is what the fleet treats as "left
on the box" anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lineside_inspect.atomic import write_atomic
from lineside_inspect.errors import LinesideError, PackageError, PathNotAllowedError
from lineside_inspect.lifecycle.alarm_file import set_aside
from lineside_inspect.names import Name
from lineside_inspect.package import card_digest, confine, load_package
from lineside_inspect.recipes import Recipe
from lineside_inspect.server.registry import Registry

if TYPE_CHECKING:
    from lineside_inspect.lifecycle.records import Records
    from lineside_inspect.runtime.detector import Detector


class Lifecycle(Protocol):
    """What a restore needs of ``manager.Lifecycle`` (which holds the :class:`KeptModels`:
    named here by what it does, so this module does not import the manager back)."""

    store: Any

    @property
    def records(self) -> Records: ...

    def first_version(self, det: Detector, *, actor: str, action: str = ...,
                      reason: str = ...) -> None: ...

    def activate(self, model: str, version: str, *, actor: str, force: bool = ...,
                 reason: str = ..., action: str = ..., replacing: str | None = ...,
                 pending_recipes: Sequence[Recipe] = ...) -> dict[str, Any]: ...

    def resume_watch(self, model: str, version: str) -> Any: ...

log = logging.getLogger("lineside.lifecycle")

STATE_FILE = Path("lifecycle") / "models.json"  # under the server's data_dir
ACTOR = "lineside"  # the audit log's actor of a restore (the server itself)
# the fleet box puller's actor (``fleet.box.models.ACTOR``): its promotions never write
# this file, so one from the file's version is no sign of a rollback kept here alone
FLEET_ACTOR = "fleet"
MAX_PACKAGES = 1000  # packages, and models with a kept version: a file beyond is not ours
# far above what MAX_PACKAGES entries take (~4.5 KB each at the longest path): a file
# beyond it is set aside unread (session 47, attack pass)
MAX_BYTES = 8 << 20


class KeptPackage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    version: Name
    # no control character: the API's paths have none, and one would forge log lines
    path: str = Field(max_length=4096, pattern=r"^[^\x00-\x1f\x7f]*$",
                      description="absolute, resolved, as the API confined it")
    card_digest: str = Field(pattern=r"[0-9a-f]{64}")
    graph_sha256: str = Field(pattern=r"[0-9a-f]{64}")


class KeptState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal[1, 2] = 2
    config_models: str = Field(description="digest of the config's models when written")
    # absent in a file of an older release (format 1): then the whole digest judges
    config_entries: dict[Name, str] | None = Field(
        default=None, max_length=MAX_PACKAGES, description=(
            "model -> digest of its config entries (versions and paths) when written"))
    written_at: str = ""
    packages: list[KeptPackage] = Field(default_factory=list, max_length=MAX_PACKAGES)
    active: dict[Name, Name] = Field(default_factory=dict, max_length=MAX_PACKAGES, description=(
        "model -> the version last made active over the API (or by an automatic rollback)"))


def config_digest(models: Sequence[str]) -> str:
    """The config's ``models`` as they resolve (sorted: their order changes no version)."""
    paths = sorted({str(Path(m).resolve()) for m in models})
    return hashlib.sha256(json.dumps(paths).encode()).hexdigest()


def entries_digest(entries: Sequence[tuple[str, str]]) -> str:
    """One model's config entries, ``(version, resolved path)`` pairs (sorted)."""
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


class KeptModels:
    """One per server (``Lifecycle.kept``)."""

    def __init__(self, path: Path, *, models: Sequence[str], roots: list[Path],
                 registry: Registry, fleet_box: bool = False) -> None:
        self.path = path
        self.roots = roots
        self.registry = registry
        self.fleet_box = fleet_box
        self.digest = config_digest(models)
        self._configured = {str(Path(m).resolve()) for m in models}
        self._entries: dict[str, str] | None = None  # read from the registry once loaded
        self._lock = threading.Lock()
        self.state = KeptState(config_models=self.digest)

    # -- what the API changed ---------------------------------------------------------------
    def loaded(self, model: str, version: str) -> None:
        """``model`` ``version`` was loaded over the API (a package inside model_roots)."""
        with self._lock:
            if self._add_package(model, version):
                self._save()

    def activated(self, model: str, version: str) -> None:
        """``version`` judges for ``model`` now (an admin's activation, promotion or
        rollback; an automatic rollback); its package is kept too when it is not the
        config's and lies inside model_roots (a version unloaded, then activated again)."""
        with self._lock:
            slot = self.registry.models().get(model)
            # what judges now, read under this lock: two activations at once are kept in
            # the order they took effect, not the order their callers got here
            active = version if slot is None or slot.active is None else slot.active
            self._add_package(model, active)
            self.state.active[model] = active
            self._save()

    def unloaded(self, model: str, version: str) -> None:
        """Unloaded over the API: not loaded again at start-up."""
        with self._lock:
            before = len(self.state.packages)
            self.state.packages = [p for p in self.state.packages
                                   if (p.name, p.version) != (model, version)]
            if len(self.state.packages) != before:
                self._save()

    def _add_package(self, model: str, version: str) -> bool:
        try:
            det = self.registry.detector(model, version)
        except LinesideError:
            return False
        path = Path(det.package.path).resolve()
        if str(path) in self._configured or not any(path.is_relative_to(r) for r in self.roots):
            return False  # the config's own, or not one the API could load (a fleet pull)
        card = det.card
        entry = KeptPackage(name=model, version=version, path=str(path),
                            card_digest=card_digest(card), graph_sha256=card.sha256)
        if entry in self.state.packages:
            return False
        self.state.packages = [p for p in self.state.packages
                               if (p.name, p.version) != (model, version)] + [entry]
        return True

    def config_entries(self) -> dict[str, str]:
        """Each model the config loads -> :func:`entries_digest` of its entries. Read from
        the registry the first time (by :meth:`restore`, at start-up, once the config's
        packages loaded: their cards name their models), then kept: what the API loads
        since is not the config."""
        if self._entries is None:
            found: dict[str, list[tuple[str, str]]] = {}
            for name, slot in self.registry.models().items():
                packages = [(v, d.package.path) for v, d in slot.versions.items()]
                packages += [(v, p.path) for v, p in slot.unloaded.items()]
                for version, folder in packages:
                    path = str(Path(folder).resolve())
                    if path in self._configured:
                        found.setdefault(name, []).append((version, path))
            self._entries = {m: entries_digest(e) for m, e in found.items()}
        return self._entries

    def _save(self) -> None:
        """Written whole; one that cannot be written is logged (what the API did stands,
        and a restart then starts from the file as it was)."""
        self.state.config_models = self.digest
        self.state.config_entries = self.config_entries()
        self.state.written_at = datetime.now(UTC).isoformat()
        try:
            write_atomic(self.path, json.dumps(self.state.model_dump(mode="json"),
                                               indent=1).encode())
        except OSError as exc:
            log.error("models kept across a restart: %s not written (%s): a restart starts "
                      "from the file as it was", self.path, exc.strerror or exc)

    # -- at start-up ------------------------------------------------------------------------
    def restore(self, lifecycle: Lifecycle, pending: Sequence[Recipe] = ()) -> list[str]:
        """Load the kept packages and activate each model's kept version (module doc).
        ``pending``: the recipes put over the API, loaded after this (an activation checks
        them in their place). What was restored, as ``model version`` strings."""
        with self._lock:
            # the config's entries as loaded, read now (before any call of the API): read
            # at the first write, an API's load of the same card from another folder left
            # its model out of them, and the next restart undid its activation (attack pass)
            self.config_entries()
            state = self._read()
            if state is None:
                return []
            if state.config_entries is None and state.config_models != self.digest:
                # an older release's file: one digest of the whole section, which model
                # changed is unknown; nothing is restored, as that release did
                told = ", ".join(f"{m} {v}" for m, v in state.active.items()) or "none"
                return self._config_wins("the config's models changed since the models "
                                         "loaded and activated over the API were kept (by an "
                                         "older release, which kept no digest per model): the "
                                         "config's versions judge, the versions activated "
                                         f"over the API ({told}) are not restored")
            dropped = self._config_changed(state)
            if dropped is not None:
                state, why = dropped
                if not state.active and not state.packages:  # nothing left: set aside whole
                    return self._config_wins(why)
                aside = self.path.with_name(self.path.name + ".config-changed")
                log.warning("models kept across a restart: %s; the other models' are restored; the file "
                            "as it was is kept as %s", why, aside.name)
                try:  # (copied: the file is written again below, without them)
                    write_atomic(aside, self.path.read_bytes())
                except OSError as exc:
                    log.warning("models kept across a restart: cannot copy %s aside: %s",
                                self.path, exc.strerror or exc)
            restored = self._restore(state, lifecycle, pending)
            if dropped or (self.state.packages, self.state.active) != (state.packages,
                                                                         state.active):
                # written only when something was dropped: not at every start (an SD card)
                self._save()
            return restored

    def _config_wins(self, why: str) -> list[str]:
        """Nothing restored: the file set aside as ``models.json.config-changed`` (``why``
        logged), the state started afresh; what was restored (nothing)."""
        set_aside(self.path, why, ".config-changed", what="models kept across a restart",
                  logger=log)
        self.state = KeptState(config_models=self.digest)
        return []

    def _config_changed(self, state: KeptState) -> tuple[KeptState, str] | None:
        """``state`` without the models whose config entries changed since it was written
        (the config wins for them), and what to say of them; None when none did."""
        if state.config_entries is None:  # an older release's file, its config unchanged
            return None
        now = self.config_entries()
        kept = set(state.active) | {p.name for p in state.packages}
        changed = sorted(m for m in kept if state.config_entries.get(m) != now.get(m))
        if not changed:
            return None
        told = ", ".join(f"{m} {state.active[m]}" for m in changed if m in state.active)
        loaded = ", ".join(f"{p.name} {p.version}" for p in state.packages
                           if p.name in changed)
        how = "; ".join(
            m + (" was removed from the config" if m not in now else
                 " was added to the config" if m not in state.config_entries
                 else "'s entries changed in the config") for m in changed)
        why = (f"the config's models changed since the models loaded and activated over the "
               f"API were kept ({how}): the config's versions judge for {', '.join(changed)}, "
               f"the versions activated over the API ({told or 'none'}) are not restored and "
               f"the packages loaded over the API for them ({loaded or 'none'}) are not loaded "
               "again (activate or load them again over the API)")
        return state.model_copy(update={
            "active": {m: v for m, v in state.active.items() if m not in changed},
            "packages": [p for p in state.packages if p.name not in changed]}), why

    def _read(self) -> KeptState | None:
        try:
            if self.path.stat().st_size > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES >> 20} MB")
            return KeptState.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            set_aside(self.path, f"{self.path.name} does not read ({type(exc).__name__}): "
                      "the config's versions judge, nothing loaded over the API is restored",
                      ".bad", what="models kept across a restart", logger=log)
            return None

    def _restore(self, state: KeptState, lifecycle: Lifecycle,
                 pending: Sequence[Recipe]) -> list[str]:
        active, settled = self._recorded(state, lifecycle)
        # a model's active version first: the first version of a model new to the server
        # becomes active as it loads
        order = sorted(state.packages, key=lambda p: active.get(p.name) != p.version)
        first: set[tuple[str, str]] = set()
        loaded: dict[tuple[str, str], KeptPackage] = {}  # in the order loaded
        for p in order:
            again = loaded.get((p.name, p.version))
            if again is not None:  # (written by hand: the API keeps one entry a version)
                log.warning("models kept across a restart: %s %s is listed more than once: "
                            "loaded from one entry only (%s)", p.name, p.version, again.path)
                continue
            try:
                if p.name not in self.registry.models() and active.get(p.name) != p.version:
                    # loaded first, it would judge without ever having been admitted (one
                    # loaded beside, or refused by its gate; session 47, attack pass), or
                    # after the audit log's last activation of its model rejected it
                    raise PackageError(
                        f"{p.name} is new to this server and its version kept active "
                        f"({active.get(p.name, 'none')}) was not loaded again: this one "
                        "would judge in its place without having been admitted; load it again "
                        "over the API (POST /v1/models)")
                if self._load(p):
                    first.add((p.name, p.version))
                loaded[p.name, p.version] = p
            except Exception as exc:  # whatever it is, the server starts (config's versions)
                why = exc.message if isinstance(exc, LinesideError) else type(exc).__name__
                log.warning("models kept across a restart: %s %s (%s), loaded over the API "
                            "before, is not loaded again: %s", p.name, p.version, p.path, why)
        self.state = KeptState(config_models=self.digest,
                               packages=[p for p in state.packages
                                         if loaded.get((p.name, p.version)) is p])  # (in its order)
        restored: list[str] = []
        told: list[str] = []  # as the log says them: which config version each replaced
        for model, version in active.items():
            before = self._active_version(model)  # the config's (None: a model new to it)
            if (model, version) not in first and before == version:
                self.state.active[model] = version  # the config's own: nothing to do
                continue
            refused = self._activate(lifecycle, model, version, (model, version) in first,
                                     pending, audited=model not in settled)
            if refused is None:
                self.state.active[model] = version
                restored.append(f"{model} {version}")
                told.append(f"{model} {version}" + (
                    f" (in place of the config's {before})"
                    if before is not None and (model, version) not in first else ""))
            elif refused:
                log.warning("models kept across a restart: %s %s, made active over the API "
                            "before the restart, is not active again: %s; %s judges", model,
                            version, refused, self._active(model))
        if restored:
            # what judges, and that it is not what the config says, with the way back: a
            # new user restarting `make serve` wondered why the config's version did not
            # judge (new-user review, session 47)
            log.info("models kept across a restart (%s): active again: %s; loaded again: %s. "
                     "They were made active over the API before the restart; to judge with "
                     "the config's versions again, activate them (POST /v1/models/NAME/"
                     "activate), or remove the file while the server is stopped",
                     self.path, ", ".join(told),
                     ", ".join(f"{p.name} {p.version}" for p in loaded.values()) or "none")
        for model, version in self.state.active.items():
            # a promotion's watch the restart cut short is watched again (session 47)
            try:
                lifecycle.resume_watch(model, version)
            except Exception:  # a database outage at start: the server starts, unwatched
                log.exception("models kept across a restart: the rollout watch of %s %s "
                              "not resumed", model, version)
        return restored

    def _recorded(self, state: KeptState,
                  lifecycle: Lifecycle) -> tuple[dict[str, str], set[str]]:
        """Each model's version to make active again: the file's, unless the audit log's
        last activation of the model is another version the file keeps. The store is the
        record: the file may not have been written at that activation (a full disk at an
        automatic rollback), and the version the file names then (the rejected one) would
        be its model's first loaded, judging again (session 48). A model new to a
        standalone server whose audited version is not kept here is left out (its kept
        versions are not loaded); else the file's is refused as "stands" (the config's
        version judges; on a fleet box the fleet's pulled models restore it after this).

        Not where the audit log's last activation is a promotion from the file's version
        (not the fleet's pull, which does not write this file):
        the file written and the audit entry not is an automatic rollback whose entry was
        lost (the database failing then; the rollback stood): the file's version judges,
        the promoted one must not (adversarial read, session 48). Those models are the
        second value: the file's version is restored without asking the audit log again."""
        active = dict(state.active)
        settled: set[str] = set()
        if lifecycle.store is None:
            return active, settled
        for model, version in state.active.items():
            try:
                last = lifecycle.records.last_activation(model)
            except Exception:  # a database outage at start: the file's, as before
                log.exception("models kept across a restart: the audit log's last activation "
                              "of %s not read; the file's %s is restored", model, version)
                continue
            if last is None or last["version"] == version:
                continue
            details = last["details"] if isinstance(last["details"], dict) else {}
            if last["action"] in ("promote", "force_promote") and details.get("from") == version \
                    and last["actor"] != FLEET_ACTOR:
                settled.add(model)
                log.warning("models kept across a restart: %s names %s %s active, but the "
                            "audit log's last activation of %s is %s %s from it (%s by %s), and "
                            "no rollback to %s is recorded after it: its watch's automatic "
                            "rollback was kept in the file and not in the audit log (the "
                            "database failing then?); %s %s judges, %s %s does not (promote it "
                            "again to have it judge)", self.path, model, version, model,
                            last["action"], last["version"], last["action"], last["actor"],
                            version, model, version, model, last["version"])
                continue
            kept = any((p.name, p.version) == (model, last["version"]) for p in state.packages)
            if kept:
                active[model] = last["version"]
            elif model not in self.registry.models() and not self.fleet_box:
                del active[model]  # loaded first, the file's would judge
            else:  # the config's version, or the fleet's: refused as "stands" below
                continue
            log.warning("models kept across a restart: %s names %s %s active, but the audit "
                        "log's last activation of %s is %s (%s by %s), after it: the file was "
                        "not written then (a full disk?); %s", self.path, model, version, model,
                        last["version"], last["action"], last["actor"],
                        f"{model} {last['version']} judges, {model} {version} is loaded "
                        "inactive" if kept else f"{last['version']} is not kept here, and "
                        f"{model}'s kept versions are not loaded (load them again over the API)")
        return active, settled

    def _load(self, p: KeptPackage) -> bool:
        """Load one kept package, as the API did (inside model_roots) and as it was then
        (card and graph); True when it became its model's active version as the first."""
        path = confine(p.path, self.roots)
        if str(path) != p.path:
            raise PathNotAllowedError(f"{p.path} leads elsewhere now (a link changed)")
        slot = self.registry.models().get(p.name)
        if slot is not None and (p.version in slot.versions or p.version in slot.unloaded):
            raise PackageError("the config loads that version now")
        card = load_package(path).card  # its graph's sha256 checked against the card
        if (card.name, card.version) != (p.name, p.version) or card.sha256 != p.graph_sha256 \
                or card_digest(card) != p.card_digest:
            raise PackageError("its card or graph changed since it was loaded")
        return self.registry.load(path, activate=False, expect_card=p.card_digest).first

    def _active_version(self, model: str) -> str | None:
        slot = self.registry.models().get(model)
        return None if slot is None else slot.active

    def _active(self, model: str) -> str:
        """What judges ``model``, as a log line says it."""
        version = self._active_version(model)
        return "nothing" if version is None else f"{model} {version}"

    def _activate(self, lifecycle: Lifecycle, model: str, version: str, first: bool,
                  pending: Sequence[Recipe], *, audited: bool = True) -> str | None:
        """None when ``version`` judges again; else why not ("" when nothing need be said).
        ``audited`` False: :meth:`_recorded` chose it over the audit log's last activation."""
        slot = self.registry.models().get(model)
        if slot is None or (version not in slot.versions and version not in slot.unloaded):
            if self.fleet_box:
                log.info("models kept across a restart: %s %s is not loaded now: left to the "
                         "fleet's pulled models", model, version)
                return ""
            return "its package was not loaded"
        reason = "activated over the API before the server restarted; restored"
        try:
            last = (None if lifecycle.store is None or not audited
                    else lifecycle.records.last_activation(model))
            if last is not None and last["version"] != version:
                # another version was made active since by what does not write this file
                return (f"{model} {last['version']} was activated after it ({last['action']} "
                        f"by {last['actor']}), and stands")
            if first:  # became active as it loaded: recorded as the restore it is
                lifecycle.first_version(self.registry.detector(model, version), actor=ACTOR,
                                        action="restore", reason=reason)
            else:
                # admitted before: forced only where the gate refuses it now (recorded so)
                done = lifecycle.activate(model, version, actor=ACTOR, force=True,
                                          action="restore", reason=reason,
                                          pending_recipes=pending)
                if done.get("forced"):  # said at start, not only in the audit log
                    log.warning("models kept across a restart: %s %s judges again past its "
                                "gate, which would refuse it now (recorded as force_restore: "
                                "it was admitted, or forced, before the restart); gate it "
                                "again or activate another version", model, version)
        except LinesideError as exc:
            return exc.message
        except Exception as exc:  # a database outage at start: the config's version judges
            log.exception("models kept across a restart: %s %s not restored", model, version)
            return f"{type(exc).__name__} (logged above)"
        return None
