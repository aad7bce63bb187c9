"""Lineside edge side: datasets, the ONNX runtime, recipes, cameras, store and server.

Never imports torch: an edge box installs only this.
"""

from __future__ import annotations

from lineside_inspect import _cv  # noqa: F401  (sets OpenCV's pixel limit before any cv2 use)
from lineside_inspect.errors import LinesideError

__version__ = "0.1.0"
__all__ = ["LinesideError", "__version__"]
