"""Remote inference: a detector whose ``forward`` runs on an Open Inference Protocol
(KServe v2) endpoint (Triton, KServe, another Lineside's ``/v2``).

Everything but the forward pass stays on the box: the letterbox and reference pair
before it, the mapping of boxes back to pixels and the recipe's verdict after it, all
from the model card the recipe names. So a remote recipe judges exactly as the same
recipe would with the package loaded locally, and the service's one inspection path
does not know the difference.

The tensor goes out with the protocol's binary tensor extension (a 640x640 frame is
1.2 MB of bytes rather than ~4 MB of JSON numbers); the outputs come back as JSON (a
hundred detections at most). Every exchange, from connecting to the answer's last byte,
ends within the recipe's ``timeout_s``: httpx's timeouts are per read, so a server sending
its headers a byte at a time held an inference slot for as long as it liked. The client
is httpcore's connection pool (httpx's own transport) with a network backend that gives
each socket operation only what is left of the exchange's time, and no decoding: an
answer is taken only as sent (``Accept-Encoding: identity``; 317 bytes of brotli were
200 MB in the box's memory).
"""

from __future__ import annotations

import json
import math
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Annotated

import httpcore
import httpx
import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from lineside_inspect.errors import (
    ConfigError,
    PackageError,
    RemoteInferenceRefused,
    RemoteInferenceUnavailable,
)
from lineside_inspect.oip import flat_data
from lineside_inspect.package import CARD, OUTPUT_NAMES, ModelCard, ModelPackage, read_card
from lineside_inspect.recipes.schema import RemoteModel
from lineside_inspect.runtime.detector import Detector, refuse_empty, stack_runs

# a frame's answer is ~11 KB of JSON (100 detections of 6 numbers); the box sends one
# frame per request, so anything far larger is not a detector's answer and is not read
# (a request of several tiles: this much per tile)
MAX_ANSWER_BYTES = 1 << 20
# the most tiles of a tiled recipe's frame sent in one request (~9.8 MB at 640 px, under
# a Lineside endpoint's default max_body_bytes of 32 MB): 64 tiles in one request were
# 78 MB, refused 413 by the endpoint and answered 502 for every such frame; more go
# request after request, each within the recipe's timeout_s
REMOTE_BATCH = 8
DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
          "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8}
# the integer types' ranges, to check values against before they are cast
INT_RANGES = {"INT64": (-(2**63), 2**63 - 1), "INT32": (-(2**31), 2**31 - 1),
              "INT16": (-(2**15), 2**15 - 1), "INT8": (-128, 127), "UINT8": (0, 255)}


class _Deadline(threading.local):
    at: float | None = None  # time.monotonic() by which this thread's exchange must end


_DEADLINE = _Deadline()


def _left(timeout: float | None, late: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` cut to what is left of the calling thread's exchange."""
    at = _DEADLINE.at
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise late("the exchange's time is up")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sockets, each operation within what is left of the exchange."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: object = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address,
            socket_options))  # type: ignore[arg-type]

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: object = None) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("remote inference goes over TCP")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


_UNREACHABLE = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
                httpcore.ConnectionNotAvailable, httpcore.LocalProtocolError)


class _Tensor(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    datatype: str
    shape: list[int] = Field(..., max_length=8)
    # the protocol lets a server nest the data as its shape; ragged rows are refused
    data: Annotated[list[float] | None, BeforeValidator(lambda v: flat_data(v, 8))] = None


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    outputs: list[_Tensor] = Field(..., max_length=32)


class _Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: list[_Tensor] = Field(..., max_length=32)
    outputs: list[_Tensor] = Field(..., max_length=32)


def remote_card(path: str | Path) -> ModelPackage:
    """The card of a remote model: ``path`` is a package folder or its ``model.json``.
    Only the card is read (the graph runs elsewhere and need not be on the box)."""
    folder = Path(path)
    if folder.name == CARD:
        folder = folder.parent
    if not folder.is_dir():
        raise PackageError(f"{path}: no model card there (a package folder or its {CARD})")
    return ModelPackage(folder, read_card(folder))


class OipClient:
    """One model on one OIP v2 endpoint, over httpx (thread-safe; connections kept)."""

    def __init__(self, remote: RemoteModel, card: ModelCard) -> None:
        self.card = card
        self.base = remote.url.rstrip("/")
        path = f"/v2/models/{remote.model}"
        if remote.version is not None:
            path += f"/versions/{remote.version}"
        self.model_url = self.base + path
        try:
            port = httpx.URL(self.model_url).port  # the pattern lets 'host:99999' through
        except httpx.InvalidURL as exc:
            raise ConfigError(f"remote model {remote.model}: invalid url {remote.url!r} ({exc})") from None
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"remote model {remote.model}: invalid port {port} in {remote.url!r}")
        self.where = f"{self.base} model {remote.model}" + (
            f" version {remote.version}" if remote.version else "")
        headers = {"Accept-Encoding": "identity", "User-Agent": "lineside"}
        if remote.token_env is not None:
            token = os.environ.get(remote.token_env)
            if not token:
                raise ConfigError(f"remote model {self.where}: environment variable "
                                  f"{remote.token_env} (its bearer token) is not set")
            headers["Authorization"] = f"Bearer {token}"
        # the whole exchange within timeout_s (see the module's docstring): a black-holed
        # address, a server that never answers and one that trickles headers or answer
        # all end then. Redirects are not followed and proxies from the environment not
        # used (httpcore does neither): the token goes nowhere but the configured url.
        self.timeout_s = remote.timeout_s
        self.headers = headers
        self.pool = httpcore.ConnectionPool(network_backend=_DeadlineBackend(),
                                            max_connections=16)
        self.checked = False  # the endpoint's metadata agreed with the card
        # the endpoint's fixed batch size (its metadata's first input dimension), or None:
        # any. A graph exported with batch 1 behind Triton takes [1, 3, S, S] only, and a
        # tiled frame's 8 tiles a request were refused 400, a 502 for every frame
        self.batch: int | None = None

    def close(self) -> None:
        self.pool.close()

    def _call(self, method: str, url: str, content: bytes | None = None,
              headers: dict[str, str] | None = None, images: int = 1,
              until: float | None = None) -> bytes:
        """One exchange, ended within ``timeout_s`` or by ``until`` (``time.monotonic()``:
        the requests of one batch to an endpoint of a smaller fixed batch share one
        ``timeout_s``, as the single request they replace had)."""
        late = RemoteInferenceUnavailable(
            f"remote inference at {self.where}: no answer within {self.timeout_s} s")
        t = self.timeout_s
        sent = [(k.encode(), v.encode()) for k, v in {**self.headers, **(headers or {})}.items()]
        _DEADLINE.at = time.monotonic() + t if until is None else min(time.monotonic() + t, until)
        try:
            with self.pool.stream(method, url, headers=sent, content=content, extensions={
                    "timeout": {"connect": t, "read": t, "write": t, "pool": t}}) as answer:
                encoding = {k.lower(): v for k, v in answer.headers}.get(
                    b"content-encoding", b"identity").strip().lower()
                if encoding != b"identity":
                    raise RemoteInferenceRefused(
                        f"remote inference at {self.where}: answer sent with Content-Encoding "
                        f"{encoding[:32].decode('latin-1')!r}; only identity is taken")
                body = bytearray()
                for chunk in answer.iter_stream():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES * images:
                        raise RemoteInferenceRefused(
                            f"remote inference at {self.where}: answer over "
                            f"{MAX_ANSWER_BYTES * images} bytes")
                status = answer.status
        except httpcore.TimeoutException:
            raise late from None
        except _UNREACHABLE as exc:
            raise RemoteInferenceUnavailable(
                f"remote inference at {self.where} unreachable ({type(exc).__name__})") from None
        finally:
            _DEADLINE.at = None
        if status >= 500 or status == 429:
            raise RemoteInferenceUnavailable(
                f"remote inference at {self.where}: answered {status}{_detail(body)}")
        if status != 200:
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: answered {status}{_detail(body)}")
        return bytes(body)

    def check(self) -> None:
        """Refuse an endpoint whose model takes another input or gives other outputs
        than the card says (a wrong model name would otherwise judge garbage)."""
        try:
            meta = _Metadata.model_validate_json(self._call("GET", self.model_url))
        except ValidationError:
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: model metadata is not OIP v2") from None
        size = self.card.input.size
        want = (self.card.input.name, "UINT8", [3, size, size])
        have = [(t.name, t.datatype, t.shape[1:]) for t in meta.inputs]
        if have != [want]:
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: the model takes {have}, the card "
                f"{self.card.name} {self.card.version} says {[want]}")
        missing = set(self.card.outputs) - {t.name for t in meta.outputs}
        if missing:
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: the model has no output "
                f"{', '.join(sorted(missing))}")
        first = meta.inputs[0].shape[0]
        if first > REMOTE_BATCH:
            # every request would be padded to it: a metadata batch of 10^6 asked for a
            # terabyte of blank rows
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: the model takes batches of exactly "
                f"{first} images, and a box sends at most {REMOTE_BATCH} a request: serve "
                f"it with a dynamic batch (-1) or a fixed one up to {REMOTE_BATCH}")
        self.batch = first if first > 0 else None
        self.checked = True

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """The card's outputs, in its order, for a ``[B, 3, S, S]`` uint8 batch (a frame's
        tiles: up to 64 rows). Requests carry up to :data:`REMOTE_BATCH` rows, each within
        ``timeout_s``. An endpoint of a fixed batch size gets requests of exactly that many
        rows (the last one filled with blank images, whose answers are dropped); the
        requests making up :data:`REMOTE_BATCH` rows share one ``timeout_s``."""
        if not self.checked:
            self.check()
        fixed = self.batch
        per = fixed or REMOTE_BATCH  # rows a request carries
        # rows one timeout_s covers: a fixed batch of 1 made a frame's 64 tiles 64
        # exchanges of 5 s each, over 5 minutes for an endpoint answering slowly. Split
        # once, here: runs of 8 first, each padded to a batch of 7, sent a 64-tile frame
        # 16 requests, 48 rows of them blank (review, session 46)
        group = REMOTE_BATCH // per * per
        parts = []
        for start in range(0, len(batch), group):
            until = time.monotonic() + self.timeout_s
            for i in range(start, min(start + group, len(batch)), per):
                rows = batch[i:i + per]
                real = len(rows)
                if fixed is not None and real < fixed:
                    rows = np.concatenate([rows, np.zeros((fixed - real, *rows.shape[1:]),
                                                          rows.dtype)])
                out = self._infer(rows, until)
                parts.append(out if real == len(rows) else [o[:real] for o in out])
        if len(parts) == 1:
            return parts[0]
        return [stack_runs(list(o)) for o in zip(*parts, strict=True)]

    def _infer(self, batch: np.ndarray, until: float | None = None) -> list[np.ndarray]:
        data = np.ascontiguousarray(batch, dtype=np.uint8).tobytes()
        head = json.dumps({
            "inputs": [{"name": self.card.input.name, "datatype": "UINT8",
                        "shape": list(batch.shape), "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": n} for n in self.card.outputs],
        }).encode()
        try:
            body = self._call("POST", self.model_url + "/infer", content=head + data, headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(head))}, images=len(batch), until=until)
        except RemoteInferenceRefused:
            self.checked = False  # the model may have been replaced: look again next time
            raise
        return self._outputs(body, len(batch))

    def _outputs(self, body: bytes, batch: int) -> list[np.ndarray]:
        try:
            answer = _Answer.model_validate_json(body)
        except ValidationError:
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: the answer is not OIP v2 JSON outputs "
                "(binary outputs are not requested)") from None
        by_name = {t.name: t for t in answer.outputs}
        n = self.card.max_detections
        arrays = []
        for name in self.card.outputs:
            t = by_name.get(name)
            if t is None or t.data is None or t.datatype not in DTYPES:
                raise RemoteInferenceRefused(
                    f"remote inference at {self.where}: output {name!r} missing or not JSON data")
            if len(t.data) != math.prod(t.shape) or not t.shape or t.shape[0] != batch \
                    or any(d < 0 for d in t.shape) or (len(t.shape) > 1 and t.shape[1] > 10 * n):
                raise RemoteInferenceRefused(
                    f"remote inference at {self.where}: output {name!r} has shape {t.shape} "
                    f"and {len(t.data)} values for a batch of {batch}")
            values = np.asarray(t.data, dtype=np.float64)
            if not np.isfinite(values).all():
                raise RemoteInferenceRefused(
                    f"remote inference at {self.where}: output {name!r} holds NaN or infinity")
            arrays.append(self._cast(name, t.datatype, values).reshape(t.shape))
        return self._fit(arrays)

    def _cast(self, name: str, datatype: str, values: np.ndarray) -> np.ndarray:
        """``values`` (as parsed) in the declared type, checked before the cast: a cast
        wraps (300 as UINT8 is 44) or truncates (2.5 as INT64 is 2), so an out-of-range
        value would otherwise pass every later check as another one."""
        dtype = np.dtype(DTYPES[datatype])
        if datatype in INT_RANGES:
            low, high = INT_RANGES[datatype]
            bad = (values != np.round(values)) | (values < low) | (values > high)
        else:
            with np.errstate(over="ignore"):  # the overflow is what is looked for
                bad = ~np.isfinite(values.astype(dtype))  # FP16 overflows past 65504
        if bad.any():
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: output {name!r} holds {values[bad][0]:g}, "
                f"not a {datatype} value")
        return values.astype(dtype)

    def _fit(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Boxes ``[B, K, 4]``, scores ``[B, K]``, labels ``[B, K]`` of known classes, as
        the local graph gives them, or a refusal: never an index error on the line."""
        boxes, scores, labels = arrays
        k = scores.shape[1] if scores.ndim == 2 else -1
        if boxes.shape != (scores.shape[0], k, 4) or labels.shape != scores.shape:
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: outputs of shapes {boxes.shape}, "
                f"{scores.shape}, {labels.shape} are not boxes [B, K, 4], scores and labels [B, K]")
        if scores.size and (scores.min() < 0 or scores.max() > 1):
            # raw logits (-0.5) were read as padding and passed a defective part
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: scores out of 0..1 (is the graph "
                "the card's, with its sigmoid?)")
        kept = scores > 0  # padding rows carry score 0 and any label
        if kept.any() and (labels[kept].min() < 0 or labels[kept].max() >= len(self.card.class_names)
                           or (labels[kept] != np.round(labels[kept])).any()):
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: labels out of range for the "
                f"card's {len(self.card.class_names)} classes")
        held = boxes[kept]
        if held.size and ((held[:, 2] < held[:, 0]) | (held[:, 3] < held[:, 1])).any():
            # corners swapped or [x, y, w, h]: the size rule dropped them, and a critical
            # defect passed
            raise RemoteInferenceRefused(
                f"remote inference at {self.where}: boxes are not [x1, y1, x2, y2] with "
                "x2 >= x1 and y2 >= y1")
        return [boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64)]


def _detail(body: bytearray) -> str:
    """The endpoint's own error message, if it gave one, shortened: it names the problem
    (wrong token, unknown model) better than the status does."""
    try:
        doc = json.loads(bytes(body[:4096]))
    except (ValueError, UnicodeDecodeError):
        return ""
    message = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(message, dict):  # Lineside's {"error": {"code", "message"}}
        message = message.get("message")
    return f": {str(message)[:200]}" if isinstance(message, str) and message else ""


class RemoteDetector(Detector):
    """A :class:`Detector` whose forward pass runs on an OIP v2 endpoint. Nothing is
    sent at construction: a box starts and serves its other recipes with the endpoint
    down, and this recipe answers 503 until it is back."""

    def __init__(self, remote: RemoteModel) -> None:  # no graph, no onnxruntime session
        self.package = remote_card(remote.card)
        self.card = self.package.card
        if self.card.outputs != list(OUTPUT_NAMES):
            # the answer is checked as detections before any index reaches the line
            raise ConfigError(f"remote model {remote.model}: remote inference takes detectors "
                              f"(outputs {', '.join(OUTPUT_NAMES)}); the card "
                              f"{self.card.name} {self.card.version} has {self.card.outputs}")
        self.size = self.card.input.size
        self.remote = remote
        self.client = OipClient(remote, self.card)
        self.max_batch = REMOTE_BATCH  # the tiles of a frame, a few per request

    def forward(self, batch: np.ndarray) -> list[np.ndarray]:
        # the client splits a frame's tiles into requests, knowing the endpoint's batch;
        # an empty batch is refused before the endpoint is asked anything
        refuse_empty(batch)
        return self.client.infer(batch)
