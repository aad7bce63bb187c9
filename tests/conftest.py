"""Shared fixtures: the repository's sample dataset and the DeepPCB training split."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lineside_inspect.serve_process import share_ports

# torch's OpenMP threads wait for work by spinning (libgomp's default): under make test's
# two workers on 2 cores each torch process's 2 threads spun on the cores the other needed,
# and a training test took 2-3x its time (a tiny run 56 s wall beside another, 21 s
# with passive waits; alone, the same; session 42). Only how idle threads wait changes,
# not what is computed: the runs' weights and losses are bit for bit the same. Read
# when torch loads libgomp, so set before any test module imports torch; the
# subprocesses the tests start (torchrun, the CLI) inherit it
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
DEEPPCB = ROOT.parent / "shared" / "datasets" / "deeppcb"

# The files that take longest (a full run's --durations, 2 cores), run first: with make
# test's pytest-xdist --dist loadfile, a long file started last is a tail one worker runs
# while the other idles. Only the order changes; the rest keep theirs.
SLOW_FIRST = ("test_fuzz_api.py", "test_engine.py", "test_edge_install.py",
              "test_fleet_sync_processes.py", "test_line_plc.py", "test_reference_loop.py",
              "test_ui_screens.py", "test_ui_security.py", "test_budget.py", "test_export.py",
              "test_bench_server.py")


def pytest_configure(config: pytest.Config) -> None:
    """Under make test's xdist workers, each picks loopback ports from its own share (half the
    port, mod the worker count): a port one picked for a server not yet bound is never another's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and count.isdigit():
        share_ports(int(worker[2:]), int(count))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A private copy of the canonical DeepPCB sample (tests may modify it)."""
    dst = tmp_path / "sample"
    shutil.copytree(SAMPLE, dst)
    return dst


@pytest.fixture
def deeppcb() -> Path:
    if not (DEEPPCB / "PCBData").is_dir():
        pytest.skip(f"DeepPCB not found at {DEEPPCB}")
    return DEEPPCB


# ---- tiny ONNX detectors (tests of package loading, on both sides) -------------------
def _tiny_graph(size: int = 32, score: float = 0.0, classes: tuple[str, ...] = ("a",),
           *, external: bool = False) -> onnx.ModelProto:
    """A detector answering one box of ``score`` (an initializer) whatever the image."""
    scores = numpy_helper.from_array(np.full((1, 1), score, np.float32), "s")
    nodes = [
        helper.make_node("Constant", [], ["boxes"],
                         value=numpy_helper.from_array(np.array([[[1, 1, 8, 8]]], np.float32))),
        helper.make_node("Identity", ["s"], ["scores"]),
        helper.make_node("Constant", [], ["labels"],
                         value=numpy_helper.from_array(np.zeros((1, 1), np.int64))),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                                      ["N", 3, size, size])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 1, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 1])],
        initializer=[scores])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"lineside.class_names": json.dumps(list(classes))})
    if external:
        onnx.external_data_helper.convert_model_to_external_data(
            model, location="weights.bin", size_threshold=0)
    return model


def _tiny_package(dst: Path, model: onnx.ModelProto, **card: Any) -> Path:
    """``model`` as a package in ``dst`` (external data written beside), its card hashed."""
    dst.mkdir(parents=True)
    onnx.save(model, str(dst / "model.onnx"))
    meta = json.loads(model.metadata_props[0].value)
    size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    doc = {"name": "tiny", "version": "1", "class_names": meta, "input": {"size": size},
           "sha256": hashlib.sha256((dst / "model.onnx").read_bytes()).hexdigest(), **card}
    (dst / "model.json").write_text(json.dumps(doc))
    return dst


@pytest.fixture(scope="session")
def tiny_onnx() -> Any:
    """Builders of tiny detector graphs and their packages (``graph(size, score, classes,
    external=)``, ``package(dst, model, **card)``), made with ``onnx``: what the package
    tests of the edge (test_hostile_packages.py) and the training side (a card rewritten
    beside external data) load."""
    return types.SimpleNamespace(graph=_tiny_graph, package=_tiny_package)
