"""A new user's walk of the whole loop (serve, review, data pull, merge, train, evaluate,
export, gate, promote), session 36: what it found in the pull and the lifecycle."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineside_inspect.dataset import read_dataset
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.types import Detections
from lineside_inspect.store import Store
from lineside_inspect.store.pull import pull_from_store

from .conftest import MODEL, numbered
from .test_store import _inspection as _same_picture

_made = itertools.count()


def _inspection(detector: Detector, verdict: str) -> Any:
    """A stored inspection of the sample's picture, its file its own (numbered): a pull
    takes byte-identical frames once (session 52)."""
    made = _same_picture(detector, verdict)
    made.raw = numbered(made.raw, next(_made))
    return made


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL, device="cpu", threads=1)


def test_an_unreviewed_fail_without_a_box_is_no_good_image(tmp_path: Path,
                                                           detector: Detector) -> None:
    """``data pull --no-reviewed`` took the model's word for truth: a fail with no box
    (``reference_mismatch``: another product, a wrong golden; an anomaly without a region)
    became a good image of the set, a "good" pair of a frame and a golden it does not
    match. The reviewed pull already left such a fail out (session 34)."""
    with Store(tmp_path / "store", pass_rate=1.0) as store:
        boxless = _inspection(detector, "fail")
        boxless.defects = Detections.empty(boxless.defects.class_names)
        boxed, good = _inspection(detector, "fail"), _inspection(detector, "pass")
        for m in (boxless, boxed, good):
            assert store.save(m)
        pull_from_store(store, tmp_path / "pulled", reviewed=False)
    images = {Path(r.file_name).stem: r for r in read_dataset(tmp_path / "pulled").images}
    assert boxless.id not in images
    assert images[boxed.id].boxes and images[good.id].is_good


def test_an_anomaly_box_is_no_class_a_pull_teaches(tmp_path: Path, detector: Detector,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A fused recipe's fail (the detector's boxes and a good-only region, ``anomaly``) and
    a good-only station's false reject, reviewed and pulled (loop walk, session 50). The
    fail was pulled with its ``anomaly`` box as a class of the set, and `lineside train
    --merge` refused the whole pull ("class 'anomaly' is not in ...'s classes"); its box
    dropped, the region would be taught as background. It is left out, said in one line
    that `data pull` shows; relabelled with a detector class, it is pulled; the false
    reject is a good image either way, and no class `anomaly` is in the set."""
    import logging

    from lineside_inspect.errors import DatasetError
    from lineside_inspect.imageio import decode_image
    from lineside_inspect.recipes import Recipe
    from lineside_inspect.recipes.rules import judge
    from lineside_inspect.runtime.anomaly_map import AnomalyFinding

    fused = _inspection(detector, "fail")
    fused.part_id = "F1"
    h, w = decode_image(fused.raw).shape[:2]
    region = Detections([[5, 5, 30, 30]], [0.99], [0], ["anomaly"])
    finding = AnomalyFinding(0.99, 0.5, region, "good 1", (w, h))
    fused.anomaly, fused.defects = finding, judge(fused.defects, Recipe(name="r", model="deeppcb"),
                                                  {}, finding).defects
    assert fused.class_names[-1] == "anomaly" and fused.defects.labels[-1] == "anomaly"
    good_only = _inspection(detector, "fail")
    good_only.anomaly, good_only.defects = finding, region
    with Store(tmp_path / "store", pass_rate=1.0) as store:
        for m in (fused, good_only):
            assert store.save(m)
        store.review(fused.id, reviewer="qa", action="confirm")
        store.review(good_only.id, reviewer="qa", action="false_reject")
        with caplog.at_level(logging.WARNING, "lineside.store"):
            ds = pull_from_store(store, tmp_path / "pulled")
        assert [Path(r.file_name).stem for r in ds.images] == [good_only.id]
        assert ds.images[0].is_good and "anomaly" not in ds.categories
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("1 inspection(s) left out" in m and "`anomaly`" in m and fused.id in m
                   for m in said)
        # nothing but the fused fail asked for: not "review them first", it was reviewed
        with pytest.raises(DatasetError, match=r"all left out"):
            pull_from_store(store, tmp_path / "fused-only", part_id="F1")
        store.review(fused.id, reviewer="qa", action="relabel",
                     index=len(fused.defects) - 1, label="short")
        ds = pull_from_store(store, tmp_path / "relabelled")
    pulled = {Path(r.file_name).stem: r for r in read_dataset(tmp_path / "relabelled").images}
    assert "anomaly" not in ds.categories
    assert [b.label for b in pulled[fused.id].boxes][-1] == "short"


def test_a_good_only_stations_defects_can_be_pulled_to_evaluate_it(
        tmp_path: Path, detector: Detector, caplog: pytest.LogCaptureFixture) -> None:
    """A good-only station's review page offers one class, ``anomaly``: its confirmed
    fails (and missed defects drawn there) are ``anomaly`` boxes, which a pull leaves out
    (session 50), and no relabel on that page could pull them. The line's defects were then
    lost to the good-only model's own evaluation set (``lineside evaluate`` counts a region
    on a labelled box). ``data pull --keep-anomaly`` pulls them as they are, class
    ``anomaly``; the default's warning names the option (adversarial read, session 50)."""
    import logging

    from typer.testing import CliRunner

    from lineside_inspect.cli import app
    from lineside_inspect.imageio import decode_image
    from lineside_inspect.runtime.anomaly_map import AnomalyFinding

    fail = _inspection(detector, "fail")
    h, w = decode_image(fail.raw).shape[:2]
    region = Detections([[5, 5, 30, 30]], [0.99], [0], ["anomaly"])
    fail.anomaly, fail.defects = AnomalyFinding(0.99, 0.5, region, "good 1", (w, h)), region
    good = _inspection(detector, "pass")
    with Store(tmp_path / "store", pass_rate=1.0) as store:
        for m in (fail, good):
            assert store.save(m)
        store.review(fail.id, reviewer="qa", action="confirm")
        store.review(good.id, reviewer="qa", action="confirm")
    runner = CliRunner()
    with caplog.at_level(logging.WARNING, "lineside.store"):
        result = runner.invoke(app, ["data", "pull", str(tmp_path / "store"),
                                     str(tmp_path / "default")])
    assert result.exit_code == 0 and "pulled 1 images (1 good, 0 defective)" in result.output, \
        result.output
    assert any("left out" in r.getMessage() and "--keep-anomaly" in r.getMessage()
               for r in caplog.records)
    result = runner.invoke(app, ["data", "pull", str(tmp_path / "store"),
                                 str(tmp_path / "kept"), "--keep-anomaly"])
    assert result.exit_code == 0 and "pulled 2 images (1 good, 1 defective)" in result.output, \
        result.output
    ds = read_dataset(tmp_path / "kept")
    pulled = {Path(r.file_name).stem: r for r in ds.images}
    assert "anomaly" in ds.categories and pulled[good.id].is_good
    assert [(b.label, b.xyxy()) for b in pulled[fail.id].boxes] == [("anomaly", (5, 5, 30, 30))]


def test_the_review_api_says_what_data_pull_leaves_out(
        tmp_path: Path, detector: Detector, launch: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The review page said whether `data pull` leaves an inspection out by its own copy of
    the pull's rules, in JavaScript, which could drift from them (session 51). The review
    API now says it (``pull``: kept, and why not), from the very function the pull asks;
    over a real server, for each rule, the API's word and the pull's agree, and the reason
    is the words the pull logs. The review's own answer carries it as the review left it."""
    import logging

    from sqlalchemy.orm import Session

    from lineside_inspect.imageio import decode_image
    from lineside_inspect.recipes import Recipe
    from lineside_inspect.recipes.rules import judge
    from lineside_inspect.runtime.anomaly_map import AnomalyFinding
    from lineside_inspect.store.models import InspectionRow
    from lineside_inspect.store.pull import pull_from_server
    from lineside_inspect.store.pull_rules import (
        ANOMALOUS,
        ANOMALOUS_GOOD_ONLY,
        UNBOXED,
        UNBOXED_GOOD_ONLY,
    )

    from .conftest import ROLE_KEYS

    srv = launch(store_pass_rate=1.0)
    store = srv.app.state.store
    made = {k: _inspection(detector, "fail") for k in (
        "fused", "good_only", "unboxed", "whole", "detector", "false_reject", "relabelled")}
    h, w = decode_image(made["fused"].raw).shape[:2]
    region = Detections([[5, 5, 30, 30]], [0.99], [0], ["anomaly"])
    finding = AnomalyFinding(0.99, 0.5, region, "good 1", (w, h))
    for k in ("fused", "relabelled"):
        made[k].anomaly, made[k].defects = finding, judge(
            made[k].defects, Recipe(name="r", model="deeppcb"), {}, finding).defects
    for k in ("good_only", "false_reject"):
        made[k].anomaly, made[k].defects = finding, region
    made["unboxed"].defects = Detections.empty(made["unboxed"].defects.class_names)
    made["whole"].defects = Detections([[0, 0, w, h]], [0.99], [0], ["anomaly"])
    made["pass"] = _inspection(detector, "pass")
    reviews = {k: {"action": "confirm"} for k in made}
    reviews["false_reject"] = {"action": "false_reject"}
    reviews["relabelled"] = {"action": "relabel", "index": len(made["relabelled"].defects) - 1,
                             "label": "short"}
    expected = {"fused": ANOMALOUS, "good_only": ANOMALOUS_GOOD_ONLY, "unboxed": UNBOXED,
                "whole": UNBOXED_GOOD_ONLY}
    for m in made.values():
        assert store.save(m)
    store.flush()
    with Session(store.engine) as s, s.begin():  # a good-only model's: its one class
        for k in ("good_only", "whole"):
            s.get(InspectionRow, made[k].id).class_names = ["anomaly"]  # type: ignore[union-attr]
    said = {}
    with srv.client("reviewer") as c:
        for k, m in made.items():
            before = c.get(f"/v1/inspections/{m.id}")
            assert before.status_code == 200, before.text
            # (the model's word: the same rules, the unreviewed truth its defects)
            assert before.json()["pull"]["kept"] == (k in {"detector", "pass"}), k
            saved = c.post(f"/v1/inspections/{m.id}/reviews", json=reviews[k])
            assert saved.status_code == 200, saved.text
            got = c.get(f"/v1/inspections/{m.id}").json()["pull"]
            assert saved.json()["pull"] == got, k
            said[m.id] = got
    assert {k: said[m.id]["reason"] for k, m in made.items()} == {
        k: expected.get(k) for k in made}
    with caplog.at_level(logging.INFO, "lineside.store"):
        ds = pull_from_server(srv.url, tmp_path / "pulled", key=ROLE_KEYS["reviewer"])
    pulled = {Path(r.file_name).stem for r in ds.images}
    assert {i: n["kept"] for i, n in said.items()} == {i: i in pulled for i in said}
    logged = [r.getMessage() for r in caplog.records]
    for i, n in said.items():  # the pull's own words for each one left out, the API's
        if not n["kept"]:
            assert f"pull: left out inspection {i}: {n['reason']}" in logged
            assert any(m.startswith("pull: 1 inspection(s) left out, " + n["reason"])
                       and i in m for m in logged)


def _gone_and_cleared(store: Store, detector: Detector) -> dict[str, str]:
    """Three reviewed fails and an unreviewed pass the store did not sample (its pass rate
    0): ``gone``'s image removed from the disk (a cleanup) while the row still names it,
    ``cleared``'s removed before a start, which clears the row's image (as ``serve`` does)."""
    made = {k: _inspection(detector, "fail") for k in ("kept", "gone", "cleared")}
    made["unsampled"] = _inspection(detector, "pass")
    for m in made.values():
        assert store.save(m)
    store.flush()
    for k, action in (("kept", "confirm"), ("gone", "false_reject"), ("cleared", "confirm")):
        store.review(made[k].id, reviewer="qa", action=action)
    assert store.get(made["unsampled"].id).image_path is None
    store.image_file(store.get(made["cleared"].id)).unlink()
    assert store.cleanup()["missing_cleared"] == 1
    store.image_file(store.get(made["gone"].id)).unlink()
    return {k: m.id for k, m in made.items()}


def _said_not_pulled(caplog: pytest.LogCaptureFixture) -> list[str]:
    import logging

    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "not pulled" in r.getMessage()]


def _check_said(ids: dict[str, str], pulled: set[str], said: list[str]) -> None:
    from lineside_inspect.store.pull import GONE, NO_IMAGE

    assert pulled == {ids["kept"]}
    assert sorted(said) == sorted([
        f"pull: 1 inspection(s) not pulled, {GONE} (e.g. inspection {ids['gone']})",
        f"pull: 1 inspection(s) not pulled, {NO_IMAGE} (e.g. inspection {ids['cleared']})"]), said
    assert ids["unsampled"] not in " ".join(said)  # (an unsampled pass is no loss)


def test_reviewed_inspections_whose_images_are_gone_are_said_from_a_store(
        tmp_path: Path, detector: Detector, database_url: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    """A plant's disk cleanup (or retention) removed the images of reviewed inspections:
    `data pull DIR` said "pulled 1 images" and nothing of the other two, a false reject
    among them (the set's only good part). One was an INFO line the command does not
    show, the other (its row cleared at the next start) not even that (loop walk,
    session 52). Now each kind is one WARNING line, counted, with an example id; an
    unreviewed pass the store did not sample is no loss and unsaid. SQLite and PostgreSQL."""
    import logging

    with Store(tmp_path / "store", database_url, pass_rate=0.0) as store:
        ids = _gone_and_cleared(store, detector)
        with caplog.at_level(logging.WARNING, "lineside.store"):
            ds = pull_from_store(store, tmp_path / "pulled", reviewed=False)
    _check_said(ids, {Path(r.file_name).stem for r in ds.images}, _said_not_pulled(caplog))


def test_reviewed_inspections_whose_images_are_gone_are_said_from_a_server(
        tmp_path: Path, detector: Detector, launch: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """As from a store, over a real server: the one whose file is gone is a 404 for its
    image (an INFO line before), the one the start cleared is listed without an image
    (skipped, unsaid, before)."""
    import logging

    from lineside_inspect.store.pull import pull_from_server

    from .conftest import ROLE_KEYS

    srv = launch(store_pass_rate=0.0)
    ids = _gone_and_cleared(srv.app.state.store, detector)
    with caplog.at_level(logging.WARNING, "lineside.store"):
        ds = pull_from_server(srv.url, tmp_path / "pulled", key=ROLE_KEYS["reviewer"],
                              reviewed=False)
    _check_said(ids, {Path(r.file_name).stem for r in ds.images}, _said_not_pulled(caplog))


def _turned(jpeg: bytes) -> bytes:
    """``jpeg`` with an EXIF orientation (6) saying to show it turned 90° clockwise, as a
    phone or some cameras write it: the same pixels as stored."""
    ifd = (b"MM\x00\x2a\x00\x00\x00\x08\x00\x01"
           b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00")
    app1 = b"Exif\x00\x00" + ifd
    return jpeg[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpeg[2:]


@pytest.mark.parametrize("how", ["server", "store"])
def test_a_frame_with_an_exif_turn_is_pulled_as_it_was_judged_and_reviewed(
        tmp_path: Path, launch: Any, how: str) -> None:
    """A reference station's frame and golden whose EXIF orientation says to show them
    turned (loop walk, session 55): Lineside judges the pixels as stored, and the review
    page shows them so, where the reviewer confirms the boxes. The pull wrote the JPEGs as
    sent, turn and all: OpenCV's ``imread``, PIL's ``exif_transpose`` and Ultralytics
    (after `data export --format yolo`) read them turned, every box off its defect, while
    `data validate` found nothing (a square frame keeps its size). Now each pulled file
    says "as stored" (orientation 1), its pixels and boxes untouched."""
    from lineside_inspect.dataset.exif import orientation
    from lineside_inspect.dataset.validate import check_dir
    from lineside_inspect.imageio import read_image
    from lineside_inspect.opencv import cv2
    from lineside_inspect.store.pull import pull_from_server

    from .conftest import ROLE_KEYS, ROOT

    pair = ROOT / "datasets" / "deeppcb-sample" / "images" / "group00041"
    frame, golden = (_turned((pair / f"00041000_{k}.jpg").read_bytes()) for k in ("test", "temp"))
    srv = launch(models=[str(ROOT / "models" / "deeppcb-ref" / "1")],
                 recipes=[str(ROOT / "configs" / "recipes" / "deeppcb-ref.yaml")],
                 store_pass_rate=1.0)
    with srv.client("line") as c:
        r = c.post("/v1/inspect", params={"recipe": "deeppcb-ref"},
                   files={"image": ("f.jpg", frame, "image/jpeg"),
                          "reference": ("g.jpg", golden, "image/jpeg")})
    assert r.status_code == 200 and r.json()["verdict"] == "fail", r.text
    iid = r.json()["id"]
    with srv.client("reviewer") as c:
        saved = c.post(f"/v1/inspections/{iid}/reviews", json={"action": "confirm"})
    assert saved.status_code == 200, saved.text
    truth = [(b["label"], b["box"]) for b in saved.json()["reviews"][-1]["boxes"]]
    assert truth
    if how == "server":
        pull_from_server(srv.url, tmp_path / "pulled", key=ROLE_KEYS["reviewer"])
    else:
        pull_from_store(srv.app.state.store, tmp_path / "pulled")
    assert check_dir(tmp_path / "pulled").problems == []
    ds = read_dataset(tmp_path / "pulled")
    [rec] = [r for r in ds.images if r.reference]
    assert Path(rec.file_name).stem == iid
    assert [(b.label, [b.x1, b.y1, b.x2, b.y2]) for b in rec.boxes] == truth
    for name, sent in ((rec.file_name, pair / "00041000_test.jpg"),
                       (rec.reference, pair / "00041000_temp.jpg")):
        path = ds.image_path(next(r for r in ds.images if r.file_name == name))
        assert orientation(path.read_bytes()) == 1, name
        # what any tool reads is what Lineside judged: the pixels as sent
        assert np.array_equal(cv2.imread(str(path)), read_image(sent)), name
        assert np.array_equal(read_image(path), read_image(sent)), name
    store = srv.app.state.store  # (the pull wrote new files: the store's are as sent)
    assert store.image_file(store.get(iid)).read_bytes() == frame
    assert store.reference_file(store.get(iid)).read_bytes() == golden
