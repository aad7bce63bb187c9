"""The dataset toolkit: one canonical form, importers, exporters, validation, splits.

Torch-free, so the edge side (review pull) and the training side share it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from lineside_inspect.dataset.canonical import read_dataset, save_annotations, write_dataset
from lineside_inspect.dataset.duplicates import DuplicateGroup, find_duplicates
from lineside_inspect.dataset.exporters import EXPORTERS
from lineside_inspect.dataset.importers import IMPORTERS, dim_16bit_pngs
from lineside_inspect.dataset.layout import links_out, role_of
from lineside_inspect.dataset.model import Box, Dataset, ImageRecord
from lineside_inspect.dataset.split import (
    check_split_args,
    empty_split_reason,
    split_dataset,
    split_units,
    tied_groups,
)
from lineside_inspect.dataset.stats import dataset_stats
from lineside_inspect.dataset.validate import (
    check_dir,
    dedupe_dir,
    drop_invalid,
    validate_dataset,
    validate_dir,
)
from lineside_inspect.errors import DatasetError, Problem

__all__ = [
    "Box",
    "Dataset",
    "DuplicateGroup",
    "ImageRecord",
    "check_dir",
    "check_split_args",
    "dataset_stats",
    "dedupe_dir",
    "empty_split_reason",
    "export_dataset",
    "find_duplicates",
    "import_dataset",
    "read_dataset",
    "save_annotations",
    "split_dataset",
    "split_units",
    "tied_groups",
    "validate_dataset",
    "validate_dir",
    "write_dataset",
]


def import_dataset(
    fmt: str,
    src: str | Path,
    dst: str | Path,
    *,
    skip_invalid: bool = False,
    overwrite: bool = False,
    follow_links: bool = False,
) -> tuple[Dataset, list[Problem]]:
    """Import ``src`` in format ``fmt`` into a canonical folder ``dst``.

    Refuses (raising :class:`DatasetError` with every problem) to write a broken
    dataset unless ``skip_invalid``; then the images concerned are left out and the
    problems returned. Nothing is written to ``dst`` unless the import succeeds.
    A symbolic link to a file out of the set is refused before anything is read, unless
    ``follow_links`` (the user's own files on a share); a folder linked out is followed.
    The layout says which links out were followed.
    """
    if fmt not in IMPORTERS:
        raise DatasetError(f"unknown format {fmt!r}; choose one of {', '.join(IMPORTERS)}")
    src = Path(src)
    if not src.exists():
        raise DatasetError(f"{src}: no such file or folder")
    followed = _links_out(src, follow_links)
    draft, problems = IMPORTERS[fmt](src)
    if followed:
        said = draft.info.get("layout")
        draft.info["layout"] = "; ".join([str(said), followed]) if said else followed
    problems = problems + validate_dataset(draft)
    if dim := dim_16bit_pngs(draft):
        said = draft.info.get("layout")
        draft.info["layout"] = "; ".join([str(said), *dim]) if said else "; ".join(dim)
    skipped: list[Problem] = []
    # the layout the importer recognised, so a user sees what was looked at and where
    layout = f" (layout found: {draft.info['layout']})" if draft.info.get("layout") else ""
    if problems:
        if not skip_invalid:
            raise DatasetError(
                f"{src}: {len(problems)} problem(s); nothing was written "
                f"({_advice(draft, problems)}){layout}",
                problems,
            )
        draft, unskippable = drop_invalid(draft, problems)
        if unskippable:
            raise DatasetError(
                f"{src}: {len(unskippable)} problem(s) concern no single image and cannot "
                f"be skipped; nothing was written{layout}",
                unskippable,
            )
        skipped = problems
    if not draft.images:
        # an empty dataset trains nothing: a wrong folder or format, never a success
        found = (f"every image found has a problem ({len(skipped)} problem(s)), so "
                 "--skip-invalid left none to import" if skipped else "no images found")
        raise DatasetError(f"{src}: {found}; nothing was written{layout}", skipped)
    return write_dataset(draft, dst, overwrite=overwrite, source=src), skipped


def _links_out(src: Path, follow: bool) -> str:
    """Refuse a set holding links to files out of it (``labels/a.txt`` to a secret: its
    lines were shown in the problems; ``x.png`` to a private picture: copied into DST),
    naming each link and its target, never what it holds, unless ``follow``. A folder
    linked out (``images/`` on a share, issue #18) is followed. What is followed is added
    to the layout line, never silent. A COCO JSON given as a file: the set is its folder
    (the one above, for an ``annotations/`` folder)."""
    root = src if src.is_dir() else src.parent
    if not src.is_dir() and role_of(root.name) == "annotations":
        root = root.parent
    found = links_out(root)
    files = [(rel, target) for rel, target in found if not rel.endswith("/")]
    if files and not follow:
        raise DatasetError(
            f"{root}: {len(files)} symbolic link(s) to files out of the set: {_pairs(files)}; "
            "nothing was read through them and nothing was written. A set from elsewhere: "
            f"delete those links (find {shlex.quote(str(root))} -type l lists them); links to "
            "your own files (on a share, say): pass --follow-links to read them")
    return f"{len(found)} link(s) out of the set followed ({_pairs(found)})" if found else ""


def _pairs(found: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{rel} -> {target}" for rel, target in found[:3])
    return shown + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def _advice(draft: Dataset, problems: list[Problem]) -> str:
    """What to do about problems: --skip-invalid only when leaving images out would give a
    dataset (every problem names an image, and some image has none)."""
    unskippable = sum(1 for p in problems if p.subject is None)
    if unskippable:
        return (f"fix them: {unskippable} concern no single image, so --skip-invalid cannot "
                "leave them out")
    concerned = {p.subject for p in problems}
    if all(r.file_name in concerned for r in draft.images):
        return "fix them: --skip-invalid would leave no image to import"
    return "fix them, or pass --skip-invalid to leave those images out"


def export_dataset(fmt: str, src: str | Path, dst: str | Path) -> None:
    """Export the canonical folder ``src`` as ``fmt`` (coco or yolo) into ``dst``."""
    if fmt not in EXPORTERS:
        raise DatasetError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORTERS)}")
    EXPORTERS[fmt](read_dataset(src), Path(dst))
