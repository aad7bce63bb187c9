"""Evaluating a pulled set whose frames `data pull` painted grey where their recipe never
judged them (session 56): the painted edges look like defects to a model (a trace cut off
at the roi's border an `open` or a `spur`, an ignored square a `short`), and evaluation
scored them as false alarms on frames whose recipe would never have counted them. The
set says which recipe regions judged each painted frame; predictions centred in its grey
are dropped, as the line's recipe drops them. A real server with the bundled
single-image model, the sample's frames, a real pull and the edge runtime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lineside_inspect.dataset import read_dataset
from lineside_inspect.dataset.painted import painted_area
from lineside_inspect.errors import DatasetError
from lineside_inspect.imageio import read_image
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store.pull import pull_from_store
from lineside_training.evaluate import evaluate
from lineside_training.predict import runtime_predictions

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "lineside_inspect"))
from conftest import keyed, start_server  # noqa: E402

MODEL = ROOT / "models" / "deeppcb" / "1"
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
LEFT = [[0, 0], [400, 0], [400, 640], [0, 640]]
IGNORE = [[80, 440], [140, 440], [140, 520], [80, 520]]


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("painted")
    frames = sorted((SAMPLE / "images").rglob("*_test.jpg"))[:6]
    srv, stop = start_server(keyed(models=[str(MODEL)], store_pass_rate=1.0,
                                   data_dir=tmp / "store"))
    try:
        with srv.client("admin") as c:
            r = c.put("/v1/recipes/left", json={"name": "left", "model": "deeppcb",
                                                "roi": [LEFT], "ignore": [IGNORE]})
            assert r.status_code == 200, r.text
        ids = []
        with srv.client("line") as c:
            for f in frames:
                r = c.post("/v1/inspect", params={"recipe": "left"},
                           files={"image": (f.name, f.read_bytes(), "image/jpeg")})
                assert r.status_code == 200 and r.json()["stored"], r.text
                ids.append(r.json()["id"])
        with srv.client("reviewer") as c:
            for iid in ids:
                assert c.post(f"/v1/inspections/{iid}/reviews",
                              json={"action": "confirm"}).status_code == 200
        srv.app.state.store.flush()
        pull_from_store(srv.app.state.store, tmp / "pulled")
    finally:
        stop()
    return tmp / "pulled"


def _in_grey(data: Path) -> tuple[int, int]:
    """Of the edge runtime's detections on the set's frames (as `lineside evaluate` of a
    package gets them), how many in all and how many centred in the grey: before and
    after the set's painted areas are taken off."""
    ds = read_dataset(data)
    detector = Detector(MODEL, device="cpu", threads=1)
    raw = grey = 0
    for rec in ds.images:
        area = painted_area(ds, rec)
        assert area is not None  # every frame was painted, by the recipe that judged it
        found = runtime_predictions(detector, [rec], ds)[0]
        every = detector.predict([read_image(ds.image_path(rec))])[0]
        for boxes, count in ((every.xyxy, "raw"), (found.boxes, "grey")):
            n = sum(bool(area[int((b[1] + b[3]) / 2), int((b[0] + b[2]) / 2)]) for b in boxes)
            if count == "raw":
                raw += n
            else:
                grey += n
    return raw, grey


def test_predictions_centred_in_the_grey_are_not_scored(pulled: Path) -> None:
    info = json.loads((pulled / "annotations.json").read_text())["info"]
    said = info["outside_recipe_regions"]
    # the set says which recipe version judged each painted frame, and its regions
    assert sorted(said["judged_by"]) == sorted(said["painted_out"])
    assert set(said["judged_by"].values()) == {"left:1"}
    assert said["regions"]["left:1"] == {"roi": [[[float(x), float(y)] for x, y in LEFT]],
                                         "ignore": [[[float(x), float(y)] for x, y in IGNORE]]}
    raw, grey = _in_grey(pulled)
    assert raw > 0  # the painted edges fire the model: the case is real
    assert grey == 0
    # and a package's evaluation scores the frames without them
    got = evaluate(MODEL, data=str(pulled), split="all", out=pulled.parent / "report",
                   device="cpu")
    assert got["images"] == 6


def test_a_painted_frame_without_its_regions_is_refused_by_name(pulled: Path,
                                                               tmp_path: Path) -> None:
    ann = json.loads((pulled / "annotations.json").read_text())
    ann["info"]["outside_recipe_regions"]["regions"] = {"left:1": {"roi": "everything"}}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "images").symlink_to(pulled / "images")
    (bad / "annotations.json").write_text(json.dumps(ann))
    ds = read_dataset(bad)
    with pytest.raises(DatasetError, match="regions of 'left:1' are not a recipe's roi/ignore: roi"):
        painted_area(ds, ds.images[0])
