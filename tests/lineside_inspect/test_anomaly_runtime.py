"""Good-only (anomaly) packages on the edge without a server: the card contract (bad cards
refused with a clear message), the map -> regions -> boxes mapping through the letterbox,
and the rules (alone, fused with a detector, a recipe's threshold), all on a real ONNX
graph run by onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineside_inspect.errors import ConfigError, PackageError
from lineside_inspect.imageio import decode_image
from lineside_inspect.inspector import inspect
from lineside_inspect.lifecycle.capture import CapturePolicy
from lineside_inspect.lifecycle.config import CaptureSettings
from lineside_inspect.package import AnomalySpec, load_package
from lineside_inspect.recipes import Recipe, judge
from lineside_inspect.runtime.anomaly import AnomalyFinding, AnomalyModel
from lineside_inspect.runtime.anomaly_map import find_anomalies, regions
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.preprocess import fit
from lineside_inspect.runtime.types import Detections

from .anomaly_package import (
    FOREIGN_GREY,
    anomaly_graph,
    card_doc,
    part,
    write_package,
    write_raw_card,
)

SIZE = 64


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> AnomalyModel:
    folder = write_package(tmp_path_factory.mktemp("good") / "good" / "1", anomaly_graph(SIZE),
                           card_doc("good", SIZE))
    return AnomalyModel(folder, device="cpu", threads=1)


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


# -- the card ------------------------------------------------------------------------------
def _bad(tmp_path: Path, doc: dict[str, Any], **graph: Any) -> str:
    folder = tmp_path / "bad"
    write_package(folder, anomaly_graph(SIZE, **graph), card_doc("bad", SIZE))
    write_raw_card(folder, doc)
    with pytest.raises(PackageError) as err:
        load_package(folder)
    return err.value.message


def test_bad_cards_are_refused_naming_the_problem(tmp_path: Path) -> None:
    good = card_doc("bad", SIZE)
    no_section = {k: v for k, v in good.items() if k != "anomaly"}
    assert "needs an anomaly section" in _bad(tmp_path, no_section)
    assert "class_names ['anomaly']" in _bad(tmp_path, {**good, "class_names": ["scratch"]})
    assert "outputs ['anomaly_map', 'score']" in _bad(
        tmp_path, {**good, "outputs": ["boxes", "scores", "labels"]})
    assert "needs kind 'anomaly'" in _bad(tmp_path, {**good, "kind": "detector",
                                                     "outputs": ["anomaly_map", "score"]})
    assert "kind" in _bad(tmp_path, {**good, "kind": "segmenter"})
    assert "anomaly.threshold" in _bad(tmp_path, {**good, "anomaly": {
        **good["anomaly"], "threshold": 1.5}})
    assert "anomaly.map_threshold" in _bad(tmp_path, {**good, "anomaly": {"threshold": 0.5}})
    # the graph must answer what the card says
    renamed = _bad(tmp_path, good, outputs=("heatmap", "score"))
    assert "outputs ['heatmap', 'score'] do not match card ['anomaly_map', 'score']" in renamed


def test_a_graph_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    folder = write_package(tmp_path / "p", anomaly_graph(SIZE), card_doc("p", SIZE))
    write_raw_card(folder, {**card_doc("p", SIZE), "input": {"name": "images", "size": 32}})
    with pytest.raises(PackageError, match=r"uint8 \[batch, 3, 32, 32\]"):
        load_package(folder)


def test_the_class_metadata_is_optional_but_checked(tmp_path: Path) -> None:
    plain = write_package(tmp_path / "plain", anomaly_graph(SIZE), card_doc("plain", SIZE))
    assert load_package(plain).card.kind == "anomaly"
    named = write_package(tmp_path / "named", anomaly_graph(SIZE, classes=["anomaly"]),
                          card_doc("named", SIZE))
    assert load_package(named).card.class_names == ["anomaly"]
    assert "graph was exported for 2 classes" in _bad(tmp_path, card_doc("bad", SIZE),
                                                      classes=["open", "short"])


def test_a_detector_package_is_not_an_anomaly_model() -> None:
    root = Path(__file__).resolve().parents[2]
    with pytest.raises(PackageError, match="is a detector, not an anomaly model"):
        AnomalyModel(root / "models" / "deeppcb" / "1", device="cpu", threads=1, warmup=False)


# -- map -> regions -> boxes ---------------------------------------------------------------
def test_regions_map_back_through_the_letterbox(model: AnomalyModel) -> None:
    # 320x160: scale 0.2, the part in rows 16..48 of the 64x64 input
    squares = ((40, 30, 50), (230, 90, 40))
    finding = model.analyse([part(320, 160, squares)])[0]
    assert finding.score > 0.9 and finding.threshold == 0.5
    found = finding.regions.to_json()
    assert [d["label"] for d in found] == ["anomaly", "anomaly"]
    truth = [[x, y, x + s, y + s] for x, y, s in squares]
    for t in truth:  # each square is found where it is in the image as sent
        assert max(_iou(d["box"], t) for d in found) > 0.6, (found, t)
    good = model.analyse([part(320, 160)])[0]
    assert good.score < 0.1 and len(good.regions) == 0


def test_small_regions_and_the_letterbox_border_are_not_reported() -> None:
    spec = AnomalySpec(threshold=0.5, map_threshold=0.5, min_region_px=5)
    lb = fit(64, 32, 64)  # rows 16..48 hold the part
    amap = np.zeros((64, 64), np.float32)
    amap[0:10, :] = 1.0  # in the border: not the part
    amap[20:22, 5:7] = 0.9  # 4 px: under min_region_px
    amap[30:35, 40:44] = np.nan  # a broken graph: read as anomalous, never as good
    found = regions(amap, lb, spec)
    assert found.to_json() == [{"label": "anomaly", "score": 1.0, "box": [40.0, 14.0, 44.0, 19.0]}]


def test_a_score_or_map_that_is_not_finite_fails_the_part(model: AnomalyModel) -> None:
    """A score of -inf was clipped to 0 and a NaN map beside a finite score was ignored:
    both passed the part from a broken graph (review, session 33)."""
    _, lbs = model.pre_process([part(320, 160)])
    s = model.size
    for value, score in ((-np.inf, -np.inf), (np.inf, 0.0), (np.nan, 0.1), (0.0, np.nan)):
        amap = np.zeros((1, 1, s, s), np.float32)
        amap[0, 0, s // 2, s // 2] = value
        finding = find_anomalies([amap, np.array([score], np.float32)], lbs, model.card)[0]
        assert finding.score == 1.0 >= finding.threshold, (value, score)
    # outside the part (the letterbox border) the map is not the part's: the score is
    # the map's inside the image (0 here), never above the graph's own
    amap = np.zeros((1, 1, s, s), np.float32)
    amap[0, 0, 0, 0] = np.nan
    assert find_anomalies([amap, np.array([0.1], np.float32)], lbs, model.card)[0].score == 0.0


def test_the_letterbox_border_never_fails_the_part(tmp_path: Path,
                                                  model: AnomalyModel) -> None:
    """A 2.5:1 frame to a model trained on square images failed every time: the graph's
    score came from the letterbox border (0.996 there, 0.56 in the image; new-user review,
    session 50). Real onnxruntime on a package whose padding is the very grey its graph
    calls anomalous: the graph scores the border 1.0, the image under the threshold."""
    folder = write_package(tmp_path / "pad" / "1", anomaly_graph(SIZE),
                           {**card_doc("pad", SIZE), "input": {
                               "name": "images", "size": SIZE,
                               "letterbox": {"pad_value": FOREIGN_GREY}}})
    padded = AnomalyModel(folder, device="cpu", threads=1)
    wide = padded.analyse([part(300, 120)])[0]
    assert wide.score < wide.threshold  # the border left out
    assert wide.whole_score == pytest.approx(1.0)  # the graph's own, said: the border's
    assert wide.score > 0  # the image's edge, blurred into by the border (5x5 mean)
    verdict = judge(Detections.empty(["anomaly"]), Recipe(name="alone", model="pad"), {}, wide)
    assert verdict.outcome == "pass" and not len(wide.regions)
    # a defect inside the wide image still fails it
    flawed = padded.analyse([part(300, 120, ((130, 40, 40),))])[0]
    assert flawed.score >= flawed.threshold and len(flawed.regions) == 1
    verdict = judge(Detections.empty(["anomaly"]), Recipe(name="alone", model="pad"), {},
                    flawed)
    assert verdict.outcome == "fail"
    # a square frame has no border: the graph's own score, as before
    for image in (part(120, 120), part(120, 120, ((50, 50, 20),))):
        batch, _ = model.pre_process([image])
        own = float(model.forward(batch)[1][0])
        square = model.analyse([image])[0]
        assert square.score == own and square.whole_score is None
    assert model.analyse([part(120, 120, ((50, 50, 20),))])[0].score == pytest.approx(1.0)


# -- rules -----------------------------------------------------------------------------------
CLASSES = ["open", "short"]


def _finding(score: float, boxes: list[list[float]]) -> AnomalyFinding:
    regs = Detections(np.array(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.9),
                      np.zeros(len(boxes), np.int64), ["anomaly"])
    return AnomalyFinding(score, 0.5, regs, "good 1")


def test_fused_fails_on_a_defect_or_the_score_and_names_uncovered_regions() -> None:
    recipe = Recipe(name="fused", model="det", anomaly={"model": "good"})
    defects = Detections([[10, 10, 30, 30]], [0.9], [1], CLASSES)
    # one region on the detector's box (reported by its class), one where it saw nothing
    verdict = judge(defects, recipe, {}, _finding(0.8, [[12, 12, 28, 28], [100, 100, 140, 130]]))
    assert verdict.outcome == "fail"
    assert [r.rule for r in verdict.reasons] == ["max_count", "anomaly"]
    anomaly = verdict.reasons[1]
    assert (anomaly.score, anomaly.threshold, anomaly.count) == (0.8, 0.5, 1)
    assert "anomaly score 0.800 >= threshold 0.500" in anomaly.message
    assert verdict.defects.labels == ["short", "anomaly"]
    assert verdict.defects.class_names == ["open", "short", "anomaly"]
    assert verdict.defects.xyxy[1].tolist() == [100, 100, 140, 130]
    # a small box inside a large region reports a part of it: the region is reported too
    # (a 7x10 px box swallowed a 60x30 px stain), and boxes tiling it cover it
    stain = [[90, 72, 150, 102]]
    small = judge(Detections([[100, 80, 107, 90]], [0.9], [1], CLASSES), recipe, {},
                  _finding(0.8, stain))
    assert small.defects.labels == ["short", "anomaly"] and small.reasons[1].count == 1
    tiled = judge(Detections([[90, 72, 120, 102], [120, 72, 150, 102]], [0.9, 0.9], [1, 1],
                             CLASSES), recipe, {}, _finding(0.8, stain))
    assert tiled.defects.labels == ["short", "short"] and tiled.reasons[1].count == 0
    # two classes boxing one place count once: 25x30 of 60x30 is not half
    twice = judge(Detections([[90, 72, 115, 102], [90, 72, 115, 102]], [0.9, 0.8], [0, 1],
                             CLASSES), recipe, {}, _finding(0.8, stain))
    assert twice.defects.labels == ["open", "short", "anomaly"] and twice.reasons[1].count == 1
    # under the threshold the regions are not defects; the detector alone decides
    quiet = judge(Detections.empty(CLASSES), recipe, {}, _finding(0.3, [[100, 100, 140, 130]]))
    assert (quiet.outcome, quiet.reasons, len(quiet.defects)) == ("pass", [], 0)


def test_a_recipe_threshold_overrides_the_card_and_regions_follow_its_rules() -> None:
    strict = Recipe(name="s", model="good", anomaly={"threshold": 0.2})
    lenient = Recipe(name="l", model="good", anomaly={"threshold": 0.9})
    finding = _finding(0.6, [[5, 5, 15, 15], [50, 50, 90, 90]])
    empty = Detections.empty(["anomaly"])
    assert judge(empty, lenient, {}, finding).outcome == "pass"
    assert judge(empty, strict, {}, finding).reasons[0].threshold == 0.2
    # a region in an ignore area or under the minimum size is not reported; the score still fails
    ruled = Recipe(name="r", model="good", min_size_px=12,
                   ignore=[[(40, 40), (100, 40), (100, 100), (40, 100)]])
    verdict = judge(empty, ruled, {}, finding)
    assert verdict.outcome == "fail" and len(verdict.defects) == 0
    assert verdict.reasons[0].count == 0


def test_recipes_that_cannot_work_with_their_models_are_refused() -> None:
    with pytest.raises(ConfigError, match="is a detector: anomaly needs model"):
        Recipe(name="a", model="det", anomaly={"threshold": 0.3}).check_models("detector", CLASSES)
    with pytest.raises(ConfigError, match=r"anomaly\.model det2 is a detector, not an anomaly"):
        Recipe(name="b", model="det", anomaly={"model": "det2"}).check_models(
            "detector", CLASSES, "detector")
    with pytest.raises(ConfigError, match="is itself an anomaly model"):
        Recipe(name="c", model="good", anomaly={"model": "good"}).check_models(
            "anomaly", ["anomaly"], "anomaly")
    with pytest.raises(ConfigError, match="max_count apply to a detector's classes"):
        Recipe(name="d", model="good", max_count={"anomaly": 2}).check_models("anomaly", ["anomaly"])
    Recipe(name="e", model="good", anomaly={"threshold": 0.3}).check_models("anomaly", ["anomaly"])
    Recipe(name="f", model="det", anomaly={"model": "good"}).check_models(
        "detector", CLASSES, "anomaly")


def test_inspect_alone_through_the_one_path(model: AnomalyModel) -> None:
    """The function every server route and camera calls: timings, verdict, reasons, the
    stored class names; a plain Detector on the package judges the same."""
    recipe = Recipe(name="alone", model="good")
    image = part(200, 120, ((20, 20, 30),))
    result = inspect(image, model, recipe)
    plain = inspect(image, Detector(model.package, device="cpu", threads=1), recipe)
    for r in (result, plain):
        assert r.verdict == "fail" and r.reasons[0].rule == "anomaly"
        assert r.defects.labels == ["anomaly"] and r.class_names == ["anomaly"]
        assert r.anomaly is not None and r.anomaly.score > 0.9
    assert set(result.timings_ms) == {"decode", "preprocess", "infer", "postprocess", "total"}
    assert inspect(part(200, 120), model, recipe).verdict == "pass"


def test_a_score_near_the_threshold_is_kept_for_labelling(model: AnomalyModel) -> None:
    """Active learning looks at what a good-only model is judged by: its image score (its
    regions carry no per-class threshold)."""
    policy = CapturePolicy(CaptureSettings(per_hour=10, near_threshold=0.1, random_rate=0.0))
    recipe = Recipe(name="alone", model="good", anomaly={"threshold": 0.65})
    near = part(200, 120)
    near[40:70, 40:70] = FOREIGN_GREY + 12  # scores about 0.62: a pass that almost failed
    result = inspect(near, model, recipe)
    assert result.verdict == "pass" and result.anomaly is not None
    assert 0.55 < result.anomaly.score < 0.65
    assert policy(result) == "near_threshold"
    assert policy(inspect(part(200, 120), model, recipe)) is None  # score 0: far from it
    assert policy(inspect(part(200, 120, ((20, 20, 30),)), model, recipe)) is None  # 1.0: far


def test_a_shadow_detector_is_judged_with_the_served_anomaly(model: AnomalyModel) -> None:
    """A shadow process runs the candidate detector alone: given the finding of the
    good-only model that served, a fused recipe judges it as it judged the served verdict
    (without it, a part only the anomaly failed would be a disagreement)."""
    root = Path(__file__).resolve().parents[2]
    detector = Detector(root / "models" / "deeppcb" / "1", device="cpu", threads=1)
    board = decode_image((root / "datasets" / "deeppcb-sample" / "images" / "group00041" /
                          "00041000_temp.jpg").read_bytes())  # a good board: no defect found
    board[40:100, 520:580] = FOREIGN_GREY
    recipe = Recipe(name="fused", model="deeppcb", anomaly={"model": "good"})
    served = inspect(board, detector, recipe, anomaly_model=model)
    assert served.verdict == "fail" and [r.rule for r in served.reasons] == ["anomaly"]
    shadow = inspect(board, detector, recipe, anomaly_finding=served.anomaly)
    assert (shadow.verdict, shadow.reasons, shadow.defects.to_json()) == \
        (served.verdict, served.reasons, served.defects.to_json())
    assert inspect(board, detector, recipe).verdict == "pass"  # the detector alone


def test_coverage_of_a_region_by_many_boxes_is_linear() -> None:
    """The exact union of rectangles held N x 2N x 2N booleans a region: 400 boxes took
    1 s and 560 MB on the inspection path, and a card may report 5,000 (review, session
    34). On a grid of at most 256 cells a side it is O(N + grid)."""
    from lineside_inspect.package import MAX_DETECTIONS
    from lineside_inspect.recipes.rules import _covered

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (MAX_DETECTIONS, 2)).astype(np.float32)
    many = Detections(np.concatenate([xy, xy + 5], 1), np.ones(MAX_DETECTIONS),
                      np.zeros(MAX_DETECTIONS, np.int64), ["x"])
    region = Detections(np.array([[0, 0, 1010, 1010]], np.float32), np.ones(1),
                        np.zeros(1, np.int64), ["x"])
    assert not _covered(region, many)[0]  # 5,000 specks cover about a tenth of it
    # the left half tiled by 100 strips, the union exact to a cell
    strips = np.array([[x, 0, x + 5.05, 1010] for x in np.arange(0, 505, 5.05)], np.float32)
    half = Detections(strips, np.ones(len(strips)), np.zeros(len(strips), np.int64), ["x"])
    assert _covered(region, half)[0]
    assert not _covered(region, half, share=0.52)[0]


def test_coverage_of_a_small_region_is_its_covered_share() -> None:
    """A pixel a cell misjudged small regions by a cell per box edge: 60% of a 3x3 px
    region read 33% (review, session 34)."""
    from lineside_inspect.recipes.rules import _covered_share

    region = np.array([0, 0, 3, 3], float)
    assert abs(_covered_share(region, np.array([[0.6, 0, 2.4, 3]])) - 0.6) < 0.01
    assert abs(_covered_share(np.array([0, 0, 2, 2], float), np.array([[0, 0, 1, 1]])) - 0.25) < 0.01
    assert _covered_share(region, np.array([[0, 0, 3, 3]])) == 1.0


def test_a_recipe_threshold_under_the_map_threshold_still_shows_where(model: AnomalyModel) -> None:
    """A recipe's threshold below the card's map_threshold failed a faint patch with no
    box: its pixels all stayed under map_threshold (review, session 39). Regions now start
    at the threshold the part is judged at."""
    image = part(200, 120)
    image[40:80, 60:100] = FOREIGN_GREY + 22  # map about 0.3: under the card's 0.5
    result = inspect(image, model, Recipe(name="strict", model="good", anomaly={"threshold": 0.2}))
    assert result.verdict == "fail" and result.anomaly is not None
    assert 0.2 <= result.anomaly.score < 0.5, result.anomaly.score
    found = result.defects.to_json()
    assert [d["label"] for d in found] == ["anomaly"], found
    assert _iou(found[0]["box"], [60, 40, 100, 80]) > 0.5, found
    # at the card's threshold the same part passes, and a part with no patch shows nothing
    assert inspect(image, model, Recipe(name="card", model="good")).verdict == "pass"


def test_a_fail_with_no_region_in_the_map_reports_the_whole_image() -> None:
    """A score at the threshold with no region (specks under min_region_px, a peak in the
    letterbox border) failed the part with no box; a reviewer saw a fail and nothing."""
    empty = Detections.empty(["anomaly"])
    finding = AnomalyFinding(0.7, 0.5, empty, "good 1", (320, 160))
    verdict = judge(empty, Recipe(name="alone", model="good"), {}, finding)
    assert verdict.outcome == "fail"
    assert verdict.defects.to_json() == [{"label": "anomaly", "score": 0.7,
                                          "box": [0.0, 0.0, 320.0, 160.0]}]
    assert verdict.reasons[0].count == 1 and "whole image" in verdict.reasons[0].message
    # a region a counted defect covers is left to it, and the message says so: a fused
    # fail read "0 region(s)" (new-user review, session 50)
    covered = AnomalyFinding(0.7, 0.5, Detections([[12, 12, 28, 28]], [0.8], [0], ["anomaly"]),
                             "good 1", (320, 160))
    fused_covered = judge(Detections([[10, 10, 30, 30]], [0.9], [1], CLASSES),
                          Recipe(name="fused", model="det", anomaly={"model": "good"}), {},
                          covered)
    assert fused_covered.defects.labels == ["short"]
    assert fused_covered.reasons[-1].message.endswith(
        "0 region(s), 1 on the detector's defect boxes (left to their class)")
    # beside a detector's counted defect the fail already says where: no whole-image box
    fused = judge(Detections([[10, 10, 30, 30]], [0.9], [1], CLASSES),
                  Recipe(name="fused", model="det", anomaly={"model": "good"}), {}, finding)
    assert fused.defects.labels == ["short"]
