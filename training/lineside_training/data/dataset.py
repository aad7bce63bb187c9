"""A torch ``Dataset`` over the canonical dataset form."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch
from torch import Tensor

from lineside_inspect._cv import cv2
from lineside_inspect.dataset import Dataset, ImageRecord
from lineside_inspect.imageio import read_image
from lineside_inspect.runtime.preprocess import letterbox


class DetectionDataset(torch.utils.data.Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """Items are ``(image, target)``: image ``[3, S, S]`` uint8 RGB, target ``boxes``
    ``[N, 4]`` float32 (input pixels), ``labels`` ``[N]`` int64, ``index`` (record index).

    Good images (no boxes) are kept: they are the negatives. Decoded images are cached
    in memory because decoding would otherwise cost more than the training step.
    """

    def __init__(
        self,
        dataset: Dataset,
        records: list[ImageRecord],
        class_names: list[str],
        *,
        size: int,
        transform: A.Compose | None = None,
        cache: bool = True,
    ) -> None:
        self.dataset = dataset
        self.records = records
        self.class_index = {n: i for i, n in enumerate(class_names)}
        self.size = size
        self.transform = transform
        self.cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        rgb = cv2.cvtColor(read_image(self.dataset.image_path(self.records[i])), cv2.COLOR_BGR2RGB)
        if self.cache is not None:
            self.cache[i] = rgb
        return rgb

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        rec = self.records[i]
        image = self.image(i)
        boxes = np.array([b.xyxy() for b in rec.boxes], dtype=np.float32).reshape(-1, 4)
        labels = np.array([self.class_index[b.label] for b in rec.boxes], dtype=np.int64)
        if self.transform is not None:
            out: dict[str, Any] = self.transform(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64)
        else:
            image, lb = letterbox(image, self.size)
            boxes = lb.to_input(boxes)
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
             "index": torch.tensor(i)},
        )


def collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)
