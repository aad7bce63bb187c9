"""Annotated answers on small images (a 200 px surface-defect set): the verdict banner and
the labels scale with the image and stay inside it; on a large frame, labels of close
boxes do not cover one another."""

from __future__ import annotations

import numpy as np
import pytest

from lineside_inspect.draw import RED, _put, annotate, label_placements
from lineside_inspect.opencv import cv2
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


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Rectangles (x, y, w, h) sharing no pixel."""
    return a[0] + a[2] < b[0] or b[0] + b[2] < a[0] or a[1] + a[3] < b[1] or b[1] + b[3] < a[1]


def test_labels_of_close_boxes_do_not_cover_one_another() -> None:
    """Six 20-60 px boxes of two classes a few px apart on a 1600x1300 frame (and one under
    the banner): every box is drawn, each label is whole inside the image, on no other
    label nor the banner, highest score first; the annotated image is exactly those."""
    rows, cols = 1300, 1600
    xyxy = [(700, 600, 740, 640), (746, 604, 770, 660), (776, 598, 836, 630),
            (700, 646, 720, 666), (726, 668, 780, 700), (790, 636, 830, 690), (20, 100, 80, 160)]
    scores = [0.91, 0.88, 0.74, 0.95, 0.62, 0.55, 0.80]
    dets = Detections(np.array(xyxy), np.array(scores), np.array([0, 1, 1, 0, 0, 1, 0]), NAMES)
    placed = label_placements((rows, cols, 3), dets, "fail")
    rects = [(p.x, p.y, p.w, p.h) for p in placed]
    assert [p.index for p in placed] == sorted({p.index for p in placed}, key=lambda i: -scores[i])
    assert len(placed) >= 5 and 6 in [p.index for p in placed] and placed[0].text == "rolled-in_scale 0.95"
    assert all(0 <= x < cols - w and 0 <= y < rows - h for x, y, w, h in rects)
    assert all(_apart(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])
    image = np.zeros((rows, cols, 3), np.uint8)
    drawn = annotate(image, dets, "fail")
    banner = np.all(drawn == RED, axis=2)
    height, width = int(np.argmin(banner[:, 0])), int(np.argmin(banner[0]))  # the banner's
    assert 80 < height < 100 and 0 < width < 400
    assert all(_apart(r, (0, 0, width - 1, height - 1)) for r in rects)
    for x1, y1, x2, y2 in xyxy:  # every box drawn: its outline is red all round
        assert banner[y1:y2 + 1, x1].all() and banner[y1:y2 + 1, x2].all()
        assert banner[y1, x1:x2 + 1].all() and banner[y2, x1:x2 + 1].all()
    plain = annotate(image, dets)  # the same labels, written where placed
    expected = image.copy()
    for (x1, y1, x2, y2) in xyxy:
        cv2.rectangle(expected, (x1, y1), (x2, y2), RED, 3)
    for p in label_placements((rows, cols, 3), dets):
        _put(expected, p.text, p.x, p.y, 0.022 * rows, RED, 2)
    assert np.array_equal(plain, expected)
