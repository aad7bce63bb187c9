"""The review merge rule (fleet/review_merge.py) on SQLite and a real PostgreSQL: last
writer wins on the review's own time, ties to the hub, every review kept, a resent review
is a no-op."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from lineside_inspect.errors import ConfigError, ReviewError
from lineside_inspect.fleet.hub.bench_reviews import synthetic_rows
from lineside_inspect.fleet.protocol import ReviewEvent
from lineside_inspect.fleet.review_merge import apply_review, review_event
from lineside_inspect.store import Store
from lineside_inspect.store.models import InspectionRow

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def _store(tmp_path: Path, url: str | None, origin: str) -> tuple[Store, str]:
    store = Store(tmp_path / origin, url, box_id="box-1" if origin == "box" else "hub")
    store.review_origin = origin
    row = synthetic_rows(1, box_id="box-1", site="plant-a", line="line-1", now=T0, fail_every=1)[0]
    iid = row.id
    with Session(store.engine) as s, s.begin():
        s.add(row)
    return store, iid


def _event(iid: str, at: datetime, origin: str, action: str = "confirm",
           boxes: list[dict[str, object]] | None = None, who: str = "qa") -> ReviewEvent:
    if boxes is None:
        boxes = [] if action == "false_reject" else [{"label": "open", "box": [10, 10, 30, 30]}]
    return ReviewEvent(seq=1, inspection_id=iid, created_at=at, reviewer=who, action=action,
                       boxes=boxes, origin=origin)  # type: ignore[arg-type]


@pytest.mark.parametrize("side", ["box", "hub"])
def test_last_writer_wins_ties_to_the_hub_all_kept(tmp_path: Path, database_url: str | None,
                                                   side: str) -> None:
    store, iid = _store(tmp_path, database_url, side)
    try:
        other = "hub" if side == "box" else "box"
        # a review made here (Store.review), then the other side's, made later: it wins
        store.review(iid, reviewer="here", action="confirm")
        here_at = store.get(iid).reviews[0].created_at
        later = _event(iid, here_at + timedelta(seconds=5), other, "false_reject", who="there")
        assert apply_review(store, later) == "current"
        row = store.get(iid)
        assert [r.reviewer for r in row.reviews] == ["here", "there"]
        assert row.review_state == "corrected" and row.reviews[-1].boxes == []
        assert apply_review(store, later) == "duplicate"  # resent: nothing changes
        assert len(store.get(iid).reviews) == 2
        # one made before both, arriving late: kept in the audit trail, not current
        early = _event(iid, here_at - timedelta(minutes=1), other, "confirm", who="early")
        assert apply_review(store, early) == "superseded"
        row = store.get(iid)
        assert [r.reviewer for r in row.reviews] == ["early", "here", "there"]
        assert row.review_state == "corrected"
        assert [r["reviewer"] for r in store.record(row).model_dump()["reviews"]] == \
            ["early", "here", "there"]
        # a tie of times: the hub's wins, whichever side applies it and in which order
        tie_at = here_at + timedelta(seconds=10)
        hub_tie = _event(iid, tie_at, "hub", "confirm", who="hub-tie")
        box_tie = _event(iid, tie_at, "box", "false_reject", who="box-tie")
        first, second = (hub_tie, box_tie) if side == "box" else (box_tie, hub_tie)
        apply_review(store, first)
        apply_review(store, second)
        row = store.get(iid)
        assert row.reviews[-1].reviewer == "hub-tie" and row.review_state == "confirmed"
        assert len(row.reviews) == 5
        # the dashboard's review figures read the same current review
        quality = store.stats(24 * 365, now=T0 + timedelta(hours=1))["quality"]
        assert quality["reviewed_fails"] == 1 and quality["false_rejects"] == 0
        # a review made here after seeing them all follows the latest, even when the
        # other side's clock ran ahead of this one's
        future = _event(iid, datetime.now(UTC) + timedelta(hours=1), other, "confirm", who="ahead")
        assert apply_review(store, future) == "current"
        store.review(iid, reviewer="after", action="false_reject", seen_reviews=6)
        row = store.get(iid)
        assert row.reviews[-1].reviewer == "after" and row.review_state == "corrected"
        assert row.reviews[-1].created_at > row.reviews[-2].created_at
        assert row.reviews[-1].origin == side
    finally:
        store.close()


def test_unknown_inspection_and_bad_reviews_change_nothing(tmp_path: Path,
                                                           database_url: str | None) -> None:
    store, iid = _store(tmp_path, database_url, "hub")
    try:
        assert apply_review(store, _event("f" * 32, T0, "box")) == "unknown_inspection"
        for bad, why in (([{"label": "alien", "box": [1, 1, 2, 2]}], "unknown class"),
                         ([{"label": "open", "box": [1, 2]}], "box 0"),
                         ([{"label": "open", "box": [1, 1, 2, 2], "html": "<b>"}], "box 0")):
            with pytest.raises(ConfigError, match=why):
                apply_review(store, _event(iid, T0, "box", "missed_defect", boxes=bad))
        with pytest.raises(ConfigError, match="action"):
            apply_review(store, _event(iid, T0, "box", "delete_everything"))
        assert store.get(iid).reviews == [] and store.get(iid).review_state == "unreviewed"
        # what a side sends is what the other applies: the wire form round-trips
        store.review(iid, reviewer="hub-qa", action="false_reject", note="no defect")
        wire = review_event(store.get(iid).reviews[0], seq=7)
        assert wire.origin == "hub" and wire.note == "no defect" and wire.boxes == []
        assert apply_review(store, ReviewEvent.model_validate_json(wire.model_dump_json())) \
            == "duplicate"
    finally:
        store.close()


def test_a_restored_box_reviews_are_applied_not_skipped_by_the_cursor(tmp_path: Path) -> None:
    """A box restored from a backup sends reviews under sequence numbers the hub has passed:
    the hub applies them (a resent one is a duplicate by content), and never acknowledges
    more than it was sent."""
    from lineside_inspect.fleet.hub.reviews import _advance, take_reviews
    from lineside_inspect.fleet.hub.tables import create_hub_tables
    from lineside_inspect.fleet.protocol import ReviewBatch

    store, iid = _store(tmp_path, None, "hub")
    create_hub_tables(store.engine)
    try:
        _advance(store, "box-1", 5)  # the box's earlier life got the cursor to 5
        event = _event(iid, T0 + timedelta(minutes=1), "box").model_copy(update={"seq": 2})
        ack = take_reviews(store, "box-1", ReviewBatch(items=[event]))
        assert ack.through_seq == 2
        row = store.get(iid)
        # recorded under the box whose key sent it
        assert [r.reviewer for r in row.reviews] == ["qa (box-1)"]
        assert row.review_state == "confirmed"
        again = take_reviews(store, "box-1", ReviewBatch(items=[event]))  # resent: no change
        assert again.through_seq == 2 and len(store.get(iid).reviews) == 1
    finally:
        store.close()


def test_a_review_from_a_box_clock_far_ahead_is_taken_at_the_hubs_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Last writer wins on the review's time: a review dated in the future would win every
    later one (and at year 9999, the hub's next review time overflowed into a 500). Waiting
    for the hub's clock to get there held every later review of the box (a year, for a
    box whose clock was a year ahead before NTP). It is taken at once, at the hub's time,
    the box's kept in its note; sent again it is a duplicate, even once the hub would take
    its own time (the clock came that far)."""
    from lineside_inspect.fleet.hub import reviews as hub_reviews
    from lineside_inspect.fleet.hub.reviews import take_reviews
    from lineside_inspect.fleet.hub.tables import create_hub_tables
    from lineside_inspect.fleet.protocol import ReviewBatch

    store, iid = _store(tmp_path, None, "hub")
    create_hub_tables(store.engine)
    try:
        far = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
        future = _event(iid, far, "box")
        later = _event(iid, T0 + timedelta(minutes=1), "box", action="false_reject"
                       ).model_copy(update={"seq": 2})
        ack = take_reviews(store, "box-1", ReviewBatch(items=[future, later]))
        assert (ack.through_seq, ack.waiting) == (2, None)
        got = store.get(iid).reviews
        assert len(got) == 2
        [taken] = [r for r in got if r.action == "confirm"]
        assert taken.created_at < far and far.isoformat() in taken.note
        # sent again (its answer lost): known, whichever way the hub would take it now
        assert take_reviews(store, "box-1", ReviewBatch(items=[future, later])).through_seq == 2
        soon = _event(iid, datetime.now(UTC) + timedelta(minutes=6), "box", action="relabel"
                      ).model_copy(update={"seq": 3})
        assert take_reviews(store, "box-1", ReviewBatch(items=[soon])).through_seq == 3
        monkeypatch.setattr(hub_reviews, "MAX_CLOCK_AHEAD", timedelta(minutes=10))
        assert take_reviews(store, "box-1", ReviewBatch(items=[soon])).through_seq == 3
        assert len(store.get(iid).reviews) == 3
        store.review(iid, reviewer="lead", action="confirm")  # the hub's own follows them
        assert store.get(iid).reviews[-1].reviewer == "lead"
    finally:
        store.close()


def test_a_review_an_older_hub_took_is_known_under_its_plain_name(tmp_path: Path) -> None:
    """A hub before reviewers were named with their box recorded a box's review as
    ``qa``; resent after a lost answer (the hub upgraded meanwhile), it is a duplicate,
    not a second review ``qa (box-1)``."""
    from lineside_inspect.fleet.hub.reviews import take_reviews
    from lineside_inspect.fleet.hub.tables import create_hub_tables
    from lineside_inspect.fleet.protocol import ReviewBatch
    from lineside_inspect.fleet.review_merge import apply_review

    store, iid = _store(tmp_path, None, "hub")
    create_hub_tables(store.engine)
    try:
        event = _event(iid, T0 + timedelta(minutes=1), "box")
        assert apply_review(store, event) == "current"  # what the older hub did
        assert take_reviews(store, "box-1", ReviewBatch(items=[event])).through_seq == 1
        assert [r.reviewer for r in store.get(iid).reviews] == ["qa"]
    finally:
        store.close()


def test_a_box_review_with_a_nul_is_taken_not_a_stuck_stream(tmp_path: Path,
                                                             database_url: str | None) -> None:
    """A box on SQLite may hold text with a NUL (stored before URLs were checked):
    PostgreSQL cannot, and a refused batch would be sent again forever, holding every
    later review. The hub takes it with U+FFFD in place of the NUL."""
    from lineside_inspect.fleet.hub.reviews import take_reviews
    from lineside_inspect.fleet.hub.tables import create_hub_tables
    from lineside_inspect.fleet.protocol import ReviewBatch

    store, iid = _store(tmp_path, database_url, "hub")
    create_hub_tables(store.engine)
    try:
        event = _event(iid, T0 + timedelta(minutes=1), "box", who="q\x00a").model_copy(
            update={"note": "dust\x00", "boxes": [{"label": "open", "box": [1, 1, 9, 9]}]})
        assert take_reviews(store, "box-1", ReviewBatch(items=[event])).through_seq == 1
        (review,) = store.get(iid).reviews
        assert (review.reviewer, review.note) == ("q\ufffda (box-1)", "dust\ufffd")
    finally:
        store.close()


def test_a_box_reviewer_cannot_reorder_the_name_of_the_box_it_came_from(tmp_path: Path) -> None:
    """A box names its reviewers as it likes, and the hub adds the box's id: a name holding
    U+202E (right-to-left override) showed on every hub page as the review of another box,
    the real suffix reversed: ``(b-xob) op (box-a)`` for box-b's review. Its bidirectional
    controls become U+FFFD, as in forwarded records; resent, it is still one review."""
    from lineside_inspect.fleet.hub.reviews import take_reviews
    from lineside_inspect.fleet.hub.tables import create_hub_tables
    from lineside_inspect.fleet.protocol import ReviewBatch

    store, iid = _store(tmp_path, None, "hub")
    create_hub_tables(store.engine)
    try:
        event = _event(iid, T0 + timedelta(minutes=1), "box", who="\u202e(a-xob) po\u2066")
        for _ in range(2):
            assert take_reviews(store, "box-1", ReviewBatch(items=[event])).through_seq == 1
        assert [r.reviewer for r in store.get(iid).reviews] == ["\ufffd(a-xob) po\ufffd (box-1)"]
    finally:
        store.close()


def test_a_forwarded_record_with_a_nul_is_taken_with_u_fffd() -> None:
    from lineside_inspect.fleet.hub.ingest import _row

    from .test_fleet_sync import _item

    item = _item(1)
    item = item.model_copy(update={"record": {**item.record, "part_id": "a\x00b"}})
    assert _row("box1", item).row.part_id == "a\ufffdb"


def test_a_hostile_hubs_reviews_cannot_break_the_boxs_store(tmp_path: Path) -> None:
    """From a hostile-hub probe: a truth box with a score was stored, and every read of
    the inspection (its forwarding too) failed on it; an inverted box was stored as truth;
    a review at the end of time made every later local review a 500 (OverflowError)."""
    store, iid = _store(tmp_path, None, "box")
    try:
        scored = _event(iid, T0 + timedelta(minutes=1), "hub", "missed_defect",
                        boxes=[{"label": "open", "box": [10, 10, 30, 30], "score": 0.9}])
        assert apply_review(store, scored) == "current"
        row = store.get(iid)
        assert row.reviews[-1].boxes == [{"label": "open", "box": [10, 10, 30, 30]}]
        assert store.record(row).reviews[-1].boxes[0].box == (10, 10, 30, 30)  # reads back
        for bad in ([50, 50, 10, 10], [-1, -1, -1, -1]):
            with pytest.raises(ConfigError, match="is not a box"):
                apply_review(store, _event(iid, T0 + timedelta(minutes=2), "hub",
                                           "missed_defect", boxes=[{"label": "open", "box": bad}]))
        end = datetime.max.replace(tzinfo=UTC)
        assert apply_review(store, _event(iid, end, "hub", "confirm")) == "current"
        with pytest.raises(ReviewError, match="no review can follow it"):
            store.review(iid, reviewer="here", action="confirm")
    finally:
        store.close()


@pytest.mark.parametrize("made_on", ["box", "hub"])
def test_a_confirm_of_a_detection_clipped_to_nothing_reaches_the_other_side(
        tmp_path: Path, made_on: str) -> None:
    """A detector's box clipped at the image's edge can have no width left (x1 == x2: a
    detection in the letterbox's padding, or moved out by a reference shift); the local
    store takes it as it is in a confirm's truth. The other side skipped that confirm as
    "not a box", so the box and the hub kept different current reviews of the inspection
    for good, and its audit trail on one side lacked the review."""
    here, iid = _store(tmp_path, None, made_on)
    there, _ = _store(tmp_path, None, "hub" if made_on == "box" else "box")
    try:
        clipped = [{"label": "open", "score": 0.8, "box": [640.0, 100.0, 640.0, 130.0]},
                   {"label": "short", "score": 0.9, "box": [100.0, 100.0, 140.0, 130.0]}]
        for store in (here, there):
            with Session(store.engine) as s, s.begin():
                row = s.get(InspectionRow, iid)
                assert row is not None
                row.defects, row.verdict = clipped, "fail"
        here.review(iid, reviewer="qa", action="confirm")
        wire = review_event(here.get(iid).reviews[0], seq=1)
        assert apply_review(there, ReviewEvent.model_validate_json(wire.model_dump_json())) \
            == "current"
        row = there.get(iid)
        assert row.review_state == "confirmed"
        assert [b["box"] for b in row.reviews[0].boxes] == [d["box"] for d in clipped]
        # a box with no area that is none of the inspection's detections is still no box
        with pytest.raises(ConfigError, match="is not a box"):
            apply_review(there, _event(iid, T0 + timedelta(days=1), "hub" if made_on == "box"
                                       else "box", "missed_defect",
                                       boxes=[{"label": "open", "box": [10, 10, 10, 30]}]))
    finally:
        here.close()
        there.close()
