"""The letterbox pad value comes from the model card (one default, PAD_VALUE, for cards
that do not say and for training), not from a literal in the runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lineside_inspect.errors import PackageError
from lineside_inspect.package import PAD_VALUE, load_package
from lineside_inspect.runtime.detector import Detector

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models" / "deeppcb" / "1"


def _package(tmp_path: Path, **letterbox: object) -> Path:
    pkg = tmp_path / "deeppcb" / "1"
    shutil.copytree(BUNDLED, pkg)
    card = json.loads((pkg / "model.json").read_text())
    if letterbox:
        card["input"]["letterbox"] = letterbox
    else:
        del card["input"]["letterbox"]
    (pkg / "model.json").write_text(json.dumps(card))
    return pkg


def _border(package: Path) -> tuple[list[int], list[int]]:
    """The top-left input pixel (letterbox border) and the centre one (image) of a wide
    white image."""
    batch, _ = Detector(package, device="cpu", warmup=False).pre_process(
        [np.full((100, 200, 3), 255, np.uint8)])
    size = batch.shape[-1]
    return batch[0, :, 0, 0].tolist(), batch[0, :, size // 2, size // 2].tolist()


def test_runtime_pads_with_the_cards_value(tmp_path: Path) -> None:
    assert _border(BUNDLED) == ([114] * 3, [255] * 3)
    assert _border(_package(tmp_path / "zero", pad_value=0, center=True)) == ([0] * 3, [255] * 3)


def test_a_card_without_letterbox_gets_the_default(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    assert PAD_VALUE == 114 and load_package(pkg).card.input.letterbox.pad_value == PAD_VALUE
    assert _border(pkg)[0] == [PAD_VALUE] * 3


@pytest.mark.parametrize("letterbox", [{"pad_value": 256}, {"pad_value": 114, "center": False},
                                       {"pad_value": 114, "colour": "red"}])
def test_a_letterbox_the_runtime_cannot_make_is_refused(tmp_path: Path,
                                                        letterbox: dict[str, object]) -> None:
    with pytest.raises(PackageError, match=r"input\.letterbox"):
        load_package(_package(tmp_path, **letterbox))


@pytest.mark.parametrize("shape", [(640, 640), (100, 200), (481, 333), (639, 640), (640, 639)])
def test_batch_holds_the_letterboxed_planes(shape: tuple[int, int]) -> None:
    """pre_process writes planes straight into the batch (OpenCV's split): RGB for a
    single-image model, (frame grey, reference grey, difference) for a reference model,
    the same pixels as a transposed copy of the letterboxed image. A frame a pixel short
    of the input size one way (its one-pixel border after it, none before) was returned
    unpadded and raised ValueError (adversarial review, session 50)."""
    from lineside_inspect.runtime.preprocess import letterbox
    from lineside_inspect.runtime.reference import pair_image

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    single = Detector(BUNDLED, device="cpu", warmup=False)
    batch, _ = single.pre_process([image, image[::-1].copy()])
    for i, img in enumerate([image, image[::-1]]):
        fitted, _ = letterbox(img, single.size, pad_value=114)
        assert np.array_equal(batch[i], fitted[:, :, ::-1].transpose(2, 0, 1))
    ref = Detector(BUNDLED.parent.parent / "deeppcb-ref" / "1", device="cpu", warmup=False)
    batch, _ = ref.pre_process([image], [reference])
    fitted, _ = letterbox(pair_image(image, reference), ref.size, pad_value=114)
    assert np.array_equal(batch[0], fitted.transpose(2, 0, 1))


@pytest.mark.parametrize("shape", [(640, 640), (640, 640, 1), (640, 640, 4), (300, 500)])
def test_grey_and_bgra_frames_are_taken_as_bgr(shape: tuple[int, ...]) -> None:
    """Some cameras deliver grey (GStreamer GRAY8) or BGRA frames: the detector takes them
    as the same BGR image (a 640x640 grey frame, already the input size, raised inside
    pre_process: a 500; found by the adversarial review)."""
    from lineside_inspect.opencv import cv2

    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    if len(shape) == 2 or shape[2] == 1:
        bgr = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    else:
        bgr = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    det = Detector(BUNDLED, device="cpu", warmup=False)
    got, _ = det.pre_process([frame])
    want, _ = det.pre_process([bgr])
    assert np.array_equal(got, want)


def test_a_detection_wholly_in_the_padding_is_dropped() -> None:
    """A box in the letterbox's padding was clipped to no area and kept: a defect nobody
    could see failed the part, and a confirm carrying it broke the fleet's review merge."""
    det = Detector(BUNDLED, device="cpu", warmup=False)
    _, (lb,) = det.pre_process([np.full((100, 200, 3), 255, np.uint8)])
    assert lb.pad_y > 10  # a wide image: padding above and below
    boxes = np.array([[[10, 1, 50, lb.pad_y - 2],  # wholly in the top padding
                       [10, lb.pad_y + 5, 50, lb.pad_y + 40],  # on the image
                       [0, 0, 0, 0]]], np.float32)  # a padding row
    scores = np.array([[0.9, 0.8, 0.0]], np.float32)
    labels = np.array([[0, 1, 0]], np.int64)
    (found,) = det.post_process([boxes, scores, labels], [lb])
    assert len(found) == 1 and found.scores.tolist() == pytest.approx([0.8])
    x1, y1, x2, y2 = found.xyxy[0]
    assert x2 > x1 and y2 > y1
