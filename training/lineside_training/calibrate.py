"""``lineside calibrate``: operating thresholds for a recipe, a run or a model package.

* a training config with ``folds``: out-of-fold calibration (:mod:`lineside_training.oof`);
* a good-only (anomaly) package: thresholds again from the line's good images
  (:mod:`lineside_training.anomaly.recalibrate`);
* a model package: its predictions through the edge runtime on ``data`` (images it never
  trained on), calibrated by :func:`lineside_training.calibration.calibrate_f`;
* either package: ``new_version`` writes the package again with the new thresholds as a
  new version of the model (what a serving package needs: a loaded version keeps its
  package), ``write`` puts them into its own card (a package not yet serving); the graph
  is not touched;
* a run folder or checkpoint: its predictions on ``data``'s ``split``, calibrated, and
  ``write`` saves them as the run's ``thresholds.json`` (what ``lineside export`` puts in
  the card).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lineside_inspect.dataset import Dataset, ImageRecord, read_dataset
from lineside_inspect.errors import ConfigError, DatasetError
from lineside_inspect.package import CARD, read_card
from lineside_inspect.recipes import card_recipe, check_card_recipe
from lineside_inspect.runtime.detector import Detector
from lineside_training.anomaly.recalibrate import calibrated_card, recalibrate_package
from lineside_training.calibration import best_global, calibrate_f
from lineside_training.checkpoint import load_trained
from lineside_training.config import load_config
from lineside_training.engine import pick_device
from lineside_training.evaluate import split_records
from lineside_training.export import threshold_card
from lineside_training.oof import CALIBRATION, oof_calibrate
from lineside_training.package_writer import new_version_folder, rewrite_card, write_new_version
from lineside_training.pairscore import pair_metrics
from lineside_training.predict import predict_records, runtime_predictions
from lineside_training.quality import calibrate as calibrate_rejects

TARGET_ESCAPE = 0.005
OBJECTIVES = {"f": calibrate_f, "rejects": calibrate_rejects}


def calibrate(
    target: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "val",
    folds: int | None = None,
    time_budget: str | None = None,
    target_escape: float = TARGET_ESCAPE,
    out: str | Path | None = None,
    run: str | Path | None = None,
    write: bool = False,
    new_version: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str = "auto",
    objective: str = "f",
    agnostic_iou: float | None = None,
) -> dict[str, Any]:
    """Calibrate ``target`` (see the module); returns the calibration (thresholds, the
    DeepPCB-protocol F and escapes they give, and each class's offset). ``objective``
    ``f`` is the best defect-level F within the escape allowance; ``rejects`` the fewest
    false rejects within it (:func:`lineside_training.quality.calibrate`, for lines where
    a false reject costs more than a wrong box; runs and packages only). ``agnostic_iou``
    (packages only): the one-per-place rule to calibrate with and write into the card,
    0 for none; left out, the card's own. ``new_version`` (packages only): the folder of
    the new version to write (``models/NAME/VERSION``)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    target = Path(target)
    if not target.exists():  # first: "missing.yaml --folds 2" was told to give a config
        what = "training config" if target.suffix in (".yaml", ".yml") else \
            "run folder, checkpoint or model package"
        raise ConfigError(f"{target}: no such {what}")
    is_package = (target / CARD).is_file()
    if new_version is not None and not is_package:
        raise ConfigError(f"{target}: --new-version writes a model package again: give a "
                          "package (a run's thresholds go to its thresholds.json: --write)")
    if new_version is not None and write:
        raise ConfigError("--write and --new-version: choose one (the card in place, or a "
                          "new version beside it)")
    # before any work: what would be written where it must not be
    if is_package and new_version is not None:
        new_version_folder(target, new_version)
    _check_out_folder(out, new_version)
    if agnostic_iou is not None and not is_package:
        raise ConfigError(f"{target}: --agnostic-iou is a model package's rule: calibrate "
                          "the exported package")
    if agnostic_iou is not None and objective != "f":
        raise ConfigError("--agnostic-iou is calibrated with --objective f (the defect-level "
                          "F it changes)")
    if target.is_file() and target.suffix in (".yaml", ".yml"):
        if objective != "f":
            raise ConfigError("out-of-fold calibration optimises the defect-level F "
                              "(--objective f)")
        if folds is None:
            raise ConfigError(f"{target}: a training config is calibrated out of fold: "
                              "give --folds K (K fold models are trained)")
        cfg = load_config(target, overrides, data=str(data) if data else None)
        return oof_calibrate(cfg, folds=folds, out=out or Path(cfg.out_dir) / f"{cfg.name}-oof",
                             time_budget=time_budget, target_escape=target_escape, run=run)
    if folds is not None or time_budget is not None:
        raise ConfigError(f"{target}: --folds and --time train fold models: give a training "
                          "config (YAML), not a run or package")
    if agnostic_iou is not None and not 0 <= agnostic_iou < 1:
        raise ConfigError(f"--agnostic-iou {agnostic_iou}: give an IoU in [0, 1) (0: none)")
    rule: float | None = None
    if is_package and read_card(target).kind == "anomaly":
        if data is None:
            raise ConfigError(f"{target}: calibrating a model package needs --data DATASET "
                              "(the line's own good parts)")
        ignored = [flag for flag, given in (
            ("--objective", objective != "f"), ("--agnostic-iou", agnostic_iou is not None),
            ("--target-escape", target_escape != TARGET_ESCAPE), ("--run", run is not None),
            ("--set", bool(overrides)), ("--device", device not in ("auto", "cpu"))) if given]
        if ignored:
            raise ConfigError(f"{', '.join(ignored)}: a good-only package is calibrated at "
                              "its card's false-reject target, on the CPU, as the edge "
                              "runtime runs it; these are a detector's")
        calib = recalibrate_package(target, data=data, split=split)
        _save_calibration(out, calib)
        _save_card(target, calibrated_card(target, calib), write, new_version)
        return calib
    if is_package:
        if data is None:
            raise ConfigError(f"{target}: calibrating a model package needs --data DATASET "
                              "(images it did not train on)")
        detector = Detector(target, device=device)
        names = detector.card.class_names
        rule = detector.card.agnostic_iou if agnostic_iou is None else (agnostic_iou or None)
        subject = f"{detector.card.name}:{detector.card.version}"
        dataset = read_dataset(data)
        records = _with_defects(split_records(dataset, split, names), split, dataset)
        # judged as the card's own recipe judges frames (tiled, if it tiles): thresholds
        # chosen on whole frames were written into a card whose line cuts them
        check_card_recipe(detector.card, names)
        preds = runtime_predictions(detector, records, dataset,
                                    card_recipe(detector.card).tiling)
    else:
        trained = load_trained(target, pick_device(device))
        names = trained.class_names
        subject = str(target)
        dataset = read_dataset(data or trained.data)
        records = _with_defects(split_records(dataset, split, names), split, dataset)
        preds = predict_records(trained.model, dataset, records, names,
                                size=trained.config.input_size, device=pick_device(device),
                                reference=trained.config.reference,
                                tiling=trained.config.tiling)
    if objective == "f":
        calib = calibrate_f(records, preds, names, target_escape=target_escape,
                            agnostic_iou=rule)
    else:  # chosen without the rule: the card keeps whatever rule it has (none is added)
        calib = calibrate_rejects(records, preds, names, target_escape=target_escape)
    groups = sorted({r.group for r in records if r.group is not None})
    calib.update(source=f"{subject}: its predictions on split {split} of "
                        f"{Path(dataset.root or '').name}"
                        + (f" ({', '.join(groups)})" if groups else ""),
                 pairs=pair_metrics(records, preds, names, calib["thresholds"], rule),
                 best_global_in_hindsight=best_global(records, preds, names,
                                                      agnostic_iou=rule),
                 good_images=sum(1 for r in records if not r.boxes))
    _save_calibration(out, calib)
    if is_package:
        _save_card(target, threshold_card(target, calib), write, new_version)
    elif write:
        trained.save_thresholds(calib)
    return calib


def _with_defects(records: list[ImageRecord], split: str, dataset: Dataset) -> list[ImageRecord]:
    """``records``, refused when none is defective: a detector's thresholds are chosen
    where it finds labelled defects, and without any every threshold looks as good."""
    if not any(r.boxes for r in records):
        raise DatasetError(f"split {split!r} of {Path(dataset.root or '').name} has no "
                           "defective images (boxes): a detector's thresholds are set on the "
                           "labelled defects it finds; calibrate on a split that has them")
    return records


def _check_out_folder(out: str | Path | None,
                      new_version: str | Path | None) -> None:
    """``--out`` is a report's folder: never inside a package, this one, the new version
    or another (its calibration.json would change a package's files, or block the
    version)."""
    if out is None:
        return
    where = Path(out).resolve()
    inside = [f for f in (where, *where.parents) if (f / CARD).is_file()]
    if new_version is not None and where.is_relative_to(Path(new_version).resolve()):
        inside.append(Path(new_version))
    if inside:
        raise ConfigError(f"--out {out}: inside the package {inside[0]}: give a report "
                          "folder of its own")


def _save_calibration(out: str | Path | None, calib: dict[str, Any]) -> None:
    if out is not None:  # first: the calibration is kept even if the card is refused
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / CALIBRATION).write_text(json.dumps(calib, indent=1))


def _save_card(package: Path, doc: dict[str, Any], write: bool,
               new_version: str | Path | None) -> None:
    if new_version is not None:
        write_new_version(package, new_version, doc)
    elif write:
        rewrite_card(package, doc)
