"""Good-only (anomaly) models on the edge: a package of kind ``anomaly`` run with
onnxruntime behind the detector's seams (the same letterbox and session), judged through
``anomaly_map`` (its outputs -> :class:`AnomalyFinding`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lineside_inspect.package import ModelPackage
from lineside_inspect.runtime.anomaly_map import AnomalyFinding, anomaly_spec, find_anomalies
from lineside_inspect.runtime.detector import Detector

__all__ = ["AnomalyFinding", "AnomalyModel", "find_anomalies"]


class AnomalyModel(Detector):
    """An anomaly package behind the detector's seams (same letterbox and session), with
    :meth:`analyse` for the image score. Refuses a detector package."""

    def __init__(self, package: ModelPackage | str | Path, *, device: str = "auto",
                 threads: int | None = None, warmup: bool = True, spinning: bool = True) -> None:
        super().__init__(package, device=device, threads=threads, warmup=False,
                         spinning=spinning)
        anomaly_spec(self.card)
        if warmup:
            self.forward(np.zeros((1, 3, self.size, self.size), dtype=np.uint8))

    def analyse(self, images: list[np.ndarray]) -> list[AnomalyFinding]:
        """The finding for each BGR image (any size)."""
        batch, letterboxes = self.pre_process(images)
        return find_anomalies(self.forward(batch), letterboxes, self.card)
