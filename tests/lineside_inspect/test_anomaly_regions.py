"""A good-only model judged where the recipe looks: its ``roi`` and ``ignore`` polygons
decide the image score and the regions, as they decide which detector boxes count. The
bundled package (models/deeppcb-good) runs through onnxruntime on a real good board with a
synthetic anomaly pasted on it."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lineside_inspect.imageio import decode_image
from lineside_inspect.inspector import Inspection, inspect
from lineside_inspect.recipes import Recipe
from lineside_inspect.recipes.rules import _inside
from lineside_inspect.runtime.anomaly import AnomalyModel
from lineside_inspect.runtime.anomaly_map import Points, _drawn, _looked_at, pooled_pixels
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.preprocess import Letterbox

from .anomaly_package import FOREIGN_GREY, anomaly_graph, card_doc, part, write_package

ROOT = Path(__file__).resolve().parents[2]
LABEL = (40, 40, 40)  # x, y, side: the anomaly in the recipe's ignore area
ELSEWHERE = (500, 500, 30)  # one where the recipe looks


def _square(x: int, y: int, side: int, margin: float = 10.0) -> list[tuple[float, float]]:
    return [(x - margin, y - margin), (x + side + margin, y - margin),
            (x + side + margin, y + side + margin), (x - margin, y + side + margin)]


@pytest.fixture(scope="module")
def good() -> AnomalyModel:
    return AnomalyModel(ROOT / "models" / "deeppcb-good" / "1", device="cpu", threads=1)


@pytest.fixture(scope="module")
def board() -> np.ndarray:
    """A good DeepPCB board (640 x 640): the bundled model scores it far under its threshold."""
    return decode_image((ROOT / "datasets" / "deeppcb-sample" / "images" / "group00041" /
                         "00041000_temp.jpg").read_bytes())


def _raster(polygon: Points, lb: Letterbox, shape: tuple[int, int]) -> np.ndarray:
    """The whole map's mask of ``polygon``, as ``_drawn`` draws it within its box."""
    mask = np.zeros(shape, dtype=bool)
    rows, cols, inside = _drawn(polygon, lb, shape)
    mask[rows, cols] = inside
    return mask


def _with(board: np.ndarray, *squares: tuple[int, int, int]) -> np.ndarray:
    out = board.copy()
    for x, y, side in squares:
        out[y:y + side, x:x + side] = FOREIGN_GREY
    return out


def _anomaly_boxes(result: Inspection) -> list[list[float]]:
    return [b for b, label in zip(result.defects.xyxy.tolist(), result.defects.labels,
                                  strict=True) if label == "anomaly"]


def test_an_anomaly_in_an_ignore_area_fails_no_part(good: AnomalyModel,
                                                    board: np.ndarray) -> None:
    """The bundled model scores a pasted square about 1.0: inside the recipe's ignore
    polygon the part passes (it failed with "0 region(s), 1 left out"); the same square
    where the recipe looks still fails, with its region there."""
    recipe = Recipe(name="labelled", model="deeppcb-good", ignore=[_square(*LABEL)])
    ignored = inspect(_with(board, LABEL), good, recipe)
    assert ignored.verdict == "pass" and ignored.reasons == [] and len(ignored.defects) == 0
    assert ignored.anomaly is not None and ignored.anomaly.whole_score is not None
    assert ignored.anomaly.whole_score >= ignored.anomaly.threshold  # the graph saw it
    clean = inspect(board, good, recipe).anomaly
    assert clean is not None and ignored.anomaly.score == pytest.approx(clean.score, abs=1e-3)

    seen = inspect(_with(board, LABEL, ELSEWHERE), good, recipe)
    assert seen.verdict == "fail" and [r.rule for r in seen.reasons] == ["anomaly"]
    assert "in the recipe's regions" in seen.reasons[0].message
    assert "1 region(s)" in seen.reasons[0].message
    [box] = _anomaly_boxes(seen)  # the ignored square is no region
    assert box[0] >= 495 and box[1] >= 495 and box[2] <= 535 and box[3] <= 535


def test_an_anomaly_outside_the_roi_fails_no_part(good: AnomalyModel,
                                                  board: np.ndarray) -> None:
    recipe = Recipe(name="left", model="deeppcb-good",
                    roi=[[(0.0, 0.0), (320.0, 0.0), (320.0, 640.0), (0.0, 640.0)]])
    assert inspect(_with(board, ELSEWHERE), good, recipe).verdict == "pass"
    inside = inspect(_with(board, LABEL), good, recipe)
    assert inside.verdict == "fail" and len(_anomaly_boxes(inside)) == 1


def test_a_fused_recipe_ignores_the_anomaly_where_it_ignores_boxes(
        good: AnomalyModel, board: np.ndarray) -> None:
    """Detector OR anomaly: the detector finds nothing on the board, the good-only model
    the pasted square; an ignore polygon over it leaves nothing to fail the part."""
    detector = Detector(ROOT / "models" / "deeppcb" / "1", device="cpu", threads=1)
    image = _with(board, LABEL)
    plain = Recipe(name="fused", model="deeppcb", anomaly={"model": "deeppcb-good"})
    assert inspect(image, detector, plain, anomaly_model=good).verdict == "fail"
    ignoring = plain.model_copy(update={"ignore": [_square(*LABEL)]})
    assert inspect(image, detector, ignoring, anomaly_model=good).verdict == "pass"


def test_regions_map_through_the_letterbox_of_a_graph_that_pools_its_peak(
        tmp_path: Path) -> None:
    """A 200 x 120 part on a 64 px graph (padded top and bottom) whose score is the map's
    peak, a card that does not say how it pools: the ignore polygon in image pixels
    covers the square in the map, and the score there is the peak elsewhere."""
    folder = write_package(tmp_path / "peak" / "1", anomaly_graph(64), card_doc("peak", 64))
    model = AnomalyModel(folder, device="cpu", threads=1)
    assert pooled_pixels(model.card) == 1
    recipe = Recipe(name="peak", model="peak", ignore=[_square(20, 20, 30, margin=8)])
    assert inspect(part(200, 120, ((20, 20, 30),)), model, recipe).verdict == "pass"
    assert inspect(part(200, 120, ((20, 20, 30), (140, 70, 30))), model,
                   recipe).verdict == "fail"


def test_the_map_mask_follows_the_box_rule() -> None:
    """The mask of a polygon on the map is the even-odd rule a box's centre is judged by
    (``rules._inside``), pixel centres mapped through the letterbox: a concave polygon and
    one crossing itself, with padding."""
    lb = Letterbox(scale=0.5, pad_x=3, pad_y=7, width=100, height=80)
    jj, ii = np.meshgrid(np.arange(56), np.arange(50))
    centres = np.stack([((jj + 0.5 - 3) / 0.5).ravel(), ((ii + 0.5 - 7) / 0.5).ravel()], 1)
    for polygon in ([(0.0, 0.0), (90.0, 0.0), (90.0, 70.0), (45.0, 20.0), (0.0, 70.0)],
                    [(5.0, 5.0), (95.0, 75.0), (95.0, 5.0), (5.0, 75.0)]):
        mask = _raster(tuple(polygon), lb, (50, 56))
        assert mask.any() and not mask.all()
        assert (mask.ravel() == _inside(centres, polygon)).all()



def test_a_polygon_of_many_points_is_drawn_in_parts() -> None:
    """A circle of 1,000 points (more than one pass of edges) masks the pixels the box rule
    says; one of 10,000 (what a 64 KB recipe body holds) on a 640 px map takes a few MB,
    where rows x edges arrays of every edge at once took over 100 MB."""
    jj, ii = np.meshgrid(np.arange(64), np.arange(64))
    centres = np.stack([(jj + 0.5).ravel(), (ii + 0.5).ravel()], 1)
    small = Letterbox(scale=1.0, pad_x=0, pad_y=0, width=64, height=64)
    for points, lb, shape, r in ((1000, small, (64, 64), 20), (10_000, None, (640, 640), 200)):
        angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
        c = shape[0] / 2
        circle = [(c + r * float(np.cos(a)), c + r * float(np.sin(a))) for a in angles]
        tracemalloc.start()
        mask = _raster(tuple(circle), lb or Letterbox(1.0, 0, 0, 640, 640), shape)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert abs(int(mask.sum()) - np.pi * r * r) < 2 * np.pi * r  # within its rim
        if lb is small:
            assert (mask.ravel() == _inside(centres, circle)).all()
        else:
            assert peak < 20_000_000, peak


def test_a_recipe_of_many_polygons_is_drawn_in_little_memory() -> None:
    """64 small roi and 64 ignore polygons (as many as a recipe may have) on a 640 px map:
    each is drawn within its own box and added in place, the same mask as drawing each on
    the whole map, in a few MB; a list of whole-map masks took 53 MB here (GB for
    the thousands a 64 KB body held)."""
    lb = Letterbox(scale=0.5, pad_x=0, pad_y=80, width=1280, height=960)
    shape = (640, 640)
    roi = tuple(tuple((40.0 * i + dx, 40.0 * i + dy) for dx, dy in ((0, 0), (60, 0), (0, 60)))
                for i in range(64))
    ignore = tuple(tuple((40.0 * i + dx, 40.0 * i + dy) for dx, dy in ((5, 5), (20, 5), (5, 20)))
                   for i in range(64))
    _looked_at.cache_clear()
    tracemalloc.start()
    mask = _looked_at((roi, ignore), lb, shape)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _looked_at.cache_clear()
    whole = np.zeros(shape, dtype=bool)
    for p in roi:
        whole |= _raster(p, lb, shape)
    for p in ignore:
        whole &= ~_raster(p, lb, shape)
    whole[:80] = whole[560:] = False  # the letterbox's border
    assert mask.any() and (mask == whole).all()
    assert peak < 5_000_000, peak
