"""Run a detector over dataset records, boxes mapped back to original pixels: the torch
model (training, evaluation) or an exported package through the edge runtime (export
parity, package evaluation)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lineside_inspect.dataset import Dataset, ImageRecord
from lineside_inspect.dataset.painted import painted_area, painted_regions
from lineside_inspect.imageio import read_image
from lineside_inspect.package import PAD_VALUE, InputSpec, LetterboxSpec, ModelCard
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.preprocess import fit
from lineside_inspect.runtime.session import OnnxSession
from lineside_inspect.runtime.tiles import Tiling
from lineside_training.data.dataset import DetectionDataset, collate, read_reference
from lineside_training.models.postprocess import detections_per_image
from lineside_training.package_writer import export_graph

# uint8 images [B, 3, S, S] in, what the model returns in eval mode out
Runner = Callable[[Tensor], list[dict[str, Tensor]]]


@dataclass
class Prediction:
    boxes: np.ndarray  # [K, 4] float32, original pixels
    scores: np.ndarray  # [K]
    labels: np.ndarray  # [K] int64 class index


@torch.no_grad()
def predict_records(
    model: nn.Module,
    dataset: Dataset,
    records: list[ImageRecord],
    class_names: list[str],
    *,
    size: int,
    device: torch.device,
    batch_size: int = 8,
    cache: DetectionDataset | None = None,
    reference: bool = False,
    onnx: bool = False,
    tiling: Tiling | None = None,
) -> list[Prediction]:
    """Predictions for each record, in order; ``reference`` for reference models.
    ``onnx``: on the CPU, run the model's dense part in onnxruntime (:func:`onnx_runner`),
    where it can be; the predictions are the same to float rounding. ``tiling`` (a
    native-scale run's, config ``tiling``): each frame is judged as the exported card's
    recipe will judge it, through the edge runtime's own tiling (:func:`tiled_predictions`)."""
    painted_regions(dataset)  # a set's painted regions it cannot read: said before any frame
    if tiling is not None:
        return tiled_predictions(model, dataset, records, class_names, size=size,
                                 device=device, tiling=tiling, onnx=onnx)
    ds = cache or DetectionDataset(dataset, records, class_names, size=size, cache=False,
                                   reference=reference)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    was_training = model.training
    model.eval()

    def torch_run(images: Tensor) -> list[dict[str, Tensor]]:
        return model(images.to(device).float())  # type: ignore[no-any-return]

    if onnx and device.type == "cpu":  # a folder for the graph only when one is exported
        with tempfile.TemporaryDirectory(prefix="lineside-eval-") as tmp:
            out = _predict(onnx_runner(model, size, Path(tmp)) or torch_run, loader, records, size)
    else:
        out = _predict(torch_run, loader, records, size)
    model.train(was_training)
    return off_the_grey(dataset, records, out)


def off_the_grey(dataset: Dataset, records: list[ImageRecord],
                 preds: list[Prediction]) -> list[Prediction]:
    """``preds`` without the boxes centred where a pull painted the frame out (its recipe
    never judged there: :func:`lineside_inspect.store.pull_regions.painted_area`), as the
    recipe's roi/ignore drop them on the line; a frame not painted keeps all of its own."""
    out: list[Prediction] = []
    regions = painted_regions(dataset)  # each version's read once, not once a frame
    for rec, p in zip(records, preds, strict=True):
        grey = painted_area(dataset, rec, regions) if len(p.boxes) else None
        if grey is not None:
            h, w = grey.shape
            cx = np.clip(np.floor((p.boxes[:, 0] + p.boxes[:, 2]) / 2), 0, w - 1).astype(int)
            cy = np.clip(np.floor((p.boxes[:, 1] + p.boxes[:, 3]) / 2), 0, h - 1).astype(int)
            keep = ~grey[cy, cx]
            p = Prediction(p.boxes[keep], p.scores[keep], p.labels[keep])
        out.append(p)
    return out


def _predict(run: Runner, loader: torch.utils.data.DataLoader[Any],
             records: list[ImageRecord], size: int) -> list[Prediction]:
    out: list[Prediction] = []
    for images, targets in loader:
        for det, t in zip(run(images), targets, strict=True):
            rec = records[int(t["index"])]
            lb = fit(rec.width, rec.height, size)
            boxes = lb.to_original(det["boxes"].float().cpu().numpy().reshape(-1, 4))
            scores = det["scores"].float().cpu().numpy()
            labels = det["labels"].cpu().numpy().astype(np.int64)
            if (inside := lb.with_area(boxes)) is not None:  # as the edge's runtime drops them
                boxes, scores, labels = boxes[inside], scores[inside], labels[inside]
            out.append(Prediction(boxes, scores, labels))
    return out


class _Dense(nn.Module):
    """What is exported: the model's boxes and scores for every location, before the
    selection (which stays in torch, so it is the very code the torch path runs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:  # uint8, as the edge sends
        return self.model.decode(images.float())  # type: ignore[no-any-return,operator]


def onnx_runner(model: nn.Module, size: int, folder: Path) -> Runner | None:
    """``model``'s dense predictions (``decode``: uint8 ``[B, 3, size, size]`` in, boxes
    ``[B, P, 4]`` and scores ``[B, P, C]`` out) exported to ``folder`` by the package's
    :func:`~lineside_training.package_writer.export_graph` (without its full check) and
    run in the edge's onnxruntime session with torch's thread count, then
    :func:`detections_per_image` in torch: the runner returns what ``model(images)`` does in
    eval mode.

    Why: a budgeted run's evaluations are time its steps do not get, and torch's eager
    convolutions are the slow part on a CPU. DeepPCB's 422 validation images at 640 px, 2
    threads: 29-37 s of predictions in torch, 18-22 s this way (export included), the
    same mAP to the fifth digit. None when ``model`` has no ``decode`` or
    does not export (the caller then runs torch)."""
    if not callable(getattr(model, "decode", None)):
        return None
    path = folder / "dense.onnx"
    was_training = model.training
    try:
        # exported in eval mode; the exporter then restores the wrapper's mode, which a
        # wrapper made in training mode would pass down to ``model`` (BatchNorm on
        # batch statistics for whoever runs it next)
        export_graph(_Dense(model).eval(), size, path, ["boxes", "scores"], check=False)
        session = OnnxSession(path, device="cpu", threads=torch.get_num_threads())
    except Exception:  # any exporter or runtime failure: torch evaluates, as before
        return None
    finally:
        model.train(was_training)

    def run(images: Tensor) -> list[dict[str, Tensor]]:
        boxes, scores = (torch.from_numpy(a) for a in session.run(images.numpy()))
        return detections_per_image(boxes, scores)

    return run


class ModelDetector(Detector):
    """The edge :class:`Detector`'s own pre- and post-processing (letterbox, tiles, boxes
    mapped back to the frame, tiles joined) around a trained torch model instead of a
    package's graph: a native-scale run's validation and calibration judge frames exactly
    as its exported package will (``runner``: uint8 ``[B, 3, S, S]`` in, per image the
    model's eval-mode ``boxes``, ``scores`` and ``labels`` out)."""

    def __init__(self, runner: Runner, class_names: list[str], size: int) -> None:
        # no package, so no graph to load: only what pre- and post-processing read
        self.card = ModelCard(name="run", version="eval", class_names=class_names,
                              input=InputSpec(size=size, letterbox=LetterboxSpec(
                                  pad_value=PAD_VALUE)), sha256="")
        self.size = size
        self.runner = runner

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        found = self.runner(torch.from_numpy(batch))
        rows = max((len(d["scores"]) for d in found), default=0)
        boxes = np.zeros((len(found), rows, 4), np.float32)
        scores = np.zeros((len(found), rows), np.float32)  # score 0: a padding row
        labels = np.zeros((len(found), rows), np.int64)
        for i, d in enumerate(found):
            n = len(d["scores"])
            boxes[i, :n] = d["boxes"].float().cpu().numpy()
            scores[i, :n] = d["scores"].float().cpu().numpy()
            labels[i, :n] = d["labels"].cpu().numpy()
        return [boxes, scores, labels]


@torch.no_grad()
def tiled_predictions(model: nn.Module, dataset: Dataset, records: list[ImageRecord],
                      class_names: list[str], *, size: int, device: torch.device,
                      tiling: Tiling, onnx: bool = False) -> list[Prediction]:
    """``model``'s predictions of each record judged under ``tiling`` through the edge
    runtime's code (:class:`ModelDetector`, :func:`runtime_predictions`): a frame larger
    than the tile as tiles at native scale, boxes joined; a smaller one letterboxed whole.
    ``onnx``: as :func:`predict_records`'."""
    was_training = model.training
    model.eval()

    def torch_run(images: Tensor) -> list[dict[str, Tensor]]:
        return model(images.to(device).float())  # type: ignore[no-any-return]

    try:
        if onnx and device.type == "cpu":
            with tempfile.TemporaryDirectory(prefix="lineside-eval-") as tmp:
                runner = onnx_runner(model, size, Path(tmp)) or torch_run
                return runtime_predictions(ModelDetector(runner, class_names, size), records,
                                           dataset, tiling)
        return runtime_predictions(ModelDetector(torch_run, class_names, size), records,
                                   dataset, tiling)
    finally:
        model.train(was_training)


def runtime_inputs(detector: Detector, dataset: Dataset, rec: ImageRecord,
                   ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """What the server would get for ``rec``: the image, and its reference for a reference
    model (a good image without one is its own)."""
    image = read_image(dataset.image_path(rec))
    if not detector.needs_reference:
        return [image], None
    return [image], [read_reference(dataset, rec, image)]


def runtime_predictions(detector: Detector, records: list[ImageRecord], dataset: Dataset,
                        tiling: Tiling | None = None) -> list[Prediction]:
    """The runtime's detections of each record, as the server finds them under a recipe
    with ``tiling`` (a frame larger than its tile judged as tiles, boxes joined)."""
    painted_regions(dataset)  # a set's painted regions it cannot read: said before any frame
    out = []
    for rec in records:
        d = detector.predict(*runtime_inputs(detector, dataset, rec), tiling=tiling)[0]
        out.append(Prediction(d.xyxy, d.scores, d.class_ids))
    return off_the_grey(dataset, records, out)
