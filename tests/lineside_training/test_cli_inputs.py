"""What a new user's wrong or surprising input to the training and bench commands gets:
one line naming the problem (exit 2), never a traceback, and options that do what their
help says (a review by a new user found each of these)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import Box, ImageRecord
from lineside_inspect.errors import ConfigError
from lineside_training.calibration import calibrate_f
from lineside_training.config import load_config
from lineside_training.engine import pick_device
from lineside_training.predict import Prediction

from .conftest import another_set

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
SINGLE = ROOT / "training" / "configs" / "single-default.yaml"
runner = CliRunner()


def test_config_mistakes_name_the_file_or_override(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"list.yaml: a config is a mapping of keys .*not a list"):
        load_config(listed, data=str(SAMPLE))
    with pytest.raises(ConfigError, match=r"override 'lr=\[1': the value is .*quote a text"):
        load_config(None, ["lr=[1"], data=str(SAMPLE))
    flips = tmp_path / "flips.yaml"
    flips.write_text("augment:\n  hflip: 0.5\n")
    with pytest.raises(ConfigError, match=r"override 'augment.hflip.x': augment.hflip is a float"):
        load_config(flips, ["augment.hflip.x=3"], data=str(SAMPLE))
    with pytest.raises(ConfigError, match="empty part"):
        load_config(None, ["augment..hflip=3"], data=str(SAMPLE))
    with pytest.raises(ConfigError, match="device 'tpu': use auto, cpu, cuda or cuda:N"):
        pick_device("tpu")
    assert pick_device("cpu").type == "cpu"


def test_epochs_without_time_replace_the_configs_budget(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """single-default.yaml trains to 30 minutes: ``--epochs 2`` was planned as 12651 epochs
    and trained for 30 minutes."""
    import lineside_training.commands as commands

    seen: list[Any] = []

    def train(cfg: Any, *, resume: bool = False) -> Path:
        seen.append(cfg)
        return tmp_path

    monkeypatch.setattr(commands, "train", train)
    base = ["train", "--config", str(SINGLE), "--data", str(SAMPLE)]
    for extra, budget in ((["--epochs", "2"], None),
                          (["--epochs", "2", "--time", "5m"], "300s"),  # (normalised)
                          (["--epochs", "2", "--set", "time_budget=7m"], "420s"),
                          ([], "1800s")):
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 0, r.output
        assert seen[-1].time_budget == budget and (not extra or seen[-1].epochs == 2)
    assert runner.invoke(app, [*base, "--epochs", "0"]).exit_code == 2


def test_resume_of_a_run_that_is_not_there_is_refused(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--resume", "--name", "nosuchrun",
                            "--device", "cpu", "--set", f"out_dir={tmp_path}"])
    assert r.exit_code == 2 and "there is no run to continue" in r.stderr, r.output
    assert not (tmp_path / "nosuchrun" / "last.pt").exists()
    r = runner.invoke(app, ["train", "--resume", "--name", "nosuchrun", "--device", "cpu",
                            "--set", f"out_dir={tmp_path}"])  # nor without --data
    assert r.exit_code == 2 and "give --data DATASET" in r.stderr, r.output


def test_resume_takes_the_data_the_run_trained_on(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``--resume`` asked for ``--data`` though the run records what it trained on. Its
    sets typed relative to the folder train ran in were kept so in its config.yaml, and
    a resume from another folder found none (review, session 47): kept absolute now."""
    from lineside_training.commands import resumed

    # threads as tests/lineside_training/conftest.py's tiny runs (each run left to choose
    # watched the CPU for half a second first)
    tiny = ["--device", "cpu", "--name", "r", "--set", f"out_dir={tmp_path}",
            "--set", "max_steps_per_epoch=1", "--set", "crop_size=128", "--set", "batch_size=2",
            "--set", "threads=2"]
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    another_set(work / "extra")  # a second dataset merged into train (--merge)
    (work / "data").symlink_to(SAMPLE)
    monkeypatch.chdir(work)
    r = runner.invoke(app, ["train", "--data", "data", "--merge", "extra", "--epochs", "1", *tiny])
    assert r.exit_code == 0, r.output
    run = tmp_path / "r"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["data"], saved["extra_data"]) == (str(work / "data"), [str(work / "extra")])
    monkeypatch.chdir(elsewhere)
    r = runner.invoke(app, ["train", "--resume", "--epochs", "2", *tiny])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(x.get("epoch", 0) for x in lines) == 2
    # a run of an older release kept them as typed: from its own folder as before; from
    # another the data where its last.pt recorded it, a merged set (never recorded)
    # refused naming where it was looked for, before any work
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "data": "data",
                                                     "extra_data": ["extra"]}))
    out = [f"out_dir={tmp_path}"]
    assert resumed(None, out, "r", merge=[str(work / "extra")])["data"] == str(SAMPLE)
    r = runner.invoke(app, ["train", "--resume", "--epochs", "3", *tiny])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and (f"{run / 'config.yaml'} names extra_data extra, relative to "
                                 f"the folder train ran in: from {elsewhere} there is no "
                                 f"{elsewhere / 'extra'}") in text, r.output
    assert "give --merge DATASET for each merged set" in text
    monkeypatch.chdir(work)
    assert {k: resumed(None, out, "r")[k] for k in ("data", "extra_data")} == {
        "data": "data", "extra_data": ["extra"]}
    monkeypatch.chdir(tmp_path)
    # a run of --epochs from a config with a time budget, resumed without --epochs: it
    # keeps its schedule (it switched to the config's 30 minutes)
    r = runner.invoke(app, ["train", "--config", str(SINGLE), "--data", str(SAMPLE),
                            "--epochs", "1", *tiny[:2], "--name", "s", *tiny[4:]])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--config", str(SINGLE), "--resume", *tiny[:2],
                            "--name", "s", *tiny[4:]])
    # its 1 epoch is done: nothing to continue (said so, not the config's 30 minutes taken)
    assert r.exit_code != 0 and "already trained its 1 epoch(s) and this schedule has 1" \
        in " ".join(r.output.split()), r.output
    saved = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert saved["time_budget"] is None and saved["epochs"] == 1
    assert "time budget" not in (tmp_path / "s" / "train.log").read_text()


def test_resume_continues_the_run_as_it_trained(tmp_path: Path) -> None:
    """Issue #18: a run started with ``--set lr=0.005 --set batch_size=2 ...`` and resumed
    with its config and ``--resume`` went on with the config file's values (another
    optimiser step, batch, model width, augmentation) without a word. It keeps every value
    of its own now; one given again that cannot change midway is refused naming both
    values, one that may is applied (the lr too, which the optimiser's state restored)
    and train.log says which."""
    from lineside_training.weights import read_torch_file

    # threads given each time: a resumed run chooses them afresh (watching the CPU for half
    # a second when left to)
    where = ["--device", "cpu", "--name", "r", "--set", f"out_dir={tmp_path}",
             "--set", "threads=2"]
    sets = ["--set", "max_steps_per_epoch=1", "--set", "crop_size=128", "--set", "batch_size=2",
            "--set", "lr=0.005", "--set", "model_kwargs.fpn_channels=16",
            "--set", "augment.hflip=0", "--set", "eval_every=1"]
    r = runner.invoke(app, ["train", "--config", str(SINGLE), "--data", str(SAMPLE),
                            "--epochs", "1", *where, *sets])
    assert r.exit_code == 0, r.output
    for given, said in (
            (["--set", "model_kwargs.fpn_channels=32"], 'model_kwargs {"head_norm": "gn", '
             '"fpn_channels": 16}, and this run has {"head_norm": "gn", "fpn_channels": 32}'),
            (["--set", "input_size=96"], "input_size 640, and this run has 96"),
            (["--model", "lsdet_m"], "model lsdet, and this run has lsdet_m"),
            (["--set", "optimizer=sgd"], "optimizer adamw, and this run has sgd")):
        r = runner.invoke(app, ["train", "--config", str(SINGLE), "--resume", "--epochs", "2",
                                *where, *given])
        text = " ".join(r.output.split())
        assert r.exit_code == 2 and said in text and "cannot change midway" in text, r.output
    # the same field edited by hand in the run's config.yaml, never given: "leave
    # input_size out" named nothing the user could leave out (review, session 47)
    kept = tmp_path / "r" / "config.yaml"
    good = kept.read_text()
    kept.write_text(good.replace("input_size: 640", "input_size: 96"))
    r = runner.invoke(app, ["train", "--config", str(SINGLE), "--resume", "--epochs", "2", *where])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and f"{kept} changed input_size from 640 (what " in text, r.output
    assert "to 96: the scale its model learned" in text and "leave" not in text, r.output
    assert "a resumed run keeps what it was trained with: restore input_size: 640" in text
    kept.write_text(good)
    # resumed as a user would, with the config and no --set: the config file's values are
    # said not to apply, the run's are kept
    r = runner.invoke(app, ["train", "--config", str(SINGLE), "--resume", "--epochs", "2", *where])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stderr.split())
    assert f"lr 0.005 ({SINGLE}: 0.004)" in text and "augment.hflip 0.0 (" in text, r.output
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (saved["lr"], saved["batch_size"], saved["crop_size"]) == (0.005, 2, 128)
    assert saved["model_kwargs"] == {"head_norm": "gn", "fpn_channels": 16}
    assert saved["augment"]["hflip"] == 0 and saved["max_steps_per_epoch"] == 1
    log = (tmp_path / "r" / "train.log").read_text()
    assert "resumed with 1 field(s) other than the run trained with: epochs 2 (the run's 1)" \
        in log
    # a field that may change is applied, the lr over the optimiser's restored state
    r = runner.invoke(app, ["train", "--resume", "--epochs", "3", *where,
                            "--set", "lr=0.001", "--set", "weight_decay=0.0002",
                            "--set", "augment.vflip=0"])
    assert r.exit_code == 0, r.output
    log = (tmp_path / "r" / "train.log").read_text()
    assert ("resumed with 4 field(s) other than the run trained with: epochs 3 (the run's 2); "
            "lr 0.001 (the run's 0.005); weight_decay 0.0002 (the run's 0.0001); "
            "augment.vflip 0.0 (the run's 0.5)") in log
    last = read_torch_file(tmp_path / "r" / "last.pt")
    assert last["config"]["lr"] == 0.001 and last["scheduler"]["base_lrs"] == [0.001]
    group = last["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == 0.001 and group["weight_decay"] == 0.0002
    assert last["config"]["augment"]["hflip"] == 0 and last["epoch"] == 2
    # its config.yaml damaged by hand: refused naming it, never passed over for the config
    # file's values (or blamed on the config file: "SINGLE: lr: Input should be a valid
    # number" where SINGLE says 0.004), nor an alias bomb dumped whole (hung; session 46)
    kept = tmp_path / "r" / "config.yaml"
    good = kept.read_text()
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    for text, said in ((good.replace("lr: 0.001", "lr: fast"),
                        f"{kept} (the run's, which --resume continues): lr: Input should be"),
                       ("- 1\n", f"{kept}: the run's config is a mapping of keys"),
                       ("lr: [\n", f"{kept}: cannot read the run's config"),
                       (bomb + good.replace("model_kwargs:", "model_kwargs:\n  x: *i"),
                        f"{kept}: the run's config expands to more than 10000 values")):
        kept.write_text(text)
        r = runner.invoke(app, ["train", "--config", str(SINGLE), "--resume", "--epochs", "4",
                                *where])
        text = " ".join(r.stderr.split())
        assert r.exit_code == 2 and said in text and f"{SINGLE}: lr" not in text, r.output
    # gone: the config last.pt saved is the run's (it went on with the config file's lr,
    # batch size and augmentation, and was refused for its model_kwargs)
    kept.unlink()
    r = runner.invoke(app, ["train", "--config", str(SINGLE), "--resume", "--epochs", "4", *where])
    assert r.exit_code == 0, r.output
    last = read_torch_file(tmp_path / "r" / "last.pt")
    assert (last["config"]["lr"], last["config"]["batch_size"], last["epoch"]) == (0.001, 2, 3)
    assert last["config"]["model_kwargs"] == {"head_norm": "gn", "fpn_channels": 16}
    # resumed without --device: the machine's choice, not a change of the run's to log
    # ("device auto (the run's cpu)" on every such resume)
    r = runner.invoke(app, ["train", "--config", str(SINGLE), "--resume", "--epochs", "5",
                            "--name", "r", "--set", f"out_dir={tmp_path}", "--threads", "2"])
    assert r.exit_code == 0, r.output
    said = [line for line in (tmp_path / "r" / "train.log").read_text().splitlines()
            if "resumed with" in line]
    assert said[-1].endswith("resumed with 1 field(s) other than the run trained with: "
                             "epochs 5 (the run's 4)"), said[-1]


def test_a_short_onecycle_run_trains_and_its_finished_run_is_not_told_more_epochs(
        tmp_path: Path) -> None:
    """Review, session 46: a onecycle schedule of 2 steps (or 100 without warm-up) was a
    ZeroDivisionError traceback from torch; and a finished onecycle run was told "give
    --epochs MORE to continue it", which its resume then refused (its length is fixed)."""
    where = ["--device", "cpu", "--name", "oc", "--set", f"out_dir={tmp_path}", "--threads", "2"]
    args = ["train", "--config", str(SINGLE), "--data", str(SAMPLE), "--epochs", "1", *where,
            "--set", "schedule=onecycle", "--set", "time_budget=null",
            "--set", "max_steps_per_epoch=2", "--set", "batch_size=2", "--set", "crop_size=128"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--resume", "--epochs", "1", *where])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "already trained its 1 epoch(s)" in text, r.output
    assert "--epochs MORE" not in text and "start a new run from its weights" in text, r.output


@pytest.mark.parametrize("args", [
    ["evaluate", "runs/x", "--target-escape", "-1"],
    ["evaluate", "runs/x", "--target-escape", "1.5"],
    ["calibrate", "runs/x", "--target-escape", "-0.5"],
    ["calibrate", "training/configs/deeppcb.yaml", "--folds", "2", "--target-escape", "1"],
    ["evaluate", "runs/x", "--target-escape", "nan"],
    ["bench", "model", "models/deeppcb/1", "--runs", "0"],
    ["bench", "model", "models/deeppcb/1", "--batches", "0"],
    ["bench", "model", "models/deeppcb/1", "--batches", "a,b"],
    ["bench", "train", "--steps", "0"],
    # one mode's options given to the other were ignored (new-user review)
    ["bench", "model", "models/deeppcb-ref/1", "--pairs", "datasets/deeppcb-sample", "--runs", "5"],
    ["bench", "model", "models/deeppcb/1", "--parts", "5"],
    ["calibrate-unchanged", "a.jpg", "b", "--tile", "0"],
    ["calibrate-unchanged", "a.jpg", "b", "--tolerance", "-1"],
])
def test_numbers_out_of_range_are_refused_before_any_work(args: list[str]) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "Invalid value" in r.output, r.output


def test_bench_pairs_on_a_single_image_model_says_so() -> None:
    r = runner.invoke(app, ["bench", "model", str(ROOT / "models" / "deeppcb" / "1"),
                            "--pairs", str(SAMPLE)])
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert "is not a reference model: --pairs times parts" in r.output.replace("\n", "")


def test_target_escape_out_of_range_is_refused_by_the_library_too() -> None:
    rec = ImageRecord(file_name="a.jpg", width=10, height=10, boxes=[])
    with pytest.raises(ConfigError, match="an escape rate, 0 to under 1"):
        calibrate_f([rec], [_pred([], [])], ["open"], target_escape=-1)


def test_calibration_says_how_many_good_images_it_had() -> None:
    """Out-of-fold calibration printed "false rejects 0" on a set with no good images,
    where the run and package forms say n/a: all three now read ``good_images``."""
    rec = ImageRecord(file_name="a.jpg", width=10, height=10,
                      boxes=[Box(x1=1, y1=1, x2=5, y2=5, label="open")])
    pred = _pred([[1, 1, 5, 5]], [0.9])
    assert calibrate_f([rec], [pred], ["open"])["good_images"] == 0
    good = ImageRecord(file_name="b.jpg", width=10, height=10, boxes=[])
    assert calibrate_f([rec, good], [pred, _pred([], [])], ["open"])["good_images"] == 1


def test_stats_plot_is_where_it_says(tmp_path: Path) -> None:
    r = runner.invoke(app, ["data", "stats", str(SAMPLE), "--plot", str(tmp_path / "plot")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "plot.png").is_file() and f"plot saved to {tmp_path / 'plot.png'}" in \
        r.stdout.replace("\n", "")
    r = runner.invoke(app, ["data", "stats", str(SAMPLE), "--plot", str(tmp_path / "plot.svg")])
    assert r.exit_code == 0 and (tmp_path / "plot.svg").read_bytes().lstrip().startswith(b"<?xml")
    for name in ("deeppcb.v2", "deeppcb.raw"):  # no image format (raw: a pixel dump): a name
        r = runner.invoke(app, ["data", "stats", str(SAMPLE), "--plot", str(tmp_path / name)])
        assert r.exit_code == 0 and (tmp_path / f"{name}.png").is_file()


def test_resume_keeps_merged_sets_under_a_config_naming_the_data(tmp_path: Path) -> None:
    """The shipped configs name ``data``: resumed with one, a run trained with
    ``--merge`` lost its merged sets and was refused as trained on other data."""
    from lineside_training.commands import resumed

    run = tmp_path / "runs" / "m"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "data": str(SAMPLE), "extra_data": [str(tmp_path / "extra")], "epochs": 3,
        "time_budget": None}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": str(SAMPLE), "out_dir": str(tmp_path / "runs")}))
    fill = resumed(cfg, [], "m")
    assert fill == {"epochs": 3, "time_budget": None, "data": str(SAMPLE),
                    "extra_data": [str(tmp_path / "extra")]}
    # a run of an older release: the fields it wrote are kept, and one no longer in the
    # config (here made up) is left out, not refused
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "lr": 0.01, "gone_field": 1}))
    assert resumed(cfg, [], "m")["lr"] == 0.01 and "gone_field" not in resumed(cfg, [], "m")
    assert "lr" not in resumed(cfg, ["lr=0.02"], "m")  # given again: the --set's
    # the machine's are not the run's: one started on a GPU box goes on on a CPU one
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "device": "cuda", "threads": 8,
                                                     "workers": 8}))
    assert not {"device", "threads", "workers"} & set(resumed(cfg, [], "m"))
    # a config file naming other data: the run's own set and merged sets still (session 46)
    cfg.write_text(yaml.safe_dump({"data": str(tmp_path), "out_dir": str(tmp_path / "runs")}))
    assert resumed(cfg, [], "m")["data"] == str(SAMPLE)
    assert resumed(cfg, [], "m")["extra_data"] == [str(tmp_path / "extra")]
    # other data named by --set: neither (the run's checkpoint refuses it by content)
    assert not {"data", "extra_data"} & set(resumed(cfg, [f"data={tmp_path}"], "m"))


def test_resume_trains_on_the_runs_data_not_the_config_files(tmp_path: Path) -> None:
    """The README's flow: a shipped config (``data: data/deeppcb``) trained on a set of
    one's own with ``--data``, then continued with ``--config ... --resume --name``. The
    config file's ``data`` replaced the run's: where it was another set the resume was
    refused as "this run names" a set nobody gave, where it was a copy the run went on
    with it and rewrote its config.yaml (new-user review, session 46). The run's own
    values win over the config file's, data too, and the resume says so."""
    other = another_set(tmp_path / "other")  # what the config file names
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": str(other), "out_dir": str(tmp_path / "runs"),
                                   "max_steps_per_epoch": 1, "crop_size": 128,
                                   "batch_size": 2, "time_budget": None}))
    where = ["--config", str(cfg), "--device", "cpu", "--name", "mine", "--threads", "2"]
    r = runner.invoke(app, ["train", *where, "--data", str(SAMPLE), "--epochs", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", *where, "--resume", "--epochs", "2"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert f"not with these values of the config file: data {SAMPLE} ({cfg}: {other})" in text
    run = tmp_path / "runs" / "mine"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == str(SAMPLE)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(x.get("epoch", 0) for x in lines) == 2
    # another set named on purpose is still refused, naming both
    r = runner.invoke(app, ["train", *where, "--resume", "--epochs", "3", "--data", str(other)])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and f"trained on {SAMPLE}, this run names {other}" in text, r.output


def test_resume_names_only_config_values_a_run_reads_otherwise(tmp_path: Path) -> None:
    """``--resume`` listed a config file's ``lr: 4e-3`` (a string to YAML, the lr 0.004 to
    the run) and ``crop_size: 640`` (none, whole images, for a 640 px input) as values
    not applied, though the run reads them as its own (session 46)."""
    from lineside_training.commands import kept_over_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("lr: 4e-3\ncrop_size: 640\ninput_size: auto\ntime_budget: 30m\n"
                   "warmup_epochs: 1\naugment:\n  hflip: 0\nmodel_kwargs:\n  head_norm: gn\n")
    run = {"lr": 0.004, "crop_size": None, "input_size": 640, "time_budget": "1800s",
           "warmup_epochs": 1.0, "augment": {"hflip": 0.0, "vflip": 0.25},
           "model_kwargs": {"head_norm": "gn", "fpn_channels": 16}}
    assert kept_over_config(cfg, run) == []
    assert kept_over_config(cfg, {**run, "lr": 0.005, "crop_size": 128,
                                  "augment": {"hflip": 0.5}}) == [
        f"lr 0.005 ({cfg}: 4e-3)", f"crop_size 128 ({cfg}: 640)",
        f"augment.hflip 0.5 ({cfg}: 0)"]


@pytest.mark.parametrize("line", ["time_budget: [30m]", "time_budget: {m: 30}",
                                  "lr: 2024-01-01", "epochs: 2024-01-01 10:00:00"])
def test_resume_names_a_config_value_of_another_type_not_a_traceback(
        tmp_path: Path, line: str) -> None:
    """Final read, session 46: a config file's value the run keeps its own over, of a type
    no run reads (a list for a time budget, a YAML date for the lr), was an AttributeError
    or TypeError traceback in saying it is not applied (parse_duration, json.dumps)."""
    from lineside_training.commands import kept_over_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(line + "\n")
    key = line.partition(":")[0]
    run = {"lr": 0.004, "time_budget": "1800s", "epochs": 4}
    said = kept_over_config(cfg, run)
    assert len(said) == 1 and said[0].startswith(f"{key} ") and f"({cfg}: " in said[0], said
    if key == "time_budget":  # a new run's config: refused by name too (was the same traceback)
        with pytest.raises(ConfigError, match=r"time_budget: .* is not a duration: write e\.g\. 30m"):
            load_config(cfg, data="x")


def _pred(boxes: list[list[float]], scores: list[float]) -> Prediction:
    return Prediction(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.zeros(len(scores), np.int64))


def test_stats_plot_of_a_good_only_set_says_what_it_holds(tmp_path: Path) -> None:
    """A set of good images drew two empty panels (new-user review)."""
    import matplotlib

    good = tmp_path / "good"
    good.mkdir()
    for p in sorted((SAMPLE / "images").rglob("*_temp.jpg"))[:4]:
        (good / p.name).write_bytes(p.read_bytes())
    r = runner.invoke(app, ["data", "import", "-f", "good", str(good), str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text kept as text
        r = runner.invoke(app, ["data", "stats", str(tmp_path / "ds"), "--plot",
                                str(tmp_path / "plot.svg")])
    assert r.exit_code == 0, r.output
    svg = (tmp_path / "plot.svg").read_text()
    assert "good images per split" in svg and "no defect boxes" in svg


def test_evaluating_on_a_dataset_with_no_images_does_not_say_give_split_all(tmp_path: Path) -> None:
    """With --split all given, it said "(use --split all for a dataset without splits)"
    (a detector) or "it has no splits: give --split all" (a good-only model)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    doc = json.loads((SAMPLE / "annotations.json").read_text())
    doc["images"], doc["annotations"] = [], []
    (empty / "annotations.json").write_text(json.dumps(doc))
    for package in ("deeppcb/1", "deeppcb-good/1"):
        res = runner.invoke(app, ["evaluate", str(ROOT / "models" / package), "--data",
                                  str(empty), "--split", "all"])
        assert res.exit_code == 2, res.output
        assert "the dataset has no images" in res.output and "--split all" not in res.output


@pytest.mark.parametrize("kind", ["detector", "anomaly"])
def test_a_budget_of_weeks_reads_back_as_the_run_reads_it(tmp_path: Path, kind: str) -> None:
    """A budget was kept as ``f"{seconds:g}s"``: 278 hours or more became ``1.0008e+06s``,
    which the run's own parse refused, a ValueError traceback once training began
    (``--time 300h``, or ``--time 99999999999h`` typed by mistake)."""
    from lineside_training.anomaly.config import AnomalyConfig
    from lineside_training.budget import parse_duration

    for given, seconds in (("300h", 1_080_000.0), ("99999999999h", 359_999_999_996_400.0),
                           ("90s", 90.0), ("1.5s", 1.5)):
        if kind == "detector":
            kept = load_config(None, data=str(SAMPLE), time_budget=given).time_budget
        else:
            kept = AnomalyConfig(data=str(SAMPLE), time_budget=given).time_budget
        assert kept is not None and parse_duration(kept) == seconds, kept


def test_a_config_past_the_yaml_parsers_limits_is_one_line(tmp_path: Path) -> None:
    """A config nested 100,000 deep, or with a number of 5,000 digits, was a RecursionError
    or ValueError traceback from train (--config and --set alike)."""
    for n, (text, words) in enumerate((("[" * 100_000, "nested too deeply"),
                                       ("epochs: " + "9" * 5000, "4300 digits"))):
        cfg = tmp_path / f"bad{n}.yaml"
        cfg.write_text(text + "\n")
        r = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(SAMPLE)])
        assert r.exit_code == 2 and f"{cfg}: cannot read config" in r.output, r.output
        assert words in r.output, r.output
        r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--set", "epochs=" + text[-5000:]])
        assert r.exit_code == 2 and "override 'epochs=" in r.output, r.output


def test_an_empty_or_damaged_checkpoint_is_one_line(tmp_path: Path) -> None:
    """An empty best.pt (a run killed while saving, a full disk) ended evaluate, export and
    calibrate with "Aborted!" and exit code 1 (the EOFError taken for the end of input);
    a damaged one with an UnpicklingError traceback."""
    empty = tmp_path / "run"
    empty.mkdir()
    (empty / "best.pt").write_bytes(b"")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"\xb9" + bytes(range(256)) * 4)
    for ck, kind in ((empty, "EOFError"), (damaged, "UnpicklingError")):
        for args in (["evaluate", str(ck), "--data", str(SAMPLE)],
                     ["export", str(ck), "--out", str(tmp_path / "pkg")],
                     ["calibrate", str(ck), "--data", str(SAMPLE)]):
            r = runner.invoke(app, args)
            assert r.exit_code == 2, r.output
            assert f"not a checkpoint torch can read, empty or damaged ({kind})" in r.output
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("kind", ["detector", "anomaly"])
def test_a_budget_under_half_a_millisecond_is_not_kept_as_zero(kind: str) -> None:
    """Kept to three decimals, a budget under half a millisecond became ``0s``, which the
    run's own parse refused as not positive: a ValueError traceback once training began."""
    from lineside_training.anomaly.config import AnomalyConfig
    from lineside_training.budget import parse_duration

    for given, seconds in (("0.0004s", 0.0004), ("0.00000001s", 1e-8)):
        if kind == "detector":
            kept = load_config(None, data=str(SAMPLE), time_budget=given).time_budget
        else:
            kept = AnomalyConfig(data=str(SAMPLE), time_budget=given).time_budget
        assert kept is not None and parse_duration(kept) == seconds, kept


# real files root may not read (tests run as root, so chmod cannot make one): a sysfs
# attribute that is write-only refuses a reader with EACCES; /proc/self/mem at offset 0
# with EIO. Each is a checkpoint that is there but cannot be read
UNREADABLE = [(Path("/sys/bus/pci/rescan"), "Permission denied"),
              (Path("/proc/self/mem"), "Input/output error")]


@pytest.mark.parametrize(("target", "reason"), UNREADABLE, ids=["permission", "io-error"])
def test_a_checkpoint_that_cannot_be_read_is_not_called_damaged(tmp_path: Path, target: Path,
                                                                reason: str) -> None:
    """A best.pt the system would not let be read (a permission) was reported as "not a
    checkpoint torch can read, empty or damaged (PermissionError)": its owner went looking
    for damage. Said as what it is, for evaluate, export, calibrate and train --resume."""
    if not target.is_file():
        pytest.skip(f"{target} is not on this system")
    run = tmp_path / "out" / "run"
    run.mkdir(parents=True)
    (run / "best.pt").symlink_to(target)
    (run / "last.pt").symlink_to(target)
    for args in (["evaluate", str(run), "--data", str(SAMPLE)],
                 ["export", str(run), "--out", str(tmp_path / "pkg")],
                 ["calibrate", str(run / "best.pt"), "--data", str(SAMPLE)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert f"{run / 'best.pt'}: cannot read the checkpoint ({reason})" in r.output
        assert "damaged" not in r.output
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--name", "run", "--resume",
                            "--set", f"out_dir={tmp_path / 'out'}", "--epochs", "1"])
    assert r.exit_code == 2, r.output
    assert f"--resume: {run / 'last.pt'}: cannot read the checkpoint ({reason})" in r.output
    assert "damaged" not in r.output and not (tmp_path / "pkg").exists()


class _Payload:
    """What a crafted checkpoint carries: code that runs as it is unpickled (here, making a
    folder the test then looks for)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return os.mkdir, (str(self.marker),)


def test_a_crafted_checkpoint_is_refused_not_run(tmp_path: Path) -> None:
    """evaluate, export, calibrate and train --resume unpickled a checkpoint in full
    (weights_only=False): a run folder from elsewhere ran its code as it loaded. Now each
    is refused in one line naming the file and the object, and nothing runs."""
    import torch

    marker = tmp_path / "ran"
    run = tmp_path / "out" / "run"
    run.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        torch.save({"config": _Payload(marker), "class_names": ["open"], "model": {}},
                   run / name)
    for args in (["evaluate", str(run), "--data", str(SAMPLE)],
                 ["export", str(run), "--out", str(tmp_path / "pkg")],
                 ["calibrate", str(run / "best.pt"), "--data", str(SAMPLE)],
                 ["train", "--data", str(SAMPLE), "--name", "run", "--resume",
                  "--set", f"out_dir={tmp_path / 'out'}", "--epochs", "2"],
                 ["train", "--data", str(SAMPLE), "--name", "new", "--epochs", "1", "--threads", "2",
                  "--set", f"out_dir={tmp_path / 'out'}", "--weights", str(run / "best.pt")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert not marker.exists(), args  # the payload did not run
        line = r.output.strip().splitlines()[-1]  # train says the data's sizes first
        assert "refused, not loaded" in line and "posix.mkdir" in line, r.output
        assert str(run) in line and "weights_only" not in r.output, r.output
    assert not (tmp_path / "pkg").exists()


def test_plain_values_that_are_no_lineside_checkpoint_are_one_line(tmp_path: Path) -> None:
    """What a restricted load gives back may be any plain values: a list, or a checkpoint
    whose weights fit no model. evaluate and export were a TypeError or RuntimeError
    traceback, train --resume an AttributeError."""
    import torch

    run = tmp_path / "out" / "run"
    run.mkdir(parents=True)
    config = load_config(None, data=str(SAMPLE)).model_dump()
    for content in ([1, 2], {"config": config, "class_names": ["open"],
                             "model": {"stem.0.weight": torch.zeros(1)}}):
        for name in ("best.pt", "last.pt"):
            torch.save(content, run / name)
        for args in (["evaluate", str(run), "--data", str(SAMPLE)],
                     ["export", str(run), "--out", str(tmp_path / "pkg")]):
            r = runner.invoke(app, args)
            assert r.exit_code == 2, r.output
            assert f"{run / 'best.pt'}: not a Lineside checkpoint" in r.output, r.output
    torch.save([1, 2], run / "last.pt")
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--name", "run", "--resume",
                            "--set", f"out_dir={tmp_path / 'out'}", "--epochs", "2"])
    assert r.exit_code == 2, r.output
    assert f"--resume: {run / 'last.pt'}: not a Lineside checkpoint" in r.output, r.output


def test_calibrate_of_a_file_that_is_not_there_says_so(tmp_path: Path) -> None:
    """``calibrate missing.yaml --folds 2`` said "--folds and --time train fold models: give
    a training config (YAML), not a run or package", the file's absence left unsaid."""
    for args, said in ((["missing.yaml", "--folds", "2"], "no such training config"),
                       (["missing.yml", "--time", "5m"], "no such training config"),
                       (["missing", "--folds", "2"], "no such run folder, checkpoint or model"),
                       (["missing", "--new-version", "v2"], "no such run folder, checkpoint")):
        target = tmp_path / args[0]
        r = runner.invoke(app, ["calibrate", str(target), *args[1:]])
        assert r.exit_code == 2, r.output
        assert f"{target}: {said}" in " ".join(r.output.split())
        assert "--folds and --time" not in r.output and "--new-version writes" not in r.output


def test_a_config_that_is_not_there_is_one_line_naming_it(tmp_path: Path) -> None:
    """train said ``cannot read config: [Errno 2] No such file or directory: '...'``, the
    OSError's raw form, where the edge commands name the file and the reason."""
    missing = tmp_path / "missing.yaml"
    for args in (["train", "--config", str(missing), "--data", str(SAMPLE)],
                 ["train", "--config", str(missing), "--resume"],
                 ["bench", "train", "--config", str(missing)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        said = " ".join(r.output.split())
        assert f"{missing}: cannot read config (No such file or directory)" in said, said
        assert "Errno" not in said and "Traceback" not in said


@pytest.mark.parametrize("model", ["lsdet", "fasterrcnn_mobilenet_v3_fpn"])
def test_a_model_kwarg_the_model_does_not_take_is_one_line(model: str) -> None:
    """``--set model_kwargs.widht=2`` ended in a TypeError traceback from deep in the model
    (CLI sweep, session 37): one line naming the model and the argument."""
    from lineside_training.models import build_model

    with pytest.raises(ConfigError, match=rf"model {model}: model_kwargs.*widht"):
        build_model(model, num_classes=2, widht=2)
