"""``lineside export --triton``: the written config.pbtxt, read with Triton's own
model_config.proto (shipped in tritonclient), describes the ONNX graph's real inputs and
outputs; the version folder is a verified package."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnx.helper
import pytest
import tritonclient
from google.protobuf import text_format
from tritonclient.utils import triton_to_np_dtype
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.package import load_package

from .conftest import MODEL, ROOT

REF_INT8 = ROOT / "models" / "deeppcb-ref" / "1-int8"


@pytest.fixture(scope="module")
def model_config() -> ModuleType:
    """Triton's ModelConfig message. tritonclient.grpc's package needs grpcio to import,
    the generated module itself only protobuf: load that file alone."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(*args: str) -> Any:
    return CliRunner().invoke(app, ["export", *args])


def _graph_dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def _check_against_graph(config: Any, graph: Path, model_config: ModuleType) -> None:
    model = onnx.load(str(graph), load_external_data=False)
    initialisers = {t.name for t in model.graph.initializer}
    for declared, real in ((config.input, [i for i in model.graph.input if i.name not in initialisers]),
                           (config.output, list(model.graph.output))):
        assert [t.name for t in declared] == [v.name for v in real]
        for t, v in zip(declared, real, strict=True):
            # the element type, through each side's own mapping to numpy
            type_name = model_config.DataType.Name(t.data_type).removeprefix("TYPE_")
            assert np.dtype(triton_to_np_dtype(type_name)) == \
                onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
            dims = _graph_dims(v)
            assert dims[0] == -1  # the graph's batch: Triton batches along it
            assert list(t.dims) == dims[1:]


def test_triton_repository_matches_the_graph(tmp_path: Path, model_config: ModuleType) -> None:
    repo = tmp_path / "repo"
    done = export(str(MODEL), "--triton", str(repo))
    assert done.exit_code == 0, done.output
    # a second model, int8, its version folder named (its card's version is 1-int8)
    done = export(str(REF_INT8), "--triton", str(repo), "--triton-version", "3",
                  "--max-batch", "8", "--batch-delay-us", "2000")
    assert done.exit_code == 0, done.output
    for name, version, package, batch, delay in (("deeppcb", 1, MODEL, 16, 500),
                                                 ("deeppcb-ref", 3, REF_INT8, 8, 2000)):
        text = (repo / name / "config.pbtxt").read_text()
        config = text_format.Parse(text, model_config.ModelConfig())
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == batch
        assert config.HasField("dynamic_batching")
        assert config.dynamic_batching.max_queue_delay_microseconds == delay
        assert [g.kind for g in config.instance_group] == [model_config.ModelInstanceGroup.KIND_AUTO]
        card = load_package(package).card
        assert config.parameters["lineside.card_sha256"].string_value == card.sha256
        version_dir = repo / name / str(version)
        _check_against_graph(config, version_dir / "model.onnx", model_config)
        # the version folder is the package itself: graph unaltered, card beside it
        assert hashlib.sha256((version_dir / "model.onnx").read_bytes()).hexdigest() == card.sha256
        assert load_package(version_dir).card == card


def test_triton_export_refusals(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert export(str(MODEL), "--triton", str(repo)).exit_code == 0
    again = export(str(MODEL), "--triton", str(repo))
    assert again.exit_code == 2 and "exists: pass --overwrite" in again.output
    assert export(str(MODEL), "--triton", str(repo), "--overwrite").exit_code == 0
    unnumbered = export(str(REF_INT8), "--triton", str(repo))
    assert unnumbered.exit_code == 2 and "give --triton-version N" in unnumbered.output
    # a tampered graph never reaches the repository
    tampered = tmp_path / "tampered"
    shutil.copytree(MODEL, tampered)
    with open(tampered / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    refused = export(str(tampered), "--triton", str(repo), "--overwrite")
    assert refused.exit_code == 2 and "does not match the card" in refused.output
    assert hashlib.sha256((repo / "deeppcb" / "1" / "model.onnx").read_bytes()).hexdigest() == \
        load_package(MODEL).card.sha256
    # without --triton, the training export still needs its package folder
    assert "give --out" in export(str(MODEL)).output
