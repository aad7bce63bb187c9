"""``lineside calibrate CONFIG --folds K``: thresholds from out-of-fold predictions.

A model's scores on the images it trained on are overconfident, and a split of one or two
boards is too small to choose six thresholds on. So the labelled images are cut into ``K``
folds by group (a board, a batch: the dataset's ``group``; an image without one is its own
group), ``K`` fold models are trained with the recipe's own config (each on the other
folds, to an equal share of the time budget), each predicts the fold it never saw, and
the pooled out-of-fold predictions are calibrated once
(:func:`lineside_training.calibration.calibrate_f`).

The held-out fold decides nothing during its fold's training: no early stopping
(``patience`` off), no evaluation but the engine's last one (on ``ENGINE_VAL`` of its
images), and the predictions come from ``last.pt``, not the best-on-held-out ``best.pt``.
A fold whose ``oof.npz`` exists is not trained again, so an interrupted calibration
resumes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineside_inspect.atomic import link_or_copy
from lineside_inspect.dataset import Dataset, ImageRecord, read_dataset, save_annotations
from lineside_inspect.dataset.model import inside_images
from lineside_inspect.errors import ConfigError
from lineside_training.budget import format_duration, parse_duration
from lineside_training.calibration import best_global, calibrate_f
from lineside_training.checkpoint import load_trained
from lineside_training.config import TrainConfig
from lineside_training.engine import train
from lineside_training.pairscore import pair_metrics
from lineside_training.predict import Prediction, predict_records

CALIBRATION = "calibration.json"
OOF = "oof.npz"
NEVER = 10**9  # patience / eval_every that never trigger: the held-out fold decides nothing
# held-out images the engine's one obligatory evaluation sees (its result decides nothing;
# a whole fold would double the prediction time)
ENGINE_VAL = 8


def group_folds(records: list[ImageRecord], k: int) -> list[list[str]]:
    """``k`` folds of group names, balanced by image count: the largest group first, each
    to the fold with the fewest images so far (ties: the lower fold, then the group name)."""
    sizes: dict[str, int] = {}
    for r in records:
        g = group_of(r)
        sizes[g] = sizes.get(g, 0) + 1
    if k < 2:
        raise ConfigError(f"--folds {k}: out-of-fold calibration needs at least 2 folds")
    if len(sizes) < k:
        raise ConfigError(f"--folds {k}: the dataset has only {len(sizes)} group(s) "
                          "(boards, batches); use at most that many folds")
    folds: list[list[str]] = [[] for _ in range(k)]
    load = [0] * k
    for g in sorted(sizes, key=lambda g: (-sizes[g], g)):
        f = min(range(k), key=lambda i: (load[i], i))
        folds[f].append(g)
        load[f] += sizes[g]
    return folds


def group_of(record: ImageRecord) -> str:
    return record.group if record.group is not None else f"image:{record.file_name}"


def fold_dataset(dataset: Dataset, held_out: list[str], dst: Path) -> Dataset:
    """A copy of ``dataset`` at ``dst`` whose held-out groups are ``test`` (the first
    ``ENGINE_VAL`` of them ``val``) and the rest ``train``; the image files are hard links
    (copies across file systems)."""
    assert dataset.root is not None
    images = dst / "images"
    for rec in dataset.images:
        src, target = dataset.image_path(rec), inside_images(images, rec.file_name)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(src, target)
    held = set(held_out)
    records = [replace(r, split="test" if group_of(r) in held else "train") for r in dataset.images]
    for r in [r for r in records if r.split == "test"][:ENGINE_VAL]:
        r.split = "val"  # the engine evaluates a val split once at the end: keep it small
    fold = Dataset(list(dataset.categories), records, dst, dict(dataset.info))
    save_annotations(fold)
    return read_dataset(dst)


def save_predictions(path: Path, files: list[str], preds: list[Prediction]) -> None:
    np.savez(path, files=np.array(files), counts=np.array([len(p.scores) for p in preds]),
             boxes=np.concatenate([p.boxes for p in preds] or [np.zeros((0, 4))]).astype(np.float32),
             scores=np.concatenate([p.scores for p in preds] or [np.zeros(0)]).astype(np.float32),
             labels=np.concatenate([p.labels for p in preds] or [np.zeros(0)]).astype(np.int64))


def load_predictions(path: Path) -> dict[str, Prediction]:
    z = np.load(path)
    ends = np.cumsum(z["counts"])
    starts = ends - z["counts"]
    return {str(f): Prediction(z["boxes"][s:e], z["scores"][s:e], z["labels"][s:e])
            for f, s, e in zip(z["files"], starts, ends, strict=True)}


def fold_config(cfg: TrainConfig, k: int, data: Path, out: Path, budget_s: float | None) -> TrainConfig:
    """The recipe for fold ``k``: its own data and run folder, its share of the budget, and
    nothing that lets the held-out fold steer training."""
    update: dict[str, Any] = {"name": f"fold{k}", "data": str(data), "out_dir": str(out),
                              "patience": NEVER, "eval_every": NEVER}
    if budget_s is not None:
        update.update(time_budget=f"{budget_s:g}s", time_limit_minutes=None)
    return cfg.model_copy(update=update)


def oof_calibrate(
    cfg: TrainConfig,
    *,
    folds: int,
    out: str | Path,
    time_budget: str | None = None,
    target_escape: float = 0.005,
    run: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train ``folds`` fold models, pool their out-of-fold predictions and calibrate once;
    writes ``out/calibration.json`` (and ``thresholds.json`` into ``run`` if given, for
    ``lineside export``). ``time_budget`` (``30m``, ``1h``) is shared equally by the folds'
    training; predicting each held-out fold comes on top (about as long as one evaluation)."""
    out = Path(out)
    dataset = read_dataset(cfg.data)
    records = [r for r in dataset.images if r.split in (None, "train", "val", "test")]
    plan = group_folds(records, folds)
    budget_s = parse_duration(time_budget) / folds if time_budget else None
    target_run = None if run is None else load_trained(run, "cpu")
    if target_run is not None and target_run.class_names != list(dataset.categories):
        raise ConfigError(f"{run}: its classes {target_run.class_names} differ from "
                          f"{cfg.data}'s {list(dataset.categories)}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pooled: dict[str, Prediction] = {}
    fold_rows = []
    for k, groups in enumerate(plan):
        fold_dir = out / f"fold{k}"
        held = [r for r in records if group_of(r) in set(groups)]
        cached = fold_dir / OOF
        t_fold = time.time()
        if cached.is_file():
            preds = load_predictions(cached)
        else:
            data = fold_dataset(dataset, groups, fold_dir / "data")
            for stale in ("last.pt", "best.pt"):  # a fold cut short trains again from scratch
                (fold_dir / stale).unlink(missing_ok=True)
            run_dir = train(fold_config(cfg, k, fold_dir / "data", out, budget_s), quiet=quiet)
            trained = load_trained(run_dir / "last.pt", "cpu")
            held_records = [r for r in data.images if r.split in ("val", "test")]
            fold_preds = predict_records(trained.model, data, held_records,
                                         trained.class_names, size=cfg.input_size,
                                         device=torch.device("cpu"), reference=cfg.reference,
                                         tiling=cfg.tiling)
            files = [r.file_name for r in held_records]
            save_predictions(cached, files, fold_preds)
            shutil.rmtree(fold_dir / "data")  # the links; the fold's run folder stays
            preds = dict(zip(files, fold_preds, strict=True))
        missing = [r.file_name for r in held if r.file_name not in preds]
        if missing:
            raise ConfigError(f"{cached}: lacks {len(missing)} held-out image(s) (e.g. "
                              f"{missing[0]}): the dataset changed; delete {fold_dir} to redo it")
        pooled.update(preds)
        fold_rows.append({"fold": k, "groups": groups, "images": len(held),
                          "defective": sum(1 for r in held if r.boxes),
                          "seconds": round(time.time() - t_fold, 1)})
    oof = [pooled[r.file_name] for r in records]
    rule = cfg.agnostic_iou
    calib = calibrate_f(records, oof, list(dataset.categories), target_escape=target_escape,
                        agnostic_iou=rule)
    for row, groups in zip(fold_rows, plan, strict=True):
        sel = [i for i, r in enumerate(records) if group_of(r) in set(groups)]
        recs, preds_k = [records[i] for i in sel], [oof[i] for i in sel]
        row["pairs_at_pooled_thresholds"] = pair_metrics(recs, preds_k, list(dataset.categories),
                                                         calib["thresholds"], rule)
        row["best_global_in_hindsight"] = best_global(recs, preds_k, list(dataset.categories),
                                                      agnostic_iou=rule)
    calib.update(source=f"out-of-fold predictions of {folds} fold models (by group)",
                 folds=fold_rows, config=cfg.name, data=str(cfg.data),
                 time_budget=None if budget_s is None else format_duration(budget_s * folds),
                 seconds=round(time.time() - t0, 1))
    (out / CALIBRATION).write_text(json.dumps(calib, indent=1))
    if target_run is not None:
        target_run.save_thresholds(calib)
    return calib
