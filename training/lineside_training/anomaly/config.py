"""The good-only training config (``kind: anomaly`` in the YAML)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lineside_inspect.package import MAX_INPUT_SIZE
from lineside_training.budget import budget_text, parse_duration

STRIDE = 32  # the network halves its input five times


class SynthConfig(BaseModel):
    """Synthetic anomalies (lineside_training.anomaly.synth); sizes in input pixels."""

    # strict: a YAML "true" is not the number 1 (ints stay ints, floats take ints)
    model_config = ConfigDict(extra="forbid", strict=True)
    p_anomaly: float = Field(0.6, ge=0, le=1, description="share of crops given anomalies")
    max_anomalies: int = Field(3, ge=1)
    min_size: int = Field(4, ge=2)
    max_size: int = Field(64, ge=4)
    texture: float = Field(0.3, ge=0, description="relative weight: Perlin blob of foreign texture")
    recolour: float = Field(0.25, ge=0, description="relative weight: Perlin blob inverted/tinted")
    cutpaste: float = Field(0.25, ge=0, description="relative weight: CutPaste patch or scar")
    stroke: float = Field(0.2, ge=0, description="relative weight: thin curve")
    rephotograph: float = Field(1.0, ge=0, le=2, description=(
        "strength of capture variation applied to every crop (gain, noise, blur, JPEG)"))
    visible: int = Field(25, ge=1, le=255, description=(
        "grey levels: a pixel a synthetic anomaly changed by less than this is not "
        "labelled (25 suits high-contrast parts such as PCBs; faint texture defects need "
        "less)"))


class AnomalyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["anomaly"] = "anomaly"
    name: str = "goodonly"
    data: str = Field(..., description=(
        "canonical dataset folder; only its good images (no boxes) are used, e.g. one made "
        "by 'lineside data import -f good'"))
    split: str | None = Field(None, description=(
        "use only good images of this split (None: of no split or train; val and test stay "
        "held out)"))
    extra_data: list[str] = Field(default_factory=list, description=(
        "datasets whose good images (of no split, or train) are added to training, never "
        "to calibration: a new batch's good parts, or reviewers' false rejects from "
        "'lineside data pull'"))
    calib_groups: list[str] = Field(default_factory=list, description=(
        "groups held out for calibration; empty: about calib_fraction of the groups"))
    calib_fraction: float = Field(0.15, gt=0, lt=1)
    input_size: int = Field(640, ge=STRIDE, le=MAX_INPUT_SIZE, description=(  # a card's bound
        "letterboxed input side; a config that leaves it out (or says auto) gets it from "
        "the data (lineside_training.config.input_size_for): 200 px images run at 224"))
    crop_size: int = Field(192, ge=STRIDE, description=(
        "side of the training crops; one larger than input_size becomes input_size (whole "
        "images: small images sized from the data)"))
    width: int = Field(16, ge=4, description="channels of the first level (x2, x4, x6 deeper)")
    weights: str | None = Field(None, description=(
        "start from a trained good-only run (its folder or anomaly.pt; the same width): "
        "a few minutes on new good parts (a new batch's look) instead of a whole run"))
    score_topk: int = Field(32, ge=1, description="image score: mean of the top-k map pixels")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    steps: int = Field(4000, ge=1, description="upper bound; the time budget usually ends first")
    budget_clock: Literal["wall", "cpu"] = Field("wall", description=(
        "what time_budget counts: wall-clock time, or this process's CPU time (a fair "
        "budget on a machine other jobs keep busy)"))
    time_budget: str | None = Field("15m", description=(
        "wall-clock training budget (the cosine schedule follows elapsed time)"))
    focal_gamma: float = Field(2.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    target_false_reject: float = Field(0.01, gt=0, lt=1)
    pixel_false_positive: float = Field(1e-5, gt=0, lt=1, description=(
        "share of good pixels allowed above map_threshold"))
    min_region_px: int = Field(4, ge=1)
    threads: int | None = Field(None, ge=1, description=(
        "torch threads; left out, the cores the load average leaves free (1 is much "
        "faster than 2 on a 2-core machine other jobs keep busy)"))
    seed: int = 0
    device: str = "auto"
    log_every: int = Field(50, ge=1)
    out_dir: str = "runs"
    synth: SynthConfig = Field(default_factory=SynthConfig)

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("give a good-only run folder (or its anomaly.pt), or leave it out")
        return value

    @field_validator("input_size", "crop_size")
    @classmethod
    def _stride(cls, value: int) -> int:
        if value % STRIDE:
            lower = value - value % STRIDE
            raise ValueError(f"{value} is not a multiple of {STRIDE}: use {lower or STRIDE} "
                             f"or {lower + STRIDE}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_tiling(cls, doc: Any) -> Any:
        """A detector's ``tiling`` (native-scale training) said for what it is, not as an
        unknown key: a good-only model's map is of the whole frame."""
        if isinstance(doc, dict) and "tiling" in doc:
            raise ValueError("tiling: native-scale training takes single-image detectors; a "
                             "good-only model judges each frame whole (its anomaly map is of "
                             "the whole frame): leave tiling out, or raise input_size")
        return doc

    @model_validator(mode="after")
    def _crop_within_input(self) -> AnomalyConfig:
        # the sampler could only crop the whole image anyway; say so in the saved config
        self.crop_size = min(self.crop_size, self.input_size)
        return self

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> str | None:
        return None if value is None else budget_text(value)

    def budget_seconds(self) -> float | None:
        return None if self.time_budget is None else parse_duration(self.time_budget)
