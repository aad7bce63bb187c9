"""``lineside train`` for ``kind: anomaly``: a good-only model from a folder of good images.

Synthetic anomalies on random crops teach a small U-Net to output the anomaly mask; the
run ends on its time budget (cosine schedule on elapsed time) and calibrates its image and
map thresholds on good images of groups it never trained on."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from lineside_inspect.dataset import read_dataset
from lineside_inspect.errors import ConfigError, LinesideError
from lineside_inspect.runtime.preprocess import Letterbox
from lineside_training.anomaly.calibrate import NEAR_CEILING, captures_needed, operating_point
from lineside_training.anomaly.config import AnomalyConfig
from lineside_training.anomaly.data import CropSampler, GoodSplit, carve, group_of, load_all
from lineside_training.anomaly.infer import score_images, torch_forward
from lineside_training.anomaly.net import AnomalyGraph, AnomalyNet
from lineside_training.anomaly.synth import rephotograph
from lineside_training.config import as_written
from lineside_training.engine import hold_run, pick_device, seed_everything, write_checkpoint
from lineside_training.threads import choose_threads

CHECKPOINT = "anomaly.pt"
STOP_FILE = "STOP"  # created in the run folder: training ends at the next step, then saves
CALIB_SEED = 12345  # the calibration's capture variation, fixed so a run is repeatable


def loss_fn(logits: Tensor, masks: Tensor, gamma: float, dice_weight: float) -> Tensor:
    """Focal loss (most pixels are easy normal ones) plus soft Dice over the batch (the
    anomalous few pixels decide; over the batch, so crops without anomalies are fine)."""
    focal = sigmoid_focal_loss(logits, masks, alpha=-1, gamma=gamma, reduction="mean")
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * masks).sum() + 1) / (p.sum() + masks.sum() + 1)
    return focal * 10 + dice_weight * dice


def lr_factor(step: int, progress: float, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def calibration_variants(images: list[tuple[np.ndarray, Letterbox]],
                         ) -> list[tuple[np.ndarray, Letterbox]]:
    """The held-out good images (letterboxed, each with its letterbox) as stored and each
    re-photographed once, inside the image only: the border stays the card's pad value,
    as the server letterboxes a capture (and as ``evaluate`` and ``lineside calibrate``
    re-photograph before the letterbox). Re-photographed whole, the border's noise, gain
    and JPEG blocks fed the map at the image's edge, scored since session 50 (adversarial
    review, session 50)."""
    rng = np.random.default_rng(CALIB_SEED)
    variants = list(images)
    for image, lb in images:
        again = image.copy()
        again[lb.inside] = rephotograph(np.ascontiguousarray(image[lb.inside]), rng)
        variants.append((again, lb))
    return variants


def calibrate_run(graph: AnomalyGraph, images: list[tuple[np.ndarray, Letterbox]],
                  cfg: AnomalyConfig, device: torch.device) -> dict[str, Any]:
    """Thresholds from held-out good images (letterboxed, each with its letterbox), each as
    stored and re-photographed once (a good part at the line is never the same capture
    twice), scored inside the image as the server judges them (``image_score``)."""
    scored = score_images(torch_forward(graph, device), calibration_variants(images),
                          topk=cfg.score_topk)
    point = operating_point(np.asarray(scored.scores), scored.top_pixels,
                            target_false_reject=cfg.target_false_reject,
                            pixels_per_image=scored.pixels_per_image,  # inside the image
                            pixel_false_positive=cfg.pixel_false_positive)
    return {**point, "min_region_px": cfg.min_region_px, "calibrated_on": len(images)}


def train_anomaly(cfg: AnomalyConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """Train a good-only run per ``cfg``; its folder is held (:func:`hold_run`) meanwhile."""
    with contextlib.ExitStack() as held:
        return _train_anomaly(cfg, resume=resume, quiet=quiet, held=held)


def _train_anomaly(cfg: AnomalyConfig, *, resume: bool, quiet: bool,
                   held: contextlib.ExitStack) -> Path:
    if resume:
        raise ConfigError("good-only runs do not resume: they are short; train again under "
                          "another --name")
    run_dir = Path(cfg.out_dir) / cfg.name
    origin = start_run(cfg, run_dir) if cfg.weights else None
    # every refusal comes before the run folder is touched (an existing run stays whole)
    seed_everything(cfg.seed)
    cfg, inherited = calibration_groups(cfg, origin)
    split = carve(cfg)
    if origin is not None:
        check_calibration(origin, str(cfg.weights), split)
    if (run_dir / CHECKPOINT).is_file():
        raise ConfigError(f"{run_dir}: a good-only run of this name is already there "
                          f"({CHECKPOINT}): give the new run another name (--name)")
    # decoded before the run folder is made: an image that does not decode is refused
    # with the others, not met after the folder was (session 42)
    t0 = time.perf_counter()
    train_images = load_all(cfg.data, split.dataset, split.train, cfg.input_size)
    calib_images = load_all(cfg.data, split.dataset, split.calib, cfg.input_size)
    loaded = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    # held as a detector's run is (session 51): two trainings of one name both passed the
    # check above and wrote one anomaly.pt; checked again once held (the other may be done)
    unheld = held.enter_context(hold_run(run_dir))
    if (run_dir / CHECKPOINT).is_file():
        raise ConfigError(f"{run_dir}: a good-only run of this name is already there "
                          f"({CHECKPOINT}): give the new run another name (--name)")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(as_written(cfg.model_dump()),
                                                        sort_keys=False))
    log = (run_dir / "train.log").open("w")

    def say(line: str) -> None:
        log.write(line + "\n")
        log.flush()
        if not quiet:
            print(line, flush=True)

    if unheld:
        say(f"warning: {unheld}")
    threads, why = choose_threads(cfg.threads)
    say(f"torch threads: {threads} ({why})")
    device = pick_device(cfg.device)
    if inherited:
        say(f"calibration groups {cfg.calib_groups}: those the start run held out")
    if split.copies_left_out:
        say(f"warning: {len(split.copies_left_out)} training image(s) left out, copies of "
            f"calibration images in other groups (e.g. {split.copies_left_out[0]}): "
            "calibration sees only parts the model never saw")
    captures, needed = 2 * len(split.calib), captures_needed(cfg.target_false_reject)
    if captures < needed:
        say(f"warning: {captures} calibration captures at {cfg.target_false_reject:.1%} false "
            f"rejects: the threshold is only the highest score seen ({needed} or more set "
            "it); hold out more groups, or calibrate on the line (lineside calibrate)")
    for warning in split.set_warnings:  # as a detector's run says them (data_warnings)
        say(f"warning: {warning}")
    say(f"input {cfg.input_size} px, crops of {cfg.crop_size} px")
    added = (f" ({split.added} of them from extra_data {', '.join(cfg.extra_data)})"
             if cfg.extra_data else "")
    say(f"good images: {len(train_images)} to train on{added}, {len(calib_images)} held out for "
        f"calibration (groups {split.calib_groups or 'by image'}); loaded in "
        f"{loaded:.0f}s")
    sampler = CropSampler([image for image, _ in train_images], cfg, cfg.seed)
    net = AnomalyNet(cfg.width)
    if origin is not None:
        net.load_state_dict(origin.state)
        say(f"started from the weights of {cfg.weights}")
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    budget = cfg.budget_seconds()
    clock = time.process_time if cfg.budget_clock == "cpu" else time.perf_counter
    start, cpu_start, clock_start = time.perf_counter(), time.process_time(), clock()
    stop_file = run_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)
    step, losses = 0, []
    net.train()
    try:
        while step < cfg.steps:
            elapsed = clock() - clock_start
            progress = max(step / cfg.steps, elapsed / budget if budget else 0.0)
            if progress >= 1 or stop_file.exists():  # STOP: end now, calibrate and save
                break
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, progress, cfg.warmup_steps)
            images, masks = sampler.batch(cfg.batch_size)
            logits = net(images.to(device))
            loss = loss_fn(logits, masks.to(device), cfg.focal_gamma, cfg.dice_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if not math.isfinite(losses[-1]):  # the weights are NaN from here: nothing to save
                say(f"step {step} loss {losses[-1]}: training diverged")
                log.close()
                raise ConfigError(f"training diverged at step {step} (loss {losses[-1]}): the "
                                  f"network's weights are no longer numbers; train again with a "
                                  f"lower lr (--set lr=...; this run's is {cfg.lr:g})")
            if step % cfg.log_every == 0 or step == 1:
                say(f"step {step} loss {np.mean(losses[-cfg.log_every:]):.4f} "
                    f"lr {opt.param_groups[0]['lr']:.2e} elapsed {time.perf_counter() - start:.0f}s "
                    f"cpu {time.process_time() - cpu_start:.0f}s")
        train_seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        net.eval()
        graph = AnomalyGraph(net, cfg.score_topk).eval()
        calibration = calibrate_run(graph, calib_images, cfg, device)
        say(f"trained {step} steps in {train_seconds:.0f}s ({cpu_seconds:.0f}s CPU); "
            f"threshold {calibration['threshold']:.4f} "
            f"map_threshold {calibration['map_threshold']:.4f} on {len(calib_images)} held-out "
            "good images")
        if calibration["threshold"] > NEAR_CEILING:
            # a sigmoid at 1.0 in float32 is every score above ~17 logits: such good parts fail
            # whatever the target, and defects cannot score above them (0.9999 passed them all
            # and said nothing)
            say(f"warning: held-out good images score at or near 1.0, the score's ceiling: at "
                f"the threshold {calibration['threshold']:.6f} a defect must score at least "
                "that to fail, and good parts at 1.0 fail whatever the target. Train longer or "
                "on more varied good images; check the held-out groups are of the same part")
        # through a synced temporary file (session 51): a Ctrl-C or a full disk mid-save left
        # a partial anomaly.pt, then refused as a damaged checkpoint, and the name as taken
        write_checkpoint(run_dir / CHECKPOINT, {"kind": "anomaly", "config": cfg.model_dump(),
                    "model": {k: v.cpu() for k, v in net.state_dict().items()},
                    "calibration": calibration, "steps": step, "train_seconds": train_seconds,
                    "cpu_seconds": cpu_seconds,
                    "threads": torch.get_num_threads(),
                    # where the set was (its config's data is as typed, maybe relative to
                    # this folder): evaluate from another folder finds it (session 47)
                    "data": {"path": str(Path(cfg.data).resolve()),
                             "train_images": len(split.train), "calib_images": len(split.calib),
                             "calib_groups": split.calib_groups,
                             "calib_files": [r.file_name for r in split.calib],
                             "calib_sha256": split.calib_sha256,
                             "train_sha256": split.train_sha256}},
                         then="free space, then train it again (a good-only run does not resume)")
    except KeyboardInterrupt:
        # a Ctrl-C (or SIGTERM) said "interrupted" alone: what was kept, and how to go on
        said = (f"{run_dir}: nothing was saved (a good-only run does not resume): train it "
                f"again; to end one early and keep it, create {run_dir / STOP_FILE}")
        log.write(f"interrupted at step {step}: {said}\n")
        log.close()
        raise KeyboardInterrupt(said) from None
    log.close()
    return run_dir


@dataclass
class StartRun:
    """The good-only run a run starts from (``weights``): its state dict, and what it held
    out for calibration (the only images of its data it never trained on)."""

    state: dict[str, Tensor]
    calib_groups: list[str]
    train_sha256: set[str]  # what it trained on, by content


def start_run(cfg: AnomalyConfig, run_dir: Path) -> StartRun:
    """The run ``cfg.weights`` names, refused unless its network has ``cfg``'s width (the
    input size may differ: the network is convolutional) and it is not this run's own
    folder (which the run replaces)."""
    assert cfg.weights is not None
    path = Path(cfg.weights)
    if (path.parent if path.is_file() else path).resolve() == run_dir.resolve():
        raise ConfigError(f"weights {cfg.weights}: this run's own folder, which it would "
                          "replace: give the new run another name (--name)")
    trained, _, ckpt = load_run(path)
    if trained.width != cfg.width:
        raise ConfigError(f"weights {cfg.weights}: a network of width {trained.width}, this "
                          f"config's is {cfg.width}: set width: {trained.width}")
    data = ckpt.get("data", {})
    hashes = data.get("train_sha256")
    if hashes is None:  # a run from before they were kept: its training images again
        try:
            hashes = carve(trained).train_sha256
        except (OSError, LinesideError):
            raise ConfigError(f"weights {cfg.weights}: its training images cannot be read "
                              f"from {trained.data}, so this run cannot be kept from "
                              "calibrating on images it trained on") from None
    return StartRun(dict(ckpt["model"]), list(data.get("calib_groups", [])), set(hashes))


def calibration_groups(cfg: AnomalyConfig, origin: StartRun | None,
                       ) -> tuple[AnomalyConfig, bool]:
    """``cfg`` holding out the groups the start run held out, where it names none and the
    data has them all (the start run trained on every other group of its data); whether
    it does."""
    if origin is None or cfg.calib_groups or not origin.calib_groups:
        return cfg, False
    dataset = read_dataset(cfg.data)
    have = {group_of(r) for r in dataset.in_split(cfg.split) if r.is_good}
    if not set(origin.calib_groups) <= have:
        return cfg, False  # other data: groups chosen afresh, checked by check_calibration
    return cfg.model_copy(update={"calib_groups": origin.calib_groups}), True


def check_calibration(start: StartRun, weights: str, split: GoodSplit) -> None:
    """Refuse a calibration image the start run trained on: its threshold would be set on
    parts the weights already know (too low for the line's new parts)."""
    known = [r.file_name for r, h in zip(split.calib, split.calib_sha256, strict=True)
             if h in start.train_sha256]
    if known:
        groups = f" (it held out groups {start.calib_groups})" if start.calib_groups else ""
        raise ConfigError(f"weights {weights}: trained on {len(known)} of this run's "
                          f"calibration images (e.g. {known[0]}){groups}: hold out the "
                          "images it held out (calib_groups), or train from scratch")


def is_anomaly_run(path: str | Path) -> bool:
    path = Path(path)
    return (path / CHECKPOINT).is_file() or (path.is_file() and path.name == CHECKPOINT)


def load_run(path: str | Path, device: str | torch.device = "cpu",
             ) -> tuple[AnomalyConfig, AnomalyGraph, dict[str, Any]]:
    """A trained good-only run: its config, the graph (eval mode) and the checkpoint."""
    path = Path(path)
    ckpt_path = path if path.is_file() else path / CHECKPOINT
    if not ckpt_path.is_file():
        raise ConfigError(f"{path}: " + (
            "does not exist" if not path.exists()
            else "a model package: give the good-only run it was exported from (runs/NAME)"
            if (path / "model.json").is_file()
            else f"no {CHECKPOINT} (not a good-only run)"))
    try:  # tensors and plain values only: a run folder from elsewhere cannot run code
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises pickle and runtime errors of several kinds
        raise ConfigError(f"{ckpt_path}: unreadable good-only checkpoint "
                          f"({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "anomaly":
        raise ConfigError(f"{ckpt_path}: not a good-only checkpoint")
    try:  # a run of another Lineside version, or a damaged one: said, not a traceback
        cfg = AnomalyConfig.model_validate(ckpt["config"])
        net = AnomalyNet(cfg.width)
        net.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # pydantic's: ValueError
        raise ConfigError(f"{ckpt_path}: a good-only checkpoint this Lineside cannot read "
                          f"({type(exc).__name__})") from None
    return cfg, AnomalyGraph(net, cfg.score_topk).eval(), ckpt
