"""Authentication and body limits before any route reads a byte of the body.

FastAPI reads and parses a JSON body before it runs a route's dependencies, so a role
check written as a dependency comes too late: an unauthenticated caller could make the
server buffer and parse any body. This pure-ASGI middleware runs first, and for every
request that can carry a body (POST, PUT, PATCH, DELETE):

- under ``/v1/``, ``/v2/`` and ``/fleet/`` (a hub), checks that the caller holds a valid
  key or session when keys are configured (401 at once, the body unread); the route's
  own ``require(role)`` then checks the role before FastAPI parses the body
  (``deps.RoleFirstRoute``), and for the large-body routes the gate checks it too, so a
  key of the wrong role cannot make the server read a large body either;
- bounds the body: image and tensor routes (``LARGE_BODY_ROUTES``) to ``max_body_bytes``,
  every other route to ``max_json_bytes``; a declared ``Content-Length`` over it is
  refused at once, a chunked body when it passes the limit (a small body is read here in
  full, so its 413 comes from here and not from a parser deep inside a route);
- bounds the body's time: each part within ``body_timeout_s`` of the one before, and the
  whole at ``min_body_rate`` bytes/s on average once its first ``body_timeout_s`` passed
  (a trickle of a byte per part would otherwise reset the per-part timeout for hours,
  and hold whatever the request holds: a hub's forward place). 0 turns the rate off.

A body failure is answered by the gate and counted once in
``lineside_request_errors_total``: a route that reads the body itself raises it to the
error handler (which leaves it uncounted: :func:`answers`), and FastAPI turns a JSON
route's into its own 400, which the gate replaces.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lineside_inspect.config import Role, Settings
from lineside_inspect.errors import (
    BodyTimeoutError,
    BodyTooLargeError,
    Forbidden,
    ImageTooLargeError,
    LinesideError,
    error_body,
    retry_after,
)
from lineside_inspect.server.body import refuse_encoding
from lineside_inspect.server.deps import ALLOWED, authenticate

_NAME = r"[^/]+"
# (method, path, role) of the routes whose body is an image or a tensor; every other
# route takes a small JSON or form body
LARGE_BODY_ROUTES: tuple[tuple[str, re.Pattern[str], Role], ...] = (
    ("POST", re.compile(r"/v1/inspect"), "line"),
    ("PUT", re.compile(rf"/v1/references/{_NAME}"), "admin"),
    ("POST", re.compile(rf"/v2/models/{_NAME}/infer"), "line"),
    ("POST", re.compile(rf"/v2/models/{_NAME}/versions/{_NAME}/infer"), "line"),
    # a hub: a box's forwarded batch of inspections with their images (fleet/protocol.py)
    ("POST", re.compile(rf"/fleet/v1/boxes/{_NAME}/inspections"), "box"),
    # a hub: a signed model package published by an admin (fleet/hub/models.py)
    ("PUT", re.compile(rf"/fleet/v1/packages/{_NAME}/{_NAME}"), "admin"),
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SCOPE_KEY = "lineside.gate.body"  # the request's _Limited body, in its ASGI scope
API_PREFIXES = ("/v1/", "/v2/", "/fleet/")


def large_body_role(method: str, path: str) -> Role | None:
    """The role of the large-body route ``method path`` reaches, None for any other."""
    for m, pattern, role in LARGE_BODY_ROUTES:
        if m == method and pattern.fullmatch(path):
            return role
    return None


class Gate:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._admit(scope, receive)
        except LinesideError as exc:
            await _answer(exc, scope, send)
            return
        if not isinstance(receive, _Limited):
            await self.app(scope, receive, send)
            return
        body = receive
        scope[_SCOPE_KEY] = body  # for the error handler: answers()

        async def answer_body_error(message: Message) -> None:
            if body.error is None:
                await send(message)
            elif message["type"] == "http.response.start":  # the app's answer to it: ours
                await _answer(body.error, scope, send)

        await self.app(scope, receive, answer_body_error)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        path: str = scope["path"]
        role = large_body_role(scope["method"], path)
        if self.settings.api_keys and path.startswith(API_PREFIXES):
            who = authenticate(Request(scope))
            if who is not None and role is not None and who.role not in ALLOWED[role]:
                raise Forbidden(f"key {who.name!r} has role {who.role!r}; this needs {role!r}")
        if path.startswith(API_PREFIXES):
            # a compressed tensor was "not valid JSON": the integrator hunted a JSON bug
            # (tritonclient's request_compression_algorithm; OIP review, session 33)
            refuse_encoding(dict(scope["headers"]).get(b"content-encoding", b"").decode("latin-1"))
        limit = self.settings.max_body_bytes if role else self.settings.max_json_bytes
        # an image route keeps the code its callers know (image_too_large)
        too_large = ImageTooLargeError if role else BodyTooLargeError
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(f"body of {int(declared)} bytes is over the limit of "
                            f"{limit} bytes for this route")
        pace = _Pace(self.settings.body_timeout_s, self.settings.min_body_rate)
        if role:
            return _Limited(receive, limit, pace)
        return await _buffered(receive, limit, pace)


class _Limited:
    """``receive`` that raises :class:`ImageTooLargeError` once the body passes ``limit``
    (the route reading it, a multipart parser too, stops there: nothing is spooled
    beyond) and :class:`BodyTimeoutError` when the body is late (:class:`_Pace`). The
    error is kept: FastAPI turns any failure reading a JSON body into its own 400, which
    :meth:`Gate.__call__` replaces by this answer."""

    def __init__(self, receive: Receive, limit: int, pace: _Pace) -> None:
        self.receive = receive
        self.limit = limit
        self.pace = pace
        self.done = False
        self.error: LinesideError | None = None

    async def __call__(self) -> Message:
        if self.done:  # after the body only http.disconnect comes, whenever it comes
            return await self.receive()
        try:
            message = await self.pace.next(self.receive)
            if message["type"] == "http.request" and self.pace.size > self.limit:
                raise ImageTooLargeError(f"body is over the limit of {self.limit} bytes")
        except LinesideError as exc:
            self.error = exc
            raise
        if message["type"] == "http.request":
            self.done = not message.get("more_body", False)
        return message


class _Pace:
    """A body's time budget: each part within ``timeout_s`` of the one before, and no part
    later than ``timeout_s`` + (bytes so far) / ``min_rate`` after the first read (no
    such bound when ``min_rate`` is 0)."""

    def __init__(self, timeout_s: float, min_rate: float) -> None:
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.start = anyio.current_time()
        self.size = 0

    async def next(self, receive: Receive) -> Message:
        by_rate = (self.start + self.timeout_s + self.size / self.min_rate - anyio.current_time()
                   if self.min_rate > 0 else self.timeout_s)
        wait_s = min(self.timeout_s, by_rate)
        try:
            with anyio.fail_after(max(wait_s, 0.0)):
                message = await receive()
        except TimeoutError:
            if by_rate < self.timeout_s:
                raise BodyTimeoutError(
                    f"the request body came at under {self.min_rate:g} bytes/s on average "
                    f"(after its first {self.timeout_s:g}s)") from None
            raise BodyTimeoutError(
                f"no part of the request body arrived for {self.timeout_s:g}s") from None
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
        return message


async def _buffered(receive: Receive, limit: int, pace: _Pace) -> Receive:
    """Read the whole (small) body now, refusing it past ``limit``; replay it after."""
    chunks: list[bytes] = []
    while True:
        message = await pace.next(receive)
        if message["type"] != "http.request":
            return _replay(b"".join(chunks), message, receive)
        if pace.size > limit:
            raise BodyTooLargeError(f"body is over the limit of {limit} bytes for this route")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return _replay(b"".join(chunks), None, receive)


def _replay(body: bytes, pending: Message | None, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return pending or {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when it comes

    return replay


def answers(scope: Scope, exc: Exception) -> bool:
    """Whether ``exc`` is the body failure the gate answers (and counts) for this request:
    the error handler then leaves it uncounted, so it is counted once."""
    body = scope.get(_SCOPE_KEY)
    return isinstance(body, _Limited) and body.error is exc


async def _answer(exc: LinesideError, scope: Scope, send: Send) -> None:
    """The error answer, counted in the app's request errors."""
    metrics = getattr(scope["app"].state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(exc.code).inc()
    payload = json.dumps(error_body(exc.code, exc.message)).encode()
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(payload)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if (wait := retry_after(exc)) is not None:
        headers.append((b"retry-after", str(wait).encode()))
    if exc.status in (408, 413):
        # the unread body would be taken for the next request: end this connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def install(app: Any, settings: Settings) -> None:
    app.add_middleware(Gate, settings=settings)
