"""A model package as a Triton Inference Server model repository.

``lineside export --triton REPO PACKAGE`` writes ``REPO/<name>/config.pbtxt`` and
``REPO/<name>/<n>/model.onnx`` (Triton's layout for the ONNX Runtime backend), with the
package's card beside the graph as ``REPO/<name>/<n>/model.json``: a box whose recipe
sends inference to that Triton may name that folder as its ``remote.card`` (Triton
ignores files it has no use for).

The config is built from the verified graph itself (names, element types, dimensions),
so it cannot drift from what Triton will load; the card's checks (load_package) have
already tied the graph to the card. The batch dimension is the graph's dynamic first
one, and ``dynamic_batching`` lets Triton gather frames from several boxes into one run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from lineside_inspect.atomic import write_atomic
from lineside_inspect.errors import ConfigError, PackageError
from lineside_inspect.package import CARD, GRAPH, ModelPackage, card_json, load_package

CONFIG = "config.pbtxt"

# ONNX element types and the names Triton's model_config.proto gives them
TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16", onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64", onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.STRING: "TYPE_STRING", onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: list[int]  # without the batch dimension; -1 where the graph's is dynamic


@dataclass(frozen=True)
class TritonModel:
    """What the config says, read from the graph."""

    name: str
    version: int
    max_batch_size: int
    inputs: list[Tensor]
    outputs: list[Tensor]


def _tensors(values: list[onnx.ValueInfoProto], graph: Path) -> list[Tensor]:
    tensors = []
    for v in values:
        tt = v.type.tensor_type
        if tt.elem_type not in TRITON_TYPES:
            kind = onnx.TensorProto.DataType.Name(tt.elem_type)
            raise PackageError(f"{graph}: tensor {v.name!r} is of type {kind}, "
                               "which Triton has no type for")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if not dims or dims[0] != -1:
            raise PackageError(f"{graph}: tensor {v.name!r} has no dynamic batch dimension "
                               f"(dims {dims}): Lineside graphs batch along the first one")
        tensors.append(Tensor(v.name, TRITON_TYPES[tt.elem_type], dims[1:]))
    return tensors


def describe(package: ModelPackage, *, version: int | None = None,
             max_batch_size: int = 16) -> TritonModel:
    """The Triton model for ``package``: its version folder is ``version``, else the
    card's version if it is a positive integer (Triton's version folders are numbers)."""
    card = package.card
    if version is None:
        if not card.version.isdigit() or int(card.version) < 1:
            raise ConfigError(f"model version {card.version!r} is not a number: Triton's "
                              "version folders are positive integers (give --triton-version N)")
        version = int(card.version)
    if version < 1:
        raise ConfigError(f"Triton version folders are positive integers, got {version}")
    if not 1 <= max_batch_size <= 1024:
        raise ConfigError(f"max batch size must lie in 1..1024, got {max_batch_size}")
    model = (onnx.load(str(package.graph_path), load_external_data=False)
             if package.graph is None else onnx.load_model_from_string(package.graph))
    initialisers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    return TritonModel(card.name, version, max_batch_size,
                       _tensors(inputs, package.graph_path),
                       _tensors(list(model.graph.output), package.graph_path))


def config_text(model: TritonModel, package: ModelPackage, *, queue_delay_us: int) -> str:
    """``config.pbtxt`` in protobuf text format (model_config.proto's ModelConfig)."""

    def q(text: str) -> str:  # a protobuf text string: JSON's escapes are a subset it reads
        return json.dumps(text, ensure_ascii=True)

    def tensors(kind: str, items: list[Tensor]) -> list[str]:
        lines = [f"{kind} ["]
        for i, t in enumerate(items):
            sep = "," if i < len(items) - 1 else ""
            lines.append(f"  {{ name: {q(t.name)} data_type: {t.data_type} "
                         f"dims: [ {', '.join(map(str, t.dims))} ] }}{sep}")
        return [*lines, "]"]

    card = package.card
    lines = [
        f"# written by lineside export --triton from {card.name} {card.version}",
        f"name: {q(model.name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {model.max_batch_size}",
        "version_policy: { latest: { num_versions: 1 } }",
        *tensors("input", model.inputs),
        *tensors("output", model.outputs),
        # frames from several boxes or cameras run as one batch, waiting at most this long
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
        # a GPU instance where Triton has one, else CPU
        "instance_group [ { kind: KIND_AUTO count: 1 } ]",
        "parameters [",
        f"  {{ key: \"lineside.card_sha256\" value: {{ string_value: {q(card.sha256)} }} }},",
        f"  {{ key: \"lineside.class_names\" value: {{ string_value: {q(json.dumps(card.class_names))} }} }}",
        "]",
    ]
    return "\n".join(lines) + "\n"


def export_triton(package: str | Path, repo: str | Path, *, version: int | None = None,
                  max_batch_size: int = 16, queue_delay_us: int = 500,
                  overwrite: bool = False) -> Path:
    """Write ``package`` into the Triton model repository ``repo``; returns the model's
    folder. An existing version folder is replaced only with ``overwrite``."""
    pkg = load_package(package)  # verified: sha256, graph against card
    if not 0 <= queue_delay_us <= 10_000_000:
        raise ConfigError(f"queue delay must lie in 0..10000000 microseconds, got {queue_delay_us}")
    model = describe(pkg, version=version, max_batch_size=max_batch_size)
    folder = Path(repo) / model.name
    target = folder / str(model.version)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} exists: pass --overwrite to replace that version")
    config = config_text(model, pkg, queue_delay_us=queue_delay_us)
    existing = folder / CONFIG
    if existing.is_file() and _shape(existing.read_text()) != _shape(config) and not overwrite:
        raise ConfigError(f"{existing} describes other tensors than {pkg.ref}: every version "
                          "of a Triton model shares one config (pass --overwrite, or export "
                          "under another name)")
    # the version folder is built beside and renamed into place: Triton polling the
    # repository never sees a half-copied graph
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{model.version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    # the bytes load_package verified, not the folder read again (a graph swapped since
    # went to Triton unchecked); the card as it was read
    assert pkg.graph is not None
    files = {GRAPH: pkg.graph, CARD: card_json(pkg.card).encode(),
             **pkg.external}
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    write_atomic(existing, config.encode())
    return folder


def _shape(config: str) -> list[str]:
    """The lines that describe tensors (two exports of one model agree on them)."""
    return [line for line in config.splitlines() if "data_type:" in line]

