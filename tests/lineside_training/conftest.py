"""A tiny trained run on the repository sample, shared by the training-side tests."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest
import torch

from lineside_training.config import TrainConfig, load_config
from lineside_training.engine import train

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"


def tiny_config(out: Path, **overrides: object) -> TrainConfig:
    fields: dict[str, object] = {
        "name": "tiny", "data": str(SAMPLE), "out_dir": str(out), "epochs": 4,
        "batch_size": 8, "crop_size": 256, "lr": 0.004, "max_steps_per_epoch": 6,
        "eval_every": 2, "workers": 0, "device": "cpu", "ema_decay": 0.9,
        "threads": 2,  # as before runs chose their own: results repeat whatever the load
    }
    fields.update(overrides)
    return load_config(None, None, **fields)


@pytest.fixture
def make_config() -> object:
    """``tiny_config`` itself, for tests that need variations."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run, a copy of its own per process (tests evaluate it, which writes into it).
    Under make test's xdist workers it is trained once, by the first worker to need it,
    and copied: each worker trained it, ~20 s of a loaded host's cores for a second run
    of the same config and seed."""
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("runs")
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return train(tiny_config(out), quiet=True)
    # the folder every worker's temporary folder is in (pytest's own way to share across
    # workers); a new one each session
    shared = tmp_path_factory.getbasetemp().parent / "tiny-run"
    with open(f"{shared}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker training it: wait (closing frees it)
        done = shared / "trained"
        if not done.exists():
            shutil.rmtree(shared, ignore_errors=True)  # a worker that failed part-way
            run = train(tiny_config(shared / "runs"), quiet=True)
            part = done.with_suffix(".part")  # whole or absent: a worker killed mid-write
            part.write_text(run.name)         # left an empty name, copied as the folder
            os.replace(part, done)
    run = out / done.read_text()
    shutil.copytree(shared / "runs" / run.name, run)
    return run


def another_set(folder: Path) -> Path:
    """The sample's images and boxes as a set of its own at ``folder`` (images linked, its
    annotations told apart by their info): merging the set itself, or a byte copy of it,
    is refused."""
    import json

    folder.mkdir(parents=True)
    (folder / "images").symlink_to(SAMPLE / "images")
    doc = json.loads((SAMPLE / "annotations.json").read_text())
    doc.setdefault("info", {})["copied_for"] = "a test merging another set"
    (folder / "annotations.json").write_text(json.dumps(doc))
    return folder
