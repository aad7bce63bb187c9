"""Open Inference Protocol (KServe v2) REST endpoints over the loaded model packages.

``infer`` takes the raw model input (``images``: UINT8 ``[B, 3, S, S]``, letterboxed
RGB) as JSON data or with the binary tensor extension that tritonclient uses, and
answers the model's outputs (boxes, scores, labels) as JSON.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lineside_inspect.errors import LinesideError
from lineside_inspect.server.body import read_body
from lineside_inspect.server.deps import LimiterDep, LineUser, RegistryDep, SettingsDep

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

DTYPES = {"UINT8": np.uint8, "FP32": np.float32, "INT64": np.int64, "FP16": np.float16,
          "INT32": np.int32}
NAMES = {np.dtype(v).name: k for k, v in DTYPES.items()}


class BadTensor(LinesideError):
    code = "invalid_tensor"
    status = 400


@router.get("/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
def ready(request: Request) -> JSONResponse:
    ok = bool(getattr(request.app.state, "ready", False))
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("")
def server_metadata() -> dict[str, Any]:
    from lineside_inspect import __version__

    return {"name": "lineside", "version": __version__, "extensions": ["binary_tensor_data"]}


def _metadata(registry: Any, name: str, version: str | None) -> dict[str, Any]:
    det = registry.detector(name, version)
    size = det.card.input.size
    slot = registry.models()[name]
    return {
        "name": name, "versions": list(slot.versions), "platform": "onnxruntime_onnx",
        "inputs": [{"name": det.card.input.name, "datatype": "UINT8", "shape": [-1, 3, size, size]}],
        "outputs": [
            {"name": "boxes", "datatype": "FP32", "shape": [-1, det.card.max_detections, 4]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, det.card.max_detections]},
            {"name": "labels", "datatype": "INT64", "shape": [-1, det.card.max_detections]},
        ],
    }


@router.get("/models/{name}")
def model_metadata(name: str, registry: RegistryDep) -> dict[str, Any]:
    return _metadata(registry, name, None)


@router.get("/models/{name}/versions/{version}")
def model_version_metadata(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    return _metadata(registry, name, version)


@router.get("/models/{name}/ready")
def model_ready(name: str, registry: RegistryDep) -> dict[str, Any]:
    registry.detector(name)
    return {"name": name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready")
def model_version_ready(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    registry.detector(name, version)
    return {"name": name, "ready": True}


def _parse(body: bytes, header_len: str | None) -> tuple[dict[str, Any], bytes]:
    if header_len is not None:
        if not header_len.isdigit() or int(header_len) > len(body):
            raise BadTensor("Inference-Header-Content-Length does not fit the body")
        n = int(header_len)
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        doc = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadTensor("inference request header is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadTensor("inference request needs a non-empty 'inputs' list")
    return doc, rest


def _tensor(spec: Any, binary: bytes, offset: int, expect_shape: list[int]) -> tuple[np.ndarray, int]:
    if not isinstance(spec, dict):
        raise BadTensor("each input must be an object")
    name, dtype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if dtype != "UINT8":
        raise BadTensor(f"input {name!r}: datatype must be UINT8, got {dtype!r}")
    if not isinstance(shape, list) or len(shape) != 4 or not all(
            isinstance(d, int) and d > 0 for d in shape):
        raise BadTensor(f"input {name!r}: shape must be 4 positive integers, got {shape!r}")
    if shape[1:] != expect_shape[1:]:
        raise BadTensor(f"input {name!r}: shape {shape} does not match the model's {expect_shape}")
    count = int(np.prod(shape))
    if shape[0] > 64:
        raise BadTensor(f"input {name!r}: batch {shape[0]} over the limit of 64")
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count or offset + size > len(binary):
            raise BadTensor(f"input {name!r}: binary_data_size {size!r} does not match shape "
                            f"{shape} or the body")
        arr = np.frombuffer(binary, dtype=np.uint8, count=count, offset=offset)
        return arr.reshape(shape), offset + size
    data = spec.get("data")
    try:
        values = np.asarray(data, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise BadTensor(f"input {name!r}: 'data' must be a flat list of integers") from None
    if values.size != count:
        raise BadTensor(f"input {name!r}: {values.size} values for shape {shape} ({count} expected)")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise BadTensor(f"input {name!r}: UINT8 values must lie in 0..255")
    return values.astype(np.uint8).reshape(shape), offset


async def _infer(request: Request, name: str, version: str | None, registry: Any,
                 limiter: Any, settings: Any) -> JSONResponse:
    det = registry.detector(name, version)
    body = await read_body(request, settings.max_body_bytes)
    doc, binary = _parse(body, request.headers.get("inference-header-content-length"))
    size = det.card.input.size
    batch, _ = _tensor(doc["inputs"][0], binary, 0, [-1, 3, size, size])
    outputs = await limiter.run(lambda: det.forward(np.ascontiguousarray(batch)))
    wanted = [o.get("name") for o in doc.get("outputs") or [] if isinstance(o, dict)]
    result = []
    for out_name, arr in zip(det.card.outputs, outputs, strict=True):
        if wanted and out_name not in wanted:
            continue
        result.append({"name": out_name, "datatype": NAMES[arr.dtype.name],
                       "shape": list(arr.shape), "data": arr.reshape(-1).tolist()})
    return JSONResponse({"model_name": name, "model_version": det.card.version,
                         "id": doc.get("id", ""), "outputs": result})


@router.post("/models/{name}/infer")
async def infer(name: str, request: Request, who: LineUser, registry: RegistryDep,
                limiter: LimiterDep, settings: SettingsDep) -> JSONResponse:
    return await _infer(request, name, None, registry, limiter, settings)


@router.post("/models/{name}/versions/{version}/infer")
async def infer_version(name: str, version: str, request: Request, who: LineUser,
                        registry: RegistryDep, limiter: LimiterDep,
                        settings: SettingsDep) -> JSONResponse:
    return await _infer(request, name, version, registry, limiter, settings)
