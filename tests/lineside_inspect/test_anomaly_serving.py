"""Good-only (anomaly) models through a real server: alone, fused with the bundled
detector, recipes refused when their models cannot serve them, bad packages refused over
the admin API, the stored record and its review, the annotated image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from lineside_inspect.imageio import decode_image
from lineside_inspect.opencv import cv2

from .anomaly_package import FOREIGN_GREY, anomaly_graph, card_doc, part, write_package, write_raw_card
from .conftest import CHROMIUM, MODEL, SAMPLE, Running, keyed, start_server
from .test_review_page import signed_in

JPEG = {"content-type": "image/jpeg"}
GOOD_BOARD = SAMPLE / "images" / "group00041" / "00041000_temp.jpg"  # the detector finds nothing
DEFECTIVE_BOARD = SAMPLE / "images" / "group00041" / "00041000_test.jpg"
SQUARE = (520, 40, 60)  # x, y, side: bare board on both, no defect of the test image near it


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)  # lossless: the foreign square keeps its grey
    assert ok
    return bytes(data)


def _board(path: Path, square: bool) -> bytes:
    image = decode_image(path.read_bytes())
    if square:
        x, y, side = SQUARE
        image[y:y + side, x:x + side] = FOREIGN_GREY
    return _jpeg(image)


def _red(pixels: np.ndarray) -> np.ndarray:
    """Where a BGR image is drawn red (the parts and boards themselves are grey)."""
    p = pixels.astype(int)
    return (p[..., 2] - p[..., 1] > 40) & (p[..., 2] - p[..., 0] > 40)


def _recipe(folder: Path, doc: dict[str, object]) -> str:
    path = folder / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Path]]:
    root = tmp_path_factory.mktemp("anomaly-models")
    # alone: 128 px, its border the part's own grey; fused: the detector's 640 px and border
    alone = write_package(root / "good" / "1", anomaly_graph(128), card_doc("good", 128))
    fused = write_package(root / "board-good" / "1", anomaly_graph(640),
                          {**card_doc("board-good", 640),
                           "input": {"name": "images", "size": 640}})
    recipes = root / "recipes"
    recipes.mkdir()
    paths = [_recipe(recipes, {"name": "deeppcb", "model": "deeppcb"}),
             _recipe(recipes, {"name": "alone", "model": "good"}),
             _recipe(recipes, {"name": "alone-lenient", "model": "good",
                               "anomaly": {"threshold": 1.0}}),
             _recipe(recipes, {"name": "fused", "model": "deeppcb",
                               "anomaly": {"model": "board-good"}})]
    running, stop = start_server(keyed(models=[str(MODEL), str(alone), str(fused)],
                                       recipes=paths, model_roots=[str(root)]))
    yield running, root
    stop()


def test_alone_a_good_part_passes_and_a_foreign_one_fails_with_its_box(served) -> None:
    srv, _ = served
    with srv.client("line") as c:
        good = c.post("/v1/inspect?recipe=alone", content=_jpeg(part(400, 250)), headers=JPEG)
        assert good.status_code == 200, good.text
        assert (good.json()["verdict"], good.json()["reasons"], good.json()["defects"]) == \
            ("pass", [], [])
        r = c.post("/v1/inspect?recipe=alone", content=_jpeg(part(400, 250, ((300, 60, 50),))),
                   headers=JPEG)
        doc = r.json()
    assert r.status_code == 200 and doc["verdict"] == "fail", doc
    assert doc["model"]["name"] == "good"
    [reason] = doc["reasons"]
    assert reason["rule"] == "anomaly" and reason["label"] == "anomaly"
    assert reason["score"] > 0.9 and reason["threshold"] == 0.5 and reason["count"] == 1
    [defect] = doc["defects"]
    x1, y1, x2, y2 = defect["box"]  # in the 400x250 image as sent, around the square
    assert defect["label"] == "anomaly" and defect["score"] > 0.9
    assert 290 <= x1 <= 310 and 50 <= y1 <= 70 and 340 <= x2 <= 360 and 100 <= y2 <= 120


def test_a_recipe_threshold_over_the_score_passes_the_part(served) -> None:
    srv, _ = served
    with srv.client("line") as c:
        # the lenient recipe's threshold is 1.0: a faint foreign patch scores under it
        faint = part(400, 250)
        faint[100:130, 100:130] = FOREIGN_GREY + 12  # scores about 0.62
        r = c.post("/v1/inspect?recipe=alone-lenient", content=_jpeg(faint), headers=JPEG)
        assert r.json()["verdict"] == "pass", r.json()
        r = c.post("/v1/inspect?recipe=alone", content=_jpeg(faint), headers=JPEG)
        assert r.json()["verdict"] == "fail"
        assert 0.5 <= r.json()["reasons"][0]["score"] < 1.0


def test_fused_reports_detector_defects_and_the_anomaly_where_it_saw_none(served) -> None:
    srv, _ = served
    with srv.client("line") as c:
        good = c.post("/v1/inspect?recipe=fused", content=_board(GOOD_BOARD, False), headers=JPEG)
        assert good.json()["verdict"] == "pass", good.json()
        # a good board with a foreign patch: only the good-only model sees it
        only = c.post("/v1/inspect?recipe=fused", content=_board(GOOD_BOARD, True),
                      headers=JPEG).json()
        assert only["verdict"] == "fail"
        assert [r["rule"] for r in only["reasons"]] == ["anomaly"]
        assert [d["label"] for d in only["defects"]] == ["anomaly"]
        # a defective board with the patch: the detector's defects and the anomaly together
        both = c.post("/v1/inspect?recipe=fused&part_id=SN1", content=_board(DEFECTIVE_BOARD, True),
                      headers=JPEG).json()
        plain = c.post("/v1/inspect?recipe=deeppcb", content=_board(DEFECTIVE_BOARD, True),
                       headers=JPEG).json()
    rules = [r["rule"] for r in both["reasons"]]
    assert rules[-1] == "anomaly" and len(rules) >= 2 and both["model"]["name"] == "deeppcb"
    detector_labels = [d["label"] for d in plain["defects"]]
    assert detector_labels and "anomaly" not in detector_labels
    assert [d["label"] for d in both["defects"]] == [*detector_labels, "anomaly"]
    x, y, side = SQUARE
    ax1, ay1, ax2, ay2 = both["defects"][-1]["box"]
    assert abs(ax1 - x) <= 6 and abs(ay1 - y) <= 6 and abs(ax2 - x - side) <= 6 \
        and abs(ay2 - y - side) <= 6
    assert both["timings_ms"]["infer"] > 0

    # stored with "anomaly" among its classes: a reviewer can relabel and draw anomalies
    with srv.client("reviewer") as c:
        stored = c.get(f"/v1/inspections/{both['id']}").json()
        assert stored["class_names"][-1] == "anomaly" and stored["reasons"] == both["reasons"]
        r = c.post(f"/v1/inspections/{both['id']}/reviews",
                   json={"action": "missed_defect", "boxes": [{"label": "anomaly",
                                                              "box": [10, 10, 30, 30]}]})
        assert r.status_code == 200, r.text
        annotated = decode_image(c.get(f"/v1/inspections/{both['id']}/annotated").content)
    # the anomaly's box is drawn like a defect's: red on its edge, where the board is grey
    assert _red(annotated[int(ay1) + 10:int(ay2) - 10, int(ax1)]).mean() > 0.8


def test_annotated_answer_draws_the_anomaly(served) -> None:
    srv, _ = served
    with srv.client("line") as c:
        r = c.post("/v1/inspect?recipe=alone&annotated=1",
                   content=_jpeg(part(400, 250, ((300, 60, 50),))), headers=JPEG)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    drawn = decode_image(r.content)
    box = r.headers  # the JPEG carries no boxes: find the drawn ones by colour, on a grey part
    assert box["content-type"] == "image/jpeg"
    columns = _red(drawn[80:100]).mean(axis=0)  # the box's sides, around x 300 and 350
    assert columns[290:312].max() > 0.8 and columns[340:362].max() > 0.8
    assert columns[:280].max() == 0 and columns[370:].max() == 0


def test_recipes_their_models_cannot_serve_are_refused(served) -> None:
    srv, _ = served
    cases = {
        "d1": ({"model": "deeppcb", "anomaly": {"model": "deeppcb"}}, "is a detector, not an anomaly"),
        "d2": ({"model": "deeppcb", "anomaly": {"threshold": 0.4}}, "anomaly needs model"),
        "d3": ({"model": "good", "critical": ["anomaly"]}, "critical apply to a detector's classes"),
        "d4": ({"model": "good", "anomaly": {"model": "board-good"}}, "is itself an anomaly model"),
        "d5": ({"model": "deeppcb", "anomaly": {"model": "nope"}}, "unknown model 'nope'"),
        "d6": ({"model": "good", "anomaly": {"threshold": 1.5}}, "anomaly.threshold"),
    }
    with srv.client("admin") as c:
        for name, (body, message) in cases.items():
            r = c.put(f"/v1/recipes/{name}", json={"name": name, **body})
            assert 400 <= r.status_code < 500, (name, r.text)
            assert message in r.json()["error"]["message"], (name, r.json())
        ok = c.put("/v1/recipes/fused2", json={"name": "fused2", "model": "deeppcb",
                                               "anomaly": {"model": "board-good", "threshold": 0.3}})
        assert ok.status_code == 200, ok.text
        listed = {r["name"]: r for r in c.get("/v1/recipes").json()}
        assert listed["fused2"]["anomaly"] == {"model": "board-good", "model_version": None,
                                               "threshold": 0.3}


def test_bad_anomaly_packages_are_refused_over_the_api(served) -> None:
    srv, root = served
    bad = write_package(root / "broken" / "1", anomaly_graph(64), card_doc("broken", 64))
    write_raw_card(bad, {**card_doc("broken", 64), "class_names": ["scratch", "dent"]})
    kind = write_package(root / "deeppcb" / "7", anomaly_graph(64), {**card_doc("deeppcb", 64),
                                                                     "version": "7"})
    with srv.client("admin") as c:
        r = c.post("/v1/models", json={"path": str(bad)})
        assert r.status_code == 422
        assert r.json()["error"]["message"].endswith(
            "model.json: kind 'anomaly' has class_names ['anomaly'], card lists ['scratch', 'dent']")
        # a name keeps its kind: recipes on the detector were checked against it
        r = c.post("/v1/models", json={"path": str(kind)})
        assert r.status_code == 422 and "a model name keeps its kind" in r.json()["error"]["message"]
        assert c.get("/v1/models").status_code == 200
    with srv.client("line") as c:
        assert c.post("/v1/inspect?recipe=deeppcb", content=_board(GOOD_BOARD, False),
                      headers=JPEG).json()["model"]["version"] == "1"


def test_models_and_the_v2_protocol_describe_an_anomaly_model(served) -> None:
    """OIP v2 clients get the graph's own outputs; GET /v1/models says which kind."""
    srv, _ = served
    image = part(128, 128, ((10, 10, 20),))[:, :, ::-1]  # the model's RGB input at 128
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 3, 128, 128],
                        "data": image.transpose(2, 0, 1).ravel().tolist()}]}
    with srv.client("line") as c:
        meta = c.get("/v2/models/good").json()
        assert [(o["name"], o["shape"]) for o in meta["outputs"]] == \
            [("anomaly_map", [-1, 1, 128, 128]), ("score", [-1])]
        r = c.post("/v2/models/good/infer", json=body)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["anomaly_map"]["shape"] == [1, 1, 128, 128] and out["score"]["shape"] == [1]
        assert out["score"]["data"][0] > 0.9
        # an answer of more values than one response may carry is refused, naming the way
        # out (a map is 409,600 values an image at 640 px: a batch of 26 was a 210 MB answer)
        from lineside_inspect.server.routes import v2

        cap, v2.MAX_ANSWER_VALUES = v2.MAX_ANSWER_VALUES, 128 * 128
        try:
            r = c.post("/v2/models/good/infer", json=body)
            assert r.status_code == 413 and r.json()["code"] == "answer_too_large"
            assert "16,385 values" in r.text and "anomaly_map, score" in r.text, r.text
            r = c.post("/v2/models/good/infer", json={**body, "outputs": [{"name": "score"}]})
            assert r.status_code == 200, r.text
            assert [o["name"] for o in r.json()["outputs"]] == ["score"]
        finally:
            v2.MAX_ANSWER_VALUES = cap
    with srv.client("admin") as c:
        kinds = {m["name"]: m["versions"][0]["kind"] for m in c.get("/v1/models").json()}
    assert kinds == {"deeppcb": "detector", "good": "anomaly", "board-good": "anomaly"}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_review_page_shows_the_anomaly_score_and_boxes(served, browser: Any) -> None:
    from playwright.sync_api import expect

    srv, _ = served
    with srv.client("line") as c:
        r = c.post("/v1/inspect?recipe=alone&part_id=SN-ANOMALY",
                   content=_jpeg(part(400, 250, ((300, 60, 50),))), headers=JPEG)
        assert r.json()["verdict"] == "fail"
    page = signed_in(browser, srv.url)  # the module's Chromium, a context of its own
    page.locator(".card").first.wait_for()
    page.keyboard.press("Enter")  # the newest unreviewed fail: this one
    expect(page.locator("#d-meta")).to_contain_text("part SN-ANOMALY")
    expect(page.locator("#d-reasons")).to_contain_text("anomaly score 1.000 >= threshold 0.500")
    expect(page.locator("#d-defects li")).to_have_count(1)
    expect(page.locator("#d-defects li")).to_contain_text("anomaly 1.00")
    expect(page.locator("#boxes > *")).to_have_count(1)
    expect(page.locator("#d-label option")).to_have_text(["1 anomaly"])  # key 1 picks it
