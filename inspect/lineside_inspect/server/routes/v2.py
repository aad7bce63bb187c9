"""Open Inference Protocol (KServe v2) REST endpoints over the loaded model packages.

``infer`` takes the raw model input (``images``: UINT8 ``[B, 3, S, S]``, letterboxed
RGB) as JSON data or with the binary tensor extension that tritonclient uses, and
answers the model's outputs (boxes, scores, labels) as JSON.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from lineside_inspect.errors import AnswerTooLargeError, BadTensor, describe_validation
from lineside_inspect.oip import flat_data
from lineside_inspect.server.body import read_body
from lineside_inspect.server.deps import (
    LimiterDep,
    LineUser,
    Principal,
    RegistryDep,
    RoleFirstRoute,
    SettingsDep,
    key_holder,
)
from lineside_inspect.server.responses import (
    NOT_READY,
    Datatype,
    InferOutput,
    InferResponse,
    Liveness,
    ModelMetadata,
    ModelReadiness,
    Readiness,
    ServerMetadata,
    TensorMetadata,
    oip_errors,
)

router = APIRouter(route_class=RoleFirstRoute, prefix="/v2", tags=["open inference protocol v2"])

DTYPES = {"UINT8": np.uint8, "FP32": np.float32, "INT64": np.int64, "FP16": np.float16,
          "INT32": np.int32}
NAMES = {np.dtype(v).name: k for k, v in DTYPES.items()}


MAX_BATCH = 64
MAX_DIM = 1 << 20  # any real dimension is far below; keeps shape products small


# The request schema of the protocol (kserve.github.io/website: "Open Inference Protocol"),
# strict: no coercion of true to 1 or "3" to 3, every container of the type it must be.
Parameters = dict[str, bool | int | float | str]


def _uint8(datatype: str) -> str:
    if datatype != "UINT8":
        raise ValueError(f"datatype must be UINT8 (the model's input), got {datatype}")
    return datatype


def _flat_ints(value: Any, info: ValidationInfo) -> Any:
    """'data' as a flat list of integers, flat or nested as its shape (:func:`flat_data`:
    ``[B][3][S][S]``, at most three levels of rows above the integers)."""
    # one error for the whole list rather than one per element (a million of them would
    # cost seconds and hundreds of MB to build and report)
    if value is None:
        return value
    if "datatype" not in info.data:
        # the datatype was refused (FP32, BYTES): its error names the problem; FP32 data
        # was answered "'data' must be a list of integers" (OIP review, session 55)
        return None
    level = flat_data(value, 3)
    if not (type(level) is list and all(type(v) is int for v in level)):
        raise ValueError("'data' must be a list of integers, flat (row-major) or nested as "
                         "its shape")
    return level


class InferInput(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    name: str = Field(..., max_length=256)
    datatype: Annotated[Datatype, AfterValidator(_uint8)]
    shape: list[Annotated[int, Field(ge=1, le=MAX_DIM)]] = Field(..., min_length=4, max_length=4)
    parameters: Parameters = Field(default_factory=dict)
    data: Annotated[list[int] | None, BeforeValidator(_flat_ints)] = None
    _array: np.ndarray | None = PrivateAttr(None)

    @property
    def binary_data_size(self) -> int | None:
        size = self.parameters.get("binary_data_size")
        return None if size is None else int(size)

    @property
    def array(self) -> np.ndarray | None:
        return self._array

    @model_validator(mode="after")
    def _check(self) -> InferInput:
        size = self.parameters.get("binary_data_size")
        if size is not None and (type(size) is not int or size < 0):
            raise ValueError("parameters.binary_data_size must be a non-negative integer")
        if (size is None) == (self.data is None):
            raise ValueError("give the tensor either as 'data' or as binary data "
                             "(parameters.binary_data_size), exactly one of them")
        if self.data is not None:
            count = math.prod(self.shape)
            if len(self.data) != count:
                raise ValueError(f"{len(self.data)} values for shape {self.shape} "
                                 f"({count} expected)")
            try:
                values = np.asarray(self.data, dtype=np.int64)
            except OverflowError:
                values = None
            if values is None or (values.size and (values.min() < 0 or values.max() > 255)):
                raise ValueError("UINT8 values must lie in 0..255")
            self._array = values.astype(np.uint8)
            # only the array is kept: the list holds a pointer per value (8x the tensor)
            # for as long as the request waits for its inference slot
            self.data = None
        return self


class RequestedOutput(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    name: str = Field(..., max_length=256)
    parameters: Parameters = Field(default_factory=dict)


class InferRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    id: str = Field("", max_length=256)
    # not in the protocol's request, but KServe's Python SDK sends it (InferRequest.to_rest):
    # every infer from its REST client was a 400 (OIP review, session 55); checked against
    # the path's model
    model_name: str | None = Field(None, max_length=256)
    parameters: Parameters = Field(default_factory=dict)
    inputs: list[InferInput] = Field(..., min_length=1, max_length=1,
                                     description="the model's one input, 'images'")
    outputs: list[RequestedOutput] = Field(default_factory=list, max_length=16)


# async, and HEAD as GET without a body, as /healthz and /readyz (routes/health.py)
@router.get("/health/live", responses=oip_errors())
@router.head("/health/live", include_in_schema=False)
async def live() -> Liveness:
    return Liveness(live=True)


@router.get("/health/ready", responses={**oip_errors(), **NOT_READY})
@router.head("/health/ready", include_in_schema=False)
async def ready(request: Request, response: Response) -> Readiness:
    ok = bool(getattr(request.app.state, "ready", False))
    response.status_code = 200 if ok else 503
    return Readiness(ready=ok)


@router.get("", responses=oip_errors())
def server_metadata() -> ServerMetadata:
    from lineside_inspect.version import __version__

    return ServerMetadata(name="lineside", version=__version__, extensions=["binary_tensor_data"])


def _outputs(card: Any) -> list[TensorMetadata]:
    """The graph's outputs, the batch axis -1."""
    size, n = card.input.size, card.max_detections
    if card.kind == "anomaly":  # a good-only model
        return [TensorMetadata(name="anomaly_map", datatype="FP32", shape=[-1, 1, size, size]),
                TensorMetadata(name="score", datatype="FP32", shape=[-1])]
    return [TensorMetadata(name="boxes", datatype="FP32", shape=[-1, n, 4]),
            TensorMetadata(name="scores", datatype="FP32", shape=[-1, n]),
            TensorMetadata(name="labels", datatype="INT64", shape=[-1, n])]


def _too_large(values: int, card: Any) -> AnswerTooLargeError:
    return AnswerTooLargeError(
        f"the answer would hold {values:,} values (at most {MAX_ANSWER_VALUES:,}): send "
        f"fewer images per request, or name the outputs you need ({', '.join(card.outputs)}) "
        "in 'outputs'")


def _metadata(registry: Any, name: str, version: str | None) -> ModelMetadata:
    det = registry.detector(name, version)
    size = det.card.input.size
    slot = registry.models()[name]
    outputs = _outputs(det.card)
    return ModelMetadata(
        name=name, versions=list(slot.versions), platform="onnxruntime_onnx",
        inputs=[TensorMetadata(name=det.card.input.name, datatype="UINT8", shape=[-1, 3, size, size])],
        outputs=outputs)


# a model's metadata and readiness are for the keys that may infer with it: anyone who
# reached the port listed the loaded models from a 404 (a viewer key gets no model list
# on /v1 either; OIP review, session 33)
@router.get("/models/{name}", responses=oip_errors(401, 403, 404))
def model_metadata(name: str, who: LineUser, registry: RegistryDep) -> ModelMetadata:
    return _metadata(registry, name, None)


@router.get("/models/{name}/versions/{version}", responses=oip_errors(401, 403, 404))
def model_version_metadata(name: str, version: str, who: LineUser,
                           registry: RegistryDep) -> ModelMetadata:
    return _metadata(registry, name, version)


# HEAD as GET without a body, as the server's health routes (the protocol's readiness)
@router.get("/models/{name}/ready", responses=oip_errors(401, 403, 404))
@router.head("/models/{name}/ready", include_in_schema=False)
def model_ready(name: str, who: LineUser, registry: RegistryDep) -> ModelReadiness:
    registry.detector(name)
    return ModelReadiness(name=name, ready=True)


@router.get("/models/{name}/versions/{version}/ready", responses=oip_errors(401, 403, 404))
@router.head("/models/{name}/versions/{version}/ready", include_in_schema=False)
def model_version_ready(name: str, version: str, who: LineUser,
                        registry: RegistryDep) -> ModelReadiness:
    registry.detector(name, version)
    return ModelReadiness(name=name, ready=True)


# A tensor sent as JSON numbers takes tens of times its JSON's bytes while it is parsed
# (30 MB of JSON: ~850 MB at the peak), and every admitted request may be parsing at once:
# large headers are parsed one at a time, so the peak is one such parse, not 18.
BIG_HEADER = 1 << 20
_BIG_PARSE = threading.BoundedSemaphore(1)
# The most values one answer may hold (~20 bytes each as JSON: about 40 MB, the order of
# max_body_bytes); a good-only model's map is 409,600 values an image at 640 px.
MAX_ANSWER_VALUES = 2 * 1024 * 1024


def _parse(body: bytes, header_len: str | None) -> tuple[InferRequest, bytes]:
    if header_len is not None:
        if not re.fullmatch(r"[0-9]{1,12}", header_len) or int(header_len) > len(body):
            raise BadTensor("Inference-Header-Content-Length does not fit the body")
        n = int(header_len)
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        # pydantic's own JSON parser: bounded nesting depth (a deeply nested body is an
        # error, not a RecursionError) and integers of any size (range-checked below)
        if len(head) <= BIG_HEADER:
            return InferRequest.model_validate_json(head), rest
        with _BIG_PARSE:
            return InferRequest.model_validate_json(head), rest
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if errors and errors[0]["type"] == "json_invalid":
            if header_len is None and "trailing characters" in str(
                    (errors[0].get("ctx") or {}).get("error", "")):
                raise BadTensor("the body goes on after its JSON: binary tensor data needs "
                                "the Inference-Header-Content-Length header (the length of "
                                "the JSON in bytes)") from None
            raise BadTensor("inference request header is not valid JSON (or nests deeper "
                            "than 200 levels)") from None
        raise BadTensor(describe_validation(errors[:5])) from None


def _tensor(spec: InferInput, binary: bytes, offset: int, card: Any) -> tuple[np.ndarray, int]:
    """The model input as a ``[B, 3, S, S]`` array; ``offset``: where in the binary data
    this input's bytes start (the binary tensor extension)."""
    size = card.input.size
    expect = [3, size, size]
    if spec.name != card.input.name:
        raise BadTensor(f"unknown input {spec.name!r}: the model's input is {card.input.name!r}")
    if spec.shape[1:] != expect or not 1 <= spec.shape[0] <= MAX_BATCH:
        raise BadTensor(f"input {spec.name!r}: shape {spec.shape} does not match the model's "
                        f"[B, {', '.join(map(str, expect))}] with B in 1..{MAX_BATCH}")
    count = math.prod(spec.shape)
    size_param = spec.binary_data_size
    if size_param is not None:
        if size_param != count or offset + size_param > len(binary):
            raise BadTensor(f"input {spec.name!r}: binary_data_size {size_param} does not match "
                            f"shape {spec.shape} ({count} bytes) or the body")
        arr = np.frombuffer(binary, dtype=np.uint8, count=count, offset=offset)
        return arr.reshape(spec.shape), offset + size_param
    assert spec.array is not None  # InferInput: data or binary_data_size, never neither
    if spec.array.size != count:
        raise BadTensor(f"input {spec.name!r}: {spec.array.size} values for shape {spec.shape} "
                        f"({count} expected)")
    return spec.array.reshape(spec.shape), offset


async def _infer(request: Request, who: Principal, name: str, version: str | None,
                 registry: Any, limiter: Any, settings: Any) -> Response:
    det = registry.detector(name, version)
    # admitted before the body is read, as /v1/inspect is: bodies in memory stay bounded
    # by (max_concurrency + max_queue) x max_body_bytes, and a full server refuses at once
    async with limiter.admission(key_holder(request, who)):
        body = await read_body(request, settings.max_body_bytes)
        # off the event loop: 30 MB of JSON numbers took 2.4 s to parse, and /healthz and
        # every other request waited that long (attacker review)
        doc, binary = await anyio.to_thread.run_sync(
            _parse, body, request.headers.get("inference-header-content-length"))
        if doc.model_name is not None and doc.model_name != name:
            raise BadTensor(f"the body's model_name {doc.model_name!r} is not the model of "
                            f"the path, {name!r}")
        wanted = [o.name for o in doc.outputs]
        unknown = [n for n in wanted if n not in det.card.outputs]
        if unknown:
            raise BadTensor(f"unknown output {unknown[0]!r} (the model's outputs: "
                            f"{', '.join(det.card.outputs)})")
        batch, used = _tensor(doc.inputs[0], binary, 0, det.card)
        if used != len(binary):
            raise BadTensor(f"{len(binary) - used} bytes of binary data follow the tensors")
        expected = len(batch) * sum(math.prod(o.shape[1:]) for o in _outputs(det.card)
                                    if not wanted or o.name in wanted)
        if expected > MAX_ANSWER_VALUES:  # refused before the inference it would waste
            raise _too_large(expected, det.card)

        # each output in the type the model's metadata names: a graph may give float64
        # boxes or int16 labels (the runtime takes any float and integer), which had no
        # OIP name here, and every infer was a 500 (OIP review, session 36)
        declared = [DTYPES[t.datatype] for t in _outputs(det.card)]  # in the card's order

        def answer() -> bytes:  # in the inference slot: at most max_concurrency at a time
            chosen = [(n, a.astype(t, copy=False)) for n, t, a in zip(
                det.card.outputs, declared, det.forward(np.ascontiguousarray(batch)),
                strict=True) if not wanted or n in wanted]
            values = sum(a.size for _, a in chosen)
            if values > MAX_ANSWER_VALUES:  # a graph whose outputs differ from _outputs'
                raise _too_large(values, det.card)
            result = [InferOutput(name=n, datatype=NAMES[a.dtype.name], shape=list(a.shape),
                                  data=a.reshape(-1).tolist()) for n, a in chosen]
            return InferResponse(model_name=name, model_version=det.card.version, id=doc.id,
                                 outputs=result).model_dump_json().encode()

        content = await limiter.run(answer)
    return Response(content, media_type="application/json")


INFER_ERRORS = oip_errors(400, 401, 403, 404, 408, 413, 415, 503)


@router.post("/models/{name}/infer", responses=INFER_ERRORS, response_model=InferResponse)
async def infer(name: str, request: Request, who: LineUser, registry: RegistryDep,
                limiter: LimiterDep, settings: SettingsDep) -> Response:
    return await _infer(request, who, name, None, registry, limiter, settings)


@router.post("/models/{name}/versions/{version}/infer", responses=INFER_ERRORS,
             response_model=InferResponse)
async def infer_version(name: str, version: str, request: Request, who: LineUser,
                        registry: RegistryDep, limiter: LimiterDep,
                        settings: SettingsDep) -> Response:
    return await _infer(request, who, name, version, registry, limiter, settings)
