"""``lineside evaluate``: COCO mAP, quality metrics, calibration and a report folder."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from lineside_inspect.dataset import Dataset, ImageRecord, read_dataset
from lineside_inspect.errors import ConfigError
from lineside_inspect.imageio import read_image
from lineside_inspect.package import CARD
from lineside_inspect.recipes import card_recipe, check_card_recipe
from lineside_inspect.runtime.detector import Detector
from lineside_training.calibration import calibrate_f
from lineside_training.checkpoint import (
    CHECKPOINT_STAMP,
    Trained,
    load_trained,
    resolve_checkpoint,
)
from lineside_training.engine import pick_device
from lineside_training.metrics import coco_metrics
from lineside_training.pairscore import pair_metrics
from lineside_training.predict import Prediction, predict_records, runtime_predictions
from lineside_training.quality import escape_note, quality_metrics


def evaluate(
    run: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "val",
    target_escape: float = 0.005,
    out: str | Path | None = None,
    device: str = "auto",
    examples: int = 6,
) -> dict[str, Any]:
    """Evaluate a run (or checkpoint) on a split and write a report folder.

    On ``val`` the operating thresholds are calibrated and saved into the run
    (``thresholds.json``) for export; on other splits the saved ones are used. ``split``
    ``all`` takes every image (a test set imported on its own has no split).

    ``run`` may also be an exported model package: see :func:`evaluate_package`.
    """
    if (Path(run) / CARD).is_file():
        return evaluate_package(run, data=data, split=split, out=out, device=device,
                                examples=examples)
    trained = load_trained(run, pick_device(device))
    dataset = read_dataset(data or trained.data)
    records = split_records(dataset, split, trained.class_names)
    tiling = trained.config.tiling  # a native-scale run: judged as its package will be
    preds = predict_records(trained.model, dataset, records, trained.class_names,
                            size=trained.config.input_size, device=pick_device(device),
                            reference=trained.config.reference, tiling=tiling)
    coco = coco_metrics(records, preds, trained.class_names)
    # the run's thresholds are calibrated on its own val split only: evaluating other data
    # (a folder of good parts, another line's set) must not overwrite what export ships
    own = trained.is_own_data(data)
    # the checkpoint export ships (best.pt, else last.pt): another one of the run (RUN/last.pt)
    # is reported beside, and never replaces its thresholds (second review)
    shipped = _shipped(trained)
    rule = trained.config.agnostic_iou
    saved: Path | None = None  # where the calibrated thresholds went, if anywhere
    notes: list[str] = []
    defective = any(r.boxes for r in records)
    changed = own and _changed_since_training(trained)
    if changed:
        # re-split (or relabelled) since: "val" may hold images the run trained on, and
        # thresholds chosen on them shipped in-sample unsaid (training review, session 33)
        notes.append(f"{trained.data} changed since the run trained on it (re-split or "
                     "relabelled): its val may hold images the run trained on; figures may "
                     "be in-sample and thresholds are not saved (train again on it)")
    # per merged set {"in_val_or_test": n, "in_train": m} (engine._merge): summing the
    # dicts was a TypeError, a traceback for every run whose --merge held a copy
    merged = trained.checkpoint.get("data", {}).get("extra_duplicates") or {}
    leaked = sum(int(n.get("in_val_or_test", 0)) for n in merged.values())
    if own and leaked:
        notes.append(f"{leaked} merged training images are parts this "
                     "validation judges: figures are in-sample for them")
    if split == "val" and own and shipped and not defective:
        # nothing to calibrate on: saving them gave export a default of 0.5 unsaid
        notes.append("val holds no defective image: thresholds not calibrated nor saved "
                     "(make a split with defects in val: 'lineside data split')")
    if split == "val" and own and shipped and defective and not changed:
        calib = calibrate_f(records, preds, trained.class_names, target_escape=target_escape,
                            agnostic_iou=rule)
        saved = trained.save_thresholds(calib)
        in_sample = True
    elif trained.thresholds and not changed:
        calib, in_sample = trained.thresholds, own and split in ("val", "all")
    else:  # never calibrated: on these images, for this report only
        calib = calibrate_f(records, preds, trained.class_names, target_escape=target_escape,
                            agnostic_iou=rule)
        in_sample = True
        # said in the command's output, not only in summary.md: a run without saved
        # thresholds evaluated on other data reported figures its package's report on the
        # same data did not match, unsaid (issue 18 follow-up, session 49)
        why = ("the run has no saved thresholds" if not trained.thresholds else
               "the run's saved thresholds are not used: its data changed since training")
        notes.append(f"thresholds chosen on the {len(records)} images evaluated here, for this "
                     f"report only ({why}): the figures at them are in-sample, and a package "
                     "exported from the run (thresholds calibrated on the run's own val) "
                     "reports other figures on this data; thresholds: "
                     + ", ".join(f"{n} {t:.3f}" for n, t in calib["thresholds"].items()))
    # thresholds chosen on these very images flatter the rates at them: the report says so
    calib = {**calib, "in_sample": in_sample}
    if missed := calib.get("allowance_missed"):  # chosen silently before (session 54)
        notes.append(f"calibration: {missed}")
    # the rule the thresholds were chosen with is the one they are applied with (export
    # writes it into the card)
    rule = calib.get("agnostic_iou")
    quality = quality_metrics(records, preds, trained.class_names, calib["thresholds"],
                              agnostic_iou=rule)
    pairs = pair_metrics(records, preds, trained.class_names, calib["thresholds"], rule)
    if note := escape_note(quality):
        notes.append(note)
    result = {"split": split, "images": len(records), "coco": coco, "quality": quality,
              "pairs": pairs, "calibration": calib, "checkpoint": str(trained.run_dir),
              CHECKPOINT_STAMP: trained.sha256,
              # the run's tiling its frames were judged with, as its card's recipe will
              **({} if tiling is None else {"tiling": tiling.model_dump()})}
    checkpoint = "" if shipped or trained.checkpoint_file is None else \
        f"-{trained.checkpoint_file.stem}"
    report = Path(out) if out else \
        trained.run_dir / f"report-{split}{other_data(data, own)}{checkpoint}"
    write_report(report, result, records, preds, trained.class_names, dataset, examples,
                 goal=trained.config.goal_map50)
    # where it wrote, for the command to say (it wrote them unsaid)
    return {**result, "report": str(report), "notes": notes,
            "thresholds_saved": None if saved is None else str(saved)}


def _changed_since_training(trained: Trained) -> bool:
    """:meth:`Trained.data_changed`, labels that cannot be read counting as unchanged."""
    try:
        return trained.data_changed()
    except OSError:
        return False


def _shipped(trained: Trained) -> bool:
    """Whether ``trained`` is the checkpoint of its folder that export takes (best.pt,
    else last.pt; a lone .pt file is its folder's own)."""
    try:
        return trained.checkpoint_file == resolve_checkpoint(trained.run_dir)
    except ConfigError:
        return True


SPLITS = ("train", "val", "test", "all")


def other_data(data: str | Path | None, own: bool) -> str:
    """The suffix of a run's default report folder: "" for the run's own dataset, else
    "-" and the other dataset's folder name, so its report goes beside the run's own
    rather than over it."""
    if own or data is None:
        return ""
    return "-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data).resolve().name)[:64] or "data")


def split_records(dataset: Dataset, split: str, class_names: list[str]) -> list[ImageRecord]:
    """The records of ``split``. Boxes carry class names, so the dataset's classes may come
    in another order than the model's (VOC import sorts them, YOLO keeps data.yaml's) or be
    fewer (a folder of good parts has none); a class the model does not know is refused."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    unknown = [c for c in dataset.categories if c not in class_names]
    if unknown:
        raise ConfigError(f"{dataset.root}: dataset classes {unknown} are not among the "
                          f"model's {class_names}: evaluate a model trained on them")
    records = dataset.images if split == "all" else dataset.in_split(split)
    if not records:
        raise ConfigError(f"{dataset.root}: the dataset has no images" if not dataset.images else
                          f"{dataset.root}: split {split!r} has no images (use --split all "
                          "for a dataset without splits)")
    return records


def evaluate_package(
    package: str | Path,
    *,
    data: str | Path | None,
    split: str = "all",
    out: str | Path | None = None,
    device: str = "auto",
    examples: int = 6,
) -> dict[str, Any]:
    """Evaluate an exported model package through the edge runtime (onnxruntime, the
    server's pre- and post-processing) at the thresholds its card carries: what the
    line would see. A card whose own recipe sets ``tiling`` is judged tiled, as a server
    judges its frames under that recipe. Nothing is calibrated or written into the package."""
    if data is None:
        raise ConfigError(f"{package}: evaluating a model package needs --data DATASET")
    detector = Detector(package, device=device)
    card = detector.card
    check_card_recipe(card, card.class_names)  # as a server loading it (its tiling is used)
    tiling = card_recipe(card).tiling
    dataset = read_dataset(data)
    records = split_records(dataset, split, card.class_names)
    preds = runtime_predictions(detector, records, dataset, tiling)
    coco = coco_metrics(records, preds, card.class_names)
    thresholds = {n: card.threshold(n) for n in card.class_names}
    quality = quality_metrics(records, preds, card.class_names, thresholds,
                              agnostic_iou=card.agnostic_iou)
    pairs = pair_metrics(records, preds, card.class_names, thresholds, card.agnostic_iou)
    result = {"split": split, "images": len(records), "coco": coco, "quality": quality,
              "pairs": pairs, "calibration": {"thresholds": thresholds, "source": "model card",
                                              "agnostic_iou": card.agnostic_iou},
              "checkpoint": str(package), "package": {"name": card.name, "version": card.version,
                                                      "sha256": card.sha256,
                                                      "precision": card.precision},
              # the card's recipe's tiling the frames were judged with (None: whole)
              "tiling": None if tiling is None else tiling.model_dump()}
    report = Path(out) if out else Path("runs") / f"{card.name}-{card.version}-report-{split}"
    write_report(report, result, records, preds, card.class_names, dataset, examples)
    note = escape_note(quality)  # (what a low escape rate means here: the command says it)
    return {**result, "report": str(report), "notes": [note] if note else []}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def pair_lines(pairs: dict[str, Any] | None) -> list[str]:
    """The DeepPCB-protocol figures at the operating thresholds, in one line."""
    if not pairs:
        return []
    return [f"- defect F by DeepPCB's protocol (IoU > 0.33, class must agree): "
            f"**{_fmt(pairs['f'])}** (precision {_fmt(pairs['precision'])}, recall "
            f"{_fmt(pairs['recall'])}: {pairs['matched']} matched of {pairs['detections']} "
            f"detections and {pairs['truths']} defects)"]


def quality_lines(q: dict[str, Any]) -> list[str]:
    """The quality figures in words: the rates the data can measure, and why not the others."""
    lines = []
    for key, what, num, den in (("escape_rate", "escape rate (defective images judged pass)",
                                 "escapes", "defective_images"),
                                ("false_reject_rate", "false-reject rate (good images judged fail)",
                                 "false_rejects", "good_images")):
        reason = q.get("not_measurable", {}).get(key)
        if reason:
            lines.append(f"- {what}: not measurable: {reason}")
        else:
            lines.append(f"- {what}: **{_fmt(q[key])}** ({q[num]}/{q[den]})")
            if key == "escape_rate" and (note := escape_note(q)):
                lines.append(f"  - {note}")
    if q.get("detection_rate") is not None:
        lines.append(f"- detection rate (defective images with a defect found, right class, IoU 0.5): "
                     f"**{_fmt(q['detection_rate'])}** ({q['detected_images']}/{q['defective_images']})")
    lines.append(f"- defect recall {_fmt(q['defect_recall'])}, precision {_fmt(q['defect_precision'])} "
                 "at the operating thresholds (IoU 0.5, right class)")
    return lines


def write_report(out: Path, result: dict[str, Any], records: list[ImageRecord],
                 preds: list[Prediction], class_names: list[str], dataset: Any,
                 examples: int, goal: float | None = None) -> None:
    """metrics.json, summary.md, pr_curves.png, confusion.png, a few drawn examples and,
    for a run, time_to_accuracy.png (with ``goal`` as its goal line, if any)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    coco, q = result["coco"], result["quality"]
    lines = [
        f"# Evaluation on `{result['split']}` ({result['images']} images)", "",
        *([f"- judged as {'the' if result.get('package') else 'its'} card's recipe "
           f"{'judges' if result.get('package') else 'will judge'} frames: tiled, {t['tile']} px tiles "
           f"overlapping by {t['overlap']:g} (a frame no larger than a tile whole)"]
          if (t := result.get("tiling")) else []),
        ("- mAP: n/a (no defects in the data)" if coco.get("boxes") == 0 else
         f"- mAP@[.5:.95]: **{_fmt(coco['map'])}**, mAP@.5: **{_fmt(coco['map50'])}**"),
        *pair_lines(result.get("pairs")),
        *quality_lines(q),
        *([f"- calibration: {result['calibration']['allowance_missed']}"]
          if result.get("calibration", {}).get("allowance_missed") else []),
        *(["- the thresholds were calibrated on these same images, so the figures at them "
           "are in-sample: for out-of-sample ones evaluate a split the calibration did not "
           "see (`--split test`, or another dataset)"]
          if result.get("calibration", {}).get("in_sample") else []),
        *([f"- one defect per place: counted boxes overlapping above IoU "
           f"{result['calibration']['agnostic_iou']} count once, the highest-scored "
           "(mAP is over every box)"]
          if result.get("calibration", {}).get("agnostic_iou") is not None else []), "",
        "| class | AP | AP50 | threshold | recall | precision | images detected |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in class_names:
        pc = coco["per_class"].get(name)
        qc = q.get("per_class", {}).get(name, {})
        detected = f"{qc['images_detected']}/{qc['images']}" if qc else "n/a"
        lines.append(f"| {name} | {_fmt(pc['ap'] if pc else None)} | "
                     f"{_fmt(pc['ap50'] if pc else None)} | {q['thresholds'][name]:.3f} | "
                     f"{_fmt(qc.get('recall'))} | {_fmt(qc.get('precision'))} | {detected} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plots(out, result, records, preds, class_names, dataset, examples)
    log = Path(result["checkpoint"]) / "metrics.jsonl"
    if log.is_file():
        plot_curve(log, out / "time_to_accuracy.png", goal=goal)


def plot_curve(metrics_jsonl: Path, out: Path, *, goal: float | None = None) -> None:
    """mAP@.5 and mAP@[.5:.95] on validation against training minutes; ``goal`` (the
    config's ``goal_map50``) as a dashed line, none without it."""
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics_jsonl.read_text().splitlines() if x.strip()]
    fig = curve_figure([r for r in rows if "map50" in r], goal)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _legend(ax: Any) -> None:
    """A legend only when something labelled was drawn (an empty one warns)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def curve_figure(rows: list[dict[str, Any]], goal: float | None) -> Any:
    """The figure of :func:`plot_curve` from metrics rows (``elapsed_min``, ``map50``, ``map``)."""
    import matplotlib

    matplotlib.use("Agg")
    # class names are text: "scratch $\\q$" was parsed as mathtext and crashed the report
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["elapsed_min"] for r in rows], [r["map50"] for r in rows], "o-", label="mAP@.5")
    ax.plot([r["elapsed_min"] for r in rows], [r["map"] for r in rows], "s-", label="mAP@[.5:.95]")
    if goal is not None:
        ax.axhline(goal, color="grey", ls="--", lw=1, label=f"goal {goal:g}")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("validation mAP")
    ax.set_ylim(0, 1)
    _legend(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plots(out: Path, result: dict[str, Any], records: list[ImageRecord],
           preds: list[Prediction], class_names: list[str], dataset: Any, examples: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    # class names are text: "scratch $\\q$" was parsed as mathtext and crashed the report
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    from lineside_inspect.boxes import iou_matrix
    from lineside_inspect.opencv import cv2

    # PR curves at IoU 0.5: greedy matching per class over all images, by score
    fig, ax = plt.subplots(figsize=(6, 5))
    index = {n: i for i, n in enumerate(class_names)}
    for c, name in enumerate(class_names):
        scored: list[tuple[float, int]] = []
        n_gt = 0
        for rec, p in zip(records, preds, strict=True):
            gt = np.array([b.xyxy() for b in rec.boxes if index[b.label] == c],
                          dtype=np.float32).reshape(-1, 4)
            n_gt += len(gt)
            sel = p.labels == c
            order = np.argsort(-p.scores[sel])
            ious = iou_matrix(p.boxes[sel][order], gt)
            taken = np.zeros(len(gt), bool)
            for s, row in zip(p.scores[sel][order], ious, strict=True):
                cand = (row >= 0.5) & ~taken
                hit = bool(cand.any())
                if hit:
                    taken[int(np.argmax(np.where(cand, row, -1)))] = True
                scored.append((float(s), int(hit)))
        if not n_gt:
            continue
        scored.sort(key=lambda t: -t[0])
        hits = np.cumsum([h for _, h in scored])
        recall = hits / n_gt
        precision = hits / np.arange(1, len(scored) + 1)
        ax.plot(recall, precision, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    _legend(ax)
    ax.set_title("PR curves (IoU 0.5)")
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=100)
    plt.close(fig)

    conf = np.array(result["quality"]["confusion"])
    labels = result["quality"]["confusion_labels"]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(conf):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_title("confusion at operating thresholds")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close(fig)

    thr = result["quality"]["thresholds"]
    ex_dir = out / "examples"
    ex_dir.mkdir(exist_ok=True)
    for rec, p in list(zip(records, preds, strict=True))[:examples]:
        image = read_image(dataset.image_path(rec))
        for b in rec.boxes:
            cv2.rectangle(image, (int(b.x1), int(b.y1)), (int(b.x2), int(b.y2)), (0, 200, 0), 2)
        for box, s, lab in zip(p.boxes, p.scores, p.labels, strict=True):
            if s >= thr[class_names[lab]]:
                x1, y1, x2, y2 = (int(v) for v in box)
                cv2.rectangle(image, (x1, y1), (x2, y2), (0, 0, 255), 1)
                cv2.putText(image, f"{class_names[lab]} {s:.2f}", (x1, max(y1 - 3, 10)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1)
        cv2.imwrite(str(ex_dir / Path(rec.file_name).name), image)
