"""What the server's routes answer besides an inspection, as pydantic models, and its one
error shape.

The inspection contract (a verdict, a stored record, a page of them) is
:mod:`lineside_inspect.schemas`; this module holds the server's own shapes: models and
recipes (admin), reference images, camera health, dashboard figures, liveness and
readiness, and the Open Inference Protocol (KServe v2) answers. Routes declare them as
``response_model``, so FastAPI checks what is sent against them and ``/docs`` and
``openapi.json`` describe it, and declare ``responses=errors(...)``: the statuses a route
can answer with :class:`ErrorBody` (which replaces FastAPI's own 422 schema, since the
server answers a validation error in its own shape too).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from lineside_inspect.inspector import Inspection
from lineside_inspect.recipes import Recipe
from lineside_inspect.redact import hide_secrets, shown_source
from lineside_inspect.schemas import Outcome, Precision, ReviewAction


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# -- errors -----------------------------------------------------------------------------
class ErrorDetail(_Shape):
    code: str = Field(description=(
        "stable and machine-readable, e.g. unauthorized, forbidden, not_found, "
        "invalid_request, image_too_large, overloaded, camera_unavailable, internal_error"))
    message: str = Field(description="what is wrong and how to fix it, for a person")


class ErrorBody(_Shape):
    """Every error the server answers: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class OipErrorBody(_Shape):
    """An error under ``/v2``, in the Open Inference Protocol's shape
    (``server/oip_errors.py``): ``{"error": "<message>", "code": "<code>"}``."""

    error: str = Field(description="what is wrong and how to fix it, for a person")
    code: str | None = Field(None, description="Lineside's code, as ErrorDetail.code")


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": ErrorBody, "description": description}
    if headers:
        doc["headers"] = headers
    return doc


# the statuses and codes the server's error paths produce (errors.py, deps.py, gate.py,
# guard.py, limiter.py, the handlers in app.py)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("a body that cannot be used: invalid_image, invalid_tensor, invalid_request; "
                "(any route) invalid_url: a control character in the URL's path or query"),
    401: _error("unauthorized: no API key or review session, or an unknown or expired one"),
    403: _error("forbidden (the key's role may not do this), foreign_origin (a state-changing "
                "call from another site's page), csrf_failed, path_not_allowed"),
    404: _error("not_found: no such model, version, recipe, reference, camera or inspection"),
    409: _error("review_conflict: the inspection was reviewed by someone else since you looked; "
                "nothing was saved. gate_failed: the model version failed its gate (force it "
                "with a reason, recorded); busy: a gate is already running"),
    408: _error("body_timeout: the request body stopped arriving"),
    413: _error("body_too_large, image_too_large, answer_too_large: over the route's body, "
                "pixel or answer limit"),
    415: _error("unsupported_media_type: the body is not an image type the route takes"),
    421: _error("invalid_host: without API keys the server answers only to loopback names"),
    422: _error("invalid_request: a parameter or JSON body that fails validation (every "
                "invalid field named); or a value the server refuses, e.g. invalid_config, "
                "invalid_model_package, invalid_reference, invalid_reference_name, "
                "invalid_review, unstorable_value (the database refused a value)"),
    429: _error("too_many_failed_sign_ins: too many unknown keys from this address lately; "
                "retry after Retry-After (the key is not checked meanwhile)",
                {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}),
    500: _error("internal_error: unexpected; the message carries an id the server's log has "
                "the details under",
                {"X-Lineside-Error-Id": {"schema": {"type": "string"},
                                         "description": "the id in the message"}}),
    502: _error("remote_inference_refused: the recipe's remote inference endpoint refused the "
                "request (wrong token or model name) or answered what does not fit the card"),
    503: _error("overloaded, deadline_exceeded (retry after Retry-After), camera_unavailable, "
                "remote_inference_unavailable (the recipe's inference endpoint is unreachable)",
                {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}),
    # every other client error is in the same shape (e.g. 405 method_not_allowed); declaring
    # it also keeps FastAPI from adding its own 422 schema, which the server never sends
    "4XX": _error("any other client error"),
}
# any route: the Host check (keyless mode) and an unexpected error
ALWAYS = (421, 500)


def oip_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """:func:`errors` for a ``/v2`` route: the same statuses, in the protocol's shape."""
    return {status: {**doc, "model": OipErrorBody} for status, doc in errors(*statuses).items()}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer ``statuses`` (plus :data:`ALWAYS` and the
    catch-all ``4XX``)."""
    answered = {*statuses, *ALWAYS}
    if 401 in answered:  # whoever checks a key may refuse a guessing address
        answered.add(429)
    return {**{s: ERRORS[s] for s in sorted(answered)}, "4XX": ERRORS["4XX"]}


BINARY = {"schema": {"type": "string", "format": "binary"}}


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operationId: its function's name. Generated clients name their
    methods, and the enums of their inline parameters, after it; FastAPI's default adds
    the path and method (``list_inspections_v1_inspections_get``), and changed with either.
    test_openapi_contract.py pins the list: a renamed function is a change for clients."""
    return route.name


def media(description: str, *types: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entry of a route whose 200 is not JSON but one of ``types``."""
    return {200: {"description": description, "content": {t: BINARY for t in types}}}


# a verdict, or with annotated=1 the JPEG: the JPEG's schema says it is bytes (an empty
# one left generated clients nothing to read it as)
VERDICT_OR_JPEG: dict[int | str, dict[str, Any]] = {200: {
    "content": {"image/jpeg": BINARY},
    "description": "the verdict (JSON), or with annotated=1 the JPEG"}}


def image_body(*, multipart: bool = False) -> dict[str, Any]:
    """``openapi_extra`` request body of a route reading an encoded image as its raw body
    (body.read_image_body). application/octet-stream is listed as well: the server takes
    it (the bytes say their format) and generated clients can send it, where most cannot
    send an image/* body (openapi-python-client left PUT /v1/references out whole).
    ``multipart``: a form with the file field ``image`` (and ``reference``) too."""
    content: dict[str, Any] = {t: BINARY for t in (
        "image/jpeg", "image/png", "image/bmp", "application/octet-stream")}
    if multipart:
        content["multipart/form-data"] = {"schema": {
            "type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "format": "binary"},
                "reference": {"type": "string", "format": "binary"}}}}
    return {"requestBody": {"content": content, "required": True}}


# -- admin: models and recipes ----------------------------------------------------------
class LoadedVersion(_Shape):
    version: str
    sha256: str = Field(description="of the ONNX graph, as the model card states and load verified")
    precision: Precision
    needs_reference: bool = Field(description="a reference model: frames need a reference image")
    kind: Literal["detector", "anomaly"] = Field(
        "detector", description="detector, or a good-only (anomaly) model: anomaly map and score")
    providers: list[str] = Field(description="the onnxruntime execution providers in use")
    path: str = Field(description="the package folder on the server (to load it again)")


class UnloadedVersion(_Shape):
    version: str
    sha256: str = Field(description="of the ONNX graph, as its card states")
    path: str = Field(description="the package folder it loads again from (a rollback does)")


class LoadedModel(_Shape):
    name: str
    active: str | None = Field(description="the version new requests get")
    history: list[str] = Field(description="earlier active versions, oldest first (rollback pops)")
    versions: list[LoadedVersion] = Field(description="the versions loaded in memory")
    unloaded: list[UnloadedVersion] = Field(default_factory=list, description=(
        "versions once loaded and unloaded since (DELETE /v1/models/NAME/versions/VERSION, "
        "or beyond keep_loaded): their packages stay on disk"))


class VersionUnloaded(_Shape):
    """A version taken out of memory by ``DELETE /v1/models/{name}/versions/{version}``."""

    name: str
    version: str
    loaded: list[str] = Field(description="the model's versions still loaded")


class ModelLoaded(_Shape):
    """A package loaded (and warmed up) by ``POST /v1/models``."""

    name: str
    version: str
    sha256: str
    active: str | None = Field(description="the model's active version after the load")


class ActiveVersion(_Shape):
    name: str
    active: str = Field(description="the version new requests get now")


class ListedRecipe(Recipe):
    default: bool = Field(description="the recipe of requests that name none")
    put_over_api: bool = Field(description=(
        "put over the API and kept in the data folder over restarts (DELETE drops it), "
        "rather than the configuration's"))


class RecipeDropped(_Shape):
    name: str
    recipe: Recipe | None = Field(description=(
        "the configuration's recipe of this name, which judges again; null: none, the "
        "recipe is gone (or, with waits, not loaded yet)"))
    # only when it has something to say: a drop answered as before otherwise
    waits: str | None = Field(None, exclude_if=lambda w: w is None, description=(
        "a fleet box: the configuration's recipe of this name waits for its model from the "
        "hub, and is put once the box pulls it (why it waits); inspections with it answer "
        "404 saying so until then"))


# -- references -------------------------------------------------------------------------
class ReferenceList(_Shape):
    items: list[str] = Field(description="registered reference names, sorted")


class StoredReference(_Shape):
    name: str
    sha256: str = Field(description="of the file as sent (and kept)")
    width: int
    height: int


# -- cameras and the dashboard ----------------------------------------------------------
class CameraHealth(_Shape):
    id: str
    state: Literal["starting", "online", "stale", "offline", "stopped"] = Field(description=(
        "starting: opening, or opened and its first frame since start not in yet (for "
        "up to stale_after_s); online: frames arrive; stale: connected but no frame within "
        "stale_after_s; offline: reconnecting after an error"))
    fps: float = Field(description="frames per second over the last 5 s")
    last_frame_age_s: float | None
    frames: int
    reconnects: int
    last_error: str | None = Field(description="a URL's password in it shown as ***")
    source: str = Field(description="as configured, a URL's password shown as ***; a file "
                        "or folder by its name alone")
    mode: Literal["triggered", "continuous"]
    recipe: str | None = Field(description=(
        "the configured recipe, which HTTP triggers and continuous inspection use (None: "
        "the server's default)"))
    plc_recipe: str | None = Field(None, description=(
        "the recipe its PLC station's triggers use now (the PLC's last accepted Recipe "
        "write, else the configured or default one); None without a PLC line"))

    @field_validator("last_error")
    @classmethod
    def _hide_password(cls, value: str | None) -> str | None:
        # viewers may read camera health; the camera's password is not theirs to read
        # (an open error quotes the source)
        return None if value is None else hide_secrets(value)

    @field_validator("source")
    @classmethod
    def _shown(cls, value: str) -> str:
        return shown_source(value)


# the yield after review, beside each figure's first pass (store/stats.py)
PassesAfterReview = Annotated[int, Field(description=(
    "passes after review: overturned fails (false rejects) are passes, passes a "
    "reviewer drew a missed defect on (escapes) are fails; unreviewed ones keep the "
    "machine's verdict"))]
UnreviewedFails = Annotated[int, Field(description=(
    "fails no review has judged (retention's removed fails as they were when removed; "
    "every one an earlier release removed); reviewed_yield_pct counts them as fails"))]
ReviewedYieldPct = Annotated[float | None, Field(description=(
    "passes_after_review / inspections in %; None when none"))]


class Figure(_Shape):
    """Inspections in a period (an hour or a shift) and their yield."""

    start: datetime
    end: datetime
    passes: int
    fails: int
    inspections: int
    yield_pct: float | None = Field(description=(
        "the machine's first pass: passes / inspections in %; None when none"))
    passes_after_review: PassesAfterReview
    unreviewed_fails: UnreviewedFails
    reviewed_yield_pct: ReviewedYieldPct


class ParetoClass(_Shape):
    label: str = Field(description="the class name, in full")
    parts: int = Field(description="inspections with a counted defect of this class")
    cumulative_pct: float = Field(description="share of all class occurrences up to this one")


class StationFigure(_Shape):
    camera_id: str | None = Field(description="None: sent to /v1/inspect without a camera")
    recipe: str
    box_id: str | None = Field(None, description="the box whose camera it is (a hub's)")
    passes: int
    fails: int
    inspections: int
    yield_pct: float | None
    passes_after_review: PassesAfterReview
    unreviewed_fails: UnreviewedFails
    reviewed_yield_pct: ReviewedYieldPct


class VersionFigure(_Shape):
    """One model version's inspections in the window (of one box, model and recipe)."""

    box_id: str | None = Field(None, description="the box whose inspections it judged (a hub's)")
    model: str
    recipe: str
    version: str
    first: datetime | None = Field(description="its first inspection in the window")
    last: datetime | None = Field(description="its last inspection in the window")
    passes: int
    fails: int
    inspections: int
    yield_pct: float | None
    passes_after_review: PassesAfterReview
    unreviewed_fails: UnreviewedFails
    reviewed_yield_pct: ReviewedYieldPct


class ModelChange(_Shape):
    at: datetime = Field(description="the first inspection judged by this version")
    model: str
    recipe: str
    version: str
    previous: str | None = Field(description="the version before; None: in use as the window opens")
    box_id: str | None = Field(None, description="the box whose inspections it judged (a hub's)")


class ReviewQuality(_Shape):
    """Among the window's reviewed inspections."""

    reviewed_fails: int
    false_rejects: int = Field(description="reviewed fails whose reviewed truth has no defect")
    false_reject_rate: float | None
    reviewed_passes: int
    escapes: int = Field(description="reviewed passes a reviewer drew a missed defect on")
    escape_rate: float | None


class ReviewerCount(_Shape):
    reviewer: str
    box_id: str | None = Field(None, description=(
        "the box the reviews were made on (a hub's own: 'hub'); None for reviews from "
        "before it was recorded, of an inspection no box owns"))
    reviews: int
    actions: dict[str, int] = Field(description="reviews per action")


class DashboardStats(_Shape):
    since: datetime
    until: datetime
    camera_id: str | None = Field(description="the camera every figure is narrowed to ('': uploads)")
    recipe: str | None = Field(description="the recipe every figure is narrowed to")
    part_id: str | None = Field(None, description=(
        "the part every figure is narrowed to: its inspections still kept (retention's "
        "history of removed ones keeps no part ids)"))
    shift_starts: list[str] = Field(description="'HH:MM' in shift_timezone (setting shifts)")
    shift_timezone: str
    hourly: list[Figure] = Field(description=(
        "every UTC hour of the window, oldest first; with the inspections retention removed "
        "(counted at their hour's start)"))
    shifts: list[Figure] = Field(description=(
        "whole shifts touching the window, the last one ongoing; with the inspections "
        "retention removed"))
    pareto: list[ParetoClass] = Field(description=(
        "defect classes, most frequent first; of the inspections still kept (retention's "
        "removed ones are not counted)"))
    stations: list[StationFigure] = Field(description=(
        "per camera and recipe over the window; with the inspections retention removed"))
    model_changes: list[ModelChange] = Field(description=(
        "version changes per model and recipe, among the inspections still kept"))
    model_changes_cut: bool = Field(description="more changes than listed")
    versions: list[VersionFigure] = Field(default_factory=list, description=(
        "per model version (and box, model, recipe), first pass and after review: a "
        "promotion's effect; of the inspections still kept (retention's history keeps no "
        "versions)"))
    quality: ReviewQuality = Field(description=(
        "among the reviewed inspections still kept (retention may remove reviewed ones)"))
    reviewers: list[ReviewerCount] = Field(description=(
        "reviews made in the window, busiest first, of inspections still kept"))
    verdicts_per_hour: dict[str, dict[Outcome, int]] = Field(description=(
        "'YYYY-MM-DD HH:00' (UTC) -> inspections per verdict, oldest first (as hourly)"))
    defects_per_class: dict[str, int] = Field(description="counted defects per class (as pareto)")
    inspections_per_camera: dict[str, int] = Field(description=(
        "'(upload)': sent to /v1/inspect; with the inspections retention removed"))
    reviewed_fails: int = Field(description=(
        "failed parts a reviewer confirmed or corrected (all time, among those still kept)"))
    false_rejects_confirmed: int = Field(description=(
        "failed inspections whose reviewed truth is a good part, as quality.false_rejects "
        "counts them, over all time (each once however many reviews agree)"))
    false_reject_rate_reviewed: float | None = Field(
        description="false_rejects_confirmed / reviewed_fails; None before any reviewed fail")
    cameras: list[CameraHealth]


class ReviewerCounts(_Shape):
    since: datetime = Field(description="the current shift's start (UTC) unless asked otherwise")
    reviewers: list[ReviewerCount] = Field(description="reviews made since then, busiest first")


class ReviewLogEntry(_Shape):
    id: int
    created_at: datetime
    reviewer: str
    action: ReviewAction
    inspection_id: str
    verdict: Outcome = Field(description="the inspection's verdict")
    camera_id: str | None
    box_id: str | None = Field(None, description="the box whose inspection it is")
    defects_after: int = Field(description="defects in the reviewed truth after this review")
    note: str


class ReviewLog(_Shape):
    """The reviews' audit trail, newest first."""

    total: int = Field(description="stored reviews matching, those left out included")
    limit: int
    offset: int
    items: list[ReviewLogEntry]
    left_out: int = Field(0, exclude_if=lambda n: n == 0, description=(
        "reviews of this page left out: stored fields that do not read as a review (a "
        "hand-edited row, another writer's); the next page is at offset + limit"))


# -- health -----------------------------------------------------------------------------
class Health(_Shape):
    status: Literal["ok"]


class Readiness(_Shape):
    ready: bool = Field(description="models loaded and warmed up, not shutting down (else 503)")


# the 503 of a readiness probe: the same shape, not an error
NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": Readiness, "description": "not ready: loading models, or shutting down"}}


# -- Open Inference Protocol (KServe v2) ------------------------------------------------
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                   "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"]


class Liveness(_Shape):
    live: bool


class ServerMetadata(_Shape):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(_Shape):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1: any size (the batch)")


class ModelMetadata(_Shape):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReadiness(_Shape):
    name: str
    ready: bool


class InferOutput(_Shape):
    name: str
    datatype: Datatype
    shape: list[int]
    data: list[int] | list[float] = Field(description="the tensor's values, flat, row-major")


class InferResponse(_Shape):
    """KServe's InferenceResponse: the model's outputs as JSON."""

    model_name: str
    model_version: str
    id: str = Field(description="the request's id ('' when it sent none)")
    outputs: list[InferOutput]


def verdict_response(result: Inspection) -> Response:
    """An inspection's verdict as JSON, serialised once by pydantic's own encoder: the route
    declares ``InspectionResult`` for the docs but skips FastAPI re-validating and
    re-encoding a model just built (about half a millisecond per inspection). The service
    has encoded it already, on the inspection's worker thread."""
    return Response(result.result_json(), media_type="application/json")


def annotated_response(result: Inspection) -> Response:
    """An inspection's frame as the service drew it (``draw=True``): a JPEG with its boxes
    and verdict, the verdict in ``X-Lineside-*`` headers."""
    if result.drawn is None:
        raise RuntimeError(f"inspection {result.id} was not drawn")
    card = result.detector.card
    return Response(result.drawn, media_type="image/jpeg", headers={
        "X-Lineside-Inspection-Id": result.id, "X-Lineside-Verdict": result.verdict,
        "X-Lineside-Model": f"{card.name}:{card.version}"})
