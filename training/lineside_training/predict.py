"""Run a torch detector over dataset records, boxes mapped back to original pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lineside_inspect.dataset import Dataset, ImageRecord
from lineside_inspect.runtime.preprocess import fit
from lineside_training.data.dataset import DetectionDataset, collate


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
