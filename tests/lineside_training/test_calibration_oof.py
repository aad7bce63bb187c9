"""Out-of-fold calibration on a tiny config, a package's thresholds rewritten with its graph
untouched, and the commands that do both."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import read_dataset, write_dataset
from lineside_inspect.errors import ConfigError
from lineside_inspect.package import load_package
from lineside_training.calibrate import calibrate
from lineside_training.checkpoint import load_trained
from lineside_training.config import load_config
from lineside_training.oof import (
    CALIBRATION,
    ENGINE_VAL,
    OOF,
    group_folds,
    load_predictions,
    oof_calibrate,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
BUNDLED = ROOT / "models" / "deeppcb-ref" / "1-int8"  # the faster of the two bundled twins
GROUPS = ("group13000", "group50600")  # 10 images each, 5 with defects
runner = CliRunner()


@pytest.fixture(scope="module")
def two_boards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sample = read_dataset(SAMPLE)
    sample.images = [r for r in sample.images if r.group in GROUPS]
    dst = tmp_path_factory.mktemp("boards") / "data"
    write_dataset(sample, dst)
    return dst


@pytest.fixture(scope="module")
def one_board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three defective images of the sample's board group00041 and their templates (good
    images), split ``val``."""
    sample = read_dataset(SAMPLE)
    defective = [r for r in sample.images if r.group == "group00041" and r.boxes][:3]
    keep = {r.file_name for r in defective} | {r.reference for r in defective}
    sample.images = [r for r in sample.images if r.file_name in keep]
    dst = tmp_path_factory.mktemp("board") / "data"
    write_dataset(sample, dst)
    return dst


def _tiny(data: Path, out: Path) -> dict[str, object]:
    """A reference recipe cut to one step on 64 px inputs with a narrow LSDet."""
    return {"name": "tiny", "data": str(data), "out_dir": str(out), "reference": True,
            "input_size": 64, "crop_size": None, "epochs": 1, "max_steps_per_epoch": 1,
            "batch_size": 2, "ema_decay": 0.0, "workers": 0, "device": "cpu",
            "model_kwargs": {"widths": [8, 8, 16, 16, 16], "fpn_channels": 16}}


def test_folds_keep_groups_whole_and_balanced() -> None:
    records = read_dataset(SAMPLE).images  # 7 boards of 10 images
    folds = group_folds(records, 3)
    assert sorted(g for f in folds for g in f) == sorted({str(r.group) for r in records})
    assert sorted(len(f) for f in folds) == [2, 2, 3]
    with pytest.raises(ConfigError, match="only 7 group"):
        group_folds(records, 8)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        group_folds(records, 1)


def test_out_of_fold_calibration(two_boards: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    # the folds train with the threads set above (left to choose, each watched the CPU
    # for half a second first)
    cfg = load_config(None, None, **_tiny(two_boards, tmp_path / "unused"), threads=2)
    out = tmp_path / "oof"
    calib = oof_calibrate(cfg, folds=2, out=out, quiet=True)
    saved = json.loads((out / CALIBRATION).read_text())
    assert saved["thresholds"] == calib["thresholds"] and len(calib["folds"]) == 2
    records = read_dataset(two_boards).images
    seen: list[str] = []
    for row in calib["folds"]:
        k, held = row["fold"], set(row["groups"])
        # the fold model predicted exactly its held-out boards ...
        preds = load_predictions(out / f"fold{k}" / OOF)
        assert {f.split("/")[0] for f in preds} == held
        assert len(preds) == row["images"] == sum(1 for r in records if r.group in held)
        # ... and trained on the others only, with nothing steered by the held-out fold
        ck = torch.load(out / f"fold{k}" / "last.pt", weights_only=False)
        assert ck["data"]["train_images"] == len(records) - row["images"]
        assert ck["data"]["val_images"] == min(ENGINE_VAL, row["images"])
        assert ck["config"]["patience"] >= 10**9
        seen += preds
    assert sorted(seen) == sorted(r.file_name for r in records)
    assert set(calib["thresholds"]) == set(read_dataset(two_boards).categories)
    assert calib["images"] == len(records) and calib["pairs"]["truths"] == sum(
        len(r.boxes) for r in records)
    # a second call reuses every fold's predictions: nothing is trained again
    stamp = (out / "fold0" / "last.pt").stat().st_mtime_ns
    again = oof_calibrate(cfg, folds=2, out=out, quiet=True, run=out / "fold1")
    assert again["thresholds"] == calib["thresholds"]
    # --run: the thresholds go where lineside export reads a run's operating points
    saved = load_trained(out / "fold1").thresholds
    assert saved is not None and saved["thresholds"] == calib["thresholds"]
    assert (out / "fold0" / "last.pt").stat().st_mtime_ns == stamp


def test_package_thresholds_rewritten_and_graph_untouched(tmp_path: Path, one_board: Path) -> None:
    package = tmp_path / "deeppcb-ref" / "1-int8"
    shutil.copytree(BUNDLED, package)
    graph = hashlib.sha256((package / "model.onnx").read_bytes()).hexdigest()
    before = json.loads((package / "model.json").read_text())
    calib = calibrate(package, data=one_board, split="val", write=True, device="cpu")
    card = json.loads((package / "model.json").read_text())
    assert hashlib.sha256((package / "model.onnx").read_bytes()).hexdigest() == graph
    assert card["thresholds"] == calib["thresholds"] != before["thresholds"]
    assert card["default_recipe"]["min_score"] == calib["thresholds"]
    assert card["metrics"]["calibration"]["pairs"] == calib["pairs"]
    # everything else on the card is as it was
    assert {k: v for k, v in card.items() if k not in ("thresholds", "default_recipe", "metrics")} \
        == {k: v for k, v in before.items() if k not in ("thresholds", "default_recipe", "metrics")}
    assert load_package(package).card.thresholds == calib["thresholds"]
    # a serving package is never changed: a new version beside it, the same graph
    card_bytes = (package / "model.json").read_bytes()
    again = calibrate(package, data=one_board, split="val", device="cpu", objective="rejects",
                      new_version=package.parent / "2")
    new = load_package(package.parent / "2").card
    assert (new.name, new.version, new.sha256) == ("deeppcb-ref", "2", card["sha256"])
    assert new.thresholds == again["thresholds"] and new.metrics["recalibrated_from"] == (
        f"deeppcb-ref:{before['version']}")
    assert new.lineage is not None and f"recalibrated from deeppcb-ref:{before['version']}" \
        in new.lineage.note
    source = load_package(package).card.lineage  # the weights' lineage is kept
    assert new.lineage.dataset_revision == (source.dataset_revision if source else None)
    assert (package / "model.json").read_bytes() == card_bytes
    # and the package is now evaluated at them, F by DeepPCB's protocol beside mAP
    r = runner.invoke(app, ["evaluate", str(package), "--data", str(one_board), "--split", "val",
                            "--device", "cpu", "--out", str(tmp_path / "report")])
    assert r.exit_code == 0, r.stderr
    f = calib["pairs"]["f"]
    assert f"DeepPCB-protocol F {f:.4f}" in r.stdout
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["pairs"]["f"] == pytest.approx(f) and "mAP@.5" in r.stdout
    assert "DeepPCB's protocol" in (tmp_path / "report" / "summary.md").read_text()
    assert np.isfinite(list(calib["thresholds"].values())).all()
    # the card's one-per-place rule is kept, or switched off with 0, and the evaluation
    # counts the boxes as the edge does, under whichever the card says
    assert before["agnostic_iou"] == card["agnostic_iou"] == calib["agnostic_iou"] == 0.3
    off = calibrate(package, data=one_board, split="val", write=True, device="cpu",
                    agnostic_iou=0)
    assert off["agnostic_iou"] is None and load_package(package).card.agnostic_iou is None
    r = runner.invoke(app, ["calibrate", str(package), "--data", str(one_board), "--device",
                            "cpu", "--agnostic-iou", "0.4"])  # not written: the card keeps none
    assert r.exit_code == 0 and "above IoU 0.4 count once" in r.stdout
    assert load_package(package).card.agnostic_iou is None
    r = runner.invoke(app, ["evaluate", str(package), "--data", str(one_board), "--split", "val",
                            "--device", "cpu", "--out", str(tmp_path / "report-off")])
    assert r.exit_code == 0, r.stderr
    assert f"DeepPCB-protocol F {off['pairs']['f']:.4f}" in r.stdout


def test_calibrate_command_says_what_is_missing(tmp_path: Path, two_boards: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_tiny(two_boards, tmp_path / "runs")))
    r = runner.invoke(app, ["calibrate", str(config)])
    assert r.exit_code == 2 and "--folds" in r.stderr and "Traceback" not in r.output + r.stderr
    r = runner.invoke(app, ["calibrate", str(config), "--folds", "5"])
    assert r.exit_code == 2 and "only 2 group(s)" in r.stderr
    r = runner.invoke(app, ["calibrate", str(BUNDLED)])
    assert r.exit_code == 2 and "needs --data" in r.stderr
    r = runner.invoke(app, ["calibrate", str(BUNDLED), "--folds", "2"])
    assert r.exit_code == 2 and "training config" in r.stderr
    r = runner.invoke(app, ["calibrate", str(BUNDLED), "--data", str(SAMPLE), "--objective", "x"])
    assert r.exit_code == 2 and "use one of f, rejects" in r.stderr
    r = runner.invoke(app, ["calibrate", str(BUNDLED), "--data", str(SAMPLE),
                            "--agnostic-iou", "1.5"])
    assert r.exit_code == 2 and "IoU in [0, 1)" in r.stderr
    r = runner.invoke(app, ["calibrate", str(tmp_path), "--new-version", str(tmp_path / "2")])
    assert r.exit_code == 2 and "writes a model package again" in r.stderr
    r = runner.invoke(app, ["calibrate", str(BUNDLED), "--data", str(SAMPLE), "--write",
                            "--new-version", str(tmp_path / "2")])
    assert r.exit_code == 2 and "choose one" in r.stderr and not (tmp_path / "2").exists()
    for target in (tmp_path, config):
        r = runner.invoke(app, ["calibrate", str(target), "--agnostic-iou", "0.3"])
        assert r.exit_code == 2 and "model package's rule" in r.stderr
    r = runner.invoke(app, ["calibrate", str(BUNDLED), "--data", str(SAMPLE),
                            "--agnostic-iou", "0.3", "--objective", "rejects"])
    assert r.exit_code == 2 and "--objective f" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained on a refused command
