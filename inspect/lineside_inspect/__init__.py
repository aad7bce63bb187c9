"""Lineside edge side: datasets, the ONNX runtime, recipes, cameras, store and server.

Never imports torch: an edge box installs only this. The public API below is loaded on
first use, so ``import lineside_inspect`` (and the CLI) stays quick::

    from lineside_inspect import Detector, load_recipe, judge
    detector = Detector("models/deeppcb/1")
    verdict = judge(detector.predict([image])[0], load_recipe("recipe.yaml"),
                    detector.card.thresholds, agnostic_iou=detector.card.agnostic_iou)

A reference model (``detector.needs_reference``) compares each image with a defect-free
image of the same view: ``detector.predict([image], [reference])``.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

# onnxruntime sends usage telemetry to Microsoft by default on Linux (its Privacy.md): every
# session made looked up mobile.events.data.microsoft.com. A line box calls nobody; set
# before onnxruntime is first imported, by this package or the training side (which
# imports this first). ort.disable_telemetry_events() alone did not stop the lookups.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from lineside_inspect import opencv  # noqa: F401  (sets OpenCV's pixel limit before any cv2 use)
from lineside_inspect.errors import LinesideError
from lineside_inspect.version import __version__

_LAZY = {
    "Detector": "lineside_inspect.runtime.detector",
    "Detections": "lineside_inspect.runtime.types",
    "ModelPackage": "lineside_inspect.package",
    "ModelCard": "lineside_inspect.package",
    "load_package": "lineside_inspect.package",
    "Recipe": "lineside_inspect.recipes",
    "Verdict": "lineside_inspect.recipes",
    "judge": "lineside_inspect.recipes",
    "load_recipe": "lineside_inspect.recipes",
    "inspect": "lineside_inspect.inspector",
    "Inspection": "lineside_inspect.inspector",
    "create_app": "lineside_inspect.server.app",
    "Settings": "lineside_inspect.config",
    "Reference": "lineside_inspect.references",
    "ReferenceLibrary": "lineside_inspect.references",
    "pair_image": "lineside_inspect.runtime.reference",
}
__all__ = [
    "Detections", "Detector", "Inspection", "LinesideError", "ModelCard", "ModelPackage",
    "Recipe", "Reference", "ReferenceLibrary", "Settings", "Verdict", "__version__",
    "create_app", "inspect", "judge", "load_package", "load_recipe", "pair_image",
]

if TYPE_CHECKING:
    from lineside_inspect.config import Settings
    from lineside_inspect.inspector import Inspection, inspect
    from lineside_inspect.package import ModelCard, ModelPackage, load_package
    from lineside_inspect.recipes import Recipe, Verdict, judge, load_recipe
    from lineside_inspect.references import Reference, ReferenceLibrary
    from lineside_inspect.runtime.detector import Detector
    from lineside_inspect.runtime.reference import pair_image
    from lineside_inspect.runtime.types import Detections
    from lineside_inspect.server.app import create_app


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lineside_inspect' has no attribute {name!r}")
