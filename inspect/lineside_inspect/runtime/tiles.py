"""Sliced (tiled) inference: a frame much larger than the model's input is cut into
overlapping tiles judged at native scale, and their boxes merged back into one frame.

A 2448x2048 camera frame letterboxed whole into a 640 input shrinks a defect ~3.5x below
the scale a model trained on 640 px images learned it at, so small ones are missed (a
model trained on such frames learned them letterboxed whole: training scales each image
as inference does, and its card tiles, if at all, at their size: ``lineside export
--tile``; a run trained with the config's ``tiling`` learned them at native scale, and its
card tiles by itself). A recipe's ``tiling`` cuts such a frame instead; a frame no larger
than the tile is judged whole, exactly as without it.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lineside_inspect.errors import ImageTooLargeError
from lineside_inspect.runtime.preprocess import Letterbox
from lineside_inspect.runtime.types import Detections

# forward passes one frame may cost: a huge frame (or a tiny tile) is refused, not run
# as thousands of passes (8 x 8 tiles of 640 px at 0.2 overlap cover 4224 px a side)
MAX_TILES = 64
MIN_TILE = 32
MAX_TILE = 4096
# two boxes of a class from different tiles are one defect when the smaller lies this
# much inside the other (intersection over the smaller area, SAHI's "IOS")
MERGE_IOS = 0.5
# a box within this many pixels of an inner tile edge was cut by that edge
EDGE_PX = 2.0
# the most boxes of one frame's tiles joined, highest scores first (lower ones are dropped:
# each tile gives up to the card's max_detections, and 64 tiles of a card allowing 5,000
# were 320,000 boxes, whose pairwise matrix of one class was terabytes; 6,400 boxes of
# one class, 64 tiles of the bundled card, took 2.6 s and 0.8 GB). At most MAX_DETECTIONS,
# so a tiled frame reports no more boxes than a fleet hub takes of a record.
MAX_JOINED = 4096
# rows of the pairwise comparison made at a time: memory ~ MATCH_ROWS x boxes of a class
MATCH_ROWS = 256


class Tiling(BaseModel):
    """Cut frames larger than ``tile`` pixels (either side) into ``tile x tile`` tiles
    overlapping by at least ``overlap`` of a tile, the last flush with the frame's edge."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    tile: int = Field(..., ge=MIN_TILE, le=MAX_TILE, strict=True, description=(
        "tile side in frame pixels; the model's input size judges tiles at native scale"))
    overlap: float = Field(0.2, ge=0, le=0.5, strict=True, description=(
        "least share of a tile its neighbour also covers, 0..0.5: a defect narrower "
        "than the overlap band is whole in at least one tile"))

    def __str__(self) -> str:  # as a config writes it, for messages
        return f"{{tile: {self.tile}, overlap: {self.overlap:g}}}"


def starts(length: int, tile: int, overlap: float) -> list[int]:
    """Where tiles start along a side of ``length`` px: evenly spread, the first at 0 and
    the last flush with the edge, neighbours overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    stride = tile * (1 - overlap)
    n = math.ceil((length - tile) / stride - 1e-9) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_origins(width: int, height: int, tiling: Tiling,
                 size: int | None = None) -> list[tuple[int, int]] | None:
    """The ``(x, y)`` top-left corner of each tile of a ``width x height`` frame, or None
    when the frame fits one tile (judged whole). Refuses a frame needing more than
    :data:`MAX_TILES` tiles (413, naming the sizes); ``size``, the model's input size,
    decides the advice: a larger tile only when the tile is below it (a tile larger than
    the input is shrunk below the scale the model learned, so the frame is to be cropped)."""
    if width <= tiling.tile and height <= tiling.tile:
        return None
    xs = starts(width, tiling.tile, tiling.overlap)
    ys = starts(height, tiling.tile, tiling.overlap)
    if len(xs) * len(ys) > MAX_TILES:
        bigger = "" if size is None or tiling.tile >= size else (
            f", or raise tiling.tile toward {size}, the model's input size")
        raise ImageTooLargeError(
            f"a {width}x{height} frame needs {len(xs)}x{len(ys)} tiles of the recipe's "
            f"tiling (tile {tiling.tile}, overlap {tiling.overlap:g}), at most {MAX_TILES}: "
            "crop the frame to the region inspected (or use a lower-resolution camera "
            f"mode){bigger}")
    return [(x, y) for y in ys for x in xs]


def merge_tiles(xyxy: np.ndarray, scores: np.ndarray, labels: np.ndarray, tile_of: np.ndarray,
                rects: np.ndarray) -> np.ndarray:
    """Join the boxes tiles found of one defect; returns the indices kept (``xyxy`` is
    updated in place: a kept box becomes the union of those joined into it).

    ``xyxy`` ``[N, 4]`` in frame pixels, ``tile_of`` ``[N]`` the tile each came from,
    ``rects`` ``[T, 4]`` each tile's frame rectangle. Greedy, highest score first, class by
    class: a box joins a kept one from another tile when the smaller lies at least
    :data:`MERGE_IOS` inside the other (the same defect seen twice in an overlap band,
    whole or cut), or when they touch and either was cut by an inner tile edge (a defect
    wider than the band, seen in parts). A kept box an inner tile edge cut becomes the
    union of the boxes joining it; one that was not stays as found (a whole defect: the
    boxes joining it are its duplicates or parts). Boxes are matched as found (a grown box
    does not match more). Only boxes that reach into another tile can be seen twice; the
    rest are kept as found, unexamined."""
    n = len(xyxy)
    if n == 0 or len(rects) < 2:
        return np.arange(n)
    # which boxes reach into (or touch) a tile other than their own
    reach = ((xyxy[:, None, 0] <= rects[None, :, 2]) & (xyxy[:, None, 2] >= rects[None, :, 0])
             & (xyxy[:, None, 1] <= rects[None, :, 3]) & (xyxy[:, None, 3] >= rects[None, :, 1]))
    reach[np.arange(n), tile_of] = False
    shared = reach.any(axis=1)
    own = rects[tile_of]
    frame = rects[:, 2:].max(axis=0)
    cut = (((xyxy[:, 0] <= own[:, 0] + EDGE_PX) & (own[:, 0] > 0))
           | ((xyxy[:, 1] <= own[:, 1] + EDGE_PX) & (own[:, 1] > 0))
           | ((xyxy[:, 2] >= own[:, 2] - EDGE_PX) & (own[:, 2] < frame[0]))
           | ((xyxy[:, 3] >= own[:, 3] - EDGE_PX) & (own[:, 3] < frame[1])))
    dropped = np.zeros(n, dtype=bool)
    candidates = np.flatnonzero(shared)
    for label in np.unique(labels[candidates]):
        m = candidates[labels[candidates] == label]
        m = m[np.argsort(-scores[m], kind="stable")]
        b = xyxy[m]  # a copy: boxes are matched as found, not as grown
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        c, t = cut[m], tile_of[m]
        gone = np.zeros(len(m), dtype=bool)
        match = np.zeros((0, 0), dtype=bool)
        for a in range(len(m)):  # highest score first: a box not yet joined is kept
            if a % MATCH_ROWS == 0:  # the next rows' matches with the boxes after them
                match = _matches(b, area, c, t, a, min(a + MATCH_ROWS, len(m)))
            if gone[a]:
                continue
            join = match[a % MATCH_ROWS, a + 1 - a // MATCH_ROWS * MATCH_ROWS:]
            join = np.flatnonzero(join & ~gone[a + 1:]) + a + 1
            if not len(join):
                continue
            gone[join] = True
            if c[a]:  # a part of the defect: grown to all that was seen of it
                i, sides = m[a], b[join]
                xyxy[i, :2] = np.minimum(xyxy[i, :2], sides[:, :2].min(axis=0))
                xyxy[i, 2:] = np.maximum(xyxy[i, 2:], sides[:, 2:].max(axis=0))
        dropped[m[gone]] = True
    return np.flatnonzero(~dropped)


def _matches(b: np.ndarray, area: np.ndarray, cut: np.ndarray, tile_of: np.ndarray,
             start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of one class's match matrix, against columns ``start:`` (the
    boxes ordered by score): the same defect (IOS at least :data:`MERGE_IOS`, or touching
    where either was cut by an inner tile edge), seen in different tiles."""
    r, o = b[start:stop], b[start:]
    w = np.minimum(r[:, None, 2], o[None, :, 2]) - np.maximum(r[:, None, 0], o[None, :, 0])
    h = np.minimum(r[:, None, 3], o[None, :, 3]) - np.maximum(r[:, None, 1], o[None, :, 1])
    ios = np.clip(w, 0, None) * np.clip(h, 0, None) / np.maximum(
        np.minimum(area[start:stop, None], area[None, start:]), 1e-6)
    return (((ios >= MERGE_IOS) | ((w >= 0) & (h >= 0)
                                   & (cut[start:stop, None] | cut[None, start:])))
            & (tile_of[start:stop, None] != tile_of[None, start:]))


def join_tiles(found: list[Detections], letterboxes: list[Letterbox]) -> list[Detections]:
    """The detections of each image of a batch whose rows are tiles (``found`` and
    ``letterboxes`` a row each, boxes already in frame pixels): each frame's tiles
    joined by :func:`merge_tiles`, highest score first; at most :data:`MAX_JOINED` boxes
    of a frame, its highest scores, are joined and reported."""
    result: list[Detections] = []
    for image in range(letterboxes[-1].of + 1):
        rows = [i for i, lb in enumerate(letterboxes) if lb.of == image]
        if len(rows) == 1 and letterboxes[rows[0]].origin is None:
            result.append(found[rows[0]])  # judged whole
            continue
        xyxy = np.concatenate([found[i].xyxy for i in rows])
        scores = np.concatenate([found[i].scores for i in rows])
        labels = np.concatenate([found[i].class_ids for i in rows])
        tile_of = np.repeat(np.arange(len(rows)), [len(found[i]) for i in rows])
        if len(scores) > MAX_JOINED:  # the highest scores (see MAX_JOINED)
            top = np.sort(np.argsort(-scores, kind="stable")[:MAX_JOINED])
            xyxy, scores, labels, tile_of = xyxy[top], scores[top], labels[top], tile_of[top]
        rects = np.array([[*(lb.origin or (0, 0)), *(lb.origin or (0, 0))]
                          for lb in (letterboxes[i] for i in rows)], dtype=np.float32)
        rects[:, 2] += [letterboxes[i].width for i in rows]
        rects[:, 3] += [letterboxes[i].height for i in rows]
        keep = merge_tiles(xyxy, scores, labels, tile_of, rects)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        result.append(Detections(xyxy[keep], scores[keep], labels[keep], found[rows[0]].class_names))
    return result
