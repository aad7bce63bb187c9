"""A hand-edited ``info.outside_recipe_regions`` reaching evaluation (adversarial review,
session 56): the regions a pulled set says painted its frames are read as a recipe's
(at most 64 polygons a part, coordinates within 1e6, at most the pull's
MAX_PAINTED_POINTS): an integer past a float's range was a TypeError traceback, and
50,000 squares took a minute a frame. Refused by name before any frame is predicted,
and before training's first epoch. The sample's frames, the bundled model, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import read_dataset
from lineside_inspect.dataset.painted import MAX_PAINTED_POINTS, painted_area
from lineside_inspect.errors import DatasetError
from lineside_training.config import load_config
from lineside_training.engine import load_data

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
MODEL = ROOT / "models" / "deeppcb" / "1"
SQUARE = [[0, 0], [400, 0], [400, 640], [0, 640]]


def _set(tmp_path: Path, regions: Any) -> Path:
    """The sample, its first frame said painted by recipe r:1 of ``regions``."""
    ann = json.loads((SAMPLE / "annotations.json").read_text())
    first = ann["images"][0]["file_name"]
    ann["info"]["outside_recipe_regions"] = {
        "painted_out": [first], "fill": 114, "judged_by": {first: "r:1"},
        "regions": {"r:1": regions}}
    data = tmp_path / "set"
    data.mkdir()
    (data / "images").symlink_to(SAMPLE / "images")
    (data / "annotations.json").write_text(json.dumps(ann))
    return data


HOSTILE = {
    # 10**400 is a JSON integer no float holds
    "an integer past a float": ({"roi": [[[0, 0], [10**400, 0], [400, 640]]], "ignore": []},
                                "roi"),
    "65 polygons": ({"roi": [SQUARE] * 65, "ignore": []}, "at most 64 items"),
    "too many points": ({"roi": [[[i % 640, i // 640] for i in range(MAX_PAINTED_POINTS - 2)]],
                         "ignore": [[[0, 0], [5, 0], [5, 5]]]},
                        f"over the {MAX_PAINTED_POINTS}"),
    "a coordinate past 1e6": ({"roi": [[[0, 0], [1e300, 0], [0, 1e300]]], "ignore": []}, "roi"),
    "an unknown key": ({"roi": [SQUARE], "ignore": [], "mask": "all"}, "mask"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hand_edited_regions_are_refused_by_name(tmp_path: Path, case: str) -> None:
    regions, says = HOSTILE[case]
    ds = read_dataset(_set(tmp_path, regions))
    rec = next(r for r in ds.images if r.file_name in ds.info["outside_recipe_regions"]["judged_by"])  # type: ignore[index]
    with pytest.raises(DatasetError, match="outside_recipe_regions") as got:
        painted_area(ds, rec)
    assert says in str(got.value) and "'r:1'" in str(got.value)


def test_well_formed_regions_still_paint(tmp_path: Path) -> None:
    ds = read_dataset(_set(tmp_path, {"roi": [SQUARE], "ignore": []}))
    areas = [painted_area(ds, r) for r in ds.images]
    [area] = [a for a in areas if a is not None]
    # grey right of the roi (the truth's boxes kept), none inside it
    assert area[:, 400:].mean() > 0.9 and not area[:, :400].any()


def test_evaluate_refuses_them_in_one_line(tmp_path: Path) -> None:
    data = _set(tmp_path, {"roi": [[[0, 0], [10**400, 0], [400, 640]]], "ignore": []})
    r = CliRunner().invoke(app, ["evaluate", str(MODEL), "--data", str(data), "--split", "val",
                                 "--out", str(tmp_path / "rep")])
    assert (r.exit_code != 0 and r.exception is None) or isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output and "outside_recipe_regions" in r.output, r.output
    assert not (tmp_path / "rep").exists()


def test_train_refuses_them_at_start(tmp_path: Path) -> None:
    data = _set(tmp_path, {"roi": [SQUARE] * 65, "ignore": []})
    with pytest.raises(DatasetError, match="at most 64 items"):
        load_data(load_config(None, None, data=str(data)))
