"""`data pull` of one picture inspected twice (a line client's retry of a timed-out request,
a simulated camera looping its files, a PLC re-trigger): byte-identical frames, each its
own stored inspection. Reviewed differently, the pull wrote both copies with their two
labels, said nothing, and `data validate` and `lineside train` refused the whole pulled set
("exact copies of one picture in one split, labelled differently"); reviewed alike, both
went in and `data validate` reported them as duplicates (session 52).

Now the copy whose latest review is newest (the reviewers' last word) is pulled and the
others are left out, each kind counted in one warning line naming an example pair; golden
images many pairs share stay. Real store (SQLite and PostgreSQL), real server, the real
dataset validator on what was pulled."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineside_inspect.dataset import read_dataset
from lineside_inspect.dataset.validate import check_dir, duplicate_warnings
from lineside_inspect.imageio import decode_image, read_image
from lineside_inspect.inspector import inspect
from lineside_inspect.opencv import cv2
from lineside_inspect.recipes import Recipe
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store
from lineside_inspect.store.pull import pull_from_server, pull_from_store

from .conftest import MODEL, ROLE_KEYS, ROOT, keyed, start_server

SAMPLE = ROOT / "datasets" / "deeppcb-sample" / "images"
REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL, device="cpu", threads=1)


def _fail(detector: Detector, picture: Path, when: datetime) -> Any:
    """A stored fail of ``picture``'s bytes as sent, made at ``when``."""
    raw = picture.read_bytes()
    result = inspect(decode_image(raw), detector, Recipe(name="r", model="deeppcb",
                                                         default_min_score=0.0))
    result.verdict = "fail"
    assert result.defects
    result.raw, result.raw_ext, result.created_at = raw, "jpg", when
    return result


def _twice_inspected(store: Store, detector: Detector) -> dict[str, str]:
    """``first`` and ``retry``: one picture inspected twice, ``retry`` the later; reviewed
    differently, ``retry`` first (a false reject), ``first`` last (confirmed): the last
    word is ``first``'s, though ``retry`` is the newer inspection and listed before it.
    ``again1`` and ``again2``: another picture twice, both confirmed (``again2`` last).
    ``other``: a third picture, a false reject."""
    a, b, c = (next((SAMPLE / g).glob("*_test.jpg")) for g in ("group00041", "group13000",
                                                                "group20085"))
    t0 = datetime.now(UTC) - timedelta(hours=1)
    made = {"first": _fail(detector, a, t0), "retry": _fail(detector, a, t0 + timedelta(seconds=5)),
            "again1": _fail(detector, b, t0 + timedelta(seconds=10)),
            "again2": _fail(detector, b, t0 + timedelta(seconds=15)),
            "other": _fail(detector, c, t0 + timedelta(seconds=20))}
    for m in made.values():
        assert store.save(m)
    store.flush()
    for k, action in (("retry", "false_reject"), ("again1", "confirm"), ("first", "confirm"),
                      ("again2", "confirm"), ("other", "false_reject")):
        store.review(made[k].id, reviewer="qa", action=action)
    return {k: m.id for k, m in made.items()}


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "byte-identical" in r.getMessage()]


def _check(pulled: Path, ids: dict[str, str], said: list[str]) -> None:
    report = check_dir(pulled)  # what `lineside data validate` runs
    assert report.problems == []
    assert duplicate_warnings(report.duplicates) == []
    assert not [g for g in report.duplicates if g.kind == "exact"]
    images = {Path(r.file_name).stem: r for r in read_dataset(pulled).images}
    assert set(images) == {ids["first"], ids["again2"], ids["other"]}
    assert images[ids["first"]].boxes  # confirmed last: the reviewers' last word
    assert not images[ids["other"]].boxes
    assert sorted(said) == sorted([
        f"pull: 1 inspection(s) left out, byte-identical copies of a picture inspected again "
        f"and reviewed differently: the copy reviewed last is the reviewers' last word and is "
        f"pulled (e.g. inspection {ids['retry']} [good], a copy of inspection {ids['first']} "
        f"[{', '.join(sorted(b.label for b in images[ids['first']].boxes))}]); if that was "
        f"wrong, review it again",
        f"pull: 1 inspection(s) left out, byte-identical copies of a picture inspected again "
        f"and labelled alike: pulled once (e.g. inspection {ids['again1']}, a copy of "
        f"inspection {ids['again2']})"]), said


def test_a_picture_inspected_twice_is_pulled_once_from_a_store(
        tmp_path: Path, detector: Detector, database_url: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    with Store(tmp_path / "store", database_url, pass_rate=0.0) as store:
        ids = _twice_inspected(store, detector)
        with caplog.at_level(logging.WARNING, "lineside.store"):
            pull_from_store(store, tmp_path / "pulled")
    _check(tmp_path / "pulled", ids, _warned(caplog))


def test_a_picture_inspected_twice_is_pulled_once_from_a_server(
        tmp_path: Path, detector: Detector, launch: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = launch(store_pass_rate=0.0)
    ids = _twice_inspected(srv.app.state.store, detector)
    with caplog.at_level(logging.WARNING, "lineside.store"):
        pull_from_server(srv.url, tmp_path / "pulled", key=ROLE_KEYS["reviewer"])
    _check(tmp_path / "pulled", ids, _warned(caplog))


def _png(image: np.ndarray) -> bytes:
    return bytes(cv2.imencode(".png", image)[1])


@pytest.mark.parametrize("how", ["server", "store"])
def test_a_golden_many_pairs_share_is_no_copy_to_leave_out(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    """A reference station posted one part twice against one golden, and another part: the
    two frames of one part are one picture (one left out), the golden every pair names is
    no copy of anything and stays, once, the pulled pairs naming it."""
    pair = SAMPLE / "group00041"
    part, golden = read_image(pair / "00041000_test.jpg"), read_image(pair / "00041000_temp.jpg")
    another = read_image(next((SAMPLE / "group13000").glob("*_test.jpg")))  # another part
    srv, stop = start_server(keyed(models=[str(REF_MODEL)],
                                   recipes=[str(ROOT / "configs" / "recipes" / "deeppcb-ref.yaml")],
                                   store_pass_rate=1.0))
    try:
        ids = []
        with srv.client("admin") as c:
            assert c.put("/v1/references/golden", content=_png(golden),
                         headers={"content-type": "image/png"}).status_code == 200
            for image in (part, part, another):
                r = c.post("/v1/inspect", params={"recipe": "deeppcb-ref", "reference": "golden"},
                           files={"image": ("f.png", _png(image), "image/png")})
                assert r.status_code == 200 and r.json()["stored"], r.text
                ids.append(r.json()["id"])
            for i in ids:
                assert c.post(f"/v1/inspections/{i}/reviews",
                              json={"action": "false_reject"}).status_code == 200
        with caplog.at_level(logging.WARNING, "lineside.store"):
            if how == "server":
                pull_from_server(srv.url, tmp_path / "pulled", key=ROLE_KEYS["reviewer"])
            else:
                pull_from_store(srv.app.state.store, tmp_path / "pulled")
    finally:
        stop()
    report = check_dir(tmp_path / "pulled")
    assert report.problems == [] and duplicate_warnings(report.duplicates) == []
    images = read_dataset(tmp_path / "pulled").images
    refs = [r for r in images if r.file_name.startswith("references/")]
    frames = [r for r in images if not r.file_name.startswith("references/")]
    assert len(refs) == 1 and len(frames) == 2
    assert {Path(r.file_name).stem for r in frames} == {ids[1], ids[2]}  # (ids[1] reviewed last)
    assert all(r.reference == refs[0].file_name for r in frames)
    assert _warned(caplog) == [
        f"pull: 1 inspection(s) left out, byte-identical copies of a picture inspected again "
        f"and labelled alike: pulled once (e.g. inspection {ids[0]}, a copy of inspection "
        f"{ids[1]})"]
