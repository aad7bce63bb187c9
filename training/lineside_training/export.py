"""``lineside export``: a self-contained ONNX model package, gated by parity through the
edge runtime (the code the server runs)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from lineside_inspect.boxes import iou_matrix
from lineside_inspect.dataset import ImageRecord, read_dataset
from lineside_inspect.dataset.canonical import ANNOTATIONS
from lineside_inspect.dataset.stats import contrast_stats
from lineside_inspect.errors import (
    ConfigError,
    DatasetError,
    LinesideError,
    PackageError,
    describe_validation,
)
from lineside_inspect.lifecycle.gate import matched_boxes
from lineside_inspect.lifecycle.lineage import dataset_revision
from lineside_inspect.package import (
    CARD,
    GRAPH,
    INPUT_NAME,
    OUTPUT_NAMES,
    PAD_VALUE,
    TILING_FORMAT,
    InputSpec,
    LetterboxSpec,
    Lineage,
    ModelCard,
    default_recipe_name,
    load_package,
    read_card,
    sha256_file,
    write_card,
)
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.tiles import MAX_TILE, Tiling
from lineside_inspect.version import __version__
from lineside_training.calibration import calibrate_f
from lineside_training.calibration_sample import (
    CALIBRATION_SEED,
    calibration_record,
    calibration_sample,
)
from lineside_training.checkpoint import Trained, load_trained, read_run_json
from lineside_training.metrics import coco_metrics
from lineside_training.models.postprocess import IOU_THRESHOLD, MAX_DETECTIONS, select_detections
from lineside_training.package_writer import (
    OPSET,
    check_out,
    export_graph,
    package_name,
    parent_model,
    staged_package,
)
from lineside_training.predict import Prediction, predict_records, runtime_inputs, runtime_predictions
from lineside_training.quality import keep_mask

PARITY_IOU = 0.99
# --tile: how far a tile may be from the frame size whose letterbox scale the model was
# trained at (training scales each image as inference does: longer side to the input
# size) before defects in its tiles are a scale the model did not learn (the augmentation's
# scale jitter is 1.2)
TILE_SCALE_SLACK = 1.25
MIN_PARITY_AREA = 1.0  # px²
PARITY_SCORE = 1e-3


class ExportModule(nn.Module):
    """uint8 ``[B, 3, S, S]`` RGB in; boxes ``[B, K, 4]``, scores ``[B, K]``, labels
    ``[B, K]`` out, normalisation, decoding and NMS inside the graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "decode"):
            raise ConfigError(f"{type(model).__name__} cannot be exported yet: only detectors "
                              "with a dense decode() (the LSDet family) export to ONNX")
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return select_detections(*self.model.decode(images.float()))  # type: ignore[operator]


def export_onnx(model: nn.Module, size: int, path: Path, class_names: list[str]) -> None:
    export_graph(ExportModule(model).eval(), size, path, OUTPUT_NAMES, class_names)


def parity_report(trained: Trained, detector: Detector, records: list[ImageRecord],
                  dataset: Any, thresholds: dict[str, float]) -> list[str]:
    """Every detection above its threshold, torch's and the ONNX graph's alike, must have
    a twin on the other side (IoU >= 0.99, score within 1e-3, same class). Returns the
    mismatches (empty when the export is faithful). Both ways: checked from torch's side
    alone, a graph that counted defects torch does not (a part torch passes, failed on the
    line) passed the gate, even a graph beside a torch model that found nothing at all
    (export review, session 55).

    One exception, because NMS itself is ambiguous there: when two overlapping boxes of a
    class have equal scores (within 1e-3), which one survives depends on float rounding
    in the last digit, so a box on the other side of the same class and score that NMS
    would have suppressed this one with (IoU > the NMS threshold) counts as its twin."""
    device = next(trained.model.parameters()).device
    torch_preds = predict_records(trained.model, dataset, records, trained.class_names,
                                  size=trained.config.input_size, device=device,
                                  reference=trained.config.reference)
    problems = []
    for rec, tp in zip(records, torch_preds, strict=True):
        det = detector.predict(*runtime_inputs(detector, dataset, rec))[0]
        onnx = Prediction(det.xyxy, det.scores, det.class_ids)
        for side, mine, theirs in (("torch", tp, onnx), ("ONNX", onnx, tp)):
            problems += [f"{rec.file_name}: {side} {said}"
                         for said in _unmatched(mine, theirs, trained.class_names, thresholds)]
    return problems


def _unmatched(mine: Prediction, theirs: Prediction, class_names: list[str],
               thresholds: dict[str, float]) -> list[str]:
    """``mine``'s detections above their class's threshold with no twin in ``theirs``
    (:func:`parity_report`'s rule), as "CLASS SCORE at BOX unmatched (...)"."""
    problems = []
    for box, score, label in zip(mine.boxes, mine.scores, mine.labels, strict=True):
        if score < thresholds[class_names[label]]:
            continue
        if (box[2] - box[0]) * (box[3] - box[1]) < MIN_PARITY_AREA:
            # a box under a pixel in area (an untrained model's, clipped at the image
            # edge) is no defect; which of its equal-score twins NMS keeps is float luck
            continue
        same = theirs.labels == label
        ious = iou_matrix(box[None], theirs.boxes[same])[0]
        # identical degenerate (zero-area) boxes have IoU 0: compare coordinates too
        close = np.abs(theirs.boxes[same] - box).max(axis=1, initial=0) <= 1e-2
        same_score = np.abs(theirs.scores[same] - score) <= PARITY_SCORE
        ok = ((ious >= PARITY_IOU) | close) & same_score
        tie = (ious > IOU_THRESHOLD) & same_score
        if not ok.any() and not tie.any():
            best = f"best IoU {ious.max():.3f}" if len(ious) else "no detection of that class"
            problems.append(f"{class_names[label]} {score:.3f} at {np.round(box, 1).tolist()} "
                            f"unmatched ({best})")
    return problems


def counted_changes(base: list[Prediction], low: list[Prediction], class_names: list[str],
                    thresholds: dict[str, float], iou: float = 0.5,
                    agnostic_iou: float | None = None) -> dict[str, Any]:
    """What a lower-precision graph counts differently from the fp32 one at the card's
    thresholds, image by image: defects fp32 counts that it does not (``lost``, by class;
    a box of the same class with IoU >= ``iou`` is the same defect) and ones it adds
    (``gained``), and parts whose verdict under the card's own recipe (any counted
    defect fails; ``agnostic_iou``: the card's one-per-place rule) flips: ``escapes``
    (fp32 fails, it passes), ``false_rejects``.

    mAP@.5 ignores thresholds: an int8 graph within a point of fp32's mAP passed a part
    with a critical scratch that fp32 failed (0.465 against a threshold of 0.46;
    training review, session 33)."""
    lost: dict[str, int] = {}
    gained: dict[str, int] = {}
    counted = escapes = false_rejects = 0
    thr = np.array([thresholds[n] for n in class_names], np.float32)

    def kept(p: Prediction) -> Prediction:  # what the card's own recipe counts
        keep = keep_mask(p.boxes, p.scores, p.labels, thr, agnostic_iou)
        return Prediction(p.boxes[keep], p.scores[keep], p.labels[keep])

    for b, lo in zip(base, low, strict=True):
        b, lo = kept(b), kept(lo)
        counted += len(b.labels)
        escapes += bool(len(b.labels)) and not len(lo.labels)
        false_rejects += bool(len(lo.labels)) and not len(b.labels)
        for c in set(b.labels.tolist()) | set(lo.labels.tolist()):
            name, mine, theirs = class_names[c], b.labels == c, lo.labels == c
            # the fp32 graph's defects as the truth the other graph's boxes must match
            same = matched_boxes([(name, tuple(x)) for x in b.boxes[mine].tolist()],
                                 [(name, sc, tuple(x)) for x, sc in
                                  zip(lo.boxes[theirs].tolist(), lo.scores[theirs].tolist(),
                                      strict=True)], iou)
            if int(mine.sum()) - same:
                lost[name] = lost.get(name, 0) + int(mine.sum()) - same
            if int(theirs.sum()) - same:
                gained[name] = gained.get(name, 0) + int(theirs.sum()) - same
    return {"images": len(base), "defects_counted_fp32": counted, "defects_lost": lost,
            "defects_gained": gained, "escapes": int(escapes), "false_rejects": int(false_rejects)}


# what the card's quantization p50_ms / p50_ms_fp32 time (:func:`_latency_ms`)
LATENCY_OF = "one forward pass of one input (batch 1; one tile of a frame a recipe tiles)"


def _latency_ms(detector: Detector, size: int, runs: int = 20) -> float:
    batch = np.random.default_rng(0).integers(0, 255, (1, 3, size, size), dtype=np.uint8)
    times = []
    for _ in range(max(1, runs)):  # (at least one: a median of none is nan)
        t = time.perf_counter()
        detector.forward(batch)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


class _Calibration:
    """onnxruntime CalibrationDataReader over letterboxed dataset images (their tiles, as
    the card's recipe cuts them, with ``tiling``)."""

    def __init__(self, detector: Detector, records: list[ImageRecord], dataset: Any,
                 tiling: Tiling | None = None) -> None:
        self.items = iter(
            {INPUT_NAME: detector.pre_process(*runtime_inputs(detector, dataset, r),
                                              tiling=tiling)[0]}
            for r in records
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def quantize_int8(fp32: Path, out: Path, detector: Detector, records: list[ImageRecord],
                  dataset: Any, tiling: Tiling | None = None) -> None:
    """Static QDQ int8 of the convolutions (U8S8, reduce_range: the fast path on CPUs
    without VNNI); decoding and NMS stay in float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    reader = _Calibration(detector, records, dataset, tiling)
    CalibrationDataReader.register(_Calibration)
    quantize_static(
        str(pre), str(out), reader,  # type: ignore[arg-type]
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
        op_types_to_quantize=["Conv"],
    )
    pre.unlink()
    graph = onnx.load(str(out))
    graph.metadata_props.extend(onnx.load(str(fp32)).metadata_props)
    onnx.save(graph, str(out))


def convert_fp16(fp32: Path, out: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = onnx.load(str(fp32))
    half = convert_float_to_float16(graph, keep_io_types=True,
                                    op_block_list=["NonMaxSuppression", "TopK", "ScatterND", "Range"])
    onnx.save(half, str(out))


def lineage_of(trained: Trained, parent: str | Path | None) -> Lineage:
    """The card's lineage: the revision of the datasets the run trained on (content hash
    of labels and pixels), if they are still as the run saw them, and the parent package."""
    cfg = trained.config
    roots = [cfg.data, *cfg.extra_data]
    revision, note = None, ""
    try:
        where = trained.data  # the dataset where it is, named in the card as it was given
        if trained.data_changed():
            note = f"{cfg.data} changed since the run trained on it: its revision is not recorded"
        else:
            revision = dataset_revision([where, *cfg.extra_data])
    except (OSError, DatasetError, ConfigError) as exc:
        note = f"training data not readable at export ({exc}): its revision is not recorded"
    return Lineage(dataset_revision=revision, datasets=[str(r) for r in roots],
                   parent=parent_model(parent), note=note)


def trained_frame(trained: Trained, fallback: Any) -> int:
    """The frame size (longer side, px) whose letterbox scale the model was trained at: the
    median longer side of its training images (``fallback``'s, a dataset, when the run's
    own cannot be read). Training scales each image as inference does (longer side to the
    input size) before cropping, so a tile of this size, letterboxed into the input, shows
    defects at the scale the model learned."""
    try:
        data = read_dataset(trained.data)
    except (OSError, LinesideError):
        data = fallback
    records = data.in_split("train") or data.images
    return int(np.median([max(r.width, r.height) for r in records]))


def tiling_for(trained: Trained, tile: int | None, overlap: float | None,
               fallback: Any) -> Tiling | None:
    """The card's recipe's tiling ``--tile``/``--overlap`` ask for, or None. Refused for
    a reference model, or a tile off the scale the model was trained at (by more than
    :data:`TILE_SCALE_SLACK`), naming the tile that matches it. A native-scale run (config
    ``tiling``) has its own: written without ``--tile``; a ``--tile`` or ``--overlap``
    other than the run's is refused, naming the run's (its validation, thresholds and
    figures are of frames judged so)."""
    own = trained.config.tiling
    if own is not None:
        for flag, given, run_value in (("--tile", tile, own.tile),
                                       ("--overlap", overlap, own.overlap)):
            if given is not None and given != run_value:
                raise ConfigError(
                    f"{flag} {given}: the run trained at native scale with tiling "
                    f"{own}, and its card's recipe "
                    f"tiles as it was validated and calibrated: leave {flag} out (or give "
                    f"{run_value:g}); a server recipe's tiling may judge otherwise")
        return own
    if tile is None:
        if overlap is not None:
            raise ConfigError("--overlap is the tiling's: give --tile too")
        return None
    if trained.config.reference:
        raise ConfigError("--tile: tiling takes single-image detectors, and this model "
                          "compares each frame with its reference image (golden)")
    try:
        tiling = Tiling(tile=tile, overlap=0.2 if overlap is None else overlap)
    except ValidationError as exc:
        raise ConfigError(re.sub(r"(^|; )(tile|overlap):", r"\1--\2:",
                                 describe_validation(exc.errors()))) from None
    frame = trained_frame(trained, fallback)
    size = trained.config.input_size
    ratio = frame / tile
    if not 1 / TILE_SCALE_SLACK <= ratio <= TILE_SCALE_SLACK:
        # said as a factor over 1 to three decimals: "0.78x smaller", or 1.2524 rounded to
        # "1.25x" (the slack it is past), read wrong
        factor = f"{max(ratio, 1 / ratio):.3f}".rstrip("0").rstrip(".")
        fix = (f"--tile {frame} judges frames larger than {frame} px at the trained scale "
               "(smaller ones whole, as without tiling)" if frame <= MAX_TILE else
               f"no tile matches it (tiles are at most {MAX_TILE} px): judge such frames "
               "whole, without --tile")
        raise ConfigError(
            f"--tile {tile}: the model learned defects at the scale of its training images "
            f"(median longer side {frame} px letterboxed into its {size} px input, "
            f"{size / frame:.2f}x), and {tile} px tiles would show them {factor}x "
            f"{'larger' if ratio > 1 else 'smaller'} than that, more than the "
            f"{TILE_SCALE_SLACK:g}x allowed; {fix}")
    return tiling


def export_records(dataset: Any, class_names: list[str]) -> list[ImageRecord]:
    """The images the parity gate, thresholds and lower-precision checks of an export run
    on: ``dataset``'s val split, or all its images when it has none; refused before any
    work when there are none, or when one of them has a box of a class the model does not
    know. A ``--data`` of other classes was a KeyError traceback from the parity gate, and
    one of no images shipped a package its parity gate had compared on 0 images, or an
    --int8 traceback from onnxruntime's calibration ("No data is collected") (session 52).
    A class the set only lists, or boxes only outside those images, is no matter: a pulled
    set lists the serving model's classes (``anomaly`` with --keep-anomaly), and such a
    set exported as it had before (adversarial read, session 52)."""
    val = dataset.in_split("val") or dataset.images
    if not val:
        raise ConfigError(
            f"{dataset.root}: the dataset has no images: export's parity gate (and --int8's "
            "calibration) runs on its val images (all of them without a val split); give "
            "--data a dataset with images (or leave --data out: the run's own)")
    known = set(class_names)
    unknown: dict[str, str] = {}  # class -> an image with a box of it
    for rec in val:
        for box in rec.boxes:
            if box.label not in known:
                unknown.setdefault(box.label, rec.file_name)
    if unknown:
        (label, example), *_ = unknown.items()
        which = "val images" if dataset.in_split("val") else "images"
        raise ConfigError(
            f"{dataset.root}: its {which} hold boxes of classes {sorted(unknown)[:10]}, not "
            f"among the run's {class_names} (e.g. {label!r} in {example!r}): export checks "
            "the package on images of the model's own classes; give --data a dataset of "
            "them (or leave --data out: the run's own)")
    return list(val)


def export(
    run: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    version: str | None = None,
    data: str | Path | None = None,
    parity_images: int = 16,
    int8: bool = False,
    fp16: bool = False,
    calibration_images: int = 64,
    calibration_seed: int = CALIBRATION_SEED,
    latency_runs: int = 20,
    max_map_drop: float = 0.01,
    max_defects_lost: float = 0.01,
    overwrite: bool = False,
    parent: str | Path | None = None,
    tile: int | None = None,
    overlap: float | None = None,
) -> dict[str, Any]:
    """Export a trained run to the package folder ``out``; returns a summary. The package
    is written to a temp folder and moved into place only if every gate passes. The card's
    lineage records the training data's revision and ``parent``, the package the run
    started from (fine-tuned, or retrained on its reviewed inspections). ``tile`` (and
    ``overlap``): the card's recipe judges frames larger than ``tile`` px as tiles
    (:func:`tiling_for`; the card is then of format :data:`TILING_FORMAT`), and the
    lower-precision figures are of frames judged so. ``latency_runs``: the forward passes
    timed per graph for the card's fp32 and lower-precision p50 (their median).
    ``calibration_images`` of val (at most) calibrate ``int8``, sampled with
    ``calibration_seed`` across its groups and kinds of part (:func:`calibration_sample`)."""
    if int8 and (calibration_images < 1 or calibration_seed < 0):
        # (the CLI's options say so too): 0 calibrated on no image, past onnxruntime's
        # checks, and a negative count took all val images but that many
        raise ConfigError("--calibration-images must be at least 1 and --calibration-seed "
                          f"at least 0 (got {calibration_images} and {calibration_seed})")
    out = check_out(out, overwrite, run=run)
    trained = load_trained(run, "cpu")
    cfg = trained.config
    name, version = package_name(out, name, version, cfg.name)  # before any work
    dataset = read_dataset(data or trained.data)
    val = export_records(dataset, trained.class_names)  # before any work
    tiling = tiling_for(trained, tile, overlap, dataset)  # before any work
    thresholds = trained.thresholds
    notes: list[str] = []
    if thresholds is None and not any(r.boxes for r in val):
        # calibrating on good parts alone gave every class 0.5, noted as "never evaluated"
        raise ConfigError(
            f"{run}: no calibrated thresholds, and val holds no defective image to calibrate "
            "them on: make a split with defects in val ('lineside data split'), then "
            "'lineside evaluate RUN', or give --data a dataset with defects")
    if thresholds is None:  # calibrate now so the card always carries operating points
        preds = predict_records(trained.model, dataset, val, trained.class_names,
                                size=cfg.input_size, device=torch.device("cpu"),
                                reference=cfg.reference, tiling=tiling)
        thresholds = calibrate_f(val, preds, trained.class_names, agnostic_iou=cfg.agnostic_iou)
        notes.append(
            ("the run's thresholds.json belongs to another checkpoint (trained on since?)"
             if trained.stale_thresholds else "the run was never evaluated")
            + f": thresholds calibrated now on {len(val)} val images, in-sample; run "
            "'lineside evaluate RUN' (or 'lineside calibrate') first for a report and "
            "metrics in the card")
    thr = thresholds["thresholds"]
    if trained.checkpoint.get("epoch", 0) < 0:  # stopped in its first epoch (Ctrl-C)
        notes.append("the run finished no epoch (stopped in its first): its weights are "
                     "partly trained; resume it (lineside train --resume --name NAME) first")
    summary: dict[str, Any] = {"package": str(out)}
    with staged_package(out) as tmp:
        fp32 = tmp / GRAPH
        export_onnx(trained.model, cfg.input_size, fp32, trained.class_names)
        recipe: dict[str, Any] = {"name": default_recipe_name(name), "version": "1",
                                  "min_score": thr}
        if tiling is not None:
            recipe["tiling"] = tiling.model_dump()
            # a native-scale run's tile is its input size: parity is of the graph, on
            # inputs of that size, which tiles are too (review, session 45: "compared whole
            # images" read as a gap); a --tile card's model learned whole images
            parity = (f"the torch-vs-ONNX parity gate compared the graph on {cfg.input_size} "
                      "px inputs, the tiles' scale, as parity needs" if cfg.tiling is not None
                      else "the parity gate compared whole images")
            notes.append(f"the card's default recipe judges frames larger than {tiling.tile} px "
                         f"as {tiling.tile} px tiles overlapping by {tiling.overlap:g} (card "
                         f"format_version {TILING_FORMAT}: a server before session 44 refuses "
                         f"it, saying to upgrade); {parity}")
        if not cfg.reference:
            floor, under = blank_floor(dataset)
            if floor is not None:
                # a frame spanning fewer grey levels fails as blank_frame (a lens cap)
                recipe["min_contrast"] = summary["min_contrast"] = floor
            if under:  # some of the set's own images (the suggestion is the 1st percentile's)
                notes.append(under)
        metrics_path = trained.run_dir / "report-val" / "metrics.json"
        metrics = read_run_json(metrics_path) or {}
        if not trained.belongs(metrics):  # a report of the checkpoint before a resume
            metrics = {}
        card = ModelCard(
            name=name, version=version, class_names=trained.class_names,
            input=InputSpec(size=cfg.input_size,
                            color="grey+reference+difference" if cfg.reference else "RGB",
                            letterbox=LetterboxSpec(pad_value=PAD_VALUE)),  # as trained
            max_detections=MAX_DETECTIONS,
            thresholds=thr,
            agnostic_iou=thresholds.get("agnostic_iou"),
            default_recipe=recipe,
            format_version=1 if tiling is None else TILING_FORMAT,
            metrics={k: metrics[k] for k in ("coco", "pairs", "quality", "calibration")
                     if k in metrics},
            training={"data": {**trained.checkpoint.get("data", {}),
                               "source": dataset.info.get("source"),
                               "licence": dataset.info.get("licence")},
                      "config": cfg.model_dump(),
                      "epochs_trained": trained.checkpoint.get("epoch", 0) + 1,
                      "model": cfg.model,
                      "export": export_provenance(trained, dataset, val)},
            lineage=lineage_of(trained, parent),
            sha256=sha256_file(fp32), lineside_version=__version__,
        )
        write_card(tmp, card)
        detector = Detector(load_package(tmp), device="cpu")
        problems = parity_report(trained, detector, val[:parity_images], dataset, thr)
        if problems:
            raise PackageError("export parity gate failed: ONNX and torch disagree:\n  "
                               + "\n  ".join(problems[:20]))
        summary["parity_images"] = min(parity_images, len(val))
        card.training["export"]["parity"] = {
            "images": summary["parity_images"], "mismatches": 0, "iou_at_least": PARITY_IOU,
            "score_within": PARITY_SCORE, "both_ways": True,
            "runtime": f"onnxruntime {_ort_version()} {detector.session.providers}"}
        write_card(tmp, card)
        if int8 or fp16:
            base_preds = runtime_predictions(detector, val, dataset, tiling)
            base_map = coco_metrics(val, base_preds, trained.class_names)["map50"]
            base_ms = _latency_ms(detector, cfg.input_size, latency_runs)
            shutil.copyfile(fp32, tmp / "model.fp32.onnx")
            lowp = tmp / "model.lowp.onnx"
            calib: dict[str, Any] = {"calibration_images": 0, "calibration_files": []}
            if int8:
                chosen = calibration_sample(val, calibration_images, calibration_seed,
                                            cfg.reference)
                calib, thin = calibration_record(chosen, val, calibration_seed, cfg.reference)
                if thin:  # said in the output's notes and kept in the card
                    calib["calibration_notes"] = thin
                    notes += thin
                quantize_int8(fp32, lowp, detector, chosen, dataset, tiling)
            else:
                convert_fp16(fp32, lowp)
            lowp.replace(fp32)
            card.precision = "int8" if int8 else "fp16"
            card.sha256 = sha256_file(fp32)
            write_card(tmp, card)
            low = Detector(load_package(tmp), device="auto" if fp16 else "cpu")
            low_preds = runtime_predictions(low, val, dataset, tiling)
            low_map = coco_metrics(val, low_preds, trained.class_names)["map50"]
            changes = counted_changes(base_preds, low_preds, trained.class_names, thr,
                                      agnostic_iou=card.agnostic_iou)
            low_ms = _latency_ms(low, cfg.input_size, latency_runs)
            card.quantization = {"precision": card.precision, "map50_fp32": base_map,
                                 "map50": low_map, "map50_change": low_map - base_map,
                                 "p50_ms_fp32": base_ms, "p50_ms": low_ms,
                                 # per forward pass: a tiled frame takes one per tile
                                 "latency_of": LATENCY_OF,
                                 "speedup": base_ms / low_ms,
                                 # which val images, how chosen, of which groups and kinds
                                 **calib,
                                 # on the val images, at the card's thresholds: the card's
                                 # metrics are the fp32 graph's
                                 "counted_vs_fp32": changes}
            # how val was judged: the figures (and a refusal) are of frames cut as the
            # card's recipe cuts them, not whole; a card without tiling as before
            judged = "" if tiling is None else (
                f" (val frames judged as the card's recipe judges them: larger than "
                f"{tiling.tile} px as {tiling.tile} px tiles)")
            if tiling is not None:
                card.quantization["tiling"] = tiling.model_dump()
            write_card(tmp, card)
            (tmp / "model.fp32.onnx").unlink()
            summary["quantization"] = card.quantization
            try:
                if int8 and base_map - low_map > max_map_drop:
                    raise PackageError(
                        f"int8 graph refused: mAP@.5 fell from {base_map:.4f} to "
                        f"{low_map:.4f} (more than {max_map_drop * 100:.1f} points){judged}")
                _check_counted(card.precision, changes, max_defects_lost, notes, judged)
            except PackageError as exc:
                if not calib.get("calibration_notes"):
                    raise
                # a thin calibration is a likely cause, and the card that said so is not kept
                # (a line each, as export prints them when it ships: one line of three
                # notes joined by "; " read as one sentence)
                raise PackageError(f"{exc.message}\n  note: "
                                   + "\n  note: ".join(calib["calibration_notes"])) from None
    summary["sha256"] = card.sha256
    if tiling is not None:
        summary["tiling"] = tiling.model_dump()
    if notes:
        summary["notes"] = notes
    return summary


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def export_provenance(trained: Trained, dataset: Any, val: list[ImageRecord]) -> dict[str, Any]:
    """What the card's ``training.export`` records of the export itself: the checkpoint
    the graph was made from (its sha256), the set it was checked on (``--data``, or the
    run's own: the parity gate, int8 calibration and the ``quantization`` figures are of
    its val images), and the exporter's versions and opset. Before, a card named neither
    the checkpoint nor the set: a package exported with ``--data`` showed quantization
    figures of an unnamed set (export review, session 55). The parity gate's figures are
    added once it has passed."""
    root = Path(dataset.root) if dataset.root is not None else None
    annotations = root / ANNOTATIONS if root is not None else None
    return {
        "checkpoint": {"file": str(trained.checkpoint_file.resolve())
                       if trained.checkpoint_file is not None else None,
                       "sha256": trained.sha256},
        "checked_on": {"data": str(root.resolve()) if root is not None else None,
                       "annotations_sha256": sha256_file(annotations)
                       if annotations is not None and annotations.is_file() else None,
                       "split": "val" if dataset.in_split("val") else "all",
                       "images": len(val)},
        "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": _ort_version(),
    }


def blank_floor(dataset: Any) -> tuple[int | None, str | None]:
    """The ``min_contrast`` a single-image card's recipe sets: what ``lineside data stats``
    suggests from the dataset's images (half their 1st percentile of contrast, at most
    16: :func:`contrast_stats`), or None where that is 0 (parts of this product look
    blank: DeepPCB's all-copper tiles). Without it a single-image recipe passed a
    lens-capped camera's every frame as a good part; a reference recipe has its own
    default check against its golden. A recipe configured for the model sets its own.
    Second: a note when some of the set's own images span fewer levels (over 100 images
    the 1st percentile is above the lowest), which the card's recipe fails as blank_frame:
    exported unsaid, a box whose recipe follows the card failed such parts after a swap."""
    got = contrast_stats(dataset)
    floor = got["suggested_min_contrast"]
    if not floor:
        return None, None
    under = got["under_suggested"]
    note = None if not under else (
        f"{under} of the dataset's {got['images']} images span fewer grey levels than the "
        f"card's min_contrast {floor} (the lowest {got['lowest']}; 'lineside data stats' "
        "lists the spread): its recipe fails frames that flat as blank_frame; if real parts "
        "look so, set min_contrast lower (0: off) in the line's recipe")
    return int(floor), note


def _check_counted(precision: str, changes: dict[str, Any], max_lost: float,
                   notes: list[str], judged: str = "") -> None:
    """Refuse a lower-precision graph that passes a val part fp32 fails, or that misses
    more than ``max_lost`` of the defects fp32 counts; note any defect it misses.
    ``judged`` says how val was judged when not whole (a card's tiling)."""
    lost = sum(changes["defects_lost"].values())
    counted = changes["defects_counted_fp32"]
    which = ", ".join(f"{n} {k}" for k, n in sorted(changes["defects_lost"].items()))
    if changes["escapes"]:
        raise PackageError(
            f"{precision} graph refused: it passes {changes['escapes']} val part(s) the fp32 "
            f"graph fails at the card's thresholds (defects it misses: {which}){judged}")
    if lost > max_lost * max(counted, 1):
        raise PackageError(
            f"{precision} graph refused: it misses {lost} of the {counted} defects the fp32 "
            f"graph counts on val at the card's thresholds ({which}; at most "
            f"{max_lost * 100:.1f}%: --max-defects-lost){judged}")
    if lost:
        notes.append(f"the {precision} graph misses {lost} of the {counted} defects the fp32 "
                     f"graph counts on val ({which}){judged}: a recipe that allows some defects "
                     "of a class may judge a part otherwise (card quantization.counted_vs_fp32)")


def threshold_card(package: str | Path, calibration: dict[str, Any]) -> dict[str, Any]:
    """A detector package's card (as JSON) with a calibration's thresholds (``thresholds``
    and the default recipe's ``min_score``), recorded under ``metrics.calibration``; every
    other field as it was."""
    package = Path(package)
    card = read_card(package)
    thr = calibration["thresholds"]
    if sorted(thr) != sorted(card.class_names):
        raise ConfigError(f"{package}: calibration classes {sorted(thr)} differ from the "
                          f"card's {card.class_names}")
    doc: dict[str, Any] = json.loads((package / CARD).read_text())
    doc["thresholds"] = {n: float(thr[n]) for n in card.class_names}
    doc.setdefault("default_recipe", {})["min_score"] = dict(doc["thresholds"])
    if "agnostic_iou" in calibration:  # the rule the thresholds were chosen with
        doc["agnostic_iou"] = calibration["agnostic_iou"]
    doc.setdefault("metrics", {})["calibration"] = calibration
    return doc
