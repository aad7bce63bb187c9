"""A tiny but real good-only (anomaly) package for tests, built with onnx.helper.

Its graph scores each pixel by how close its grey level is to ``target`` (the "foreign"
material a good part never shows): ``map = clip(1 - sharpness * |grey - target|, 0, 1)``
smoothed by a 5x5 mean, ``score = max(map)``. onnxruntime runs it like any exported
package, so everything after the graph (regions, letterbox mapping, recipes, the server)
is exercised for real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from lineside_inspect.package import GRAPH, META_CLASSES, ModelCard, sha256_file, write_card

GOOD_GREY = 200  # the good part's grey level in the test images
FOREIGN_GREY = 60  # what the graph calls anomalous


def anomaly_graph(size: int, *, target: int = FOREIGN_GREY, sharpness: float = 8.0,
                  outputs: tuple[str, str] = ("anomaly_map", "score"),
                  classes: list[str] | None = None) -> onnx.ModelProto:
    """uint8 ``images [N, 3, S, S]`` -> float32 ``anomaly_map [N, 1, S, S]``, ``score [N]``;
    ``classes``: the class-name metadata an export writes (None: none)."""
    c = helper.make_tensor
    init = [c("scale", TensorProto.FLOAT, [], [1 / 255]),
            c("target", TensorProto.FLOAT, [], [target / 255]),
            c("sharp", TensorProto.FLOAT, [], [sharpness]),
            c("one", TensorProto.FLOAT, [], [1.0]),
            c("zero", TensorProto.FLOAT, [], [0.0]),
            c("axes_c", TensorProto.INT64, [1], [1]),
            c("axes_all", TensorProto.INT64, [3], [1, 2, 3])]
    n = helper.make_node
    nodes = [
        n("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        n("ReduceMean", ["f", "axes_c"], ["grey255"], keepdims=1),
        n("Mul", ["grey255", "scale"], ["grey"]),
        n("Sub", ["grey", "target"], ["diff"]),
        n("Abs", ["diff"], ["dist"]),
        n("Mul", ["dist", "sharp"], ["far"]),
        n("Sub", ["one", "far"], ["near"]),
        n("Clip", ["near", "zero", "one"], ["raw"]),
        n("AveragePool", ["raw"], [outputs[0]], kernel_shape=[5, 5], pads=[2, 2, 2, 2],
          count_include_pad=0),
        n("ReduceMax", [outputs[0], "axes_all"], [outputs[1]], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "good-only-test",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 3, size, size])],
        [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, ["N", 1, size, size]),
         helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, ["N"])],
        init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if classes is not None:
        helper.set_model_props(model, {META_CLASSES: json.dumps(classes)})
    onnx.checker.check_model(model)
    return model


def card_doc(name: str, size: int, **anomaly: Any) -> dict[str, Any]:
    """A card as anomaly-train's export writes it (sha256 filled in by :func:`write_package`)."""
    spec = {"threshold": 0.5, "map_threshold": 0.5, "min_region_px": 4,
            "target_false_reject": 0.01, "calibrated_on": 20, **anomaly}
    return {"kind": "anomaly", "name": name, "version": "1", "class_names": ["anomaly"],
            "input": {"name": "images", "size": size, "letterbox": {"pad_value": GOOD_GREY}},
            "anomaly": spec, "sha256": ""}


def write_package(folder: Path, model: onnx.ModelProto, doc: dict[str, Any]) -> Path:
    """``model.onnx`` + ``model.json`` (the card's sha256 that of the graph) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / GRAPH))
    doc = {**doc, "sha256": sha256_file(folder / GRAPH)}
    write_card(folder, ModelCard.model_validate(doc))
    return folder


def write_raw_card(folder: Path, doc: dict[str, Any]) -> None:
    """A card written as given (not validated): for packages that must be refused."""
    (folder / "model.json").write_text(json.dumps({**doc, "sha256": sha256_file(folder / GRAPH)}))


def part(width: int, height: int, squares: tuple[tuple[int, int, int], ...] = ()) -> np.ndarray:
    """A good part (uniform grey, BGR) with foreign squares ``(x, y, side)`` on it."""
    image = np.full((height, width, 3), GOOD_GREY, dtype=np.uint8)
    for x, y, side in squares:
        image[y:y + side, x:x + side] = FOREIGN_GREY
    return image
