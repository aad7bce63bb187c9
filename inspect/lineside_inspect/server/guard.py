"""Who may talk to the server from a browser: Host and Origin checks, before anything else.

A page on any web site, opened in a browser on the line PC, can send requests to
``http://127.0.0.1:8000``: it cannot read the answers, but a ``POST`` still runs (a
``no-cors`` fetch or a plain form), and through DNS rebinding (a name of the attacker's
that first resolves to their server, then to 127.0.0.1) it can even read them. So:

* without API keys only loopback ``Host`` names are answered (421 otherwise): a rebound
  name arrives with the attacker's ``Host``;
* a URL whose path or query holds a control character (NUL, CR, LF, ...) is refused
  (400): no name, id or filter of this API has one; a NUL in a filter was a 500 on
  PostgreSQL (its text cannot hold one), and a ``part_id`` with one was journalled but
  could not be applied;
* in every mode a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` is
  present and is neither the server's own nor listed in ``cors_origins`` is refused (403),
  and so is one a browser marks ``Sec-Fetch-Site: cross-site``/``same-site`` without an
  allowed ``Origin``. Clients that are not browsers (curl, line PLCs) send neither header.

Pure ASGI, so it answers before any route runs or any body is read.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote_to_bytes, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lineside_inspect.config import Settings
from lineside_inspect.errors import (
    ForeignOriginError,
    InvalidUrlError,
    LinesideError,
    MisdirectedHostError,
)
from lineside_inspect.names import CONTROL_RE

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
WILDCARD_BINDS = {"0.0.0.0", "::", ""}


def split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (``[v6]:port`` too) as (lower-case host, port); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        rest = ":" + port_text
    else:
        host, rest = value, ""
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
            return None
        return host, int(rest[1:])
    return (host, None) if host else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """An origin as (scheme, host, port) with the scheme's default port filled in."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.path not in ("", "/"):
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme, 0)


def own_origin(scope: Scope) -> tuple[str, str, int] | None:
    """This server's origin as the request addressed it: the scheme it came over and its
    ``Host``."""
    scheme = str(scope.get("scheme", "http"))
    host = split_host(Headers(scope=scope).get("host", ""))
    if host is None:
        return None
    return scheme, host[0], host[1] or DEFAULT_PORTS.get(scheme, 0)


def is_same_origin(scope: Scope) -> bool:
    """The request carries an ``Origin`` header naming this very server."""
    origin = Headers(scope=scope).get("origin")
    return origin is not None and _origin_key(origin) is not None \
        and _origin_key(origin) == own_origin(scope)


class Guard:
    """ASGI middleware enforcing the module's rules; ``settings`` says the mode."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.keyless = not settings.api_keys
        self.extra_origins = {k for o in settings.cors_origins if (k := _origin_key(o))}
        hosts = {h.lower().strip("[]") for h in settings.allowed_hosts}
        if settings.host not in WILDCARD_BINDS:  # a server bound to one address answers to it
            hosts.add(settings.host.lower().strip("[]"))
        self.extra_hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            try:
                self.check(scope)
            except LinesideError as exc:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = {"error": {"code": exc.code, "message": exc.message}}
                await JSONResponse(body, status_code=exc.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        _check_url(scope)
        headers = Headers(scope=scope)
        if self.keyless:
            host = split_host(headers.get("host", ""))
            if host is None or not (is_loopback(host[0]) or host[0] in self.extra_hosts):
                raise MisdirectedHostError(
                    f"Host {_quote(headers.get('host', ''))} is not this server's: without API keys "
                    "it answers only to loopback names (127.0.0.1, localhost, [::1]); configure "
                    "api_keys, or list the name in allowed_hosts")
        if scope["type"] == "http" and scope["method"] not in UNSAFE_METHODS:
            return
        origin = headers.get("origin")
        site = headers.get("sec-fetch-site")
        if origin == "null" and site == "same-origin":
            # our pages' own form posts: under "Referrer-Policy: no-referrer" a browser sends
            # "Origin: null", and Sec-Fetch-Site (which no page can set) vouches for it
            return
        if origin is not None:
            key = _origin_key(origin)
            if key is None or (key != own_origin(scope) and key not in self.extra_origins):
                raise ForeignOriginError(
                    f"refused a {scope.get('method', 'websocket')} from a page of origin "
                    f"{_quote(origin)}: only this server's own pages (and cors_origins) may "
                    "change state")
        elif (site or "same-origin") not in ("same-origin", "none"):
            raise ForeignOriginError("refused a state-changing request a browser sent from "
                                     "another site")


_CONTROL = re.compile(CONTROL_RE.pattern.encode())  # the path and query are bytes here


def _check_url(scope: Scope) -> None:
    """Refuse a path or query (as decoded: ``%00`` is a NUL) holding a control character."""
    path = scope.get("path", "")
    query = unquote_to_bytes(scope.get("query_string", b""))
    where = ("path" if _CONTROL.search(path.encode("utf-8", "surrogateescape"))
             else "query" if _CONTROL.search(query) else None)
    if where is not None:
        raise InvalidUrlError(f"the URL's {where} holds a control character (NUL, CR, LF, ...): "
                              "names, ids and filters are plain text")
    # bytes that are no UTF-8 (a reader sending Latin-1: "SN-%DC1") were each read as
    # U+FFFD: "SN-%DC1" and "SN-%D61" were kept as one part id, neither as sent (session 53)
    try:
        query.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUrlError(
            f"the URL's query holds byte 0x{query[exc.start]:02X}, which is not UTF-8: send "
            "names, ids and filters percent-encoded as UTF-8 ('Ü' is %C3%9C)") from None


def _quote(value: str) -> str:
    return repr(value[:100] + ("…" if len(value) > 100 else ""))
