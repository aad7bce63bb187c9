"""``tools/bench_native.py``'s procedural set (``make bench-native``): mosaics of the
sample's boards at native scale, their boxes moved with them, the group split kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from lineside_inspect.dataset import read_dataset
from lineside_inspect.imageio import read_image

from .conftest import SAMPLE

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_native.py"


def test_the_mosaic_set_keeps_each_board_in_its_split_with_its_boxes(tmp_path: Path) -> None:
    """Every 640 px cell of a 1280 px frame is one board of the frame's own split, pixel
    for pixel, and the frame's boxes are exactly its boards' boxes moved by the cell's
    origin; defective boards make defective frames, good boards good ones."""
    spec = importlib.util.spec_from_file_location("bench_native", TOOL)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tool.build(SAMPLE, tmp_path / "set", cols=2, rows=2, repeats=1, seed=0)
    boards = read_dataset(SAMPLE)
    pixels = {r.file_name: read_image(boards.image_path(r)) for r in boards.images}
    made = read_dataset(out)
    # per split: 25 defective and 25 good boards in train, 10 and 10 in val, 4 a frame
    assert sorted((r.split, r.is_good) for r in made.images) == sorted(
        [("train", False)] * 6 + [("train", True)] * 6 + [("val", False)] * 2
        + [("val", True)] * 2)
    for frame in made.images:
        image = read_image(made.image_path(frame))
        assert image.shape == (1280, 1280, 3) and (frame.width, frame.height) == (1280, 1280)
        got = sorted((b.label, b.x1, b.y1, b.x2, b.y2) for b in frame.boxes)
        want = []
        for y in (0, 640):
            for x in (0, 640):
                cell = image[y:y + 640, x:x + 640]
                [board] = [r for r in boards.images if r.split == frame.split
                           and np.array_equal(pixels[r.file_name], cell)]
                assert board.is_good == frame.is_good
                want += [(b.label, b.x1 + x, b.y1 + y, b.x2 + x, b.y2 + y) for b in board.boxes]
        assert got == sorted(want)
