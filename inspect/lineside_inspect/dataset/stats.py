"""Dataset statistics: what an engineer checks before training."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lineside_inspect.dataset.model import Dataset, ImageRecord
from lineside_inspect.dataset.painted import painted_area, painted_regions
from lineside_inspect.errors import ImageError, MissingExtraError, install_hint

SIZE_BINS = (0, 16, 32, 64, 128, 256, 10**9)
STRIDE = 32  # a detector's coarsest feature map's stride: input sizes are multiples of it
# an input size chosen from the data stays within these: below 64 the coarsest map is a
# pixel or two; above 640 a CPU step costs more than the detail is worth (crops keep it)
AUTO_SIZE_MIN, AUTO_SIZE_MAX = 64, 640
TINY_BOX_PX = 3  # a defect under 3 px a side at the model's input is a pixel or two of blur
# images whose median longer side is at least this many times the auto input size are
# "well above" it: data stats then names native-scale training when boxes shrink too far
NATIVE_RATIO = 1.5


def input_size_for(sides: list[int]) -> int:
    """The input size for images whose longer sides are ``sides``: the nearest multiple of
    the stride at or above their median, within ``AUTO_SIZE_MIN..AUTO_SIZE_MAX``. 200 px
    images get 224, not 640: upscaling them 3x costs ~8x the compute per whole image and
    adds no detail. (Training's ``input_size: auto``; here so that ``data stats`` on an
    edge install says what it would be.)"""
    median = statistics.median(sides)
    return min(AUTO_SIZE_MAX, max(AUTO_SIZE_MIN, math.ceil(median / STRIDE) * STRIDE))


def shrunk_boxes(records: Iterable[ImageRecord], input_size: int) -> tuple[int, int, float]:
    """``(tiny, boxes, needed)``: of ``boxes`` labelled boxes, the ``tiny`` whose shorter
    side falls under ``TINY_BOX_PX`` once their image is scaled as training and inference
    scale it (longer side to ``input_size``), counting only boxes at least that large in
    their own image (smaller is a labelling matter, not the scaling's); ``needed``: the
    input size that keeps every one of them at ``TINY_BOX_PX`` (0 when none). The one
    arithmetic ``train.log``'s warning and ``data stats``' suggestion share."""
    boxes = tiny = 0
    needed = 0.0
    for rec in records:
        longer = max(rec.width, rec.height)
        if longer <= 0:
            continue
        for box in rec.boxes:
            boxes += 1
            side = min(box.x2 - box.x1, box.y2 - box.y1)
            if side >= TINY_BOX_PX and side * input_size / longer < TINY_BOX_PX:
                tiny += 1
                needed = max(needed, TINY_BOX_PX * longer / side)
    return tiny, boxes, needed


def _well_above(dataset: Dataset) -> tuple[float, int] | None:
    """``(median longer side, auto input size)`` when the images' median longer side is
    at least ``NATIVE_RATIO`` times the input size training would choose, else None."""
    if not dataset.images:
        return None
    sides = [max(r.width, r.height) for r in dataset.images]
    median, size = statistics.median(sides), input_size_for(sides)
    return None if median < NATIVE_RATIO * size else (median, size)


def native_scale(dataset: Dataset) -> dict[str, Any] | None:
    """Native-scale training (a config's ``tiling.tile``) to suggest, or None: when the
    images' median longer side is well above (``NATIVE_RATIO``) the input size training
    would choose (:func:`input_size_for`) and boxes would fall under ``TINY_BOX_PX`` at
    it, the frames are better judged as tiles of that size at their own scale."""
    if (above := _well_above(dataset)) is None:
        return None
    median, size = above
    tiny, boxes, _ = shrunk_boxes(dataset.images, size)
    if not tiny:
        return None
    return {"median_longer_side": median, "auto_input_size": size, "tiny_boxes": tiny,
            "boxes": boxes, "tile": size}


def letterbox_scale(dataset: Dataset) -> dict[str, Any] | None:
    """How far training's auto input size shrinks frames well above it (``NATIVE_RATIO``),
    or None: ``scale`` at the median longer side, and ``smallest_box`` (the least shorter
    side of a box, in its image) and ``smallest_box_scaled`` (the least at its image's
    scale). Said whether or not :func:`native_scale` suggests tiling: boxes that stay over
    ``TINY_BOX_PX`` still shrink (DeepPCB's ~30 px defects on 1280 px frames are ~15 px at
    640), and native scale doubled mAP@.5 on such frames (docs/benchmarks.md, session 45),
    yet ``data stats`` said nothing of the scale (new-user review, session 45)."""
    if (above := _well_above(dataset)) is None:
        return None
    median, size = above
    found = [(min(b.x2 - b.x1, b.y2 - b.y1), max(r.width, r.height))
             for r in dataset.images for b in r.boxes if max(r.width, r.height) > 0]
    smallest = min((side for side, _ in found), default=None)
    scaled = min((side * min(1.0, size / longer) for side, longer in found), default=None)
    return {"median_longer_side": median, "auto_input_size": size,
            "scale": round(size / median, 3), "smallest_box": smallest,
            "smallest_box_scaled": None if scaled is None else round(scaled, 1)}


def _bin_name(lo: int, hi: int) -> str:
    return f">={lo}px" if hi >= 10**9 else f"{lo}-{hi}px"


def painted_out(dataset: Dataset) -> int:
    """How many of the set's frames a pull painted out where their recipe's roi/ignore
    never judged them (``info.outside_recipe_regions``): stats said nothing of them, and
    their grey is no part of the product (session 56)."""
    said = dataset.info.get("outside_recipe_regions")
    names = said.get("painted_out") if isinstance(said, dict) else None
    if not isinstance(names, list):
        return 0
    return len({r.file_name for r in dataset.images} & {n for n in names if isinstance(n, str)})


def dataset_stats(dataset: Dataset) -> dict[str, Any]:
    """Counts per class and split, good vs defective images, and a histogram of box
    sizes (longer side, in pixels)."""
    splits = sorted({r.split or "unsplit" for r in dataset.images})
    boxes: dict[str, Counter[str]] = {s: Counter() for s in splits}
    images: dict[str, Counter[str]] = {s: Counter() for s in splits}
    sizes: Counter[str] = Counter()
    for rec in dataset.images:
        split = rec.split or "unsplit"
        images[split]["good" if rec.is_good else "defective"] += 1
        for b in rec.boxes:
            boxes[split][b.label] += 1
            side = max(b.x2 - b.x1, b.y2 - b.y1)
            for lo, hi in itertools.pairwise(SIZE_BINS):
                if lo <= side < hi:
                    sizes[_bin_name(lo, hi)] += 1
    return {
        "images": len(dataset.images),
        "groups": len({r.group for r in dataset.images if r.group is not None}),
        "with_reference": sum(r.reference is not None for r in dataset.images),
        # frames `data pull` painted grey where their recipe never judged (said in its info)
        "painted_out": painted_out(dataset),
        "classes": list(dataset.categories),
        "boxes_per_class": {s: {c: boxes[s][c] for c in dataset.categories} for s in splits},
        "images_per_split": {s: dict(images[s]) for s in splits},
        "box_size_histogram": {
            _bin_name(lo, hi): sizes[_bin_name(lo, hi)]
            for lo, hi in itertools.pairwise(SIZE_BINS)
        },
        # frames far larger than the auto input whose boxes it shrinks out of sight
        "native_scale": native_scale(dataset),
        # and how far that size shrinks them, said whether or not boxes fall out of sight
        "letterbox_scale": letterbox_scale(dataset),
    }


def contrast_stats(dataset: Dataset) -> dict[str, Any]:
    """The grey levels the set's images span (:func:`runtime.reference.contrast`, the
    measure ``min_contrast`` is judged by): the lowest, the 1st percentile, how many span
    under ``BLANK_CONTRAST`` (16), and a ``min_contrast`` to suggest for a single-image
    recipe: half the 1st percentile, at most 16. A single-image recipe has the check off
    unless it sets it, so a lens-capped camera passed every frame as a good part; a fixed
    value would fail real parts that are nearly one colour (a DeepPCB tile all copper
    spans 0 levels), so the figure comes from the product's own images. Images that do
    not read are counted, not measured (``data check`` names them)."""
    from lineside_inspect.imageio import read_image  # (OpenCV: only when pixels are read)
    from lineside_inspect.runtime.reference import BLANK_CONTRAST, contrast

    spans: list[int] = []
    unread = 0
    grey = _painted(dataset)
    for rec in dataset.images:
        try:
            image = read_image(dataset.image_path(rec))
            area = grey.get(rec.file_name)
            spans.append(contrast(image) if area is None else _judged_contrast(image, area))
        except (ImageError, ValueError):
            unread += 1
    if not spans:
        return {"images": 0, "unread": unread, "lowest": None, "first_percentile": None,
                "under_default": 0, "suggested_min_contrast": None,
                "under_suggested": 0}
    # "lower": an image's own figure, never one between two images
    p1 = int(np.percentile(spans, 1, method="lower"))
    suggested = min(BLANK_CONTRAST, p1 // 2)
    # over 100 images the 1st percentile is above the lowest: up to 1% of the set's own
    # images may span under the suggestion, and fail as blank_frame by it (review, 45)
    return {"images": len(spans), "unread": unread, "lowest": min(spans),
            "first_percentile": p1, "under_default": sum(s < BLANK_CONTRAST for s in spans),
            "suggested_min_contrast": suggested,
            "under_suggested": sum(s < suggested for s in spans)}


def _painted(dataset: Dataset) -> dict[str, np.ndarray]:
    """The pixels a pull painted grey (``info.outside_recipe_regions``), by file name: a
    painted frame's (``painted_area``), and its golden's, painted by the same mask. Their
    grey is no part of the product: measured with it, a narrow roi's frames spanned ~114
    to the board's levels and the suggested ``min_contrast`` fell (session 56)."""

    out: dict[str, np.ndarray] = {}
    regions = painted_regions(dataset)  # (read and checked once, not per frame)
    for rec in dataset.images:
        if (area := painted_area(dataset, rec, regions)) is not None:
            out[rec.file_name] = area
            if rec.reference is not None:  # (a golden painted alike is named by its content)
                out.setdefault(rec.reference, area)
    return out


def _judged_contrast(image: np.ndarray, painted: np.ndarray) -> int:
    """:func:`runtime.reference.contrast` of the pixels of ``image`` not ``painted``: on
    its sampling grid, or every such pixel where the grid meets none (a roi narrower than
    its stride). A frame painted whole shows nothing: ValueError (not measured)."""
    from lineside_inspect.runtime.reference import contrast_grid, contrast_sample, gray, spread

    if painted.shape != image.shape[:2]:
        raise ValueError("not its record's size")  # (`data validate` names it)
    values = contrast_sample(image)[~painted[contrast_grid(*painted.shape)]]
    if not values.size:
        values = gray(image)[~painted]
    if not values.size:
        raise ValueError("painted whole")
    return spread(values)


# what --plot writes in the format of its suffix (matplotlib's "raw" is a bare pixel dump,
# "pgf" needs LaTeX); any other name gets .png
PLOT_FORMATS = frozenset({".png", ".svg", ".pdf", ".jpg", ".jpeg", ".tif", ".tiff", ".webp",
                          ".eps", ".ps"})


def plot_stats(stats: dict[str, Any], out: Path) -> Path:
    """Save a two-panel PNG: boxes per class by split, and the box-size histogram; the
    file written: ``out`` when its suffix is one of ``PLOT_FORMATS``, else ``out`` with
    ``.png`` added (a bare name, ``deeppcb.v2``)."""
    try:
        import matplotlib
    except ImportError:  # an edge install: plotting comes with the training extra
        raise MissingExtraError("plotting needs matplotlib (the training extra): "
                                + install_hint("train")) from None

    matplotlib.use("Agg")
    # class names are text: "scratch $\\q$" was parsed as mathtext and crashed the report
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if out.suffix.lower() not in PLOT_FORMATS:
        out = out.with_name(out.name.rstrip(".") + ".png")  # (matplotlib added it unsaid)
    classes = stats["classes"]
    if not classes:  # a good-only set: two empty panels said nothing (new-user review)
        per = stats["images_per_split"]
        ax1.bar(list(per), [v.get("good", 0) for v in per.values()])
        ax1.set_title("good images per split")
        ax2.axis("off")
        ax2.text(0.5, 0.5, "no defect boxes: a set of good images\n(for a good-only model)",
                 ha="center", va="center")
        return _save(fig, out)
    splits = list(stats["boxes_per_class"])
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        counts = [stats["boxes_per_class"][split][c] for c in classes]
        ax1.bar([x + i * width for x in range(len(classes))], counts, width, label=split)
    ax1.set_xticks([x + width * (len(splits) - 1) / 2 for x in range(len(classes))], classes)
    ax1.set_title("boxes per class")
    ax1.legend()
    hist = stats["box_size_histogram"]
    ax2.bar(list(hist), list(hist.values()))
    ax2.set_title("box size (longer side)")
    return _save(fig, out)


def _save(fig: Any, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
