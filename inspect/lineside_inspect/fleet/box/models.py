"""The box's model puller: every ``fleet.pull_interval_s`` it asks the hub which model
versions its line runs (``protocol.ASSIGNMENT``) and brings the box there.

A package is taken only when all of these hold, in this order, in a temporary folder:
the archive's sha256 is the assignment's; its ed25519 signature (``fleet/signing.py``)
verifies against one of ``fleet.trusted_keys``; it unpacks under ``fleet/archive.py``'s
rules (no links, no '..', bounded); the unpacked folder is a valid package
(``package.load_package``) whose card names the assigned model and version; a version
loaded on the box already must have the same whole card (``package.card_digest``, the
registry's rule). Only then is it moved to ``<models_dir>/<model>/<version>`` (never
over a folder a loaded version serves from: the same package there is kept as it is)
and activated through the lifecycle:

- the golden set a pull gates with exists on the box (the one ``lifecycle.gate.golden``
  names for the model, else the one named after it): ``Lifecycle.promote`` (the gate
  against the active version, with ``require_gate`` under every recipe that would judge
  it; refused when one fails, naming each; then the watched rollout);
- otherwise ``Lifecycle.activate``, the path ``POST /v1/models/{name}/activate`` takes
  (a failed gate report refuses it, and with ``require_gate`` a missing or stale pass
  under any judging recipe: the refusal the hub sees then says first that the box keeps
  no such golden set; the audit log records actor ``fleet``).

Anything refused is logged, kept in :meth:`ModelPuller.errors` (the box's status reports
them as ``model_errors``) and never loaded; the same package is not fetched again until
the assignment names another one, except one the gate refused that an admin has since
activated on the box (taken once more, then no longer an error), or whose golden set (the
one a pull gates with) was made or given a new version since (taken once more: gated on
it; one the gate could not judge with, such as a recipe's roi outside its images, also
when a recipe of the model changes, session 55). A hub that cannot be reached changes
nothing: the box keeps serving what it has.
Pulled packages are listed in ``<models_dir>/pulled.json`` and loaded again when the
server starts, so a restarted box serves them without its hub (one that was active is
activated again, recorded as ``restore`` by actor ``fleet``, ``force_restore`` only where
the gate refuses it now: it was admitted before; a pull's promotion whose watch the
restart cut short is watched again, ``Lifecycle.resume_promotion``, the pulled version it rolls
back to kept in ``<models_dir>/previous.json`` meanwhile and loaded again, not active;
session 47; and once the box went back to it, by the watch's automatic rollback or by
hand, kept while it was the last activated: loaded and made active again as a ``restore``,
the pull it went back from left, session 48). A version
the box activated once and then left (an admin's hand activation, an automatic rollback)
is not forced back, nor loaded at start-up when it is the model's only version (loading
would make it active): local decisions stand until the assignment changes.

A package verified and unpacked once is not downloaded again when the assignment goes
back to it (the hub's line set back to a version the box pulled before): each verified
pull is kept in ``<models_dir>/verified.json`` (the newest :data:`MAX_VERIFIED`: name,
version, the archive's sha256, the graph's sha256, the card digest, the key that signed
it), and an assignment naming that very archive (its sha256), signed by a key still
trusted, whose version the registry holds (loaded or unloaded) with the card recorded
and whose folder still holds that graph and card, is activated from its folder as a
download of it would be. Anything else (another sha256, a key no longer trusted, a
folder changed or gone, a version the registry let go) is downloaded and checked whole.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lineside_inspect.atomic import write_atomic
from lineside_inspect.config import Settings
from lineside_inspect.errors import (
    ActiveChanged,
    Busy,
    DiskUnavailable,
    GateRefused,
    GoldenSetError,
    HubUnavailable,
    LinesideError,
    PackageError,
    RecipesCannotFollow,
)
from lineside_inspect.fleet import archive, signing
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.box.periodic import error_kind, task_metrics
from lineside_inspect.fleet.protocol import (
    ASSIGNMENT,
    PACKAGE,
    SIGNATURE,
    AssignedModel,
    Assignment,
)
from lineside_inspect.package import ModelCard, card_digest, load_package, sha256_file

if TYPE_CHECKING:
    from lineside_inspect.server.metrics import Metrics

log = logging.getLogger("lineside.fleet.models")

ACTOR = "fleet"  # the audit log's actor of what the puller activates
STATE_FILE = "pulled.json"
# the packages verified and unpacked (a file of its own: pulled.json's schema forbids other
# keys, so a release before this one still reads it after a downgrade)
VERIFIED_FILE = "verified.json"
MAX_VERIFIED = 64  # the newest kept: a hub going back further is downloaded again
# the pulled version a pulled promotion's open watch rolls back to (a file of its own, for
# the same reason: session 47)
PREVIOUS_FILE = "previous.json"
INCOMING = ".incoming"
MAX_ERRORS = 32  # protocol.BoxStatus.model_errors holds at most this many
ERROR_CHARS = 500  # of each, the characters the status report keeps
TASK = "models"  # its name in the fleet tasks' metrics


class Pulled(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    sha256: str = Field(description="of package.tar.gz")
    graph_sha256: str
    card_digest: str | None = Field(None, description=(
        "package.card_digest of its card (absent in a state from before it was kept)"))
    held: bool = Field(False, description=(
        "activated once, then left on the box (by hand or an automatic rollback): not forced "
        "back, not activated at start-up"))


class Verified(BaseModel):
    """A package this box downloaded, verified (sha256, signature, unpacked, its card
    naming it) and moved to ``<models_dir>/<name>/<version>``."""
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    sha256: str = Field(description="of package.tar.gz, as the assignment named it")
    graph_sha256: str
    card_digest: str
    signer: str = Field(description="the id of the trusted key its signature verified with")


class VerifiedPulls(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pulls: list[Verified] = Field(default_factory=list, max_length=MAX_VERIFIED)


class Previous(Pulled):
    """The version pulled before ``promoted``, kept (its record and folder) while the
    watch of ``promoted``'s promotion is open: loaded again at start-up, not active, so the
    watch resumes with the version it rolls back to (session 47)."""
    promoted: str = Field(description="the pulled version whose watch rolls back to it")
    # required here: a record without one (hand-made, damaged) would load whatever card
    # its folder holds as the version a rollback switches to (final review, session 47)
    card_digest: str = Field(pattern=r"[0-9a-f]{64}", description=(  # type: ignore[assignment]
        "package.card_digest of its card, checked again before it is loaded"))


class PreviousPulls(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, Previous] = Field(default_factory=dict)


class PulledState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: int | None = None
    models: dict[str, Pulled] = Field(default_factory=dict)


class PullMetrics:
    """The puller's figures in the box's ``/metrics``; its errors and last success are the
    ``models`` task's (``fleet/box/periodic.py``)."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.tasks = task_metrics(metrics)
        self.pulled = Gauge("lineside_fleet_model_pulled", "Model versions pulled from the "
                            "hub and kept on this box (1 each)", ["model", "version"], registry=r)
        self.pulled_total = Counter("lineside_fleet_model_pulls", "Packages pulled, verified "
                                    "and activated", registry=r)


class ModelPuller:
    """One per box server (``app.state.fleet_models``)."""

    def __init__(self, app: Any, settings: Settings, client: HubClient | None = None) -> None:
        self.app = app
        self.settings = settings
        self.fleet = settings.fleet
        self._client = client
        self.root = Path(self.fleet.models_dir or Path(settings.data_dir) / "fleet-models")
        self.keys: list[signing.TrustedKey] = []
        self._key_error: str | None = None
        # what errors() reports: replaced whole, never changed in place, so the status
        # reporter reads them without waiting for a pull (a download, a gate) to end
        self._failed: dict[tuple[str, str, str], str] = {}  # (name, version, sha256) -> why
        # of those, refused at activation only (the gate, the box's recipes): what could
        # clear the refusal, as it stood then: ("golden", the golden set a pull gates with)
        # or ("recipes", the model's recipes; session 48: a golden change cannot help it)
        self._gate_refused: dict[tuple[str, str, str], tuple[str, object]] = {}
        self._notes: list[str] = []
        self._lock = threading.Lock()  # one pull at a time
        # the state files' writes (a pull's, and a rollback's told by the lifecycle from
        # the watch's thread: went_back() takes no other lock, so it waits on no pull)
        self._files = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hub_down = False
        self._failing = 0  # rounds in a row without an assignment from the hub
        self.state = PulledState()
        self.verified = VerifiedPulls()
        self.previous = PreviousPulls()
        self.metrics: PullMetrics | None = None

    # -- life -----------------------------------------------------------------------------
    def start(self) -> None:
        """At start-up (before the server is ready): the trusted keys, the packages pulled
        before, then the loop (with the box's hub client, made by ``fleet.box.install``)."""
        if self._client is None:
            self._client = getattr(self.app.state, "hub_client", None)
        metrics = getattr(self.app.state, "metrics", None)
        if metrics is not None and self.metrics is None:
            self.metrics = PullMetrics(metrics)
        try:
            self.keys = [signing.load_public_key(k) for k in self.fleet.trusted_keys]
        except LinesideError as exc:  # a broken key must not stop the box from serving
            self._key_error = f"trusted keys unusable, no model is pulled: {exc.message}"
            log.error("fleet models: %s", self._key_error)
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / INCOMING, ignore_errors=True)  # a pull cut short
        lifecycle = getattr(self.app.state, "lifecycle", None)
        if lifecycle is not None and self.went_back not in lifecycle.went_back:
            lifecycle.went_back.append(self.went_back)
        if lifecycle is not None and self.taken_up not in lifecycle.taken_up:
            lifecycle.taken_up.append(self.taken_up)
        self.state = self._read_state()
        self.verified = self._read_verified()
        self.previous = _read_json(self.root / PREVIOUS_FILE, PreviousPulls,
                                   "a pulled promotion's watch resumes only when the version "
                                   "it rolls back to is loaded otherwise")
        self._restore()
        self._publish_pulled()
        if self._client is None:
            log.warning("fleet models: no hub client (this server keeps no store): no pulls")
            return
        self._thread = threading.Thread(target=self._loop, name="fleet-models", daemon=True)
        self._thread.start()

    @property
    def client(self) -> HubClient:
        if self._client is None:
            raise HubUnavailable("no hub client on this box")
        return self._client

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.fleet.timeout_s + 5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.pull()
            except Exception:  # the loop must outlive any one bad pull
                log.exception("fleet models: pull failed")
            self._stop.wait(self.fleet.pull_interval_s)

    def went_back(self, model: str, version: str) -> None:
        """Told by the lifecycle that a rollback (the watch's automatic one, before its
        audit entry is written; an admin's, once recorded) made ``version`` of ``model``
        judge: the pull it left is marked held in ``pulled.json`` at once (taken up again:
        no more held), and ``previous.json`` keeps a pulled version before it only where the
        box went back to that one. A restart then judges with the version gone back to even where the
        rollback's audit entry was lost (a database failing then; session 48), as
        :meth:`_back_to_previous` reads the held mark."""
        with self._files:
            p = self.state.models.get(model)
            if p is None:
                return
            held = version != p.version
            if p.held != held:  # (a full disk: the next start reads the audit log)
                self._set_held(p, held, f"pulled {model} {p.version}, rolled back from, is "
                                        "not marked held")
            prev = self.previous.models.get(model)
            if held and prev is not None and prev.version != version:
                self._forget_previous(model)

    def taken_up(self, model: str, version: str) -> None:
        """Told by the lifecycle, once recorded, that an activation (an admin's, a
        promotion) made ``version`` of ``model`` judge: a held pull of that version is taken
        up again at once, as the next pull would (:meth:`_apply`). Left held until then, a
        restart took the held mark for a rollback the audit log lost and went back to the
        version before it, undoing the admin's activation (last read, session 48)."""
        with self._files:
            p = self.state.models.get(model)
            if p is None or not p.held or p.version != version:
                return
            # (a full disk: the held mark stays until a pull)
            self._set_held(p, False, f"pulled {model} {version}, activated again, is still "
                                     "marked held")

    def _set_held(self, p: Pulled, held: bool, unsaved: str) -> None:
        """(Under the state files' lock.) ``p``'s held mark set and ``pulled.json`` written;
        a write that fails is logged with ``unsaved`` (what then stays as it was on disk)."""
        p.held = held
        try:
            self._save()
        except OSError as exc:
            log.error("fleet models: %s not written (%s): %s", self.root / STATE_FILE, exc,
                      unsaved)

    # -- what the status report says --------------------------------------------------------
    def errors(self) -> list[str]:
        """Assignments this box could not apply, and why (newest state; at most 32); then
        the configured recipes that wait for a model the hub gives (or that the version
        pulled cannot serve)."""
        failed, notes = self._failed, self._notes
        registry = getattr(self.app.state, "registry", None)
        waiting = {} if registry is None else registry.waiting  # the configured recipes
        if registry is not None and waiting:  # one put over the API under its name serves
            serving = {r.name for r in registry.recipes()}  # meanwhile: not an error
            waiting = {n: why for n, why in waiting.items() if n not in serving}
        refused = dict(self._gate_refused)  # (changed in place by a pull: copied whole)
        found = ([self._key_error] if self._key_error else []) + notes + [
            _told(f"{n} {v}: {why}", _waits_for(n, refused[k][0]) if k in refused else "")
            for k, why in failed.items() for n, v, _ in [k]] + [
            f"recipe {n} (configured) not loaded: {why}" for n, why in waiting.items()]
        return [e[:ERROR_CHARS] for e in found][:MAX_ERRORS]

    # -- one pull ---------------------------------------------------------------------------
    def pull(self) -> None:
        """Ask the hub once and apply what changed. A hub that cannot be reached is logged
        once per outage and changes nothing."""
        if self._key_error is not None:
            return
        with self._lock:
            try:
                params = {"line": self.fleet.line} if self.fleet.line else None
                assignment = self.client.get(self.client.path(ASSIGNMENT), Assignment, params)
            except HubUnavailable as exc:
                if not self._hub_down:
                    log.warning("fleet models: %s; serving what the box has", exc.message)
                self._hub_down = True
                self._count_failure(error_kind(exc))
                return
            except LinesideError as exc:  # the hub refused: wrong key, unknown line
                note = f"assignment: {exc.message}"
                if self._notes != [note]:  # said once a refusal, not every pull (session 51)
                    log.warning("fleet models: %s; nothing is pulled until that is fixed",
                                exc.message)
                self._notes = [note]
                self._count_failure(error_kind(exc))
                return
            if self._hub_down:
                log.info("fleet models: hub reachable again")
            self._hub_down = False
            self._failing = 0
            if self.metrics is not None:
                self.metrics.tasks.succeeded(TASK)
            self._apply(assignment)

    def _apply(self, assignment: Assignment) -> None:
        notes: list[str] = []
        wanted = {(m.name, m.version, m.sha256) for m in assignment.models}
        # a failure is remembered only while the assignment still names that package
        self._failed = {k: v for k, v in self._failed.items() if k in wanted}
        self._gate_refused = {k: g for k, g in self._gate_refused.items() if k in self._failed}
        for m in assignment.models:
            done = self.state.models.get(m.name)
            if done is not None and (done.version, done.sha256) == (m.version, m.sha256):
                active = self._active(m.name)
                if done.held != (active != m.version):  # left, or taken up again, on the box
                    done.held = active != m.version
                    self._save()
                if done.held:
                    notes.append(f"{m.name} {m.version} assigned, {active} active: left on the "
                                 "box (by hand or a rollback), not forced back")
                continue
            key = (m.name, m.version, m.sha256)
            if key in self._failed and not (key in self._gate_refused and (
                    self._active(m.name) == m.version
                    or self._mark(m.name, self._gate_refused[key][0])
                    != self._gate_refused[key][1])):
                # (a refusal at activation an admin has overridden since, or one that what
                # could clear it has changed since: a gate's golden set (session 47), the
                # recipes that could not follow the version (session 48): taken once more)
                continue
            if not self.keys:  # the box was not set up to take models
                notes.append(f"{m.name} {m.version} assigned, not pulled: no fleet.trusted_keys")
                continue
            # the set a refusal is remembered by, as it stood before the gate read it: one
            # changed while the gate ran (a QA lead adding the defective board meanwhile) is
            # then a change the next pull takes it again for, not the state it was refused on
            # (the recipes too: a refusal by them is taken again when they change, not when
            # the golden set does, which cannot clear it; session 48)
            marks = {what: self._mark(m.name, what) for what in ("golden", "recipes")}
            marks["either"] = (marks["golden"], marks["recipes"])
            try:
                self._take(m)
                if key in self._failed:
                    self._failed = {k: v for k, v in self._failed.items() if k != key}
                    self._gate_refused.pop(key, None)
            except (HubUnavailable, Busy, ActiveChanged, DiskUnavailable, OSError) as exc:
                # passing (a full disk too: the fleet page says so): tried again next pull
                local = isinstance(exc, OSError | DiskUnavailable)
                code = exc.errno if isinstance(exc, OSError | DiskUnavailable) else None
                why = exc.message if isinstance(exc, LinesideError) else (
                    f"the data folder could not be written: {exc.strerror}")
                if local and code not in archive.PASSING_ERRNOS:
                    # a folder the box may not write (or another fault): remembered, not
                    # downloaded again at every pull until someone changes it
                    disk = code in archive.DISK_ERRNOS
                    self._refused(key, f"not applied: {why if disk else type(exc).__name__}",
                                  "disk" if disk else "internal")
                    log.error("fleet models: %s %s not applied: %s", m.name, m.version, why)
                    continue
                if code is not None:
                    self._count_failure("disk", in_a_row=False)
                notes.append(f"{m.name} {m.version} not applied now, retried next pull: {why}")
                log.warning("fleet models: %s %s not applied now, retried next pull: %s",
                            m.name, m.version, why)
                break
            except LinesideError as exc:
                self._failed = {**self._failed, key: exc.message}
                if isinstance(exc, GateRefused | RecipesCannotFollow | GoldenSetError):
                    # refused its activation only (loaded, verified): taken once more when
                    # an admin activated it since (the refusal says to, once the recipe is
                    # pinned), so the box records it as pulled and reports no error; or
                    # when what could clear it changed (recipes for a recipes refusal; a
                    # golden set the gate could not judge with, e.g. a recipe's roi
                    # outside its images: the set or a recipe, session 55)
                    what = ("recipes" if isinstance(exc, RecipesCannotFollow) else
                            "either" if isinstance(exc, GoldenSetError) else "golden")
                    self._gate_refused[key] = (what, marks[what])
                else:  # refused for what it is: never fetched again for this assignment
                    self._gate_refused.pop(key, None)
                log.error("fleet models: refused %s %s (%s…): %s", m.name, m.version,
                          m.sha256[:12], exc.message)
                self._count_failure("package_refused", in_a_row=False)
            except Exception as exc:  # e.g. a runtime that cannot load a signed graph
                self._refused(key, f"not applied: {type(exc).__name__}")
                log.exception("fleet models: %s %s not applied", m.name, m.version)
        self._notes = notes
        if self.state.revision != assignment.revision:
            self.state.revision = assignment.revision
            self._save()

    def _mark(self, model: str, what: str) -> object:
        if what == "either":
            return (self._golden_mark(model), self._recipes_mark(model))
        return self._recipes_mark(model) if what == "recipes" else self._golden_mark(model)

    def _recipes_mark(self, model: str) -> object:
        """The recipes of ``model`` on this box as they stand (saved over the API or
        configured: each one's rules, its pin, the version of the good-only model it fuses
        with): a pull refused because a recipe following the active version cannot serve
        it (``RecipesCannotFollow``) is taken once more when they change (a recipe pinned,
        put anew, deleted); a golden set change does not take it again (session 48: it
        replayed the whole gate to be refused again)."""
        registry = self.app.state.registry
        models = registry.models()
        mark = []
        for r in registry.recipes():
            if r.model != model:
                continue
            fused = r.fused()
            slot = None if fused is None else models.get(fused[0])
            mark.append((r.name, r.model_dump_json(), None if fused is None else (
                fused[0], fused[1] or (None if slot is None else slot.active))))
        return tuple(sorted(mark))

    def _golden_mark(self, model: str) -> object:
        """The golden set a pull of ``model`` gates with (``Lifecycle.golden_set_for``:
        the one ``lifecycle.gate.golden`` names for it, else the set named after the model)
        as it stands (its latest version and that version's digest; None: the box keeps
        none): a pull the gate refused is taken once more when it changes (a set made, a
        version added; session 47: only the assignment naming it anew, a restart or an
        admin's activation did)."""
        lifecycle = getattr(self.app.state, "lifecycle", None)
        if lifecycle is None:
            return None
        name = lifecycle.golden_set_for(model)
        try:
            return lifecycle.library.latest(name)
        except (LinesideError, OSError, ValueError):  # broken: a gate on it is refused too
            return "unreadable"

    def _refused(self, key: tuple[str, str, str], why: str, kind: str = "internal") -> None:
        """A failure that will not pass by itself: remembered like a refusal (not fetched
        again for this assignment) and counted as ``kind``."""
        self._failed = {**self._failed, key: why}
        self._gate_refused.pop(key, None)
        self._count_failure(kind, in_a_row=False)

    def _take(self, m: AssignedModel) -> None:
        """Fetch, verify, unpack, check and activate one assigned package (one verified
        and unpacked before, still as it was: activated from its folder)."""
        if (kept := self._kept(m)) is not None:
            dest, record = kept
            self._taken(dest, m, record, f"kept since its verified pull (signed by key "
                                         f"{record.signer})")
            return
        incoming = self.root / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=incoming))
        try:
            tgz = tmp / "package.tar.gz"
            self.client.download(self.client.path(PACKAGE, model=m.name, version=m.version),
                                 tgz, self.fleet.max_package_bytes)
            digest = sha256_file(tgz)
            if digest != m.sha256:
                raise signing.SignatureError(
                    f"package.tar.gz has sha256 {digest[:12]}…, the assignment says "
                    f"{m.sha256[:12]}…: altered in the hub's store or on the way")
            sig = tmp / "package.sig"
            self.client.download(self.client.path(SIGNATURE, model=m.name, version=m.version),
                                 sig, 1024)
            signer = signing.verify(self.keys, m.name, m.version, digest, sig.read_bytes())
            unpacked = tmp / "package"
            unpacked.mkdir()
            archive.unpack(tgz, unpacked)
            card = load_package(unpacked).card
            if (card.name, card.version) != (m.name, m.version):
                raise PackageError(f"the archive holds {card.name} {card.version}, not the "
                                   "assigned version")
            dest = self.root / m.name / m.version
            if not self._check_clash(m, card, dest):
                if dest.exists():  # an earlier pull of this version that was not kept
                    shutil.rmtree(dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                unpacked.rename(dest)
            record = Verified(name=m.name, version=m.version, sha256=m.sha256,
                              graph_sha256=card.sha256, card_digest=card_digest(card),
                              signer=signer.id)
            self._remember(record)
            self._taken(dest, m, record, f"pulled (signed by key {signer.id})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _taken(self, dest: Path, m: AssignedModel, record: Verified, how: str) -> None:
        """A verified package in its folder: activated, recorded as the model's pull (the
        one it replaces kept while the promotion's watch rolls back to it)."""
        old = self.state.models.get(m.name)
        self._activate(dest, m, record.card_digest)
        with self._files:  # (a rollback told meanwhile waits: both files as it found them)
            self._keep_previous(m.name, m.version, old)  # before pulled.json: a crash
            # between drops it; held already where a rollback (the watch's, an admin's)
            # made another version judge since the activation: told then (went_back), it
            # found the pull before (session 49: marked at the next pull only, a restart
            # meanwhile without the rollback's audit entry made the rejected version judge)
            self.state.models[m.name] = Pulled(version=m.version, sha256=m.sha256,
                                               graph_sha256=record.graph_sha256,
                                               card_digest=record.card_digest,
                                               held=self._active(m.name) != m.version)
            self._save()
        self._publish_pulled()
        if self.metrics is not None:
            self.metrics.pulled_total.inc()
        log.info("fleet models: %s %s %s and active", m.name, m.version, how)

    def _keep_previous(self, name: str, version: str, old: Pulled | None) -> None:
        """``version`` of ``name`` just taken: the pulled version it replaces in
        ``pulled.json`` (``old``) is kept in ``previous.json`` when the promotion's watch
        rolls back to it (loaded again at start-up while that watch is open); any other
        kept one of the model goes."""
        kept = self.previous.models.get(name)
        rollout = getattr(self.app.state.lifecycle, "rollout", None)
        watch = None if rollout is None else rollout.watching(name)
        active = self._active(name)
        # the one the watch of ``version`` rolls back to: the pull replaced, or the kept
        # one (a re-pull of the promoted version; the version the box went back to from a
        # held pull, judging when a new one is promoted over it: session 48); or the one
        # it rolled back to already, since the activation (session 49)
        back_to = (watch.previous if watch is not None and watch.version == version
                   else active if active != version else None)
        candidate: Pulled | None = None if back_to is None else next(
            (c for c in (old, kept) if c is not None and c.version != version
             and c.version == back_to), None)
        models = {n: k for n, k in self.previous.models.items() if n != name}
        if candidate is not None and candidate.card_digest is not None:
            models[name] = Previous(**candidate.model_dump(exclude={"held", "promoted"}),
                                    promoted=version)
        if models != self.previous.models:
            self._save_previous(PreviousPulls(models=models))

    def _kept(self, m: AssignedModel) -> tuple[Path, Verified] | None:
        """The folder and record of ``m``'s very package, verified and unpacked by an
        earlier pull and as it was then; None when it must be downloaded: no verified pull
        of that archive (another sha256 is another package), its key no longer trusted,
        the registry not holding that version with that card, its folder changed."""
        record = next((v for v in reversed(self.verified.pulls)
                       if (v.name, v.version, v.sha256) == (m.name, m.version, m.sha256)), None)
        if record is None or record.signer not in {k.id for k in self.keys}:
            return None
        dest = self.root / m.name / m.version
        slot = self.app.state.registry.models().get(m.name)
        if slot is None:
            return None
        package = (slot.versions[m.version].package if m.version in slot.versions
                   else slot.unloaded.get(m.version))
        if package is None or card_digest(package.card) != record.card_digest \
                or Path(package.path).resolve() != dest.resolve():
            return None
        try:  # its folder still holds that graph (hashed) and card
            card = load_package(dest).card
        except (LinesideError, OSError):
            return None
        if (card.sha256, card_digest(card)) != (record.graph_sha256, record.card_digest):
            return None
        return dest, record

    def _remember(self, record: Verified) -> None:
        pulls = [v for v in self.verified.pulls
                 if (v.name, v.version) != (record.name, record.version)] + [record]
        self.verified = VerifiedPulls(pulls=pulls[-MAX_VERIFIED:])
        write_atomic(self.root / VERIFIED_FILE,
                     json.dumps(self.verified.model_dump(mode="json"), indent=1).encode())

    def _check_clash(self, m: AssignedModel, card: ModelCard, dest: Path) -> bool:
        """Refuses a package whose version is loaded on this box with another card (graph,
        thresholds, recipe: ``package.card_digest``, the registry's own rule), and a
        ``dest`` that a loaded version serves from unless it is this very package. True
        when the package serves from ``dest`` already: the folder is kept as it is (a
        loaded version's folder is never removed: a restart loads from it)."""
        here = dest.resolve()
        for name, slot in self.app.state.registry.models().items():
            # an unloaded version keeps its name and its folder: a rollback loads it again
            # from there (removed for another card, the rollback had nothing to load)
            packages = [(v, "loaded", d.package) for v, d in slot.versions.items()] + [
                (v, "unloaded", p) for v, p in slot.unloaded.items()]
            for version, state, package in packages:
                if (name, version) == (m.name, m.version) \
                        and card_digest(package.card) != card_digest(card):
                    raise PackageError(f"version {m.version} is already {state} on this box "
                                       "with another graph or card: a version names one "
                                       "package")
                folder = Path(package.path).resolve()
                if folder == here and (name, version) == (m.name, m.version):
                    return True
                if folder == here or here in folder.parents:
                    raise PackageError(f"{dest} holds {state} model {name} {version}: not "
                                       "replaced")
        return False

    # -- activation ---------------------------------------------------------------------------
    def _active(self, name: str) -> str | None:
        slot = self.app.state.registry.models().get(name)
        return None if slot is None else slot.active

    def _activate(self, path: Path, m: AssignedModel, checked: str) -> None:
        """Through the lifecycle, as an admin's activation would go (see the module doc).
        ``checked``: the card digest of the package as it was verified."""
        from lineside_inspect.server.routes.admin import publish_state

        registry = self.app.state.registry
        lifecycle = self.app.state.lifecycle
        previous = self._active(m.name)
        # beside what serves; a model new to the box becomes active at once (nothing to
        # gate it against), as a package loaded by POST /v1/models does
        loaded = registry.load(path, activate=False, expect_card=checked)
        det = loaded.detector
        golden = lifecycle.library
        # the set lifecycle.gate.golden names for the model, else the one named after it
        # (session 47: always the latter, whose passes such a line no longer counts)
        gate_on = lifecycle.golden_set_for(m.name)
        if loaded.first:
            lifecycle.first_version(det, actor=ACTOR)  # recorded like any activation
        elif (previous not in (None, m.version) and lifecycle.store is not None
                and gate_on in golden.names()):
            lifecycle.promote(m.name, m.version, golden=gate_on, actor=ACTOR,
                              reason=f"fleet assignment ({self.fleet.line or 'no line'})")
        else:
            try:
                lifecycle.activate(m.name, m.version, actor=ACTOR,
                                   reason=f"fleet assignment ({self.fleet.line or 'no line'})")
            except GateRefused as exc:
                if previous in (None, m.version) or gate_on in golden.names() \
                        or exc.failed is not None:
                    # (a failed report stands whatever a pull would gate with: a pass on
                    # another golden set does not clear it; session 43, late review)
                    raise
                # said first: the hub's fleet page shows 500 characters of it, and the
                # lifecycle's refusal ends with what the box holds (session 43, fleet pass)
                which = (f"named {m.name}, the only one a pull gates with" if gate_on == m.name
                         else f"{gate_on}, the one lifecycle.gate.golden names for {m.name} "
                         "and a pull gates with")
                raise GateRefused(
                    f"this box keeps no golden set {which} (lineside golden create {gate_on} "
                    f"... on the box): activated as by hand, refused: {exc.message}") from None
        self._serve(m.name, m.version)
        publish_state(self.app.state.metrics, registry)

    def _restore(self) -> None:
        """At start-up: load what was pulled before (verified again as a package: the card's
        sha256 of the graph and its whole card, which must still be the ones pulled) and
        activate, through the
        lifecycle, what was not left on the box."""
        registry = self.app.state.registry
        lifecycle = self.app.state.lifecycle
        # the recipes put over the API go over the configured ones of their names after the
        # start-up hooks, before anything is judged: an activation checks them in their place
        # (a recipe pinned over the API to make room for the pulled version)
        saved = getattr(self.app.state, "saved_recipes", None)
        pending = [] if saved is None else [s.recipe for s in saved.load()]
        # a kept previous version whose promoted one is no longer the model's pull is kept
        # no more; one whose promoted pull is held stays while the box judges with it (the
        # watch rolled back to it: session 48), decided below
        kept = {n: k for n, k in self.previous.models.items()
                if (p := self.state.models.get(n)) is not None and p.version == k.promoted}
        if kept != self.previous.models:
            self._save_previous(PreviousPulls(models=kept))
        for name, p in list(self.state.models.items()):
            path = self.root / name / p.version
            try:
                try:
                    last = (lifecycle.records.last_activation(name)
                            if lifecycle.store is not None else None)
                    audited = True
                except Exception as exc:  # a database failing since the store started
                    # the box starts with what pulled.json names; nothing it keeps is
                    # changed on no record (held, previous.json): the next start checks
                    log.error("fleet models: the audit log's last activation of %s not read "
                              "(%s): pulled %s %s is restored as pulled.json names it (held: "
                              "%s); whether another version was made to judge after it "
                              "before the box stopped is checked at the next start", name,
                              type(exc).__name__, name, p.version, "yes" if p.held else "no")
                    last, audited = None, False
                if audited and not p.held and last is not None and last["version"] != p.version:
                    # another version was made to judge after it (by hand, a rollback) and
                    # before the box stopped, in the time before a pull could mark it held
                    p.held = True
                    self._save()
                if p.held and audited:
                    # before the held pull's own folder is read: the version the box went
                    # back to is restored even where the one it left is gone or damaged
                    # (an operator removed the rejected package: review, session 48)
                    self._back_to_previous(name, p, last, pending)
                card = self._as_pulled(path, p)
                if p.held and name not in registry.models():
                    # the first version of a model name would be made active by loading it:
                    # a version left on the box stays unloaded (and the model with it, if
                    # the config does not name it)
                    log.error("fleet models: %s %s was left on the box and %s has no other "
                              "version loaded: it serves nothing until assigned again or "
                              "loaded by hand", name, p.version, name)
                    continue
                registry.load_model(path, activate=False, expect_card=card_digest(card))
                self._serve(name, p.version)
                if not p.held:
                    # the last activation this box recorded was this version (admitted then,
                    # forced perhaps): a force only where the gate refuses it now, recorded
                    # as the restore it is (``restore``/``force_restore``: not an activation
                    # that ends a promotion's watch; session 47)
                    lifecycle.activate(name, p.version, actor=ACTOR, action="restore",
                                       force=last is not None and last["version"] == p.version,
                                       reason="pulled, and the last version activated before "
                                              "the box stopped", pending_recipes=pending)
                    self._watch_again(name, p.version)
            except LinesideError as exc:
                log.error("fleet models: pulled %s %s not restored: %s", name, p.version,
                          exc.message)
            except Exception:  # a database failing at start: the box starts (session 48)
                slot = registry.models().get(name)
                log.exception("fleet models: pulled %s %s not restored as it was; the box "
                              "starts, %s judges %s", name, p.version, "nothing"
                              if slot is None or slot.active is None else slot.active, name)

    @staticmethod
    def _as_pulled(path: Path, p: Pulled) -> ModelCard:
        """The card of the package at ``path``, verified again as pulled ``p`` was: the
        card's sha256 of the graph and its whole card (when ``p`` recorded it) must still
        be the ones pulled, else :class:`PackageError`."""
        card = load_package(path).card
        if card.sha256 != p.graph_sha256:
            raise PackageError(f"{path}: the graph changed since it was pulled")
        if p.card_digest is not None and card_digest(card) != p.card_digest:
            raise PackageError(f"{path}: the card changed since it was pulled")
        return card

    def _back_to_previous(self, name: str, p: Pulled, last: dict[str, Any] | None,
                          pending: list[Any]) -> None:
        """At start-up, pulled ``p`` of ``name`` held: when the box had gone back from it
        to the pulled version before it (``previous.json``; the watch's automatic rollback,
        or an admin's rollback or activation of it) and that was the last version activated,
        that version is loaded again, verified as a pulled package is, and made active as
        the ``restore`` it is (without it the model served nothing when the box held no
        other version of it: session 48). Otherwise the record is kept no more."""
        prev = self.previous.models.get(name)
        if prev is None:
            return
        # the last activation recorded is the held pull's own where the rollback from it
        # was not recorded (a database failing then): the held mark, written at the
        # rollback (went_back), says the box left it, for the version kept here
        unrecorded = last is not None and last["version"] == p.version \
            and prev.promoted == p.version
        if last is None or (last["version"] != prev.version and not unrecorded):
            self._forget_previous(name)
            return
        registry = self.app.state.registry
        lifecycle = self.app.state.lifecycle
        slot = registry.models().get(name)
        if slot is not None and slot.active == prev.version:
            return  # judging already (the config names it too)
        path = self.root / name / prev.version
        how = (f"a rollback from {p.version} not in the audit log, its held mark in "
               f"{STATE_FILE}" if unrecorded else f"{last['action']} by {last['actor']}")
        reason = (f"the version judging when the box stopped ({how}): pulled before "
                  f"{name} {p.version}, which the box went "
                  f"back from; {p.version} stays left on the box, not taken again until the "
                  "hub assigns another package")
        try:
            if slot is None or prev.version not in slot.versions:
                card = self._as_pulled(path, prev)
                loaded = registry.load(path, activate=False, expect_card=card_digest(card))
                if loaded.first:  # new to the box: active as it loaded
                    lifecycle.first_version(loaded.detector, actor=ACTOR, action="restore",
                                            reason=reason)
            if registry.models()[name].active != prev.version:
                # admitted before: forced only where the gate refuses it now (so recorded)
                lifecycle.activate(name, prev.version, actor=ACTOR, action="restore",
                                   force=True, reason=reason, pending_recipes=pending)
            self._serve(name, prev.version)
            log.warning("fleet models: %s %s active again: %s", name, prev.version, reason)
        except LinesideError as exc:
            log.error("fleet models: pulled %s %s, the version the box went back to from %s, "
                      "not restored: %s", name, prev.version, p.version, exc.message)

    def _watch_again(self, name: str, version: str) -> None:
        """At start-up, pulled ``version`` of ``name`` active again: its promotion's watch,
        open when the box stopped (``Records.open_promotion``, read once for both: session
        49), has the version it rolls back to loaded (:meth:`_load_previous`) and is
        watched again (``Lifecycle.resume_promotion``; once, whichever restore asks
        first). A read that fails (a database outage at start) changes neither: the box
        judges unwatched, ``previous.json`` kept, asked again at the next start."""
        lifecycle = self.app.state.lifecycle
        try:
            promoted = (lifecycle.records.open_promotion(name)
                        if lifecycle.store is not None else None)
        except Exception:  # a database outage at start: kept, asked again at the next one
            log.exception("fleet models: the watch of pulled %s %s not looked up: it judges "
                          "unwatched; the version it rolls back to stays kept", name, version)
            return
        self._load_previous(name, version, promoted)
        try:
            lifecycle.resume_promotion(name, version, promoted)
        except Exception:  # its entry, or another fault: the box serves, unwatched
            log.exception("fleet models: the rollout watch of pulled %s %s not resumed",
                          name, version)

    def _load_previous(self, name: str, version: str, promoted: dict[str, Any] | None) -> None:
        """At start-up, pulled ``version`` of ``name`` active again: the pulled version its
        promotion's watch rolls back to (``previous.json``), loaded (not active) while that
        watch is open (``promoted``: ``Records.open_promotion``, read by the caller),
        verified again as a pulled package is; kept no more once the watch has ended
        (complete, rolled back, stopped, or another version activated)."""
        prev = self.previous.models.get(name)
        if prev is None:
            return
        registry = self.app.state.registry
        spec = ((promoted or {}).get("details") or {}).get("rollout")
        if promoted is None or promoted["version"] != version \
                or not isinstance(spec, dict) or spec.get("previous") != prev.version:
            self._forget_previous(name)
            return
        if prev.version in registry.models()[name].versions:
            return  # loaded already (the config names it too)
        path = self.root / name / prev.version
        try:
            card = self._as_pulled(path, prev)
            registry.load_model(path, activate=False, expect_card=card_digest(card))
        except LinesideError as exc:  # the watch then says it cannot resume (a WARNING)
            log.error("fleet models: pulled %s %s, the version the watch of %s rolls back "
                      "to, not loaded: %s", name, prev.version, version, exc.message)

    # -- figures ----------------------------------------------------------------------------
    def _count_failure(self, kind: str, *, in_a_row: bool = True) -> None:
        if in_a_row:
            self._failing += 1
        if self.metrics is not None:
            self.metrics.tasks.failed(TASK, kind, self._failing if in_a_row else None)

    def _publish_pulled(self) -> None:
        """``lineside_fleet_model_pulled{model, version}``: 1 for each version pulled and
        kept (the box's record of them, ``pulled.json``)."""
        if self.metrics is None:
            return
        self.metrics.pulled.clear()
        for name, p in self.state.models.items():
            self.metrics.pulled.labels(name, p.version).set(1)

    # -- state ------------------------------------------------------------------------------
    def _read_state(self) -> PulledState:
        return _read_json(self.root / STATE_FILE, PulledState,
                          "starting from the configured models")

    def _read_verified(self) -> VerifiedPulls:
        """The verified pulls; none when the file is missing or unreadable (each package
        is then downloaded again, as before it was kept)."""
        return _read_json(self.root / VERIFIED_FILE, VerifiedPulls,
                          "packages pulled before are downloaded again")

    def _serve(self, name: str, version: str) -> None:
        """The recipes of ``name`` once ``version`` of it is loaded: the box's configured
        ones waiting for the model, else the card's own (``version``'s)."""
        from lineside_inspect.recipes import card_recipe
        from lineside_inspect.server.waiting import add_waiting_recipes

        registry = self.app.state.registry
        add_waiting_recipes(self.app, name)  # the box's configured recipes of the model
        if not any(r.model == name for r in registry.recipes()):
            registry.add_recipe(card_recipe(registry.detector(name, version).card))

    def _forget_previous(self, name: str) -> None:
        """``previous.json`` without ``name``'s record."""
        self._save_previous(PreviousPulls(models={
            n: k for n, k in self.previous.models.items() if n != name}))

    def _save_previous(self, previous: PreviousPulls) -> None:
        with self._files:
            self.previous = previous
            try:
                write_atomic(self.root / PREVIOUS_FILE,
                             json.dumps(previous.model_dump(mode="json"), indent=1).encode())
            except OSError as exc:  # a full or read-only disk: the box starts and pulls
                log.error("fleet models: %s not written (%s): a pulled promotion's watch may "
                          "not resume after a restart", self.root / PREVIOUS_FILE, exc)

    def _save(self) -> None:
        with self._files:
            write_atomic(self.root / STATE_FILE,
                         json.dumps(self.state.model_dump(mode="json"), indent=1).encode())


def _waits_for(model: str, what: str) -> str:
    """What a refusal at activation waits for, said in ``model_errors`` (session 48)."""
    if what == "recipes":
        return (f" [waits for a recipe of {model} to change (pinned, put, deleted) or an "
                "admin's activation; a golden set change does not take it again]")
    if what == "either":  # the gate could not judge with the golden set (session 55)
        return (f" [waits for its golden set or a recipe of {model} to change, or an "
                "admin's activation]")
    return " [waits for its golden set to change or an admin's activation]"


def _told(error: str, tail: str) -> str:
    """``error`` and ``tail`` within the ERROR_CHARS characters the status report keeps,
    the tail kept whole."""
    if len(error) + len(tail) <= ERROR_CHARS:
        return error + tail
    return error[:ERROR_CHARS - 1 - len(tail)] + "…" + tail


def setup(app: Any, settings: Settings) -> ModelPuller:
    """The puller on ``app.state.fleet_models``; call after the hub client's start-up hook
    is added (this one runs after it, after the store's and the lifecycle's, and stops
    before them)."""
    puller = ModelPuller(app, settings)
    app.state.fleet_models = puller
    app.state.on_startup.append(puller.start)
    app.state.on_shutdown.append(puller.stop)
    return puller


_State = TypeVar("_State", PulledState, VerifiedPulls, PreviousPulls)


def _read_json(path: Path, model: type[_State], otherwise: str) -> _State:
    """One of the puller's state files; an empty one when it is missing, or, logged with
    what follows (``otherwise``), when it does not read."""
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return model()
    except (OSError, ValidationError, ValueError) as exc:
        log.error("fleet models: %s unreadable (%s): %s", path, type(exc).__name__, otherwise)
        return model()
