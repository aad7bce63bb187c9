"""Settings of the model lifecycle: the ``lifecycle:`` section of the server config."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from lineside_inspect.names import Name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateSettings(_Section):
    false_reject_allowance: int = Field(0, ge=0, description=(
        "false rejects the candidate may have beyond the model it replaces on the golden set"))
    require_gate: bool = Field(False, description=(
        "refuse to activate (or shadow) a version with no gate report at all, not only one "
        "whose gate failed (an admin may still force it, recorded)"))
    max_every_recipe_images: int = Field(20_000, ge=1, le=10_000_000, description=(
        "images a gate under every recipe (\"recipe\": \"*\", a promotion with "
        "require_gate) may replay in one call, the judging recipes times the golden set's "
        "images: it holds the one gate lock throughout; above it the call is refused "
        "before anything runs (gate under each recipe by name instead). A gate under one "
        "recipe is bounded by the golden set's own cap (5000 images) alone"))
    golden: dict[Name, Name] = Field(default_factory=dict, description=(
        "the golden set each model must be gated on, model name: golden set name (session "
        "47): a model with an entry is admitted only by a pass replayed on that set (as it "
        "stands); a gate on another set still runs and is stored, and says it admits "
        "nothing here. A fleet box's pull gates on it in place of the set named after the "
        "model. A model the server does not hold is warned of at start, not refused (it "
        "may be loaded later); a set not made yet refuses admissions until it is. Without "
        "an entry any set's pass counts"))


class ShadowSettings(_Section):
    sample_rate: float = Field(0.25, gt=0, le=1, description=(
        "share of live frames a shadow model sees (default of POST /v1/models/{name}/shadow)"))
    queue: int = Field(4, ge=1, le=64, description=(
        "frames sent to the shadow's process and not judged yet; a sampled frame finding "
        "this many is dropped (counted)"))
    threads: int = Field(1, ge=1, description="onnxruntime threads of the shadow's own session")
    nice: int = Field(19, ge=0, le=19, description=(
        "niceness of the shadow's process where idle scheduling (Linux SCHED_IDLE) is missing"))


class RolloutSettings(_Section):
    """The bounds a promotion is watched against (docs/lifecycle.md)."""

    # finite only: a ratio of .inf made the bound over a previous rate of 0 NaN (inf x 0),
    # above which no fail rate is, so even the absolute margin never rolled back; a
    # min_watch_s of .inf never ended a watch (lifecycle review, session 36)
    model_config = ConfigDict(allow_inf_nan=False)  # merged with _Section's

    min_inspections: int = Field(50, ge=1, description=(
        "inspections of the new version before its fail rate is judged"))
    watch_inspections: int = Field(500, ge=1, description="the watch ends after this many ...")
    min_watch_s: float = Field(1800, ge=0, description=(
        "... and at least this many seconds: reviewers need time to confirm false rejects, "
        "which can still roll it back"))
    max_fail_rate_ratio: float = Field(1.5, ge=1, description=(
        "roll back when the new fail rate exceeds the previous model's times this, or its "
        "pass rate falls below the previous one divided by this (whichever is reached "
        "first) ..."))
    max_fail_rate_increase: float = Field(0.05, ge=0, le=1, description=(
        "... and also exceeds it by this much (absolute), so a near-zero rate does not trip it"))
    max_false_rejects: int = Field(2, ge=0, description=(
        "roll back when reviewers mark more false rejects of the new version than this"))
    baseline_inspections: int = Field(500, ge=1, description=(
        "the previous model's fail rate is taken over its last this many inspections of the recipe"))
    check_interval_s: float = Field(1.0, gt=0, le=60)


class CaptureSettings(_Section):
    """Active learning: which images to keep for labelling beyond the store's pass sample."""

    enabled: bool = True
    per_hour: int = Field(60, ge=0, description="images kept per reason per hour, at most")
    near_threshold: float = Field(0.1, ge=0, le=1, description=(
        "a detection within this of its class's operating threshold (either side)"))
    rare_share: float = Field(0.05, ge=0, le=1, description=(
        "a counted defect of a class under this share of the defects seen since start"))
    random_rate: float = Field(0.005, ge=0, le=1, description="a random sample of everything")


class FailRateAlarmSettings(_Section):
    """When a recipe's fail rate jumps on a running line (docs/lifecycle.md, section 6)."""

    model_config = ConfigDict(allow_inf_nan=False)  # merged with _Section's

    enabled: bool = True
    baseline_inspections: int = Field(500, ge=1, le=1_000_000, description=(
        "the recipe's first this many inspections with a model version learn its usual "
        "fail rate"))
    window: int = Field(400, ge=1, le=100_000, description=(
        "once learned, its fail rate over its last this many inspections (the baseline's "
        "last among them) is compared with it after every inspection"))
    max_fail_rate_ratio: float = Field(2.0, ge=1, le=100, description=(
        "alarm when the recent fail rate exceeds the usual one times this, or the recent "
        "pass rate falls below the usual one divided by this (whichever is reached first) ..."))
    max_fail_rate_increase: float = Field(0.05, gt=0, le=1, description=(
        "... and also exceeds it by this much (absolute), so a near-zero rate does not trip it"))
    save_every_s: float = Field(10.0, ge=0, le=3600, description=(
        "the counts are saved to <data_dir>/lifecycle/fail_rate_alarm.json this often (and "
        "at shutdown), so a restart resumes them; 0: kept in memory only, a restart learns "
        "afresh"))


class LifecycleSettings(_Section):
    gate: GateSettings = Field(default_factory=GateSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    fail_rate_alarm: FailRateAlarmSettings = Field(default_factory=FailRateAlarmSettings)


class FailRateBounds(Protocol):
    max_fail_rate_ratio: float
    max_fail_rate_increase: float


def bound_of(usual: float, bounds: FailRateBounds) -> float:
    """The fail rate above which a watched rollout rolls back and a recipe is in alarm, for
    a usual (previous) rate ``usual``:
    ``max(usual + increase, min(usual x ratio, 1 - (1 - usual) / ratio))``.

    Above it the fail rate rose by the absolute margin (which keeps a near-zero rate from
    being a hair trigger, and a high one too: a ratio of 1 is the margin alone) and either
    grew ``ratio`` times or the pass rate shrank ``ratio`` times, whichever is reached
    first. The pass rate's side is what judges a high usual rate: ``usual x ratio`` alone
    reached 100% at a usual rate of ``1 / ratio`` (two thirds at x1.5, half at x2), and a
    version failing every part was never above it (session 52). Below the rate where the
    two sides cross (40% at x1.5, a third at x2) the bound is ``max(usual x ratio, usual +
    increase)`` as before; it reaches 100% only at a usual rate of ``1 - increase``."""
    r = bounds.max_fail_rate_ratio
    return max(usual + bounds.max_fail_rate_increase, min(usual * r, 1 - (1 - usual) / r))
