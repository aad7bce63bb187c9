"""Native-scale training (config ``tiling``): a detector for frames much larger than its
input learns their small defects at their own scale, cut into tile-sized crops; its
validation and calibration judge val frames as tiles through the edge runtime's code, and
its package's card tiles alike, so ``lineside evaluate PACKAGE`` agrees with the run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lineside_inspect.dataset import read_dataset
from lineside_inspect.errors import ConfigError
from lineside_inspect.opencv import cv2
from lineside_inspect.package import TILING_FORMAT
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.tiles import Tiling
from lineside_training import predict
from lineside_training.calibrate import calibrate
from lineside_training.calibration import best_global
from lineside_training.checkpoint import load_trained
from lineside_training.commands import load_config as load_any_config
from lineside_training.config import AugmentConfig
from lineside_training.data.augment import train_transform
from lineside_training.engine import data_warnings, load_data, train
from lineside_training.evaluate import evaluate
from lineside_training.export import export
from lineside_training.metrics import coco_metrics

from .conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
TILE = 64
WIDTH, HEIGHT, SPOT = 256, 224, 6  # frames 4x the tile, spots a few px


def large_set(folder: Path, train: int = 6, val: int = 2, seed: int = 0) -> Path:
    """Light textured frames of ``WIDTH x HEIGHT`` with 6 dark ``SPOT`` px squares each
    (class ``spot``), ``train`` and ``val`` of them, plus a good frame in val."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for n in range(train + val + 1):
        image = np.full((HEIGHT, WIDTH, 3), 190, np.uint8)
        image += rng.integers(0, 30, (HEIGHT, WIDTH, 1), dtype=np.uint8)
        for _ in range(0 if n == train + val else 6):
            x = int(rng.integers(4, WIDTH - 4 - SPOT))
            y = int(rng.integers(4, HEIGHT - 4 - SPOT))
            image[y:y + SPOT, x:x + SPOT] = 40
            annotations.append({"id": len(annotations) + 1, "image_id": n + 1,
                                "category_id": 1, "bbox": [x, y, SPOT, SPOT]})
        cv2.imwrite(str(folder / "images" / f"f{n}.png"), image)
        images.append({"id": n + 1, "file_name": f"f{n}.png", "width": WIDTH,
                       "height": HEIGHT, "split": "train" if n < train else "val"})
    (folder / "annotations.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "spot"}]}))
    return folder


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny native-scale run (2 epochs of 2 steps, tile 64), and what its in-loop
    validation judged: each call of the edge runtime's predictions, recorded on the way
    through (the real function runs)."""
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("native")
    data = large_set(tmp / "data")
    calls: list[dict[str, Any]] = []
    real = predict.runtime_predictions

    def recorded(detector: Detector, records: list[Any], dataset: Any,
                 tiling: Tiling | None = None) -> list[predict.Prediction]:
        out = real(detector, records, dataset, tiling)
        calls.append({"records": [r.file_name for r in records], "tiling": tiling,
                      "preds": out})
        return out

    cfg = tiny_config(tmp / "runs", name="native", data=str(data), tiling={"tile": TILE},
                      epochs=2, max_steps_per_epoch=2, batch_size=4, eval_every=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict, "runtime_predictions", recorded)
        run = train(cfg, quiet=True)
    return {"run": run, "data": data, "calls": calls, "tmp": tmp}


def test_a_tiling_that_makes_no_sense_is_refused(tmp_path: Path) -> None:
    data = str(ROOT / "datasets" / "deeppcb-sample")
    cfg = tiny_config(tmp_path, data=data, tiling={"tile": 640})
    assert cfg.input_size == 640 and cfg.tiling == Tiling(tile=640, overlap=0.2)
    assert cfg.crop_size == 256  # crops smaller than the tile stay crops, at native scale
    for fields, said in (
            ({"tiling": {"tile": 100}}, "tiling.tile 100: the tile is the model's input size, "
                                        "a multiple of 32 (the detector's stride) up to 4096: "
                                        "use 96 or 128"),
            ({"tiling": {"tile": 640}, "input_size": 320},
             "tiling.tile 640 and input_size 320: a native-scale run's input is its tile"),
            ({"tiling": {"tile": 640}, "reference": True},
             "tiling: native-scale training takes single-image detectors"),
            ({"tiling": {"tile": 8192}}, "tiling.tile: Input should be less than or equal to 4096"),
            ({"tiling": {"tile": 640, "overlap": 0.7}}, "tiling.overlap: Input should be less"),
    ):
        with pytest.raises(ConfigError, match="^config: " + said.replace("(", r"\(")
                           .replace(")", r"\)").replace(".", r"\.")):
            tiny_config(tmp_path, data=data, **fields)
    # the tile a --set tiling.overlap lacks is the --set's, not the config file's (review,
    # session 45: "deeppcb-single.yaml: tiling.tile: Field required")
    single = ROOT / "training" / "configs" / "deeppcb-single.yaml"
    with pytest.raises(ConfigError, match=r"^--set: tiling\.tile: Field required$"):
        load_any_config(single, ["tiling.overlap=0.3"], data=data)
    big = large_set(tmp_path / "big")  # 256x224 frames in 32 px tiles at 0.5: 15x13 tiles
    with pytest.raises(ConfigError, match=r"tiling.tile 32: f0.png \(256x224\) would be cut "
                                          "into more than 64 tiles"):
        train(tiny_config(tmp_path / "runs", data=str(big), tiling={"tile": 32, "overlap": 0.5}),
              quiet=True)
    assert not (tmp_path / "runs").exists()  # refused before any work
    with pytest.raises(ConfigError, match="tiling: native-scale training takes single-image "
                                          "detectors; a good-only model judges each frame whole"):
        load_any_config(ROOT / "training" / "configs" / "good-default.yaml",
                        ["tiling.tile=640"], data=data)


def test_crops_keep_defects_at_native_scale() -> None:
    """A frame larger than the tile is cut at its own scale: a 6 px spot stays 6 px in the
    crop (letterboxed whole to 64 it was 1.5 px); a frame smaller than the tile is
    letterboxed to it as without tiling."""
    still = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness_contrast=0, blur=0, noise=0,
                          scale_jitter=0)
    image = np.full((HEIGHT, WIDTH, 3), 190, np.uint8)
    # a spot every 24 px: every 64 px crop holds some whole (and cuts some at its edges)
    grid = [(x, y) for x in range(4, WIDTH - SPOT, 24) for y in range(4, HEIGHT - SPOT, 24)]
    boxes = np.array([[x, y, x + SPOT, y + SPOT] for x, y in grid], np.float32)
    labels = np.zeros(len(boxes), np.int64)
    for seed in range(4):
        t = train_transform(still, None, TILE, seed=seed, native=True)
        out = t(image=image, bboxes=boxes, labels=labels)
        assert out["image"].shape == (TILE, TILE, 3)
        sides = np.array([(b[2] - b[0], b[3] - b[1]) for b in out["bboxes"]])
        # whole spots keep their 6 px; those the crop's edge cuts are clipped to it
        assert len(sides) >= 4 and sides.max() == pytest.approx(SPOT)
        assert np.isclose(sides, SPOT).all(axis=1).sum() >= 4
    whole = train_transform(still, None, TILE, seed=0)(image=image, bboxes=boxes, labels=labels)
    assert whole["image"].shape == (TILE, TILE, 3)  # the frame letterboxed: spots 1.5 px
    assert np.allclose([b[2] - b[0] for b in whole["bboxes"]], SPOT * TILE / WIDTH)
    small = np.full((32, 48, 3), 190, np.uint8)  # no larger than the tile: letterboxed
    out = train_transform(still, None, TILE, seed=0, native=True)(
        image=small, bboxes=np.array([[10, 10, 16, 16]], np.float32), labels=np.array([0]))
    assert out["image"].shape == (TILE, TILE, 3)
    assert out["bboxes"][0][2] - out["bboxes"][0][0] == pytest.approx(SPOT * TILE / 48)


def test_the_log_names_native_tiling_for_boxes_scaling_hides(tmp_path: Path) -> None:
    """Boxes the auto input size shrinks under 3 px: the warning names the tiling option;
    with it set nothing is shrunk, so nothing is warned."""
    data = large_set(tmp_path / "data")
    said = data_warnings(load_data(tiny_config(tmp_path, data=str(data))), TILE)
    assert any("--set tiling.tile=64 trains and judges frames larger than 64 px as 64 px "
               "tiles at their own scale" in s for s in said)
    native = tiny_config(tmp_path, data=str(data), tiling={"tile": TILE})
    assert data_warnings(load_data(native), TILE, native=True) == []
    # a tile at least as large as every frame (256 x 224) cuts none: each frame is
    # letterboxed whole, upscaled, not native scale; said, with what to do (issue #18)
    for tile, warned in ((WIDTH - 32, False), (WIDTH, True), (WIDTH + 64, True)):
        whole = tiny_config(tmp_path, data=str(data), tiling={"tile": tile})
        said = data_warnings(load_data(whole), tile, native=True)
        assert bool(said) == warned, said
        assert not warned or said == [
            f"tiling.tile {tile} is at least every train/val frame's longer side (the largest "
            f"is {WIDTH} px): no frame is cut into tiles, each is letterboxed whole to {tile} px "
            "(smaller ones upscaled), which is not native scale; leave tiling out (whole frames, "
            f"input_size chosen from the data), or choose a tile under {WIDTH} px (a multiple "
            "of 32) to judge the frames at their own scale in tiles"]


def test_a_native_run_validates_its_val_frames_tiled(native: dict[str, Any]) -> None:
    """Each in-loop validation judged every val frame through the edge runtime's tiling,
    and the mAP logged is that of those predictions."""
    run, calls = native["run"], native["calls"]
    val = [r.file_name for r in read_dataset(native["data"]).in_split("val")]
    assert len(calls) == 2  # one per epoch (eval_every 1)
    assert all(c["records"] == val and c["tiling"] == Tiling(tile=TILE) for c in calls)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    records = read_dataset(native["data"]).in_split("val")
    for row, call in zip(rows, calls, strict=True):
        assert row["map50"] == coco_metrics(records, call["preds"], ["spot"])["map50"]
    assert "native scale: input size 64 px = tiling.tile" in (run / "train.log").read_text()


def test_export_writes_the_runs_tiling_and_the_package_scores_as_the_run(
        native: dict[str, Any], tmp_path: Path) -> None:
    """``export RUN`` of a native-scale run tiles in its card without --tile (a --tile
    or --overlap other than the run's is refused, naming it); the run's own evaluation and
    its package's judge val alike, at the same thresholds."""
    run, data = native["run"], native["data"]
    by_run = evaluate(run, split="val", out=tmp_path / "report-run", device="cpu")
    assert by_run["tiling"] == {"tile": TILE, "overlap": 0.2}
    assert "its card's recipe will judge frames: tiled, 64 px tiles" in \
        (tmp_path / "report-run" / "summary.md").read_text()
    for flags, said in (({"tile": 96}, "--tile 96: the run trained at native scale with "
                                       "tiling {tile: 64, overlap: 0.2}"),
                        ({"overlap": 0.3}, "--overlap 0.3: the run trained at native scale")):
        with pytest.raises(ConfigError, match=said.replace("{", r"\{").replace("}", r"\}")
                           .replace(".", r"\.")):
            export(run, tmp_path / "refused" / "1", **flags)  # type: ignore[arg-type]
    assert not (tmp_path / "refused" / "1").exists()
    out = tmp_path / "native" / "1"
    summary = export(run, out, parity_images=2, tile=TILE)  # the run's own: taken
    card = json.loads((out / "model.json").read_text())
    assert summary["tiling"] == card["default_recipe"]["tiling"] == {"tile": TILE, "overlap": 0.2}
    # the parity gate's scope said as what parity needs, not as a gap
    assert any(n.endswith(f"the torch-vs-ONNX parity gate compared the graph on {TILE} px "
                          "inputs, the tiles' scale, as parity needs") for n in summary["notes"])
    assert card["format_version"] == TILING_FORMAT and card["input"]["size"] == TILE
    assert card["thresholds"] == by_run["quality"]["thresholds"]
    by_package = evaluate(out, data=str(data), split="val", out=tmp_path / "report-pkg",
                          device="cpu")
    assert by_package["tiling"] == by_run["tiling"]
    assert by_run["coco"]["map50"] == pytest.approx(by_package["coco"]["map50"], abs=0.02)
    assert by_package["pairs"] == by_run["pairs"]
    for key in ("escapes", "false_rejects", "confusion", "defect_recall", "defect_precision"):
        assert by_run["quality"][key] == by_package["quality"][key], key
    # box for box: the run's tiled predictions are the package's, to float rounding
    trained = load_trained(run, "cpu")
    records = read_dataset(data).in_split("val")
    mine = predict.predict_records(trained.model, read_dataset(data), records, ["spot"],
                                   size=TILE, device=torch.device("cpu"),
                                   tiling=Tiling(tile=TILE))
    theirs = predict.runtime_predictions(Detector(out, device="cpu"), records,
                                         read_dataset(data), Tiling(tile=TILE))
    whole = predict.predict_records(trained.model, read_dataset(data), records, ["spot"],
                                    size=TILE, device=torch.device("cpu"))
    _same_boxes(mine, theirs)
    assert sum(len(p.scores) for p in whole) != sum(len(p.scores) for p in mine)
    # calibrating the package judges as its card's recipe does (it judged frames whole):
    # the run's thresholds again, chosen among the tiled frames' boxes
    calib = calibrate(out, data=str(data), split="val", device="cpu")
    assert calib["thresholds"] == pytest.approx(by_run["calibration"]["thresholds"], abs=1e-3)
    everything = calib["best_global_in_hindsight"]
    assert everything == best_global(records, theirs, ["spot"])
    whole_pkg = predict.runtime_predictions(Detector(out, device="cpu"), records,
                                            read_dataset(data))
    assert everything != best_global(records, whole_pkg, ["spot"])


def _same_boxes(a: list[predict.Prediction], b: list[predict.Prediction],
                top: int = 20) -> None:
    """The ``top`` highest-scored boxes of each image agree (scores within 1e-3, boxes
    within 0.05 px)."""
    close: Callable[[np.ndarray, np.ndarray, float], bool] = \
        lambda x, y, tol: bool(np.allclose(x, y, atol=tol))  # noqa: E731
    for p, q in zip(a, b, strict=True):
        i, j = np.argsort(-p.scores)[:top], np.argsort(-q.scores)[:top]
        assert len(i) == len(j) and close(p.scores[i], q.scores[j], 1e-3)
        assert close(p.boxes[i], q.boxes[j], 0.05)


def test_a_native_run_resumes_at_its_scale(native: dict[str, Any], tmp_path: Path) -> None:
    """Review, session 45: ``lineside train --resume --name NAME`` of a native-scale run
    (the config naming no tiling, as for its data) went on with whole frames letterboxed to
    another input size, and its config.yaml (and card) lost the tiling; it takes the run's
    tiling now, and one the run did not train with is refused, naming the run's."""
    import shutil

    import yaml
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    shutil.copytree(native["run"], tmp_path / "native")  # the module's run stays as it is
    tiny = ["--device", "cpu", "--name", "native", "--set", f"out_dir={tmp_path}",
            "--set", "max_steps_per_epoch=1", "--set", "batch_size=4", "--set", "workers=0",
            "--threads", "2"]
    runner = CliRunner()
    for given, said in ((["--set", "tiling=null"], "trained at native scale with tiling "
                         "{tile: 64, overlap: 0.2}, and this run has none"),
                        (["--set", "tiling.tile=96"], "and this run has tiling {tile: 96, "
                         "overlap: 0.2}: the scale its model learned")):
        r = runner.invoke(app, ["train", "--resume", "--epochs", "3", *tiny, *given])
        assert r.exit_code != 0 and said in " ".join(r.output.split()), r.output
    # the run's tiling and input size are kept over a config's own input_size (it was
    # refused as a clash, session 45; session 46: a resume continues the run as it trained,
    # saying which of the config's values it does not apply)
    config = tmp_path / "sized.yaml"
    config.write_text("input_size: 640\n")
    r = runner.invoke(app, ["train", "--config", str(config), "--resume", "--epochs", "3", *tiny])
    said = " ".join(r.stderr.split())
    assert r.exit_code == 0 and f"input_size 64 ({config}: 640)" in said, r.output
    saved = yaml.safe_load((tmp_path / "native" / "config.yaml").read_text())
    assert saved["tiling"] == {"tile": TILE, "overlap": 0.2} and saved["input_size"] == TILE
    assert load_trained(tmp_path / "native", "cpu").config.tiling == Tiling(tile=TILE)
    rows = [json.loads(x) for x in (tmp_path / "native" / "metrics.jsonl").read_text().splitlines()]
    assert max(x.get("epoch", 0) for x in rows) == 3
    # a checkpoint whose saved tiling is no tiling (written by hand): one line, not the
    # ValueError of formatting its overlap (session 46)
    import torch

    last = tmp_path / "native" / "last.pt"
    ck = torch.load(last, weights_only=True)
    ck["config"]["tiling"] = {"tile": "big", "overlap": "some"}
    torch.save(ck, last)
    r = runner.invoke(app, ["train", "--resume", "--epochs", "4", *tiny])
    assert r.exit_code == 2 and "its saved tiling is not one" in " ".join(r.output.split()), \
        r.output
