"""Retention at a server's start-up, before its start-up hooks have run (review of
session 36's start-up retention)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from lineside_inspect.fleet.box.forward import CHANNEL, forward_events
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store

from .conftest import settings, start_server
from .test_store import MODEL, _inspection


def test_start_up_retention_keeps_rows_not_forwarded_to_the_hub(tmp_path: Path) -> None:
    """Start-up cleanup applied the age limit (and the quota) before the fleet's start-up
    hook told the store which rows wait for the hub: every row took for forwarded, and a
    box restarted while its hub was away removed the inspections it had not sent yet."""
    detector = Detector(MODEL, device="cpu", threads=1)
    old = _inspection(detector, "fail", datetime.now(UTC) - timedelta(days=3))
    data_dir = tmp_path / "box"
    with Store(data_dir, pass_rate=1.0) as store:  # a box whose hub was down: not sent yet
        store.event_makers.append(forward_events)
        store.guard_channel = CHANNEL
        assert store.save(old)
    # (the discard port: nothing answers, the event stays undelivered)
    running, stop = start_server(settings(data_dir=str(data_dir), store_max_age_days=1,
                                          fleet={"hub_url": "http://127.0.0.1:9", "token": "k"}))
    try:
        store = running.app.state.store
        assert store.get(old.id).image_path is not None
    finally:
        stop()
