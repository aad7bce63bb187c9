"""The training commands through the ``lineside`` CLI, and the one-line message an edge
install (no torch) gives for them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from lineside_inspect.cli import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
runner = CliRunner()


def test_train_evaluate_export_commands(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--epochs", "1", "--name", "cli",
                            "--device", "cpu", "--set", "max_steps_per_epoch=2",
                            "--set", "crop_size=128", "--set", "batch_size=4",
                            "--set", f"out_dir={tmp_path}", "--set", "augment.morphology=0.5",
                            "--threads", "2"])
    assert r.exit_code == 0, r.output + r.stderr
    run = tmp_path / "cli"
    r = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.stderr
    assert "escape rate" in r.stdout and (tmp_path / "rep" / "time_to_accuracy.png").is_file()
    # what it wrote, said: the thresholds export ships, and the report
    assert f"thresholds calibrated on val saved to {run / 'thresholds.json'}" in r.stdout
    assert f"report: {tmp_path / 'rep'}" in r.stdout
    # val is where the thresholds are calibrated: the report says its rates are in-sample
    assert "in-sample" in (tmp_path / "rep" / "summary.md").read_text()
    # another dataset's val (here a copy of the good images) neither re-calibrates the run
    # nor overwrites the thresholds its export ships
    saved = (run / "thresholds.json").read_text()
    from lineside_inspect.dataset import import_dataset
    good = tmp_path / "good-src"
    good.mkdir()
    for f in sorted((SAMPLE / "images").rglob("*_temp.jpg"))[:6]:
        (good / f.name).write_bytes(f.read_bytes())
    import_dataset("good", good, tmp_path / "good")
    r = runner.invoke(app, ["data", "split", str(tmp_path / "good"), "--val", "0.5", "--by", "image"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(run), "--data", str(tmp_path / "good"),
                            "--device", "cpu", "--out", str(tmp_path / "rep-good")])
    assert r.exit_code == 0, r.stderr
    assert (run / "thresholds.json").read_text() == saved
    assert "mAP n/a (no defects in the data)" in r.stdout and "thresholds calibrated" not in r.stdout
    assert "in-sample" not in (tmp_path / "rep-good" / "summary.md").read_text()
    # by default another dataset's report goes beside the run's own, named after it
    r = runner.invoke(app, ["evaluate", str(run), "--data", str(tmp_path / "good"),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    assert (run / "report-val-good" / "summary.md").is_file() and not (run / "report-val").exists()
    r = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "models" / "cli" / "3")])
    assert r.exit_code == 0, r.stderr
    card = json.loads((tmp_path / "models" / "cli" / "3" / "model.json").read_text())
    assert card["name"] == "cli" and card["version"] == "3"
    assert "research" in card["training"]["data"]["licence"]
    r = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "models" / "cli" / "3")])
    assert r.exit_code == 2 and "already exists" in r.stderr


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--set", "epochs=-1"])
    assert r.exit_code == 2 and "epochs" in r.stderr and "Traceback" not in r.output + r.stderr
    # an override's error names --set, not the config file; a key that is none says the
    # nearest (new-user review)
    r = runner.invoke(app, ["train", "--config", "training/configs/single-default.yaml",
                            "--data", str(SAMPLE), "--set", "epoch=3"])
    said = " ".join(r.stderr.split())
    assert r.exit_code == 2 and said.startswith("error: --set: epoch: Extra inputs"), said
    assert "'epoch' is no config key (did you mean epochs?)" in said
    # a key inside a section: that section's nearest keys; it said "'augment' is no
    # config key (did you mean augment?)" (session 42)
    typo = tmp_path / "typo.yaml"
    typo.write_text("augment:\n  hflp: 0.5\n")
    r = runner.invoke(app, ["train", "--config", str(typo), "--data", str(SAMPLE)])
    said = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "augment.hflp: Extra inputs are not permitted (no such key; " \
        "did you mean hflip or vflip?)" in said and "is no config key" not in said, said
    # each error by its whole dotted field: the file's augment.hflip stays the file's
    bad = tmp_path / "bad.yaml"
    bad.write_text("augment:\n  hflip: 7\n")
    r = runner.invoke(app, ["train", "--config", str(bad), "--data", str(SAMPLE),
                            "--set", "augment.vflip=0.5", "--set", "lr=x"])
    said = " ".join(r.stderr.split())
    assert r.exit_code == 2 and said.startswith("error: --set: lr: Input should be"), said
    assert f"; {bad}: augment.hflip: Input should be less than or equal to 1" in said
    r = runner.invoke(app, ["evaluate", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such run folder" in r.stderr
    r = runner.invoke(app, ["train"])  # "config: data: Field required" said not what to give
    assert r.exit_code == 2 and "give --data DATASET" in r.stderr and "--config CONFIG" in r.stderr


def test_edge_install_says_what_to_install() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "from lineside_inspect.cli import main\n"
            "sys.argv = ['lineside', 'train', '--data', 'x']\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert "pip install 'lineside[train]'" in out.stderr and "Traceback" not in out.stderr
    # the package is not on an index when run from a checkout: the hint says what works there
    assert ".venv/bin/pip install -e '.[train]'" in out.stderr


def test_train_help_names_the_extra_and_the_budget() -> None:
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0
    assert "needs lineside[train]" in r.stdout  # not eaten as console markup
    assert "--time" in r.stdout
    # a bare number is minutes, and the help says so, as the parser reads it (session 41)
    said = " ".join(r.stdout.replace("│", " ").split())
    assert "(30m, 90s, 1h, 1h30m; a bare number is minutes)" in said
    # with --resume: said in plain words ("the whole run's" named nothing, session 53 review)
    assert "with --resume, the budget of the whole run (the time its earlier sessions trained counts)" \
        in said
    from lineside_training.commands import load_config

    for given, budget in (("3", "180s"), ("1h30m", "5400s"), ("90s", "90s")):
        assert load_config(None, None, data=str(SAMPLE), time_budget=given).time_budget == budget
    r = runner.invoke(app, ["calibrate", "--help"], env={"COLUMNS": "120"})
    assert "a bare number is minutes" in " ".join(r.stdout.replace("│", " ").split())


def test_bench_train_without_crop_says_so() -> None:
    r = runner.invoke(app, ["bench", "train", "--config", str(ROOT / "training/configs/deeppcb-single.yaml"),
                            "--set", f"data={SAMPLE}", "--set", "crop_size=null", "--set", "input_size=64",
                            "--set", "batch_size=2", "--set", "device=cpu", "--set", "threads=2",
                            "--steps", "1"])
    assert r.exit_code == 0, r.stderr
    assert "no crop (whole images at 64)" in r.stdout
    assert "crop 64" not in r.stdout
    # the one-time decode is measured apart from the steady-state figures
    assert re.search(r"decode +\d+\.\d s for the \d+ training images, once per image in a run", r.stdout)
    assert re.search(r"loading +\d+\.\d ms per batch +\(\d+% of the full pipeline's time\)", r.stdout)


def test_train_messages_name_the_flag_and_the_way_in(tmp_path: Path) -> None:
    """A bad --time names the flag, not a config file; a folder of images that is not a
    dataset says how to make one."""
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--time", "5x"])
    assert r.exit_code == 2 and "--time: '5x' is not a duration" in r.stderr
    (tmp_path / "a.jpg").write_bytes((SAMPLE / "images" / "group00041" / "00041000_temp.jpg").read_bytes())
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--time", "1m"])
    assert r.exit_code == 2 and "lineside data import -f voc|yolo|coco|good" in r.stderr
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "single-default.yaml" in r.stdout
    # a user with good images alone was told "Train a detector" and single-default.yaml
    # only (session 51)
    said = " ".join(r.stdout.replace("│", " ").split())
    assert "Train a detector, or a good-only model (kind: anomaly)" in said
    assert "for good images alone (no defect labels) from good-default.yaml" in said


def _sample_without(tmp_path: Path, *, good: bool) -> Path:
    """The sample's val split without its good images (``good`` False) or its defective ones."""
    import shutil

    dst = tmp_path / ("no-good" if not good else "good-only")
    shutil.copytree(SAMPLE, dst)
    doc = json.loads((dst / "annotations.json").read_text())
    boxed = {a["image_id"] for a in doc["annotations"]}
    doc["images"] = [i for i in doc["images"] if (i["id"] in boxed) != good]
    kept = {i["id"] for i in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in kept]
    (dst / "annotations.json").write_text(json.dumps(doc))
    return dst


def test_calibrate_says_what_a_split_cannot_measure(tiny_run: Path, tmp_path: Path) -> None:
    kept = tiny_run / "thresholds.json"  # written by evaluate, if a test ran it first
    saved = kept.read_bytes() if kept.exists() else None
    r = runner.invoke(app, ["calibrate", str(tiny_run), "--data",
                            str(_sample_without(tmp_path, good=True)), "--split", "val"])
    assert r.exit_code == 2 and "has no defective images (boxes)" in r.stderr, r.stderr
    no_good = _sample_without(tmp_path, good=False)
    for objective in ("f", "rejects"):
        out = tmp_path / f"cal-{objective}"
        r = runner.invoke(app, ["calibrate", str(tiny_run), "--data", str(no_good), "--split",
                                "val", "--objective", objective, "--out", str(out)])
        assert r.exit_code == 0, r.stderr
        assert "escapes n/a" in r.stdout and "false rejects n/a (no good images)" in r.stdout
        assert "no good images in this split" in r.stdout and "None" not in r.stdout
        # what thresholds.json would hold: no count where none can be made (a 0 there
        # read as a result; session 41)
        calib = json.loads((out / "calibration.json").read_text())
        assert calib["escapes"] is None and calib["false_rejects"] is None, calib
        # nor an allowance enforced on escapes it cannot count, then written as checked
        # (session 42): null, its reason recorded, and the command says so
        assert calib["allowed_escapes"] is None, calib
        assert calib["not_measurable"]["allowed_escapes"].startswith("not checked"), calib
        assert "nor held to the escape allowance" in r.stdout
    assert (kept.read_bytes() if kept.exists() else None) == saved  # nothing --write


def _copy_of_a_train_image(data: Path, *, boxes: list[dict[str, object]]) -> str:
    """Add a byte-identical copy of the sample's first defective train image to ``data``
    (a copy of the sample), in train, with ``boxes``; returns the image's file name."""
    doc = json.loads((data / "annotations.json").read_text())
    image = next(i for i in doc["images"] if i.get("split") == "train" and "reference" in i)
    copy = {**image, "id": max(i["id"] for i in doc["images"]) + 1,
            "file_name": image["file_name"].replace(".jpg", "_copy.jpg")}
    doc["images"].append(copy)
    next_id = max(a["id"] for a in doc["annotations"]) + 1
    doc["annotations"] += [{**b, "id": next_id + k, "image_id": copy["id"]}
                           for k, b in enumerate(boxes)]
    (data / "annotations.json").write_text(json.dumps(doc))
    images = data / "images"
    (images / copy["file_name"]).write_bytes((images / image["file_name"]).read_bytes())
    return str(image["file_name"])


def test_train_refuses_a_set_validate_refuses_and_warns_as_it_warns(tmp_path: Path) -> None:
    """Two byte-identical copies of one picture labelled two ways: 'data validate' refused
    the set, 'train' trained on it without a word (new-user review, session 41). Train
    now runs validate's checks that decode no pixels, refuses what it refuses and warns
    of what it warns of (the log says data_warnings' lines)."""
    import shutil

    data = tmp_path / "set"
    shutil.copytree(SAMPLE, data)
    first = _copy_of_a_train_image(data, boxes=[])  # the copy says good: one is mislabelled
    r = runner.invoke(app, ["data", "validate", str(data)])
    assert r.exit_code == 2 and "one of them is mislabelled" in r.stderr
    args = ["train", "--data", str(data), "--epochs", "1", "--name", "dup", "--device", "cpu",
            "--set", "max_steps_per_epoch=1", "--set", "crop_size=128", "--set", "batch_size=4",
            "--set", f"out_dir={tmp_path / 'runs'}"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert f"'lineside data validate {data}' refuses too: nothing was trained" in r.stderr
    assert "copies of one picture in one split, labelled differently" in r.stderr
    assert f"'{first}' (train)" in r.stderr and "one of them is mislabelled" in r.stderr
    assert "Traceback" not in r.output and not (tmp_path / "runs").exists()
    # labelled alike, the copy is a warning in both, and in the run's log
    shutil.rmtree(data)
    shutil.copytree(SAMPLE, data)
    doc = json.loads((SAMPLE / "annotations.json").read_text())
    image = next(i for i in doc["images"] if i.get("split") == "train" and "reference" in i)
    boxes = [a for a in doc["annotations"] if a["image_id"] == image["id"]]
    _copy_of_a_train_image(data, boxes=boxes)
    (data / "images" / "stray.jpg").write_bytes((data / "images" / first).read_bytes())
    r = runner.invoke(app, ["data", "validate", str(data)])
    assert r.exit_code == 0, r.output
    said = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(said) == 2 and "(lineside data validate --dedupe keeps one)" in said[0]
    assert "not in annotations.json" in said[1]
    from lineside_training.config import load_config
    from lineside_training.engine import data_warnings, load_data

    warned = data_warnings(load_data(load_config(None, None, data=str(data))))
    assert warned[:2] == [f"{data}: {line.removeprefix('warning: ')}" for line in said]
