"""Albumentations pipelines: box-aware, built from the training config."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

from lineside_inspect.opencv import cv2
from lineside_inspect.package import PAD_VALUE
from lineside_training.config import AugmentConfig


def morph(image: np.ndarray, **_: Any) -> np.ndarray:
    """Erode or dilate by a 2-3 px square: thicker or thinner traces, as between boards."""
    size = int(np.random.randint(2, 4))
    kernel = np.ones((size, size), np.uint8)
    op = cv2.erode if np.random.rand() < 0.5 else cv2.dilate
    return np.asarray(op(image, kernel))


def shift_reference(image: np.ndarray, **_: Any) -> np.ndarray:
    """Move channel 1 (a pair image's reference) by -2..2 px in x and y; the difference
    channel is recomputed afterwards by the dataset."""
    dx, dy = (int(v) for v in np.random.randint(-2, 3, size=2))
    out = np.array(image)
    h, w = image.shape[:2]
    m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    # replicate the border: wrapping around would invent a difference along the edges
    out[:, :, 1] = cv2.warpAffine(np.ascontiguousarray(image[:, :, 1]), m, (w, h),
                                  borderMode=cv2.BORDER_REPLICATE)
    return out


# a camera's read and shot noise: sigma 2.5-10 grey levels (a fraction of 255).
# albumentations 2's default (0.2-0.44: sigma 51-112) buries faint defects in noise while
# their boxes stay, teaching the model to find defects in plain texture
SENSOR_NOISE_STD = (0.01, 0.04)


class ScaleAsInference(A.LongestMaxSize):
    """Scale an image as inference scales it: longer side to ``max_size`` (the edge's
    letterbox), or with ``native`` an image larger than ``max_size`` (the tile) not at
    all: the edge judges such a frame as tiles at its own scale
    (:mod:`lineside_inspect.runtime.tiles`)."""

    def __init__(self, size: int, *, native: bool = False) -> None:
        # INTER_AREA when shrinking, as the edge letterbox does (linear when enlarging)
        super().__init__(size, area_for_downscale="image")
        self.native = native

    def get_params_dependent_on_data(self, params: dict[str, Any],
                                     data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        if self.native and max(h, w) > self.max_size:  # type: ignore[operator]
            return {"scale": 1.0}
        return super().get_params_dependent_on_data(params, data)


def train_transform(cfg: AugmentConfig, crop: int | None, size: int,
                    seed: int | None = None, reference: bool = False,
                    native: bool = False) -> A.Compose:
    """Random crop (tiles of the image at ``size``, so a small defect keeps the pixels it
    has at inference), flips, 90° rotations, photometric changes and scale jitter.
    Without ``crop`` the image is letterboxed to ``size``. Either way the image is first
    scaled as inference scales it (longer side to ``size``): crops of a 2000 px image at
    its own scale would teach defects several times larger than the model then sees.
    ``native`` (a config's ``tiling``, ``size`` its tile): inference judges an image
    larger than the tile as tiles at its own scale, so such an image is not scaled and
    the crops (``crop``, else tile-sized windows) are cut from it as it is; a smaller
    one is letterboxed to the tile as without it.
    ``reference``: the images are pair images (frame, reference, difference), which may
    get registration jitter."""
    ops: list[A.BasicTransform] = [ScaleAsInference(size, native=native)]
    crop = crop or (size if native else None)  # native: whole means a tile's window
    if cfg.scale_jitter > 0:
        j = cfg.scale_jitter
        ops.append(A.Affine(scale=(1 - j, 1 + j), fill=PAD_VALUE, p=0.3))
    if crop:
        ops += [A.PadIfNeeded(crop, crop, border_mode=0, fill=PAD_VALUE), A.RandomCrop(crop, crop)]
    else:
        ops.append(A.PadIfNeeded(size, size, border_mode=0, fill=PAD_VALUE))
    if cfg.morphology > 0:
        # image only: albumentations' Morphological also reshapes boxes and fails on several
        ops.append(A.Lambda(image=morph, p=cfg.morphology))  # np.random: seeded by the engine
    if reference and cfg.reference_shift > 0:
        ops.append(A.Lambda(image=shift_reference, p=cfg.reference_shift))
    ops += [
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        A.RandomRotate90(p=cfg.rot90),
        A.RandomBrightnessContrast(p=cfg.brightness_contrast),
        A.GaussianBlur(blur_limit=(3, 3), p=cfg.blur),
        A.GaussNoise(std_range=SENSOR_NOISE_STD, p=cfg.noise),
    ]
    return A.Compose(
        ops,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                 min_visibility=0.4, clip=True),
        seed=seed,  # albumentations keeps its own random state: seed it for repeatable runs
    )
