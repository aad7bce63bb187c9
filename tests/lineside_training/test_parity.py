"""The export parity rule on hand-made detections: exact twins pass, NMS ties (an
equal-score box NMS would have suppressed this one with) pass, anything else fails."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from torch import nn

import lineside_training.export as export
from lineside_inspect.dataset import ImageRecord
from lineside_inspect.runtime.types import Detections
from lineside_training.predict import Prediction

CLASSES = ["a", "b"]
TORCH_BOX = [10.0, 10.0, 50.0, 50.0]


def _report(monkeypatch: pytest.MonkeyPatch, onnx_box: list[float], onnx_score: float,
            onnx_label: int = 0) -> list[str]:
    pred = Prediction(np.array([TORCH_BOX], np.float32), np.array([0.8], np.float32),
                      np.array([0]))
    monkeypatch.setattr(export, "predict_records", lambda *a, **k: [pred])
    monkeypatch.setattr(export, "runtime_inputs",
                        lambda det, ds, rec: ([np.zeros((64, 64, 3), np.uint8)], None))
    det = Detections(np.array([onnx_box]), np.array([onnx_score]), np.array([onnx_label]),
                     CLASSES)
    detector: Any = SimpleNamespace(predict=lambda images, references=None: [det])
    trained: Any = SimpleNamespace(model=nn.Linear(1, 1), class_names=CLASSES,
                                   config=SimpleNamespace(input_size=64, reference=False))
    dataset: Any = SimpleNamespace(image_path=lambda rec: "unused")
    return export.parity_report(trained, detector, [ImageRecord("x.jpg", 64, 64)], dataset,
                                {"a": 0.5, "b": 0.5})


def test_exact_twin_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _report(monkeypatch, [10.0, 10.0, 50.0, 50.1], 0.8004) == []


def test_nms_tie_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    # shifted by 4 px: IoU 0.82 > the NMS threshold, same score: NMS kept the other twin
    assert _report(monkeypatch, [14.0, 10.0, 54.0, 50.0], 0.8) == []


@pytest.mark.parametrize("box,score,label", [
    ([14.0, 10.0, 54.0, 50.0], 0.79, 0),  # overlapping but a different score
    ([30.0, 30.0, 70.0, 70.0], 0.8, 0),  # same score, too little overlap to be a tie
    ([10.0, 10.0, 50.0, 50.0], 0.8, 1),  # another class
])
def test_other_differences_fail(monkeypatch: pytest.MonkeyPatch, box: list[float],
                                score: float, label: int) -> None:
    problems = _report(monkeypatch, box, score, label)
    # both ways (session 55): torch's box has no ONNX twin, nor the ONNX box a torch one
    assert len(problems) == 2 and "x.jpg: torch a 0.800" in problems[0]
    assert problems[1].startswith(f"x.jpg: ONNX {CLASSES[label]} {score:.3f} at ")
