"""``lineside calibrate`` for a good-only package: its thresholds again, from the line's
own good captures through the edge runtime.

A threshold calibrated on a few held-out groups carries over to other groups only roughly
(measured in docs/training/good-only.md: 4-9% false rejects on unseen coils against a 1%
target), so a plant recalibrates on a few dozen captures of its own good parts before use.
As at training (:func:`lineside_training.anomaly.train.calibrate_run`), each good image is
scored as stored and once re-photographed; the graph is not touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lineside_inspect.dataset import read_dataset
from lineside_inspect.errors import DatasetError
from lineside_inspect.imageio import read_image
from lineside_inspect.package import CARD
from lineside_inspect.runtime.anomaly import AnomalyModel
from lineside_training.anomaly.calibrate import image_threshold, map_threshold
from lineside_training.anomaly.config import AnomalyConfig
from lineside_training.anomaly.infer import Scored
from lineside_training.anomaly.synth import rephotograph
from lineside_training.anomaly.train import CALIB_SEED
from lineside_training.export import rewrite_card

BATCH = 4
# the card does not keep the rate its map threshold was set at: the training default
PIXEL_FALSE_POSITIVE: float = AnomalyConfig.model_fields["pixel_false_positive"].default


def recalibrate_package(package: str | Path, *, data: str | Path, split: str = "val",
                        write: bool = False, threads: int | None = 1) -> dict[str, Any]:
    """New ``threshold`` and ``map_threshold`` for an anomaly ``package`` at its card's
    ``target_false_reject``, from the good images of ``data``'s ``split`` ("all": every
    split); with ``write`` they go into the card. Returns the calibration, with the old
    threshold and the share of these captures it rejected."""
    package = Path(package)
    model = AnomalyModel(package, device="cpu", threads=threads)
    spec = model.card.anomaly
    assert spec is not None  # AnomalyModel refuses any other card
    target = spec.target_false_reject or 0.01
    dataset = read_dataset(data)
    records = dataset.images if split == "all" else dataset.in_split(split)
    good = [r for r in records if r.is_good]
    if not good:
        raise DatasetError(f"split {split!r} of {Path(data).name} has no good images: a "
                           "good-only model is calibrated on good parts (no boxes)")
    rng = np.random.default_rng(CALIB_SEED)
    scored = Scored()
    for i in range(0, len(good), BATCH):
        images = [read_image(dataset.image_path(r)) for r in good[i:i + BATCH]]
        images += [rephotograph(im, rng) for im in images]
        maps, scores = model.forward(model.pre_process(images)[0])
        scored.add(maps, scores, keep_maps=False)
    scores = np.asarray(scored.scores)
    thr = image_threshold(scores, target)
    calib: dict[str, Any] = {
        "threshold": thr,
        "map_threshold": map_threshold(scored.top_pixels, model.size ** 2,
                                       PIXEL_FALSE_POSITIVE, thr),
        "min_region_px": spec.min_region_px, "target_false_reject": target,
        "calibrated_on": len(good), "calibration_captures": len(scores),
        "source": f"{model.card.name}:{model.card.version}: good images of split {split} of "
                  f"{Path(dataset.root or data).name}",
        "previous_threshold": spec.threshold,
        "previous_false_reject": float((scores >= spec.threshold).mean()),
        "false_reject": float((scores >= thr).mean()),
    }
    if write:
        doc = json.loads((package / CARD).read_text())
        doc["anomaly"].update({k: calib[k] for k in ("threshold", "map_threshold",
                                                      "target_false_reject", "calibrated_on")})
        doc["thresholds"] = {name: thr for name in doc["thresholds"]}
        doc.setdefault("metrics", {})["calibration"] = calib
        rewrite_card(package, doc)
    return calib
