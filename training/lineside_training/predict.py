"""Run a detector over dataset records, boxes mapped back to original pixels: the torch
model (training, evaluation) or an exported package through the edge runtime (export
parity, package evaluation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lineside_inspect.dataset import Dataset, ImageRecord
from lineside_inspect.imageio import read_image
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.preprocess import fit
from lineside_training.data.dataset import DetectionDataset, collate, read_reference


@dataclass
class Prediction:
    boxes: np.ndarray  # [K, 4] float32, original pixels
    scores: np.ndarray  # [K]
    labels: np.ndarray  # [K] int64 class index


@torch.no_grad()
def predict_records(
    model: nn.Module,
    dataset: Dataset,
    records: list[ImageRecord],
    class_names: list[str],
    *,
    size: int,
    device: torch.device,
    batch_size: int = 8,
    cache: DetectionDataset | None = None,
    reference: bool = False,
) -> list[Prediction]:
    """Predictions for each record, in order; ``reference`` for reference models."""
    ds = cache or DetectionDataset(dataset, records, class_names, size=size, cache=False,
                                   reference=reference)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    was_training = model.training
    model.eval()
    out: list[Prediction] = []
    for images, targets in loader:
        dets = model(images.to(device).float())
        for det, t in zip(dets, targets, strict=True):
            rec = records[int(t["index"])]
            lb = fit(rec.width, rec.height, size)
            boxes = lb.to_original(det["boxes"].float().cpu().numpy().reshape(-1, 4))
            out.append(Prediction(boxes, det["scores"].float().cpu().numpy(),
                                  det["labels"].cpu().numpy().astype(np.int64)))
    model.train(was_training)
    return out


def runtime_inputs(detector: Detector, dataset: Dataset, rec: ImageRecord,
                   ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """What the server would get for ``rec``: the image, and its reference for a reference
    model (a good image without one is its own)."""
    image = read_image(dataset.image_path(rec))
    if not detector.needs_reference:
        return [image], None
    return [image], [read_reference(dataset, rec, image)]


def runtime_predictions(detector: Detector, records: list[ImageRecord],
                        dataset: Dataset) -> list[Prediction]:
    out = []
    for rec in records:
        d = detector.predict(*runtime_inputs(detector, dataset, rec))[0]
        out.append(Prediction(d.xyxy, d.scores, d.class_ids))
    return out
