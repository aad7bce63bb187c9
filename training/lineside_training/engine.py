"""The training loop, in named steps as torchvision's reference scripts have it:
:func:`train` composes :func:`train_one_epoch`, :func:`evaluate` and
:func:`save_checkpoint` / :func:`load_checkpoint`. CPU or CUDA (AMP), DDP through torchrun,
EMA, resume, early stopping, a time budget (:mod:`lineside_training.budget`), a JSON-lines
metrics log per epoch and a plain-text ``train.log``."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from pydantic import ValidationError
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from lineside_inspect.atomic import write_atomic
from lineside_inspect.dataset import Dataset, ImageRecord, read_dataset
from lineside_inspect.dataset.painted import painted_regions
from lineside_inspect.dataset.stats import TINY_BOX_PX, shrunk_boxes
from lineside_inspect.dataset.validate import (
    duplicate_warnings,
    quick_check,
    size_problem,
    unlisted_warning,
)
from lineside_inspect.errors import (
    ConfigError,
    DatasetError,
    ImageError,
    ImageTooLargeError,
    LinesideError,
    Problem,
)
from lineside_inspect.imageio import check_decodable
from lineside_inspect.package import sha256_file
from lineside_inspect.runtime.tiles import MAX_TILES, Tiling, tile_origins
from lineside_inspect.user_files import load_yaml, read_text
from lineside_training.budget import Budget, SchedulePlan, fitted_ema, format_duration, parse_duration
from lineside_training.config import STRIDE, TrainConfig, as_written, shown
from lineside_training.data.augment import train_transform
from lineside_training.data.dataset import DetectionDataset, collate
from lineside_training.metrics import coco_metrics
from lineside_training.models import build_model
from lineside_training.predict import predict_records
from lineside_training.threads import choose_threads
from lineside_training.weights import load_weights, read_torch_file

PATIENCE_FROM = 0.75  # under a time budget, patience may end a run only in the plan's last quarter


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,2})?", name):
        raise ConfigError(f"device {name[:40]!r}: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainData:
    dataset: Dataset
    class_names: list[str]
    train: list[ImageRecord]
    val: list[ImageRecord]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    # what 'lineside data validate' warns of in the sets (copies within a split, images
    # annotations.json does not list): said in the log with data_warnings
    set_warnings: list[str] = field(default_factory=list)


def load_data(cfg: TrainConfig) -> TrainData:
    """The training and validation records; ``extra_data`` sets are merged into train."""
    dataset = read_dataset(cfg.data)
    class_names = list(dataset.categories)
    if not class_names:
        raise ConfigError(f"{cfg.data}: no defect classes (good images only?): a detector "
                          "learns from labelled defects; for good images alone train a "
                          "good-only model (--config training/configs/good-default.yaml)")
    if not any(r.split for r in dataset.images):
        raise ConfigError(f"{cfg.data}: no split assigned; run 'lineside data split {cfg.data}'")
    train = dataset.in_split("train")
    digests: dict[str, str] = {}  # image path -> sha256: each file hashed once (_merge)
    warnings = check_set(cfg.data, dataset, digests)
    # a painted set's regions evaluation reads (validation, each epoch): said at start,
    # not after the first epoch's hours
    painted_regions(dataset)
    held: dict[str, int] = {}  # per merged set: its val/test images, which stay held out
    merged = (_merge(cfg, dataset, class_names, train, held, warnings, digests)
              if cfg.extra_data else {})
    val = dataset.in_split("val")
    if not train or not val:
        raise ConfigError(f"{cfg.data}: needs both train and val images "
                          f"(has {len(train)} train, {len(val)} val)")
    check_files(cfg.data, dataset, train + val, structure=True)
    fp = {"path": str(Path(cfg.data).resolve()),
          "annotations_sha256": sha256_file(Path(cfg.data) / "annotations.json"),
          "extra_data": list(cfg.extra_data),
          "extra_sha256": sorted(sha256_file(Path(e) / "annotations.json")
                                 for e in cfg.extra_data),
          "train_images": len(train), "val_images": len(val), "extra_held_out": held,
          "extra_duplicates": merged,
          "source": dataset.info.get("source"), "licence": dataset.info.get("licence")}
    return TrainData(dataset, class_names, train, val, fp, warnings)


def check_set(name: str | Path, dataset: Dataset,
              digests: dict[str, str] | None = None) -> list[str]:
    """Refuse a set that ``lineside data validate`` refuses, by its checks that decode no
    pixels (:func:`lineside_inspect.dataset.validate.quick_check`): train trained without a
    word on copies of one picture labelled two ways (new-user review, session 41). Returns
    what validate warns of, for the log. ``digests``: the images' sha256 by path, shared
    with :func:`_merge` (those of one size are hashed here). A detector's and a good-only
    run's data (and their ``--merge`` sets) are checked by it alike (session 42)."""
    report = quick_check(dataset, digests)
    if report.problems:
        raise DatasetError(
            f"{name}: {len(report.problems)} problem(s) that 'lineside data validate {name}' "
            "refuses too: nothing was trained; each says its remedy (copies of one picture "
            "labelled two ways: fix the wrong labels; copies on both sides of the split: "
            "'lineside data validate --dedupe' or 'lineside data split')", report.problems)
    warnings = duplicate_warnings(report.duplicates)
    if dataset.root is not None and (unlisted := unlisted_warning(dataset.root, dataset)):
        warnings.append(unlisted)
    return [f"{name}: {w}" for w in warnings]


def _merge(cfg: TrainConfig, dataset: Dataset, class_names: list[str],
           train: list[ImageRecord], held: dict[str, int], warnings: list[str],
           digests: dict[str, str]) -> dict[str, dict[str, int]]:
    """Add the ``extra_data`` sets' train (and unsplit) images to ``train``; count their
    val/test ones in ``held``; each set is checked as the main one (:func:`check_set`),
    its warnings added to ``warnings``. The set itself, or a set given twice, is refused. Images
    are also compared by content (third review): per set, how many are in train already
    (a copy: trained on twice) and how many are parts the main set's val/test judges (a
    re-split copy leaked all of its val images into train), which the log warns of.
    ``digests``: by path, those :func:`check_set` hashed (each file is hashed once: the
    images of one size were hashed twice, review of session 42)."""
    def digest(ds: Dataset, rec: ImageRecord) -> str:
        path = str(ds.image_path(rec))
        if path not in digests:
            try:
                digests[path] = sha256_file(Path(path))
            except OSError:
                return f"unreadable:{rec.file_name}"  # said by the file check after this
        return digests[path]

    # golden images are shared by design (a pulled set carries the templates of the set it
    # came from): only the parts judged count
    goldens = {r.reference for r in dataset.images if r.reference}
    judged = {digest(dataset, r) for r in dataset.images
              if r.split in ("val", "test") and r.file_name not in goldens}
    trained = {digest(dataset, r) for r in train}
    given = {Path(cfg.data).resolve(): str(cfg.data)}
    found: dict[str, dict[str, int]] = {}
    for extra in cfg.extra_data:
        try:
            where = Path(extra).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError on 3.11
            raise ConfigError(f"--merge {extra}: cannot be followed ({exc})") from None
        if (first := given.get(where)) is not None:
            raise ConfigError(f"--merge {extra}: that is {first}"
                              + (" (the dataset trained on)" if first == str(cfg.data) else
                                 ", merged already") + "; merge other sets only, each once")
        given[where] = str(extra)
        other = read_dataset(extra)
        warnings.extend(check_set(extra, other, digests))
        for name in other.categories:
            if name not in class_names:
                raise ConfigError(f"{extra}: class {name!r} is not in {cfg.data}'s classes")
        taken = [r for r in other.images if r.split in (None, "train")]
        if len(other.images) > len(taken):
            held[str(extra)] = len(other.images) - len(taken)
        its_goldens = {r.reference for r in other.images if r.reference}
        sums = [digest(other, r) for r in taken]
        parts = [d for r, d in zip(taken, sums, strict=True) if r.file_name not in its_goldens]
        leaked = sum(d in judged for d in parts)
        again = sum(d in trained for d in parts)
        if leaked or again:
            found[str(extra)] = {"in_val_or_test": leaked, "in_train": again}
        trained.update(sums)
        for rec in taken:
            rec.source = other.image_path(rec)
            rec.reference_source = other.reference_path(rec)
        train.extend(taken)
    return found


def data_warnings(data: TrainData, input_size: int | None = None, *,
                  native: bool = False) -> list[str]:
    """What in the split keeps a run from learning or judging what it should: a class with
    no box in train (a split word in a folder's name put all of one class in test), a
    val without a defective image (mAP 0 at every evaluation) (new-user review), and with
    ``input_size`` boxes the scaling to it leaves too small to see (:func:`tiny_boxes`;
    ``native``: a run with ``tiling``, which scales no image down, and whose tile, the
    input size, no train/val frame is larger than is said: :func:`tile_past_frames`)."""
    counts: dict[str, int] = dict.fromkeys(data.class_names, 0)
    for rec in data.train:
        for box in rec.boxes:
            counts[box.label] = counts.get(box.label, 0) + 1
    lines = list(data.set_warnings)
    if absent := [c for c in data.class_names if not counts[c]]:
        lines.append(f"class(es) {', '.join(map(repr, absent))} have no box in train: the "
                     "model cannot learn them ('lineside data stats' shows the split's boxes "
                     "per class; 'lineside data split' makes a new split)")
    for extra, n in data.fingerprint.get("extra_duplicates", {}).items():
        if n["in_val_or_test"]:
            lines.append(f"{n['in_val_or_test']} image(s) merged from {extra} are parts the "
                         "validation judges (the same bytes): trained on and judged, its "
                         "figures flatter the model")
        if n["in_train"]:
            lines.append(f"{n['in_train']} image(s) merged from {extra} are in train already "
                         "(the same bytes): trained on twice")
    if not any(rec.boxes for rec in data.val):
        lines.append("val holds no defective image: mAP is 0 at every evaluation, so best.pt "
                     "is the first one and thresholds cannot be calibrated; make a new split "
                     "('lineside data split')")
    if input_size is not None and not native and (
            tiny := tiny_boxes(data.train + data.val, input_size)):
        lines.append(tiny)
    if input_size is not None and native and (
            past := tile_past_frames(data.train + data.val, input_size)):
        lines.append(past)
    return lines


def tile_past_frames(records: list[ImageRecord], tile: int) -> str | None:
    """The warning for a ``tiling.tile`` at least as large as every frame's longer side: no
    frame is cut into tiles, each is letterboxed whole to the tile (the smaller ones
    upscaled), which is training without tiling at input size ``tile``, while the run,
    and its card, say native scale (issue #18: it went without a word)."""
    largest = max((max(r.width, r.height) for r in records), default=0)
    if not largest or tile < largest:
        return None
    smaller = (f", or choose a tile under {largest} px (a multiple of {STRIDE}) to judge the "
               "frames at their own scale in tiles" if largest > STRIDE else "")
    return (f"tiling.tile {tile} is at least every train/val frame's longer side (the largest "
            f"is {largest} px): no frame is cut into tiles, each is letterboxed whole to "
            f"{tile} px (smaller ones upscaled), which is not native scale; leave tiling out "
            f"(whole frames, input_size chosen from the data){smaller}")


PRACTICAL_SIZE = 2048  # above this an input size costs ~10x DeepPCB's 640 px per frame


def tiny_boxes(records: list[ImageRecord], input_size: int) -> str | None:
    """The warning for boxes whose shorter side falls under ``TINY_BOX_PX`` once their
    image is scaled as training and inference scale it (longer side to ``input_size``),
    counting only boxes at least that large in their own image:
    the auto size follows the images' median side, capped at 640, so a 4000 px frame's
    6 px scratch is 1 px to the model, which then cannot learn it, and nothing said so
    (issue #18 review). None when no box is that small."""
    # (the edge's arithmetic: ``data stats`` suggests native scale by the same count)
    tiny, boxes, needed = shrunk_boxes(records, input_size)
    if not tiny:
        return None
    line = (f"{tiny} of {boxes} train/val boxes are under {TINY_BOX_PX} px a side once "
            f"their images are scaled to the {input_size} px input (longer side to "
            f"{input_size}): the model can hardly see them")
    size = math.ceil(needed / STRIDE) * STRIDE
    # native scale keeps every box at its own size: frames larger than the input are
    # judged as input-sized tiles (one forward pass each), none shrunk
    native = (f"--set tiling.tile={input_size} trains and judges frames larger than "
              f"{input_size} px as {input_size} px tiles at their own scale (native-scale "
              "training: no downscale, a forward pass per tile)")
    if size <= PRACTICAL_SIZE:
        return line + (f"; --set input_size={size} keeps them visible if the latency allows "
                       f"(crop_size keeps training steps cheap), or {native}")
    return line + (f"; no practical input size keeps them visible: {native}, or crop the "
                   "frames to the region the defects are in, or label them larger")


def check_tiles(records: list[ImageRecord], tiling: Tiling) -> None:
    """Refuse a ``tiling`` that cuts some train/val frame into more tiles than the edge
    judges (:data:`~lineside_inspect.runtime.tiles.MAX_TILES`): its validation, and the
    line, would refuse that frame."""
    for rec in records:
        try:
            tile_origins(rec.width, rec.height, tiling)
        except ImageTooLargeError:
            raise ConfigError(
                f"tiling.tile {tiling.tile}: {rec.file_name} ({rec.width}x{rec.height}) would "
                f"be cut into more than {MAX_TILES} tiles, more than the edge judges a frame "
                "in: raise tiling.tile or lower tiling.overlap") from None


def tiles_per_image(records: list[ImageRecord], tiling: Tiling | None) -> float:
    """The forward passes ``tiling`` judges ``records`` in, per image (1 without it)."""
    if tiling is None or not records:
        return 1.0
    return sum(len(tile_origins(r.width, r.height, tiling) or [0]) for r in records) / len(records)


def check_files(name: str | Path, dataset: Dataset, records: list[ImageRecord],
                what: str = "train/val", *, structure: bool = False) -> None:
    """Refuse before training when an image (or golden image) of ``records`` (train and
    val; a good-only run's good images) is not on disk: the run stopped at the first epoch
    that drew it, leaving a last.pt that made a second try under its name refused (new-user
    review). A stat per file: seconds for thousands.

    With ``structure`` (a detector's run) each file is also read and checked as
    :func:`~lineside_inspect.imageio.decode_image` checks it before decoding
    (:func:`~lineside_inspect.imageio.check_decodable`: a JPEG, PNG or BMP header, a size
    within the pixel limit, a JPEG's scans and end-of-image marker, a PNG's chunks): an
    empty, truncated or foreign file stopped the run at the first batch that drew it, one
    file named (a DataLoader worker's traceback with ``workers``), after minutes on a large
    set (new-user review, session 43). The header's size is compared with the one recorded,
    as validate compares it (the boxes are in that size). No pixel is decoded: about 0.5 s for DeepPCB's 2,000
    images where decoding takes 18 s; pixel damage inside a well-formed file is left to
    ``lineside data validate``. A good-only run decodes its images before its run anyway
    (:func:`lineside_training.anomaly.data.load_all`)."""
    missing: list[Problem] = []
    broken: list[Problem] = []
    merged = False  # a bad file of a --merge set is in that set, not in ``name``
    seen: set[Path] = set()
    for rec in records:
        for path, subject in ((dataset.image_path(rec), rec.file_name),
                              (dataset.reference_path(rec), rec.reference)):
            if path is None or path in seen:
                continue
            seen.add(path)
            found = len(missing) + len(broken)
            if not path.is_file():
                missing.append(Problem(str(path), "", "image file is missing", subject))
            elif structure:
                try:
                    width, height, _ = check_decodable(path.read_bytes())
                except ImageError as exc:
                    broken.append(Problem(str(path), "", exc.message, subject))
                except OSError as exc:
                    broken.append(Problem(str(path), "", f"cannot be read ({exc.strerror or exc})",
                                          subject))
                else:  # boxes are in the size recorded: validate's check of it
                    wrong = (size_problem(str(path), path, rec, (width, height))
                             if subject == rec.file_name else None)
                    if wrong is not None:
                        broken.append(wrong)
            if len(missing) + len(broken) > found:
                merged |= rec.source is not None or rec.reference_source is not None
    if not missing and not broken:
        return
    said = []
    if missing:
        said.append(f"{len(missing)} image file(s) of {what} are not there, e.g. "
                    f"{missing[0].file!r}")
    if broken:
        said.append(f"{len(broken)} image file(s) of {what} cannot be decoded (empty, "
                    f"truncated or not an image) or are not the size recorded, e.g. "
                    f"{broken[0].file!r} ({broken[0].message})")
    sets = f"{name} (and the --merge set each named by its path is in)" if merged else name
    raise DatasetError(
        f"{name}: {'; '.join(said)}: nothing was trained; 'lineside data validate' on {sets} "
        "lists them: put them back or replace them, or import the set again with "
        "--skip-invalid to leave them out", missing + broken)


def ema_avg(decay: float | SchedulePlan, ramp: float = 500.0) -> Any:
    """EMA whose decay ramps up from 0 over the first updates, so the average is useful
    from the first evaluation instead of dragging the random initial weights along.
    ``decay`` may be a :class:`SchedulePlan`, read at every update (a time budget re-fits
    its decay and ramp to the run's length)."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        dec, rmp = (decay.ema_decay, decay.ema_ramp) if isinstance(decay, SchedulePlan) \
            else (decay, ramp)
        d = dec * (1 - math.exp(-float(num) / rmp))
        return averaged * d + current * (1 - d)

    return avg


def plan_schedule(cfg: TrainConfig, steps_per_epoch: int) -> SchedulePlan:
    """The schedule ``epochs`` and ``warmup_epochs`` describe, in steps."""
    return SchedulePlan(cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch),
                        cfg.ema_decay)


def _lr_lambda(plan: SchedulePlan) -> Any:
    """Linear warm-up, then cosine to 2% of the peak at ``plan.total_steps``; the plan is
    read at every step, so a re-fitted plan reshapes the rest of the curve."""

    def f(step: int) -> float:
        warm, total = plan.warmup_steps, plan.total_steps
        if step < warm:
            return 0.01 + 0.99 * step / max(warm, 1)
        progress = (step - warm) / max(total - warm, 1)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


@dataclass
class TrainState:
    """What a checkpoint saves and a resume restores, besides the loop's :class:`Progress`."""

    model: nn.Module  # the raw model (never the DDP wrapper): its state_dict has plain keys
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: Any  # an LRScheduler (LambdaLR or OneCycleLR)
    scaler: torch.amp.GradScaler  # AMP loss scaling on CUDA; disabled (empty state) elsewhere

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and exported: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class Progress:
    """Where the fit loop stands; every checkpoint carries it so a resume continues."""

    epoch: int = -1  # last finished epoch, 0-based (-1: none yet)
    best: float = -1.0  # best validation mAP@.5 so far
    stale: int = 0  # evaluations since ``best`` last improved (early stopping)
    elapsed_s: float = 0.0  # training seconds, summed over resumed runs
    step: int = 0  # optimiser steps done, summed over resumed runs
    planned_steps: int = 0  # the schedule's length (a time budget re-fits it)
    # mAP@[.5:.95] of the best evaluation: it breaks a tie in mAP@.5 (a small validation
    # set ties often; a tie that gained on the boxes' fit is a gain, for best.pt and patience)
    best_map: float = -1.0
    best_epoch: int = 0  # 1-based epoch of ``best`` (0: none), told at the end of a resumed run


@dataclass
class EpochStats:
    loss: float  # mean training loss per image on this rank
    images: int  # images this rank trained on
    seconds: float
    steps: int = 0  # optimiser steps taken (fewer than asked when a time budget stops it)


def build_train_loader(
    cfg: TrainConfig, train_ds: DetectionDataset, data: TrainData, rank: int, world: int,
) -> tuple[torch.utils.data.DataLoader[Any], torch.utils.data.DistributedSampler[Any] | None]:
    """The training loader, and its DistributedSampler under DDP (each rank a disjoint
    shard, reshuffled by ``set_epoch``); single-process runs shuffle, or weight good
    images down by ``good_weight``. Seeded by ``cfg.seed``."""
    sampler: torch.utils.data.DistributedSampler[Any] | None = None
    weighted: torch.utils.data.WeightedRandomSampler | None = None
    generator = torch.Generator().manual_seed(cfg.seed)
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(train_ds, world, rank, seed=cfg.seed)
    elif cfg.good_weight < 1:
        weights = [cfg.good_weight if r.is_good else 1.0 for r in data.train]
        weighted = torch.utils.data.WeightedRandomSampler(weights, len(weights), generator=generator)
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=sampler is None and weighted is None,
        sampler=sampler or weighted,
        collate_fn=collate, num_workers=cfg.workers, drop_last=len(train_ds) > cfg.batch_size,
        generator=generator, persistent_workers=cfg.workers > 0,
    )
    return loader, sampler


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int,
                    plan: SchedulePlan | None = None) -> Any:
    """Stepped once per training step (``steps`` per epoch); the cosine follows ``plan``
    (default: the config's epochs)."""
    if cfg.schedule == "onecycle":
        total = cfg.epochs * steps
        # each phase a step and a half at least: torch divides by the rise's length
        # (pct_start * total - 1), 0 at 2 steps of pct 0.5, or 100 steps with no warm-up,
        # a ZeroDivisionError traceback (review, session 46)
        pct = min(max(cfg.warmup_epochs / cfg.epochs, 0.01, 1.5 / total),
                  0.5 if total >= 4 else 0.75)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr,
                                                   total_steps=total, pct_start=pct)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(plan or plan_schedule(cfg, steps)))


class PlainProgress:
    """Progress for a log that is not a terminal (``nohup``, CI, a pipe): one plain line
    every ``every`` steps, where a progress bar would write a redraw per step."""

    def __init__(self, total: int, desc: str, every: int, log: Callable[[str], None]) -> None:
        self.total, self.desc, self.every, self.log = total, desc, max(every, 1), log
        self.n = 0
        self.postfix = ""

    def set_postfix(self, **values: str) -> None:
        # written as the epoch lines write them ("loss 1.234, 36.4 img/s"), not as the
        # bar's keyword names ("img_s 36.4", session 49)
        self.postfix = ", ".join(f"{v} img/s" if k == "img_s" else f"{k} {v}"
                                 for k, v in values.items())

    def update(self) -> None:
        self.n += 1
        if self.n % self.every == 0:
            tail = f": {self.postfix}" if self.postfix else ""
            self.log(f"{self.desc} step {self.n}/{self.total}{tail}".strip())

    def close(self) -> None:
        pass


def _progress(steps: int, desc: str, progress_bar: bool, log_every: int,
              log: Callable[[str], None] | None) -> Any:
    """A tqdm bar on a terminal; plain lines otherwise; nothing when not wanted."""
    if progress_bar and sys.stderr.isatty():
        return tqdm(total=steps, desc=desc, file=sys.stderr, leave=False)
    if progress_bar or log is not None:
        def write(line: str) -> None:
            if log is not None:
                log(line)
            elif progress_bar:
                print(line, file=sys.stderr, flush=True)

        return PlainProgress(steps, desc, log_every, write)
    return tqdm(total=steps, disable=True)


def train_one_epoch(
    net: nn.Module,
    state: TrainState,
    loader: Iterable[tuple[Tensor, list[dict[str, Tensor]]]],
    *,
    device: torch.device,
    steps: int,
    use_amp: bool,
    grad_clip: float,
    desc: str = "",
    progress_bar: bool = False,
    log_every: int = 50,
    log: Callable[[str], None] | None = None,
    budget: Budget | None = None,
) -> EpochStats:
    """One epoch of at most ``steps`` optimiser steps.

    ``loader`` yields ``(images, targets)``: images ``[B, 3, S, S]`` uint8 (RGB, or a
    reference model's pair image), targets ``B`` dicts of ``boxes`` ``[N, 4]`` float32
    (x1, y1, x2, y2 in input pixels), ``labels`` ``[N]`` int64 and ``index`` (the record
    index, dropped here). ``net`` (the model, or its DDP wrapper) in train mode takes
    images as float32 ``[B, 3, S, S]`` in 0..255 with the targets and returns a dict of
    scalar losses; their sum is minimised (scaled by ``state.scaler`` under AMP, gradients
    clipped to ``grad_clip`` when > 0). The scheduler and the EMA step with the optimiser.

    Progress is a bar when stderr is a terminal, else a plain line every ``log_every``
    steps through ``log``. With a ``budget`` each step is timed, the plan re-fitted when
    due, and the epoch ends early once the plan's steps are done or time is short.
    """
    net.train()
    seen, loss_sum, t_epoch = 0, 0.0, time.monotonic()
    bar = _progress(steps, desc, progress_bar, log_every, log)
    taken = 0
    t_step = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        if step >= steps or (budget is not None and (budget.steps_left() == 0 or budget.out_of_time())):
            break
        images = images.to(device, non_blocking=True).float()
        targets = [{k: v.to(device) for k, v in t.items() if k != "index"} for t in targets]
        with torch.autocast(device.type, enabled=use_amp):
            losses = net(images, targets)
            loss = sum(losses.values())
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if grad_clip > 0:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        seen += len(images)
        taken += 1
        loss_sum += float(loss.detach()) * len(images)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}",
                        img_s=f"{seen / (time.monotonic() - t_epoch):.1f}")
        bar.update()
        if budget is not None:
            now = time.perf_counter()  # the step, with loading the batch that fed it
            budget.record_step(now - t_step)
            t_step = now
            if budget.due() and (line := budget.refit()) is not None and log is not None:
                log(line)
    bar.close()
    return EpochStats(loss_sum / max(seen, 1), seen, time.monotonic() - t_epoch, taken)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    records: list[ImageRecord],
    class_names: list[str],
    *,
    size: int,
    device: torch.device,
    cache: DetectionDataset | None = None,
    reference: bool = False,
    tiling: Tiling | None = None,
) -> dict[str, Any]:
    """COCO metrics of ``model`` on ``records`` (the in-loop validation; the report with
    quality metrics and calibration is :func:`lineside_training.evaluate.evaluate`).
    ``tiling`` (a native-scale run's): frames judged as tiles, as its package will.

    ``model`` in eval mode takes float32 ``[B, 3, size, size]`` (0..255, letterboxed) and
    returns per image ``boxes`` ``[K, 4]`` (input pixels), ``scores`` ``[K]`` and
    ``labels`` ``[K]``; boxes are mapped back to original pixels before scoring. Returns
    :func:`lineside_training.metrics.coco_metrics` (``map``, ``map50``, ``per_class``).
    """
    # on a CPU the dense part runs in onnxruntime: ~1.5x quicker than torch (predict.py)
    preds = predict_records(model, dataset, records, class_names, size=size, device=device,
                            cache=cache, reference=reference, onnx=True, tiling=tiling)
    return coco_metrics(records, preds, class_names)


def save_checkpoint(
    path: Path,
    state: TrainState,
    progress: Progress,
    *,
    cfg: TrainConfig,
    class_names: list[str],
    data_fingerprint: dict[str, Any],
) -> None:
    """Write ``path`` atomically (a temporary file, then a rename): an interrupted save
    leaves the previous checkpoint whole. ``model`` holds the evaluation weights (what
    :func:`lineside_training.checkpoint.load_trained` and export read), ``raw_model``,
    ``ema``, ``optimizer``, ``scheduler`` and ``scaler`` what a resume restores."""
    write_checkpoint(path, {
        "model": state.eval_model.state_dict(), "raw_model": state.model.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "epoch": progress.epoch, "best": progress.best, "stale": progress.stale,
        "best_map": progress.best_map,
        "config": cfg.model_dump(), "class_names": class_names,
        "elapsed_s": progress.elapsed_s, "data": data_fingerprint,
        "step": progress.step, "planned_steps": progress.planned_steps,
        "best_epoch": progress.best_epoch,
    })


def write_checkpoint(path: Path, payload: dict[str, Any], *,
                     then: str = "free space, then continue with --resume") -> None:
    """``torch.save`` of ``payload`` to ``path`` through a temporary file, synced, then
    renamed over it and the folder synced (:func:`write_atomic`): a save that fails or is
    interrupted leaves the previous file whole and no partial temp file beside it. A full
    disk was a torch traceback ("enforce fail at inline_container.cc ... unexpected pos")
    that left the half-written file filling the disk (session 51): now one line naming the
    file and the system's reason."""
    buf = io.BytesIO()
    torch.save(payload, buf)  # in memory: a checkpoint is the model's weights, MBs
    try:
        # the folder synced too: a power cut after the rename kept the old name's file
        write_atomic(path, buf.getvalue())
    except Exception as exc:  # (a Ctrl-C is the caller's: write_atomic left nothing behind)
        why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else type(exc).__name__
        kept = f"the previous {path.name} is kept" if path.is_file() else "none was saved"
        raise ConfigError(f"{path}: the checkpoint could not be written ({why}); {kept}: "
                          f"{then}") from None


def epoch_line(row: dict[str, Any]) -> str:
    """An epoch's row of ``metrics.jsonl`` as one line of the log (the raw JSON, each
    epoch, was most of a run's log)."""
    planned = f"/{row['planned_steps']}" if "planned_steps" in row else ""
    evaluated = (f", mAP@.5 {row['map50']:.3f} (mAP@[.5:.95] {row['map']:.3f})"
                 if "map50" in row else "")
    if row.get("final_evaluation"):
        return (f"final evaluation of epoch {row['epoch']}'s weights (step {row['step']}"
                f"{planned}){evaluated}, {row['elapsed_min']:.1f} min")
    return (f"epoch {row['epoch']} (step {row['step']}{planned}): loss {row['loss']:.4f}, "
            f"lr {row['lr']:.2e}, {row['train_img_s']:.1f} img/s{evaluated}, "
            f"{row['elapsed_min']:.1f} min")


def gained(progress: Progress, metrics: dict[str, Any]) -> bool:
    """Whether an evaluation beats the best so far: a higher mAP@.5, or the same with a
    higher mAP@[.5:.95] (a small validation set ties on mAP@.5 while the boxes still
    improve; counting that as no gain stopped a 1-minute run at a third of its budget)."""
    return (metrics["map50"], metrics["map"]) > (progress.best, progress.best_map)


def load_checkpoint(path: Path, state: TrainState, device: torch.device) -> Progress:
    """Restore ``state`` from a checkpoint written by :func:`save_checkpoint`; returns its
    progress. A scaler saved disabled (a CPU run), or by a release that did not save it,
    leaves ``state.scaler`` fresh; a disabled scaler ignores any saved state."""
    ck = read_torch_file(path, device)  # tensors and plain values only: no code runs
    state.model.load_state_dict(ck["raw_model"])
    if state.ema is not None and ck.get("ema") is not None:
        state.ema.load_state_dict(ck["ema"])
    state.optimizer.load_state_dict(ck["optimizer"])
    state.scheduler.load_state_dict(ck["scheduler"])
    if ck.get("scaler"):
        state.scaler.load_state_dict(ck["scaler"])
    return Progress(ck["epoch"], ck["best"], ck["stale"], ck.get("elapsed_s", 0.0),
                    # a checkpoint from before the tie-break: ties stay no gain, as they were
                    ck.get("step", 0), ck.get("planned_steps", 0), ck.get("best_map", math.inf),
                    ck.get("best_epoch", 0))


def _check_resumable(run: Path, fingerprint: dict[str, Any], *, budget_s: float | None,
                     epochs: int, tiling: Tiling | None = None,
                     cfg: TrainConfig | None = None,
                     notes: list[str] | None = None) -> dict[str, Any]:
    """Refuse to continue ``run`` on other data than it trained on: ``--resume`` given to
    a run of a taken name (say, with ``--merge`` of reviews) would carry on the old run.
    A set is the same by its resolved path or by its annotations' content (the run folder
    moved to another machine), the merged sets in any order. Refuse a run whose schedule
    is done, too: it took no step and logged an empty epoch (new-user review), and with
    ``cfg`` a field that cannot change midway (:data:`FIXED_ON_RESUME`) changed, and a time
    budget (``budget_s``, the whole run's; None: trained by epochs) its earlier sessions
    already spent. Returns
    the config the run's checkpoint trained with (empty before checkpoints kept it)."""
    try:  # tensors and plain values only: a run folder from elsewhere cannot run code
        ck = read_torch_file(run / "last.pt", mmap=True)
    except ConfigError as exc:
        raise ConfigError(f"--resume: {exc}") from None
    if not isinstance(ck, dict):
        raise ConfigError(f"--resume: {run / 'last.pt'}: not a Lineside checkpoint")
    _check_same_data(run, ck.get("data", {}), fingerprint)
    if notes is not None and (changed := data_changes(ck.get("data", {}), fingerprint)):
        notes.append(changed)
    config = ck.get("config")
    saved: dict[str, Any] = config if isinstance(config, dict) else {}
    _check_same_tiling(run, saved, tiling)
    if cfg is not None:
        _check_same_setup(run, saved, cfg)
    planned, step = int(ck.get("planned_steps") or 0), int(ck.get("step") or 0)
    best = _weights_of(run)
    if budget_s is not None and planned and step >= planned:
        raise ConfigError(
            f"--resume: {run} took all {planned} steps of its schedule (fitted to its time "
            "budget, ending at a learning rate near 0): nothing is left to continue. To "
            f"train on, start a new run from its weights: --weights {best} --name NEW")
    spent = float(ck.get("elapsed_s") or 0.0)
    if budget_s is not None and spent >= budget_s:
        # it took no step and evaluated the same weights again, saying "0s left" at most
        raise ConfigError(
            f"--resume: {run} already spent {format_duration(spent)} of its time budget, "
            f"{format_duration(budget_s)} (--time counts the whole run, its earlier sessions "
            f"too): nothing is left for this one. For N minutes more give --time "
            f"{format_duration(spent)} + N, e.g. --time {math.ceil(spent / 60) + 10}m")
    if budget_s is None and int(ck.get("epoch", -1)) + 1 >= epochs:  # -1: no epoch finished
        # a onecycle schedule cannot be made longer (_check_same_setup): not "give
        # --epochs MORE", which it then refused (review, session 46)
        more = "" if saved.get("schedule") == "onecycle" else "give --epochs MORE to continue it, or "
        raise ConfigError(
            f"--resume: {run} already trained its {int(ck.get('epoch', -1)) + 1} epoch(s) "
            f"and this schedule has {epochs}: {more}start a new run from its weights: "
            f"--weights {best} --name NEW")
    return saved


def _weights_of(run: Path) -> Path:
    """The weights a new run from ``run`` starts from (``--weights``): its best, else last."""
    return run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"


# what a resume does not take from the run, nor compares with it: where the run is, its
# data (checked by content, _check_same_data; a path may be written another way), and the
# machine's (a run started with --device cuda went on asking for CUDA on a CPU box)
NOT_RESUMED = ("name", "out_dir", "data", "extra_data", "device", "threads", "workers")

# what a resumed run cannot change midway, and why: its checkpoint's layers and optimiser
# state, and the scale its validation (and so its thresholds) judges at; tiling has its
# own check (_check_same_tiling), data its own (_check_same_data). The rest (epochs, time
# budget, lr, batch size, augmentation, patience, workers...) may change, and train.log
# says which did (issue #18)
FIXED_ON_RESUME = {
    "model": "the checkpoint's layers are that model's",
    "model_kwargs": "the checkpoint's layer shapes follow them",
    "input_size": "the scale its model learned and its validation judges by",
    "reference": "its input channels (frame, golden image and their difference, or one frame)",
    "optimizer": "its optimiser state is that optimiser's",
    "schedule": "its learning-rate schedule's state is that schedule's",
    "weights": "a resume goes on from its last.pt, not from weights",
}
# a onecycle schedule fixes its length and peak when it starts: a longer one stopped on
# torch's "Tried to step N times" past the old length
ONECYCLE_FIXED = ("epochs", "lr", "warmup_epochs", "batch_size", "max_steps_per_epoch")


def _check_same_setup(run: Path, saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse a resume that gives again, with another value, a field the run cannot change
    midway, naming it and both values; fields the run's checkpoint does not hold (an older
    release's) are not compared."""
    now = cfg.model_dump()
    fixed = dict(FIXED_ON_RESUME)
    if saved.get("schedule") == "onecycle":
        fixed.update(dict.fromkeys(ONECYCLE_FIXED, "a onecycle schedule's length and peak, "
                                   "fixed when it started"))
    edited = _run_yaml(run)
    for key, why in fixed.items():
        if key in saved and saved[key] != now[key]:
            best = _weights_of(run)
            if key in edited and edited[key] == now[key]:
                # changed by hand there, never given: "leave KEY out" named nothing the
                # user could leave out (review, session 47)
                raise ConfigError(
                    f"--resume: {run / 'config.yaml'} changed {key} from {shown(saved[key])} "
                    f"(what {run / 'last.pt'} trained with) to {shown(now[key])}: {why}, "
                    f"which cannot change midway; a resumed run keeps what it was trained "
                    f"with: restore {key}: {shown(saved[key])} there to continue it, or start "
                    f"a new run from its weights: --weights {best} --name NEW")
            raise ConfigError(
                f"--resume: {run} trained with {key} {shown(saved[key])}, and this run has "
                f"{shown(now[key])}: {why}, which cannot change midway; leave {key} out to "
                f"continue it as it trained, or start a new run from its weights: "
                f"--weights {best} --name NEW")


def _run_yaml(run: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as written there (empty when it cannot be read: the
    resume read it already, and refused it by name)."""
    try:
        doc = load_yaml(read_text(run / "config.yaml", "run's config"))
    except (LinesideError, OSError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def resume_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The fields of ``cfg`` that differ from the run's checkpoint's (``saved``), a
    section's by key: ``lr 0.001 (the run's 0.005)``. Not where the run and its data are
    (a path may be written another way; the data is checked by content)."""
    now, said = cfg.model_dump(), []
    for key, value in now.items():
        # (NOT_RESUMED: every resume without --device logged "device auto (the run's cpu)")
        if key in NOT_RESUMED or key not in saved:
            continue
        was = saved[key]
        if isinstance(value, dict) and isinstance(was, dict) and key != "model_kwargs":
            said += [f"{key}.{k} {shown(v)} (the run's {shown(was.get(k))})"
                     for k, v in value.items() if k in was and was[k] != v]
        elif value != was:
            said.append(f"{key} {shown(value)} (the run's {shown(was)})")
    return said


def take_changes(state: TrainState, cfg: TrainConfig) -> None:
    """A resume's learning rate and weight decay, over the run's: a checkpoint's optimiser
    and scheduler state restore the run's own, so ``--set lr=`` on resume was ignored. The
    cosine schedule's factor at the step reached is kept (onecycle refuses an lr change)."""
    groups = state.optimizer.param_groups
    for group in groups:
        group["weight_decay"] = cfg.weight_decay
    scheduler = state.scheduler
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    scheduler.base_lrs = [cfg.lr] * len(groups)
    for group, factor in zip(groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * factor(scheduler.last_epoch)


def _check_same_tiling(run: Path, saved: Any, tiling: Tiling | None) -> None:
    """Refuse to continue a run at another scale than it trained at: resumed without its
    ``tiling`` (or with one it lacked), a native-scale run went on with whole images
    letterboxed to another input size, and its config.yaml, validation, thresholds and
    card followed without a word (review, session 45)."""
    was = saved.get("tiling") if isinstance(saved, dict) else None  # (none before tiling)
    now = None if tiling is None else tiling.model_dump()
    if was == now:
        return
    best = _weights_of(run)
    try:
        had_tiling = None if was is None else Tiling.model_validate(was)
    except ValidationError:  # a checkpoint written by hand: not formatted as one (a traceback)
        raise ConfigError(f"--resume: {run / 'last.pt'}: its saved tiling is not one "
                          f"({str(was)[:100]})") from None
    had = "with no tiling (whole frames)" if had_tiling is None else \
        f"at native scale with tiling {had_tiling}"
    has = "none" if tiling is None else f"tiling {tiling}"
    again = "--set tiling=null" if had_tiling is None else \
        f"--set tiling.tile={had_tiling.tile} --set tiling.overlap={had_tiling.overlap:g}"
    raise ConfigError(f"--resume: {run} trained {had}, and this run has {has}: the scale its "
                      f"model learned and its validation judges by would change midway; "
                      f"continue it as it trained ({again}), or start a new run from its "
                      f"weights: --weights {best} --name NEW")


def _check_same_data(run: Path, saved: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    if not saved.get("path"):  # a checkpoint from before the fingerprint was kept
        return
    same_set = saved["path"] == fingerprint["path"] or \
        saved.get("annotations_sha256") == fingerprint["annotations_sha256"]
    if "extra_sha256" in saved:
        same_merged = sorted(saved["extra_sha256"]) == fingerprint["extra_sha256"]
    else:  # as given then: resolved against this folder
        same_merged = ({str(Path(p).resolve()) for p in saved.get("extra_data", [])}
                       == {str(Path(p).resolve()) for p in fingerprint["extra_data"]})
    if not (same_set and same_merged):
        was = " + ".join([saved["path"], *saved.get("extra_data", [])])
        now = " + ".join([fingerprint["path"], *fingerprint["extra_data"]])
        raise ConfigError(f"--resume: {run} trained on {was}, this run names {now}: give "
                          "--name NAME for a new run")


def data_changes(saved: Any, fingerprint: dict[str, Any]) -> str | None:
    """What changed in a resumed run's set since its checkpoint, when it is the same set
    (its path) with other labels: images removed or added on disk were trained on without
    a word, and best.pt's mAP, measured on the old val split, went on being the one to
    beat (session 51). None when its labels are as they were (or a checkpoint kept none)."""
    if not isinstance(saved, dict) or not saved.get("annotations_sha256") \
            or saved["annotations_sha256"] == fingerprint["annotations_sha256"]:
        return None

    def count(fp: Any, key: str) -> str:
        return str(fp.get(key, "?")) if isinstance(fp, dict) else "?"

    return (f"the dataset {fingerprint['path']} changed since the run's last.pt "
            f"(its annotations.json is another): {count(saved, 'train_images')} train and "
            f"{count(saved, 'val_images')} val images then, {fingerprint['train_images']} "
            f"and {fingerprint['val_images']} now; the run goes on with the set as it is, "
            f"and the best mAP@.5 to beat was measured on the old val split")


def _agree(value: int, world: int) -> int:
    """Rank 0's ``value`` on every rank (a time budget is planned on rank 0's clock, and
    every rank must take the same number of steps)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(t, 0)
    return int(t.item())


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """See :func:`_train`; the run folder is held (:func:`hold_run`) while it trains."""
    with contextlib.ExitStack() as held:
        return _train(cfg, resume=resume, quiet=quiet, held=held)


LOCK = "train.lock"


@contextlib.contextmanager
def hold_run(run: Path) -> Iterator[str | None]:
    """Hold ``run`` for this process (an advisory lock on ``run/train.lock``, freed when the
    process ends however it ends): a second ``lineside train`` of the same run (a --resume
    typed in another terminal, a job started twice) trained beside the first, both saving
    last.pt and appending to one metrics.jsonl (session 51). Yields a warning to log when
    the run's file system has no locks (some network mounts): the run trains unheld, as
    it did before, rather than not at all (a bare "No locks available", session 51)."""
    try:
        # not through a link: a train.lock linked to another file (a run folder copied in)
        # had that file emptied and a process id written over it
        fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise ConfigError(f"{run / LOCK}: cannot be opened ({exc.strerror or exc}): it must "
                          "be a plain file of the run (remove it)") from None
    with os.fdopen(fd, "r+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read(32).strip()
            by = f" (process {pid})" if pid.isdigit() else ""
            raise ConfigError(f"{run}: another lineside train is training this run now{by}: "
                              "wait for it to end (or stop it), or give --name NAME for a "
                              "new run") from None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: a file system without locks
            yield (f"{run}: its file system does not lock files ({exc.strerror or exc}): "
                   "nothing stops a second lineside train of this run beside this one")
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield None


def _train(cfg: TrainConfig, *, resume: bool, quiet: bool,
           held: contextlib.ExitStack) -> Path:
    """Train per ``cfg``; returns the run folder (``config.yaml``, ``last.pt``, ``best.pt``,
    ``metrics.jsonl``, ``train.log``). Safe to interrupt: ``last.pt`` is written first.

    Each epoch is :func:`train_one_epoch`, then every ``eval_every`` epochs (and the last)
    :func:`evaluate` on rank 0, which keeps ``best.pt`` at the best mAP@.5 (ties broken by mAP@[.5:.95]), then
    :func:`save_checkpoint` of ``last.pt``. Stops after ``epochs``, ``time_limit_minutes``
    or ``patience`` evaluations without gain.

    With ``time_budget`` the epochs are not counted: the schedule (warm-up, cosine, EMA)
    is planned in steps and re-fitted from measured throughput so that the last step and
    the final evaluation end at the budget (:class:`lineside_training.budget.Budget`);
    ``train.log`` says each re-fit and how the run ended."""
    rank, world = _distributed()
    device = pick_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    seed_everything(cfg.seed)
    run = Path(cfg.out_dir) / cfg.name
    data = load_data(cfg)
    if cfg.tiling is not None:  # before any work: a frame the edge refuses stops no run midway
        check_tiles(data.train + data.val, cfg.tiling)
    budget_s = parse_duration(cfg.time_budget) if cfg.time_budget else None
    if budget_s is not None and cfg.schedule != "cosine":
        raise ConfigError("time_budget fits a cosine schedule; set schedule: cosine (onecycle "
                          "cannot change its length once started)")
    kept = [f for f in ("last.pt", "best.pt") if (run / f).is_file()]
    if kept and not resume:  # a new run would replace them, and leave the old thresholds
        raise ConfigError(f"{run}: a run of this name is already there ({', '.join(kept)}): "
                          "give --name NAME for a new run (--resume continues that one, "
                          "on the data it trained on)")
    if resume and not (run / "last.pt").is_file():  # a mistyped --name began a new run
        raise ConfigError(f"--resume: there is no run to continue at {run} (no last.pt): "
                          "check --name (and out_dir), or leave --resume out for a new run")
    changes: list[str] = []
    if resume:
        was = _check_resumable(run, data.fingerprint, budget_s=budget_s, epochs=cfg.epochs,
                               tiling=cfg.tiling, cfg=cfg, notes=changes)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        if unheld := held.enter_context(hold_run(run)):
            changes.append(unheld)
        # whole or not at all: under torchrun every rank's --resume reads it while rank 0
        # writes it, and a truncated file is refused as no config (final read, 46)
        write_atomic(run / "config.yaml",
                     yaml.safe_dump(as_written(cfg.model_dump()), sort_keys=False).encode())

    def log(line: str) -> None:  # rank 0: train.log always, stderr unless quiet
        if rank != 0:
            return
        stamp = time.strftime("%H:%M:%S")
        with open(run / "train.log", "a") as fh:
            fh.write(f"{stamp} {line}\n")
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    if resume and (changed := resume_changes(was, cfg)):
        log(f"resumed with {len(changed)} field(s) other than the run trained with: "
            f"{'; '.join(changed)}")
    threads, why = choose_threads(cfg.threads)
    log(f"torch threads: {threads} ({why})")
    if cfg.tiling is None:
        log(f"input size {cfg.input_size} px, training on "
            f"{f'{cfg.crop_size} px crops' if cfg.crop_size else 'whole images'}; "
            f"{len(data.train)} train and {len(data.val)} val images")
    else:
        log(f"native scale: input size {cfg.input_size} px = tiling.tile, training on "
            f"{cfg.crop_size or cfg.tiling.tile} px crops of images larger than the tile at "
            f"their own scale (smaller ones letterboxed whole); validation judges val frames "
            f"as {cfg.tiling.tile} px tiles overlapping by {cfg.tiling.overlap:g}, as the "
            f"exported card's recipe will; {len(data.train)} train and {len(data.val)} val "
            "images")
    for warning in changes + data_warnings(data, cfg.input_size,
                                           native=cfg.tiling is not None):
        log(f"warning: {warning}")
    for extra, n in data.fingerprint.get("extra_held_out", {}).items():
        log(f"merged {extra}: its train (and unsplit) images only; its {n} val/test image(s) "
            "are not trained on")
    model = build_model(cfg.model, num_classes=len(data.class_names), **cfg.model_kwargs)
    if cfg.weights and not resume:  # a resume's last.pt replaces every weight
        report = load_weights(model, cfg.weights)
        if rank == 0 and not quiet:
            print(report, file=sys.stderr)
    model.to(device)

    train_ds = DetectionDataset(
        data.dataset, data.train, data.class_names, size=cfg.input_size,
        transform=train_transform(cfg.augment, cfg.crop_size, cfg.input_size, seed=cfg.seed + rank,
                                  reference=cfg.reference, native=cfg.tiling is not None),
        reference=cfg.reference,
    )
    val_ds = DetectionDataset(data.dataset, data.val, data.class_names, size=cfg.input_size,
                              reference=cfg.reference)
    loader, sampler = build_train_loader(cfg, train_ds, data, rank, world)
    steps = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    plan = plan_schedule(cfg, steps)
    ema = AveragedModel(model, avg_fn=ema_avg(plan), use_buffers=True) if cfg.ema_decay > 0 else None
    optimizer = build_optimizer(cfg, model)
    use_amp = cfg.amp and device.type == "cuda"
    state = TrainState(model, ema, optimizer, build_scheduler(cfg, optimizer, steps, plan),
                       torch.amp.GradScaler("cuda", enabled=use_amp))
    # static_graph: the same parameters (e.g. an unused top pyramid output) go without
    # gradient every step, which DDP accepts when told the graph is static
    net: nn.Module = DistributedDataParallel(model, static_graph=True) if world > 1 else model

    progress = Progress()
    if resume and (run / "last.pt").is_file():
        progress = load_checkpoint(run / "last.pt", state, device)
    start_epoch, elapsed0, t0 = progress.epoch + 1, progress.elapsed_s, time.monotonic()
    budget: Budget | None = None
    if budget_s is not None:
        if progress.planned_steps:  # a resumed budget run continues its plan
            plan.total_steps = progress.planned_steps
        plan.warmup_steps = min(plan.warmup_steps, plan.total_steps // 5)
        plan.ema_decay, plan.ema_ramp = fitted_ema(cfg.ema_decay, plan.total_steps)
        budget = Budget(budget_s, steps, cfg.eval_every, plan, warmup_wanted=int(cfg.warmup_epochs * steps),
                        base_decay=cfg.ema_decay, eval_images=len(data.val),
                        eval_pixel_ratio=(cfg.input_size / (cfg.crop_size or cfg.input_size)) ** 2
                        * tiles_per_image(data.val, cfg.tiling),
                        batch_size=cfg.batch_size, eval_share=cfg.eval_share,
                        spent_before=elapsed0, step=progress.step, evaluated_epoch=start_epoch)
        if resume:
            # the budget is the whole run's: a resume with --time 30m again ran on the time
            # its earlier sessions left, without a word, where a user expected 30 more
            # minutes (session 53)
            log(f"time budget {format_duration(budget_s)} for the whole run, resumed at step "
                f"{progress.step} of {plan.total_steps} planned: its earlier sessions spent "
                f"{format_duration(elapsed0)}, {format_duration(budget_s - elapsed0)} is left for "
                f"this one (--time counts the whole run: for N minutes more give "
                f"{format_duration(elapsed0)} + N); the plan is re-fitted to it from measured "
                "throughput")
        else:
            log(f"time budget {format_duration(budget_s)}: the schedule (warm-up, cosine, EMA) is "
                f"fitted to it from measured throughput; first plan {plan.total_steps} steps "
                f"({steps} a full epoch), re-fitted as the run goes")

    if resume:  # its lr and weight decay, not the checkpoint's (after the plan is fitted)
        take_changes(state, cfg)

    def save(epoch: int, path: Path, *, elapsed: float | None = None) -> None:
        if rank == 0:  # rank 0 writes, as torchvision's save_on_master
            progress.epoch = epoch
            progress.elapsed_s = elapsed0 + time.monotonic() - t0 if elapsed is None else elapsed
            progress.planned_steps = plan.total_steps
            save_checkpoint(path, state, progress, cfg=cfg, class_names=data.class_names,
                            data_fingerprint=data.fingerprint)

    epoch, ended = start_epoch, ""
    saved_epoch, saved_step = progress.epoch, progress.step  # what last.pt holds
    evaluated_at = -1  # the step the weights were last evaluated at
    try:
        while budget is not None or epoch < cfg.epochs:
            if sampler is not None:
                sampler.set_epoch(epoch)
            epoch_steps = steps if budget is None else min(steps, budget.steps_left())
            if budget is not None:
                budget.epoch, budget.epoch_start = epoch, progress.step
            desc = f"epoch {epoch + 1}" + ("" if budget is not None else f"/{cfg.epochs}")
            stats = train_one_epoch(net, state, loader, device=device, steps=epoch_steps, use_amp=use_amp,
                                    grad_clip=cfg.grad_clip, desc=desc,
                                    progress_bar=not quiet and rank == 0, log_every=cfg.log_every,
                                    log=log if rank == 0 else None,
                                    budget=budget if world == 1 else None)
            progress.step += stats.steps
            if budget is not None and world == 1 and stats.steps == 0 \
                    and evaluated_at == progress.step:
                # the time ran out between the last evaluation and this epoch's first step:
                # nothing changed since, so nothing to evaluate, plan or save again
                break
            if budget is not None:
                if world > 1:  # every rank took the same steps; time them on rank 0's clock
                    budget.record_steps(stats.steps, stats.seconds)
                    budget.step = progress.step
                if (line := budget.refit()) is not None:
                    log(line)
                if world > 1:  # rank 0's plan on every rank: the same learning rate and EMA
                    plan.total_steps = _agree(plan.total_steps, world)
                    plan.warmup_steps = _agree(plan.warmup_steps, world)
                    plan.ema_decay, plan.ema_ramp = fitted_ema(cfg.ema_decay, plan.total_steps)
            row: dict[str, Any] = {
                "epoch": epoch + 1, "loss": stats.loss, "lr": state.scheduler.get_last_lr()[0],
                "train_img_s": stats.images * world / max(stats.seconds, 1e-9), "step": progress.step,
            }
            if budget is not None and stats.steps == 0:
                # the time ran out before this epoch's first step: what follows is the final
                # evaluation of the last epoch's weights, not an epoch (it was logged as one,
                # "loss 0.0000, 0.0 img/s"; new-user review)
                epoch -= 1
                row = {"epoch": epoch + 1, "step": progress.step, "final_evaluation": True}
            if budget is not None:
                row["planned_steps"] = plan.total_steps
                done = budget.steps_left() == 0 or budget.out_of_time()
                last = bool(_agree(int(done), world))
            else:  # rank 0's clock for every rank: one rank stopping alone would hang the rest
                last = epoch + 1 == cfg.epochs or bool(_agree(int(
                    cfg.time_limit_minutes is not None
                    and elapsed0 + time.monotonic() - t0 > cfg.time_limit_minutes * 60), world))
            due = (epoch + 1) % cfg.eval_every == 0 if budget is None else \
                budget.evaluate_now(epoch + 1)
            if rank == 0 and (due or last):
                t_eval = time.perf_counter()
                m = evaluate(state.eval_model, data.dataset, data.val, data.class_names,
                             size=cfg.input_size, device=device, cache=val_ds,
                             tiling=cfg.tiling)
                row.update(map=m["map"], map50=m["map50"])
                evaluated_at = progress.step
                if gained(progress, m):
                    progress.best, progress.best_map = m["map50"], m["map"]
                    progress.stale, progress.best_epoch = 0, epoch + 1
                    save(epoch, run / "best.pt")
                else:
                    progress.stale += 1
                if budget is not None:
                    budget.record_eval(time.perf_counter() - t_eval, epoch + 1)
            if budget is not None and not last:
                # an evaluation that used up the time is the final one: the next epoch would
                # take no step and evaluate the same weights again (a loaded machine's run
                # spent 4 more minutes so)
                last = bool(_agree(int(budget.out_of_time()), world))
            row["elapsed_min"] = (elapsed0 + time.monotonic() - t0) / 60
            if rank == 0:
                with open(run / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                log(epoch_line(row))  # the row itself is in metrics.jsonl
            save(epoch, run / "last.pt")
            saved_epoch, saved_step = epoch, progress.step
            epoch += 1
            if last:  # the schedule or the time is done: said so, even with stale evaluations
                break
            # under a time budget the schedule is fitted to the whole budget: stopping on
            # patience before its last quarter would end with the learning rate still high
            # and the EMA not settled (a 1-minute run stopped at step 78 of 136 so). Only
            # rank 0 evaluates, so its count of stale evaluations is every rank's
            if _agree(progress.stale, world) >= cfg.patience and (
                    budget is None or progress.step >= PATIENCE_FROM * plan.total_steps):
                ended = f"stopped early: {progress.stale} evaluations without gain (patience)"
                break
    except KeyboardInterrupt:
        # the last.pt of the last finished epoch is whole, and is what --resume continues:
        # it was saved over with the weights, optimiser and schedule of the epoch under
        # way labelled as that epoch, so a resume ran the epoch's first steps again on a
        # schedule those steps had moved on (a onecycle run then stepped past its end) and
        # its time budget counted time for steps it never counted (session 51)
        if rank == 0 and (run / "last.pt").is_file():
            said = (f"{run / 'last.pt'} keeps epoch {saved_epoch + 1} (step {saved_step}), "
                    "which --resume continues from" if saved_epoch >= 0 else
                    f"{run / 'last.pt'} finished no epoch; --resume begins the first again")
        else:
            # a new run in its first epoch: kept as one that finished none (-1, so a resume
            # begins the first again; it read as done and could not be resumed, second
            # review), on a schedule begun again, as the resume counts its steps from 0
            state.scheduler = build_scheduler(cfg, state.optimizer, steps, plan)
            progress.step = 0
            # and none of its time: a time budget's resume counted the seconds of steps it
            # takes again as spent at step 0, and planned fewer (session 51, adversarial)
            save(-1, run / "last.pt", elapsed=elapsed0)
            said = (f"{run / 'last.pt'} finished no epoch; --resume begins the first again")
        if rank == 0:
            with open(run / "train.log", "a") as fh:
                fh.write(f"{time.strftime('%H:%M:%S')} interrupted in epoch {epoch + 1}: "
                         f"{said}\n")
        raise KeyboardInterrupt(said) from None
    finally:
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if budget is not None:
        how = ended or (f"stopped itself at step {progress.step} of {plan.total_steps} planned"
                        if budget.steps_left() == 0 else
                        f"stopped itself at step {progress.step} of {plan.total_steps} planned: "
                        "no time left for another step and the final evaluation")
        log(f"time budget {format_duration(budget.seconds)}: {how}, after "
            f"{format_duration(budget.elapsed())} ({epoch - start_epoch} epochs this session, "
            f"{budget.refits} re-fits); best mAP@.5 {progress.best:.4f} at epoch {progress.best_epoch} "
            f"in {run / 'best.pt'}")
    return run
