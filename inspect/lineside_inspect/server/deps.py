"""Request dependencies: the app's services and API-key auth by role."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from lineside_inspect.config import Role, Settings, hash_key
from lineside_inspect.errors import CsrfError, Forbidden, NotFoundError, Unauthorized
from lineside_inspect.references import ReferenceLibrary
from lineside_inspect.server.guard import UNSAFE_METHODS, is_same_origin
from lineside_inspect.server.limiter import Limiter
from lineside_inspect.server.metrics import Metrics
from lineside_inspect.server.registry import Registry
from lineside_inspect.server.service import InspectionService
from lineside_inspect.server.sessions import CSRF_HEADER, SessionStore, cookie_name
from lineside_inspect.server.throttle import SignInThrottle

if TYPE_CHECKING:
    from lineside_inspect.cameras import CameraManager
    from lineside_inspect.store import Store

log = logging.getLogger("lineside")

# which roles may do what: admin may do everything
ALLOWED: dict[Role, set[Role]] = {
    "line": {"line", "admin"},
    # a line lead watching yield: the status page, live views and the dashboard's figures,
    # not the stored inspections nor reviewing (a reviewer key reviewed as well)
    "viewer": {"viewer", "reviewer", "admin"},
    "reviewer": {"reviewer", "admin"},
    "admin": {"admin"},
    # only a box speaks for a box: an admin key does not forward inspections for one
    "box": {"box"},
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    # a hub's box key pinned to a site and line (config.ApiKey): the key that matched
    site: str | None = None
    line: str | None = None


def _key_from(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def principal_for_key(settings: Settings, key: str) -> Principal:
    digest = hash_key(key)
    for k in settings.api_keys:
        if hmac.compare_digest(k.sha256, digest):
            return Principal(k.name, k.role, k.site, k.line)
    raise Unauthorized("unknown API key")


def client_address(request: Request) -> tuple[str, str | None]:
    """The caller's address as the server sees it (a trusted proxy's X-Forwarded-For
    applied by uvicorn: ``forwarded_allow_ips``), and for IPv6 its /64 too (one host may
    hold a whole /64: 2^64 addresses to guess from, counted together at a higher limit,
    ``throttle.NETWORK_FACTOR``); "unknown" when the transport gives none."""
    host = request.client.host if request.client else "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host, None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d: the IPv4 client it is
            return str(ip.ipv4_mapped), None
        return str(ip), str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip), None


_CHECKED = "lineside.key_checked"  # in the ASGI scope: (key, its holder or None)


def check_key(request: Request, key: str) -> Principal:
    """``key``'s holder, counting an unknown key against the caller's address; refused
    at once (429) while that address has had too many (:mod:`.throttle`). The answer is
    kept in the request's scope: the hub's box front, the gate and the route each check
    the key of one request, which counted as two or three failures."""
    checked = request.scope.get(_CHECKED)
    if checked is not None and checked[0] == key:
        if checked[1] is None:
            raise Unauthorized("unknown API key")
        return checked[1]  # type: ignore[no-any-return]
    throttle: SignInThrottle = request.app.state.sign_ins
    address, network = client_address(request)
    throttle.check(address, network)
    try:
        who = principal_for_key(request.app.state.settings, key)
    except Unauthorized:
        locked = throttle.failed(address, network)
        if locked:
            _log_locked(request, address, network, locked)
        request.scope[_CHECKED] = (key, None)
        raise
    request.scope[_CHECKED] = (key, who)
    return who


def _log_locked(request: Request, address: str, network: str | None, what: str) -> None:
    """An address (or its IPv6 /64) just reached the throttle's limit: say so, and when it
    looks like a reverse proxy the server does not trust (its requests carry an
    ``X-Forwarded-For`` that was not applied: none of its hops is the address the request
    came from), that every client behind it is now refused with it."""
    untrusted_proxy = bool(request.headers.getlist("x-forwarded-for")) \
        and address not in _forwarded_hops(request)
    who = f"the IPv6 network {network}" if what == "network" and network else address
    log.warning("sign-in: %s is refused for a while: too many unknown keys from it%s", who,
                " -- it sends X-Forwarded-For that is not trusted: if it is a reverse proxy "
                "(an Ingress, a load balancer), list it in forwarded_allow_ips, or every client "
                "behind it is refused with it (docs/security.md, \"Guessing keys\")"
                if untrusted_proxy else "")


def _forwarded_hops(request: Request) -> set[str]:
    """The addresses an ``X-Forwarded-For`` names, as :func:`client_address` writes them
    (a port, brackets and IPv6's long or upper-case forms taken off: uvicorn applies
    "203.0.113.7:50432" as 203.0.113.7); what is not an address is left out."""
    hops = set()
    for value in request.headers.getlist("x-forwarded-for"):
        for hop in value.split(",")[:64]:
            hop = hop.strip()
            if hop.startswith("["):
                hop = hop[1:].partition("]")[0]
            elif hop.count(":") == 1:
                hop = hop.partition(":")[0]
            try:
                ip = ipaddress.ip_address(hop)
            except ValueError:
                continue
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            hops.add(str(ip))
    return hops


def authenticate(request: Request) -> Principal | None:
    """The key's holder (or the review session's), local admin when no keys are configured
    (loopback only). A key header wins over the session cookie."""
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return Principal("local", "admin")
    key = _key_from(request)
    if key:
        return check_key(request, key)
    token = request.cookies.get(cookie_name(request))
    if token:
        return _session_principal(request, token)
    raise Unauthorized("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key'")


def _session_principal(request: Request, token: str) -> Principal:
    """A review session's holder. Browsers send the cookie with any same-site request, so
    a state-changing one must also prove it comes from the page: the session's CSRF token
    in ``X-CSRF-Token`` (which the page reads from its own HTML), or an ``Origin`` naming
    this server. Key headers need neither: a browser cannot add them across origins."""
    sessions: SessionStore = request.app.state.sessions
    session = sessions.get(token)
    if session is None:
        raise Unauthorized("review session expired or signed out: sign in again at /review")
    if request.method in UNSAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not (hmac.compare_digest(sent.encode(), session.csrf.encode())
                or is_same_origin(request.scope)):
            raise CsrfError("a state-changing call signed in by the review cookie needs the "
                            "page's X-CSRF-Token header (or an Origin naming this server)")
    return Principal(session.name, session.role)


def authorize(request: Request, role: Role) -> Principal:
    """The caller, if its key or session holds ``role`` (or one allowed to act as it)."""
    who = authenticate(request)
    assert who is not None
    if who.role not in ALLOWED[role]:
        raise Forbidden(f"key {who.name!r} has role {who.role!r}; this needs {role!r}")
    return who


def key_holder(request: Request, who: Principal) -> str | None:
    """Whose share of the limiter's places a request takes: its key's (a review session
    counts as its user's key), None without API keys (loopback callers share no identity)."""
    settings: Settings = request.app.state.settings
    return who.name if settings.api_keys else None


# on a dependency's function: its check of the caller, which reads no body (RoleFirstRoute)
_BEFORE_BODY = "lineside_before_body"


def before_body(dep: Callable[..., Any], check: Callable[[Request], object]) -> None:
    """Mark ``dep`` as a caller check :class:`RoleFirstRoute` runs before the body."""
    setattr(dep, _BEFORE_BODY, check)


def require(role: Role) -> object:
    async def dep(request: Request) -> Principal:  # async: no thread-pool hop per request
        return authorize(request, role)

    before_body(dep, lambda request: authorize(request, role))
    return Depends(dep)


class RoleFirstRoute(APIRoute):
    """A route whose caller checks (``require(role)`` and others marked with
    :func:`before_body`) run before its body is parsed. FastAPI parses a JSON body before
    it runs any dependency, so a key of a lesser role got a 400/422 for a malformed body
    on a route it may not call, the body parsed for it (the gate has checked the key and
    bounded the body by then, not the role). The dependency runs again after, as before:
    a key's check is kept in the request's scope (no second throttle count)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        checks = [check for call in _dependency_calls(self.dependant)
                  if (check := getattr(call, _BEFORE_BODY, None)) is not None]
        if not checks or not self.dependant.body_params:
            return handler

        async def checked(request: Request) -> Response:
            for check in checks:
                check(request)
            return await handler(request)

        return checked


def _dependency_calls(dependant: Any) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _dependency_calls(sub)


Q = TypeVar("Q", bound=BaseModel)


def query_model(model: type[Q], request: Request) -> Q:
    """The query string as ``model``, a 422 naming each bad parameter as FastAPI's own
    validation would (a repeated parameter: its last value, as FastAPI takes). For the hot
    path, where FastAPI's per-parameter solving costs more than the parsing itself;
    :func:`query_parameters` describes the same model in the OpenAPI document."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]) from None


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """``model``'s fields as OpenAPI query parameters (for ``openapi_extra``)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required,
             **({"description": prop["description"]} if "description" in prop else {}),
             "schema": {k: v for k, v in prop.items() if k != "description"}}
            for name, prop in schema["properties"].items()]


LineUser = Annotated[Principal, require("line")]
Viewer = Annotated[Principal, require("viewer")]
Reviewer = Annotated[Principal, require("reviewer")]
Admin = Annotated[Principal, require("admin")]


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def get_limiter(request: Request) -> Limiter:
    return request.app.state.limiter  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


RegistryDep = Annotated[Registry, Depends(get_registry)]
LimiterDep = Annotated[Limiter, Depends(get_limiter)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_references(request: Request) -> ReferenceLibrary:
    return request.app.state.references  # type: ignore[no-any-return]


ReferencesDep = Annotated[ReferenceLibrary, Depends(get_references)]


async def get_service(request: Request) -> InspectionService:
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[InspectionService, Depends(get_service)]


def get_store(request: Request) -> Store:
    store: Store | None = request.app.state.store
    if store is None:
        raise NotFoundError("this server keeps no inspection store")
    return store


def get_cameras(request: Request) -> CameraManager:
    manager: CameraManager | None = request.app.state.cameras
    if manager is None:
        raise NotFoundError("no cameras are configured on this server")
    return manager

