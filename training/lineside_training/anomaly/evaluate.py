"""``lineside evaluate`` for good-only runs and packages: image AUROC and escapes at 1% and
2% false rejects on a split's defective images against its good ones, the good ones also
re-photographed (gain, noise, blur, JPEG) as a new capture of a good part would be."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineside_inspect.dataset import ImageRecord, read_dataset
from lineside_inspect.errors import DatasetError
from lineside_inspect.imageio import read_image
from lineside_inspect.opencv import cv2
from lineside_inspect.package import PAD_VALUE, load_package
from lineside_inspect.recipes import check_card_recipe
from lineside_inspect.runtime.anomaly import AnomalyModel
from lineside_inspect.runtime.preprocess import letterbox
from lineside_training.anomaly.calibrate import REPORTED_FALSE_REJECTS, escapes_at, quality
from lineside_training.anomaly.data import digests, split_images
from lineside_training.anomaly.infer import score_images, torch_forward
from lineside_training.anomaly.recalibrate import trained_on
from lineside_training.anomaly.synth import rephotograph
from lineside_training.anomaly.train import load_run
from lineside_training.checkpoint import recorded_set
from lineside_training.evaluate import other_data

EVAL_SEED = 777  # the evaluation's capture variation: not the calibration's
Scorer = Callable[[list[np.ndarray]], tuple[list[float], list[np.ndarray] | None]]


def package_scorer(path: Path, threads: int | None) -> tuple[Scorer, dict[str, Any]]:
    """Through the edge runtime, as the server judges: scores and region boxes."""
    model = AnomalyModel(load_package(path), device="cpu", threads=threads)
    # its card's own recipe, as a server loading it checks it (tiling, say, is refused)
    check_card_recipe(model.card, model.card.class_names)

    def run(images: list[np.ndarray]) -> tuple[list[float], list[np.ndarray] | None]:
        found = model.analyse(images)
        return [f.score for f in found], [f.regions.xyxy for f in found]
    assert model.card.anomaly is not None  # AnomalyModel refuses any other card
    calibration = model.card.metrics.get("calibration")
    # a line calibration (lineside calibrate) names its images' source; training's does not
    from_training = not (isinstance(calibration, dict) and calibration.get("source"))
    return run, {"threshold": model.card.anomaly.threshold, "model": model.card.name,
                 "version": model.card.version, "training": model.card.training or {},
                 "threshold_from_training": from_training}


def run_scorer(path: Path) -> tuple[Scorer, dict[str, Any]]:
    cfg, graph, ckpt = load_run(path)
    forward = torch_forward(graph, torch.device("cpu"))

    def run(images: list[np.ndarray]) -> tuple[list[float], list[np.ndarray] | None]:
        # each with its letterbox: scored inside the image, as the package is (image_score)
        fitted = [letterbox(cv2.cvtColor(i, cv2.COLOR_BGR2RGB), cfg.input_size,
                            pad_value=PAD_VALUE) for i in images]
        return score_images(forward, fitted, topk=cfg.score_topk).scores, None
    # where the checkpoint recorded the set, else its config's data as typed to train
    # (relative to where train ran): evaluate from another folder found none (session 47)
    data = recorded_set(ckpt) or cfg.data
    return run, {"threshold": ckpt["calibration"]["threshold"], "model": cfg.name,
                 "data": data, "threshold_from_training": True, "training": {"config": cfg.model_dump(),
                                                "data": ckpt.get("data", {})}}


def _located(regions: list[np.ndarray], records: list[ImageRecord]) -> dict[str, Any]:
    """Defective images where a reported region touches a labelled defect box."""
    hit = 0
    for boxes, rec in zip(regions, records, strict=True):
        truth = np.asarray([b.xyxy() for b in rec.boxes], np.float32).reshape(-1, 4)
        if len(boxes) and len(truth):
            ix = (np.minimum(boxes[:, None, 2], truth[None, :, 2])
                  - np.maximum(boxes[:, None, 0], truth[None, :, 0]))
            iy = (np.minimum(boxes[:, None, 3], truth[None, :, 3])
                  - np.maximum(boxes[:, None, 1], truth[None, :, 1]))
            hit += bool(((ix >= 0) & (iy >= 0)).any())
    return {"defective_images_located": hit, "defective": len(records)}


def escapes_by_class(good: np.ndarray, defective: np.ndarray, records: list[ImageRecord],
                     card_threshold: float) -> dict[str, dict[str, int | None]]:
    """Per defect class: its defective images, and how many of them pass at the card's
    threshold and at 1% false rejects on ``good`` (None without good images; an image with
    two classes counts for each). A good-only model never names the class; this says which
    kinds it misses."""
    at_1 = (escapes_at(good, defective, REPORTED_FALSE_REJECTS[0])["threshold"] if len(good)
            else None)
    out: dict[str, dict[str, int]] = {}
    for score, rec in zip(defective, records, strict=True):
        for label in sorted({b.label for b in rec.boxes}):
            row = out.setdefault(label, {"defective": 0, "escapes_at_card": 0,
                                         "escapes_at_1pct": 0})
            row["defective"] += 1
            row["escapes_at_card"] += int(score < card_threshold)
            row["escapes_at_1pct"] += int(at_1 is not None and score < at_1)
    return {name: {**row, "escapes_at_1pct": row["escapes_at_1pct"] if at_1 is not None
                   else None} for name, row in sorted(out.items())}


def evaluate_anomaly(target: str | Path, *, data: str | Path | None = None, split: str = "val",
                     out: str | Path | None = None, threads: int | None = 1,
                     batch: int = 4) -> dict[str, Any]:
    """Evaluate a good-only run folder or package (kind anomaly) on ``data``'s ``split``."""
    target = Path(target)
    is_package = (target / "model.json").is_file()
    suffix = ""  # a run's report on another dataset: beside its own (other_data)
    if not is_package:
        scorer, meta = run_scorer(target)
        run_data = meta.pop("data")
        suffix = other_data(data, data is None or _same(data, run_data))
        data = data or run_data
    else:
        scorer, meta = package_scorer(target, threads)
        if data is None:
            raise DatasetError("evaluating a package needs --data")
        # a package's report per dataset too: three --data runs wrote over one report
        suffix = other_data(data, False)
    training = meta.pop("training")
    from_training = meta.pop("threshold_from_training")
    dataset = read_dataset(data)
    records = split_images(dataset, split)
    good = [r for r in records if r.is_good]
    defective = [r for r in records if not r.is_good]
    # good images the model trained on judge it in-sample: said, as calibrate refuses them
    good_digests = digests(dataset, good)
    in_sample = len(trained_on(training, good, good_digests))
    # good images held out to set the card's threshold set it at their own false-reject
    # rate (none under 100 of them): their false rejects at it are in-sample too, said as
    # the trained-on are
    held = set(training.get("data", {}).get("calib_sha256") or []) if from_training else set()
    set_threshold = sum(d in held for d in good_digests)
    rng = np.random.default_rng(EVAL_SEED)
    t0 = time.perf_counter()

    def scores_of(recs: list[ImageRecord], recapture: bool,
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
        scores: list[float] = []
        regions: list[np.ndarray] = []
        for i in range(0, len(recs), batch):
            images = [read_image(dataset.image_path(r)) for r in recs[i:i + batch]]
            if recapture:
                images = [rephotograph(im, rng) for im in images]
            s, reg = scorer(images)
            scores += s
            regions += reg or []
        return np.asarray(scores, np.float64), regions

    good_stored, _ = scores_of(good, False)
    good_recaptured, _ = scores_of(good, True)
    bad, bad_regions = scores_of(defective, False)
    thr = float(meta["threshold"])
    result: dict[str, Any] = {
        "kind": "anomaly", "target": str(target), "data": str(data), "split": split,
        **meta,
        "good_rephotographed": quality(good_recaptured, bad, thr),
        "good_as_stored": quality(good_stored, bad, thr),
        "seconds": time.perf_counter() - t0, "good_trained_on": in_sample,
        "good_set_threshold": set_threshold,
    }
    if len(bad):
        # against re-photographed good parts: the line never sees the stored capture again
        result["by_class"] = escapes_by_class(good_recaptured, bad, defective, thr)
    if bad_regions:
        result["localisation"] = _located(bad_regions, defective)
    default = Path("runs") / f"{target.parent.name}-{target.name}" if is_package else target
    out_dir = Path(out) if out else default / f"report-{split}{suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    np.savez_compressed(out_dir / "scores.npz", good_stored=good_stored,
                        good_rephotographed=good_recaptured, defective=bad)
    result["report"] = str(out_dir)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What ``lineside evaluate`` prints for a good-only model."""
    lines = []
    card = result["good_as_stored"]["at_card_threshold"]
    if not card["good"]:
        lines.append("the split has no good images: AUROC, false rejects and escapes at a "
                     "false-reject rate need them; only escapes at the card's threshold count")
    if not card["defective"]:
        lines.append("the split has no defective images: escapes cannot be measured, only "
                     "false rejects")
    for key, title in (("good_rephotographed", "good parts re-photographed"),
                       ("good_as_stored", "good parts as stored")):
        q = result[key]
        auroc = "n/a" if q["auroc"] is None else f"{q['auroc']:.4f}"
        card = q["at_card_threshold"]
        # the false rejects the threshold really makes beside each rate: under 100 good
        # images "1%" is none, and a score saturated at 1.0 fails more than the rate
        at = "".join(f"escapes at {a['false_reject'] * 100:g}% false rejects "
                     f"{a['escapes']}/{a['defective']} (false rejects {a['false_rejects']}/"
                     f"{a['good']})  " for a in q["at_false_reject"]) if card["defective"] \
            else ""
        lines.append(f"{title}: image AUROC {auroc}  {at}at the card's threshold "
                     f"{card['threshold']:.4f}: escapes {card['escapes']}/{card['defective']}, "
                     f"false rejects {card['false_rejects']}/{card['good']}")
    if result.get("by_class"):
        lines.append("escapes by defect class (re-photographed good parts): " + "  ".join(
            f"{name} {row['escapes_at_card']}/{row['defective']} at the card"
            + ("" if row["escapes_at_1pct"] is None else f", {row['escapes_at_1pct']} at 1%")
            for name, row in result["by_class"].items()))
    if "localisation" in result:
        loc = result["localisation"]
        lines.append(f"defective images with a region on a labelled defect: "
                     f"{loc['defective_images_located']}/{loc['defective']}")
    if result.get("good_trained_on"):
        lines.append(f"note: {result['good_trained_on']} of the split's good images were "
                     "trained on: its false rejects are in-sample (optimistic); evaluate on "
                     "good parts the model never saw")
    if result.get("good_set_threshold"):
        lines.append(f"note: {result['good_set_threshold']} of the split's good images were "
                     "held out at training to set the card's threshold: it was chosen to "
                     "pass them at its target, so its false rejects on them are in-sample; "
                     "judge the threshold on good parts it was not set on")
    lines.append(f"report: {result['report']}")
    return lines


def _same(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
