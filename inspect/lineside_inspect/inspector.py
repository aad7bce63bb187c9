"""One inspection: image -> detections -> recipe -> verdict, with per-stage timings.

Used by the HTTP endpoint and by camera workers alike, so a verdict means the same
whichever way the frame arrived.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from lineside_inspect.errors import ConfigError, RecipeDoesNotFitFrame
from lineside_inspect.package import ModelCard
from lineside_inspect.recipes import Recipe, judge
from lineside_inspect.recipes.rules import (
    BlankView,
    Verdict,
    blank_view,
    looks,
    roi_outside,
    with_blank_view,
    with_reference_mismatch,
)
from lineside_inspect.references import Reference
from lineside_inspect.runtime.anomaly_map import AnomalyFinding, find_anomalies
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.preprocess import Letterbox
from lineside_inspect.runtime.types import Detections
from lineside_inspect.runtime.unchanged import (
    ALIGN_MAX_SHIFT,
    FIXTURE_PLAY_PX,
    GateResult,
    view_mismatch,
)
from lineside_inspect.runtime.unchanged import check as check_unchanged
from lineside_inspect.schemas import (
    InspectionResult,
    ModelRef,
    Outcome,
    Reason,
    RecipeRef,
    ReferenceUsed,
    Timings,
)


@dataclass(frozen=True)
class ModelVersion:
    """A model by name and version, as served (both :data:`~lineside_inspect.names.Name`
    values): a structured partner, so no one parses the "name version" text users see."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass
class Inspection:
    id: str
    created_at: datetime  # UTC
    verdict: Outcome
    reasons: list[Reason]
    defects: Detections  # the defects the recipe counted
    recipe: Recipe
    detector: Detector
    timings_ms: dict[str, float]
    image: np.ndarray
    camera_id: str | None = None
    part_id: str | None = None
    stored: bool = False
    frame: FrameTiming | None = None  # camera triggers: when the judged frame was captured
    raw: bytes | None = None  # the encoded image as received, kept unaltered by the store
    raw_ext: str | None = None
    reference: Reference | None = None  # what a reference model compared the image with
    reference_shift: tuple[float, float] | None = None  # frame aligned to it by (dx, dy) px
    # every detection the model made, before the recipe counted them (active-learning
    # capture looks at the ones just under a threshold)
    detections: Detections | None = None
    anomaly: AnomalyFinding | None = None  # a good-only model's finding (alone or fused)
    # the good-only model fused with the detector (its name and version as served), if any
    fused: ModelVersion | None = None
    gate: GateResult | None = None  # the recipe's unchanged gate, when it has one
    drawn: bytes | None = None  # the frame as a JPEG with boxes and verdict, when asked for
    # a recipe's tiling: the tiles (forward passes) the frame was cut into; None judged whole
    tiles: int | None = None
    _result_json: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def fused_with(self) -> str | None:
        """"name version" of the good-only model fused with the detector: the text users see
        (the alarm's "judged by", a shadow disagreement's ``fused_with``). Code wanting the
        name or the version reads :attr:`fused`, never splits this."""
        return None if self.fused is None else str(self.fused)

    @property
    def class_names(self) -> list[str]:
        """The classes a reviewer can give a box: the model's, and ``anomaly`` when a
        good-only model had a say."""
        names = list(self.detector.card.class_names)
        return names if self.anomaly is None or "anomaly" in names else [*names, "anomaly"]

    def result(self) -> InspectionResult:
        """The contract the line and the API see (``schemas.InspectionResult``)."""
        card = self.detector.card
        return InspectionResult(
            id=self.id, created_at=self.created_at, verdict=self.verdict, reasons=self.reasons,
            defects=self.defects.to_json(),  # validated by pydantic in one call
            recipe=RecipeRef(name=self.recipe.name, version=self.recipe.version),
            model=ModelRef(name=card.name, version=card.version, sha256=card.sha256),
            camera_id=self.camera_id, part_id=self.part_id,
            timings_ms=Timings(**{k: round(v, 3) for k, v in self.timings_ms.items()}),
            reference=self.reference_used(), stored=self.stored, tiles=self.tiles,
            **({} if self.frame is None else self.frame.fields()))

    def reference_used(self) -> ReferenceUsed | None:
        """The golden image compared with, as the answer and the store say it."""
        if self.reference is None:
            return None
        return ReferenceUsed(
            name=self.reference.name, sha256=self.reference.sha256,
            shift=None if self.reference_shift is None else
            (round(self.reference_shift[0], 2), round(self.reference_shift[1], 2)),
            unchanged=None if self.gate is None else self.gate.unchanged,
            difference=None if self.gate is None else round(self.gate.score, 2))

    def result_json(self) -> str:
        """:meth:`result` as JSON, encoded once: the service encodes it on the inspection's
        worker thread once the store has said whether it is ``stored``, so the event loop
        only sends it. Call it only when the inspection is complete."""
        if self._result_json is None:
            self._result_json = self.result().model_dump_json()
        return self._result_json

    def to_json(self) -> dict[str, Any]:
        return self.result().model_dump(mode="json")


@dataclass(frozen=True)
class FrameTiming:
    """When a triggered camera frame was captured, relative to its trigger."""

    timestamp: float  # time.time() at capture
    age_ms: float  # capture -> judged
    trigger_to_frame_ms: float

    def fields(self) -> dict[str, float]:
        return {"frame_timestamp": self.timestamp, "frame_age_ms": round(self.age_ms, 2),
                "trigger_to_frame_ms": round(self.trigger_to_frame_ms, 2)}


def inspect(image: np.ndarray, detector: Detector, recipe: Recipe, *,
            decode_ms: float = 0.0, camera_id: str | None = None,
            part_id: str | None = None, reference: Reference | None = None,
            anomaly_model: Detector | None = None,
            anomaly_finding: AnomalyFinding | None = None) -> Inspection:
    """Inspect one decoded BGR (or grey) image with ``detector`` under ``recipe``; ``reference`` is
    the golden image a reference model compares it with. ``detector`` may be a good-only
    model (card kind ``anomaly``), judged by its image score; ``anomaly_model`` is one
    fused with the detector (the recipe's ``anomaly.model``); ``anomaly_finding`` is its
    finding on this frame made already (a shadow detector is judged beside the good-only
    model that served, so both verdicts weigh the same anomaly)."""
    outside = roi_outside(recipe, image.shape[1], image.shape[0])
    if outside is not None:  # an error, never a pass no defect could fail
        raise RecipeDoesNotFitFrame(outside)
    clock = time.perf_counter
    gate: GateResult | None = None
    # the contrast check and the gate read the frame before the model does: preprocessing,
    # in timings_ms (its keys are the API's contract). Their time was in no stage, so
    # `total` was short of what a part took (review, session 39)
    t0 = clock()
    # a blank frame or golden is judged by the model but never passed by the gate: two
    # blank images match everywhere
    blank = blank_view(recipe, image, reference)
    if reference is not None and recipe.unchanged_gate is not None and blank is None:
        gate = check_unchanged(image, reference.image, recipe.unchanged_gate)
        if gate.unchanged:  # matches its reference everywhere: nothing for a model to find
            return _unchanged(image, detector, recipe, gate, (clock() - t0) * 1000, decode_ms,
                              camera_id, part_id, reference, fused_model(detector, anomaly_model))
    checks = clock() - t0
    aligned = reference is not None and recipe.align_reference
    t0 = clock()
    # a recipe's tiling: single-image detectors alone, judged alone (a recipe tiling for a
    # reference or good-only model, or fusing one, is refused when put; pre_process refuses
    # a reference pair or a good-only model given a tiling, and here a fused one: its
    # finding was of the detector's first tile, said as the frame's; review, session 45)
    if recipe.tiling is not None and anomaly_model is not None \
            and detector.card.kind != "anomaly":
        raise ConfigError(f"recipe {recipe.name}: tiling takes single-image detectors, and it "
                          f"fuses good-only model {anomaly_model.card.name} with its detector, "
                          "whose image score and map are of the whole frame")
    batch, letterboxes = detector.pre_process(
        [image], None if reference is None else [reference.image], align=aligned,
        tiling=recipe.tiling)
    pre = checks + clock() - t0
    t0 = clock()
    outputs = detector.forward(batch)
    infer = clock() - t0
    fused: tuple[list[np.ndarray], list[Letterbox]] | None = None
    if anomaly_model is not None and detector.card.kind != "anomaly":
        t0 = clock()
        a_batch, a_boxes = _anomaly_input(image, anomaly_model, detector, batch, letterboxes)
        pre += clock() - t0
        t0 = clock()
        fused = anomaly_model.forward(a_batch), a_boxes
        infer += clock() - t0
    t0 = clock()
    finding: AnomalyFinding | None = None
    if detector.card.kind == "anomaly":  # alone: its regions are findings, not detections
        finding = _finding(outputs, letterboxes, detector, recipe)
        detections = Detections.empty(detector.class_names)
    else:
        detections = detector.post_process(outputs, letterboxes)[0]
        if fused is not None and anomaly_model is not None:
            finding = _finding(fused[0], fused[1], anomaly_model, recipe)
        elif anomaly_finding is not None and recipe.anomaly is not None:
            finding = anomaly_finding
    verdict = _verdict(image, detector.card, recipe, detections, finding, reference, blank)
    post = clock() - t0
    timings = {"decode": decode_ms, "preprocess": pre * 1000, "infer": infer * 1000,
               "postprocess": post * 1000}
    timings["total"] = sum(timings.values())
    return Inspection(
        id=uuid.uuid4().hex, created_at=datetime.now(UTC), verdict=verdict.outcome,
        reasons=verdict.reasons, defects=verdict.defects,
        recipe=recipe, detector=detector, timings_ms=timings, image=image,
        camera_id=camera_id, part_id=part_id, reference=reference,
        reference_shift=(letterboxes[0].shift_x, letterboxes[0].shift_y) if aligned else None,
        detections=detections, anomaly=finding, gate=gate,
        fused=fused_model(detector, anomaly_model),
        tiles=len(letterboxes) if any(lb.origin is not None for lb in letterboxes) else None,
    )


def _verdict(image: np.ndarray, card: ModelCard, recipe: Recipe, detections: Detections,
             finding: AnomalyFinding | None, reference: Reference | None,
             blank: BlankView | None) -> Verdict:
    """``recipe`` applied to what the model of ``card`` found on ``image`` (and, fused or
    alone, a good-only model's ``finding``), then to the frame's view: unlike its
    ``reference`` nearly everywhere, or ``blank``."""
    if card.kind == "anomaly":
        verdict = judge(detections, recipe, {}, finding)
    else:
        verdict = judge(detections, recipe, card.thresholds, finding,
                        agnostic_iou=card.agnostic_iou)
    if reference is not None:  # a part the gate passed matched its golden: never here
        verdict = with_reference_mismatch(verdict, view_mismatch(
            image, reference.image, max_shift_px=_view_shift(recipe)))
    return with_blank_view(verdict, blank)


def with_finding(done: Inspection, anomaly_model: Detector,
                 finding: AnomalyFinding | None) -> Inspection:
    """``done``, a detector's inspection of a frame under a recipe that fuses a good-only
    model, made with no good-only finding, judged again with ``anomaly_model``'s
    ``finding`` on the same frame (:func:`anomaly_finding`): the verdict
    ``inspect(anomaly_model=anomaly_model)`` gives, the detector not run again. A gate
    judging versions of the good-only partner runs the recipe's detector once per image
    and fuses each version's finding with its detections. A part the recipe's unchanged
    gate passed stays passed (inspect runs no model on it; ``finding`` may be None there).
    The timings are the detector's."""
    if done.detector.card.kind == "anomaly" or done.anomaly is not None or done.detections is None:
        raise ValueError("with_finding takes a detector's inspection made with no good-only "
                         "finding")
    fused = fused_model(done.detector, anomaly_model)
    if done.gate is not None and done.gate.unchanged:
        return replace(done, id=uuid.uuid4().hex, fused=fused)
    if finding is None:
        raise ValueError("with_finding needs the good-only model's finding on the frame")
    verdict = fused_verdict(done.image, done.detector.card, done.recipe, done.detections,
                            finding, done.reference)
    return replace(done, id=uuid.uuid4().hex, verdict=verdict.outcome, reasons=verdict.reasons,
                   defects=verdict.defects, anomaly=finding, fused=fused)


def fused_verdict(image: np.ndarray, card: ModelCard, recipe: Recipe, detections: Detections,
                  finding: AnomalyFinding, reference: Reference | None) -> Verdict:
    """The verdict of ``recipe``, which fuses a good-only model with the detector of
    ``card``, on ``image``: the ``detections`` that detector made of it (all of them, as
    ``Inspection.detections`` holds them) fused with the good-only model's ``finding``,
    then the frame's view against ``reference`` (the golden a reference detector
    compared it with). The verdict :func:`inspect` gives with ``anomaly_model``, the
    detector not run again: :func:`with_finding` (a gate judging versions of the good-only
    partner) and a shadow of that partner (its own process holds only the candidate and is
    sent the served detector's result) judge with it. A part the recipe's unchanged gate
    passed ran no model: its verdict is the served one (see :func:`with_finding`)."""
    return _verdict(image, card, recipe, detections, finding, reference,
                    blank_view(recipe, image, reference))


def _finding(outputs: list[np.ndarray], letterboxes: list[Letterbox], model: Detector,
             recipe: Recipe) -> AnomalyFinding:
    """A good-only ``model``'s finding on one image from its outputs, under ``recipe``: at
    the recipe's image threshold when it sets one (regions start no higher: a lower one
    failed parts with no region to show), the map judged where the recipe looks (roi, not
    ignore)."""
    level = recipe.anomaly.threshold if recipe.anomaly is not None else None
    return find_anomalies(outputs, letterboxes, model.card, level, looks=looks(recipe))[0]


def anomaly_finding(image: np.ndarray, anomaly_model: Detector, recipe: Recipe) -> AnomalyFinding:
    """The finding of ``anomaly_model``, the good-only model ``recipe`` fuses with a
    detector, on ``image``, as :func:`inspect` makes it: made once and given to several
    inspections of the same frame (``inspect(anomaly_finding=)``), so each weighs the same
    anomaly and the model runs once. A gate's replay judges both detectors with it."""
    batch, letterboxes = anomaly_model.pre_process([image])
    return _finding(anomaly_model.forward(batch), letterboxes, anomaly_model, recipe)


def _view_shift(recipe: Recipe) -> int:
    """How far a part may sit off its golden before its frame is another view: as far as
    alignment looks, or the gate's fixture play."""
    if recipe.align_reference:
        return ALIGN_MAX_SHIFT
    gate = recipe.unchanged_gate
    return gate.max_shift_px if gate is not None else FIXTURE_PLAY_PX


def fused_model(detector: Detector, anomaly_model: Detector | None) -> ModelVersion | None:
    """``Inspection.fused``: the good-only model fused with ``detector``, if any."""
    if anomaly_model is None or detector.card.kind == "anomaly":
        return None
    return ModelVersion(anomaly_model.card.name, anomaly_model.card.version)


def fused_name(detector: Detector, anomaly_model: Detector | None) -> str | None:
    """``Inspection.fused_with``: the text of :func:`fused_model` (the fail-rate alarm
    names what judges a recipe now with it, and must match the inspections' text)."""
    fused = fused_model(detector, anomaly_model)
    return None if fused is None else str(fused)


def _unchanged(image: np.ndarray, detector: Detector, recipe: Recipe, gate: GateResult,
               checks_ms: float, decode_ms: float, camera_id: str | None, part_id: str | None,
               reference: Reference, fused: ModelVersion | None) -> Inspection:
    """A part the unchanged gate passed: judged on no detections (so the recipe's own
    rules still decide, as for any part the detector found nothing on)."""
    detections = Detections.empty(detector.class_names)
    verdict = judge(detections, recipe, detector.card.thresholds,
                    agnostic_iou=detector.card.agnostic_iou)
    timings = {"decode": decode_ms, "preprocess": checks_ms, "infer": 0.0, "postprocess": 0.0}
    timings["total"] = sum(timings.values())
    return Inspection(
        id=uuid.uuid4().hex, created_at=datetime.now(UTC), verdict=verdict.outcome,
        reasons=verdict.reasons, defects=verdict.defects, recipe=recipe, detector=detector,
        timings_ms=timings, image=image, camera_id=camera_id, part_id=part_id,
        reference=reference, detections=detections, gate=gate, fused=fused)


def _anomaly_input(image: np.ndarray, anomaly_model: Detector, detector: Detector,
                   batch: np.ndarray, letterboxes: list[Letterbox],
                   ) -> tuple[np.ndarray, list[Letterbox]]:
    """The fused good-only model's input: the detector's own when it is the same RGB
    letterbox (same size and border), else the image letterboxed for it."""
    same = (not detector.needs_reference and anomaly_model.size == detector.size
            and anomaly_model.card.input.letterbox == detector.card.input.letterbox)
    return (batch, letterboxes) if same else anomaly_model.pre_process([image])
