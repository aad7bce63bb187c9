"""Detections: one validated container for boxes, in the manner of supervision's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Detections:
    """Detections of one image.

    ``xyxy`` ``[N, 4]`` float32 ``x1, y1, x2, y2`` in original image pixels; ``scores``
    ``[N]`` float32 in ``[0, 1]``; ``class_ids`` ``[N]`` int64 indexing ``class_names``.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        n = len(self.xyxy)
        if len(self.scores) != n or len(self.class_ids) != n:
            raise ValueError(f"expected {n} scores and class ids for {n} boxes, got "
                             f"{len(self.scores)} scores and {len(self.class_ids)} class ids")
        if n and self.class_names and (self.class_ids.min() < 0
                                       or self.class_ids.max() >= len(self.class_names)):
            raise ValueError(f"class ids must lie in 0..{len(self.class_names) - 1}, got "
                             f"{self.class_ids.min()}..{self.class_ids.max()}")

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls, class_names: list[str]) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), class_names)

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.class_ids]

    def __getitem__(self, index: np.ndarray | slice) -> Detections:
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index],
                          self.class_names)

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"label": label, "score": round(float(s), 4),
             "box": [round(float(v), 2) for v in box]}
            for label, s, box in zip(self.labels, self.scores, self.xyxy, strict=True)
        ]
