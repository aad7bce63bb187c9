"""The hub's images in the object store, under keys Lineside makes:

- ``images/<box>/<yyyy-mm-dd>/<inspection id>.<ext>``: one inspection's image;
- ``refs/<sha256>.<ext>``: a reference image, content-addressed (shared by every
  inspection, of any box, that was compared with it; stored once).

Each part is full-matched before it becomes a key (``ObjectStore`` checks the whole key
again), so nothing a box sends can climb out of its prefix.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import IO

from lineside_inspect.fleet.objects import ObjectStore
from lineside_inspect.fleet.protocol import ID_PATTERN, NAME_PATTERN

_BOX = re.compile(NAME_PATTERN)
_ID = re.compile(ID_PATTERN)
_SHA = re.compile(r"[0-9a-f]{64}")
_EXT = re.compile(r"jpg|png")
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png"}


def image_key(box_id: str, created_at: datetime, inspection_id: str, ext: str) -> str:
    if not (_BOX.fullmatch(box_id) and _ID.fullmatch(inspection_id) and _EXT.fullmatch(ext)):
        raise ValueError("not an image key's parts")
    # the year always 4 digits: strftime's %Y gives "1" and "999" for years before 1000
    # (a box's record may be dated so), keys outside the yyyy-mm-dd layout
    day = f"{created_at.year:04d}-{created_at.month:02d}-{created_at.day:02d}"
    return f"images/{box_id}/{day}/{inspection_id}.{ext}"


def reference_key(sha256: str, ext: str) -> str:
    if not (_SHA.fullmatch(sha256) and _EXT.fullmatch(ext)):
        raise ValueError("not a reference key's parts")
    return f"refs/{sha256}.{ext}"


class ObjectImages:
    """The store's image backend (``store/images.py``) on an :class:`ObjectStore`."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def open(self, key: str) -> IO[bytes]:
        return self.objects.open(key)
