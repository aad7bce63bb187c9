"""A box on an uplink slower than its hub's ``min_body_rate``: the hub cuts a large batch
off (408, counted once in the hub's request errors), the box sends half as many, and
everything arrives. A dev hub (SQLite, images in a real SeaweedFS) under uvicorn on
loopback, as in test_fleet_sync; the uplink is a real TCP proxy that paces what it
carries (``fleet_peers.SlowLink``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lineside_inspect.errors import HubRefused, HubUnavailable, NotFoundError
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.box.forward import Forwarder, forward_events
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.references import Reference
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store import Store

from .fleet_peers import SlowLink
from .test_fleet_sync import KEYS, MODEL, ServedHub, _inspection, hub_settings

UPLINK = 32 * 1024  # bytes/s the box's uplink carries


def test_a_box_on_a_slow_uplink_halves_its_batch_until_it_goes_through(
        tmp_path: Path, weed: Any) -> None:
    """The hub wants 256 KiB/s after its first second: over this uplink a body of about
    36 KB gets through, a batch of 4 inspections (about 28 KB each as sent) never would,
    nor one of 2. The box halves its batch after each cut (4, 2, 1) and every inspection
    reaches the hub. (4, not 8: each inspection takes about a second over this link,
    and two halvings show what three did.)"""
    settings = hub_settings(tmp_path, weed.settings("fleet-slow-link"), body_timeout_s=1.0,
                            min_body_rate=256 * 1024)
    detector = Detector(MODEL, device="cpu", threads=1)
    store = Store(tmp_path / "box", pass_rate=1.0, box_id="box1")
    store.event_makers.append(forward_events)
    with ServedHub(settings) as hub, SlowLink(int(hub.url.rsplit(":", 1)[1]), UPLINK) as link:
        fleet = FleetSettings(hub_url=link.url, token=KEYS["box1"], timeout_s=30,  # type: ignore[arg-type]
                              forward_batch=4)
        hub_client = HubClient(fleet, "box1")
        try:
            made = [_inspection(detector) for _ in range(4)]
            for inspection in made:
                assert store.save(inspection)
            store.flush()
            forwarder = Forwarder(store, hub_client, fleet)
            cuts = 0
            for _ in range(30):  # rounds, as the forwarder's thread runs them
                if not forwarder.outbox.pending():
                    break
                try:
                    forwarder.forward_once()
                except HubUnavailable as exc:
                    assert "408" in str(exc) or "closed the connection" in str(exc), exc
                    cuts += 1
            assert not forwarder.outbox.pending()
            assert cuts >= 1 and forwarder.batch < 4
            for inspection in made:
                assert hub.store.get(inspection.id).box_id == "box1"
            text = httpx.get(hub.url + "/metrics").text
            [line] = [x for x in text.splitlines()
                      if x.startswith('lineside_request_errors_total{code="body_timeout"}')]
            assert float(line.split()[1]) == cuts  # each cut counted once
        finally:
            hub_client.close()
            store.close()


def test_a_batch_over_the_hubs_body_limit_is_halved_and_one_alone_goes_without_images(
        tmp_path: Path, weed: Any) -> None:
    """A 413 was taken as a refusal for good: the same batch went again and again, and
    every later inspection waited behind it (a large golden image sent with each item,
    and not counted in the batch's image budget, made it likely)."""
    detector = Detector(MODEL, device="cpu", threads=1)
    image = len(_inspection(detector).raw)
    # two inspections (image + reference, base64) fit, four do not
    with _box_and_hub(tmp_path / "a", weed, "fleet-too-large", int(image * 2 * 4 / 3 * 2.6),
                      batch=4) as (store, hub, forwarder):
        made = [_inspection(detector) for _ in range(4)]
        for inspection in made:
            inspection.reference = Reference.from_bytes("gold", inspection.raw)
            assert store.save(inspection)
        store.flush()
        refused = _rounds(forwarder)
        assert refused and all("413" in r for r in refused), refused
        assert forwarder.batch == 2 and not forwarder.outbox.pending()
        for inspection in made:  # every one arrived, with its images
            row = hub.store.get(inspection.id)
            assert row.box_id == "box1" and row.image_path and row.reference_path
    # a hub that cannot take even one of them: it goes without its images, the rest follow
    with _box_and_hub(tmp_path / "b", weed, "fleet-too-large-2", int(image * 4 / 3 * 0.9),
                      batch=1) as (store, hub, forwarder):
        made = [_inspection(detector) for _ in range(2)]
        for inspection in made:
            assert store.save(inspection)
        store.flush()
        refused = _rounds(forwarder)
        assert len(refused) == 2 and not forwarder.outbox.pending(), refused
        for inspection in made:
            row = hub.store.get(inspection.id)
            assert row.box_id == "box1" and not row.image_path


def test_an_inspection_over_the_hubs_body_limit_even_without_images_is_set_aside(
        tmp_path: Path, weed: Any) -> None:
    """A record alone over the hub's ``max_body_bytes`` was sent again for good, with a
    warning, and every later inspection of the box waited behind it. It is set aside
    now, as a refused record is (kept, listed, counted), the rest go on, and once the
    hub's limit is raised an admin's retry sends it, with its images."""
    detector = Detector(MODEL, device="cpu", threads=1)
    with _box_and_hub(tmp_path / "a", weed, "fleet-too-large-3", 64, batch=2) as (store, hub,
                                                                           forwarder):
        made = [_inspection(detector) for _ in range(3)]
        for inspection in made:
            assert store.save(inspection)
        store.flush()
        refused = _rounds(forwarder)
        assert refused and all("413" in r for r in refused), refused
        assert not forwarder.outbox.pending() and forwarder.refresh_gauges() is None
        aside = forwarder.outbox.set_aside_events()
        assert [e.topic for e in aside] == [i.id for i in made] and forwarder.set_aside == 3
        assert all(e.payload["refused"].startswith("too_large") for e in aside)
        for inspection in made:
            with pytest.raises(NotFoundError):
                hub.store.get(inspection.id)
        hub.app.state.settings.max_body_bytes = 64 * 1024 * 1024  # the hub's limit raised
        assert forwarder.retry_set_aside() == 3
        assert _rounds(forwarder) == [] and forwarder.outbox.set_aside_count() == 0
        for inspection in made:  # every one arrived, with its image
            row = hub.store.get(inspection.id)
            assert row.box_id == "box1" and row.image_path


@contextlib.contextmanager
def _box_and_hub(folder: Path, weed: Any, bucket: str, max_body_bytes: int,
                 batch: int) -> Iterator[tuple[Store, ServedHub, Forwarder]]:
    """A box store (forwarding its inspections) and a hub taking bodies up to
    ``max_body_bytes``: (store, hub, the box's forwarder)."""
    folder.mkdir(parents=True)
    settings = hub_settings(folder, weed.settings(bucket), max_body_bytes=max_body_bytes)
    store = Store(folder / "box", pass_rate=1.0, box_id="box1")
    store.event_makers.append(forward_events)
    with ServedHub(settings) as hub:
        fleet = FleetSettings(hub_url=hub.url, token=KEYS["box1"], timeout_s=30,  # type: ignore[arg-type]
                              forward_batch=batch)
        hub_client = HubClient(fleet, "box1")
        try:
            yield store, hub, Forwarder(store, hub_client, fleet)
        finally:
            hub_client.close()
            store.close()


def _rounds(forwarder: Forwarder) -> list[str]:
    """Forward until nothing is pending (at most 20 rounds); the failures met."""
    failures = []
    for _ in range(20):
        if not forwarder.outbox.pending():
            break
        try:
            forwarder.forward_once()
        except (HubUnavailable, HubRefused) as exc:
            failures.append(str(exc))
    return failures


def test_a_review_batch_over_the_hubs_json_limit_is_halved_and_one_alone_is_dropped(
        tmp_path: Path, weed: Any) -> None:
    """A batch of reviews over the hub's ``max_json_bytes`` was sent again at the same size
    for good, and no later review went up. It is halved now; a review too large on its own
    is set aside (kept) and the rest go on; once the hub's limit is raised, an admin's
    retry sends it."""
    from lineside_inspect.fleet.box.reviews import ReviewSync, review_events

    settings = hub_settings(tmp_path, weed.settings("fleet-review-sizes"),
                            max_json_bytes=16 * 1024)
    store = Store(tmp_path / "box", pass_rate=1.0, box_id="box1")
    store.event_makers.append(forward_events)
    store.review_event_makers.append(review_events)
    with ServedHub(settings) as hub:
        fleet = FleetSettings(hub_url=hub.url, token=KEYS["box1"], timeout_s=30,  # type: ignore[arg-type]
                              forward_batch=1)
        hub_client = HubClient(fleet, "box1")
        try:
            detector = Detector(MODEL, device="cpu", threads=1)
            made = [_inspection(detector) for _ in range(6)]
            for inspection in made:
                assert store.save(inspection)
            store.flush()
            assert _rounds(Forwarder(store, hub_client, fleet)) == []
            # 3 KB a review: six together are over the hub's 16 KiB; the third, with 600
            # boxes, is over it alone
            many = [{"label": "short", "box": [(i % 25) * 25 + 1, (i // 25) * 25 + 1,
                                               (i % 25) * 25 + 6, (i // 25) * 25 + 6]}
                    for i in range(600)]
            for n, inspection in enumerate(made):
                if n == 2:
                    store.review(inspection.id, reviewer="qa", action="missed_defect", boxes=many)
                else:
                    store.review(inspection.id, reviewer="qa", action="confirm", note="n" * 3000)
            sync = ReviewSync(store, hub_client)
            assert sync.send_up() == 5
            assert sync.dropped == 0 and sync.batch < 6 and sync.outbox.backlog() == 0
            [aside] = sync.outbox.set_aside_events()
            assert aside.topic == made[2].id and aside.payload["refused"].startswith("too_large")
            for n, inspection in enumerate(made):
                reviews = hub.store.get(inspection.id).reviews
                assert len(reviews) == (0 if n == 2 else 1), n
            hub.app.state.settings.max_json_bytes = 1024 * 1024  # the hub's limit raised
            assert sync.retry_with(lambda: 0) == 0 and sync.send_up() == 1
            assert len(hub.store.get(made[2].id).reviews) == 1
        finally:
            hub_client.close()
            store.close()
