"""``lineside export`` for good-only runs: a package of kind ``anomaly`` (outputs
``anomaly_map`` and ``score``; the card's ``anomaly`` section holds the calibrated
thresholds), gated by parity through the edge runtime the server runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineside_inspect.dataset import read_dataset
from lineside_inspect.errors import DatasetError, PackageError
from lineside_inspect.lifecycle.lineage import dataset_revision
from lineside_inspect.package import (
    ANOMALY_LABEL,
    ANOMALY_OUTPUTS,
    GRAPH,
    PAD_VALUE,
    AnomalySpec,
    InputSpec,
    LetterboxSpec,
    Lineage,
    ModelCard,
    default_recipe_name,
    load_package,
    sha256_file,
    write_card,
)
from lineside_inspect.runtime.anomaly import AnomalyModel
from lineside_inspect.runtime.anomaly_map import image_score
from lineside_inspect.runtime.preprocess import Letterbox
from lineside_inspect.version import __version__
from lineside_training.anomaly.data import load_rgb
from lineside_training.anomaly.net import AnomalyGraph
from lineside_training.anomaly.train import load_run
from lineside_training.package_writer import (
    check_out,
    export_graph,
    package_name,
    parent_model,
    staged_package,
)

PARITY_MAP = 2e-3  # max |torch - onnx| of any map pixel
PARITY_SCORE = 1e-3


def parity_problems(graph: AnomalyGraph, runtime: AnomalyModel,
                    images: list[tuple[np.ndarray, Letterbox]], threshold: float,
                    topk: int) -> list[str]:
    """torch and the edge runtime on the same letterboxed images (each with its
    letterbox): maps within PARITY_MAP, the graphs' scores within PARITY_SCORE, and the
    same verdict at the card's threshold on the score judged (``image_score``: inside the
    image, as calibrated and as the server judges)."""
    problems = []
    for i, (image, lb) in enumerate(images):
        batch = image.transpose(2, 0, 1)[None].copy()
        with torch.no_grad():
            tmap, tscore = (t.numpy() for t in graph(torch.from_numpy(batch)))
        omap, oscore = runtime.forward(batch)
        dmap = float(np.abs(tmap - omap).max())
        dscore = float(abs(tscore[0] - oscore[0]))
        tjudged = image_score(tmap[0, 0], float(tscore[0]), lb, topk)
        ojudged = image_score(omap[0, 0], float(oscore[0]), lb, topk)
        # a verdict may flip only for a score within rounding of the threshold
        flipped = (tjudged >= threshold) != (ojudged >= threshold) and \
            abs(tjudged - threshold) > PARITY_SCORE
        if dmap > PARITY_MAP or dscore > PARITY_SCORE or flipped:
            problems.append(f"image {i}: map differs by {dmap:.2e}, score {tscore[0]:.4f} vs "
                            f"{oscore[0]:.4f} (judged {tjudged:.4f} vs {ojudged:.4f})")
    return problems


def export_anomaly(run: str | Path, out: str | Path, *, name: str | None = None,
                   version: str | None = None, data: str | Path | None = None,
                   parity_images: int = 8, overwrite: bool = False,
                   parent: str | Path | None = None) -> dict[str, Any]:
    """Export a good-only run to the package folder ``out`` (written to a temp folder,
    moved into place only if the parity gate passes)."""
    out = check_out(out, overwrite, run=run)
    cfg, graph, ckpt = load_run(run)
    name, version = package_name(out, name, version, cfg.name)  # before any work
    cal = ckpt["calibration"]
    dataset = read_dataset(data or cfg.data)
    by_name = {r.file_name: r for r in dataset.images}
    records = [by_name[f] for f in ckpt["data"]["calib_files"] if f in by_name] or \
        [r for r in dataset.images if r.is_good]
    if not records:
        raise DatasetError(f"{data or cfg.data}: no good images to check the export on")
    images = [load_rgb(dataset, r, cfg.input_size) for r in records[:parity_images]]
    roots = [cfg.data, *cfg.extra_data]  # what it trained on
    try:
        revision, note = dataset_revision(roots), ""
    except (OSError, DatasetError) as exc:
        revision, note = None, f"training data not readable at export ({exc})"
    parent_card = parent_model(parent)
    with staged_package(out) as tmp:
        export_graph(graph, cfg.input_size, tmp / GRAPH, ANOMALY_OUTPUTS, [ANOMALY_LABEL])
        spec = AnomalySpec(threshold=cal["threshold"], map_threshold=cal["map_threshold"],
                           min_region_px=cal["min_region_px"],
                           target_false_reject=cal["target_false_reject"],
                           calibrated_on=cal["calibrated_on"])
        card = ModelCard(
            kind="anomaly", name=name, version=version, class_names=[ANOMALY_LABEL],
            input=InputSpec(size=cfg.input_size, letterbox=LetterboxSpec(pad_value=PAD_VALUE)),
            outputs=list(ANOMALY_OUTPUTS), anomaly=spec,
            thresholds={ANOMALY_LABEL: cal["threshold"]},
            default_recipe={"name": default_recipe_name(name), "version": "1"},
            metrics={"calibration": cal},
            training={"kind": "anomaly", "config": cfg.model_dump(), "steps": ckpt["steps"],
                      "train_seconds": round(ckpt["train_seconds"], 1),
                      "cpu_seconds": round(ckpt.get("cpu_seconds", 0.0), 1),
                      "threads": ckpt.get("threads"), "data": ckpt["data"] | {
                          "calib_files": len(ckpt["data"]["calib_files"])}},
            lineage=Lineage(dataset_revision=revision, datasets=roots, parent=parent_card,
                            note=note),
            sha256=sha256_file(tmp / GRAPH), lineside_version=__version__)
        write_card(tmp, card)
        runtime = AnomalyModel(load_package(tmp), device="cpu", threads=1)
        problems = parity_problems(graph, runtime, images, spec.threshold, cfg.score_topk)
        if problems:
            raise PackageError("export parity gate failed: ONNX and torch disagree:\n  "
                               + "\n  ".join(problems[:20]))
    return {"package": str(out), "kind": "anomaly", "parity_images": len(images),
            "sha256": card.sha256, "threshold": spec.threshold,
            "map_threshold": spec.map_threshold}
