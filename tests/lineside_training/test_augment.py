"""Every augmentation of the training config runs on images with several boxes, and
boxes stay inside the crop."""

from __future__ import annotations

import numpy as np

from lineside_training.config import AugmentConfig
from lineside_training.data.augment import train_transform


def test_all_augmentations_with_several_boxes() -> None:
    cfg = AugmentConfig(hflip=1, vflip=1, rot90=1, brightness_contrast=1, blur=1, noise=1,
                        scale_jitter=0.3, morphology=1)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (640, 640, 3), dtype=np.uint8)
    boxes = np.array([[100, 100, 140, 140], [300, 310, 350, 330], [500, 20, 560, 90]], np.float32)
    labels = np.array([0, 1, 2])
    for crop, size in ((320, 640), (None, 512)):
        t = train_transform(cfg, crop, size)
        kept = 0
        for _ in range(20):
            out = t(image=image, bboxes=boxes, labels=labels)
            side = crop or size
            assert out["image"].shape == (side, side, 3)
            b = np.asarray(out["bboxes"]).reshape(-1, 4)
            assert len(b) == len(out["labels"])
            assert (b >= 0).all() and (b <= side).all()
            kept += len(b)
        assert kept > 0


def test_reference_shift_moves_only_the_reference() -> None:
    from lineside_training.data.augment import shift_reference

    np.random.seed(3)
    pair = np.zeros((32, 32, 3), np.uint8)
    pair[10:20, 10:20, :2] = 255
    moved = [shift_reference(pair) for _ in range(30)]
    assert all((m[:, :, 0] == pair[:, :, 0]).all() and (m[:, :, 2] == 0).all() for m in moved)
    offsets = set()
    for m in moved:
        ys, xs = np.nonzero(m[:, :, 1])
        offsets.add((int(ys.min()) - 10, int(xs.min()) - 10))
        assert m[:, :, 1].sum() == pair[:, :, 1].sum()  # moved, not cut
    assert len(offsets) > 5 and all(abs(d) <= 2 for o in offsets for d in o)
    # only reference pipelines get it: an RGB image's green channel is left alone
    cfg = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness_contrast=0, blur=0, noise=0,
                        scale_jitter=0, reference_shift=1)
    names = [type(t).__name__ for t in train_transform(cfg, 32, 32, reference=True).transforms]
    assert names.count("Lambda") == 1
    assert "Lambda" not in [type(t).__name__ for t in train_transform(cfg, 32, 32).transforms]


def test_training_pads_as_an_exported_card_says() -> None:
    """Crops of small images and letterboxed ones are padded with the value the exported
    card declares (and the runtime then pads with), not a literal of their own."""
    from lineside_inspect.package import InputSpec

    pad = InputSpec(size=64).letterbox.pad_value
    off = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness_contrast=0, blur=0, noise=0,
                        scale_jitter=0)
    white = np.full((20, 40, 3), 255, np.uint8)
    for crop, size in ((64, 64), (None, 64)):
        out = train_transform(off, crop, size)(image=white, bboxes=np.zeros((0, 4), np.float32),
                                               labels=np.zeros(0, np.int64))["image"]
        assert set(np.unique(out)) == {pad, 255}, (crop, np.unique(out))


def test_noise_is_a_cameras_not_a_blizzard() -> None:
    """Sensor noise of a few grey levels: albumentations 2's default (sigma 51-112 on 0..255)
    buried faint defects under their boxes and cost the single-image recipe half its
    mAP@.5 in a 12-minute pair (docs/benchmarks.md)."""
    cfg = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness_contrast=0, blur=0, noise=1,
                        scale_jitter=0, morphology=0)
    t = train_transform(cfg, None, 128, seed=0)
    grey = np.full((128, 128, 3), 128, np.uint8)
    for _ in range(10):
        out = t(image=grey, bboxes=np.zeros((0, 4), np.float32), labels=np.zeros(0))["image"]
        sigma = out.astype(np.float64).std()
        assert 1.0 < sigma < 12.0, sigma  # noise there, of a camera's size
