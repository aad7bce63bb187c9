"""Defect-level F by DeepPCB's own protocol (its ``evaluation/script.py``).

Each ground-truth box, in the order the labels list them, takes the first still unmatched
detection (highest score first) whose IoU with it is **above 0.33**; the two are then both
used up, and the pair counts as a match only if the classes agree. Precision is matches
over detections kept at the operating thresholds, recall matches over ground-truth boxes,
F their harmonic mean, all summed over the images before dividing (as the script does).

It differs from the COCO-style matching of :func:`lineside_training.quality.quality_metrics`
(IoU >= 0.5, the same class preferred) in two ways that matter for calibration: the
looser overlap accepts the slightly shifted boxes of small defects, and a detection of the
wrong class still *consumes* the ground truth, so a confused class costs both a miss and
a false alarm. Detections on good images are false alarms too (DeepPCB scores defective
images only; a line also sees good ones).

:class:`PairTable` holds what does not depend on the thresholds (each image's detections
sorted by score, the IoU test and the class agreement), so a calibration can score many
threshold vectors cheaply: an image's result depends only on which of its detections are
kept, and that is memoised per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lineside_inspect.boxes import iou_matrix
from lineside_inspect.dataset import ImageRecord
from lineside_training.predict import Prediction
from lineside_training.quality import keep_mask

IOU = 0.33  # DeepPCB evaluation/script.py's IOU_CONSTRAINT: a pair needs IoU strictly above it


@dataclass(frozen=True)
class PairCounts:
    """Matches, detections kept and ground-truth boxes, summed over images."""

    matched: int
    detections: int
    truths: int

    @property
    def precision(self) -> float | None:
        return self.matched / self.detections if self.detections else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.truths if self.truths else None

    @property
    def f(self) -> float:
        """Harmonic mean of precision and recall; 0 when either is undefined or zero."""
        den = self.detections + self.truths
        return 2 * self.matched / den if self.matched else 0.0

    def __add__(self, other: PairCounts) -> PairCounts:
        return PairCounts(self.matched + other.matched, self.detections + other.detections,
                          self.truths + other.truths)

    def as_dict(self) -> dict[str, float | int | None]:
        """The counts and rates for a report; F is undefined (None) without defects to find."""
        return {"precision": self.precision, "recall": self.recall,
                "f": self.f if self.truths else None,
                "matched": self.matched, "detections": self.detections,
                "truths": self.truths, "iou_above": IOU}


def match_pairs(overlap: np.ndarray, agree: np.ndarray) -> int:
    """Matches by the protocol: ``overlap`` ``[G, D]`` says IoU > 0.33, ``agree`` ``[G, D]``
    that the classes agree; ground truths in row order take the first free column."""
    taken = np.zeros(overlap.shape[1], dtype=bool)
    matched = 0
    for g in range(overlap.shape[0]):
        free = np.flatnonzero(overlap[g] & ~taken)
        if len(free):
            d = int(free[0])
            taken[d] = True
            matched += int(agree[g, d])
    return matched


class _Image:
    """One image's detections (score order), overlap and agreement with its ground truth."""

    def __init__(self, record: ImageRecord, pred: Prediction, index: dict[str, int],
                 agnostic_iou: float | None) -> None:
        order = np.argsort(-pred.scores, kind="stable")
        self.scores = pred.scores[order].astype(np.float32)
        self.labels = pred.labels[order].astype(np.int64)
        self.boxes = pred.boxes[order].astype(np.float32)
        self.agnostic_iou = agnostic_iou
        gt = np.array([b.xyxy() for b in record.boxes], dtype=np.float32).reshape(-1, 4)
        gt_labels = np.array([index[b.label] for b in record.boxes], dtype=np.int64)
        self.overlap = iou_matrix(gt, self.boxes) > IOU
        self.agree = gt_labels[:, None] == self.labels[None, :]
        self.truths = len(gt)
        self.memo: dict[bytes, int] = {}

    def counts(self, thresholds: np.ndarray) -> PairCounts:
        keep = keep_mask(self.boxes, self.scores, self.labels, thresholds, self.agnostic_iou)
        kept = int(keep.sum())
        if not self.truths or not kept:
            return PairCounts(0, kept, self.truths)
        key = np.packbits(keep).tobytes()
        matched = self.memo.get(key)
        if matched is None:
            matched = match_pairs(self.overlap[:, keep], self.agree[:, keep])
            self.memo[key] = matched
        return PairCounts(matched, kept, self.truths)


class PairTable:
    """Predictions on a labelled set, scored by the DeepPCB protocol at any thresholds
    (with ``agnostic_iou``, after the card's one-per-place rule, as the edge counts them)."""

    def __init__(self, records: list[ImageRecord], preds: list[Prediction],
                 class_names: list[str], agnostic_iou: float | None = None) -> None:
        index = {n: i for i, n in enumerate(class_names)}
        self.class_names = class_names
        self.images = [_Image(r, p, index, agnostic_iou)
                       for r, p in zip(records, preds, strict=True)]
        # every detection flat, for finding the images a threshold change touches
        self.owner = np.concatenate([np.full(len(im.scores), i) for i, im in enumerate(self.images)]
                                    or [np.zeros(0, np.int64)]).astype(np.int64)
        self.scores = np.concatenate([im.scores for im in self.images] or [np.zeros(0, np.float32)])
        self.labels = np.concatenate([im.labels for im in self.images] or [np.zeros(0, np.int64)])

    def counts(self, thresholds: np.ndarray) -> PairCounts:
        """Summed counts with per-class ``thresholds`` (a detection is kept at score >=)."""
        total = PairCounts(0, 0, 0)
        for image in self.images:
            total = total + image.counts(thresholds)
        return total

    def f(self, thresholds: np.ndarray) -> float:
        return self.counts(thresholds).f

    def sweep(self, trials: list[np.ndarray]) -> list[PairCounts]:
        """:meth:`counts` for each threshold vector in turn, re-scoring only the images
        with a detection whose kept/dropped state changed since the previous vector
        (a sweep in order changes few images per step)."""
        if not trials:
            return []
        current = np.asarray(trials[0], dtype=np.float32)
        per_image = [im.counts(current) for im in self.images]
        total = PairCounts(0, 0, 0)
        for c in per_image:
            total = total + c
        out = [total]
        for thr in trials[1:]:
            thr = np.asarray(thr, dtype=np.float32)
            flipped = (self.scores >= current[self.labels]) != (self.scores >= thr[self.labels])
            for i in np.unique(self.owner[flipped]):
                new = self.images[i].counts(thr)
                old = per_image[i]
                total = PairCounts(total.matched - old.matched + new.matched,
                                   total.detections - old.detections + new.detections,
                                   total.truths)
                per_image[i] = new
            current = thr
            out.append(total)
        return out


def pair_metrics(records: list[ImageRecord], preds: list[Prediction], class_names: list[str],
                 thresholds: dict[str, float], agnostic_iou: float | None = None,
                 ) -> dict[str, float | int | None]:
    """Precision, recall and F by the DeepPCB protocol at ``thresholds`` (per class)."""
    thr = np.array([thresholds[c] for c in class_names], dtype=np.float32)
    return PairTable(records, preds, class_names, agnostic_iou).counts(thr).as_dict()
