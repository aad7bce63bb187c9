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


# small JSON bodies of routes for admins (reviewers for the review): malformed, or of
# another schema, as another role sends them
BODY_ROUTES = [
    ("POST", "/v1/models", "admin"),
    ("PUT", "/v1/recipes/x", "admin"),
    ("POST", "/v1/models/deeppcb/gate", "admin"),
    ("POST", "/v1/golden/g", "admin"),
    ("POST", "/v1/inspections/" + "0" * 32 + "/reviews", "reviewer"),
]


@pytest.mark.parametrize("method,path,role", BODY_ROUTES)
def test_a_role_is_checked_before_the_body_is_parsed(srv, method: str, path: str,
                                                     role: str) -> None:
    """FastAPI parses a JSON body before any dependency runs: a key of a lesser role got
    422 "JSON decode error" on a route it may not call, its body parsed for it (review,
    session 37). Now 403 first, whatever the body; the route's own role still gets the
    parse error."""
    json_type = {"content-type": "application/json"}
    for who in ("line", "viewer", "reviewer"):
        if who == role:
            continue
        with srv.client(who) as c:
            for body in (b"{", b'{"nope": [1, 2]}'):
                r = c.request(method, path, content=body, headers=json_type)
                assert r.status_code == 403 and _code(r) == "forbidden", (who, body, r.text)
    with srv.client(role) as c:
        r = c.request(method, path, content=b"{", headers=json_type)
        assert r.status_code == 422 and "JSON decode error" in r.text, r.text


def test_every_router_checks_roles_before_bodies() -> None:
    """Every APIRouter of the package is a RoleFirstRoute's: a new router that is not
    would parse bodies for any valid key again."""
    import importlib
    from pathlib import Path

    from fastapi import APIRouter

    import lineside_inspect
    from lineside_inspect.server.deps import RoleFirstRoute

    root = Path(lineside_inspect.__file__).parent
    found = []
    # by file: server/ is a namespace package, which pkgutil's walk leaves out
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for attr, value in vars(importlib.import_module(name)).items():
            if isinstance(value, APIRouter):
                found.append((name, attr, value.route_class))
    assert len({f[0] for f in found}) >= 15
    assert [f for f in found if f[2] is not RoleFirstRoute] == []
