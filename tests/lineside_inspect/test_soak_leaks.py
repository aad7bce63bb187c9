"""What a box left running for weeks repeats (hot swaps, ...) must not grow without bound:
each test repeats one operation in-process and checks that the count it would leave
behind stays within a small constant (found by tools/soak.py, session 38)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineside_inspect.errors import ConfigError
from lineside_inspect.server.registry import Registry
from lineside_inspect.store import Store
from lineside_inspect.store.outbox import Outbox

from .conftest import MODEL

INT8 = MODEL.parent / "1-int8"


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry(device="cpu", threads=1)
    registry.load_model(MODEL)
    registry.load_model(INT8)
    return registry


def test_hot_swaps_back_and_forth_keep_the_history_to_one_entry_per_version(
        registry: Registry) -> None:
    for _ in range(50):
        registry.activate("deeppcb", "1")
        registry.activate("deeppcb", "1-int8")
    # it was 101 entries long (one per activation), and GET /v1/models listed them all
    assert registry.models()["deeppcb"].history == ["1"]
    assert registry.rollback("deeppcb") == "1"
    # nothing earlier than 1: a rollback does not walk back and forth between the two
    with pytest.raises(ConfigError, match="no earlier version"):
        registry.rollback("deeppcb")


def test_delivered_events_do_not_grow_the_database_past_a_full_quota(tmp_path: Path) -> None:
    store = Store(tmp_path, None, box_id="box1")
    outbox = Outbox(store.engine, "box1")
    waiting = outbox.enqueue("lineside/box1/status", {"state": "waiting"})  # never delivered

    def deliver(n: int = 20) -> None:
        ids = [outbox.enqueue("lineside/box1/cam/inspection", {"pad": "x" * 4000})
               for _ in range(n)]
        outbox.mark_delivered(ids)

    deliver()
    store.checkpoint()
    store.max_bytes = store.overhead_bytes()  # full: the next events go over it
    sizes = []
    for _ in range(10):
        deliver()
        store.enforce_retention()
        store.checkpoint()
        sizes.append(store.overhead_bytes())
    # kept "for a look" (keep_delivered_s, up to 30 days) but counted in the quota, which
    # nothing could free: the file grew 80 KB a round here; on a box, past the quota, and
    # every inspection after was refused "not stored" for good (soak, session 38)
    assert sizes[-1] - sizes[2] <= 16 * 4096, sizes
    assert [e.id for e in outbox.pending()] == [waiting]  # what waits is never purged
