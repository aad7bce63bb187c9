"""Which val images calibrate an ``--int8`` export: a seeded sample spread across the
set's groups, and within each group across good and defective parts and their classes.

Before, export calibrated on the first 64 val images: a val split ordered by group (as
``lineside data split`` and every import write it) calibrated on one product, and the
int8 activation scales of the others were guessed (export review, session 56)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from lineside_inspect.dataset import ImageRecord

CALIBRATION_SEED = 0
# fewer calibration images than this: the int8 scales are said to be from few images
# (onnxruntime's MinMax calibration takes each activation's extremes over the images,
# so a handful of them rarely spans what the line shows)
FEW_CALIBRATION_IMAGES = 16
SAMPLING = ("seeded; round-robin over the val groups, within each over good and defective "
            "parts and their classes (a reference model's images with a golden of their own first)")


def _stratum(rec: ImageRecord) -> str:
    """Good, or the defect classes the part shows: parts of one kind in one group."""
    return "good" if not rec.boxes else "+".join(sorted({b.label for b in rec.boxes}))


def _interleave(lists: list[list[ImageRecord]]) -> list[ImageRecord]:
    """One from each list in turn until all are used up."""
    out: list[ImageRecord] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def calibration_sample(records: list[ImageRecord], count: int, seed: int = CALIBRATION_SEED,
                       reference: bool = False) -> list[ImageRecord]:
    """Up to ``count`` of ``records``, in their own order, spread as :data:`SAMPLING` says.
    Deterministic for a set and seed whatever order the records come in (sorted by file
    name before the seeded shuffle). ``reference``: a reference model's records with a
    reference image of their own come before those judged against themselves (a good image
    without one: its difference channel is all zero, which no line frame shows)."""
    if count >= len(records):
        return list(records)
    rng = random.Random(seed)
    tiers: list[list[ImageRecord]] = [[], []]
    for rec in sorted(records, key=lambda r: r.file_name):
        tiers[1 if reference and rec.reference is None else 0].append(rec)
    order: list[ImageRecord] = []
    for tier in tiers:
        groups: dict[str, dict[str, list[ImageRecord]]] = {}
        for rec in tier:
            groups.setdefault(rec.group or "", {}).setdefault(_stratum(rec), []).append(rec)
        per_group = []
        for name in sorted(groups):
            strata = [groups[name][k] for k in sorted(groups[name])]
            for stratum in strata:
                rng.shuffle(stratum)
            rng.shuffle(strata)
            # good and defective in turn first; the defect classes in turn within defective
            kinds = [groups[name].get("good", []),
                     _interleave([x for x in strata if x is not groups[name].get("good")])]
            rng.shuffle(kinds)
            per_group.append(_interleave(kinds))
        rng.shuffle(per_group)  # which groups are first when there are more than ``count``
        order += _interleave(per_group)
    chosen = {id(r) for r in order[:count]}
    return [r for r in records if id(r) in chosen]


def calibration_record(chosen: list[ImageRecord], records: list[ImageRecord], seed: int,
                       reference: bool) -> tuple[dict[str, Any], list[str]]:
    """What the card's ``quantization`` records of the calibration sample, and the notes
    export prints (and the card keeps) when it is thin: few images, groups or kinds of
    part it never saw, or (a reference model) no real pair."""
    groups = Counter(r.group or "" for r in chosen)
    all_groups = {r.group or "" for r in records}
    good = sum(not r.boxes for r in chosen)
    record: dict[str, Any] = {
        "calibration_images": len(chosen), "calibration_seed": seed,
        "calibration_sampling": SAMPLING,
        "calibration_files": [r.file_name for r in chosen],
        "calibration_good": good, "calibration_defective": len(chosen) - good,
        "calibration_groups": dict(sorted(groups.items())) if all_groups != {""} else {},
    }
    if reference:
        record["calibration_pairs"] = sum(r.reference is not None for r in chosen)
    notes = []
    if len(chosen) < FEW_CALIBRATION_IMAGES:
        # a val with more images than were taken: the option cut it, not the set
        more = (f"raise --calibration-images (val has {len(records)} images)"
                if len(records) > len(chosen) else "give --data a set with more val images")
        notes.append(f"int8 calibrated on only {len(chosen)} image(s) (fewer than "
                     f"{FEW_CALIBRATION_IMAGES}): its activation scales are from the extremes "
                     f"of those few and may clip or coarsen what other parts show; {more}, "
                     "or ship fp32")
    if len(groups) < len(all_groups):
        notes.append(f"int8 calibration covers {len(groups)} of the {len(all_groups)} val "
                     "groups (--calibration-images is fewer than the groups): the others' "
                     "activation scales are not seen")
    if chosen and (good == 0 or good == len(chosen)):
        kind = "defective" if good == 0 else "good"
        val_too = all(bool(r.boxes) == (good == 0) for r in records)
        # a reference model takes images with a golden of their own first: where only the
        # other kind has one (DeepPCB: its good parts are the templates), "too few images"
        # sent the user to raise a count that was not the cause
        paired_too = all(bool(r.boxes) == (good == 0) for r in records if r.reference is not None)
        other = "good" if good == 0 else "defective"
        why = ("so is every val image: give --data a set with both" if val_too
               else f"val's {other} parts have no golden image of their own, and a reference "
               "model calibrates on images with one first" if reference and paired_too
               else "too few images to take both")
        notes.append(f"int8 calibration images are all {kind} parts ({why}): activation "
                     "scales of the other kind are not seen")
    if reference and chosen and not record["calibration_pairs"]:
        notes.append("int8 calibration of a reference model on images without a reference of "
                     "their own (each judged against itself: a zero difference): the "
                     "difference channel's scale is not seen")
    return record, notes
