"""The training loop on the sample: logs, checkpoints, resume, evaluation, config errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lineside_inspect.dataset import Box, read_dataset
from lineside_inspect.errors import ConfigError, DatasetError
from lineside_inspect.imageio import encode_jpeg
from lineside_training.checkpoint import load_trained
from lineside_training.config import TrainConfig, load_config
from lineside_training.engine import (
    Progress,
    TrainState,
    _check_resumable,
    data_warnings,
    load_checkpoint,
    load_data,
    save_checkpoint,
    train,
)
from lineside_training.evaluate import evaluate

from .conftest import another_set

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
Make = Callable[..., TrainConfig]


def test_run_folder_has_config_checkpoints_and_metrics(tiny_run: Path) -> None:
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl"} <= {p.name for p in tiny_run.iterdir()}
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert all("map50" in r for r in rows if r["epoch"] % 2 == 0)
    assert rows[-1]["loss"] < rows[0]["loss"]
    trained = load_trained(tiny_run)
    assert trained.class_names[0] == "open" and not trained.model.training


def test_resume_continues_where_it_stopped(tmp_path: Path, make_config: Make) -> None:
    small = {"input_size": 320, "crop_size": 192}  # an epoch's evaluation at 640 px took most of it
    cfg = make_config(tmp_path, epochs=1, max_steps_per_epoch=2, eval_every=1, **small)
    run = train(cfg, quiet=True)
    more = make_config(tmp_path, epochs=2, max_steps_per_epoch=2, eval_every=1, **small)
    train(more, resume=True, quiet=True)
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    last = torch.load(run / "last.pt", weights_only=False)
    assert last["epoch"] == 1 and last["scaler"] == {}  # CPU: AMP and its scaler are off
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"already there \(last\.pt, best\.pt\).*--name"):
        train(more, quiet=True)  # without --resume: refused, the run left as it was
    other = another_set(tmp_path / "other")  # another set to merge (the set itself is refused)
    merged = make_config(tmp_path, epochs=2, max_steps_per_epoch=2, extra_data=[str(other)],
                         **small)
    with pytest.raises(ConfigError, match=r"--resume: .* trained on .*, this run names .* \+ "):
        train(merged, resume=True, quiet=True)  # other data: not a continuation of this run
    moved = tmp_path / "moved" / "sample"  # the same set elsewhere (another checkout)
    shutil.copytree(SAMPLE, moved)
    again = make_config(tmp_path, epochs=2, max_steps_per_epoch=2, data=str(moved) + "/",
                        **small)
    fingerprint = load_data(again).fingerprint
    _check_resumable(run, fingerprint, budget_s=None, epochs=3)  # the same content: continues
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # a schedule that is done took no step and logged an empty epoch: refused, saying how
    # to train on (new-user review)
    with pytest.raises(ConfigError, match=r"already trained its 2 epoch\(s\) and this "
                       r"schedule has 2: give --epochs MORE"):
        _check_resumable(run, fingerprint, budget_s=None, epochs=2)
    ck = torch.load(run / "last.pt", weights_only=False)
    ck["planned_steps"] = ck["step"]  # a time budget's plan, taken to its end
    torch.save(ck, run / "last.pt")
    with pytest.raises(ConfigError, match=r"took all 4 steps of its schedule .* --weights "):
        _check_resumable(run, fingerprint, budget_s=3600.0, epochs=40)


def test_evaluate_writes_report_and_thresholds(tiny_run: Path, tmp_path: Path) -> None:
    result = evaluate(tiny_run, split="val", out=tmp_path / "report", device="cpu")
    for name in ("metrics.json", "summary.md", "pr_curves.png", "confusion.png"):
        assert (tmp_path / "report" / name).is_file(), name
    assert list((tmp_path / "report" / "examples").glob("*.jpg"))
    assert 0 <= result["coco"]["map50"] <= 1
    saved = json.loads((tiny_run / "thresholds.json").read_text())
    assert set(saved["thresholds"]) == set(load_trained(tiny_run).class_names)
    assert saved["escapes"] <= saved["allowed_escapes"]


def test_config_errors_name_the_field(tmp_path: Path, make_config: Make) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nepochs: -3\ncrop_size: 100\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "epochs" in info.value.message and "crop_size" in info.value.message
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"], data="x")
    with pytest.raises(ConfigError, match="no split"):
        _unsplit(tmp_path, make_config)


def test_a_set_of_good_images_alone_is_refused_before_a_run_is_made(
        tmp_path: Path, make_config: Make) -> None:
    import shutil

    dst = tmp_path / "good"
    shutil.copytree(SAMPLE, dst)
    doc = json.loads((dst / "annotations.json").read_text())
    doc["annotations"], doc["categories"] = [], []
    (dst / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"no defect classes.*good-default\.yaml"):
        train(make_config(tmp_path / "runs", data=str(dst)), quiet=True)
    assert not (tmp_path / "runs").exists()


def _unsplit(tmp_path: Path, make_config: Make) -> None:
    import shutil

    dst = tmp_path / "unsplit"
    shutil.copytree(SAMPLE, dst)
    doc = json.loads((dst / "annotations.json").read_text())
    for img in doc["images"]:
        img["split"] = None
    (dst / "annotations.json").write_text(json.dumps(doc))
    train(make_config(tmp_path, data=str(dst)), quiet=True)


def test_checkpoint_restores_the_amp_scaler(tmp_path: Path, make_config: Make) -> None:
    """A GradScaler's state (the loss scale AMP backed off to, its growth tracker) is saved
    and restored. CUDA is absent here, so a CPU GradScaler (the same class) stands in."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def state() -> TrainState:
        return TrainState(model, None, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                          torch.amp.GradScaler("cpu", init_scale=1024.0))

    saved = state()
    for value in (float("inf"), 1.0, 1.0):  # an overflow halves the scale, then 2 good steps
        saved.scaler.scale(model(torch.full((1, 2), value)).sum()).backward()
        saved.scaler.step(optimizer)
        saved.scaler.update()
        optimizer.zero_grad()
    assert saved.scaler.state_dict()["scale"] == 512.0
    cfg = make_config(tmp_path)
    save_checkpoint(tmp_path / "last.pt", saved, Progress(epoch=3, best=0.5, stale=1), cfg=cfg,
                    class_names=["open"], data_fingerprint={})
    restored = state()
    progress = load_checkpoint(tmp_path / "last.pt", restored, torch.device("cpu"))
    assert restored.scaler.state_dict() == saved.scaler.state_dict()
    assert restored.scaler.state_dict()["_growth_tracker"] == 2
    assert (progress.epoch, progress.best, progress.stale) == (3, 0.5, 1)
    # a disabled scaler (CPU training) saves nothing and restores as it was
    off = torch.amp.GradScaler("cuda", enabled=False)
    saved.scaler = off
    save_checkpoint(tmp_path / "cpu.pt", saved, Progress(), cfg=cfg, class_names=["open"],
                    data_fingerprint={})
    load_checkpoint(tmp_path / "cpu.pt", restored, torch.device("cpu"))
    assert restored.scaler.state_dict()["scale"] == 512.0


# Runs under torchrun: records, on the test side, which records this rank trained on (the
# training loader's collate function sees every batch), the final weights' and EMA's
# checksums, and the schedule plan the rank followed. It trains each case in turn in the
# same two processes (a run of its own each, in its own folder): starting torchrun and
# torch in three processes took more time than the three runs themselves.
DDP_SCRIPT = """
import dataclasses, json, os, sys
from pathlib import Path
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from lineside_training import engine
from lineside_training.data.dataset import collate
from lineside_training.models import build_model

seen, models, plans, emas = [], [], [], []
plan_schedule, averaged = engine.plan_schedule, engine.AveragedModel

def recording_collate(batch):
    seen.extend(int(target["index"]) for _, target in batch)
    return collate(batch)

def kept_model(*args, **kwargs):
    models.append(build_model(*args, **kwargs))
    return models[-1]

def kept_plan(*args, **kwargs):  # the plan object a budget re-fits in place
    plans.append(plan_schedule(*args, **kwargs))
    return plans[-1]

def kept_ema(*args, **kwargs):
    emas.append(averaged(*args, **kwargs))
    return emas[-1]

engine.collate, engine.build_model = recording_collate, kept_model
engine.plan_schedule, engine.AveragedModel = kept_plan, kept_ema
def checksum(module):
    return float(sum(p.detach().double().sum() for p in module.parameters()))
for n, (case, extra) in enumerate({cases!r}.items()):
    for kept in (seen, models, plans, emas):
        kept.clear()
    if n:  # the engine's own set-up (env://) begins the first run; a run ends its group, and
        # a new one on the same keys of torchrun's store would read the last one's addresses
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              is_master=False)
        dist.init_process_group("gloo", store=dist.PrefixStore(case, store),
                                rank=int(os.environ["RANK"]), world_size=2)
    out = Path({out!r}) / case
    settings = {{"epochs": 1, "max_steps_per_epoch": 3, "batch_size": 4, "eval_every": 1,
                "input_size": 320, "crop_size": 192, "threads": 1, **extra}}
    engine.train(tiny_config(out, **settings), quiet=True)
    (out / f"rank{{os.environ['RANK']}}.json").write_text(json.dumps({{
        "indices": seen, "checksum": checksum(models[0]), "ema": checksum(emas[0].module),
        "plan": dataclasses.asdict(plans[0])}}))
"""
# (no case of plain epochs: each of these checks the shards and weights it did, and more)
DDP_CASES = {"budget": {"time_budget": "4s"}, "patience": {"epochs": 4, "patience": 1},
             "time-limit": {"epochs": 4, "time_limit_minutes": 0.001}}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun of 2 CPU processes that trains every case of ``DDP_CASES``."""
    out = tmp_path_factory.mktemp("ddp")
    script = out / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out),
                                        cases=DDP_CASES))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DDP_CASES))
def test_ddp_two_processes_gloo(ddp_runs: Path, case: str) -> None:
    """torchrun, 2 CPU processes: disjoint shards, identical weights at the end; also
    under a time budget, where only rank 0 evaluates and times its evaluations and its
    plan is every rank's (the same steps, and the same warm-up, so the same weights).
    Rank 0 alone counts evaluations without gain and reads the time limit on its own
    clock: every rank stops where it does (before, rank 0 stopped alone on patience and
    the other rank waited for ever)."""
    run = ddp_runs / case
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    # an epoch's shards are disjoint (each epoch deals them anew): the first epoch's 3
    # batches of 4
    a, b = (set(r["indices"][:12]) for r in ranks)
    assert a and b and not (a & b), "ranks must see disjoint shards"
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    # the EMA, which only the plan's decay and ramp shape, agrees too, and so does the plan
    assert ranks[0]["ema"] == ranks[1]["ema"] and ranks[0]["ema"] != ranks[0]["checksum"]
    assert ranks[0]["plan"] == ranks[1]["plan"]
    assert not (run / "tiny" / "ranks").exists()
    epochs = len((run / "tiny" / "metrics.jsonl").read_text().splitlines())
    if case in ("patience", "time-limit"):
        assert epochs < 4  # stopped early, both ranks


def test_a_run_finds_its_dataset_from_another_folder(
        tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run trained with ``--data data/my-set`` keeps that name in its config; evaluate
    or export run from another folder found no ``data/my-set`` and said the dataset was
    not a Lineside dataset. The checkpoint records where it was: that is used, and the
    error, when neither is there, says what to pass."""
    from lineside_training.checkpoint import load_trained

    trained = load_trained(tiny_run, "cpu")
    trained.config = trained.config.model_copy(update={"data": "datasets/deeppcb-sample"})
    monkeypatch.chdir(tmp_path)  # no datasets/ here
    assert trained.data.resolve() == SAMPLE.resolve()
    assert trained.is_own_data(None) and trained.is_own_data(SAMPLE)
    assert not trained.is_own_data(tmp_path)
    trained.checkpoint = {**trained.checkpoint, "data": {"path": str(tmp_path / "gone")}}
    with pytest.raises(ConfigError, match=r"the run's dataset datasets/deeppcb-sample was not "
                       r"found .*pass --data DATASET"):
        _ = trained.data
    assert not trained.is_own_data(SAMPLE)


def test_a_missing_image_or_a_merge_of_its_own_set_is_refused_before_training(
        tmp_path: Path, make_config: Make) -> None:
    """A train image deleted from the set stopped the run after its first epoch and left
    a last.pt, so a second try under the name was refused; --merge of the set trained on
    doubled its train images silently (new-user review)."""
    data = tmp_path / "set"
    shutil.copytree(SAMPLE, data)
    doc = json.loads((data / "annotations.json").read_text())
    gone = next(i["file_name"] for i in doc["images"] if i.get("split") == "train")
    (data / "images" / gone).unlink()
    with pytest.raises(DatasetError, match=r"1 image file\(s\) of train/val are not there"):
        train(make_config(tmp_path / "runs", data=str(data)), quiet=True)
    assert not (tmp_path / "runs").exists()  # nothing begun: the name is free
    with pytest.raises(ConfigError, match=r"that is .* \(the dataset trained on\)"):
        load_data(make_config(tmp_path, extra_data=[str(SAMPLE) + "/"]))
    other = another_set(tmp_path / "other")  # the sample's pictures, annotated anew
    with pytest.raises(ConfigError, match=re.escape(f"--merge {other}: that is {other}, merged")):
        load_data(make_config(tmp_path, extra_data=[str(other), str(other)]))
    # compared by content: a copy's images are in train already, its val/test held out
    data = load_data(make_config(tmp_path, extra_data=[str(other)]))
    sample = read_dataset(SAMPLE)
    goldens = {r.reference for r in sample.images if r.reference}  # shared by design
    in_train = sum(1 for r in sample.images if r.split == "train" and r.file_name not in goldens)
    assert data.fingerprint["extra_duplicates"] == {
        str(other): {"in_val_or_test": 0, "in_train": in_train}}
    assert f"{in_train} image(s) merged from {other} are in train already" in \
        data_warnings(data)[0]
    resplit = another_set(tmp_path / "resplit")  # the same pictures split anew: a leak
    doc = json.loads((resplit / "annotations.json").read_text())
    for img in doc["images"]:
        img["split"] = "train"
    (resplit / "annotations.json").write_text(json.dumps(doc))
    data = load_data(make_config(tmp_path, extra_data=[str(resplit)]))
    leaked = data.fingerprint["extra_duplicates"][str(resplit)]["in_val_or_test"]
    assert leaked > 0 and "are parts the validation judges" in data_warnings(data)[0]


@pytest.mark.parametrize("reference", [False, True])
def test_images_that_cannot_be_decoded_are_refused_together_before_training(
        tmp_path: Path, make_config: Make, reference: bool) -> None:
    """A truncated JPEG, an empty file, a text file named .png, a golden cut short, an
    image not the size recorded and an image gone, in a detector's set (single-image and
    reference recipes): the run stopped at the first batch drawing one of them, one file
    named (a DataLoader worker's traceback with workers), its folder made; on a large set
    after minutes (new-user review, session 43). Now one refusal, before the run's folder,
    naming each file and its kind of problem as 'lineside data validate' does, without
    decoding a pixel."""
    data = tmp_path / "set"
    shutil.copytree(SAMPLE, data)
    doc = json.loads((data / "annotations.json").read_text())
    goldens = {i["reference"] for i in doc["images"] if i.get("reference")}
    train_parts = [i["file_name"] for i in doc["images"]
                   if i.get("split") == "train" and i["file_name"] not in goldens]
    val_golden = next(i["reference"] for i in doc["images"] if i.get("split") == "val")
    cut, empty, gone, other = (data / "images" / f for f in train_parts[:4])
    cut.write_bytes(cut.read_bytes()[:4000])
    empty.write_bytes(b"")
    gone.unlink()
    other.write_bytes(encode_jpeg(np.zeros((320, 640, 3), np.uint8)))  # labelled 640x640
    golden = data / "images" / val_golden
    golden.write_bytes(golden.read_bytes()[:-2000])
    (data / "images" / "notes.png").write_text("notes on the boards\n")
    doc["images"].append({"id": 10_000, "file_name": "notes.png", "width": 640, "height": 640,
                          "group": "notes", "split": "train"})
    (data / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError) as refused:
        train(make_config(tmp_path / "runs", data=str(data), reference=reference), quiet=True)
    message = refused.value.message
    assert "1 image file(s) of train/val are not there" in message
    assert "5 image file(s) of train/val cannot be decoded (empty, truncated or not an " \
        "image) or are not the size recorded" in message
    assert "nothing was trained" in message and "lineside data validate" in message
    assert "--skip-invalid" in message
    assert {(p.file, p.message) for p in refused.value.problems} == {
        (str(gone), "image file is missing"),
        (str(other), f"says 640x640 but {other.name} is 640x320"),
        (str(cut), "truncated JPEG: the end-of-image marker is missing"),
        (str(empty), "the image is empty (0 bytes)"),
        (str(golden), "truncated JPEG: the end-of-image marker is missing"),
        (str(data / "images" / "notes.png"),
         "not a JPEG, PNG or BMP image (unrecognised header bytes)")}
    assert not (tmp_path / "runs").exists()  # nothing begun: the name is free


def test_a_class_without_train_boxes_and_a_val_without_defects_are_warned(
        tmp_path: Path, make_config: Make) -> None:
    data = load_data(make_config(tmp_path))
    assert data_warnings(data) == []
    first = data.class_names[0]
    for rec in data.train:
        rec.boxes = [b for b in rec.boxes if b.label != first]
    for rec in data.val:
        rec.boxes = []
    said = data_warnings(data)
    assert f"class(es) '{first}' have no box in train" in said[0]
    assert "val holds no defective image" in said[1]


def test_a_run_stopped_in_its_first_epoch_can_be_resumed(
        tmp_path: Path, make_config: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the first epoch saved it as done: --resume said "already trained its 1
    epoch(s)" and pointed at a best.pt that was not there, and a new run of the name was
    refused (second review)."""
    import lineside_training.engine as engine

    real = engine.train_one_epoch

    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_one_epoch", interrupted)
    # (320 px: the export's parity and the resumed epoch's evaluation at 640 took most of it)
    cfg = make_config(tmp_path, epochs=1, max_steps_per_epoch=2, eval_every=1, input_size=320,
                      crop_size=192)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    run = tmp_path / "tiny"
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == -1  # none finished
    from lineside_training.export import export

    summary = export(run, tmp_path / "partial" / "1", parity_images=2)  # says what it ships
    assert any("finished no epoch" in n for n in summary["notes"])
    monkeypatch.setattr(engine, "train_one_epoch", real)
    train(cfg, resume=True, quiet=True)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and (run / "best.pt").is_file()


def test_boxes_the_input_size_shrinks_out_of_sight_are_warned(
        tmp_path: Path, make_config: Make) -> None:
    """A 4000 px frame trained at 640: its 6 px defects are 1 px to the model, and the
    log said nothing (issue #18 review)."""
    data = load_data(make_config(tmp_path))
    assert data_warnings(data, 640) == []  # the sample's boxes are visible at 640
    rec = data.train[0]
    rec.width, rec.height = 4000, 3000
    rec.boxes = [Box(100, 100, 106, 140, "a"), Box(500, 500, 600, 600, "a")]
    said = data_warnings(data, 640)
    assert len(said) == 1 and said[0].startswith(
        "1 of ") and "under 3 px a side once their images are scaled to the 640 px" in said[0]
    assert "--set input_size=2016" in said[0]  # 3 px needs 4000 * 3 / 6 = 2000 -> 2016
    rec.boxes = [Box(100, 100, 103, 140, "a")]  # 3 px: a 4000 px input would be needed
    assert "no practical input size keeps them visible" in data_warnings(data, 640)[0]
    rec.boxes = [Box(100, 100, 102, 140, "a")]  # 2 px in its own image: not the scaling's
    assert data_warnings(data, 640) == []


def test_merging_hashes_each_image_once(tmp_path: Path, make_config: Make,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --merge`: the set's check hashes its images of one size (byte-identical
    copies are), then the merge compares every image by content: those were hashed twice
    (review, session 42). Hashes counted per file, not timed."""
    from lineside_inspect.dataset import duplicates
    from lineside_training import engine

    data = tmp_path / "set"
    shutil.copytree(SAMPLE, data)
    doc = json.loads((data / "annotations.json").read_text())
    first = next(i for i in doc["images"] if i.get("split") == "train")
    new_id = max(i["id"] for i in doc["images"]) + 1  # a copy in train, labelled alike
    copy = {**first, "id": new_id, "file_name": "copy-" + Path(first["file_name"]).name}
    shutil.copy(data / "images" / first["file_name"], data / "images" / copy["file_name"])
    doc["images"].append(copy)
    top = max(a["id"] for a in doc["annotations"])
    doc["annotations"] += [{**a, "id": top + n, "image_id": new_id} for n, a in enumerate(
        (a for a in doc["annotations"] if a["image_id"] == first["id"]), 1)]
    (data / "annotations.json").write_text(json.dumps(doc))
    hashed: list[str] = []
    real = duplicates.sha256_file

    def counted(path: Path) -> str:
        hashed.append(str(path))  # (two sets' links to one file are two files here)
        return real(path)

    # the two that hash images: the set's check and the merge's comparison
    monkeypatch.setattr(duplicates, "sha256_file", counted)
    monkeypatch.setattr(engine, "sha256_file", counted)
    extra = [str(another_set(tmp_path / n)) for n in ("other", "more")]
    loaded = load_data(make_config(tmp_path, data=str(data), extra_data=extra))
    assert {p for p in hashed if hashed.count(p) > 1} == set()
    copied = (data / "images" / copy["file_name"]).resolve()
    assert copied in {Path(p).resolve() for p in hashed}  # by the check (one size), once
    assert set(loaded.fingerprint["extra_duplicates"]) == set(extra)  # compared by content
