"""The rules engine: detections + recipe -> verdict with reasons. Pure functions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lineside_inspect.boxes import one_per_place
from lineside_inspect.package import ANOMALY_LABEL
from lineside_inspect.recipes.schema import Polygon, Recipe
from lineside_inspect.runtime.anomaly_map import AnomalyFinding, Looks
from lineside_inspect.runtime.reference import BLANK_CONTRAST, contrast
from lineside_inspect.runtime.types import Detections
from lineside_inspect.runtime.unchanged import MISMATCH_SHARE, ViewMismatch
from lineside_inspect.schemas import Outcome, Reason

if TYPE_CHECKING:
    from lineside_inspect.references import Reference


@dataclass
class Verdict:
    """A recipe's judgement of one image: ``outcome`` with the ``reasons`` for a fail and
    the ``defects`` the recipe counted (never None: empty when there are none)."""

    outcome: Outcome
    defects: Detections
    reasons: list[Reason] = field(default_factory=list)


def _inside(points: np.ndarray, polygon: Polygon) -> np.ndarray:
    """Even-odd point-in-polygon for ``[N, 2]`` points."""
    poly = np.asarray(polygon, dtype=np.float64)
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    crosses = ((y1 <= y) != (y2 <= y)) & (
        x < (x2 - x1) * (y - y1) / np.where(y2 == y1, 1e-12, y2 - y1) + x1
    )
    return np.asarray(crosses.sum(axis=1) % 2 == 1)


def counted(detections: Detections, recipe: Recipe, thresholds: dict[str, float],
            agnostic_iou: float | None = None) -> Detections:
    """The detections the recipe counts as defects (score, size, regions; with the card's
    ``agnostic_iou``, one per place: see :func:`lineside_inspect.boxes.one_per_place`)."""
    if len(detections) == 0:
        return detections
    mins = class_minimums(recipe, thresholds, detections.class_names)[detections.class_ids]
    placed = _placed(detections[detections.scores >= mins], recipe)
    if agnostic_iou is None or len(placed) < 2:
        return placed
    return placed[one_per_place(placed.xyxy, placed.scores, agnostic_iou,
                                fails_alone(recipe, placed.class_names)[placed.class_ids])]


def fails_alone(recipe: Recipe, class_names: list[str]) -> np.ndarray:
    """Which classes fail a part with one box (critical, or none allowed), by class id. Only
    such a box may hide another at its place: the part fails either way, so the
    one-per-place rule clears the defect list but never turns a fail into a pass."""
    return np.array([n in recipe.critical or recipe.max_count.get(n, 0) == 0
                     for n in class_names], dtype=bool)


def class_minimums(recipe: Recipe, thresholds: dict[str, float],
                   class_names: list[str]) -> np.ndarray:
    """The score each class needs to count, indexed by class id: the recipe's own for the
    class, else its ``default_min_score``, else the card's calibrated threshold (0.5 for a
    class the card has none for). One per class, not per box: this runs on every inspection."""
    floor = recipe.default_min_score
    return np.array([recipe.min_score.get(n, thresholds.get(n, 0.5) if floor is None else floor)
                     for n in class_names], dtype=np.float64)


def _placed(detections: Detections, recipe: Recipe) -> Detections:
    """The boxes the recipe's size and regions keep (size, region of interest, ignore)."""
    if len(detections) == 0:
        return detections
    keep = np.ones(len(detections), dtype=bool)
    sides = np.maximum(detections.xyxy[:, 2] - detections.xyxy[:, 0],
                       detections.xyxy[:, 3] - detections.xyxy[:, 1])
    keep &= sides >= recipe.min_size()
    centres = (detections.xyxy[:, :2] + detections.xyxy[:, 2:]) / 2
    if recipe.roi:
        keep &= np.any([_inside(centres, p) for p in recipe.roi], axis=0)
    for p in recipe.ignore:
        keep &= ~_inside(centres, p)
    return detections[keep]


def roi_outside(recipe: Recipe, width: int, height: int) -> str | None:
    """Why ``recipe`` cannot judge a ``width`` x ``height`` frame, or None: its regions of
    interest all lie outside the frame (each polygon's bounds miss it), so no box centre,
    which lies on the frame, can count, and every part passed. A roi drawn for another
    camera's frame size (a 5 MP station's figures on a 640 px frame) or another product's
    fixture passed every defective board with ``"reasons": []`` (session 54)."""
    if not roi_misses(recipe, width, height):
        return None
    return (f"recipe {recipe.name} version {recipe.version}: its roi ({roi_span(recipe)}) lies "
            f"wholly outside the {width}x{height} frame, so no defect could count and every "
            "part would pass: draw the roi in this camera's frame pixels (0..width, 0..height)")


def roi_misses(recipe: Recipe, width: int, height: int) -> bool:
    """``recipe`` has a roi and each of its polygons' bounds miss a ``width`` x ``height``
    frame (:func:`roi_outside`)."""
    if not recipe.roi:
        return False
    for polygon in recipe.roi:
        xs, ys = [x for x, _ in polygon], [y for _, y in polygon]
        if min(xs) < width and max(xs) > 0 and min(ys) < height and max(ys) > 0:
            return False
    return True


def roi_span(recipe: Recipe) -> str:
    """Where ``recipe``'s roi polygons lie, all together: ``x 5000..6000, y 5000..6000``."""
    xs = [x for p in recipe.roi or [] for x, _ in p]
    ys = [y for p in recipe.roi or [] for _, y in p]
    return f"x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}"


def looks(recipe: Recipe) -> Looks | None:
    """Where the recipe judges a good-only model's map (its ``roi`` and ``ignore``
    polygons), or None when it judges all of it."""
    if not recipe.roi and not recipe.ignore:
        return None
    return (tuple(tuple(p) for p in recipe.roi), tuple(tuple(p) for p in recipe.ignore))


COVER_GRID = 256  # cells a side, at most: a region's coverage measured on a grid


def _covered_share(region: np.ndarray, rects: np.ndarray) -> float:
    """The share of ``region`` (x1 y1 x2 y2) the union of ``rects`` (N x 4) covers: the
    cells of a grid over it (COVER_GRID along its longer side) whose centre one of them
    holds, two rectangles on one place counted once. O(N + grid): an exact union
    of rectangles' edges took 1 s and 560 MB for 400 boxes (review, session 34)."""
    x1, y1, x2, y2 = (float(v) for v in region)
    w, h = x2 - x1, y2 - y1
    if not (w > 0 and h > 0) or len(rects) == 0:
        return 0.0
    # COVER_GRID cells along the longer side whatever the region's size: a pixel a cell
    # misjudged a 3x3 px region by a third (review, session 34)
    side = max(w, h)
    gw, gh = max(1, round(COVER_GRID * w / side)), max(1, round(COVER_GRID * h / side))
    # the cells whose centre (i + 0.5) lies inside each rectangle: [first, end)
    first_x = np.ceil((rects[:, 0] - x1) / w * gw - 0.5).clip(0, gw).astype(np.int64)
    end_x = (np.floor((rects[:, 2] - x1) / w * gw - 0.5) + 1).clip(0, gw).astype(np.int64)
    first_y = np.ceil((rects[:, 1] - y1) / h * gh - 0.5).clip(0, gh).astype(np.int64)
    end_y = (np.floor((rects[:, 3] - y1) / h * gh - 0.5) + 1).clip(0, gh).astype(np.int64)
    keep = (end_x > first_x) & (end_y > first_y)
    diff = np.zeros((gh + 1, gw + 1), np.int64)
    for ys, xs, sign in ((first_y, first_x, 1), (first_y, end_x, -1), (end_y, first_x, -1),
                         (end_y, end_x, 1)):
        np.add.at(diff, (ys[keep], xs[keep]), sign)
    held = diff.cumsum(axis=0).cumsum(axis=1)[:gh, :gw] > 0
    return float(held.mean())


def _covered(regions: Detections, defects: Detections, share: float = 0.5) -> np.ndarray:
    """Which regions the defect boxes cover by at least ``share`` of the region's own area
    (the union of their overlaps: two classes boxing one place count once): the
    detector's boxes, with their class, already report that place. A share of the
    smaller box let a 7x10 px box inside a 60x30 stain swallow the stain, whose extent
    reviewers and `data pull` then never saw (review, session 34)."""
    out = np.zeros(len(regions), dtype=bool)
    if len(regions) == 0 or len(defects) == 0:
        return out
    boxes = defects.xyxy.astype(np.float64)
    for i, r in enumerate(regions.xyxy.astype(np.float64)):
        touching = boxes[(boxes[:, 2] > r[0]) & (boxes[:, 0] < r[2])
                         & (boxes[:, 3] > r[1]) & (boxes[:, 1] < r[3])]
        out[i] = _covered_share(r, touching) >= share
    return out


def _joined(defects: Detections, regions: Detections) -> Detections:
    """Defects and anomaly regions in one list, the class names extended by ``anomaly``."""
    names = list(defects.class_names)
    if ANOMALY_LABEL not in names:
        names.append(ANOMALY_LABEL)
    ids = np.full(len(regions), names.index(ANOMALY_LABEL), dtype=np.int64)
    return Detections(np.concatenate([defects.xyxy, regions.xyxy]),
                      np.concatenate([defects.scores, regions.scores]),
                      np.concatenate([defects.class_ids, ids]), names)


def anomaly_threshold(recipe: Recipe, finding: AnomalyFinding) -> float:
    """The recipe's image-score threshold if it sets one, else the card's calibrated one."""
    rule = recipe.anomaly
    return finding.threshold if rule is None or rule.threshold is None else rule.threshold


def judge(detections: Detections, recipe: Recipe, thresholds: dict[str, float],
          anomaly: AnomalyFinding | None = None, *, agnostic_iou: float | None = None,
          ) -> Verdict:
    """Apply ``recipe`` to ``detections`` (``thresholds``: the model card's per-class
    calibrated scores, used where the recipe sets none; ``agnostic_iou``: the card's
    one-per-place overlap, if it sets one) and, if given, to a good-only
    model's ``anomaly`` finding: at or above its threshold the part fails, and its regions
    in the recipe's regions of interest that no counted defect covers are reported as
    ``anomaly``. A recipe with regions has the finding's score and regions made where it
    looks (``find_anomalies(looks=...)``), so an anomaly it ignores fails no part."""
    verdict = _judge_defects(detections, recipe, thresholds, agnostic_iou)
    if anomaly is None:
        return verdict
    threshold = anomaly_threshold(recipe, anomaly)
    if anomaly.score < threshold:
        return verdict
    placed = _placed(anomaly.regions, recipe)
    regions = placed[~_covered(placed, verdict.defects)]
    where = f"{len(regions)} region(s)"
    if len(placed) > len(regions):  # "0 region(s)" of a fused fail said nowhere (session 50)
        where += (f", {len(placed) - len(regions)} on the detector's defect boxes (left to "
                  "their class)")
    if len(anomaly.regions) > len(placed):
        where += (f", {len(anomaly.regions) - len(placed)} left out by the recipe's "
                  "regions or minimum size")
    if len(anomaly.regions) == 0 and len(verdict.defects) == 0 and anomaly.image_size:
        # the map shows no region (all under min_region_px):
        # the whole image is where, rather than a fail that shows nothing (review, session 39)
        w, h = anomaly.image_size
        regions = Detections(np.array([[0, 0, w, h]], np.float32),
                             np.array([anomaly.score], np.float32), np.zeros(1, np.int64),
                             [ANOMALY_LABEL])
        where = "no region in the map: the whole image is reported"
    verdict.reasons.append(Reason(
        rule="anomaly", label=ANOMALY_LABEL, count=len(regions), allowed=0,
        score=round(anomaly.score, 4), threshold=round(threshold, 4),
        message=f"anomaly score {anomaly.score:.3f}{_judged_where(anomaly)} >= threshold "
                f"{threshold:.3f} (model {anomaly.model}), {where}"))
    return Verdict("fail", _joined(verdict.defects, regions), verdict.reasons)


def _judged_where(anomaly: AnomalyFinding) -> str:
    """Says the score is the one where the recipe's regions look, or inside the image (the
    letterbox border left out), when it is."""
    if anomaly.looked:
        return " in the recipe's regions"
    return "" if anomaly.whole_score is None else " inside the image"


def with_reference_mismatch(verdict: Verdict, mismatch: ViewMismatch | None) -> Verdict:
    """``verdict`` failed for a frame unlike its golden image nearly everywhere
    (:class:`ViewMismatch`), whatever the detector found."""
    if mismatch is None:
        return verdict
    allowed = int(MISMATCH_SHARE * mismatch.tiles)
    reason = Reason(rule="reference_mismatch", label="reference", count=mismatch.changed_tiles,
                    allowed=allowed, message=(
                        f"the frame differs from its reference image in "
                        f"{mismatch.changed_tiles} of {mismatch.tiles} tiles (at most "
                        f"{allowed}): not the reference's view (another product, a wrong "
                        "golden image, or the part or camera off by more than "
                        "max_shift_px, or align_reference's 16 px)"))
    return Verdict("fail", verdict.defects, [*verdict.reasons, reason])


@dataclass(frozen=True)
class BlankView:
    """A frame (or its golden image) too flat to judge: ``what`` spans ``contrast`` grey
    levels, under ``minimum``."""

    what: str  # "frame" or "reference"
    contrast: int
    minimum: int
    # the golden's contrast, when the recipe sets no min_contrast and the frame is judged
    # against it (the default's rule); None: the recipe's own min_contrast
    golden: int | None = None


def blank_reference(recipe: Recipe, reference: Reference) -> BlankView | None:
    """Whether the golden image ``reference`` is too flat for a ``min_contrast`` the recipe
    sets: every part judged against it would fail as ``blank_frame`` (:func:`blank_view`).
    Without one set, a flat golden is the product's own look (DeepPCB: 57 of its 2,000
    tiles, all copper or all substrate, span under 16 levels), never refused."""
    minimum = recipe.min_contrast or 0
    if minimum > 0 and (spread := reference.contrast) < minimum:
        return BlankView("reference", spread, minimum)
    return None


def blank_view(recipe: Recipe, frame: np.ndarray, reference: Reference | None) -> BlankView | None:
    """Whether ``frame`` or its ``reference`` spans fewer grey levels than the recipe's
    ``min_contrast``. A reference model compares two blank images as alike, so a lens cap
    or a lamp off passed as a good part (the leftover of sessions 36 and 37).

    Unset, a reference station checks the frame against :data:`BLANK_CONTRAST` only where
    its golden spans at least that much, and fails it only if it also spans under half
    its golden's levels (a golden just over the line, its good frames a few levels of
    noise either side, failed them at random): a flat frame of a part whose golden shows
    contrast has lost its view; a flat golden is the part's own look (a tile all of one
    colour), whose frames cannot be told from a lens cap by contrast, and failing them
    failed good parts (review, session 39). A single-image station checks nothing unless
    the recipe sets it (``lineside data stats`` suggests a figure). The golden's contrast
    is the one it keeps (:attr:`Reference.contrast`), not worked out again per frame."""
    minimum = recipe.min_contrast
    if minimum is not None:  # the recipe's own figure: the frame, then its golden
        if minimum <= 0:
            return None
        if (spread := contrast(frame)) < minimum:
            return BlankView("frame", spread, minimum)
        return None if reference is None else blank_reference(recipe, reference)
    if reference is None or reference.contrast < BLANK_CONTRAST:
        return None  # unset: a single-image station, or a flat golden (the part's look)
    # a frame that also lost half its golden's contrast, so a golden just over the line
    # whose good frames vary by a few levels of noise does not fail them at random
    spread = contrast(frame)
    if spread < BLANK_CONTRAST and 2 * spread < reference.contrast:
        return BlankView("frame", spread, BLANK_CONTRAST, reference.contrast)
    return None


def with_blank_view(verdict: Verdict, blank: BlankView | None) -> Verdict:
    """``verdict`` failed for a frame or golden too flat to judge (:func:`blank_view`)."""
    if blank is None:
        return verdict
    cause = ("a lens cap, a lamp off, or a camera fault" if blank.what == "frame"
             else "set a golden image that shows the part")
    reason = Reason(rule="blank_frame", label=blank.what, count=blank.contrast,
                    allowed=blank.minimum, message=(
                        f"the {'frame' if blank.what == 'frame' else 'reference image'} is "
                        f"nearly blank: it spans {blank.contrast} grey levels (5th to 95th "
                        f"percentile), {_under(blank)}: nothing on it can be judged "
                        f"({cause})"))
    return Verdict("fail", verdict.defects, [*verdict.reasons, reason])


def _under(blank: BlankView) -> str:
    if blank.golden is None:
        return f"under the recipe's min_contrast {blank.minimum}"
    return (f"under {blank.minimum} and under half of its golden's {blank.golden} (the "
            "recipe sets no min_contrast)")


def _judge_defects(detections: Detections, recipe: Recipe, thresholds: dict[str, float],
                   agnostic_iou: float | None) -> Verdict:
    defects = counted(detections, recipe, thresholds, agnostic_iou)
    counts = Counter(defects.labels)
    reasons: list[Reason] = []
    for label, n in sorted(counts.items()):
        if label in recipe.critical:
            reasons.append(Reason(rule="critical", label=label, count=n, allowed=0,
                                  message=f"{n} {label} defect(s): {label} is critical"))
            continue
        allowed = recipe.max_count.get(label, 0)
        if n > allowed:
            reasons.append(Reason(rule="max_count", label=label, count=n, allowed=allowed,
                                  message=f"{n} {label} defect(s), {allowed} allowed"))
    return Verdict("fail" if reasons else "pass", defects, reasons)
