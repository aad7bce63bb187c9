"""`data pull` of a recipe with a `roi` and `ignore`: the area its recipe never judged
(outside every roi, inside an ignore) held the model's boxes nobody counted nor reviewed,
and was pulled as background: training learned those defects as good board (an ML
engineer's walk, session 56). It is painted out now, in the frame and its golden alike,
the truth's boxes kept; a version whose regions the pull cannot know is pulled whole and
said. A real server with the bundled reference model and the sample's pair."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineside_inspect.dataset import ImageRecord, dataset_stats, read_dataset, validate_dir
from lineside_inspect.dataset.painted import painted_area
from lineside_inspect.imageio import read_image
from lineside_inspect.package import PAD_VALUE
from lineside_inspect.store.pull import pull_from_server, pull_from_store

from .conftest import ROOT, Running, keyed, numbered, start_server

REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"
PAIR = ROOT / "datasets" / "deeppcb-sample" / "images" / "group00041"
LEFT = [[0, 0], [320, 0], [320, 640], [0, 640]]  # v1's roi: the left half
IGNORE = [[80, 440], [140, 440], [140, 520], [80, 520]]  # a copper defect's place
DRAWN = [538, 259, 594, 315]  # a reviewer's box outside the roi (the model's `open`)


def _recipe(version: str, roi: list[list[int]], ignore: list[list[int]]) -> dict[str, Any]:
    return {"name": "ref-roi", "version": version, "model": "deeppcb-ref", "roi": [roi],
            "ignore": [ignore] if ignore else [], "min_size_px": 8}


@pytest.fixture(scope="module")
def station() -> Iterator[tuple[Running, dict[str, Any]]]:
    """One pair judged under version 1 (left half, a copper defect's place ignored), a
    reviewer drawing the `open` the roi left out; version 1 then replaced by version 2
    (the top half), under which the pair is judged again and confirmed (its frame another
    file of the same pixels, a camera's frame counter: one byte-identical picture
    inspected twice is pulled once)."""
    srv, stop = start_server(keyed(models=[str(REF_MODEL)], store_pass_rate=1.0))
    got: dict[str, Any] = {}
    try:
        with srv.client("admin") as c:
            assert c.put("/v1/references/golden", content=(PAIR / "00041000_temp.jpg").read_bytes(),
                         headers={"content-type": "image/jpeg"}).status_code == 200
            for version, roi, ignore in (("1", LEFT, IGNORE),
                                         ("2", [[0, 0], [640, 0], [640, 200], [0, 200]], [])):
                r = c.put("/v1/recipes/ref-roi", json=_recipe(version, roi, ignore))
                assert r.status_code == 200, r.text
                frame = numbered((PAIR / "00041000_test.jpg").read_bytes(), int(version))
                r = c.post("/v1/inspect", params={"recipe": "ref-roi", "reference": "golden"},
                           files={"image": ("f.jpg", frame, "image/jpeg")})
                assert r.status_code == 200 and r.json()["stored"], r.text
                got[version] = r.json()
        # v1 counted only what lies in the left half and outside the ignored square
        assert got["1"]["verdict"] == "fail"
        assert all((d["box"][0] + d["box"][2]) / 2 < 320 for d in got["1"]["defects"])
        with srv.client("reviewer") as c:
            r = c.post(f"/v1/inspections/{got['1']['id']}/reviews",
                       json={"action": "missed_defect",
                             "boxes": [{"label": "open", "box": DRAWN}]})
            assert r.status_code == 200, r.text
            r = c.post(f"/v1/inspections/{got['2']['id']}/reviews", json={"action": "confirm"})
            assert r.status_code == 200, r.text
        srv.app.state.store.flush()
        yield srv, got
    finally:
        stop()


def _pull(srv: Running, how: str, dst: Path) -> None:
    if how == "server":
        pull_from_server(srv.url, dst, key="reviewer-secret")
    else:
        pull_from_store(srv.app.state.store, dst)


def _pull_with_versions_file(srv: Running, how: str, dst: Path,
                             edit: Callable[[dict[str, Any]], None]) -> None:
    """A pull while the station's versions file of ``ref-roi`` reads as ``edit`` leaves it
    (hand-edited, or of an earlier release); put back after: the station is the module's."""
    path = srv.app.state.saved_recipes.folder / ".versions" / "ref-roi.json"
    kept = path.read_bytes()
    doc = json.loads(kept)
    edit(doc)
    path.write_text(json.dumps(doc))
    try:
        _pull(srv, how, dst)
    finally:
        path.write_bytes(kept)


def _frames(dst: Path) -> dict[str, ImageRecord]:
    """The pulled set's frames (the records with a golden), by inspection id."""
    return {Path(r.file_name).stem: r for r in read_dataset(dst).images
            if r.reference is not None}


def test_a_reviewer_reads_a_recipes_regions_a_viewer_does_not(
        station: tuple[Running, dict[str, Any]]) -> None:
    srv, _ = station
    with srv.client("reviewer") as c:
        r = c.get("/v1/recipes/ref-roi/regions")
        # version 2 judges now; version 1's regions are kept beside its rules' digest
        assert r.status_code == 200 and r.json() == {
            "name": "ref-roi", "version": "2", "versions": {
                "1": {"roi": [_floats(LEFT)], "ignore": [_floats(IGNORE)]},
                "2": {"roi": [[[0.0, 0.0], [640.0, 0.0], [640.0, 200.0], [0.0, 200.0]]],
                      "ignore": []}}}, r.text
        assert c.get("/v1/recipes/nope/regions").status_code == 404
        assert c.get("/v1/recipes/..x/regions").status_code == 422
    with srv.client("viewer") as c:
        assert c.get("/v1/recipes/ref-roi/regions").status_code == 403
    with srv.client() as c:
        assert c.get("/v1/recipes/ref-roi/regions").status_code == 401


@pytest.mark.parametrize("how", ["server", "store"])
def test_what_the_recipe_never_judged_is_painted_out_not_background(
        station: tuple[Running, dict[str, Any]], how: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    srv, got = station
    with caplog.at_level(logging.INFO, logger="lineside"):
        _pull(srv, how, tmp_path / "pulled")
    assert validate_dir(tmp_path / "pulled") == []
    by_id = _frames(tmp_path / "pulled")
    sent = read_image(PAIR / "00041000_test.jpg")
    golden = read_image(PAIR / "00041000_temp.jpg")
    # version 2 judges now: its frame is painted below y = 200, its golden alike
    rec = by_id[got["2"]["id"]]
    assert rec.file_name.endswith(".png")
    frame = read_image(tmp_path / "pulled" / "images" / rec.file_name)
    ref = read_image(tmp_path / "pulled" / "images" / str(rec.reference))
    judged = np.zeros(frame.shape[:2], dtype=bool)
    judged[:200] = True
    for b in rec.boxes:  # (the truth's boxes are kept whole, any reaching below 200)
        judged[int(b.y1):int(np.ceil(b.y2)), int(b.x1):int(np.ceil(b.x2))] = True
    assert np.array_equal(frame[judged], sent[judged])
    assert np.array_equal(ref[judged], golden[judged])
    assert (frame[~judged] == PAD_VALUE).all() and (ref[~judged] == PAD_VALUE).all()
    # a defect the model saw below 200 (the `short` at x 457..494, y 303..398) is no
    # background in the set any more: grey, as the letterbox's border
    assert (frame[303:398, 457:494] == PAD_VALUE).all()
    assert [b.label for b in rec.boxes] == [d["label"] for d in got["2"]["defects"]]
    # version 1 no longer judges; its regions are kept beside its rules' digest (session
    # 56: it was pulled whole), so its frame is painted by them: the `short` right of its
    # roi and the copper it ignored grey, the `open` a reviewer drew there kept
    old = by_id[got["1"]["id"]]
    assert old.file_name.endswith(".png")
    _painted_as_version_1(read_image(tmp_path / "pulled" / "images" / old.file_name), sent)
    assert "open" in [b.label for b in old.boxes]
    info = json.loads((tmp_path / "pulled" / "annotations.json").read_text())["info"]
    assert sorted(info["outside_recipe_regions"]["painted_out"]) == sorted(
        [rec.file_name, old.file_name])
    assert "recipe_regions_unknown" not in info
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 frame(s) painted out" in m for m in said), said
    assert not any("pulled whole" in m for m in said), said


@pytest.mark.parametrize("how", ["server", "store"])
def test_a_version_kept_by_an_earlier_release_is_pulled_whole_and_said(
        station: tuple[Running, dict[str, Any]], how: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A versions file of session 55 holds digests only: version 1's regions are not
    known (nothing guessed), its frame pulled whole and said, version 2's painted."""
    srv, got = station

    def of_session_55(doc: dict[str, Any]) -> None:
        assert set(doc["regions"]) == {"1", "2"}
        del doc["regions"]

    with caplog.at_level(logging.WARNING, logger="lineside"):
        _pull_with_versions_file(srv, how, tmp_path / "pulled", of_session_55)
    by_id = _frames(tmp_path / "pulled")
    old = by_id[got["1"]["id"]]
    sent = read_image(PAIR / "00041000_test.jpg")
    assert np.array_equal(read_image(tmp_path / "pulled" / "images" / old.file_name), sent)
    assert by_id[got["2"]["id"]].file_name.endswith(".png")  # (judging now: known)
    info = json.loads((tmp_path / "pulled" / "annotations.json").read_text())["info"]
    assert info["recipe_regions_unknown"] == {"ref-roi:1": [old.file_name]}
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("pulled whole" in m and "ref-roi version 1 (1)" in m for m in said), said


def test_a_configured_recipes_earlier_version_is_painted_from_server_and_store(
        tmp_path: Path) -> None:
    """A configured recipe's version keeps its regions as it starts judging: once its
    file says version 2, version 1's frames are still painted by version 1's roi, pulled
    from the server and from the store folder (a configured recipe's file is not in it)."""
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(json.dumps(_recipe("1", LEFT, IGNORE)))
    v2.write_text(json.dumps(_recipe("2", [[0, 0], [640, 0], [640, 640], [0, 640]], [])))
    data = tmp_path / "data"
    srv, stop = start_server(keyed(models=[str(REF_MODEL)], recipes=[str(v1)],
                                   data_dir=str(data), store_pass_rate=1.0))
    try:
        with srv.client("admin") as c:
            assert c.put("/v1/references/golden", content=(PAIR / "00041000_temp.jpg").read_bytes(),
                         headers={"content-type": "image/jpeg"}).status_code == 200
            r = c.post("/v1/inspect", params={"recipe": "ref-roi", "reference": "golden"},
                       files={"image": ("f.jpg", (PAIR / "00041000_test.jpg").read_bytes(),
                                        "image/jpeg")})
            assert r.status_code == 200 and r.json()["stored"], r.text
            made = r.json()
        with srv.client("reviewer") as c:
            assert c.post(f"/v1/inspections/{made['id']}/reviews", json={
                "action": "missed_defect",
                "boxes": [{"label": "open", "box": DRAWN}]}).status_code == 200
        srv.app.state.store.flush()
    finally:
        stop()
    srv, stop = start_server(keyed(models=[str(REF_MODEL)], recipes=[str(v2)],
                                   data_dir=str(data), store_pass_rate=1.0))
    try:
        with srv.client("reviewer") as c:
            assert c.get("/v1/recipes/ref-roi/regions").json()["version"] == "2"
        for how in ("server", "store"):
            _pull(srv, how, tmp_path / how)
    finally:
        stop()
    sent = read_image(PAIR / "00041000_test.jpg")
    for how in ("server", "store"):
        rec = next(r for r in read_dataset(tmp_path / how).images if r.reference is not None)
        assert Path(rec.file_name).name == f"{made['id']}.png", how
        _painted_as_version_1(read_image(tmp_path / how / "images" / rec.file_name), sent)


def test_a_hostile_versions_file_leaves_its_regions_unknown_not_a_failure(
        tmp_path: Path) -> None:
    """Regions read back from the data folder are held to a recipe's rules: an entry
    that is not (a polygon of no point, which the painting could not draw; a version with
    no digest; not a mapping) is left out and said, the rest read."""
    from lineside_inspect.recipes import Recipe
    from lineside_inspect.recipes.saved import SavedRecipes

    saved = SavedRecipes(tmp_path / "recipes")
    saved.remember("ref-roi", Recipe.model_validate(_recipe("1", LEFT, IGNORE)))
    path = tmp_path / "recipes" / ".versions" / "ref-roi.json"
    doc = json.loads(path.read_text())
    doc["versions"]["2"] = doc["versions"]["1"].replace(doc["versions"]["1"][0], "0")
    doc["regions"].update({"2": {"roi": [[]]}, "3": {"roi": [LEFT]}})
    path.write_text(json.dumps(doc))
    assert list(saved.regions("ref-roi")) == ["1"]
    doc["regions"] = ["not", "a", "mapping"]
    path.write_text(json.dumps(doc))
    assert saved.regions("ref-roi") == {}
    assert set(saved.judged("ref-roi")) == {"1", "2"}  # (the digests read still)


@pytest.mark.parametrize("how", ["server", "store"])
def test_a_reviewers_box_outside_the_roi_is_kept_and_the_ignored_area_painted(
        tmp_path: Path, how: str) -> None:
    """Pulled while version 1 still judges: its left half is kept, the ignored square
    and the right half painted, but for the box a reviewer drew there."""
    srv, stop = start_server(keyed(models=[str(REF_MODEL)], store_pass_rate=1.0))
    try:
        with srv.client("admin") as c:
            assert c.put("/v1/references/golden", content=(PAIR / "00041000_temp.jpg").read_bytes(),
                         headers={"content-type": "image/jpeg"}).status_code == 200
            assert c.put("/v1/recipes/ref-roi", json=_recipe("1", LEFT, IGNORE)).status_code == 200
            r = c.post("/v1/inspect", params={"recipe": "ref-roi", "reference": "golden"},
                       files={"image": ("f.jpg", (PAIR / "00041000_test.jpg").read_bytes(),
                                        "image/jpeg")})
            assert r.status_code == 200, r.text
            made = r.json()
        with srv.client("reviewer") as c:
            assert c.post(f"/v1/inspections/{made['id']}/reviews", json={
                "action": "missed_defect",
                "boxes": [{"label": "open", "box": DRAWN}]}).status_code == 200
        srv.app.state.store.flush()
        _pull(srv, how, tmp_path / "pulled")
    finally:
        stop()
    assert validate_dir(tmp_path / "pulled") == []
    rec = next(r for r in read_dataset(tmp_path / "pulled").images if r.reference is not None)
    frame = read_image(tmp_path / "pulled" / "images" / rec.file_name)
    sent = read_image(PAIR / "00041000_test.jpg")
    assert [b.xyxy() for b in rec.boxes if b.label == "open"] == [tuple(map(float, DRAWN))]
    x1, y1, x2, y2 = DRAWN
    assert np.array_equal(frame[y1:y2, x1:x2], sent[y1:y2, x1:x2])  # the reviewer's box
    assert np.array_equal(frame[:, :300], np.where(  # the left half, but the ignored square
        _square(frame.shape, IGNORE)[:, :300, None], PAD_VALUE, sent[:, :300]))
    assert (frame[469:497, 90:128] == PAD_VALUE).all()  # the copper the recipe ignored
    assert (frame[303:398, 457:494] == PAD_VALUE).all()  # the `short` right of the roi


def _floats(polygon: list[list[int]]) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in polygon]


def _painted_as_version_1(frame: np.ndarray, sent: np.ndarray) -> None:
    """``frame`` painted by version 1's regions: its roi's left part as sent but for the
    ignored square, the `short` right of the roi and the ignored copper grey, the `open` a
    reviewer drew right of the roi kept."""
    x1, y1, x2, y2 = DRAWN
    assert np.array_equal(frame[y1:y2, x1:x2], sent[y1:y2, x1:x2])
    assert np.array_equal(frame[:, :300], np.where(
        _square(frame.shape, IGNORE)[:, :300, None], PAD_VALUE, sent[:, :300]))
    assert (frame[469:497, 90:128] == PAD_VALUE).all()
    assert (frame[303:398, 457:494] == PAD_VALUE).all()


def _square(shape: tuple[int, ...], polygon: list[list[int]]) -> np.ndarray:
    out = np.zeros(shape[:2], dtype=bool)
    (x1, y1), (x2, y2) = polygon[0], polygon[2]
    out[y1:y2, x1:x2] = True
    return out


@pytest.mark.parametrize("how", ["server", "store"])
def test_a_version_of_too_many_points_is_pulled_whole_not_painted_for_ever(
        station: tuple[Running, dict[str, Any]], how: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Painting costs rows x edges for each frame an alignment shifted: a roi of a
    million points (a hostile server's answer, a hand-edited versions file) took 10 s a
    frame. A version past MAX_PAINTED_POINTS is pulled whole and said (adversarial
    review, session 56)."""
    from lineside_inspect.dataset.painted import MAX_PAINTED_POINTS

    srv, got = station
    n = MAX_PAINTED_POINTS + 1  # a circle in the left half: a polygon the rules accept

    def too_many_points(doc: dict[str, Any]) -> None:
        doc["regions"]["1"] = {"roi": [[[160 + 150 * np.cos(2 * np.pi * i / n),
                                         320 + 150 * np.sin(2 * np.pi * i / n)]
                                        for i in range(n)]]}

    with caplog.at_level(logging.WARNING, logger="lineside"):
        _pull_with_versions_file(srv, how, tmp_path / "pulled", too_many_points)
    by_id = _frames(tmp_path / "pulled")
    old = by_id[got["1"]["id"]]
    assert np.array_equal(read_image(tmp_path / "pulled" / "images" / old.file_name),
                          read_image(PAIR / "00041000_test.jpg"))
    assert by_id[got["2"]["id"]].file_name.endswith(".png")  # (version 2: painted)
    info = json.loads((tmp_path / "pulled" / "annotations.json").read_text())["info"]
    assert info["recipe_regions_unknown"] == {"ref-roi:1": [old.file_name]}
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"hold {n} points" in m for m in said), said


def test_the_set_says_each_painted_frames_regions_and_stats_counts_them(
        station: tuple[Running, dict[str, Any]], tmp_path: Path) -> None:
    """`data stats` said nothing of the painted frames, and the set kept no word of which
    regions painted them: evaluation scored the model's boxes on the grey (session 56).
    The painted area read back from the set is exactly the grey the pull wrote."""
    srv, got = station
    _pull(srv, "store", tmp_path / "pulled")
    ds = read_dataset(tmp_path / "pulled")
    said = ds.info["outside_recipe_regions"]
    assert isinstance(said, dict)
    assert said["judged_by"] == {f"{n}": f"ref-roi:{v}" for v in ("1", "2")
                                 for n in said["painted_out"] if got[v]["id"] in n}
    assert said["regions"]["ref-roi:1"] == {"roi": [_floats(LEFT)], "ignore": [_floats(IGNORE)]}
    assert dataset_stats(ds)["painted_out"] == 2
    for rec in ds.images:
        area = painted_area(ds, rec)
        if rec.reference is None:  # a golden is no frame a recipe judged
            assert area is None
            continue
        assert area is not None
        frame = read_image(tmp_path / "pulled" / "images" / rec.file_name)
        assert (frame[area] == PAD_VALUE).all()
        assert not (frame[~area] == PAD_VALUE).all(axis=-1).all()


@pytest.mark.parametrize("how", ["server", "store"])
def test_a_picture_inspected_again_is_pulled_once_however_its_copies_were_painted(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    """One picture inspected three times, byte for byte (a client's retry, a PLC
    re-trigger): ``a`` and ``b`` under version 1, ``a`` with the `open` a reviewer drew
    right of the roi (kept unpainted there: its written bytes differ from ``b``'s), ``c``
    under version 2 (another roi: painted elsewhere). The copy check compared the painted
    bytes, so all three went in but ``b`` (left out only as a copy of ``d``), labelled two
    ways (session 56). Now ``a`` alone, reviewed last. ``d``: another file of the same
    pixels (a frame counter), a false reject as ``b``: painted alike, it names the golden
    ``b`` was painted with (named by its content), which stays though ``b`` goes."""
    srv, stop = start_server(keyed(models=[str(REF_MODEL)], store_pass_rate=1.0))
    sent = (PAIR / "00041000_test.jpg").read_bytes()
    made: dict[str, dict[str, Any]] = {}
    try:
        with srv.client("admin") as c:
            assert c.put("/v1/references/golden", content=(PAIR / "00041000_temp.jpg").read_bytes(),
                         headers={"content-type": "image/jpeg"}).status_code == 200
            for version, roi, ignore, sends in (
                    ("1", LEFT, IGNORE, {"a": sent, "b": sent, "d": numbered(sent, 1)}),
                    ("2", [[0, 0], [640, 0], [640, 200], [0, 200]], [], {"c": sent})):
                r = c.put("/v1/recipes/ref-roi", json=_recipe(version, roi, ignore))
                assert r.status_code == 200, r.text
                for key, data in sends.items():
                    r = c.post("/v1/inspect", params={"recipe": "ref-roi", "reference": "golden"},
                               files={"image": ("f.jpg", data, "image/jpeg")})
                    assert r.status_code == 200 and r.json()["stored"], r.text
                    made[key] = r.json()
        assert made["a"]["defects"] == made["b"]["defects"] != made["c"]["defects"]
        with srv.client("reviewer") as c:
            for key, review in (("b", {"action": "false_reject"}), ("c", {"action": "confirm"}),
                                ("d", {"action": "false_reject"}),
                                ("a", {"action": "missed_defect",
                                       "boxes": [{"label": "open", "box": DRAWN}]})):
                r = c.post(f"/v1/inspections/{made[key]['id']}/reviews", json=review)
                assert r.status_code == 200, r.text
        srv.app.state.store.flush()
        with caplog.at_level(logging.WARNING, logger="lineside"):
            _pull(srv, how, tmp_path / "pulled")
    finally:
        stop()
    assert validate_dir(tmp_path / "pulled") == []
    ds = read_dataset(tmp_path / "pulled")
    frames = {Path(r.file_name).stem: r for r in ds.images if r.reference is not None}
    assert set(frames) == {made["a"]["id"], made["d"]["id"]}
    assert "open" in [b.label for b in frames[made["a"]["id"]].boxes]  # the last word
    assert not frames[made["d"]["id"]].boxes
    _painted_as_version_1(read_image(tmp_path / "pulled" / "images"
                                     / frames[made["a"]["id"]].file_name),
                          read_image(PAIR / "00041000_test.jpg"))
    # each golden in the set is one a pulled frame names, each once (by its content)
    refs = [r.file_name for r in ds.images if r.reference is None]
    assert sorted(refs) == sorted({r.reference for r in frames.values()}) and len(refs) == 2
    for name in refs:
        data = (tmp_path / "pulled" / "images" / name).read_bytes()
        assert Path(name).stem == hashlib.sha256(data).hexdigest()
    said = ds.info["outside_recipe_regions"]
    assert isinstance(said, dict)
    assert sorted(said["painted_out"]) == sorted(r.file_name for r in frames.values())
    assert list(said["regions"]) == ["ref-roi:1"]  # (c, version 2's, is not in the set)
    warned = [r.getMessage() for r in caplog.records if "byte-identical" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(
        "pull: 2 inspection(s) left out, byte-identical copies of a picture inspected again "
        "and reviewed differently"), warned
    assert f"a copy of inspection {made['a']['id']}" in warned[0], warned


def test_stats_measure_contrast_on_what_the_recipe_judged_not_the_grey(
        station: tuple[Running, dict[str, Any]], tmp_path: Path) -> None:
    """`data stats` measured each image's contrast (what it suggests a single-image
    recipe's `min_contrast` from) with the grey a pull painted: a narrow roi leaves a
    frame mostly grey, its 5th to 95th percentile pulled towards 114 and the suggestion
    down with it (session 56). Measured now on the pixels the recipe judged, a painted
    golden by its frame's painted area: the figures of the pixels as sent there."""
    from lineside_inspect.dataset.stats import contrast_stats
    from lineside_inspect.runtime.reference import contrast_sample

    srv, _ = station
    _pull(srv, "store", tmp_path / "pulled")
    ds = read_dataset(tmp_path / "pulled")
    sent = {"frame": read_image(PAIR / "00041000_test.jpg"),
            "golden": read_image(PAIR / "00041000_temp.jpg")}
    frames = [r for r in ds.images if r.reference is not None]
    expected = []
    for rec in frames:
        area = painted_area(ds, rec)
        assert area is not None and area.mean() > 0.4  # (half the frame and more is grey)
        for image in sent.values():  # (a painted golden is painted by its frame's area)
            values = contrast_sample(image)[~area[::4, ::4]]
            low, high = np.percentile(values, [5, 95], method="inverted_cdf")
            expected.append(int(high) - int(low))
    got = contrast_stats(ds)
    assert got["images"] == 4 and len(ds.images) == 4
    assert got["lowest"] == min(expected), (got, expected)
    # the grey measured too, the figures fall (the test's premise)
    whole = [contrast_sample(read_image(tmp_path / "pulled" / "images" / r.file_name))
             for r in ds.images]
    assert min(int(np.percentile(v, 95, method="inverted_cdf"))
               - int(np.percentile(v, 5, method="inverted_cdf")) for v in whole) < min(expected)
