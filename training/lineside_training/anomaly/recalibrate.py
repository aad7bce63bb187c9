"""``lineside calibrate`` for a good-only package: its thresholds again, from the line's
own good captures through the edge runtime.

A threshold calibrated on a few held-out groups carries over to other groups only roughly
(measured in docs/training/good-only.md: 4-9% false rejects on unseen coils against a 1%
target), so a plant recalibrates on a few dozen captures of its own good parts before use.
As at training (:func:`lineside_training.anomaly.train.calibrate_run`), each good image is
scored as stored and once re-photographed; the re-photographing is done on the capture
as read, before the letterbox, as ``lineside evaluate`` judges false rejects (a camera
varies at its own resolution). The graph is not touched."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lineside_inspect.dataset import ImageRecord, read_dataset
from lineside_inspect.errors import ConfigError, DatasetError, LinesideError
from lineside_inspect.imageio import read_image
from lineside_inspect.package import ANOMALY_LABEL, CARD
from lineside_inspect.runtime.anomaly import AnomalyModel
from lineside_inspect.runtime.anomaly_map import pooled_pixels
from lineside_training.anomaly.calibrate import captures_needed, operating_point
from lineside_training.anomaly.config import AnomalyConfig
from lineside_training.anomaly.data import (
    digests,
    distinct,
    good_to_train,
    group_of,
    split_images,
)
from lineside_training.anomaly.infer import Scored
from lineside_training.anomaly.synth import rephotograph
from lineside_training.anomaly.train import CALIB_SEED

BATCH = 4
# a card written before its training config was recorded: the training default
PIXEL_FALSE_POSITIVE: float = AnomalyConfig.model_fields["pixel_false_positive"].default


def min_good_images(target_false_reject: float) -> int:
    """Fewest good images (two captures each) that set a threshold at this rate: with
    fewer than 1/target captures none may be rejected, and the threshold is only the
    highest score seen (6 images gave a card rejecting 17% of good parts)."""
    return math.ceil(captures_needed(target_false_reject) / 2)


def recalibrate_package(package: str | Path, *, data: str | Path, split: str = "val",
                        threads: int | None = 1) -> dict[str, Any]:
    """New ``threshold`` and ``map_threshold`` for an anomaly ``package`` at its card's
    ``target_false_reject``, from the good images of ``data``'s ``split`` ("all": every
    split). Returns the calibration, with the old threshold and the share of these
    captures it rejected (:func:`calibrated_card` puts it in a card)."""
    package = Path(package)
    model = AnomalyModel(package, device="cpu", threads=threads)
    spec = model.card.anomaly
    assert spec is not None  # AnomalyModel refuses any other card
    target = 0.01 if spec.target_false_reject is None else spec.target_false_reject
    if target <= 0:  # no good capture may fail: the threshold is the highest score seen
        raise ConfigError(f"{model.card.name}:{model.card.version}: its card's "
                          "target_false_reject is 0, which no count of captures can set "
                          "a threshold at")
    trained = (model.card.training or {}).get("config", {})
    merged = {Path(p).resolve() for p in trained.get("extra_data", [])}
    if Path(data).resolve() in merged:
        raise DatasetError(f"{data}: the model trained on it (extra_data): calibrate on line "
                           "captures it did not train on")
    dataset = read_dataset(data)
    name = Path(dataset.root or data).name
    need = min_good_images(target)
    try:
        in_split = split_images(dataset, split)
    except DatasetError:
        # "give --split all" to a set too small for any split: the next run said another
        # thing was wrong (session 52); say now what --split all would find, and what then
        if not dataset.images or any(r.split for r in dataset.images):
            raise  # (none at all; or a split not there, naming those there are)
        whole = len(distinct(dataset, [r for r in dataset.images if r.is_good])[0])
        if whole >= need:
            raise
        raise DatasetError(f"{name}: split {split!r} has no images, and all of it (--split "
                           f"all) has {whole} distinct good images: "
                           + _too_few(target, need, whole, "with --split all")) from None
    good, good_digests = distinct(dataset, [r for r in in_split if r.is_good])
    if not good:
        raise DatasetError(f"split {split!r} of {name} has no good images: a good-only model "
                           "is calibrated on good parts (no boxes)")
    seen = trained_on(model.card.training or {}, good, good_digests)
    if seen:
        raise DatasetError(
            f"{data}: {len(seen)} of split {split!r}'s {len(good)} good images are ones the "
            f"model trained on (e.g. {seen[0]}): calibrate on captures it did not train on "
            "(its held-out groups, another split, or new line captures)")
    if len(good) < need:
        raise DatasetError(f"split {split!r} of {name} has {len(good)} distinct good images: "
                           + _too_few(target, need, len(good),
                                      "" if split == "all" else "with --split all"))
    rng = np.random.default_rng(CALIB_SEED)
    scored = Scored()
    for i in range(0, len(good), BATCH):
        images = [read_image(dataset.image_path(r)) for r in good[i:i + BATCH]]
        images += [rephotograph(im, rng) for im in images]
        batch, letterboxes = model.pre_process(images)
        maps, scores = model.forward(batch)
        # scored inside the image, as the server judges them (image_score)
        scored.add(maps, scores, letterboxes, pooled_pixels(model.card))
    scores = np.asarray(scored.scores)
    point = operating_point(
        scores, scored.top_pixels, target_false_reject=target,
        pixels_per_image=scored.pixels_per_image,  # inside the image, as scored
        pixel_false_positive=float(trained.get("pixel_false_positive", PIXEL_FALSE_POSITIVE)))
    return {**point, "min_region_px": spec.min_region_px, "calibrated_on": len(good),
            "source": f"{model.card.name}:{model.card.version}: good images of split "
                      f"{split} of {name}",
            "previous_threshold": spec.threshold,
            "previous_false_reject": float((scores >= spec.threshold).mean()),
            "false_reject": float((scores >= point["threshold"]).mean())}


def _too_few(target: float, need: int, have: int, how: str) -> str:
    """What a threshold at ``target`` false rejects needs, and what to do about ``have``
    images (calibrating ``how``, as given: a good import has no splits)."""
    return (f"at {target:.1%} false rejects the threshold needs at least {need} (two captures "
            f"each), or it is only the highest score seen: add at least {need - have} more "
            "good parts it did not train on to the folder, import it again (lineside data "
            f"import -f good --overwrite) and calibrate on that{' ' + how if how else ''}")


def trained_on(training: dict[str, Any], good: list[ImageRecord],
               digests_of_good: list[str]) -> list[str]:
    """The file names among ``good`` (their contents ``digests_of_good``) that the run
    behind a card trained on, by content, so a copy or a re-import of its images is caught.
    A card keeps the digests of the images it trained on (``training.data.train_sha256``:
    merged sets' included, images held out for calibration not). An older card's are
    worked out again from its training sets where they are still readable here: their
    good images of the split it took, outside the calibration groups it held out (a set
    of one group held out images, which cannot be told apart then: not checked)."""
    kept = training.get("data", {}).get("train_sha256")
    seen = set(kept) if kept is not None else _trained_again(training)
    return [r.file_name for r, d in zip(good, digests_of_good, strict=True) if d in seen]


def _trained_again(training: dict[str, Any]) -> set[str]:
    cfg = training.get("config", {})
    held = set(training.get("data", {}).get("calib_groups", []))
    # (set, the split it took, the groups it held out): its own set outside the groups it
    # held out (none held out: a set of one group held out images, which cannot be told
    # apart then), then each merged set whole, as carve() took them
    sets = [(p, None, set[str]()) for p in cfg.get("extra_data", [])]
    if cfg.get("data") and held:
        sets.insert(0, (cfg["data"], cfg.get("split"), held))
    seen: set[str] = set()
    for path, split, out in sets:
        try:
            source = read_dataset(path)
            seen.update(digests(source, [r for r in good_to_train(source, split)
                                         if group_of(r) not in out]))
        except (OSError, LinesideError):  # moved or gone: nothing to compare with
            continue
    return seen


def calibrated_card(package: str | Path, calib: dict[str, Any]) -> dict[str, Any]:
    """``package``'s card (as JSON) with ``calib``'s thresholds, recorded under
    ``metrics.calibration``; every other field as it was."""
    doc: dict[str, Any] = json.loads((Path(package) / CARD).read_text())
    doc["anomaly"].update({k: calib[k] for k in ("threshold", "map_threshold",
                                                  "target_false_reject", "calibrated_on")})
    doc["thresholds"] = {ANOMALY_LABEL: calib["threshold"]}  # as the export writes it
    doc.setdefault("metrics", {})["calibration"] = calib
    return doc
