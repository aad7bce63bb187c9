"""The hub's front for box routes: who may send a body, and how many forwarded batches are
read at once, decided before a byte of any body is read.

The shared gate (``server/gate.py``) authenticates and bounds every body, but it knows
roles, not box ids: the path's box id was checked by the route, after FastAPI had read
and parsed the body (up to 64 MiB on the forward route, 1 MiB on the others). This
pure-ASGI middleware runs before the gate, for every POST to the box routes that take a
body, ``/fleet/v1/boxes/{box}/inspections``, ``/reviews`` and ``/status`` (all of them a
box's own; another method or path goes on to the router's 405 or 404):

- the path's box id is full-matched (422) and the caller must hold a key of role ``box``
  named that id (403), so a box speaks only for itself and no other key gets a body read;
- the forward route (``protocol.FORWARD``) holds one of ``max_forward_bodies`` places for
  the whole request (the server's :class:`~lineside_inspect.server.limiter.Limiter`
  admission): beyond, 503 + Retry-After at once, the body unread. So the memory forwarded
  batches can take is ``max_forward_bodies x max_body_bytes`` as received (about 4 times
  that at peak while parsed and decoded), by configuration, however many connections box
  keys open;
- a box has one forwarded body in the hub at a time (its forwarder sends one batch after
  another): a second one while the first is read or applied is 429
  ``forward_in_progress`` + Retry-After, the body unread; and one review batch
  (``protocol.REVIEWS_UP``; 429 ``reviews_in_progress``). So one box key cannot take every
  place and starve the other boxes; and the gate's minimum body rate
  (``server/gate.py``) bounds how long a slow body holds its place;
- a forwarded body holds at most ``MAX_FORWARD_VALUES`` JSON objects, arrays and values
  (its ``{``, ``[`` and ``,`` counted as it comes in): parsed, each is a Python object
  of 30 to 200 bytes, so 64 MiB of ``[],`` took 1.6 GB to parse (25 times the body, not
  the 4 times the docs plan for). Beyond, 413 ``body_too_large`` before the rest is read,
  and the box halves its batch as for any 413.

An unauthenticated request is passed on: the gate answers it 401, as for every route.
"""

from __future__ import annotations

import json
import re

from prometheus_client import Gauge
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lineside_inspect.errors import (
    BodyTooLargeError,
    ConfigError,
    Forbidden,
    LinesideError,
    Overloaded,
    error_body,
    retry_after,
)
from lineside_inspect.fleet.protocol import (
    HUB_FEATURES,
    HUB_FEATURES_HEADER,
    NAME_PATTERN,
    PREFIX,
)
from lineside_inspect.server.deps import authenticate
from lineside_inspect.server.limiter import Limiter
from lineside_inspect.server.metrics import Metrics


class ForwardInProgress(LinesideError):
    """A box's second forwarded batch while its first is still being read or applied."""

    code = "forward_in_progress"
    status = 429


class ReviewsInProgress(LinesideError):
    """A box's second review batch while its first is still being applied."""

    code = "reviews_in_progress"
    status = 429


_BOX_ROUTE = re.compile(re.escape(PREFIX) + r"/boxes/([^/]*)/([^/]+)")
_NAME = re.compile(NAME_PATTERN)
FORWARD_LEAF = "inspections"  # protocol.FORWARD's last segment
REVIEWS_LEAF = "reviews"  # protocol.REVIEWS_UP's
# the box routes that take a body, all POST: any other method or leaf goes on to the
# router (405 or 404, no body read); a PUT to the forward route was a 403 or 422 here
BODY_LEAVES = frozenset({FORWARD_LEAF, REVIEWS_LEAF, "status"})  # "status": protocol.STATUS's
# a forwarded batch's JSON objects, arrays and values: a record holds at most ~100,000
# (10,000 defects of 8 each, its classes and reasons), images none (base64)
MAX_FORWARD_VALUES = 1_000_000
_IN_PROGRESS: dict[str, tuple[type[LinesideError], str]] = {
    FORWARD_LEAF: (ForwardInProgress, "a forwarded batch"),
    REVIEWS_LEAF: (ReviewsInProgress, "a review batch")}


class BoxFront:
    def __init__(self, app: ASGIApp, max_forward_bodies: int, metrics: Metrics) -> None:
        self.app = app
        # admission only (no slots): a place per forwarded body being read or applied
        self.forwards = Limiter(max_forward_bodies, 0, 0.0)
        self.max_forward_bodies = max_forward_bodies
        # boxes with a forwarded body / a review batch in this process now (the event
        # loop's: no lock needed)
        self.forwarding: set[str] = set()
        self.reviewing: set[str] = set()
        Gauge("lineside_hub_forward_bodies", "Forwarded batches being read or applied now "
              f"(at most max_forward_bodies = {max_forward_bodies})",
              registry=metrics.registry).set_function(lambda: self.forwards.in_system)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _BOX_ROUTE.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST" or match[2] not in BODY_LEAVES:
            await self.app(scope, receive, send)
            return
        box_id, leaf = match.groups()
        try:
            allowed = self._caller_may_send(scope, box_id)
        except LinesideError as exc:
            await answer(exc, scope, send)
            return
        if not allowed or leaf not in _IN_PROGRESS:
            await self.app(scope, receive, send)  # not allowed: no valid key, the gate's 401
            return
        # one batch of each kind per box at a time (its box sends one after another, and
        # retries a 429): a batch of 1,000 reviews took 30-40 s to apply and went on after
        # its box hung up; four at once from one key kept a core busy for minutes
        busy = self.forwarding if leaf == FORWARD_LEAF else self.reviewing
        if box_id in busy:
            refusal, what = _IN_PROGRESS[leaf]
            await answer(refusal(f"box {box_id} has {what} in the hub already (a box sends "
                                 "one at a time); retry once it is answered"), scope, send)
            return
        busy.add(box_id)
        try:
            if leaf == FORWARD_LEAF:
                await self._forward(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            busy.discard(box_id)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A forwarded batch in one of ``max_forward_bodies`` places, or 503 at once."""
        admitted = False
        try:
            async with self.forwards.admission():
                admitted = True
                await self.app(scope, _Counted(receive), send)
        except Overloaded:
            if admitted:
                raise
            await answer(Overloaded(
                f"the hub is reading {self.max_forward_bodies} forwarded batches already "
                "(max_forward_bodies); retry shortly"), scope, send)

    @staticmethod
    def _caller_may_send(scope: Scope, box_id: str) -> bool:
        """True for the box's own key; False when the caller is not authenticated (the
        gate answers); raises 422 / 403 for a bad box id or another caller."""
        try:
            who = authenticate(Request(scope))
        except LinesideError:
            return False
        if not _NAME.fullmatch(box_id):
            raise ConfigError(f"box id must match {NAME_PATTERN}")
        if who is None or who.role != "box":
            role = who.role if who is not None else "none"
            name = who.name if who is not None else "?"
            raise Forbidden(f"key {name!r} has role {role!r}; only box {box_id!r}'s own key "
                            "may send this")
        if who.name != box_id:
            raise Forbidden(f"key {who.name!r} speaks only for box {who.name!r}, not {box_id!r}")
        return True


class _Counted:
    """``receive`` that counts a forwarded body's JSON values as it comes in (an upper
    bound: ``{``, ``[`` and ``,`` in strings count too) and raises
    :class:`BodyTooLargeError` past ``MAX_FORWARD_VALUES``; the gate, whose body reader
    wraps this one, answers it (``server/gate.py``)."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.values = 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            self.values += body.count(b"{") + body.count(b"[") + body.count(b",")
            if self.values > MAX_FORWARD_VALUES:
                raise BodyTooLargeError(
                    f"the forwarded batch holds over {MAX_FORWARD_VALUES} JSON objects, arrays "
                    "and values (a record has at most about 100,000): send fewer inspections "
                    "at a time")
        return message


async def answer(exc: LinesideError, scope: Scope, send: Send) -> None:
    """The error answer, sent before the body is read: the connection is closed after it
    (the unread body would otherwise be taken for the next request)."""
    metrics = getattr(scope["app"].state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(exc.code).inc()
    payload = json.dumps(error_body(exc.code, exc.message)).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]
    if (wait := retry_after(exc)) is not None:
        headers.append((b"retry-after", str(wait).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class HubFeatures:
    """Every answer of the hub names what it takes beyond version 1
    (``protocol.HUB_FEATURES_HEADER``: ``protocol.HUB_FEATURES``), its refusals and
    ``/healthz`` too: a box sends a record's ``tiles`` only to a hub that said so, and a
    hub of an earlier release (no such header) gets records without it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = ", ".join(HUB_FEATURES)
        if scope["type"] != "http" or not value:
            await self.app(scope, receive, send)
            return

        async def announce(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault(HUB_FEATURES_HEADER, value)
            await send(message)

        await self.app(scope, receive, announce)
