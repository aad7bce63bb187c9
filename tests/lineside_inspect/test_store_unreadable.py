"""Stored rows that do not read (text that is not JSON or not a time in SQLite, JSON of
another shape anywhere: a hand-edited row, a foreign writer) beside the figures and
retention: each counts as nothing or goes, and never fails the figure or the pass for
the other rows (review, session 40)."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from lineside_inspect.inspector import Inspection
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store
from lineside_inspect.store import stats as figures

from .conftest import numbered
from .test_store import MODEL, _inspection

_FRAMES = itertools.count()  # each frame a file of its own


@pytest.fixture(scope="module")
def fail() -> Inspection:
    return _inspection(Detector(MODEL, device="cpu", threads=1), "fail")


def _fails(store: Store, base: Inspection, n: int, when: datetime) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(n)]
    for iid in ids:  # (each its own file: a pull takes byte-identical frames once)
        assert store.save(dataclasses.replace(base, id=iid, created_at=when,
                                              raw=numbered(base.raw or b"", next(_FRAMES))))
    store.flush()
    return ids


def _edit(store: Store, sql: str, iid: str) -> None:
    with store.engine.begin() as db:
        db.execute(text(sql), {"i": iid})


def test_the_figures_count_a_row_that_does_not_read_as_nothing(
        tmp_path: Path, database_url: str | None, fail: Inspection) -> None:
    """A review whose boxes are not a list made the dashboard (GET /v1/stats) a 500:
    json_array_length of an object fails in PostgreSQL, of text that is not JSON in SQLite
    (and of an object it read 0: a false reject). In SQLite a time that does not read
    inside the window failed the model changes (the dashboard) and the status page's
    not-judged figures; a reasons object counted a member as a reason."""
    sqlite = database_url is None
    with Store(tmp_path, database_url, pass_rate=1.0, box_id="box-a") as store:
        now = datetime.now(UTC)
        shaped, good, *more = _fails(store, fail, 4 if sqlite else 2, now - timedelta(hours=1))
        for iid in (shaped, good, *more):  # a false reject each: no box left
            store.review(iid, reviewer="qa", action="false_reject")
        _edit(store, "UPDATE reviews SET boxes = '{\"label\": \"short\"}' "
              "WHERE inspection_id = :i", shaped)
        if sqlite:
            not_json, timeless = more
            _edit(store, "UPDATE reviews SET boxes = '[{not json' WHERE inspection_id = :i",
                  not_json)
            # in the window by its text, not a time (second 61), and a blank frame
            with store.engine.begin() as db:
                db.execute(text("UPDATE inspections SET created_at = :t, reasons = "
                                "'[{\"rule\": \"blank_frame\"}]' WHERE id = :i"),
                           {"i": timeless,
                            "t": (now - timedelta(minutes=30)).strftime("%Y-%m-%d %H:%M:61")})
            # an object: its member is not a reason
            _edit(store, "UPDATE inspections SET reasons = "
                  "'{\"x\": {\"rule\": \"reference_mismatch\"}}' WHERE id = :i", good)
        doc = store.stats(48, now=now)
        # the bad shapes count as nothing; the reviews that read count as before
        fine = 2 if sqlite else 1
        assert (doc["reviewed_fails"], doc["false_rejects_confirmed"]) == (fine, fine)
        assert doc["quality"]["reviewed_fails"] == fine
        # and in the yield after review: a bad shape is no review, its fail unreviewed
        assert [(s["fails"], s["passes_after_review"], s["unreviewed_fails"])
                for s in doc["stations"]] == [(2 * fine, fine, fine)]
        assert [c["version"] for c in doc["model_changes"]] == [store.get(good).model_version]
        unjudged = store.read(lambda s: figures.not_judged(s, now - timedelta(hours=48), now))
    if sqlite:  # counted by its text's window, with no last time to show
        assert unjudged == {("box-a", None): {"blank_frame": {"parts": 1, "last": None},
                                              "reference_mismatch": {"parts": 0, "last": None}}}
    else:
        assert unjudged == {}


def test_retention_removes_a_row_whose_time_does_not_read(tmp_path: Path,
                                                          fail: Inspection) -> None:
    """A row whose stored time is not one (SQLite) failed every retention pass (its
    yield-history slot), so no row left by age or quota and the writer retried for good;
    the quota's next look failed the save with it. Text sorting after every time never
    reached the age limit: kept for good. Now each goes with its image, and the rest too."""
    with Store(tmp_path, pass_rate=1.0, box_id="box-a", max_age_days=30) as store:
        old = datetime.now(UTC) - timedelta(days=5)
        low, high, *rest = _fails(store, fail, 4, old)
        _edit(store, "UPDATE inspections SET created_at = '2020-01-01 25:00:00' WHERE id = :i",
              low)
        _edit(store, "UPDATE inspections SET created_at = 'yesterday' WHERE id = :i", high)
        images = {p for p in (tmp_path / "images").rglob("*.jpg")}
        assert len(images) == 4
        # the oldest by its text does not read as a time: due now (its as_utc failed, and
        # with it a save the full quota refused)
        assert store._next_age_out() < float("inf")
        store.max_age_days = 1
        assert store.cleanup()["missing_cleared"] == 0  # (start-up: applies the age limit)
        assert store.query()[0] == 0
        assert not any(p.exists() for p in images)
        assert store.read(lambda s: figures.yields(s, old - timedelta(hours=1), old + timedelta(
            hours=1))) == {("box-a", None): {  # the history's (keeping no reviews)
                "pass": 0, "fail": len(rest), "pass_after": 0, "unreviewed_fail": len(rest)}}


def test_a_pull_from_the_store_goes_on_past_a_page_of_rows_whose_times_do_not_read(
        tmp_path: Path, fail: Inspection, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: text after every time in created_at (`yesterday`) lists first, newest
    first; a whole page of such rows stopped `data pull` from a store there, and every
    row that reads was never pulled (the pull over HTTP passes them over). It passes over
    them by offset and pulls the rest; the rows that do not read are left out."""
    from lineside_inspect.store import pull

    with Store(tmp_path / "store", pass_rate=1.0) as store:
        ids = _fails(store, fail, 4, datetime.now(UTC) - timedelta(hours=1))
        for iid in ids[:2]:  # a whole first page of two
            _edit(store, "UPDATE inspections SET created_at = 'yesterday' WHERE id = :i", iid)
        monkeypatch.setattr(pull, "PAGE", 2)
        ds = pull.pull_from_store(store, tmp_path / "pulled", reviewed=False)
    assert {r.file_name.split("/")[-1][:32] for r in ds.images} == set(ids[2:])
