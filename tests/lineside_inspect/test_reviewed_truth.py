"""One rule for what the reviews say a part deserved (store.models.reviewed_verdict),
used by the dashboard, data pull, golden sets, the rollout watch and the shadow report,
and the review table's rebuild finishing an earlier half-done one (session 34's
reviews of its own changes)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from lineside_inspect.lifecycle.golden import from_store
from lineside_inspect.lifecycle.records import Records
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.types import Detections
from lineside_inspect.store import Store
from lineside_inspect.store.models import Base, ReviewRow
from lineside_inspect.store.pull_rules import unboxed_fail

from .conftest import MODEL
from .test_store import _inspection, reviews_as_before


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL, device="cpu", threads=1)


def test_a_confirmed_fail_without_a_box_is_no_false_reject_for_the_rollout_watch(
        tmp_path: Path, detector: Detector) -> None:
    """A fail with no box (not the golden's view) a reviewer confirmed counted as a false
    reject toward a rollout watch's bound (which rolls a promoted model back) and as a
    pass in the shadow report's reviewed truth."""
    started = datetime.now(UTC) - timedelta(seconds=1)
    with Store(tmp_path, pass_rate=1.0) as store:
        records = Records(store)
        m = _inspection(detector, "fail")
        m.defects = Detections.empty(m.defects.class_names)
        store.save(m)
        store.review(m.id, reviewer="qa", action="confirm")
        card = m.detector.card
        assert records.reviewed_truth([m.id])[m.id] == "fail"
        assert records.false_rejects(model=card.name, version=card.version, since=started) == 0


def test_a_false_reject_someone_then_confirms_stays_a_good_part(
        tmp_path: Path, detector: Detector) -> None:
    """A confirm keeps the truth: after a false_reject (no defect), a second reviewer's
    confirm of what the page shows (0 defects) made the good part a confirmed fail."""
    with Store(tmp_path, pass_rate=1.0) as store:
        records = Records(store)
        m = _inspection(detector, "fail")
        store.save(m)
        store.review(m.id, reviewer="qa1", action="false_reject")
        store.review(m.id, reviewer="qa2", action="confirm")
        item = store.record(store.get(m.id)).model_dump(mode="json")
        candidates, _ = from_store(store, ids=[m.id])
        card = m.detector.card
        assert not unboxed_fail(item) and candidates[0].item.expected == "pass"
        assert records.reviewed_truth([m.id])[m.id] == "pass"
        assert records.false_rejects(model=card.name, version=card.version,
                                     since=datetime.now(UTC) - timedelta(hours=1)) == 1


def test_finishing_a_half_done_rebuild_drops_no_review(tmp_path: Path, detector: Detector) -> None:
    """A half-done rebuild left the reviews in reviews_before_autoincrement and an empty
    new table, whose next reviews took ids 1.. again: finishing it with INSERT OR IGNORE
    dropped every old review whose id had been given again."""
    a, b = _inspection(detector, "fail"), _inspection(detector, "fail")
    with Store(tmp_path, pass_rate=0.0) as store:
        store.save(a)
        store.save(b)
        store.review(a.id, reviewer="qa", action="confirm", note="old-1")
        store.review(a.id, reviewer="qa", action="false_reject", note="old-2")
    db = sqlite3.connect(tmp_path / "lineside.db")
    rows = reviews_as_before(db)
    db.executescript("ALTER TABLE reviews RENAME TO reviews_before_autoincrement; "
                     "DROP INDEX IF EXISTS ix_reviews_inspection_id;")
    db.commit()
    db.close()
    engine = create_engine(f"sqlite:///{tmp_path / 'lineside.db'}")  # the new, empty table
    Base.metadata.create_all(engine, tables=[Base.metadata.tables[ReviewRow.__tablename__]])
    engine.dispose()
    db = sqlite3.connect(tmp_path / "lineside.db")
    db.execute("INSERT INTO reviews (inspection_id, created_at, reviewer, action, boxes, note, "
               "origin) VALUES (?, '2026-01-01 00:00:00.000000', 'qa', 'false_reject', '[]', "
               "'new-1', 'box')", (b.id,))
    db.commit()
    assert db.execute("SELECT id FROM reviews").fetchall() == [(rows[0][0],)]  # given again
    db.close()
    with Store(tmp_path, pass_rate=0.0) as store:
        notes = sorted(r.note for i in (a.id, b.id) for r in store.get(i).reviews)
        ids = sorted(r.id for i in (a.id, b.id) for r in store.get(i).reviews)
    assert notes == ["new-1", "old-1", "old-2"] and len(set(ids)) == 3


def test_a_confirmed_pass_with_tolerated_defects_stays_a_pass(tmp_path: Path,
                                                              detector: Detector) -> None:
    """A recipe that tolerates defects (max_count) passes a part with boxes; a reviewer
    confirms it. The dashboard saw no escape, but golden sets and the shadow report took
    the boxes for a fail (review, session 34)."""
    from sqlalchemy.orm import Session

    from lineside_inspect.imageio import decode_image
    from lineside_inspect.inspector import inspect
    from lineside_inspect.recipes.schema import Recipe
    from lineside_inspect.store.stats import review_quality

    from .test_store import SAMPLE

    raw = next(SAMPLE.rglob("*_test.jpg")).read_bytes()
    recipe = Recipe(name="r", model="deeppcb", default_min_score=0.0,
                    max_count={n: 10_000 for n in detector.class_names})
    m = inspect(decode_image(raw), detector, recipe)
    m.raw, m.raw_ext = raw, "jpg"
    assert m.verdict == "pass" and len(m.defects) > 0
    with Store(tmp_path, pass_rate=1.0) as store:
        store.save(m)
        store.review(m.id, reviewer="qa", action="confirm")
        with Session(store.engine) as s:
            quality = review_quality(s, datetime.now(UTC) - timedelta(hours=1),
                                     datetime.now(UTC) + timedelta(hours=1), [])
        truth = Records(store).reviewed_truth([m.id])[m.id]
        candidates, _ = from_store(store, ids=[m.id])
        item = store.record(store.get(m.id)).model_dump(mode="json")
    assert quality["escapes"] == 0 and truth == "pass"
    assert candidates[0].item.expected == "pass" and candidates[0].item.boxes
    assert not unboxed_fail(item)  # data pull keeps it, its boxes as labels


def test_an_anomaly_fail_reported_as_the_whole_image_is_no_label_to_pull(
        tmp_path: Path, detector: Detector) -> None:
    """An anomaly fail whose map shows no region reports the whole image as one anomaly
    box (session 39). Pulled, that box became a label over the whole frame (a detector
    taught that the frame is the defect), where such a fail had been left out as one with
    no box (session 34): still left out, unreviewed or confirmed; a drawn box is kept
    without it."""
    from lineside_inspect.imageio import decode_image
    from lineside_inspect.recipes import Recipe
    from lineside_inspect.recipes.rules import judge
    from lineside_inspect.runtime.anomaly_map import AnomalyFinding
    from lineside_inspect.store.pull import _record

    m = _inspection(detector, "fail")
    h, w = decode_image(m.raw).shape[:2]
    finding = AnomalyFinding(0.9, 0.5, Detections.empty(["anomaly"]), "good 1", (w, h))
    verdict = judge(Detections.empty(detector.class_names),
                    Recipe(name="r", model="deeppcb"), {}, finding)
    assert verdict.outcome == "fail" and verdict.defects.xyxy.tolist() == [[0, 0, w, h]]
    m.defects = verdict.defects
    with Store(tmp_path, pass_rate=1.0) as store:
        store.save(m)
        item = store.record(store.get(m.id)).model_dump(mode="json")
        assert unboxed_fail(item)
        store.review(m.id, reviewer="qa", action="confirm")
        item = store.record(store.get(m.id)).model_dump(mode="json")
        assert unboxed_fail(item)
        store.review(m.id, reviewer="qa", action="missed_defect",
                     boxes=[{"label": "open", "box": [10, 10, 40, 40]}])
        item = store.record(store.get(m.id)).model_dump(mode="json")
    assert not unboxed_fail(item)
    assert [b.label for b in _record(item, tmp_path / "x.jpg", "jpg").boxes] == ["open"]


def test_a_review_whose_boxes_are_not_a_list_counts_as_nothing(tmp_path: Path,
                                                               detector: Detector) -> None:
    """A review's boxes that are not a list (text that is not JSON, an object, null: a
    hand-edited row, a foreign writer) count as nothing in the dashboard's figures; the
    rollout watch and the shadow report read them in Python, where an object or text
    was a defect and an empty object or null a false reject toward a rollback (review,
    session 40). A golden set from the store leaves such a row out."""
    from sqlalchemy import text

    started = datetime.now(UTC) - timedelta(seconds=1)
    with Store(tmp_path, pass_rate=1.0) as store:
        records = Records(store)
        fails = [_inspection(detector, "fail") for _ in range(5)]
        for m in fails:
            store.save(m)
            store.review(m.id, reviewer="qa", action="false_reject")
        fine, *odd = fails
        with store.engine.begin() as db:
            for m, boxes in zip(odd, ('{"label": "short"}', "[{not json", "{}", "null"),
                                strict=True):
                db.execute(text("UPDATE reviews SET boxes = :b WHERE inspection_id = :i"),
                           {"b": boxes, "i": m.id})
        card = fine.detector.card
        truth = records.reviewed_truth([m.id for m in fails])
        false_rejects = records.false_rejects(model=card.name, version=card.version,
                                              since=started)
        candidates, _ = from_store(store)
    assert truth == {fine.id: "pass"}
    assert false_rejects == 1
    assert [c.item.source for c in candidates] == [f"inspection {fine.id} (corrected)"]
