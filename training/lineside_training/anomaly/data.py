"""Good images in, training crops with synthetic anomalies out; held-out good images by
group for calibration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lineside_inspect.dataset import Dataset, ImageRecord, read_dataset
from lineside_inspect.errors import ConfigError, DatasetError, ImageError, Problem
from lineside_inspect.imageio import read_image
from lineside_inspect.opencv import cv2
from lineside_inspect.package import PAD_VALUE, sha256_file
from lineside_inspect.runtime.preprocess import Letterbox, letterbox
from lineside_training.anomaly.config import AnomalyConfig
from lineside_training.anomaly.synth import SynthSpec, add_anomalies, rephotograph
from lineside_training.engine import check_files, check_set

MIN_CALIB = 1  # calibration needs at least one held-out good image


def load_rgb(dataset: Dataset, rec: ImageRecord, size: int) -> tuple[np.ndarray, Letterbox]:
    """The record's pixels as the edge runtime feeds them: RGB, letterboxed to ``size``,
    with the letterbox (where the image is in them: the border is never scored)."""
    image = cv2.cvtColor(read_image(dataset.image_path(rec)), cv2.COLOR_BGR2RGB)
    return letterbox(image, size, pad_value=PAD_VALUE)


def load_all(name: str | Path, dataset: Dataset, records: list[ImageRecord],
             size: int) -> list[tuple[np.ndarray, Letterbox]]:
    """Every record's pixels and letterbox (:func:`load_rgb`), or, where some do not
    decode, one refusal naming each (a run stopped at the first, its folder made; session
    42)."""
    images, problems, merged = [], [], False
    for rec in records:
        try:
            images.append(load_rgb(dataset, rec, size))
        except ImageError as exc:
            # an image of a --merge set reads from its own set (``source``): named by its
            # path, or the refusal sent the user to validate the main set, which holds it not
            merged |= rec.source is not None
            where = str(rec.source) if rec.source is not None else (rec.origin or rec.file_name)
            problems.append(Problem(where, "", exc.message, rec.file_name))
    if problems:
        sets = f"{name} (and the --merge set each named by its path is in)" if merged else name
        raise DatasetError(f"{name}: {len(problems)} good image(s) that do not decode: nothing "
                           f"was trained; 'lineside data validate' on {sets} lists every "
                           "problem (import the set again with --skip-invalid to leave them "
                           "out)", problems)
    return images


def split_images(dataset: Dataset, split: str) -> list[ImageRecord]:
    """``dataset``'s images in ``split`` ("all": every image); a split with none is refused,
    naming the splits there are (a folder of good images imported alone has none)."""
    records = dataset.images if split == "all" else dataset.in_split(split)
    if records:
        return records
    name = dataset.root.name if dataset.root else "the dataset"
    if not dataset.images:  # (it said: give --split all, to one who had)
        raise DatasetError(f"{name}: the dataset has no images")
    have = sorted({r.split for r in dataset.images if r.split})
    raise DatasetError(f"{name}: split {split!r} has no images; "
                       + (f"its splits are {', '.join(have)} (or --split all)" if have
                          else "it has no splits: give --split all"))


def group_of(rec: ImageRecord) -> str:
    return rec.group or rec.file_name  # an image without a group is its own


def digests(dataset: Dataset, records: list[ImageRecord]) -> list[str]:
    """Each record's image sha256: what it is, whatever its path (a copy is the same)."""
    return [sha256_file(dataset.image_path(r)) for r in records]


def distinct(dataset: Dataset, records: list[ImageRecord],
             ) -> tuple[list[ImageRecord], list[str]]:
    """``records`` with each image once, by content (a copy is not another capture), and
    their digests."""
    kept: dict[str, ImageRecord] = {}
    for rec, digest in zip(records, digests(dataset, records), strict=True):
        kept.setdefault(digest, rec)
    return list(kept.values()), list(kept)


@dataclass
class GoodSplit:
    dataset: Dataset
    train: list[ImageRecord]
    calib: list[ImageRecord]
    calib_groups: list[str]
    train_sha256: list[str]  # by content, as train and calib: what the run saw
    calib_sha256: list[str]
    added: int = 0  # of train: from extra_data
    copies_left_out: list[str] = field(default_factory=list)  # of calibration images
    # what 'lineside data validate' warns of in the sets (copies within a split, images
    # annotations.json does not list): said in train.log, as a detector's run says them
    set_warnings: list[str] = field(default_factory=list)


def good_to_train(dataset: Dataset, split: str | None) -> list[ImageRecord]:
    """The good images a good-only run takes from ``dataset``: those of ``split``, else
    those of no split or train (val and test are someone's held-out sets: never trained
    or calibrated on)."""
    if split:
        return [r for r in dataset.in_split(split) if r.is_good]
    return [r for r in dataset.images if r.is_good and r.split in (None, "train")]


def carve(cfg: AnomalyConfig) -> GoodSplit:
    """The good images of ``cfg.data`` (optionally of one split), cut by group into
    training and calibration sets: calibration must see boards the model never saw, as
    the line will. ``extra_data``'s good images are added to training."""
    dataset = read_dataset(cfg.data)
    # the detector's checks before any time is spent (lineside data validate's that decode
    # no pixels): a good-only run trained on a set validate refuses, e.g. a picture
    # labelled good and, as a copy, defective (session 42)
    warnings = check_set(cfg.data, dataset)
    good = good_to_train(dataset, cfg.split)
    if not good:
        where = f"split {cfg.split!r} of {cfg.data}" if cfg.split else cfg.data
        held_out = "" if cfg.split else " of no split or train (val and test are held out)"
        raise ConfigError(f"{where}: no good images (images without boxes){held_out} to "
                          "train on")
    check_files(cfg.data, dataset, good, "the good images")
    groups = sorted({group_of(r) for r in good})
    if cfg.calib_groups:
        unknown = sorted(set(cfg.calib_groups) - set(groups))
        if unknown:
            raise ConfigError(f"calib_groups {unknown} have no good images in {cfg.data} "
                              "(--set calib_groups=[] holds out about 15% of its groups)")
        held = sorted(cfg.calib_groups)
    else:
        rng = np.random.default_rng(cfg.seed)
        n = max(MIN_CALIB, round(len(groups) * cfg.calib_fraction))
        held = sorted(rng.permutation(groups)[:n].tolist()) if len(groups) > 1 else []
    if held:
        calib = [r for r in good if group_of(r) in held]
        train = [r for r in good if group_of(r) not in held]
        if not train:
            raise ConfigError(f"{cfg.data}: every group is held out for calibration")
    else:  # one group only: hold out images instead
        order = rng.permutation(len(good))
        k = max(MIN_CALIB, round(len(good) * cfg.calib_fraction))
        calib = [good[i] for i in sorted(order[:k])]
        train = [good[i] for i in sorted(order[k:])]
        if not train:
            raise ConfigError(f"{cfg.data}: {len(good)} good image(s) cannot be split into "
                              "training and calibration")
    # each held-out image once, by content: copies of one capture counted as more
    # captures than there are, and hid the warning that they are too few to set the
    # threshold at the target (lineside calibrate counts them by content too)
    calib, calib_sha256 = distinct(dataset, calib)
    # a copy of a calibration image in another group (a folder copied into a new batch)
    # is not trained on: calibration must see parts the model never saw (review, 34)
    held_content = set(calib_sha256)
    pairs = list(zip(train, digests(dataset, train), strict=True))
    copied = [r.file_name for r, d in pairs if d in held_content]
    kept = [(r, d) for r, d in pairs if d not in held_content]
    if not kept:
        raise ConfigError(f"{cfg.data}: every training image is a copy of a calibration "
                          "image (the same pixels in two groups): nothing left to train on")
    train, train_sha256 = [r for r, _ in kept], [d for _, d in kept]
    extra, extra_sha256 = extra_good(cfg, held_content, warnings)
    return GoodSplit(dataset, train + extra, calib, held, train_sha256 + extra_sha256,
                     calib_sha256, len(extra), copied, warnings)


def extra_good(cfg: AnomalyConfig, held: set[str], warnings: list[str] | None = None,
               ) -> tuple[list[ImageRecord], list[str]]:
    """The good images of ``cfg.extra_data`` (of no split, or train: another split is
    someone's held-out set), each reading its pixels from its own dataset, each image once
    (by content: a set listed twice or a copy adds nothing twice), with their digests. A
    calibration image (``held``, by content too: a copied or re-imported set) is refused:
    calibration must not see trained parts. Each set is checked as the main one
    (:func:`lineside_training.engine.check_set`), its warnings added to ``warnings``."""
    pool: list[ImageRecord] = []
    came_from: dict[int, str] = {}
    for extra in cfg.extra_data:
        try:
            other = read_dataset(extra)
        except DatasetError as exc:
            raise ConfigError(f"extra_data (--merge) {extra}: {exc.message}") from None
        found = check_set(extra, other)
        if warnings is not None:
            warnings.extend(found)
        good = good_to_train(other, None)
        if not good:
            raise ConfigError(f"extra_data {extra}: no good images (without boxes) of no "
                              "split or train to add")
        check_files(extra, other, good, "the good images")
        for rec in good:
            rec.source = other.image_path(rec)  # read from its own set, whichever set reads
            came_from[id(rec)] = extra
        pool += good
    added, added_sha256 = distinct(Dataset([], []), pool)  # each reads from its source
    leaked = [r for r, d in zip(added, added_sha256, strict=True) if d in held]
    if leaked:
        extra = came_from[id(leaked[0])]
        count = sum(came_from[id(r)] == extra for r in leaked)
        raise ConfigError(f"extra_data {extra}: {count} of its images are held out for "
                          f"calibration (e.g. {leaked[0].file_name}): add only new images")
    return added, added_sha256


class CropSampler:
    """Random crops of the cached letterboxed training images, each with synthetic
    anomalies (label mask) and capture variation; flips and 90-degree turns too."""

    def __init__(self, images: list[np.ndarray], cfg: AnomalyConfig, seed: int) -> None:
        self.images, self.cfg = images, cfg
        self.rng = np.random.default_rng(seed)
        s = cfg.synth
        self.spec = SynthSpec(p_anomaly=s.p_anomaly, max_anomalies=s.max_anomalies,
                              min_size=s.min_size, max_size=max(s.min_size + 1, s.max_size),
                              weights=(s.texture, s.recolour, s.cutpaste, s.stroke),
                              visible=s.visible)

    def _crop(self, image: np.ndarray) -> np.ndarray:
        size = min(self.cfg.crop_size, *image.shape[:2])
        y = int(self.rng.integers(0, image.shape[0] - size + 1))
        x = int(self.rng.integers(0, image.shape[1] - size + 1))
        crop = image[y:y + size, x:x + size]
        crop = np.rot90(crop, int(self.rng.integers(4)))
        return np.ascontiguousarray(crop[:, ::-1] if self.rng.random() < 0.5 else crop)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.images)
        crop = self._crop(self.images[int(self.rng.integers(n))])
        foreign = self._crop(self.images[int(self.rng.integers(n))])
        crop, mask = add_anomalies(crop, foreign, self.rng, self.spec)
        return rephotograph(crop, self.rng, self.cfg.synth.rephotograph), mask

    def batch(self, size: int) -> tuple[Tensor, Tensor]:
        """``[B, 3, C, C]`` float in [0, 1] and ``[B, 1, C, C]`` masks."""
        items = [self.sample() for _ in range(size)]
        images = np.stack([i for i, _ in items]).transpose(0, 3, 1, 2)
        masks = np.stack([m for _, m in items])[:, None]
        return torch.from_numpy(images).float().div_(255), torch.from_numpy(masks)
