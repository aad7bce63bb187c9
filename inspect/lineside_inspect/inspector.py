"""One inspection: image -> detections -> recipe -> verdict, with per-stage timings.

Used by the HTTP endpoint and by camera workers alike, so a verdict means the same
whichever way the frame arrived.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from lineside_inspect.recipes import Recipe, judge
from lineside_inspect.references import Reference
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.types import Detections


@dataclass
class Inspection:
    id: str
    created_at: datetime
    verdict: str
    reasons: list[dict[str, Any]]
    defects: Detections
    recipe: Recipe
    detector: Detector
    timings_ms: dict[str, float]
    image: np.ndarray
    camera_id: str | None = None
    part_id: str | None = None
    stored: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None  # the encoded image as received, kept unaltered by the store
    raw_ext: str | None = None
    reference: Reference | None = None  # what a reference model compared the image with
    reference_shift: tuple[float, float] | None = None  # frame aligned to it by (dx, dy) px

    def to_json(self) -> dict[str, Any]:
        card = self.detector.card
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(timespec="milliseconds"),
            "verdict": self.verdict,
            "reasons": self.reasons,
            "defects": self.defects.to_json(),
            "recipe": {"name": self.recipe.name, "version": self.recipe.version},
            "model": {"name": card.name, "version": card.version, "sha256": card.sha256},
            "camera_id": self.camera_id,
            "part_id": self.part_id,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "reference": None if self.reference is None else {
                **self.reference.to_json(),
                **({"shift": [round(v, 2) for v in self.reference_shift]}
                   if self.reference_shift is not None else {})},
            "stored": self.stored,
            **self.extra,
        }


def inspect(image: np.ndarray, detector: Detector, recipe: Recipe, *,
            decode_ms: float = 0.0, camera_id: str | None = None,
            part_id: str | None = None, reference: Reference | None = None) -> Inspection:
    """Inspect one decoded BGR image with ``detector`` under ``recipe``; ``reference`` is
    the golden image a reference model compares it with."""
    aligned = reference is not None and recipe.align_reference
    t0 = time.perf_counter()
    batch, letterboxes = detector.pre_process(
        [image], None if reference is None else [reference.image], align=aligned)
    t1 = time.perf_counter()
    outputs = detector.forward(batch)
    t2 = time.perf_counter()
    detections = detector.post_process(outputs, letterboxes)[0]
    verdict = judge(detections, recipe, detector.card.thresholds)
    t3 = time.perf_counter()
    timings = {"decode": decode_ms, "preprocess": (t1 - t0) * 1000, "infer": (t2 - t1) * 1000,
               "postprocess": (t3 - t2) * 1000}
    timings["total"] = sum(timings.values())
    return Inspection(
        id=uuid.uuid4().hex, created_at=datetime.now(UTC), verdict=verdict.verdict,
        reasons=verdict.reasons, defects=verdict.defects or Detections.empty(detector.class_names),
        recipe=recipe, detector=detector, timings_ms=timings, image=image,
        camera_id=camera_id, part_id=part_id, reference=reference,
        reference_shift=(letterboxes[0].shift_x, letterboxes[0].shift_y) if aligned else None,
    )
