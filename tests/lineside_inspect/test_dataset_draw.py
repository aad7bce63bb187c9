"""Annotated answers on small images (a 200 px surface-defect set): the verdict banner and
the labels scale with the image and stay inside it."""

from __future__ import annotations

import numpy as np
import pytest

from lineside_inspect.draw import RED, annotate
from lineside_inspect.runtime.types import Detections

NAMES = ["rolled-in_scale", "pit"]


def _drawn(size: int, box: tuple[float, float, float, float], verdict: str | None = None) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    return annotate(image, Detections(np.array([box]), np.array([0.93]), np.array([0]), NAMES), verdict)


def _ink(image: np.ndarray) -> int:
    return int((image.max(axis=2) > 0).sum())


@pytest.mark.parametrize(("edge", "middle"), [
    ((150, 120, 195, 160), (20, 120, 65, 160)),  # at the right edge: the label moves left
    ((10, 1, 190, 60), (10, 100, 190, 159)),  # at the top: the label goes inside the box
])
def test_labels_stay_whole_at_the_edges(edge: tuple, middle: tuple) -> None:
    """The same box and label drawn at the edge and in the middle leave the same ink: no
    letter is cut off by the border."""
    assert _ink(_drawn(200, edge)) == pytest.approx(_ink(_drawn(200, middle)), rel=0.03)


def test_banner_scales_with_the_image() -> None:
    small = _drawn(200, (100, 100, 150, 150), "fail")
    banner = np.all(small == RED, axis=2)
    rows, cols = np.nonzero(banner[:40, :120])
    height, width = rows.max() + 1, cols.max() + 1
    assert height * width < 0.03 * 200 * 200  # a corner, not a quarter of the frame
    assert height >= 12  # still readable
    white = np.nonzero(small.min(axis=2) > 200)
    assert white[0].max() < height and white[1].max() < width  # "FAIL" inside its banner
    big = _drawn(2000, (100, 100, 150, 150), "pass")
    green_rows = np.nonzero(np.all(big[:, :10] == (60, 180, 60), axis=2))[0]
    assert green_rows.max() + 1 >= 100  # legible on a large frame too
