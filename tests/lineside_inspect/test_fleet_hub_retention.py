"""The hub's retention: inspections past ``retention_days`` leave the hub with their
reviews and images (a real SeaweedFS), a reference image goes with the last inspection
pointing at it, each box's count follows,
and an object store that is down leaves the rows for the next round. A real hub (SQLite)
on loopback."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lineside_inspect.errors import ObjectStoreUnavailable
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.config import FleetSettings, ObjectStoreSettings
from lineside_inspect.fleet.hub.retention import HubRetention, RetentionRound
from lineside_inspect.fleet.hub.tables import BoxCountRow
from lineside_inspect.fleet.objects import ObjectStore
from lineside_inspect.fleet.protocol import (
    FORWARD,
    REVIEWS_UP,
    ForwardAck,
    ForwardBatch,
    ForwardedInspection,
    ReviewAck,
    ReviewBatch,
    ReviewEvent,
)
from lineside_inspect.store.models import InspectionRow, ReviewRow

from .fleet_peers import free_port
from .test_fleet_sync import KEYS, ServedHub, _png, _record, client, hub_settings

NOW = datetime.now(UTC)


def _item(seq: int, days_ago: float, image: bytes | None, reference: bytes | None) -> ForwardedInspection:
    iid = uuid.uuid4().hex
    return ForwardedInspection(
        seq=seq, id=iid, site="plant1", line="line1",
        record=_record(iid, NOW - timedelta(days=days_ago)),
        image_b64=base64.b64encode(image).decode() if image else None,
        image_ext="png" if image else None,
        reference_b64=base64.b64encode(reference).decode() if reference else None,
        reference_ext="png" if reference else None)


def test_old_inspections_leave_the_hub_with_reviews_and_images(
        tmp_path: Path, weed: Any, database_url: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # reviews go by the database's cascade: on SQLite and on PostgreSQL
    more = {"database_url": database_url} if database_url else {}
    backend = "pg" if database_url else "sqlite"
    settings = hub_settings(tmp_path, weed.settings(f"hub-retention-{backend}"),
                            retention_days=30, retention_interval_s=86400, **more)
    with ServedHub(settings) as hub:
        retention = _own_rounds(hub)
        box = client(hub)
        ref = _png(20)
        old1 = _item(1, 40, _png(21), ref)
        only_old = _png(19)  # the golden image of a recipe no box inspects any more
        old2 = _item(2, 35, _png(22), only_old)
        old3 = _item(3, 31, None, None)  # a pass kept without its image
        new = _item(4, 1, _png(23), ref)
        late = _item(5, 45, _png(24), None)  # a box's clock 45 days behind, or its backlog
        legacy = _item(6, 33, None, None)  # received before the hub kept received_at
        items = [old1, old2, old3, new, late, legacy]
        ack = box.post(box.path(FORWARD), ForwardBatch(items=items), ForwardAck)
        assert ack.stored == 6
        with Session(hub.store.engine) as s, s.begin():  # as if received when they were made
            for i in (old1, old2, old3, new):
                s.execute(update(InspectionRow).where(InspectionRow.id == i.id)
                          .values(received_at=InspectionRow.created_at))
            s.execute(update(InspectionRow).where(InspectionRow.id == legacy.id)
                      .values(received_at=None))
        qa = {"Authorization": f"Bearer {KEYS['qa']}"}
        r = httpx.post(f"{hub.url}/v1/inspections/{old1.id}/reviews", headers=qa,
                       json={"action": "confirm"})
        assert r.status_code in (200, 201), r.text
        images = {i.id: hub.store.get(i.id).image_path for i in (old1, old2, new, late)}
        objects = hub.app.state.objects
        assert all(objects.exists(k) for k in images.values())

        # the object store unreachable: the round ends, nothing is deleted
        retention.objects = ObjectStore(ObjectStoreSettings(
            endpoint=f"127.0.0.1:{free_port()}", bucket="hub-retention", access_key="a",
            secret_key="s", timeout_s=1))  # type: ignore[arg-type]
        with pytest.raises(ObjectStoreUnavailable):
            retention.run_once()
        assert all(_held(hub, i.id) for i in items)

        retention.objects = objects
        if not database_url:  # a SQLite before 3.35 (no RETURNING): read, then delete
            monkeypatch.setattr(hub.store.engine.dialect, "delete_returning", False)
        done = _round(hub)
        assert (done.deleted, done.kept) == (4, 0)
        # received within the days: kept, however the box dated it
        assert [i.id for i in items if _held(hub, i.id)] == [new.id, late.id]
        with Session(hub.store.engine) as s:
            assert s.scalar(select(func.count()).select_from(ReviewRow)
                            .where(ReviewRow.inspection_id == old1.id)) == 0
            assert s.get(BoxCountRow, "box1").held == 2  # type: ignore[union-attr]
        assert not objects.exists(images[old1.id]) and not objects.exists(images[old2.id])
        assert objects.exists(images[new.id]) and objects.exists(images[late.id])
        assert objects.exists(_ref_key(ref))  # shared with an inspection kept: kept
        assert done.references == 1 and not objects.exists(_ref_key(only_old))
        assert retention.run_once().deleted == 0  # (nothing left for the object store)
        metrics = httpx.get(hub.url + "/metrics").text
        assert "lineside_hub_retention_deleted_total 4.0" in metrics
        # less one a cut round deleted as its answer was lost (_round: never counted)
        counted = float(1 - done.uncounted)
        assert f"lineside_hub_retention_references_deleted_total {counted}" in metrics

        # a box's late review of a deleted inspection: the hub says it does not hold it
        # (the box, which forwarded it long ago, drops that review and goes on)
        review = ReviewEvent(seq=1, inspection_id=old1.id, created_at=NOW, reviewer="op",
                             action="confirm", boxes=[], origin="box")
        ack2 = box.post(box.path(REVIEWS_UP), ReviewBatch(items=[review]), ReviewAck)
        assert ack2.through_seq == 0 and ack2.waiting == "inspection"
        box.close()


def test_a_reference_retention_deletes_as_a_box_forwards_it_again_is_put_back(
        tmp_path: Path, weed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest puts a reference image only when the object is not there; retention
    deletes one when no inspection points at it. Either may come between the other's
    look and its write: whichever comes second puts the image back."""
    from lineside_inspect.fleet.hub.ingest import Ingest

    settings = hub_settings(tmp_path, weed.settings("hub-retention-race"),
                            retention_days=30, retention_interval_s=86400)
    with ServedHub(settings) as hub:
        retention, objects = _own_rounds(hub), hub.app.state.objects
        # a forward whose ingest runs a round (1.) waits as long as the round may
        box = HubClient(FleetSettings(hub_url=hub.url, token=KEYS["box1"],  # type: ignore[arg-type]
                                      timeout_s=2 * ROUNDS_S), "box1")
        ref = _png(30)
        key = _ref_key(ref)
        old = _item(1, 40, None, ref)
        assert box.post(box.path(FORWARD), ForwardBatch(items=[old]), ForwardAck).stored == 1
        with Session(hub.store.engine) as s, s.begin():
            s.execute(update(InspectionRow).values(received_at=InspectionRow.created_at))
        # 1. retention deletes the image after a new batch's ingest found it there, before
        # the batch's rows are committed: the ingest puts it back once they are
        commit = Ingest._commit

        def retention_first(self: Ingest, *args: Any) -> int:
            # the rounds between the ingest's look and its commit, however many it takes
            assert _round(hub).references == 1 and not objects.exists(key)
            return commit(self, *args)

        monkeypatch.setattr(Ingest, "_commit", retention_first)
        new = _item(2, 0, None, ref)
        assert box.post(box.path(FORWARD), ForwardBatch(items=[new]), ForwardAck).stored == 1
        monkeypatch.setattr(Ingest, "_commit", commit)
        assert objects.exists(key) and hub.store.get(new.id).reference_path == key
        # 2. a batch pointing at the image is stored after retention found none did, before
        # it deletes: retention puts it back
        with Session(hub.store.engine) as s, s.begin():
            s.execute(update(InspectionRow).values(received_at=InspectionRow.created_at))
        assert retention.run_once().deleted == 0  # (new is a day old: kept)
        with Session(hub.store.engine) as s, s.begin():
            s.execute(update(InspectionRow).where(InspectionRow.id == new.id)
                      .values(received_at=NOW - timedelta(days=40)))
        late = _item(3, 0, None, ref)
        get = objects.get

        def forwarding(item: ForwardedInspection) -> Any:
            """``objects.get`` that forwards ``item`` (pointing at the image) once read."""
            def read(k: str) -> bytes:
                data = get(k)
                assert box.post(box.path(FORWARD), ForwardBatch(items=[item]),
                                ForwardAck).stored == 1
                return data
            return read

        monkeypatch.setattr(objects, "get", forwarding(late))
        done = _round(hub, staged=lambda: _held(hub, late.id))
        assert isinstance(done, RetentionRound) and (done.deleted, done.references) == (1, 0)
        assert objects.exists(key) and hub.store.get(late.id).reference_path == key
        # 3. as 2., but the object store fails the put-back: the round ends, and the next
        # one puts the image back first (it was lost for good)
        with Session(hub.store.engine) as s, s.begin():
            s.execute(update(InspectionRow).where(InspectionRow.id == late.id)
                      .values(received_at=NOW - timedelta(days=40)))
        later = _item(4, 0, None, ref)
        put = objects.put

        def store_down(*_: Any, **__: Any) -> None:
            raise ObjectStoreUnavailable("the object store is unreachable (during put)")

        monkeypatch.setattr(objects, "get", forwarding(later))
        monkeypatch.setattr(objects, "put", store_down)
        # the put-back's own failure, not the store's late answer to another call
        with pytest.raises(ObjectStoreUnavailable, match=r"\(during put\)"):
            _round(hub, staged=lambda: _held(hub, later.id))
        assert not objects.exists(key) and hub.store.get(later.id).reference_path == key
        monkeypatch.setattr(objects, "put", put)
        monkeypatch.setattr(objects, "get", get)
        _round(hub)
        assert objects.exists(key)
        # 4. as 2., but the look after the delete fails (the database busy with that very
        # ingest): the round ends, and the next one puts the image back
        with Session(hub.store.engine) as s, s.begin():
            s.execute(update(InspectionRow).where(InspectionRow.id == later.id)
                      .values(received_at=NOW - timedelta(days=40)))
        last = _item(5, 0, None, ref)
        looks = retention._referenced
        calls: list[str] = []

        def busy_second_time(k: str) -> bool:
            calls.append(k)
            if len(calls) == 2:
                raise RuntimeError("database is locked")
            return looks(k)

        monkeypatch.setattr(objects, "get", forwarding(last))
        monkeypatch.setattr(retention, "_referenced", busy_second_time)
        with pytest.raises(RuntimeError):
            retention.run_once()
        assert not objects.exists(key)
        monkeypatch.setattr(objects, "get", get)
        monkeypatch.setattr(retention, "_referenced", looks)
        _round(hub)
        assert objects.exists(key) and hub.store.get(last.id).reference_path == key
        box.close()


ROUNDS_S = 60  # how long _round tries again: a loaded CI host, SeaweedFS slow to answer


def _own_rounds(hub: ServedHub) -> HubRetention:
    """The hub's retention, its thread ended after its first round (on nothing) so every
    round is the test's: on a loaded host that round could come only after the test made
    rows old, and take them."""
    retention: HubRetention = hub.app.state.retention
    assert retention is not None  # started with the hub
    retention.stop()
    assert retention._thread is not None and not retention._thread.is_alive()
    retention._stop.clear()  # (a round stops early while it is set)
    return retention


@dataclass
class _Rounds(RetentionRound):
    uncounted: int = 0  # of ``references``: deleted by a cut round, in no counter


def _round(hub: ServedHub, staged: Callable[[], bool] = lambda: False) -> _Rounds:
    """``run_once()`` of the hub's retention, tried again while the object store does not
    answer in time (ObjectStoreUnavailable: on a loaded CI host SeaweedFS can take over
    the client's 3 s, tried once more), as the hub's thread has the next round do what one
    left, for up to ROUNDS_S. Not once ``staged()``: a test's injection has run, and a
    round after it would not stage it again (passing by another path, or vacuously).

    A cut round's work is counted as it is done, so the totals are the counters' (rows,
    reference images), with the reference images a round deleted and was cut before
    counting (the delete went, its answer did not): it leaves them in ``_restore``; the
    next round, no row pointing at one and the object gone, drops it uncounted. ``kept``
    is the last round's (a cut round's kept rows are the next one's to try)."""
    retention: HubRetention = hub.app.state.retention
    registry = hub.app.state.metrics.registry

    def counted(name: str) -> int:
        return int(registry.get_sample_value(f"lineside_hub_retention_{name}_total") or 0)

    def gone(key: str) -> bool:  # the store answering late here too
        while True:
            try:
                return not retention.objects.exists(key)
            except ObjectStoreUnavailable:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)  # the poll's interval, not a wait for the store

    rows, refs = counted("deleted"), counted("references_deleted")
    uncounted: set[str] = set()
    deadline = time.monotonic() + ROUNDS_S
    while True:
        try:
            done = retention.run_once()
            break
        except ObjectStoreUnavailable:
            if staged() or time.monotonic() > deadline:
                raise
            uncounted |= {k for k in list(retention._restore)
                          if not retention._referenced(k) and gone(k)}
        time.sleep(0.1)  # the poll's interval, not a wait for the store
    return _Rounds(deleted=counted("deleted") - rows, kept=done.kept,
                   references=counted("references_deleted") - refs + len(uncounted),
                   uncounted=len(uncounted))


def _ref_key(image: bytes) -> str:
    return f"refs/{hashlib.sha256(image).hexdigest()}.png"


def _held(hub: ServedHub, inspection_id: str) -> bool:
    with Session(hub.store.engine) as s:
        return s.scalar(select(InspectionRow.id).where(InspectionRow.id == inspection_id)) is not None
