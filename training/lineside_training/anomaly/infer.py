"""Scores of letterboxed images through the torch model or an exported package: what
calibration, evaluation and the export's parity gate compare. Each image is scored as the
server judges it (:func:`lineside_inspect.runtime.anomaly_map.image_score`: inside the
image, the letterbox border left out), so a threshold is set on the score it judges."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lineside_inspect.runtime.anomaly_map import image_score, in_image
from lineside_inspect.runtime.preprocess import Letterbox
from lineside_training.anomaly.net import AnomalyGraph

TOP_PIXELS = 256  # per image, for the map threshold's quantile (only the top matters)

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 NCHW -> map, score


@dataclass
class Scored:
    scores: list[float] = field(default_factory=list)
    top_pixels: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)  # kept only when asked
    # each image's pixels inside the image (the map threshold's pixel rate is of these)
    pixels: list[int] = field(default_factory=list)

    @property
    def pixels_per_image(self) -> int:
        """The mean number of map pixels inside the image: the input's ``S x S`` for a set
        of its shape, fewer for frames with a letterbox border (a map threshold set with
        ``S x S`` let good pixels over it at ``S x S / inside`` times the rate asked)."""
        return max(1, round(float(np.mean(self.pixels)))) if self.pixels else 1

    def add(self, amap: np.ndarray, score: np.ndarray, letterboxes: Sequence[Letterbox],
            topk: int, keep_maps: bool = False) -> None:
        """The graph's ``[N, 1, S, S]`` maps and ``[N]`` scores of images letterboxed by
        ``letterboxes``; ``topk``: the pixels the graph's score averages."""
        for m, s, lb in zip(amap, score, letterboxes, strict=True):
            self.scores.append(image_score(m[0], float(s), lb, topk))
            flat = in_image(m[0], lb)  # a region is never found in the border
            self.pixels.append(flat.size)
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


def score_images(forward: Forward, images: Iterable[tuple[np.ndarray, Letterbox]], *,
                 topk: int, batch: int = 4, keep_maps: bool = False) -> Scored:
    """``images``: letterboxed RGB ``H, W, 3`` uint8 arrays, each with its letterbox (as
    ``preprocess.letterbox`` returns them); ``topk``: the config's ``score_topk``."""
    out = Scored()
    pending: list[tuple[np.ndarray, Letterbox]] = []

    def flush() -> None:
        if pending:
            amap, score = forward(np.stack([i for i, _ in pending]).transpose(0, 3, 1, 2).copy())
            out.add(amap, score, [lb for _, lb in pending], topk, keep_maps)
            pending.clear()

    for fitted in images:
        pending.append(fitted)
        if len(pending) == batch:
            flush()
    flush()
    return out
