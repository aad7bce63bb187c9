"""A torch ``Dataset`` over the canonical dataset form."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch
from torch import Tensor

from lineside_inspect.dataset import Dataset, ImageRecord
from lineside_inspect.errors import DatasetError, ReferenceImageError
from lineside_inspect.imageio import read_image
from lineside_inspect.opencv import cv2
from lineside_inspect.runtime.preprocess import letterbox
from lineside_inspect.runtime.reference import pair_image, with_difference


def read_reference(dataset: Dataset, rec: ImageRecord, image: np.ndarray) -> np.ndarray:
    """``rec``'s reference pixels; a good image without a reference is its own (nothing
    changed), so good parts stay usable as negatives for reference models."""
    path = dataset.reference_path(rec)
    return image if path is None else read_image(path)


class DetectionDataset(torch.utils.data.Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """Items are ``(image, target)``: image ``[3, S, S]`` uint8 RGB, target ``boxes``
    ``[N, 4]`` float32 (input pixels), ``labels`` ``[N]`` int64, ``index`` (record index).

    Good images (no boxes) are kept: they are the negatives. Decoded images are cached
    in memory because decoding would otherwise cost more than the training step.

    With ``reference`` the image is the pair input of
    :func:`lineside_inspect.runtime.reference.pair_image` (grey, reference grey,
    difference) instead of RGB; a good image without a reference of its own is its own
    reference (nothing changed), a defective one without a reference is an error.
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
        reference: bool = False,
    ) -> None:
        self.dataset = dataset
        self.records = records
        self.class_index = {n: i for i, n in enumerate(class_names)}
        self.size = size
        self.transform = transform
        self.cache: dict[int, np.ndarray] | None = {} if cache else None
        self.reference = reference
        if reference:
            missing = [r.file_name for r in records if r.reference is None and not r.is_good]
            if missing:
                raise DatasetError(
                    f"{len(missing)} defective image(s) have no reference, which a reference "
                    f"model needs (first: {missing[0]}); set their 'reference' field or train "
                    "without 'reference: true'")

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        rec = self.records[i]
        bgr = read_image(self.dataset.image_path(rec))
        if self.reference:
            try:
                image = pair_image(bgr, read_reference(self.dataset, rec, bgr))
            except ReferenceImageError as exc:
                raise DatasetError(f"{rec.file_name}: {exc.message}") from None
        else:
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self.cache is not None:
            self.cache[i] = image
        return image

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        rec = self.records[i]
        image = self.image(i)
        boxes = np.array([b.xyxy() for b in rec.boxes], dtype=np.float32).reshape(-1, 4)
        labels = np.array([self.class_index[b.label] for b in rec.boxes], dtype=np.int64)
        if self.transform is not None:
            out: dict[str, Any] = self.transform(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            if self.reference:  # augmentation changed frame and reference: recompute
                image = with_difference(np.array(image))
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
