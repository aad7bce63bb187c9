"""The object store client against a real SeaweedFS S3 API."""

from __future__ import annotations

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
    with pytest.raises(ObjectStoreUnavailable, match="refused"):
        ObjectStore(ObjectStoreSettings(**doc)).ensure_bucket()


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
