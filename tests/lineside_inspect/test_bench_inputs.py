"""``lineside bench ...`` given what it cannot run: one line saying what and why, before any
server starts (it was a ZeroDivisionError, an IndexError or a ValueError's traceback after
the servers had started, an httpx traceback, or a wait that never ended), and labels that
say what was measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
SAMPLE = ROOT / "datasets" / "deeppcb-sample"


def _refused(args: list[str], *words: str) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    for word in words:
        assert word in res.output, res.output
    return res.output


@pytest.mark.parametrize("args", [
    ["bench", "server", str(MODELS / "deeppcb" / "1"), "--seconds", "0"],
    ["bench", "server", str(MODELS / "deeppcb" / "1"), "--seconds", "-1"],
    ["bench", "shadow", "--seconds", "0"],
    ["bench", "shadow", "--rounds", "0"],
    ["bench", "shadow", "--rate", "0"],
    ["bench", "shadow", "--clients", "0"],
    ["bench", "shadow", "--sample-rate", "0"],
    ["bench", "camera", "--fps", "0"],
    ["bench", "line", "--fps", "-5"],
    ["bench", "hub", "--boxes", "0"],
    ["bench", "hub", "--rate", "0"],
])
def test_a_number_a_bench_cannot_measure_with_is_refused_before_it_starts(args: list[str]) -> None:
    # "Invalid value", exit 2: refused by the option's own check, before the command ran
    _refused(args, "Invalid value")


@pytest.mark.timeout(60)  # bench camera waited forever for a server whose start-up failed
@pytest.mark.parametrize("command", ["camera", "line", "shadow"])
def test_a_missing_package_is_one_line(command: str, tmp_path: Path) -> None:
    _refused(["bench", command, str(tmp_path / "nope")], "model package folder not found")


@pytest.mark.parametrize("command", ["camera", "shadow"])
def test_a_reference_model_is_refused_by_benches_that_send_frames_alone(command: str) -> None:
    _refused(["bench", command, str(MODELS / "deeppcb-ref" / "1")], "is a reference model",
             "lineside bench model")


@pytest.mark.parametrize("frames", ["missing", "empty"])
def test_camera_frames_that_are_not_there_are_one_line(frames: str, tmp_path: Path) -> None:
    folder = tmp_path / frames
    if frames == "empty":
        folder.mkdir()
    _refused(["bench", "camera", "--frames", str(folder)], f"--frames {folder}")


def test_a_shadow_of_another_model_or_the_same_version_is_refused() -> None:
    _refused(["bench", "shadow", "--shadow", str(MODELS / "deeppcb-good" / "1")],
             "is model deeppcb-good", "another version")
    _refused(["bench", "shadow", "--shadow", str(MODELS / "deeppcb" / "1")], "give another version")


def test_line_rate_sends_no_frame_after_the_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 20 Hz for 0.5 s a line-rate client sends 10 frames, not 11: the table's img/s said
    5.0 for a 4 Hz line (one send was due at the round's end and went)."""
    import httpx

    from lineside_inspect.lifecycle.bench import _send

    class _Client:
        def __init__(self, **_: Any) -> None:
            pass

        def __enter__(self) -> _Client:
            return self

        def __exit__(self, *_: Any) -> None:
            pass

        def post(self, *_: Any, **__: Any) -> Any:
            class _Answer:
                is_success = True  # what lifecycle.bench._send checks of an answer
            return _Answer()

    from types import SimpleNamespace

    from lineside_inspect.lifecycle import bench

    # a clock only the client's waits move: the count is the schedule's, whatever the host
    now = [1000.0]

    def sleep(s: float) -> None:
        now[0] += s
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: now[0], sleep=sleep))
    monkeypatch.setattr(httpx, "Client", _Client)
    assert len(_send("http://x", [b"x"], seconds=0.5, clients=1, interval_s=0.05)) == 10


def _one_group(tmp_path: Path, *, references: bool = True) -> Path:
    folder = tmp_path / "ds"
    shutil.copytree(SAMPLE, folder)
    doc = json.loads((folder / "annotations.json").read_text())
    doc["images"] = [i for i in doc["images"] if i["group"] == "group00041"]
    if not references:
        for i in doc["images"]:
            i.pop("reference", None)
    ids = {i["id"] for i in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
    (folder / "annotations.json").write_text(json.dumps(doc))
    return folder


def test_pairs_of_one_group_do_not_say_held_out(tmp_path: Path) -> None:
    """With one group the parts judged are of the boards the floor was calibrated on: the
    first line said "(held-out groups)"."""
    res = CliRunner().invoke(app, ["bench", "model", str(MODELS / "deeppcb-ref" / "1"),
                                   "--pairs", str(_one_group(tmp_path)), "--parts", "1"])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert "held-out" not in first and "calibrated on" in first, first


def test_pairs_without_references_say_so(tmp_path: Path) -> None:
    """It said "no good frames to calibrate the unchanged gate from"."""
    _refused(["bench", "model", str(MODELS / "deeppcb-ref" / "1"), "--pairs",
              str(_one_group(tmp_path, references=False))], "no defective image with a reference")


def _copy(src: Path, root: Path, *, name: str | None = None, version: str) -> Path:
    """A bundled package under another card name and/or version (the graph unchanged)."""
    card = json.loads((src / "model.json").read_text())
    card["name"], card["version"] = name or card["name"], version
    dst = root / card["name"] / version
    shutil.copytree(src, dst)
    (dst / "model.json").write_text(json.dumps(card))
    return dst


def test_a_fused_bench_with_a_partner_or_shadow_it_cannot_run_is_one_line(tmp_path: Path) -> None:
    """--fused-with names the good-only partner; --shadow is then a version of either model."""
    good, det = MODELS / "deeppcb-good" / "1", MODELS / "deeppcb" / "1"
    _refused(["bench", "shadow", "--fused-with", str(det)], "not a good-only (anomaly) package")
    _refused(["bench", "shadow", str(good), "--shadow", str(_copy(good, tmp_path, version="2")),
              "--fused-with", str(good)], "is the good-only model deeppcb-good", "detector package")
    other = _copy(good, tmp_path, name="board-good", version="1")
    _refused(["bench", "shadow", "--shadow", str(other), "--fused-with", str(good)],
             "is model board-good, neither", "deeppcb", "deeppcb-good")
    _refused(["bench", "shadow", "--shadow", str(good), "--fused-with", str(good)],
             "version 1 of deeppcb-good", "--fused-with", "give another version")
    _refused(["bench", "shadow", "--fused-with", str(tmp_path / "nope")],
             "model package folder not found")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_shadow_of_the_fused_partner_is_measured(tmp_path: Path) -> None:
    """The detector fused with deeppcb-good 1, deeppcb-good 2 its shadow, one short round:
    the rows are there and the shadow judged frames (no time is asserted)."""
    good = MODELS / "deeppcb-good" / "1"
    res = CliRunner().invoke(app, [
        "bench", "shadow", str(MODELS / "deeppcb" / "1"), "--fused-with", str(good),
        "--shadow", str(_copy(good, tmp_path, version="2")), "--frames", str(SAMPLE / "images"),
        "--seconds", "1", "--rounds", "1", "--sample-rate", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "judged by deeppcb 1 fused with deeppcb-good 1, shadow deeppcb-good 2" in res.output
    rows = [line.split(" | ") for line in res.output.splitlines() if line.startswith("| ")
            and " | o" in line]
    assert [(r[0], r[1]) for r in rows] == [
        ("| line rate (4 Hz, 1 client)", "off"), ("| line rate (4 Hz, 1 client)", "on"),
        ("| saturated (2 clients)", "off"), ("| saturated (2 clients)", "on")], res.output
    assert all(int(r[2]) > 0 for r in rows), res.output  # requests answered in every phase
    on = [r[7].rstrip(" |") for r in rows if r[1] == "on"]
    counts = [[int(n) for n in c.replace("/", " ").replace("(", " ").replace(")", " ").split()]
              for c in on]
    assert all(offered > 0 for _, offered, _ in counts), res.output  # it was offered frames
    assert sum(compared for compared, _, _ in counts) > 0, res.output  # and judged some
    assert "errors" not in res.output, res.output
    assert "line rate (4 Hz, 1 client): shadow on / off p50" in res.output


@pytest.mark.timeout(120)
def test_a_frame_the_benchs_server_refuses_is_one_line(tmp_path: Path) -> None:
    """A refusal of the bench's own server (here a frame that is no image) was an httpx
    traceback in each client thread, then the bench went on with no times (session 42):
    one line saying what the server refused and why, exit 2."""
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "x.jpg").write_bytes(b"not a jpeg at all")
    _refused(["bench", "shadow", str(MODELS / "deeppcb" / "1"), "--shadow",
              str(_copy(MODELS / "deeppcb" / "1", tmp_path, version="2")), "--frames",
              str(frames), "--seconds", "1", "--rounds", "1", "--threads", "1"],
             "the bench's server refused a frame (400): not a JPEG, PNG or BMP image")


@pytest.mark.parametrize("recipe", [{"min_score": 5}, {"bogus": 1},
                                    {"min_score": {"nope": 0.2}}])
@pytest.mark.parametrize("mode", [["--runs", "1", "--batches", "1"], ["--mosaic", str(SAMPLE)]])
def test_a_card_whose_own_recipe_a_server_refuses_is_one_line_before_timing(
        recipe: dict[str, Any], mode: list[str], tmp_path: Path) -> None:
    """A model.json whose default_recipe was edited by hand (the card's sha256 covers the
    graph only) was timed, then a pydantic traceback where the card's tiling was read
    (new-user review, session 52); a server loading it refuses it by its recipe."""
    package = tmp_path / "deeppcb" / "9"
    shutil.copytree(MODELS / "deeppcb" / "1", package)
    card = json.loads((package / "model.json").read_text())
    card["default_recipe"] = {**card.get("default_recipe", {}), **recipe}
    (package / "model.json").write_text(json.dumps(card))
    out = _refused(["bench", "model", str(package), *mode], "its card's default_recipe")
    assert "|" not in out  # refused before any figure was timed
