"""Scores of letterboxed images through the torch model or an exported package: what
calibration, evaluation and the export's parity gate compare."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from lineside_training.anomaly.net import AnomalyGraph

TOP_PIXELS = 256  # per image, for the map threshold's quantile (only the top matters)

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 NCHW -> map, score


@dataclass
class Scored:
    scores: list[float] = field(default_factory=list)
    top_pixels: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)  # kept only when asked

    def add(self, amap: np.ndarray, score: np.ndarray, keep_maps: bool) -> None:
        for m, s in zip(amap, score, strict=True):
            self.scores.append(float(s))
            flat = m.ravel()
            k = min(TOP_PIXELS, flat.size)
            self.top_pixels.append(np.partition(flat, flat.size - k)[flat.size - k:])
            if keep_maps:
                self.maps.append(m[0])


def torch_forward(graph: AnomalyGraph, device: torch.device) -> Forward:
    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            amap, score = graph(torch.from_numpy(batch).to(device))
        return amap.cpu().numpy(), score.cpu().numpy()
    return run


def score_images(forward: Forward, images: Iterable[np.ndarray], *, batch: int = 4,
                 keep_maps: bool = False) -> Scored:
    """``images``: letterboxed RGB ``H, W, 3`` uint8 arrays."""
    out = Scored()
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            amap, score = forward(np.stack(pending).transpose(0, 3, 1, 2).copy())
            out.add(amap, score, keep_maps)
            pending.clear()

    for image in images:
        pending.append(image)
        if len(pending) == batch:
            flush()
    flush()
    return out
