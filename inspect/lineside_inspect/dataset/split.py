"""Deterministic, group-wise, class-stratified train/val/test splits."""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Collection
from pathlib import PurePosixPath

from lineside_inspect.dataset.duplicates import DuplicateGroup, find_duplicates
from lineside_inspect.dataset.model import Dataset, ImageRecord
from lineside_inspect.errors import DatasetError

# Roboflow names each exported (and each augmented) copy <stem>_<ext>.rf.<hash>.<ext>:
# copies of one photo must share a side, as a group's images do
ROBOFLOW_NAME = re.compile(r"(?P<origin>.+)_(?:jpe?g|png|bmp)\.rf\.[0-9a-f]{16,}", re.IGNORECASE)


def roboflow_origin(file_name: str) -> str | None:
    """The photo a Roboflow export's image was made from (``x_jpg.rf.HASH.jpg`` -> ``x``,
    its folder kept), or None for any other name."""
    path = PurePosixPath(file_name)
    match = ROBOFLOW_NAME.fullmatch(path.stem)
    return str(path.parent / match["origin"]) if match else None


def tied_groups(duplicates: list[DuplicateGroup]) -> list[str]:
    """A line for each set of duplicates whose copies sit in different groups, which
    :func:`split_dataset` keeps on one side together (``data split`` says so, because it
    moves whole groups: a named validation group takes the others with it)."""
    lines = []
    for g in duplicates:
        names = sorted({r.group for r in g.members if r.group is not None})
        if len(names) > 1:  # names from the user's files: quoted, so no escape reaches a terminal
            first = next(r for r in g.members if r.group is not None)  # and its copy elsewhere
            other = next(r for r in g.members if r.group not in (None, first.group))
            lines.append(f"groups {', '.join(map(repr, names))} kept on one side: {g.kind} "
                         f"duplicates {first.file_name!r} ~ {other.file_name!r}"
                         + (f" and {len(g.members) - 2} more" if len(g.members) > 2 else ""))
    return lines


def check_split_args(dataset: Dataset, *, val: float, test: float, by: str,
                     val_groups: Collection[str] | None) -> None:
    """Refuse bad fractions, an unknown ``by`` or a ``val_groups`` name that is no group of
    ``dataset``: before the pixels are read for duplicates (minutes on a large set)."""
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DatasetError(f"--val {val} and --test {test} must be fractions summing below 1")
    if by not in ("group", "image"):
        raise DatasetError(f"--by must be 'group' or 'image', got {by!r}")
    if not dataset.images:  # (it was a ZeroDivisionError's traceback)
        raise DatasetError(f"{dataset.root}: the dataset has no images to split; import some "
                           "with lineside data import")
    chosen = set(val_groups or ())
    if chosen:
        known = {r.group for r in dataset.images if r.group is not None}
        unknown = sorted(chosen - known)
        if unknown:
            raise DatasetError(
                f"--val-groups: no group named {', '.join(map(repr, unknown))} in the dataset "
                f"(it has {len(known)} groups, e.g. {', '.join(sorted(known)[:5]) or 'none'})")


def split_units(dataset: Dataset, *, by: str = "group",
                duplicates: list[DuplicateGroup] | None = None) -> dict[str, list[ImageRecord]]:
    """The units :func:`split_dataset` moves whole: a group's images (or, with ``by="image"``
    or no group, one image; a Roboflow photo's copies), joined by any duplicates
    (``duplicates``, found from the pixels when not given), which always share a side."""
    def own_key(rec: ImageRecord) -> str:
        if by == "group":
            if rec.group is not None:
                return rec.group
            if (origin := roboflow_origin(rec.file_name)) is not None:
                return f"roboflow:{origin}"
        return f"image:{rec.file_name}"

    # duplicates join their keys (a union-find over keys), so copies share a side
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.get(key, key) != key:
            key = parent[key]
        return key

    for group in find_duplicates(dataset) if duplicates is None else duplicates:
        keys = sorted({root(own_key(r)) for r in group.members})
        for k in keys[1:]:
            parent[k] = keys[0]
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for rec in dataset.images:
        groups[root(own_key(rec))].append(rec)
    return groups


def split_dataset(
    dataset: Dataset, *, val: float, test: float = 0.0, by: str = "group", seed: int = 0,
    duplicates: list[DuplicateGroup] | None = None, val_groups: Collection[str] | None = None,
) -> dict[str, int]:
    """Assign ``split`` on every image in place; return image counts per split.

    With ``by="group"`` all images of one group land in the same split, so near-duplicate
    crops of a board never straddle train and validation. Groups are placed largest
    first (ties broken by the seeded shuffle) into the split whose per-class and
    per-image quota is furthest from filled: stratified where the groups allow it.

    Exact and near-duplicate images (``duplicates``, found from the pixels when not
    given) always land in one split, whatever ``by`` says, with their groups.

    ``val_groups`` names the groups that make up validation (``val`` is then not used):
    held-out boards or product variants chosen by hand, so that a benchmark's split can be
    made again from the command line. Every name must be a group of the dataset. The
    other groups share train and ``test`` as above.
    """
    check_split_args(dataset, val=val, test=test, by=by, val_groups=val_groups)
    chosen = set(val_groups or ())
    if chosen:
        val = 0.0
    groups = split_units(dataset, by=by, duplicates=duplicates)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda k: -len(groups[k]))  # stable: shuffled order breaks ties

    fractions = {"train": 1 - val - test, "val": val, "test": test}
    if chosen:  # the named groups (and whatever duplicates tie to them) are validation
        held = [k for k in keys if any(r.group in chosen for r in groups[k])]
        for key in held:
            for rec in groups[key]:
                rec.split = "val"
        held_keys = set(held)
        keys = [k for k in keys if k not in held_keys]
    totals = _counts([r for k in keys for r in groups[k]])
    filled: dict[str, Counter[str]] = {s: Counter() for s in fractions}
    for key in keys:
        counts = _counts(groups[key])

        def need(split: str, counts: Counter[str] = counts) -> float:
            # mean unfilled share over the keys this group contributes to
            f = fractions[split]
            return sum(
                (f * totals[k] - filled[split][k]) / totals[k] for k in counts
            ) / len(counts)

        best = max((s for s in fractions if fractions[s] > 0), key=need)
        filled[best].update(counts)
        for rec in groups[key]:
            rec.split = best
    return {s: sum(1 for r in dataset.images if r.split == s) for s in fractions}


def _counts(records: list[ImageRecord]) -> Counter[str]:
    counts: Counter[str] = Counter({"__images__": len(records)})
    for rec in records:
        counts.update(b.label for b in rec.boxes)
        if rec.is_good:
            counts["__good__"] += 1
    return counts


def empty_split_reason(
    dataset: Dataset, counts: dict[str, int], *, val: float, test: float = 0.0, by: str = "group",
    seed: int = 0, duplicates: list[DuplicateGroup] | None = None,
    val_groups: Collection[str] | None = None,
) -> str | None:
    """None when :func:`split_dataset`'s ``counts`` give every split asked for an image;
    otherwise one line saying why one came out empty and what works instead: too few
    images, too few of the units it moves whole (groups, duplicates kept together), too
    small a fraction, or balancing the classes, with the smallest fraction that splits
    (found by splitting again: the images' ``split`` is left as the last try set it)."""
    wanted = {"train": 1 - val - test, "val": 1.0 if val_groups else val, "test": test}
    sides = [name for name, share in wanted.items() if share > 0]
    empty = [name for name in sides if not counts.get(name)]
    if not empty:
        return None
    n = len(dataset.images)
    images = f"{n} image{'s' * (n != 1)}"
    needs = f"a {'/'.join(sides)} split needs at least {len(sides)}"
    came = f"the {' and '.join(empty)} split came out empty"
    if n < len(sides):
        return f"{came}: the dataset has {images}, and {needs}, one on each side; add images"
    units = split_units(dataset, by=by, duplicates=duplicates)
    unit = "group" if by == "group" else "unit"
    held = f"{len(units)} {unit}{'s' * (len(units) != 1)}" + (
        "" if by == "group" else " (an image, or duplicates kept together)")
    if len(units) < len(sides):
        if by == "group":
            alone = len(split_units(dataset, by="image", duplicates=duplicates))
            also = (", or give --by image (photos of one part may then sit on both sides)"
                     if alone >= len(sides) else "")
            return (f"{came}: the {images} are in {held} (a group moves whole, with any "
                    f"duplicates of its images), and {needs}; add images of other groups "
                    f"(parts, boards, days){also}")
        return (f"{came}: the {images} are {len(units)} set{'s' * (len(units) != 1)} of "
                f"duplicates, each kept on one side, and {needs}; add other images")
    if val_groups:
        if "train" in empty:
            return f"{came}: --val-groups names the groups of every image; leave some for train"
        return f"{came}: the groups --val-groups leaves are too few for it; name fewer"
    if "train" in empty:
        return (f"{came}: --val {val:g} and --test {test:g} leave train {wanted['train']:.0%}, "
                f"and none of the {held} went to it; give smaller fractions")
    name = empty[0]
    other = test if name == "val" else val

    def works(share: float) -> dict[str, int] | None:
        at_val, at_test = (share, other) if name == "val" else (other, share)
        got = split_dataset(dataset, val=at_val, test=at_test, by=by, seed=seed,
                            duplicates=duplicates)
        return got if all(got.get(side) for side in sides) else None

    steps = [k / 100 for k in range(math.floor(wanted[name] * 100) + 1, 100)
             if k / 100 + other < 1 - 1e-9]
    found = next(((step, got) for step in steps if (got := works(step)) is not None), None)
    if wanted[name] * n < 1:  # less than one image even one by one: the fraction is why
        least = math.ceil(100 / n) / 100
        if found is not None and found[0] <= least:
            return (f"--{name} {wanted[name]:g} of {images} is less than one image: give "
                    f"--{name} {least:g} or more, or add images")
    # the split places the largest units first where their classes are least filled: a
    # unit holding all of a class's boxes (or all the good images) stays in train
    totals = _counts(dataset.images)
    del totals["__images__"]
    sole = sum(1 for recs in units.values()
               if any(_counts(recs)[k] == totals[k] for k in totals))
    who = "each" if sole == len(units) else f"{sole} of them"
    why = (f"{who} hold{'s' * (who == 'each' or sole == 1)} every box of a class, or every good "
           "image, which balancing the classes keeps in train" if sole else
           "balancing the classes placed none of them there")
    advice = (f"--{name} {found[0]:g} gives {name} {found[1][name]} of the {n} images"
              if found is not None else f"no --{name} below {1 - other:g} gives it an image")
    return (f"{came} at --{name} {wanted[name]:g}: the {images} are in {held}, which move whole, "
            f"and {why}; {advice}; or add images of more {unit}s")
