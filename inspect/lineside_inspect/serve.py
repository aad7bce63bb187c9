"""Running the server under uvicorn with a graceful shutdown: readiness drops first,
in-flight requests finish, then the process exits."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import math
import os
import socket
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.lifespan.on import LifespanOn

try:  # httptools (C) parses HTTP/1.1 several times faster than h11 (pure Python)
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HTTPProtocol
except ImportError:  # pragma: no cover - httptools is an edge dependency
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HTTPProtocol  # type: ignore[assignment]

from uvicorn.protocols.http.flow_control import service_unavailable as _uvicorn_busy

from lineside_inspect.allocator import use_one_arena
from lineside_inspect.config import Settings
from lineside_inspect.errors import ConfigError, PackageError, error_body
from lineside_inspect.outage_log import SAY_AGAIN_S, OutageLog
from lineside_inspect.package import ModelCard, version_clash
from lineside_inspect.recipes import Recipe
from lineside_inspect.server.app import create_app

log = logging.getLogger("lineside")
_WAITING = itertools.count(1)  # (SlowClientProtocol._waiting_since)


def _unsent(connection: Any) -> int:
    """Bytes of a connection's answers still in its transport (0 once it is gone)."""
    transport = connection.transport
    return 0 if transport is None else int(transport.get_write_buffer_size())


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's answer at max_connections (requests running fill it), in the API's one
    error shape: it was ``Service Unavailable`` as plain text, which a line client parsing
    ``{"error": ...}`` could not read (attacker review, session 51)."""
    body = json.dumps(error_body(
        "overloaded", "the server is at max_connections with requests running: retry "
        "shortly")).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# uvicorn's warnings that a client causes, one per request (none needs a key): in Lineside's
# words, at the level given, or None: not said (uvicorn's advice to install a WebSocket
# library; this server has no WebSocket route). Each was a line per request: 1,700 lines a
# second from one unauthenticated client sending garbage, two per request (several per
# connection) asking to upgrade (logs review, session 52)
_CLIENT_CAUSED: dict[str, tuple[int, str] | None] = {
    "Invalid HTTP request received.": (
        logging.WARNING, "HTTP requests that could not be parsed are answered 400"),
    "Unsupported upgrade request.": (
        logging.INFO, "requests to upgrade the connection (WebSocket, h2c) are answered as "
        "plain HTTP: this server has no WebSocket route"),
    "No supported WebSocket library detected.": None,
    "Exceeded concurrency limit.": (
        logging.WARNING, "requests are answered 503: open connections are at "
        "max_connections with requests running"),
}


class _ClientCausedLog:
    """uvicorn's logger as one connection uses it: the warnings a client causes
    (:data:`_CLIENT_CAUSED`) said once a minute with their count, through the server's
    :class:`OutageLog` (one per server, shared by its connections); everything else
    (an exception in the app, tracing) goes to uvicorn's logger as before."""

    def __init__(self, connection: SlowClientProtocol) -> None:
        self._connection = connection
        self._uvicorn = logging.getLogger("uvicorn.error")

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        key = next((k for k in _CLIENT_CAUSED if msg.startswith(k)), None)
        if key is None:
            self._uvicorn.warning(msg, *args, **kwargs)
            return
        said = _CLIENT_CAUSED[key]
        if said is not None:
            client = self._connection.client
            self._connection.client_warnings.failed(
                key, said[0], "%s (one from %s)", said[1],
                client[0] if client else "an unknown address")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._uvicorn, name)


def _client_warnings_over(warnings: OutageLog | None, quiet_s: float | None) -> None:
    """The count of each kind of :data:`_CLIENT_CAUSED` warning that stopped (none for
    ``quiet_s``; None: the server stops) with some not said: a flood of 200 unparseable
    requests in ten seconds was one line, its count said only with the next such request a
    minute or more later (days, maybe, and as "still"), or never (adversarial read,
    session 52)."""
    if warnings is None:  # (a protocol class not uvicorn_config's)
        return
    for key, total, unsaid in warnings.quiet(quiet_s):
        said = _CLIENT_CAUSED.get(key)
        if said is None or not unsaid:  # (one said and no more: its line said it all)
            continue
        warnings.log.log(said[0], "%s: %d in all, %d not said one by one (%s)", said[1], total, unsaid,
                         "the server stopping" if quiet_s is None
                         else f"none for {quiet_s:g}s since")


class _CountedWrites:
    """A request's transport as its answer sees it: what the answer writes is counted on
    the connection (``_written``), so the send timer knows how much of the write buffer
    its client drained even when a later answer was added to it."""

    def __init__(self, transport: Any, connection: SlowClientProtocol) -> None:
        self._transport, self._connection = transport, connection

    def write(self, data: bytes) -> None:
        self._connection._wrote(len(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class SlowClientProtocol(_HTTPProtocol):
    """HTTP/1.1 that drops a connection whose request headers do not arrive complete
    within ``header_timeout_s`` (of connecting, or of the first byte of a keep-alive
    connection's next request). uvicorn times out idle keep-alive connections but not a
    client that trickles its headers, so without this 300 half-open requests stay open
    indefinitely. The body has its own per-read timeout (``server/gate.py``)."""

    header_timeout_s = 10.0
    # the request line and headers, at most: httptools hands every header to uvicorn,
    # which keeps them all in a list before any route (or key check) runs, and 3 million
    # 8-byte headers took 370 MB a request (attacker review). nginx allows 32 KiB. Counted
    # from llhttp's own phases (a message begun, its headers not complete), so a body
    # left unread after an early answer, and a request pipelined behind a running one,
    # are each counted as what they are
    max_header_bytes = 64 * 1024
    _header_timer: asyncio.TimerHandle | None = None
    _in_headers = False
    _header_bytes = 0  # raw bytes received while in a message's headers
    _parsed_bytes = 0  # the URL and header names and values parsed so far
    _headers_too_large = False
    _begun_in_read = False
    _in_trailer = False  # after a chunk's size line, before its data (a trailer's headers)
    # requests pipelined behind a running one, at most: uvicorn queues every request it
    # parses and reads on after each answer, so one connection sending requests faster
    # than they were answered grew its queue without end (no key needed: 17 MB of
    # "GET /healthz" took 650 MB in 11 s and stalled /healthz 1.8 s; OIP review, session
    # 36). Clients that pipeline at all (few do) send a handful; beyond, the connection
    # is closed, as a request behind a running answer cannot be answered with a 4xx
    max_pipelined = 8
    _pipelined_too_deep = False
    # when a request began to wait for its headers or the next one, as an order (next of
    # _WAITING): at max_connections, the connections that waited longest make room for new
    # ones (below). Not the loop's time: its clock ticks in milliseconds on some hosts, and
    # connections of one tick were taken in the set's order, not their own
    _waiting_since = 0
    # uvicorn's warnings a client causes, said once a minute (_ClientCausedLog); one per
    # server: uvicorn_config's class sets its own
    client_warnings = OutageLog(log)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = _ClientCausedLog(self)  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        """A request llhttp cannot parse (a bad request line, an unknown method, a negative
        Content-Length, a URL past its limit): the same JSON error shape as every other
        answer, not uvicorn's plain text. The connection closes, as uvicorn's does: where
        the next request would start is unknown."""
        if self._headers_too_large:  # raised from a header callback (see _count)
            self._too_large()
            return
        if self._pipelined_too_deep:  # raised from on_headers_complete
            log.warning("closing a connection that pipelined over %d requests behind a "
                        "running one", self.max_pipelined)
            self._disarm()
            self.transport.close()
            return
        self._refuse(b"400 Bad Request", "invalid_request", "malformed HTTP request: the "
                     "request line, a header or the framing could not be parsed")

    def _refuse(self, status: bytes, code: str, message: str) -> None:
        """Answer ``status`` and close; behind an answer still being sent (a request
        pipelined after it) only close: the refusal would land inside that answer (a
        400 in a camera's MJPEG stream; third review). The send timer watches what is
        left unsent: a refusal written onto an empty buffer whose socket was full (a
        client that read nothing of its earlier answers) had none, and its connection,
        closing but never closed and skipped by _make_room, was counted against
        max_connections for good (attacker review, session 51)."""
        self._disarm()
        if not self._waiting_for_headers():
            self.transport.close()
            self._watch_send()
            return
        body = json.dumps(error_body(code, message)).encode()
        head = [b"HTTP/1.1 %s\r\n" % status]
        for name, value in self.server_state.default_headers:  # Date (and Server, if on)
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n" % len(body))
        answer = b"".join((*head, body))
        self._wrote(len(answer))
        self.transport.write(answer)
        self.transport.close()
        self._watch_send()

    def _too_large(self) -> None:
        self._refuse(b"431 Request Header Fields Too Large", "headers_too_large",
                     f"the request line and headers are over {self.max_header_bytes} bytes")

    # llhttp's callbacks (httptools): where a message's headers begin and end, and a
    # chunked body's trailer (after its last chunk's header: headers again, which
    # httptools builds up unbounded, quadratically, on the event loop; third review)
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes, self._parsed_bytes = True, 0, 0
        self._begun_in_read = True

    def on_chunk_header(self) -> None:
        # until its data or its end; the read it came in is a body's (fourth review: a
        # read of 100 KiB of chunk data ending on the next size line was counted whole)
        self._in_trailer, self._header_bytes, self._begun_in_read = True, 0, True

    def on_body(self, body: bytes) -> None:
        self._in_trailer = False
        super().on_body(body)

    def on_chunk_complete(self) -> None:
        self._in_trailer = False

    def on_message_complete(self) -> None:
        self._in_headers = self._in_trailer = False
        super().on_message_complete()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self.limit_concurrency is not None:
            # uvicorn answers 503 when the open connections reach the limit, this one
            # counted: idle ones and ones still trickling headers make room first
            self._make_room(self.limit_concurrency - 1)
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.transport, _CountedWrites):
            cycle.transport = _CountedWrites(cycle.transport, self)  # type: ignore[assignment]
        if len(self.pipeline) > self.max_pipelined:
            # stops llhttp mid-read, as _count does: the rest of the read is not parsed
            self._pipelined_too_deep = True
            raise ValueError("too many pipelined requests")

    def _count(self, size: int) -> None:
        self._parsed_bytes += size
        if self._parsed_bytes > self.max_header_bytes:
            # stops llhttp mid-chunk (it reports a callback error, which uvicorn answers
            # with send_400_response): the request never starts
            self._headers_too_large = True
            raise ValueError("headers too large")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = next(_WAITING)
        if self.limit_concurrency is not None:
            # (every other one with a request running: this one stays, and its request is
            # answered 503 as before; the next connection to come closes it if it is still
            # idle, so idle ones stay bounded)
            self._make_room(self.limit_concurrency)
        self._arm()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # (httptools' protocol: every request, pipelined ones too, starts here)
        super()._start_asgi_task(cycle, _busy if app is _uvicorn_busy else app)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        self._waiting_since = next(_WAITING)
        super().on_response_complete()
        self._watch_send()

    # -- connections that hold no request ----------------------------------------------
    # uvicorn counts every open connection against limit_concurrency (max_connections)
    # and answers each new request 503 once they reach it, but closes none: 300
    # connections trickling their headers a byte a second (no key: a request's key is
    # read with its headers) got every inspection a 503, re-opened every header_timeout_s,
    # and there was no bound on how many it accepted (each an open file: at the systemd
    # unit's LimitNOFILE the store could not open one; attacker review, session 51). At the
    # limit, the connections waiting longest for a request's headers (trickling them, or
    # idle between requests) are closed to make room.
    _room_warned_at = -math.inf

    def _idle(self) -> bool:
        return (self._waiting_for_headers() and not self.pipeline
                and not self.transport.is_closing())

    def _make_room(self, most: int) -> None:
        """Close connections holding no request and no answer until at most ``most`` are
        open (this one counted, never closed here), as far as there are such. Counted
        as uvicorn's 503 check counts them: closing ones too (a closed one with nothing
        left to send goes a loop turn later; it is dropped from the count now). Then the
        idle ones, the longest waiting first. A connection whose answer is still being
        sent (uvicorn counts a request done once its answer is handed to the transport)
        is a running request, not an idle one: a slow line client's annotated image or
        a hub box's answer over a slow uplink was aborted mid-answer whenever others
        connected at the limit (attacker review, session 51). One whose client stopped
        reading is ended by the send timer (armed for every unsent answer, below the
        write buffer's mark too: _watch_send), not here."""
        others = [c for c in self.connections if c is not self]
        excess = len(others) + 1 - most
        if excess <= 0:
            return
        closed = [c for c in others if (c.transport is None or c.transport.is_closing())
                  and not _unsent(c)]
        idle = sorted((c for c in others  # (_idle: never a closing one, as in closed)
                       if isinstance(c, SlowClientProtocol) and c._idle()
                       and not _unsent(c)),
                      key=lambda c: c._waiting_since)
        ended = (closed + idle)[:excess]
        for c in ended:
            if isinstance(c, SlowClientProtocol):
                c._disarm()
            if c.transport is not None and not c.transport.is_closing():
                c.transport.close()  # nothing unsent: it goes at once
            # (uvicorn drops it from the set only in connection_lost, a loop turn later:
            # its 503 check, right after this, would still count it)
            self.connections.discard(c)
        now = asyncio.get_running_loop().time()
        # once a minute, not per attempt; per server (uvicorn_config's class): set on this
        # base class, one server's warning silenced every other's in the process for a
        # minute (the hub's and a box's in one test run; session 51)
        if now - type(self)._room_warned_at >= 60:
            type(self)._room_warned_at = now
            log.warning("open connections at max_connections (%d): closed %d that waited "
                        "longest for a request (logged once a minute)",
                        self.limit_concurrency, len(ended))

    def data_received(self, data: bytes) -> None:
        self._begun_in_read = False
        super().data_received(data)
        if self.transport.is_closing():
            return
        # one header can be any size: its bytes counted as they come; not those of the
        # read a message began in, which may hold the end of the one before (a body's
        # 256 KiB drew a 431 for the request after it; third review): the parsed count
        # (_count) bounds that read's headers
        if (self._in_headers or self._in_trailer) and not self._begun_in_read:
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._too_large()
                return
        if self._in_headers or self._waiting_for_headers():
            self._arm()  # armed once per request: trickling bytes does not extend it
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
        super().connection_lost(exc)

    # -- answers a client does not read -----------------------------------------------
    # uvicorn hands a whole answer to the transport and counts the request done; a client
    # that never reads kept it in memory for as long as it liked (30 unread 34 MB
    # annotated answers: +1 GB, attacker review). While the write buffer is over its high
    # mark, it must drain at min_body_rate (at least a byte when 0) over each
    # body_timeout_s, as a request body must arrive, or the connection is aborted.
    send_timeout_s = 10.0
    min_send_rate = 0.0
    _send_timer: asyncio.TimerHandle | None = None
    _send_mark: tuple[float, int, int] = (0.0, 0, 0)  # loop time, unsent, _written then
    _written = 0  # bytes of answers handed to the transport

    def _wrote(self, size: int) -> None:
        """An answer's bytes go to the transport. Onto an empty buffer: the client had
        read all that was measured, so the send timer stops (a healthy keep-alive client
        idle between requests is not judged by the idle time; armed again for the new
        answer's unsent bytes)."""
        if self._send_timer is not None and not _unsent(self):
            self._send_timer.cancel()
            self._send_timer = None
        self._written += size

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_send()

    def _watch_send(self) -> None:
        """Over the write buffer's high mark, and whenever an answer is complete with
        bytes of it unsent: below the mark no pause_writing comes, and a client that read
        nothing of such an answer kept its connection (closed by the keep-alive or header
        timer, or not) open and counted against max_connections for good, and held a
        graceful shutdown its full 30 s (session 51)."""
        if self._send_timer is None and _unsent(self):
            self._send_mark = (asyncio.get_running_loop().time(), _unsent(self), self._written)
            self._send_timer = asyncio.get_running_loop().call_later(
                self.send_timeout_s, self._check_send)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().resume_writing()
        if self._waiting_for_headers() or self.transport.is_closing():
            self._watch_send()  # the rest of a complete answer, below the mark

    def _check_send(self) -> None:
        """What the client drained since the mark: the bytes unsent then, plus those
        written since (a later request's answer), less those unsent now. It was measured
        again from scratch whenever a later answer had been added: a client that read
        nothing, or 120 bytes/s, while sending GET /healthz every 4 s held its connection
        for minutes, or for good, so max_connections of them answered every other client
        503 (attacker review, session 51)."""
        self._send_timer = None
        loop = asyncio.get_running_loop()
        at, size, written = self._send_mark
        now, left = loop.time(), self.transport.get_write_buffer_size()
        if not left:  # all sent (an answer below the mark: no resume_writing comes)
            return
        drained = size + (self._written - written) - left
        if drained < max(1.0, self.min_send_rate * (now - at)):
            log.warning("closing a connection whose client read %d of %d bytes of its answer "
                        "in %.0f s (min_body_rate %.0f bytes/s)", max(0, drained),
                        size + self._written - written, now - at, self.min_send_rate)
            self.transport.abort()
            return
        self._send_mark = (now, left, self._written)
        self._send_timer = loop.call_later(self.send_timeout_s, self._check_send)

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = asyncio.get_running_loop().call_later(
                self.header_timeout_s, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if (self._in_headers or self._waiting_for_headers()) and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's settings for the edge server: header and keep-alive timeouts, and a cap
    on connections and requests (beyond it new requests get a 503 at once)."""

    class Protocol(SlowClientProtocol):
        header_timeout_s = settings.header_timeout_s
        send_timeout_s = settings.body_timeout_s
        min_send_rate = settings.min_body_rate
        client_warnings = OutageLog(log)

    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": "info",
        "timeout_graceful_shutdown": 30, "access_log": False, "http": Protocol,
        "timeout_keep_alive": 5, "limit_concurrency": settings.max_connections,
        # not given: uvicorn reads FORWARDED_ALLOW_IPS (else loopback), as it always did
        "proxy_headers": settings.forwarded_allow_ips != [],
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
        **overrides}
    return uvicorn.Config(app, **options)


def _lifespan_class(app: FastAPI) -> type[LifespanOn]:
    """uvicorn's lifespan, without the traceback it logs for a start-up the application
    ended with an operator's mistake (``app.state.startup_error``, said in one line by
    :func:`run`): a camera whose config contradicts itself was 60 lines and exit 3."""

    class Lifespan(LifespanOn):
        async def send(self, message: Any) -> None:
            if message["type"] == "lifespan.startup.failed" and \
                    getattr(app.state, "startup_error", None) is not None:
                message = {"type": "lifespan.startup.failed", "message": ""}
            await super().send(message)

    return Lifespan


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, *, drain_s: float = 0.5) -> None:
        super().__init__(config)
        self.app = app
        self.drain_s = drain_s
        if not config.loaded:
            config.load()  # (what run does first; the lifespan class is set there)
        if config.lifespan != "off":  # (off: no lifespan class to replace, none to turn on)
            config.lifespan_class = _lifespan_class(app)

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # (each second)
            _client_warnings_over(getattr(self.config.http, "client_warnings", None), SAY_AGAIN_S)
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets=sockets)
        _client_warnings_over(getattr(self.config.http, "client_warnings", None), None)

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until stopped. A start-up that failed ends in an exception, never a
        return: the application's own error (a ``LinesideError``: the CLI says it in one
        line, exit 2), else uvicorn's ``SystemExit`` (exit 3), so a service manager
        restarts or alarms."""
        try:
            super().run(sockets=sockets)
        except SystemExit:
            error = getattr(self.app.state, "startup_error", None)
            if error is not None:
                raise error from None
            raise

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if sockets:
            # uvicorn says "Uvicorn running on ..." only for an address it bound itself: on
            # the socket bound before start-up (listen) it said nothing, and nothing told a
            # new user where the pages are (new-user review, session 47)
            host, port = sockets[0].getsockname()[:2]
            log.info("listening on http://%s:%d (Ctrl+C to stop)",
                     f"[{host}]" if ":" in host else host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.app
        if app.state.ready:
            # readiness drops first and the server keeps serving for drain_s, so a load
            # balancer stops sending before we stop accepting; then uvicorn's own graceful
            # shutdown lets in-flight requests finish
            app.state.ready = False
            log.info("shutting down: readiness dropped, draining for %.1fs", self.drain_s)
            loop = asyncio.get_running_loop()
            # the line first: a PLC must not hand over parts during the drain (kept: a
            # task the loop holds only weakly may be collected before it runs)
            self._closing = [loop.create_task(hook())
                             for hook in getattr(app.state, "on_signal", [])]
            loop.call_later(self.drain_s, super().handle_exit, sig, frame)
            return
        super().handle_exit(sig, frame)


def listen(settings: Settings) -> socket.socket:
    """The server's socket, bound before anything is loaded or made: uvicorn binds after
    the application's start-up, so a port in use was found once every model was loaded
    and the store made, as uvicorn's "[Errno 98] ... address already in use" and exit 3
    (new-user review, session 46). A ``ConfigError`` naming the address and the
    system's reason instead."""
    host, port = settings.host, settings.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # (as uvicorn's bind_socket)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (uvicorn sets it too)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = exc.strerror or type(exc).__name__
        taken = " (is another server on it? choose another with --port)" \
            if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {why}{taken}") from None
    except (OverflowError, UnicodeError, ValueError) as exc:  # a port past 65535, a bad host
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def preflight(settings: Settings) -> None:
    """Read every configured model package and recipe before the server starts, so a
    wrong path or a broken card is one clear error (``LinesideError``: the CLI prints its
    message) instead of a traceback from the application's start-up."""
    from importlib.util import find_spec

    from lineside_inspect.errors import MissingExtraError, install_hint
    from lineside_inspect.package import load_package
    from lineside_inspect.recipes import check_card_recipe, load_recipe
    from lineside_inspect.recipes.saved import SavedRecipes
    from lineside_inspect.recipes.schema import check_distinct

    if (settings.database_url or "").startswith("postgresql") and find_spec("psycopg") is None:
        # a ModuleNotFoundError traceback from the start-up's store otherwise
        raise MissingExtraError("database_url names PostgreSQL, whose driver (psycopg) is not "
                                "installed: " + install_hint("postgres"))
    _check_temp_folder()
    if settings.store:
        # a URL that does not parse, a database down, a SQLite file that is damaged or
        # another program's: one line, not the start-up's traceback (the hub checked its
        # own; a box's store did not), and the file left as it is. One it may read but
        # not write (another user's files), or a data folder, images or journal folder it
        # may not write: one line too, not a traceback at start or a save lost (session 50)
        from lineside_inspect.store.checks import check_data_dir, check_database
        from lineside_inspect.store.store import default_url

        check_database(settings.database_url or default_url(settings.data_dir),
                       "the server's database", data_dir=settings.data_dir, write=True)
        check_data_dir(settings.data_dir)

    cards: dict[str, dict[str, ModelCard]] = {}
    for path in settings.models:
        card = load_package(path).card
        check_card_recipe(card, card.class_names)
        versions = cards.setdefault(card.name, {})
        # as the registry refuses them when it loads (each was a traceback from the
        # application's start-up)
        clash = version_clash(versions, card, placed="configured")
        if clash:
            raise PackageError(f"{path}: {clash}")
        versions[card.version] = card
    recipes = [(str(path), load_recipe(path)) for path in settings.recipes]
    check_distinct(recipes)
    SavedRecipes(settings.saved_recipes_path).check_configured(recipes)
    for _, recipe in recipes:
        _check_recipe(recipe, cards, pulled=settings.fleet.hub_url is not None)


def _check_temp_folder() -> None:
    """A folder for temporary files: a multipart upload over 1 MiB spools to one (starlette's
    ``SpooledTemporaryFile``). With none (``docker run --read-only`` without ``--tmpfs /tmp``:
    /tmp, /var/tmp and the working folder all read-only) the server started, answered small
    frames, and each larger upload was a 500 with tempfile's traceback in the log (session
    52): one line before anything is served instead."""
    import tempfile

    try:
        tempfile.gettempdir()  # tries TMPDIR, TEMP, TMP, /tmp, /var/tmp, /usr/tmp, the working folder
    except OSError:
        raise ConfigError(
            "no folder for temporary files can be written (TMPDIR, /tmp, /var/tmp, /usr/tmp nor "
            "the working folder): uploads over 1 MiB are spooled there; give the server one "
            "(a container run with --read-only: add --tmpfs /tmp)") from None


def _check_recipe(recipe: Recipe, cards: dict[str, dict[str, ModelCard]], *,
                  pulled: bool) -> None:
    """A configured recipe against the configured models' cards, as the registry checks
    it at start-up (a typo in ``critical`` was a 79-line traceback from uvicorn's
    lifespan). A model no package is configured for may come from the hub on a fleet box
    (``pulled``): such a recipe waits for it (``server.waiting.add_waiting_recipes``), checked
    when the model is loaded."""
    if recipe.remote is not None:
        return  # its card is its own (checked at start-up)
    versions = cards.get(recipe.model)
    if versions is None:
        if pulled:
            return
        raise ConfigError(f"recipe {recipe.name}: model {recipe.model!r} is not among the "
                          f"configured models ({', '.join(sorted(cards)) or 'none'})")
    # without a version, the active one: the last configured (each load activates)
    card = versions.get(recipe.model_version) if recipe.model_version else \
        list(versions.values())[-1]
    if card is None:
        if pulled:
            return
        raise ConfigError(f"recipe {recipe.name}: model {recipe.model} has no configured "
                          f"version {recipe.model_version!r} ({', '.join(sorted(versions))})")
    fused = recipe.anomaly.model if recipe.anomaly is not None else None
    fused_cards = cards.get(fused, {}) if fused else {}
    fused_pin = recipe.anomaly.model_version if recipe.anomaly is not None else None
    # the pinned version, as the registry takes it (a pin not configured was a traceback
    # from the start-up's add_recipe)
    anomaly = fused_cards.get(fused_pin) if fused_pin else (
        list(fused_cards.values())[-1] if fused_cards else None)
    if fused and anomaly is None:
        if pulled:
            return
        if fused_cards:
            raise ConfigError(f"recipe {recipe.name}: anomaly.model {fused} has no configured "
                              f"version {fused_pin!r} ({', '.join(sorted(fused_cards))})")
        raise ConfigError(f"recipe {recipe.name}: anomaly.model {fused!r} is not among the "
                          f"configured models ({', '.join(sorted(cards))})")
    recipe.check_models(card.kind, card.class_names, None if anomaly is None else anomaly.kind)
    recipe.check_reference_use(card.needs_reference)  # as the registry checks it


def warn_auth_off(settings: Settings, what: str) -> None:
    """Say at start-up that there are no API keys: where that is safe (loopback) and,
    with --insecure, plainly what anyone who reaches the address may do (``what``)."""
    if settings.api_keys:
        return
    if settings.loopback_only:
        log.warning("no API keys configured: auth is off, listening on loopback only (%s)",
                    settings.host)
    else:  # --insecure: say plainly what that means
        log.warning("no API keys configured and --insecure: auth is OFF while listening on "
                    "%s:%d, so anyone who can reach this address may %s", settings.host,
                    settings.port, what)


def run(settings: Settings) -> None:
    # what the server writes (inspection images, the store) is not for every user of the
    # box: group-readable at most, as the systemd unit's UMask=0027 (a container and make
    # serve wrote 0644 images under 0755 folders; deploy review, session 33)
    os.umask(os.umask(0o027) | 0o027)
    settings.check_bind()
    preflight(settings)  # (reads only: its one line comes first)
    sock = listen(settings)  # before anything loads or is made: a port in use said at once
    use_one_arena()  # before any thread starts (see lineside_inspect.allocator)
    warn_auth_off(settings, "inspect, review and change models")
    app = create_app(settings)
    _Server(uvicorn_config(app, settings), app, drain_s=settings.drain_s).run(sockets=[sock])
