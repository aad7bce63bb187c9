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



def test_an_input_size_no_package_takes_is_refused_before_training() -> None:
    """A card's input.size is at most 4096 (session 38): a run at 4128 trained for its
    hours, then its export was refused. Said by train at once, for both kinds."""
    from lineside_inspect.errors import ConfigError
    from lineside_training.commands import load_config

    for kind in ([], ["kind=anomaly"]):
        try:
            load_config(None, [f"data={SAMPLE}", "input_size=4128", *kind])
        except ConfigError as exc:
            assert "input_size" in exc.message and "4096" in exc.message, exc.message
        else:
            raise AssertionError(f"input_size 4128 taken {kind}")
    assert load_config(None, [f"data={SAMPLE}", "input_size=4096"]).input_size == 4096

def test_a_merged_sets_held_out_images_are_said_not_dropped_silently(tmp_path: Path) -> None:
    """``--merge`` trains on the extra set's train (and unsplit) images only; its val/test
    images stay held out, and the run says how many (a user saw 30 train where 36 were
    expected and no word why)."""
    from lineside_inspect.dataset import read_dataset
    from lineside_training.engine import load_data

    from .conftest import SAMPLE, another_set, tiny_config

    other = another_set(tmp_path / "other")  # another set (the set trained on itself is refused)
    cfg = tiny_config(tmp_path, extra_data=[str(other)])
    data = load_data(cfg)
    sample = read_dataset(SAMPLE)
    held = sum(1 for r in sample.images if r.split not in (None, "train"))
    assert held > 0 and data.fingerprint["extra_held_out"] == {str(other): held}
    assert len(data.train) == 2 * len(sample.in_split("train"))
