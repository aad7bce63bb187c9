"""The input size comes from the data unless the config sets it, and training crops see
defects at the scale inference sees them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineside_inspect.dataset import Box, Dataset, ImageRecord, write_dataset
from lineside_inspect.opencv import cv2
from lineside_training import commands
from lineside_training.config import AugmentConfig, input_size_for, load_config
from lineside_training.data.augment import train_transform

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "training" / "configs" / "single-default.yaml"
GOOD_RECIPE = ROOT / "training" / "configs" / "good-default.yaml"


@pytest.fixture(scope="module")
def small_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 200 x 200 grey images with a box each, as steel-surface sets ship them."""
    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    records = []
    for i in range(4):
        path = src / f"s{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
        records.append(ImageRecord(f"s{i}.png", 200, 200, [Box(20, 30, 180, 60, "scratch")],
                                   split="train" if i else "val", source=path))
    dst = tmp_path_factory.mktemp("set") / "data"
    write_dataset(Dataset(["scratch"], records), dst)
    return dst


def test_small_images_train_at_a_small_size(small_images: Path) -> None:
    cfg = load_config(None, None, data=str(small_images))
    assert (cfg.input_size, cfg.crop_size) == (224, None)  # not 640; a 320 crop is no crop
    assert load_config(None, ["input_size=auto"], data=str(small_images)).input_size == 224
    # the general recipe leaves the size out, so it is chosen there too
    recipe = commands.load_config(RECIPE, None, data=str(small_images))
    assert (recipe.input_size, recipe.crop_size) == (224, None)
    # a size the config sets wins, and keeps its crop
    fixed = load_config(None, ["input_size=320", "crop_size=256"], data=str(small_images))
    assert (fixed.input_size, fixed.crop_size) == (320, 256)
    # a set size with the recipe's 320 px crop: whole images, not 224 px ones padded to 320
    for crop in (224, 320):
        wide = commands.load_config(RECIPE, ["input_size=224", f"crop_size={crop}"],
                                    data=str(small_images))
        assert (wide.input_size, wide.crop_size) == (224, None)


def test_the_good_only_recipe_chooses_its_size_from_the_data_too(small_images: Path) -> None:
    good = commands.load_config(GOOD_RECIPE, None, data=str(small_images))
    assert good.kind == "anomaly" and good.input_size == 224
    assert commands.load_config(GOOD_RECIPE, ["input_size=auto"],
                                data=str(small_images)).input_size == 224
    # a size the config sets wins, as the DeepPCB good-only recipe's 640
    assert commands.load_config(GOOD_RECIPE, ["input_size=320"],
                                data=str(small_images)).input_size == 320
    # crops no larger than the input: small images are cropped whole, and the config says so
    small = commands.load_config(GOOD_RECIPE, ["input_size=96"], data=str(small_images))
    assert (small.input_size, small.crop_size) == (96, 96)
    pcb = commands.load_config(ROOT / "training" / "configs" / "deeppcb-goodonly.yaml", None,
                               data=str(small_images))
    assert pcb.input_size == 640


def test_input_size_rule() -> None:
    assert input_size_for([200, 200, 210]) == 224
    assert input_size_for([640] * 3) == 640
    assert input_size_for([2448, 2048, 2448]) == 640  # capped: crops keep the detail
    assert input_size_for([24, 40]) == 64


def test_crops_are_taken_at_the_inference_scale() -> None:
    """A 1280 px image is letterboxed to 640 at inference, so a 128 px defect is 64 px
    there; a training crop must show it at 64 px too, not at the image's own scale."""
    off = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness_contrast=0, blur=0, noise=0,
                        scale_jitter=0)
    image = np.zeros((1280, 1280, 3), np.uint8)
    boxes = np.array([[600, 600, 728, 664]], np.float32)
    t = train_transform(off, 640, 640, seed=0)
    out = t(image=image, bboxes=boxes, labels=np.array([0]))
    (x1, y1, x2, y2), = np.asarray(out["bboxes"])
    assert out["image"].shape == (640, 640, 3)
    assert (x2 - x1, y2 - y1) == pytest.approx((64, 32), abs=0.5)
