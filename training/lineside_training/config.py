"""Training configuration: a YAML file validated by pydantic, plus CLI overrides."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lineside_inspect.dataset import read_dataset

# the coarsest feature map's stride (input and crop sizes are multiples of it) and the
# auto input size's rule: the edge's, so that ``data stats`` says what training chooses
from lineside_inspect.dataset.stats import STRIDE, input_size_for
from lineside_inspect.errors import (
    ConfigError,
    LinesideError,
    describe_validation,
    nearest_keys,
    unknown_key_hint,
)
from lineside_inspect.package import MAX_INPUT_SIZE
from lineside_inspect.runtime.tiles import Tiling
from lineside_inspect.user_files import load_yaml, read_text
from lineside_training.budget import budget_text

Config = TypeVar("Config", bound=BaseModel)
DEFAULT_CROP = 320
DEFAULT_SIZE = 640


class AugmentConfig(BaseModel):
    """Box-aware augmentations (albumentations); each value is a probability, except
    ``scale_jitter``: a ± range, applied to 30% of images."""

    model_config = ConfigDict(extra="forbid")
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rot90: float = Field(0.5, ge=0, le=1)
    brightness_contrast: float = Field(0.3, ge=0, le=1)
    blur: float = Field(0.1, ge=0, le=1)
    noise: float = Field(0.1, ge=0, le=1)
    scale_jitter: float = Field(0.2, ge=0, le=1, description="scale range +-, applied with p=0.3")
    morphology: float = Field(0.0, ge=0, le=1, description=(
        "erode or dilate by 2-3 px: varies trace and feature thickness between boards"))
    reference_shift: float = Field(0.0, ge=0, le=1, description=(
        "reference models: shift the reference by up to 2 px against the frame, as an "
        "imperfectly registered part would be"))


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    name: str = "run"
    data: str = Field(..., description="canonical dataset folder")
    extra_data: list[str] = Field(default_factory=list, description="datasets merged into train")
    model: str = "lsdet"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, description="local state dict (whole model or backbone)")
    # at most what a package's card takes: a larger run trained for hours, then its
    # export was refused (session 38)
    input_size: int = Field(DEFAULT_SIZE, ge=32, le=MAX_INPUT_SIZE, description=(
        "letterboxed square input, a multiple of 32; a config read by load_config that "
        "leaves it out (or says auto) gets it from the data (input_size_for)"))
    reference: bool = Field(False, description=(
        "compare each image with its golden reference (the dataset's 'reference' field): "
        "input channels are image grey, reference grey and their difference"))
    good_weight: float = Field(1.0, gt=0, le=1, description=(
        "sampling weight of good (defect-free) images relative to defective ones; below 1 "
        "spends more steps on defects (single-process runs; DDP samples uniformly)"))
    crop_size: int | None = Field(DEFAULT_CROP, ge=32, description=(
        "train on random crops (a multiple of 32) of images scaled as inference scales them; "
        "none, or a crop at least as large as input_size: whole images (with tiling: "
        "tile-sized windows)"))
    tiling: Tiling | None = Field(None, description=(
        "native-scale training for frames larger than the model's input ({tile: 640, "
        "overlap: 0.2}): the input size is the tile, training crops are cut from frames "
        "larger than it at their own scale (no downscale), validation and calibration "
        "judge val frames as tiles, and the exported card's recipe tiles alike; images no "
        "larger than the tile are letterboxed whole as without it. Single-image detectors"))
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description=(
        "adamw for LSDet; sgd (momentum 0.9) suits torchvision's detectors from scratch"))
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="0 disables EMA")
    grad_clip: float = Field(10.0, ge=0, description="0 disables clipping")
    seed: int = 0
    patience: int = Field(10, ge=1, description="early stop after N evaluations without gain "
                          "(with a time budget, only in the last quarter of the plan)")
    eval_every: int = Field(1, ge=1)
    eval_share: float = Field(0.1, gt=0, le=1, description=(
        "with a time budget, the most of it evaluations may take: eval_every is widened "
        "(never below the value set) to keep within it, leaving the time to training; 1 keeps "
        "eval_every as set"))
    workers: int = Field(0, ge=0)
    device: str = "auto"
    threads: int | None = Field(None, ge=1, description=(
        "torch threads; left out, the cores the load average leaves free (two threads "
        "beside another job on 2 cores trained up to 6x slower than one)"))
    amp: bool = True
    max_steps_per_epoch: int | None = Field(None, ge=1)
    time_limit_minutes: float | None = Field(None, gt=0, description=(
        "stop after the epoch that passes this (the schedule is not changed; see "
        "time_budget, which replaces it when set)"))
    time_budget: str | None = Field(None, description=(
        "train to this budget of elapsed time (30m, 90s, 1h; a bare number is minutes; "
        "counted on the monotonic clock, which a clock change does not move): the "
        "schedule (warm-up, cosine, EMA) is fitted to it from measured throughput and "
        "'epochs' only seeds the first plan"))
    log_every: int = Field(50, ge=1, description=(
        "steps between progress lines when the log is not a terminal (nohup, CI)"))
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    out_dir: str = "runs"
    agnostic_iou: float | None = Field(None, gt=0, lt=1, description=(
        "count one defect per place: the run's calibration, evaluation and exported card "
        "keep, of boxes overlapping by IoU above this, only the highest-scored, whatever "
        "the class (docs/training/calibration.md); none: every class's boxes count"))
    goal_map50: float | None = Field(None, ge=0, le=1, description=(
        "the validation mAP@.5 this recipe aims for: the goal line of the report's "
        "time_to_accuracy.png (none drawn without it)"))

    @field_validator("input_size", "crop_size")
    @classmethod
    def _stride(cls, value: int | None) -> int | None:
        """The detector halves its input five times: sizes are multiples of 32, and a user
        with 200 px images is told which sizes are nearest."""
        if value is not None and value % STRIDE:
            lower = value - value % STRIDE
            options = [s for s in (lower, lower + STRIDE) if s >= STRIDE]
            raise ValueError(f"{value} is not a multiple of {STRIDE} (the detector's stride): "
                             f"use {' or '.join(map(str, options))}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _tile_is_input(cls, doc: Any) -> Any:
        """With ``tiling`` the input size is the tile: a config that leaves input_size out
        (or says auto) gets it."""
        if isinstance(doc, dict) and isinstance(tiling := doc.get("tiling"), dict) \
                and doc.get("input_size", "auto") == "auto":
            tile = tiling.get("tile")
            # a tile no input can be is refused by its own name (_native_tiles, Tiling)
            fits = isinstance(tile, int) and not tile % STRIDE and STRIDE <= tile <= MAX_INPUT_SIZE
            return {**doc, "input_size": tile if fits else DEFAULT_SIZE}
        return doc

    @model_validator(mode="after")
    def _native_tiles(self) -> TrainConfig:
        """Refuse a ``tiling`` that makes no sense: a tile the detector cannot take as its
        input, another input size, or a reference model (tiling judges single frames)."""
        if self.tiling is None:
            return self
        tile = self.tiling.tile
        if tile % STRIDE or tile > MAX_INPUT_SIZE:
            lower = tile - tile % STRIDE
            raise ValueError(f"tiling.tile {tile}: the tile is the model's input size, a "
                             f"multiple of {STRIDE} (the detector's stride) up to "
                             f"{MAX_INPUT_SIZE}: use "
                             + " or ".join(str(s) for s in (lower, lower + STRIDE)
                                           if STRIDE <= s <= MAX_INPUT_SIZE))
        if self.input_size != tile:
            raise ValueError(f"tiling.tile {tile} and input_size {self.input_size}: a "
                             "native-scale run's input is its tile; leave input_size out (or "
                             "auto) or set it to the tile")
        if self.reference:
            raise ValueError("tiling: native-scale training takes single-image detectors, and "
                             "reference: true compares each frame with its golden image "
                             "whole; leave one of them out")
        return self

    @model_validator(mode="after")
    def _whole_images(self) -> TrainConfig:
        """A crop at least as large as the input is a whole (padded) image: cut at the
        crop's size it would train mostly on padding (a 224 px input in 320 px crops)."""
        if self.crop_size is not None and self.crop_size >= self.input_size:
            self.crop_size = None
        return self

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> str | None:
        """Checked at load, kept as seconds (``1800s``) so config.yaml reads back the same."""
        if value is None:
            return None
        return budget_text(value)


def _set_dotted(doc: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {key!r}: a key must not have an empty part")
    for n, p in enumerate(parts[:-1]):
        doc = doc.setdefault(p, {})
        if not isinstance(doc, dict):  # "augment.hflip.x=3" where hflip is a number
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:n + 1])} is a "
                              f"{type(doc).__name__}, not a section with keys")
    doc[parts[-1]] = value


def sizes_from_data(doc: dict[str, Any]) -> dict[str, Any]:
    """A config document (a detector's or a good-only model's) with ``input_size`` chosen
    from all its dataset's images when the document leaves it out or says ``auto``; a size
    the config sets wins (a crop as large as the size then means whole images:
    :class:`TrainConfig`, :class:`AnomalyConfig`). A dataset that cannot be read leaves the
    default (training then fails on it with its own message)."""
    if doc.get("input_size", "auto") != "auto" or doc.get("tiling") is not None:
        return doc  # a native-scale run's input is its tile (TrainConfig._tile_is_input)
    doc = {k: v for k, v in doc.items() if k != "input_size"}
    try:
        images = read_dataset(doc["data"]).images
    except (KeyError, TypeError, OSError, LinesideError):
        return doc
    if not images:
        return doc
    size = input_size_for([max(r.width, r.height) for r in images])
    doc["input_size"] = size
    return doc


def as_written(doc: dict[str, Any]) -> dict[str, Any]:
    """A run's config (``model_dump``) as its ``config.yaml`` keeps it: ``data`` and
    ``extra_data`` (``--merge``) absolute. They were kept as typed, relative to the folder
    ``train`` ran in, so ``--resume`` (or ``evaluate``) from another folder looked for
    them there (review, session 47). Absolute, not resolved: a symlink named stays one."""
    out = dict(doc)
    if isinstance(out.get("data"), str):
        out["data"] = os.path.abspath(out["data"])
    if isinstance(out.get("extra_data"), list):
        out["extra_data"] = [os.path.abspath(p) if isinstance(p, str) else p
                             for p in out["extra_data"]]
    return out


def shown(value: Any) -> str:
    """A config value as a message names it: a string as it is, anything else as JSON (a
    YAML date, which JSON has no form for, as its text: it was a TypeError traceback)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, **fields: Any) -> TrainConfig:
    """Read ``path`` (YAML), replace its keys by ``base``'s (:func:`read_config`), apply
    ``key=value`` overrides (values parsed as YAML) and keyword fields, and choose the
    input size from the data when not set (:func:`sizes_from_data`); errors name the file
    and field."""
    return validate_config(TrainConfig, path,
                           sizes_from_data(read_config(path, overrides, base, **fields)),
                           overrides)


def read_config(path: str | Path | None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """The config document: ``path``'s YAML, its keys replaced by ``base``'s (a resumed
    run's own values), with the overrides and fields applied."""
    doc: dict[str, Any] = {}
    if path is not None:
        # not UTF-8 was a UnicodeDecodeError traceback, a FIFO nobody writes to a hang
        text = read_text(path, "config")
        try:
            doc = load_yaml(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: a config is a mapping of keys (epochs: 40), not a "
                              f"{type(doc).__name__}")
    doc.update(copy.deepcopy(base or {}))  # (a --set inside a section edits a copy)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        try:
            parsed = load_yaml(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise ConfigError(f"override {item!r}: the value is {problem} (quote a text "
                              "value: key='...')") from None
        _set_dotted(doc, key.strip(), parsed)
    doc.update({k: v for k, v in fields.items() if v is not None})
    return doc


def validate_config(schema: type[Config], path: str | Path | None, doc: dict[str, Any],
                    overrides: list[str] | None = None,
                    base: dict[str, Path] | None = None) -> Config:
    """``doc`` as ``schema``; an error names the ``--set`` it came from (``overrides``),
    else the file ``base`` names for its field (a resumed run's ``config.yaml``), else the
    config file, and a key that is none of the schema's its nearest ones."""
    try:
        return schema.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        hint = ""
        if any(e["type"] == "missing" and tuple(e["loc"]) == ("data",) for e in errors):
            # "data: Field required" did not say what to give
            hint = ("; give --data DATASET (a folder made by lineside data import)"
                    + ("" if path else ", and --config CONFIG (training/configs/*.yaml)"))
        for e in errors:
            if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
                near = nearest_keys(schema, (e["loc"][0],)) or []
                hint += f"; {e['loc'][0]!r} is no config key" + (
                    f" (did you mean {' or '.join(near)}?)" if near else "")
            elif e["type"] == "extra_forbidden" and e["loc"]:
                # a key inside a section (augment:, synth:): its section's nearest keys, as
                # the server's settings and recipes say them; it was "'augment' is no
                # config key (did you mean augment?)" (session 42)
                e["msg"] = f"{e['msg']}{unknown_key_hint(schema, tuple(e['loc']))}"
        # "--set nonsense=3" was blamed on the config file (new-user review)
        given = [tuple(item.partition("=")[0].strip().split(".")) for item in overrides or []]

        def overridden(e: Any) -> bool:  # its field, or one above it, was given by --set
            loc = tuple(str(x) for x in e["loc"])
            # or a key missing beside one --set gave (its section's required tile): "--set
            # tiling.overlap=0.3" was "CONFIG: tiling.tile: Field required" (review, 45)
            return any(loc[:len(key)] == key or (
                e["type"] == "missing" and len(key) > 1 and loc[:-1] == key[:-1])
                for key in given)

        ours = [e for e in errors if overridden(e)]
        theirs = [e for e in errors if not overridden(e)]
        said = [f"--set: {describe_validation(ours)}"] if ours else []
        kept: dict[Path, list[Any]] = {}  # a resumed run's own value (lr: fast)
        for e in [e for e in theirs if e["loc"] and str(e["loc"][0]) in (base or {})]:
            kept.setdefault((base or {})[str(e["loc"][0])], []).append(e)
            theirs.remove(e)
        said += [f"{where} (the run's, which --resume continues): {describe_validation(errs)}"
                 for where, errs in kept.items()]
        if theirs:
            said.append(f"{path or 'config'}: {describe_validation(theirs)}")
        raise ConfigError("; ".join(said) + hint) from None
