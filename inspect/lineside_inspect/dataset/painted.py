"""Where a pulled set's frames were painted out: the pixels ``lineside data pull``
(store/pull_regions.py) set to the pad value because the recipe version that judged the
frame never looked there (outside every ``roi``, inside an ``ignore``), as the set's
``info.outside_recipe_regions`` says. Evaluation drops a prediction centred there and
``data stats`` measures contrast without them; here, below the store, so the dataset
room and training read it without importing the pull (session 56)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError

from lineside_inspect.dataset.model import Box, Dataset, ImageRecord
from lineside_inspect.errors import DatasetError, describe_validation, echo
from lineside_inspect.recipes.schema import JudgedRegions
from lineside_inspect.runtime.anomaly_map import Looks, _looked_at
from lineside_inspect.runtime.preprocess import Letterbox

# points of one version's roi and ignore the pull paints by: painting costs rows x edges
# for each frame an alignment shifted, and a hostile server's answer of a million points
# took 10 s a frame (adversarial review, session 56); a recipe put over the API holds a
# few thousand at most (its 64 KB body). A version past it is pulled whole, said
MAX_PAINTED_POINTS = 20_000


def judged(regions: Looks, width: int, height: int,
           shift: tuple[float, float] | None) -> np.ndarray:
    """The pixels of a ``width`` x ``height`` frame its recipe judged, by a box centre's
    rule (even-odd, by pixel centre); ``shift``: the frame was moved onto its golden by
    it (its pixel (x, y) was (x + dx, y + dy) in the frame the regions are drawn on)."""
    dx, dy = shift or (0.0, 0.0)
    lb = Letterbox(1.0, 0, 0, width, height, shift_x=dx, shift_y=dy)
    return _looked_at(regions, lb, (height, width))


def unjudged(regions: Looks, width: int, height: int, shift: tuple[float, float] | None,
             boxes: list[Box]) -> np.ndarray | None:
    """The pixels to paint out: not judged, and in none of ``boxes`` (the truth, in this
    frame's pixels); None when there are none."""
    out = ~judged(regions, width, height, shift)
    for b in boxes:
        # clamped at 0: a negative start would slice from the far edge
        x1, y1 = max(0, int(np.floor(b.x1))), max(0, int(np.floor(b.y1)))
        out[y1:max(0, int(np.ceil(b.y2))), x1:max(0, int(np.ceil(b.x2)))] = False
    return out if out.any() else None


def painted_area(dataset: Dataset, rec: ImageRecord,
                 regions: dict[str, Looks] | None = None) -> np.ndarray | None:
    """The pixels of ``rec``'s frame a pull painted out (its recipe never judged them, not
    in its truth's boxes), from the set's ``info.outside_recipe_regions``; None for a
    frame not painted. A prediction centred there is one the recipe would never have
    counted, on grey: evaluation scored the painted edges (a trace cut off looks like an
    `open`, an ignored square like a `short`) as false alarms (session 56). ``regions``:
    :func:`painted_regions` of the set, read once for many frames."""
    said = _said(dataset)
    if said is None:
        return None
    key = said["judged_by"].get(rec.file_name)
    if key is None:
        return None
    looks = None if regions is None else regions.get(str(key))
    if looks is None:
        looks = _said_looks(dataset, said.get("regions"), key)
    return unjudged(looks, rec.width, rec.height, rec.aligned, rec.boxes)


def painted_regions(dataset: Dataset) -> dict[str, Looks]:
    """Each recipe version's (roi, ignore) the set's painted frames name, held to a
    recipe's rules and to the pull's :data:`MAX_PAINTED_POINTS`: a :class:`DatasetError`
    naming the first that is not, before any frame is predicted (a hand-edited info of
    50,000 squares took a minute a frame, an integer past a float's range was a
    traceback; adversarial review, session 56). {} for a set none of whose frames a pull
    painted."""
    said = _said(dataset)
    if said is None:
        return {}
    out: dict[str, Looks] = {}
    for key in said["judged_by"].values():
        if str(key) not in out:
            out[str(key)] = _said_looks(dataset, said.get("regions"), key)
    return out


def _said_looks(dataset: Dataset, regions: object, key: object) -> Looks:
    """The (roi, ignore) said for ``key`` in the set's ``regions`` (a hand-edited file may
    hold anything: a DatasetError saying what is wrong)."""
    got = regions.get(key) if isinstance(regions, dict) and isinstance(key, str) else None
    where = f"{dataset.root}: annotations.json info.outside_recipe_regions"
    if not isinstance(got, dict):
        raise DatasetError(f"{where} names {echo(key)} as the recipe that judged a painted "
                           "frame but holds no roi/ignore polygons of it (lists of [x, y] "
                           "points) under 'regions'; remove 'judged_by' to evaluate the "
                           "frames whole")
    # counted before they are read: reading a million points is itself the hang
    points = sum(len(p) for part in ("roi", "ignore") if isinstance(got.get(part), list)
                 for p in got[part] if isinstance(p, list))
    if points > MAX_PAINTED_POINTS:
        raise DatasetError(f"{where}: the regions of {echo(key)} hold {points} points, over "
                           f"the {MAX_PAINTED_POINTS} a pull paints by; remove 'judged_by' to "
                           "evaluate the frames whole")
    try:
        judged_regions = JudgedRegions.model_validate(got)
    except ValidationError as exc:
        raise DatasetError(f"{where}: the regions of {echo(key)} are not a recipe's roi/"
                           f"ignore: {describe_validation(exc.errors())}; remove 'judged_by' "
                           "to evaluate the frames whole") from None
    return as_looks(judged_regions)


def as_looks(regions: JudgedRegions) -> Looks:
    """A version's roi and ignore as the painting reads them (tuples: hashable, the
    painting cache's key)."""
    return tuple(tuple(p) for p in regions.roi), tuple(tuple(p) for p in regions.ignore)


def _said(dataset: Dataset) -> dict[str, Any] | None:
    """The set's ``info.outside_recipe_regions`` when it names frames' regions
    (``judged_by``); None for a set none of whose frames a pull painted, or one pulled
    before session 56 (no regions said)."""
    said = dataset.info.get("outside_recipe_regions")
    return said if isinstance(said, dict) and isinstance(said.get("judged_by"), dict) else None
