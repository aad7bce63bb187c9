"""The in-loop validation's onnxruntime path: the same detections as torch's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lineside_training.models import build_model
from lineside_training.predict import onnx_runner


def test_the_onnx_runner_gives_torchs_detections(tmp_path: Path) -> None:
    """Untrained weights with the class prior raised, so that every image keeps its full
    100 detections: the runner's must be torch's, to float rounding."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build_model("lsdet", num_classes=3, head_norm="gn").eval()
    with torch.no_grad():
        model.cls_out.bias.fill_(2.0)  # type: ignore[union-attr]
    images = torch.randint(0, 256, (3, 3, 160, 160), dtype=torch.uint8)  # as loaded
    run = onnx_runner(model, 160, tmp_path)
    assert run is not None and (tmp_path / "dense.onnx").is_file()
    assert not model.training  # the export leaves the model's mode as it was
    with torch.no_grad():
        want = model(images.float())
    got = run(images)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        assert len(g["scores"]) == len(w["scores"]) == 100
        # best first in both; near-ties may swap, so compare each class's boxes as sets
        np.testing.assert_allclose(g["scores"].numpy(), w["scores"].numpy(), atol=1e-5)
        for c in range(3):
            gb, wb = g["boxes"][g["labels"] == c], w["boxes"][w["labels"] == c]
            assert len(gb) == len(wb)
            if len(gb):
                gap = torch.cdist(gb, wb).min(1).values
                assert float(gap.max()) < 0.1  # pixels


def test_a_model_without_dense_predictions_runs_in_torch(tmp_path: Path) -> None:
    class Plain(nn.Module):  # e.g. a torchvision detector: no ``decode``
        def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            return []

    assert onnx_runner(Plain(), 160, tmp_path) is None
    assert not any(tmp_path.iterdir())
