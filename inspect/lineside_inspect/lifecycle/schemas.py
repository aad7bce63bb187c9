"""What the lifecycle routes take and answer, as pydantic models (``/docs`` shows them)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lineside_inspect.errors import ConfigError
from lineside_inspect.lifecycle.gate import GateReport
from lineside_inspect.names import Name, Text
from lineside_inspect.schemas import INSPECTION_ID, Outcome, TimeText
from lineside_inspect.store.utc import UTCTime

_ID = re.compile(INSPECTION_ID.removeprefix("^").removesuffix("$"))  # full-matched


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# -- requests ---------------------------------------------------------------------------
class GoldenAdd(_Shape):
    """Reviewed inspections of this server's store into a golden set (a new version; the
    first when the set is new). Sets from datasets and folders: ``lineside golden``."""

    inspections: list[str] | None = Field(None, max_length=5000, description=(
        "these inspections (each reviewed); default: every reviewed one with a stored image"))
    since: UTCTime | None = Field(None, description="reviewed inspections made since (ISO; UTC)")
    limit: int = Field(500, ge=1, le=5000, strict=True)
    note: Text = Field("", max_length=2000)

    def ids(self) -> list[str] | None:
        if self.inspections is None:
            return None
        bad = [i for i in self.inspections if not _ID.fullmatch(i)]
        if bad:
            raise ConfigError(f"not inspection ids (32 hex digits): {bad[:5]}")
        return self.inspections


class GateRun(_Shape):
    version: Name = Field(description=(
        "the candidate: a version loaded (POST /v1/models, activate false), or one unloaded "
        "from memory since (loaded again from its package)"))
    golden: Name = Field(description=(
        "the golden set replayed: a golden set's name (GET /v1/golden lists this server's; "
        "POST /v1/golden/{name} makes one)"))
    golden_version: int | None = Field(None, ge=1, strict=True,
                                       description="default: its latest version")
    against: Name | None = Field(None, description="default: the active version")
    recipe: Literal["*"] | Name | None = Field(None, description=(
        "whose rules judge both; default: the server's default recipe for this model. For a "
        "good-only model, also a recipe fusing it with a detector: both versions are then "
        "judged with that detector, as the line judges them. \"*\": one gate under each "
        "recipe that would judge the version once active (each admission needs a current "
        "pass under every one of them with lifecycle.gate.require_gate), answered as "
        "EveryRecipeGate"))


class EveryRecipeGate(_Shape):
    """The answer to a gate under every recipe that would judge the version (``"recipe":
    "*"``): one stored report per recipe."""

    recipe: Literal["*"] = "*"
    passed: bool = Field(description="every report passed")
    reports: list[GateReport] = Field(description=(
        "one per recipe that would judge the version once active, by recipe name (its "
        "card's own recipe when nothing else judges it)"))


class Admit(_Shape):
    # numbers and yes/no strict here: "yes" was a force, "0.5" a sample rate, true a 1
    force: bool = Field(False, strict=True, description=(
        "admit a version whose gate failed (admins only; needs a reason; recorded)"))
    reason: Text = Field("", max_length=2000, description="why (recorded in the audit log)")


class ShadowStart(Admit):
    version: Name = Field(description=(
        "a version other than the active one (one unloaded from memory is loaded again)"))
    sample_rate: float | None = Field(None, gt=0, le=1, strict=True, description=(
        "share of live frames it sees; default lifecycle.shadow.sample_rate"))


class Promote(Admit):
    version: Name = Field(description="the candidate: a version loaded (POST /v1/models, "
                          "activate false), or one unloaded from memory since")
    golden: Name = Field(description=(
        "the golden set the version is gated on: a golden set's name (GET /v1/golden lists "
        "this server's; POST /v1/golden/{name} makes one)"))
    golden_version: int | None = Field(None, ge=1, strict=True)
    recipe: Name | None = Field(None, description="the recipe gated under and watched")


class Relearn(_Shape):
    reason: Text = Field("", max_length=2000, description="why (recorded in the audit log)")


# -- answers ------------------------------------------------------------------------------
class GoldenVersion(_Shape):
    name: str
    version: int
    digest: str = Field(description="sha256 of the items' content (images, verdicts, boxes)")
    parent: int | None
    created_at: TimeText
    items: int
    expected_fail: int
    expected_pass: int
    with_boxes: int
    note: str


class BrokenGoldenVersion(_Shape):
    version: int
    error: str = Field(description="why it cannot be used (an edited or invalid manifest)")


class GoldenSet(_Shape):
    name: str
    versions: list[GoldenVersion]
    broken: list[BrokenGoldenVersion] = Field(default_factory=list, description=(
        "versions that cannot be used, each with why: listed apart, so one broken version "
        "hides no other"))


class GoldenSets(_Shape):
    items: list[GoldenSet]


class StoredGateReport(GateReport):
    actor: str = Field(description="who ran it")


class GateReports(_Shape):
    items: list[StoredGateReport]
    left_out: int = Field(0, ge=0, exclude_if=lambda n: n == 0, description=(
        "reports left out of items: stored text that does not read as a gate report (a "
        "hand edit, another writer's; it admits nothing); absent when 0"))


class ShadowModel(_Shape):
    version: str
    sha256: str


class ShadowJudging(_Shape):
    """How a shadow of the model judges the inspections made under one recipe."""

    recipe: str
    fused_with: str | None = Field(None, description=(
        "the other model of the recipe's fusion of a detector with a good-only model (its "
        "name, and version where the recipe pins one), as fused_kind says: None, the shadow "
        "judges alone (its model serves the recipe alone)"))
    fused_kind: Literal["anomaly", "detector"] | None = Field(None, description=(
        "anomaly: the shadow is of the recipe's detector, judged with the served good-only "
        "model's finding; detector: the shadow is of the good-only partner, its finding "
        "fused with the served detector's detections (the detector not run again), the "
        "recipe's verdict as the line gives it"))


class ShadowStatus(_Shape):
    """A model's shadow (running, or the last one)."""

    model: str
    active_version: str | None
    running: bool = Field(description=(
        "its process is up: state running, or stopping (the row not yet marked stopped)"))
    state: Literal["running", "stopping", "stopped"] | None = Field(None, description=(
        "stopping: a stop, a replacing start, its process's death or the server's shutdown "
        "is ending it (a stop then answers 404 'is being stopped already'); None: never "
        "shadowed"))
    shadow: ShadowModel | None = Field(description="None: never shadowed since the store began")
    run_id: str | None = None
    sample_rate: float | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    started_by: str | None = None
    offered: int = Field(0, description="live frames sampled for the shadow")
    compared: int = Field(0, description="frames the shadow judged")
    agreed: int = 0
    dropped: int = Field(0, description="sampled frames dropped because the shadow was busy")
    errors: int = 0
    agreement: float | None = Field(None, description="agreed / compared")
    disagreements: int = Field(0, description="stored, each with both results")
    reviewed_disagreements: int = Field(0, description="of those, reviewed: the truth is known")
    shadow_escapes: int = Field(0, description=(
        "reviewed disagreements: the part was bad, the shadow passed it"))
    shadow_false_rejects: int = Field(0, description="the part was good, the shadow failed it")
    active_escapes: int = 0
    active_false_rejects: int = 0
    shadow_right: int = 0
    active_right: int = 0
    shadow_ms_p50: float | None = Field(None, description="the shadow's own time per frame")
    priority: str | None = Field(None, description=(
        "how the shadow's process is scheduled: SCHED_IDLE (only CPU time nothing else wants) "
        "or a nice level"))
    judged_as: list[ShadowJudging] = Field(default_factory=list, description=(
        "the recipes whose inspections a shadow of this model is offered now (those that "
        "judge with it or fuse it with their detector), and how it judges under each; each "
        "disagreement says how it was judged"))


class ShadowResult(_Shape):
    version: str
    verdict: Outcome
    defects: list[dict[str, Any]]
    reasons: list[dict[str, Any]] | None = None


class ShadowDisagreement(_Shape):
    run_id: str
    inspection_id: str
    created_at: datetime
    model: str
    fused_with: str | None = Field(None, description=(
        "how the shadow judged the frame: the other model (name version) of the recipe's "
        "fusion, as fused_kind says (ShadowJudging); None: alone, and in rows stored before "
        "a shadow said so"))
    fused_kind: Literal["anomaly", "detector"] | None = None
    active: ShadowResult
    shadow: ShadowResult


class ShadowDisagreements(_Shape):
    items: list[ShadowDisagreement]


class RolloutStatus(_Shape):
    model: str
    version: str
    previous: str
    recipe: str | None
    started_at: datetime
    actor: str
    gate_report_id: str | None
    state: Literal["watching", "rolled_back", "complete", "stopped"]
    inspections: int
    fails: int
    fail_rate: float | None
    baseline_inspections: int
    baseline_fail_rate: float | None
    false_rejects: int
    checks: int = Field(description="times the watch counted its inspections and decided "
                                    "(every lifecycle.rollout.check_interval_s)")
    ended_at: datetime | None
    why: str


class FailRateTrack(_Shape):
    recipe: str
    judged_by: str = Field(description="model and version, + the fused good-only model's")
    state: Literal["learning", "ok", "alarm"]
    since: UTCTime = Field(description="when these models started judging with the recipe "
                                       "(or it was relearned); counts are resumed over restarts")
    changed_at: UTCTime | None = Field(description="when the alarm was last raised or cleared")
    why: str
    baseline_inspections: int = Field(description="inspections its usual rate is learned from")
    baseline_needed: int = Field(description="0 when the recipe gives its usual_fail_rate")
    usual_from: Literal["learned", "recipe"] = Field(description=(
        "learned from the first inspections, or the recipe's usual_fail_rate"))
    usual_fail_rate: float | None
    recent_inspections: int
    recent_fail_rate: float | None
    bound: float | None = Field(description="the recent rate above which it is in alarm")


class FailRateAlarms(_Shape):
    items: list[FailRateTrack] = Field(description=(
        "one per recipe with counts: inspected since start, or resumed after a restart with "
        "the same recipe content and models"))


class Promotion(_Shape):
    report: GateReport
    rollout: RolloutStatus


class Activated(_Shape):
    name: str
    active: str
    forced: bool = Field(description="a failed (or missing, with require_gate) gate was overridden")
    gate_report_id: str | None


class AuditEntry(_Shape):
    id: int
    created_at: datetime
    box_id: str | None
    actor: str
    action: str = Field(description=(
        "activate, force_activate, promote, force_promote, rollback, auto_rollback, "
        "rollout_complete, rollout_stopped, rollout_resumed, gate, shadow_start, force_shadow, shadow_stop, "
        "golden_add, recipe_put, recipe_delete, startup, restore, force_restore, "
        "fail_rate_alarm, fail_rate_cleared, fail_rate_relearn, unload, force_unload"))
    model: str | None
    version: str | None
    reason: str
    details: dict[str, Any]


class AuditPage(_Shape):
    total: int
    limit: int
    offset: int
    items: list[AuditEntry]


class GoldenUsed(_Shape):
    name: str
    version: int | None
    digest: str | None


class Admission(_Shape):
    created_at: datetime
    box_id: str | None
    model: str
    version: str
    sha256: str
    role: Literal["active", "shadow", "pinned"] = Field(description=(
        "what it was admitted to: judge as the active version, as a shadow, or pinned by a recipe"))
    gate_report_id: str | None
    golden: GoldenUsed | None
    forced: bool
    actor: str
    reason: str
    lineage: dict[str, Any] = Field(description="the card's: dataset revision, parent model")


class ModelLineage(_Shape):
    model: str
    active: str | None
    versions: dict[str, dict[str, Any]] = Field(description="each loaded version's card lineage")
    admissions: list[Admission] = Field(description="newest first")


class Queue(_Shape):
    name: Literal["shadow", "to_label"] = Field(description="GET /v1/inspections?queue=NAME")
    title: str
    description: str
    total: int
    unreviewed: int


class Queues(_Shape):
    items: list[Queue]
    capture_used_this_hour: dict[str, int] = Field(description="captures per reason this hour")
    capture_per_hour: int
