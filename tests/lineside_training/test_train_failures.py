"""A training run meeting real failures (session 51): killed mid-epoch, a checkpoint
damaged on disk, the disk full while one is written, two trainings of one run, its set
changed on disk before --resume, an export of a run whose best.pt is gone."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.errors import ConfigError
from lineside_training import engine
from lineside_training.engine import LOCK, data_changes, hold_run, train, write_checkpoint
from lineside_training.weights import read_torch_file

from .conftest import SAMPLE
from .test_anomaly_train import _config, _good_set

runner = CliRunner()


def test_a_kill_mid_epoch_keeps_the_last_whole_checkpoint_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_config: Any) -> None:
    """SIGTERM to ``lineside train`` ended it without a word; a Ctrl-C mid-epoch saved the
    epoch's half-trained weights and schedule over last.pt labelled as the epoch before,
    so --resume ran those steps again on a schedule they had moved on (session 51)."""
    real, calls = engine.train_one_epoch, []
    run = tmp_path / "t"

    def killed_mid_epoch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # one step into the second epoch, then a kill
            calls.append((run / "last.pt").read_bytes())
            real(*args, **{**kwargs, "steps": 1})
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", killed_mid_epoch)
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--epochs", "2", "--name", "t",
                            "--device", "cpu", "--set", "max_steps_per_epoch=2",
                            "--set", "crop_size=128", "--set", "batch_size=4",
                            "--set", "input_size=320", "--set", "eval_every=5",
                            "--set", f"out_dir={tmp_path}", "--threads", "2"])
    assert r.exit_code == 130, r.output
    assert r.stderr.strip().splitlines()[-1] == (
        f"interrupted: {run / 'last.pt'} keeps epoch 1 (step 2), which --resume continues from")
    assert (run / "last.pt").read_bytes() == calls[2]  # the whole epoch's, untouched
    assert not list(run.glob("*.tmp"))
    monkeypatch.setattr(engine, "train_one_epoch", real)
    train(make_config(tmp_path, name="t", epochs=2, max_steps_per_epoch=2, crop_size=128,
                      batch_size=4, input_size=320, eval_every=5), resume=True, quiet=True)
    ck = torch.load(run / "last.pt", weights_only=True)
    # the schedule and the step count agree: the interrupted step was not counted twice
    assert ck["epoch"] == 1 and ck["step"] == 4 and ck["scheduler"]["last_epoch"] == 4


def test_a_checkpoint_with_flipped_bytes_is_refused_naming_it(tmp_path: Path) -> None:
    """torch reads a zip's parts without their CRC: a last.pt with flipped bytes resumed
    on damaged weights, and saved over the run, without a word."""
    path = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.arange(20_000, dtype=torch.float32)}, "epoch": 3}, path)
    assert read_torch_file(path)["epoch"] == 3
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=rf"^{path}: a damaged checkpoint: its part "
                                          r"\S+/data/0 does not match the checksum"):
        read_torch_file(path)


def test_a_full_disk_mid_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """A failed write was torch's "enforce fail at inline_container.cc" traceback, and the
    half-written .tmp stayed, filling the disk further."""
    path = tmp_path / "last.pt"
    write_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it: EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))
    try:
        with pytest.raises(ConfigError) as caught:
            write_checkpoint(path, {"epoch": 2, "w": torch.zeros(100_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert str(caught.value) == (f"{path}: the checkpoint could not be written (File too "
                                 "large); the previous last.pt is kept: free space, then "
                                 "continue with --resume")
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_a_second_training_of_a_run_being_trained_is_refused(
        tmp_path: Path, make_config: Any) -> None:
    """Two ``lineside train`` of one run trained side by side, both saving last.pt."""
    run = tmp_path / "tiny"
    run.mkdir()
    with open(run / LOCK, "a+") as held:  # as the first training holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        with pytest.raises(ConfigError, match=rf"^{run}: another lineside train is training "
                                              r"this run now \(process 4242\)"):
            train(make_config(tmp_path), quiet=True)
    assert not (run / "last.pt").exists() and not (run / "train.log").exists()


def test_a_set_changed_on_disk_since_the_checkpoint_is_said() -> None:
    saved = {"path": "/d", "annotations_sha256": "a", "train_images": 50, "val_images": 20}
    now = {**saved, "annotations_sha256": "b", "train_images": 48, "val_images": 21}
    assert data_changes(saved, {**saved}) is None
    assert data_changes({}, now) is None  # a checkpoint that kept no digest
    said = data_changes(saved, now)
    assert said is not None and said.startswith(
        "the dataset /d changed since the run's last.pt (its annotations.json is another): "
        "50 train and 20 val images then, 48 and 21 now")


def test_export_of_a_run_whose_best_checkpoint_is_gone_is_refused(
        tiny_run: Path, tmp_path: Path) -> None:
    """Its last.pt was shipped in its place without a word."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "best.pt").unlink()
    from lineside_training.export import export

    with pytest.raises(ConfigError, match=rf"^{run / 'best.pt'} is missing"):
        export(run, tmp_path / "pkg" / "1", parity_images=1)
    assert not (tmp_path / "pkg").exists()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1


# ------------------------------------------------ adversarial pass (session 51)
def test_a_budget_run_stopped_in_its_first_epoch_keeps_none_of_its_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_config: Any) -> None:
    """Its last.pt (epoch -1, step 0, the schedule begun again) kept the seconds of the
    steps a resume takes again as spent: the resumed budget planned fewer steps."""
    real = engine.train_one_epoch

    def one_step_then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        real(*args, **{**kwargs, "steps": 1})
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_one_epoch", one_step_then_ctrl_c)
    cfg = make_config(tmp_path, time_budget="1h", epochs=40, max_steps_per_epoch=2,
                      crop_size=128, batch_size=4, input_size=320)
    with pytest.raises(KeyboardInterrupt, match="finished no epoch"):
        train(cfg, quiet=True)
    ck = torch.load(tmp_path / "tiny" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["step"], ck["elapsed_s"]) == (-1, 0, 0.0)


def test_a_file_system_without_locks_trains_unheld_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flock on a mount without locks (some NFS setups: ENOLCK) was a bare "No locks
    available" and no training at all. (No such mount here: flock is made to say it.)"""
    def no_locks(fd: Any, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(engine.fcntl, "flock", no_locks)
    with hold_run(tmp_path) as unheld:
        assert unheld == (f"{tmp_path}: its file system does not lock files (No locks "
                          "available): nothing stops a second lineside train of this run "
                          "beside this one")


def test_a_train_lock_linked_elsewhere_is_refused_not_written_through(tmp_path: Path) -> None:
    """A run folder copied in with train.lock a link to another file: that file was
    emptied and the process id written in it."""
    other = tmp_path / "notes.txt"
    other.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).symlink_to(other)
    with pytest.raises(ConfigError, match=rf"^{run / LOCK}: cannot be opened"), hold_run(run):
        pass
    assert other.read_text() == "keep me\n"


def test_a_good_only_run_full_disk_at_its_save_is_one_line_and_leaves_no_part(
        tmp_path: Path) -> None:
    """anomaly.pt was a plain torch.save: a full disk was torch's traceback, and the
    partial anomaly.pt left refused the name ("already there") and read as damaged."""
    _good_set(tmp_path, ("line-a", "line-b"), 3, np.random.default_rng(0))
    cfg = _config(tmp_path, tmp_path / "ds", steps=1)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, limits[1]))
    try:
        r = runner.invoke(app, ["train", "--config", str(cfg)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    run = tmp_path / "runs" / "toy"
    assert r.exit_code == 2, r.output + r.stderr
    assert r.stderr.strip() == (f"error: {run / 'anomaly.pt'}: the checkpoint could not be "
                                "written (File too large); none was saved: free space, then "
                                "train it again (a good-only run does not resume)")
    assert not (run / "anomaly.pt").exists() and not list(run.glob("*.tmp"))


def test_a_good_only_run_killed_says_what_was_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (or Ctrl-C) said "interrupted" alone, and train.log nothing."""
    from lineside_training.anomaly import train as anomaly_train

    _good_set(tmp_path, ("line-a", "line-b"), 3, np.random.default_rng(0))
    real = anomaly_train.loss_fn

    def killed(*args: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(anomaly_train, "loss_fn", killed)
    r = runner.invoke(app, ["train", "--config", str(_config(tmp_path, tmp_path / "ds"))])
    run = tmp_path / "runs" / "toy"
    said = (f"{run}: nothing was saved (a good-only run does not resume): train it again; "
            f"to end one early and keep it, create {run / 'STOP'}")
    assert r.exit_code == 130, r.output + r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"interrupted: {said}"
    assert (run / "train.log").read_text().splitlines()[-1] == f"interrupted at step 0: {said}"
    assert not (run / "anomaly.pt").exists()
