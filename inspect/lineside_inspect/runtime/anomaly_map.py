"""Good-only (anomaly) model outputs: anomaly map + image score -> finding.

A package of kind ``anomaly`` (see ``package.AnomalySpec``) is fed exactly like an RGB
detector (the same letterbox, so :class:`~lineside_inspect.runtime.detector.Detector`
runs it), but its graph answers ``anomaly_map`` ``[N, 1, S, S]`` and ``score`` ``[N]``,
both in [0, 1]. This module turns those into what the recipe judges: the image score
(the verdict: at or above the threshold the part fails) and the regions of the map
above ``map_threshold`` (the boxes a reviewer sees), mapped back through the letterbox
to the image as sent and labelled ``anomaly``.

The image score is formed inside the image only (:func:`image_score`): the letterbox
border is not the part, so it never fails it. Training's calibration and ``lineside
evaluate`` on a run score the same way, through the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lineside_inspect.errors import PackageError
from lineside_inspect.opencv import cv2
from lineside_inspect.package import ANOMALY_LABEL, AnomalySpec, ModelCard
from lineside_inspect.runtime.preprocess import Letterbox
from lineside_inspect.runtime.types import Detections


@dataclass(frozen=True)
class AnomalyFinding:
    """A good-only model's judgement of one image, before a recipe applies its rules."""

    score: float  # image score in [0, 1]
    threshold: float  # the card's calibrated image threshold
    regions: Detections  # label "anomaly", boxes in original pixels, score = region max
    model: str  # "name version", for messages
    # (width, height) of the image as sent: the box a fail reports when the map shows no
    # region (rules.judge), so a failed part always says where
    image_size: tuple[int, int] | None = None
    # the graph's own score over the whole map (letterbox border included), when ``score``
    # is another one: inside the image only (a frame not of the input's shape), or where
    # a recipe's regions look (``looked``); None: ``score`` is the graph's
    whole_score: float | None = None
    looked: bool = False  # ``score`` is the one where a recipe's regions look (:data:`Looks`)


# A recipe's regions as a good-only model's map is judged by: its ``roi`` and ``ignore``
# polygons (image pixels), as tuples so that the map mask each makes is cached
Points = tuple[tuple[float, float], ...]
Looks = tuple[tuple[Points, ...], tuple[Points, ...]]


def anomaly_spec(card: ModelCard) -> AnomalySpec:
    if card.kind != "anomaly" or card.anomaly is None:
        raise PackageError(f"model {card.name} {card.version} is a {card.kind}, not an anomaly model")
    return card.anomaly


def _safe(values: np.ndarray) -> np.ndarray:
    """Scores as float32 in [0, 1]; a value that is not finite (NaN, or -inf as much as
    +inf) is read as 1 (fully anomalous), so a broken graph fails parts rather than
    passing them (-inf was clipped to 0: a pass)."""
    return np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=1.0, posinf=1.0,
                                 neginf=1.0), 0.0, 1.0)


def _fills(shape: tuple[int, ...], lb: Letterbox) -> bool:
    """Whether the image fills the whole input (no border): a frame of the input's shape."""
    rows, cols = lb.inside
    return (rows.start, cols.start, rows.stop, cols.stop) == (0, 0, *shape[-2:])


def _content(shape: tuple[int, ...], lb: Letterbox) -> np.ndarray:
    """Where the letterboxed input shows the image (the border is not the part)."""
    content = np.zeros(shape, dtype=bool)
    content[lb.inside] = True
    return content


RASTER_EDGES = 256  # a polygon's edges drawn on the map at once


def _drawn(polygon: Points, lb: Letterbox, shape: tuple[int, int],
           ) -> tuple[slice, slice, np.ndarray]:
    """The map pixels whose centre, in image pixels, lies inside ``polygon``, by the
    even-odd rule ``rules._inside`` applies to a box's centre, within the polygon's
    bounding box on the map (the pixels outside it are outside the polygon): the rows,
    the columns and the mask there. Row by row, a pixel is inside when an odd number of
    the polygon's edges cross its row to its right.
    O(rows x edges + pixels of its box): drawn on the whole map, a recipe of a thousand
    small polygons took seconds and GB for each image size."""
    h, w = shape
    poly = np.asarray(polygon, dtype=np.float64)
    # map rows and columns whose centre may lie in the polygon (map = (image - shift) *
    # scale + pad; a centre is at index + 0.5), a pixel more either side
    ys = (poly[:, 1] - lb.shift_y) * lb.scale + lb.pad_y
    xs = (poly[:, 0] - lb.shift_x) * lb.scale + lb.pad_x
    r0, r1 = (int(np.clip(np.floor(v), 0, h)) for v in (ys.min() - 1, ys.max() + 1))
    c0, c1 = (int(np.clip(np.floor(v), 0, w)) for v in (xs.min() - 1, xs.max() + 1))
    ch = c1 - c0
    y = ((np.arange(r0, r1) + 0.5 - lb.pad_y) / lb.scale + lb.shift_y)[:, None]  # row centres
    right = np.zeros((r1 - r0, ch + 1), np.int64)  # crossings to a pixel's right, as differences
    # edges a few hundred at a time: a recipe's polygon may have thousands of points, and
    # rows x edges arrays of them all took hundreds of MB
    for start in range(0, len(poly), RASTER_EDGES):
        x1, y1 = poly[start:start + RASTER_EDGES, 0], poly[start:start + RASTER_EDGES, 1]
        ahead = np.roll(poly, -1, axis=0)[start:start + RASTER_EDGES]
        x2, y2 = ahead[:, 0], ahead[:, 1]
        crosses = (y1 <= y) != (y2 <= y)
        xc = (x2 - x1) * (y - y1) / np.where(y2 == y1, 1e-12, y2 - y1) + x1
        # pixel j (centre (j + 0.5 - pad_x) / scale + shift_x) lies left of xc for j < ends
        ends = (np.ceil((xc - lb.shift_x) * lb.scale + lb.pad_x - 0.5) - c0).clip(0, ch)
        rows = np.broadcast_to(np.arange(r1 - r0)[:, None], ends.shape)
        np.add.at(right, (rows[crosses], ends[crosses].astype(np.int64)), 1)
    inside = np.asarray(right[:, ::-1].cumsum(axis=1)[:, ::-1][:, 1:] % 2 == 1)
    return slice(r0, r1), slice(c0, c1), inside


@lru_cache(maxsize=16)
def _looked_at(looks: Looks, lb: Letterbox, shape: tuple[int, int]) -> np.ndarray:
    """The map pixels a recipe judges: in the image, in a ``roi`` polygon if it has any,
    in no ``ignore`` one. Cached: a camera sends one size, a recipe keeps its regions.
    Each polygon is drawn in its own box and added in place: a list of whole-map masks,
    one a polygon, took GB for a recipe of many."""
    roi, ignore = looks
    mask = _content(shape, lb)
    if roi:
        seen = np.zeros(shape, dtype=bool)
        for p in roi:
            rows, cols, inside = _drawn(p, lb, shape)
            seen[rows, cols] |= inside
        mask &= seen
    for p in ignore:
        rows, cols, inside = _drawn(p, lb, shape)
        mask[rows, cols] &= ~inside
    mask.setflags(write=False)  # shared by every call: nobody may change it
    return mask


def pooled_pixels(card: ModelCard) -> int:
    """How many of the map's highest pixels the graph's image score averages: lineside's
    export records it (the training config's ``score_topk``); 1 (the peak) for a graph
    that does not say, so a score judged in part of the map is never under its mean."""
    config = card.training.get("config")
    k = config.get("score_topk") if isinstance(config, dict) else None
    return k if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else 1


def _looked_score(amap: np.ndarray, judged: np.ndarray, k: int, whole: float) -> float:
    """The mean of the ``k`` highest pixels of ``amap`` where ``judged``; 0 for none (a
    recipe looking at none of the image finds nothing there). The pixels at half the
    whole map's score or more are tried first: they hold the ``k`` highest whenever
    there are ``k`` of them (most parts), and sorting them alone keeps this at a tenth
    of a millisecond on a 640 px map, where partitioning every pixel cost 0.4 ms."""
    values = amap[judged & (amap >= whole / 2)]
    if len(values) < k:
        values = amap[judged]
    if len(values) == 0:
        return 0.0
    cut = max(0, len(values) - k)
    return float(_safe(np.partition(values, cut)[cut:]).mean())


def image_score(anomaly_map: np.ndarray, score: float, lb: Letterbox, k: int) -> float:
    """The image score a part is judged by, from the graph's ``anomaly_map`` (``S x S``)
    and own ``score`` for an image letterboxed by ``lb``: the graph's score when the image
    fills the input (a frame of its shape: nothing more is done), else the mean of the
    ``k`` highest map pixels inside the image (``k``: :func:`pooled_pixels`, or the
    training config's ``score_topk``), never above the graph's own. The border is not the
    part: a 300x120 frame to a model trained on square images failed every time, 0.996
    from the grey padding while the image peaked at 0.56 (new-user review, session 50).
    The server (:func:`find_anomalies`), training's calibration and ``lineside evaluate``
    all score through this function, so a threshold is set on the score it judges."""
    if _fills(anomaly_map.shape, lb) or not np.isfinite(score):
        return float(score)  # (a broken graph's score is not made good by its map)
    return min(float(score), _looked_score(anomaly_map, _content(anomaly_map.shape, lb), k,
                                           float(score)))


def in_image(anomaly_map: np.ndarray, lb: Letterbox) -> np.ndarray:
    """The map's values inside the image (the letterbox border left out), flat: the
    pixels a region can be found in, which the map threshold is calibrated on."""
    if _fills(anomaly_map.shape, lb):
        return anomaly_map.ravel()
    return anomaly_map[_content(anomaly_map.shape, lb)]


def region_level(spec: AnomalySpec, threshold: float | None) -> float:
    """The map value above which pixels form regions: the card's ``map_threshold``, or the
    image threshold a part is judged at when a recipe sets one below it. Calibration keeps
    ``map_threshold`` at or under its own threshold so a failed part shows where (its top
    pixels average at least the threshold); a recipe's lower threshold failed parts whose
    pixels all stayed under ``map_threshold``, with no box (review, session 39)."""
    return spec.map_threshold if threshold is None else min(spec.map_threshold, threshold)


def regions(anomaly_map: np.ndarray, lb: Letterbox, spec: AnomalySpec, *,
            max_regions: int = 100, content: np.ndarray | None = None,
            threshold: float | None = None) -> Detections:
    """Connected regions (8-connected) of ``anomaly_map`` (``S x S``, in the letterboxed
    input) above :func:`region_level` and at least ``spec.min_region_px`` pixels, as
    boxes in the original image; the ``max_regions`` strongest are kept. ``content``: the
    map's :func:`_content`, when the caller has it already; ``threshold``: the image
    threshold the part is judged at, if a recipe sets one."""
    amap = _safe(anomaly_map)
    if content is None:
        content = _content(amap.shape, lb)
    mask = (amap > region_level(spec, threshold)) & content
    if not mask.any():
        return Detections.empty([ANOMALY_LABEL])
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    peak = np.zeros(n, dtype=np.float32)
    np.maximum.at(peak, np.asarray(labels, dtype=np.intp)[mask], amap[mask])
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= spec.min_region_px]
    keep = sorted(keep, key=lambda i: -peak[i])[:max_regions]
    if not keep:
        return Detections.empty([ANOMALY_LABEL])
    x, y = stats[keep, cv2.CC_STAT_LEFT], stats[keep, cv2.CC_STAT_TOP]
    w, h = stats[keep, cv2.CC_STAT_WIDTH], stats[keep, cv2.CC_STAT_HEIGHT]
    boxes = np.stack([x, y, x + w, y + h], axis=1).astype(np.float32)
    return Detections(lb.to_original(boxes), peak[keep], np.zeros(len(keep), np.int64),
                      [ANOMALY_LABEL])


def find_anomalies(outputs: list[np.ndarray], letterboxes: list[Letterbox],
                   card: ModelCard, threshold: float | None = None, *,
                   looks: Looks | None = None) -> list[AnomalyFinding]:
    """One finding per image from an anomaly graph's ``[anomaly_map, score]`` outputs;
    ``threshold``: the image threshold a recipe judges at, if it sets one (regions then
    start at it when it is under the card's ``map_threshold``); ``looks``: the recipe's
    regions, if it has any. With them, the score is the mean of the graph's pooled pixels
    (:func:`pooled_pixels`) where the recipe looks, never above the graph's own, and the
    regions are found there only: an anomaly in an ``ignore`` area (a label that varies,
    a fixture edge) failed the part, though the recipe said not to judge there. Without
    them, the score is :func:`image_score`: inside the image, the letterbox border left
    out (the graph's own for a frame of the input's shape)."""
    spec = anomaly_spec(card)
    maps, raw = outputs
    scores = _safe(raw).reshape(-1)
    broken = ~np.isfinite(np.asarray(raw, dtype=np.float32).reshape(-1))
    if maps.ndim != 4 or maps.shape[1] != 1 or len(maps) != len(letterboxes) \
            or len(scores) != len(letterboxes):
        raise PackageError(f"model {card.name} {card.version}: anomaly outputs of shapes "
                           f"{list(maps.shape)} and {list(scores.shape)} for {len(letterboxes)} images")
    model = f"{card.name} {card.version}"
    findings = []
    for i, lb in enumerate(letterboxes):
        score = whole = float(scores[i])
        shape = maps[i, 0].shape
        content = _content(shape, lb)  # once an image: the check and the regions
        judged = content if looks is None else _looked_at(looks, lb, (shape[0], shape[1]))
        if looks is not None:
            score = min(whole, _looked_score(maps[i, 0], judged, pooled_pixels(card), whole))
        else:  # inside the image: the graph's score counted the letterbox border
            score = image_score(maps[i, 0], whole, lb, pooled_pixels(card))
        if broken[i] or not np.isfinite(maps[i, 0][content]).all():
            # a graph's score or map broken where the part is: it cannot be trusted, and
            # the score in part of the map must not make it good (-inf or NaN passed parts)
            score = 1.0
        found = regions(maps[i, 0], lb, spec, content=judged, max_regions=card.max_detections,
                        threshold=threshold)
        findings.append(AnomalyFinding(score, spec.threshold, found, model,
                                       (lb.width, lb.height),
                                       None if score == whole and looks is None else whole,
                                       looks is not None))
    return findings
