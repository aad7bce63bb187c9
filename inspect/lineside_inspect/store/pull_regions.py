"""What ``lineside data pull`` does with the part of a frame its recipe never judged.

A recipe's ``roi`` and ``ignore`` polygons decide which detections count (a box's centre
inside a roi, outside every ignore): the model's boxes elsewhere were never stored, shown
for review nor judged by anyone. Pulled as they were, those areas became background, and
training learned a real defect outside the roi as a good part (an ML engineer's walk,
session 56). The training format has no ignore regions (the loss, the evaluation and the
exporters read boxes only), so the pull paints them out instead: each pixel the recipe
never judged is set to the letterbox's pad value, the grey a detector already learns as
nothing, in the frame and its golden alike; the truth's own boxes stay as they are (a
reviewer's box drawn outside the roi is a defect someone saw). The frame is then written
as PNG (lossless, as an aligned frame is) and the dataset's ``info`` says which, and by
which recipe version's regions: evaluation drops a prediction centred in the grey
(:func:`lineside_inspect.dataset.painted.painted_area`), as the recipe would have.

The regions are the recipe's of the version that judged: a server answers each version
of a name it knows in one answer (``GET /v1/recipes/{name}/regions``: the one judging
now, and those kept beside their rules' digests in ``recipes/.versions/``), a store
folder from that same file and its recipes put over the API. A version whose regions
are not kept (it stopped judging before session 56), a recipe the pull cannot read, or
a fleet hub (it holds the boxes' inspections, not their recipes; and a name's version
on one box is not another box's) is pulled whole, said in one warning line and in
``info``: its frames may hold unlabelled areas.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lineside_inspect.dataset.painted import MAX_PAINTED_POINTS, as_looks
from lineside_inspect.imageio import decode_image
from lineside_inspect.names import is_name
from lineside_inspect.opencv import cv2
from lineside_inspect.package import PAD_VALUE
from lineside_inspect.recipes.saved import SavedRecipes
from lineside_inspect.recipes.schema import Recipe, RecipeRegions
from lineside_inspect.runtime.anomaly_map import Looks

log = logging.getLogger("lineside.store")

# what :class:`Regions` reads a recipe name's regions with: None when it cannot say
Source = Callable[[str], RecipeRegions | None]


def store_source(recipes_dir: Path) -> Source:
    """The regions of a store folder's recipes: the versions kept beside their rules'
    digests (``recipes/.versions/NAME.json``: each version put over the API, and each
    configured recipe's version as it started judging, since session 56), and the recipe
    put over the API judging now (``recipes/NAME.json``). None (unknown) for a name of
    neither: a configured recipe's file is not in the folder."""
    saved = SavedRecipes(recipes_dir)
    put: dict[str, Recipe] | None = None

    def read(name: str) -> RecipeRegions | None:
        nonlocal put
        if put is None:
            put = {s.recipe.name: s.recipe for s in saved.load()} if recipes_dir.is_dir() else {}
        versions = saved.regions(name) if is_name(name) else {}
        recipe = put.get(name)
        if recipe is not None:
            versions[recipe.version] = recipe.regions
        if not versions:
            return None
        return RecipeRegions(name=name, version=None if recipe is None else recipe.version,
                             versions=versions)

    return read


class Regions:
    """The pull's word on each item's judged area, by its recipe (name, version), each
    name read once; items whose regions are unknown are counted for the end."""

    def __init__(self, source: Source) -> None:
        self.source = source
        # name -> version -> its (roi, ignore), None when it judges the whole frame, False
        # when past MAX_PAINTED_POINTS (the answer itself is not kept: it may be MBs)
        self.read: dict[str, dict[str, Looks | bool | None]] = {}
        self.unknown: dict[tuple[str, str], list[str]] = {}  # (recipe, version) -> file names
        # each frame painted out (file name, in the order painted) -> its recipe
        # "name:version", and that version's (roi, ignore): the set says them (``info``),
        # so evaluation drops what lands in the grey (dataset/painted.py)
        self.judged_by: dict[str, str] = {}
        self.looks: dict[str, Looks] = {}

    def of(self, item: dict[str, Any]) -> Looks | bool | None:
        """``item``'s recipe's (roi, ignore) when it has any; None when it judges the whole
        frame; False when that version's regions are not known here."""
        name, version = str(item["recipe"]["name"]), str(item["recipe"]["version"])
        if name not in self.read:
            self.read[name] = _looks(name, self.source(name))
        return self.read[name].get(version, False)

    def note_painted(self, item: dict[str, Any], file_name: str, looks: Looks) -> None:
        key = f"{item['recipe']['name']}:{item['recipe']['version']}"
        self.judged_by[file_name] = key
        self.looks[key] = looks

    def note_unknown(self, item: dict[str, Any], file_name: str) -> None:
        key = (str(item["recipe"]["name"]), str(item["recipe"]["version"]))
        self.unknown.setdefault(key, []).append(file_name)

    def say(self, kept: set[str]) -> dict[str, object]:
        """The warning lines and the dataset ``info`` of what was painted out and what
        could not be, of the frames ``kept`` in the set (file names)."""
        info: dict[str, object] = {}
        masked = [f for f in self.judged_by if f in kept]
        if masked:
            log.warning("pull: %d frame(s) painted out (grey %d) outside their recipe's roi "
                        "and inside its ignore: the line never judged those pixels, so a "
                        "detection there was never counted nor reviewed and they are not "
                        "known to be defect-free; the dataset's info.outside_recipe_regions "
                        "lists them (e.g. %s)", len(masked), PAD_VALUE, masked[0])
            keys = sorted({self.judged_by[f] for f in masked})
            info["outside_recipe_regions"] = {
                "painted_out": masked, "fill": PAD_VALUE,
                "why": "pixels the recipe's roi/ignore never judged: unlabelled, so painted "
                       "out (the truth's boxes kept)",
                # what `lineside evaluate` drops a prediction centred in (painted_area)
                "judged_by": {f: self.judged_by[f] for f in masked},
                "regions": {k: {"roi": [list(map(list, p)) for p in self.looks[k][0]],
                                "ignore": [list(map(list, p)) for p in self.looks[k][1]]}
                            for k in keys}}
        unknown = {k: [f for f in v if f in kept] for k, v in self.unknown.items()}
        unknown = {k: v for k, v in unknown.items() if v}
        if unknown:
            said = ", ".join(f"{n} version {v} ({len(f)})" for (n, v), f in unknown.items())
            log.warning("pull: %d frame(s) pulled whole, the regions (roi/ignore) of the recipe "
                        "version that judged them not known here: %s; if it had a roi or "
                        "ignore, their detections outside it are unlabelled (pull from the "
                        "box that judged them, of this release or later, which keeps each "
                        "version's regions from when it starts judging there; a fleet hub "
                        "keeps no box's recipes)",
                        sum(map(len, unknown.values())), said)
            info["recipe_regions_unknown"] = {
                f"{n}:{v}": f for (n, v), f in unknown.items()}
        return info


def _looks(name: str, got: RecipeRegions | None) -> dict[str, Looks | bool | None]:
    """Each version's regions as :class:`Regions` paints by (converted once, not per
    frame: the tuples are also the painting cache's key)."""
    out: dict[str, Looks | bool | None] = {}
    for version, regions in ({} if got is None else got.versions).items():
        points = sum(map(len, regions.roi)) + sum(map(len, regions.ignore))
        if points > MAX_PAINTED_POINTS:
            log.warning("pull: recipe %s version %s's regions hold %d points, over the %d "
                        "the pull paints by: its frames are pulled whole", name, version,
                        points, MAX_PAINTED_POINTS)
            out[version] = False
        elif regions.roi or regions.ignore:
            out[version] = as_looks(regions)
        else:
            out[version] = None
    return out


def painted(data: bytes, mask: np.ndarray, path: Path) -> bytes | str:
    """The image ``data`` with ``mask``'s pixels set to the pad value, written to ``path``
    as PNG; its bytes, or why it could not be."""
    image = decode_image(data)
    image[mask] = PAD_VALUE
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        return "its frame painted out where its recipe never judged could not be encoded as PNG"
    path.parent.mkdir(exist_ok=True)
    out = buf.tobytes()
    path.write_bytes(out)
    return out
