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
