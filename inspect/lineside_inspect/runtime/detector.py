"""The edge detector: a verified model package behind ``pre_process`` / ``forward`` /
``post_process``, mapping boxes back to original image pixels."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from lineside_inspect.errors import ConfigError, PackageError, ReferenceImageError
from lineside_inspect.opencv import cv2
from lineside_inspect.package import ModelPackage, load_package
from lineside_inspect.runtime.anomaly_map import find_anomalies
from lineside_inspect.runtime.preprocess import Letterbox, as_bgr, letterbox
from lineside_inspect.runtime.reference import align_to_reference, gray, pair_image
from lineside_inspect.runtime.session import OnnxSession
from lineside_inspect.runtime.tiles import Tiling, join_tiles, tile_origins
from lineside_inspect.runtime.types import Detections


def to_planes(image: np.ndarray, out: np.ndarray, *, rgb: bool) -> None:
    """Write an ``(H, W, 3)`` image into ``out`` (``(3, H, W)``), channels reversed when
    ``rgb`` (BGR to RGB). OpenCV's split writes each plane straight into ``out``, ~3x
    faster than a transposed copy (which walks the image with a stride of 3); should it
    allocate its own planes instead (it never does for contiguous uint8 of one size),
    they are copied in."""
    planes = [out[2], out[1], out[0]] if rgb else [out[0], out[1], out[2]]
    written = cv2.split(image, planes)
    for dst, src in zip(planes, written, strict=True):
        if not np.shares_memory(dst, src):
            dst[...] = src


# the most rows (images, or a tiled frame's tiles) one local run takes; more go run after
# run (bench model's largest batch is 8)
RUN_ROWS = 8


def refuse_empty(batch: np.ndarray) -> None:
    """An empty batch is a caller's mistake, said as one: onnxruntime stopped on a Reshape
    node's error, and a remote detector answered ``[]`` (no outputs at all, where the
    card's outputs are indexed), which failed later and elsewhere (session 49)."""
    if len(batch) == 0:
        raise ValueError("an empty batch: forward takes at least one image")


def stack_runs(parts: list[np.ndarray]) -> np.ndarray:
    """Runs' outputs joined along the batch, each padded with zeros (a detector's padding
    rows carry score 0) to the longest's row count."""
    longest = max(p.shape[1] for p in parts) if parts[0].ndim > 1 else 0
    if all(p.ndim < 2 or p.shape[1] == longest for p in parts):
        return np.concatenate(parts)
    return np.concatenate([np.pad(p, [(0, 0), (0, longest - p.shape[1])]
                                  + [(0, 0)] * (p.ndim - 2)) for p in parts])


class Detector:
    """Runs a model package with onnxruntime. Images are BGR ``uint8`` ``(H, W, 3)``
    arrays as OpenCV decodes them (or grey ``(H, W)``, or BGRA), of any size.

    A reference model (``needs_reference``) also takes, for each image, a reference: a
    defect-free image of the same view and size (a golden template). A good-only model
    (card kind ``anomaly``) runs the same way; its detections are its anomaly regions
    (``runtime.anomaly`` has its image score).
    """

    # the most images run at once: the graph's batch dimension when a number, else
    # RUN_ROWS (a remote endpoint: runtime/remote.py REMOTE_BATCH)
    max_batch: int = RUN_ROWS

    def __init__(self, package: ModelPackage | str | Path, *, device: str = "auto",
                 threads: int | None = None, warmup: bool = True, spinning: bool = True,
                 overlap: int = 1) -> None:
        """``overlap``: how many callers may run it at once (see :class:`OnnxSession`)."""
        self.package = package if isinstance(package, ModelPackage) else load_package(package)
        self.card = self.package.card
        self.size = self.card.input.size
        self.session = OnnxSession(self.package.graph_path, device=device, threads=threads,
                                   spinning=spinning, overlap=overlap,
                                   graph=self.package.graph, external=self.package.external)
        batch_dim = self.session.session.get_inputs()[0].shape[0]
        # a graph of any batch size still runs at most RUN_ROWS rows at once: a tiled
        # frame's 64 tiles in one run would hold several GB of activations, kept by
        # onnxruntime's memory pool, per request (final review, session 44)
        self.max_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else RUN_ROWS
        # the verified bytes were for the session: not kept twice for the model's life
        self.package = replace(self.package, graph=None, external={})
        if warmup:
            try:
                outputs = self.session.warm_up(np.zeros((1, 3, self.size, self.size),
                                                        dtype=np.uint8))
            except Exception as exc:  # onnxruntime's own types
                # a graph that cannot run (a tensor of 2^64 bytes asked for, a shape that
                # does not fit) was a 500 from POST /v1/models, a traceback at start-up
                raise PackageError(f"model {self.card.name} {self.card.version}: the graph "
                                   f"failed its first run: {str(exc)[:300]}") from None
            if self.card.kind == "detector":
                self._check_outputs(outputs)

    def _check_outputs(self, outputs: list[np.ndarray]) -> None:
        """Refuse a graph whose outputs on the warm-up frame are not what the card says
        (boxes ``[1, K, 4]``, scores ``[1, K]`` in 0..1, integer labels ``[1, K]`` naming
        its classes): a graph with the right output names and class ids out of range
        loaded, and every inspection after it was a 500 (lifecycle review, session 32)."""
        where = f"model {self.card.name} {self.card.version}"
        if len(outputs) != 3:
            raise PackageError(f"{where}: the graph gives {len(outputs)} outputs, a detector 3 "
                               "(boxes, scores, labels)")
        boxes, scores, labels = (np.asarray(o) for o in outputs)
        k = scores.shape[1] if scores.ndim == 2 else -1
        if not (scores.ndim == 2 and boxes.shape == (scores.shape[0], k, 4)
                and labels.shape == scores.shape):
            raise PackageError(f"{where}: the graph's outputs have shapes boxes "
                               f"{list(boxes.shape)}, scores {list(scores.shape)}, labels "
                               f"{list(labels.shape)}; a detector gives [N, K, 4], [N, K], [N, K]")
        if not (np.issubdtype(labels.dtype, np.integer) or (
                np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all()
                and (labels == np.round(labels)).all())):  # whole floats: as a remote's
            raise PackageError(f"{where}: the graph's labels are {labels.dtype}, not integers")
        live = scores > 0  # padding rows carry score 0 and any label
        if not np.isfinite(scores).all() or (scores.size and (scores.min() < 0
                                                              or scores.max() > 1)):
            raise PackageError(f"{where}: the graph's scores are not all in 0..1")
        if live.any() and (labels[live].min() < 0
                           or labels[live].max() >= len(self.class_names)):
            raise PackageError(f"{where}: the graph gives class ids "
                               f"{labels[live].min()}..{labels[live].max()}, the card names "
                               f"{len(self.class_names)} classes")

    @property
    def class_names(self) -> list[str]:
        return self.card.class_names

    @property
    def needs_reference(self) -> bool:
        return self.card.needs_reference

    def pre_process(self, images: list[np.ndarray], references: list[np.ndarray] | None = None,
                    *, align: bool = False, tiling: Tiling | None = None,
                    ) -> tuple[np.ndarray, list[Letterbox]]:
        """Letterbox each image and stack to ``[B, 3, S, S]`` uint8: RGB, or for a reference
        model grey, reference grey and difference; ``align`` first translates each frame
        onto its reference (the letterbox remembers the shift, so boxes map back to the
        frame as it was sent). ``tiling`` (single-image detectors) cuts an image larger than
        its tile into tiles, a row each (:mod:`~lineside_inspect.runtime.tiles`)."""
        if self.needs_reference:
            if references is None or len(references) != len(images):
                raise ReferenceImageError(
                    f"model {self.card.name} {self.card.version} compares each image with a "
                    "reference image of the same view: send one with the image")
        elif references is not None:
            raise ReferenceImageError(
                f"model {self.card.name} {self.card.version} takes no reference image")
        if tiling is not None:
            if references is not None or self.card.kind != "detector":
                raise ConfigError(f"model {self.card.name} {self.card.version}: tiling takes "
                                  "single-image detectors")
            plans = [tile_origins(im.shape[1], im.shape[0], tiling, self.size) for im in images]
            if any(p is not None for p in plans):
                return self._tiles(images, plans, tiling.tile)
        batch = np.empty((len(images), 3, self.size, self.size), dtype=np.uint8)
        boxes = []
        pad = self.card.input.letterbox.pad_value  # as the model was trained
        for i, image in enumerate(images):
            if references is not None:
                dx, dy, reference = 0.0, 0.0, references[i]
                if align:  # in grey, as the model compares them: a third of the pixels
                    reference = gray(reference)  # once: the pair below takes it grey too
                    image, dx, dy = align_to_reference(gray(image), reference)
                fitted, lb = letterbox(pair_image(image, reference), self.size, pad_value=pad)
                lb = replace(lb, shift_x=dx, shift_y=dy)
                to_planes(fitted, batch[i], rgb=False)
            else:
                lb = self._fill(batch[i], image)
            boxes.append(lb)
        return batch, boxes

    def _fill(self, out: np.ndarray, image: np.ndarray) -> Letterbox:
        """Letterbox one single-image model's ``image`` into the batch row ``out``."""
        pad = self.card.input.letterbox.pad_value  # as the model was trained
        if image.ndim == 2:  # a grey frame: its one plane is R, G and B alike
            fitted, lb = letterbox(image, self.size, pad_value=pad)
            out[...] = fitted  # repeated into the three planes (no BGR copy is made)
        else:
            fitted, lb = letterbox(as_bgr(image), self.size, pad_value=pad)
            to_planes(fitted, out, rgb=True)  # BGR as decoded, RGB as trained
        return lb

    def _tiles(self, images: list[np.ndarray], plans: list[list[tuple[int, int]] | None],
               tile: int) -> tuple[np.ndarray, list[Letterbox]]:
        """One batch row per tile (per image, for one that fits a tile), each letterboxed
        from a view of its frame (no crop is copied: a tile of the input size is split
        straight into its row)."""
        rows = sum(1 if p is None else len(p) for p in plans)
        batch = np.empty((rows, 3, self.size, self.size), dtype=np.uint8)
        boxes: list[Letterbox] = []
        for i, (image, plan) in enumerate(zip(images, plans, strict=True)):
            if plan is None:
                boxes.append(replace(self._fill(batch[len(boxes)], image), of=i))
                continue
            for x, y in plan:
                lb = self._fill(batch[len(boxes)], image[y:y + tile, x:x + tile])
                boxes.append(replace(lb, origin=(x, y), of=i))
        return batch, boxes

    def forward(self, batch: np.ndarray) -> list[np.ndarray]:
        refuse_empty(batch)
        step = self.max_batch
        if len(batch) <= step:
            return self._run(batch)
        # more rows (a frame's tiles) than one run takes: run after run, joined
        parts = [self._run(batch[i:i + step]) for i in range(0, len(batch), step)]
        return [stack_runs(list(o)) for o in zip(*parts, strict=True)]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(batch)

    def post_process(self, outputs: list[np.ndarray], letterboxes: list[Letterbox]) -> list[Detections]:
        if self.card.kind == "anomaly":  # a good-only model: its map's regions, labelled anomaly
            return [f.regions for f in find_anomalies(outputs, letterboxes, self.card)]
        boxes, scores, labels = outputs
        result = []
        for i, lb in enumerate(letterboxes):
            keep = scores[i] > 0  # padding rows carry score 0
            found, kept_scores, kept_labels = lb.to_original(boxes[i][keep]), scores[i][keep], labels[i][keep]
            if (inside := lb.with_area(found)) is not None:
                found, kept_scores, kept_labels = found[inside], kept_scores[inside], kept_labels[inside]
            result.append(Detections(found, kept_scores, kept_labels, self.class_names))
        if any(lb.origin is not None for lb in letterboxes):  # tiles of larger frames
            return join_tiles(result, letterboxes)
        return result

    def predict(self, images: list[np.ndarray], references: list[np.ndarray] | None = None,
                *, align: bool = False, tiling: Tiling | None = None) -> list[Detections]:
        """Detections for each image, boxes in its original pixels; ``tiling`` (a recipe's)
        cuts an image larger than its tile into tiles, joined back as ``inspect`` does."""
        batch, letterboxes = self.pre_process(images, references, align=align, tiling=tiling)
        return self.post_process(self.forward(batch), letterboxes)
