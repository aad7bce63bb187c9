"""Training config errors say what to write instead."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from lineside_inspect.cli import app

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "deeppcb-sample"
runner = CliRunner()


def test_input_size_off_the_stride_suggests_the_nearest() -> None:
    """200 px images: 200 is refused with the sizes that work, 192 or 224."""
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--set", "input_size=200"])
    assert r.exit_code == 2 and "Traceback" not in r.output + r.stderr
    assert "input_size" in r.stderr and "200 is not a multiple of 32" in r.stderr
    assert "use 192 or 224" in r.stderr
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--set", "crop_size=40"])
    assert r.exit_code == 2 and "crop_size" in r.stderr and "use 32 or 64" in r.stderr
