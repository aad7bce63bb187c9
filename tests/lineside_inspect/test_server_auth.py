"""API keys and roles on every route; the loopback-only rule without keys."""

from __future__ import annotations

import pytest

from lineside_inspect.config import Settings
from lineside_inspect.errors import ConfigError

ROUTES = [  # method, path, role that may call it (admin may call everything)
    ("POST", "/v1/inspect", "line"),
    ("POST", "/v2/models/deeppcb/infer", "line"),
    # a model's metadata is for the keys that may infer with it (anyone listed the models)
    ("GET", "/v2/models/deeppcb", "line"),
    ("GET", "/v2/models/deeppcb/ready", "line"),
    ("GET", "/v1/models", "admin"),
    ("POST", "/v1/models", "admin"),
    ("POST", "/v1/models/deeppcb/activate", "admin"),
    ("POST", "/v1/models/deeppcb/rollback", "admin"),
    ("GET", "/v1/recipes", "admin"),
    ("PUT", "/v1/recipes/x", "admin"),
]
OPEN = ["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"]


def _code(r: object) -> str:
    """The error's code: under /v2 in the protocol's shape, {"error": "...", "code"}."""
    doc = r.json()  # type: ignore[attr-defined]
    return str(doc["code"] if isinstance(doc["error"], str) else doc["error"]["code"])


@pytest.mark.parametrize("method,path,role", ROUTES)
def test_roles(srv, method: str, path: str, role: str) -> None:
    with srv.client() as anon:
        r = anon.request(method, path)
        assert r.status_code == 401 and _code(r) == "unauthorized"
        r = anon.request(method, path, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401
    for who in ("line", "reviewer", "admin"):
        with srv.client(who) as c:
            r = c.request(method, path)
        allowed = who == role or who == "admin"
        if allowed:
            assert r.status_code not in (401, 403), (who, r.text)
        else:
            assert r.status_code == 403 and _code(r) == "forbidden", (who, r.text)


@pytest.mark.parametrize("path", OPEN)
def test_open_routes_need_no_key(srv, path: str) -> None:
    with srv.client() as c:
        assert c.get(path).status_code == 200


def test_no_keys_means_loopback_only() -> None:
    Settings(host="127.0.0.1").check_bind()
    Settings(host="::1").check_bind()
    with pytest.raises(ConfigError, match="without API keys"):
        Settings(host="0.0.0.0").check_bind()
    Settings(host="0.0.0.0", insecure=True).check_bind()


def test_without_keys_everything_is_open_on_loopback(launch, image_bytes: bytes) -> None:
    open_srv = launch(keys=False)
    with open_srv.client() as c:
        r = c.post("/v1/inspect", content=image_bytes, headers={"content-type": "image/jpeg"})
        assert r.status_code == 200
        assert c.get("/v1/models").status_code == 200
