"""The old, private name of :mod:`lineside_inspect.opencv`, still imported by edge modules.

New code (and everything outside ``lineside_inspect``) imports
``from lineside_inspect.opencv import cv2``.
"""

from __future__ import annotations

from lineside_inspect.opencv import MAX_IMAGE_PIXELS, cv2

__all__ = ["MAX_IMAGE_PIXELS", "cv2"]
