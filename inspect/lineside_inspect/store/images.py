"""Where a store keeps images when not in its own folder: the seam a hub uses to keep
every box's images in an object store (``fleet/hub/images.py``).

A box's store keeps its own images as files and serves only those; a store given an
:class:`ImageBackend` serves every row's image from it, whichever box made the row (the
row's ``image_path`` / ``reference_path`` are keys of the backend then).
"""

from __future__ import annotations

from typing import IO, Protocol


class ImageBackend(Protocol):
    def open(self, key: str) -> IO[bytes]:
        """The image at ``key``, opened; NotFoundError when there is none, another
        LinesideError (a 503) when the backend cannot be reached."""
        ...
