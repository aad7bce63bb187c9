"""Lineage: which data a model was trained on, as one content hash.

A dataset revision is the sha256 over a canonical dataset's classes and, image by image
in name order, its file name, split, group, reference, boxes and the sha256 of its bytes;
several datasets (a training set and the sets merged into it) hash in the order given.
So the same images with the same labels give the same revision wherever they are copied,
and any changed pixel, box or split gives another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from lineside_inspect.dataset import Dataset, read_dataset
from lineside_inspect.package import ModelCard


def dataset_digest(dataset: Dataset) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"classes": dataset.categories}, sort_keys=True).encode())
    for rec in sorted(dataset.images, key=lambda r: r.file_name):
        pixels = hashlib.sha256(dataset.image_path(rec).read_bytes()).hexdigest()
        boxes = sorted([b.label, *(round(v, 3) for v in b.xyxy())] for b in rec.boxes)
        h.update(json.dumps([rec.file_name, rec.split, rec.group, rec.reference, boxes, pixels],
                            separators=(",", ":")).encode())
    return h.hexdigest()


def dataset_revision(roots: Sequence[str | Path]) -> str:
    """The revision of the datasets at ``roots`` taken together, in order."""
    h = hashlib.sha256()
    for root in roots:
        h.update(dataset_digest(read_dataset(root)).encode())
    return h.hexdigest()


def parent_of(card: ModelCard) -> dict[str, str]:
    """How a card names the model it came from."""
    return {"name": card.name, "version": card.version, "sha256": card.sha256}
