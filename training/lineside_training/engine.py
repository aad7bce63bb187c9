"""The training loop: CPU or CUDA (AMP), DDP through torchrun, EMA, checkpoints, resume,
early stopping, and a JSON-lines metrics log per evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from lineside_inspect.dataset import Dataset, ImageRecord, read_dataset
from lineside_inspect.errors import ConfigError
from lineside_training.config import TrainConfig
from lineside_training.data.augment import train_transform
from lineside_training.data.dataset import DetectionDataset, collate
from lineside_training.metrics import coco_metrics
from lineside_training.models import build_model
from lineside_training.predict import predict_records
from lineside_training.weights import load_weights


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
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


def load_data(cfg: TrainConfig) -> TrainData:
    """The training and validation records; ``extra_data`` sets are merged into train."""
    dataset = read_dataset(cfg.data)
    class_names = list(dataset.categories)
    if not any(r.split for r in dataset.images):
        raise ConfigError(f"{cfg.data}: no split assigned; run 'lineside data split {cfg.data}'")
    train = dataset.in_split("train")
    for extra in cfg.extra_data:
        other = read_dataset(extra)
        for name in other.categories:
            if name not in class_names:
                raise ConfigError(f"{extra}: class {name!r} is not in {cfg.data}'s classes")
        for rec in other.images:
            rec.source = other.image_path(rec)
            rec.reference_source = other.reference_path(rec)
            if rec.split in (None, "train"):
                train.append(rec)
    val = dataset.in_split("val")
    if not train or not val:
        raise ConfigError(f"{cfg.data}: needs both train and val images "
                          f"(has {len(train)} train, {len(val)} val)")
    fp = {"path": str(Path(cfg.data).resolve()),
          "annotations_sha256": hashlib.sha256(
              (Path(cfg.data) / "annotations.json").read_bytes()).hexdigest(),
          "extra_data": list(cfg.extra_data),
          "train_images": len(train), "val_images": len(val),
          "source": dataset.info.get("source"), "licence": dataset.info.get("licence")}
    return TrainData(dataset, class_names, train, val, fp)


def ema_avg(decay: float, ramp: float = 500.0) -> Any:
    """EMA whose decay ramps up from 0 over the first updates, so the average is useful
    from the first evaluation instead of dragging the random initial weights along."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        d = decay * (1 - math.exp(-float(num) / ramp))
        return averaged * d + current * (1 - d)

    return avg


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Any:
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def f(step: int) -> float:
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


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """Train per ``cfg``; returns the run folder (``config.yaml``, ``last.pt``, ``best.pt``,
    ``metrics.jsonl``). Safe to interrupt: ``last.pt`` is written first."""
    rank, world = _distributed()
    device = pick_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    seed_everything(cfg.seed)
    run = Path(cfg.out_dir) / cfg.name
    data = load_data(cfg)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))

    model = build_model(cfg.model, num_classes=len(data.class_names), **cfg.model_kwargs)
    if cfg.weights:
        report = load_weights(model, cfg.weights)
        if rank == 0 and not quiet:
            print(report, file=sys.stderr)
    model.to(device)
    ema = AveragedModel(model, avg_fn=ema_avg(cfg.ema_decay), use_buffers=True) \
        if cfg.ema_decay > 0 else None

    train_ds = DetectionDataset(
        data.dataset, data.train, data.class_names, size=cfg.input_size,
        transform=train_transform(cfg.augment, cfg.crop_size, cfg.input_size, seed=cfg.seed + rank,
                                  reference=cfg.reference),
        reference=cfg.reference,
    )
    val_ds = DetectionDataset(data.dataset, data.val, data.class_names, size=cfg.input_size,
                              reference=cfg.reference)
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
    steps = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    optimizer: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                                    weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle":
        scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps,
            pct_start=min(max(cfg.warmup_epochs / cfg.epochs, 0.01), 0.5))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # static_graph: the same parameters (e.g. an unused top pyramid output) go without
    # gradient every step, which DDP accepts when told the graph is static
    net: nn.Module = DistributedDataParallel(model, static_graph=True) if world > 1 else model

    start_epoch, best, stale, elapsed0 = 0, -1.0, 0, 0.0
    if resume and (run / "last.pt").is_file():
        ck = torch.load(run / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(ck["raw_model"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        start_epoch, best, stale = ck["epoch"] + 1, ck["best"], ck["stale"]
        elapsed0 = ck.get("elapsed_s", 0.0)

    def checkpoint(epoch: int, path: Path) -> None:
        if rank != 0:
            return
        eval_model = ema.module if ema is not None else model
        torch.save({
            "model": eval_model.state_dict(), "raw_model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "best": best, "stale": stale, "config": cfg.model_dump(),
            "class_names": data.class_names, "elapsed_s": elapsed0 + time.time() - t0,
            "data": data.fingerprint,
        }, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    t0 = time.time()
    epoch = start_epoch
    seen_indices: list[int] = []  # first epoch's shard, recorded for DDP runs
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            net.train()
            seen, loss_sum, t_epoch = 0, 0.0, time.time()
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=quiet or rank != 0, file=sys.stderr, leave=False)
            for step, (images, targets) in enumerate(loader):
                if step >= steps:
                    break
                if world > 1 and epoch == start_epoch:
                    seen_indices.extend(int(t["index"]) for t in targets)
                images = images.to(device, non_blocking=True).float()
                targets = [{k: v.to(device) for k, v in t.items() if k != "index"} for t in targets]
                with torch.autocast(device.type, enabled=use_amp):
                    losses = net(images, targets)
                    loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                seen += len(images)
                loss_sum += float(loss.detach()) * len(images)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}",
                                img_s=f"{seen / (time.time() - t_epoch):.1f}")
                bar.update()
            bar.close()
            row: dict[str, Any] = {
                "epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                "lr": scheduler.get_last_lr()[0],
                "train_img_s": seen * world / (time.time() - t_epoch),
            }
            last = epoch + 1 == cfg.epochs or (
                cfg.time_limit_minutes is not None
                and elapsed0 + time.time() - t0 > cfg.time_limit_minutes * 60)
            if rank == 0 and ((epoch + 1) % cfg.eval_every == 0 or last):
                eval_model = ema.module if ema is not None else model
                preds = predict_records(eval_model, data.dataset, data.val, data.class_names,
                                        size=cfg.input_size, device=device, cache=val_ds)
                m = coco_metrics(data.val, preds, data.class_names)
                row.update(map=m["map"], map50=m["map50"])
                if m["map50"] > best:
                    best, stale = m["map50"], 0
                    checkpoint(epoch, run / "best.pt")
                else:
                    stale += 1
            row["elapsed_min"] = (elapsed0 + time.time() - t0) / 60
            if rank == 0:
                with open(run / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if not quiet:
                    print(json.dumps(row), file=sys.stderr)
            checkpoint(epoch, run / "last.pt")
            if stale >= cfg.patience or last:
                break
    except KeyboardInterrupt:
        checkpoint(max(epoch - 1, 0), run / "last.pt")
        raise
    finally:
        if world > 1 and dist.is_initialized():
            # each rank records its shard and a weight checksum: replicas must agree
            (run / "ranks").mkdir(parents=True, exist_ok=True)
            checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
            (run / "ranks" / f"rank{rank}.json").write_text(
                json.dumps({"indices": seen_indices, "checksum": checksum}))
            dist.barrier()
            dist.destroy_process_group()
    return run
