"""A training run meeting real failures (session 51): killed mid-epoch, a checkpoint
damaged on disk, the disk full while one is written, two trainings of one run, its set
changed on disk before --resume, an export of a run whose best.pt is gone."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.errors import ConfigError
from lineside_training import engine
from lineside_training.engine import LOCK, data_changes, train, write_checkpoint
from lineside_training.weights import read_torch_file

from .conftest import SAMPLE

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
