"""Which box this data folder belongs to: ``<data_dir>/box_id``, written once.

The id marks every inspection row the box writes, so boxes sharing one database never
clean up each other's rows or files. It is kept in the data folder (not only in the
config) because the rows and the image files there must keep matching: a box whose
configured ``box_id`` disagrees with its folder's would take its own files for orphans.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from lineside_inspect.atomic import write_atomic
from lineside_inspect.config import BOX_ID_RE
from lineside_inspect.errors import ConfigError
from lineside_inspect.store.models import HUB_BOX_ID

BOX_ID_FILE = "box_id"


def resolve_box_id(data_dir: Path, configured: str | None) -> str:
    """The folder's kept id (which ``configured`` must equal, if given); else
    ``configured`` or a new uuid, kept from now on. Call with the folder locked."""
    path = data_dir / BOX_ID_FILE
    try:
        kept: str | None = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        kept = None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read this data_dir's box id ({exc})") from None
    if kept is not None:
        if not BOX_ID_RE.fullmatch(kept):
            raise ConfigError(f"{path}: not a valid box id; restore it or remove the file "
                              "(the box then takes a new id and no longer owns its earlier rows)")
        if configured is not None and configured != kept:
            raise ConfigError(
                f"box_id {configured!r} differs from {kept!r}, the id this data_dir's inspections "
                f"were stored under ({path}); configure {kept!r} or use another data_dir")
        return kept
    if configured is not None and not BOX_ID_RE.fullmatch(configured):
        raise ConfigError(f"box_id {configured!r} must be 1-64 letters, digits, '_', '.' or '-'")
    box_id = configured or uuid.uuid4().hex
    write_atomic(path, f"{box_id}\n".encode("ascii"))
    return box_id


def refuse_hub_id(data_dir: Path, configured: str | None) -> None:
    """A box may not be named ``hub``, configured or kept in ``data_dir``: it is the name a
    hub files its own reviews under, and a box the hub's reviews it takes down under
    (fleet/box/reviews.py), so a box named so counted the hub's reviewers as its own and
    its own as the hub's ("qa (hub)"; session 51). A hub's data folder keeps ``hub``: a
    box pointed at one is refused too, before it takes the hub's folder for its own."""
    if configured == HUB_BOX_ID:
        raise ConfigError(f"box_id {HUB_BOX_ID!r} is the hub's own name (the box files the "
                          "hub's reviews under it): give this box another box_id")
    path = data_dir / BOX_ID_FILE
    try:
        kept = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):  # none yet, or resolve_box_id's to refuse
        return
    if kept == HUB_BOX_ID:
        raise ConfigError(f"{path} names this data_dir's box {HUB_BOX_ID!r}, the hub's own "
                          "name (a hub's data_dir, or a box's named so before 2026-12-07): "
                          "give the box a data_dir of its own (docs/upgrading.md)")
