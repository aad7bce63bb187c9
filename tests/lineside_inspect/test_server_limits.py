"""What a careless or hostile client cannot do to a real server: make it read a body
before authenticating, spool an endless chunked upload, decode on the event loop or
beyond the limiter, tie up threads with triggers, or hold connections open for ever.
Every test is about structure (what was read, which thread, which order), never about
how long something took."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import uvicorn

from lineside_inspect.cameras.simulator import MJPEGSimulator, counter_frame
from lineside_inspect.config import CameraConfig
from lineside_inspect.opencv import cv2
from lineside_inspect.serve import SlowClientProtocol
from lineside_inspect.server import service as service_module

from .conftest import stall_stream

KEYS = {"line": "line-secret"}  # conftest's role keys
SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "deeppcb-sample" / "images"


def _connect(url: str, timeout: float = 20.0) -> socket.socket:
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
    return sock


def _response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection or a full head with
    a Content-Length body has arrived."""
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return buf
        buf += chunk
        if b"\r\n\r\n" in buf:
            head, _, body = buf.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:") and \
                        len(body) >= int(line.split(b":")[1]):
                    return buf


def test_unauthenticated_bodies_are_refused_before_they_are_read(launch) -> None:
    srv = launch()
    for path in ("/v1/models", "/v1/recipes/x", "/v1/inspect", "/v2/models/deeppcb/infer"):
        method = "PUT" if "recipes" in path else "POST"
        sock = _connect(srv.url)
        # 100 MiB declared, none of it sent: the answer must come without the body
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: "
                     f"application/json\r\ncontent-length: {100 * 1024 * 1024}\r\n\r\n".encode())
        answer = _response(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 401"), (path, answer[:200])
        assert b'"unauthorized"' in answer
    # chunked, no length declared: the same
    sock = _connect(srv.url)
    part = b'{"path": "' + b"a" * 100
    sock.sendall(b"POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json"
                 b"\r\ntransfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(part) + part + b"\r\n")
    assert _response(sock).startswith(b"HTTP/1.1 401")
    sock.close()


def test_json_bodies_are_capped_for_every_role(launch) -> None:
    srv = launch(max_json_bytes=4096)
    big = b'{"path": "' + b"a" * 10000 + b'"}'
    with srv.client("admin") as c:
        r = c.post("/v1/models", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused when it passes the cap
            yield big[:3000]
            yield big[3000:]

        r = c.post("/v1/models", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
    with srv.client("line") as c:  # a line key may not make the server read a large body
        r = c.put("/v1/references/golden", content=b"\xff\xd8" + b"\0" * 100_000,
                  headers={"content-type": "image/jpeg"})
        assert r.status_code == 403


def test_a_chunked_multipart_upload_stops_at_the_limit(launch) -> None:
    limit = 1024 * 1024
    srv = launch(max_body_bytes=limit)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        head = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
                b"Content-Type: image/jpeg\r\n\r\n")
        sent += len(head)
        yield head
        block = b"\0" * 65536
        for _ in range(50 * 16):  # 50 MiB, if the server kept reading
            sent += len(block)
            yield block

    status = None
    try:
        with httpx.Client(base_url=srv.url, timeout=30,
                          headers={"Authorization": f"Bearer {KEYS['line']}"}) as c:
            r = c.post("/v1/inspect", content=body(),
                       headers={"content-type": "multipart/form-data; boundary=b"})
            status = r.status_code
            assert r.json()["error"]["code"] == "image_too_large"
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server answered 413 and closed while we were still sending
    assert status in (None, 413)
    # what the server read stopped near the limit: the rest sat in socket buffers at most
    assert sent < 20 * 1024 * 1024


def test_decoding_runs_in_the_limiters_slot_off_the_event_loop(launch, monkeypatch) -> None:
    seen: list[tuple[bool, int]] = []
    running = 0
    lock = threading.Lock()
    real = service_module.decode_frame

    def watched(data: bytes, max_pixels: int) -> np.ndarray:
        nonlocal running
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        with lock:
            running += 1
            seen.append((on_loop, running))
        try:
            return real(data, max_pixels)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(service_module, "decode_frame", watched)
    srv = launch(max_concurrency=1, max_queue=2)
    ok, png = cv2.imencode(".png", np.zeros((3000, 3000, 3), np.uint8))
    assert ok

    def post(_: int) -> int:
        with srv.client("line") as c:
            return c.post("/v1/inspect", content=png.tobytes(),
                          headers={"content-type": "image/png"}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, range(8)))
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert seen and not any(on_loop for on_loop, _ in seen)
    assert max(n for _, n in seen) == 1  # never more decodes at once than slots


def test_pending_triggers_hold_no_threads(launch) -> None:
    sim = MJPEGSimulator(fps=20)
    resumed = threading.Event()
    try:
        _pending_triggers_hold_no_threads(launch, sim, resumed)
    finally:
        resumed.set()
        sim.kill()


def _pending_triggers_hold_no_threads(launch, sim: MJPEGSimulator,
                                      resumed: threading.Event) -> None:
    cam = CameraConfig(id="slow", source=sim.url, read_timeout_s=30, stale_after_s=30,
                       max_frame_age_s=0.01)
    # 45 frames judged two at a time once the stream resumes: the last wait for a slot
    # longer than the default 10 s on a loaded host (final read, session 45)
    srv = launch(cameras=[cam], max_queue=64, request_timeout_s=60)
    deadline = time.time() + 30
    with srv.client("reviewer") as c:
        while c.get("/v1/cameras").json()[0]["state"] != "online":
            assert time.time() < deadline, "camera never came online"
            time.sleep(0.1)
    worker = srv.app.state.cameras.worker("slow")
    # the camera stays connected and sends nothing (triggers wait) until ``resumed``: then
    # its frames come again on the same connection
    stall_stream(sim, worker, resumed, then=counter_frame)
    done: list[int] = []

    def trigger(_: int) -> int:
        # the longest wait a trigger may ask for, which none reaches: each ends when the
        # stream resumes (before, each timed out after 12 s, a bound a probe slowed by a
        # loaded host had to stay under)
        with srv.client("line") as c:
            status = c.post("/v1/cameras/slow/trigger", params={"timeout_s": 30},
                            timeout=60).status_code
        done.append(status)
        return status

    with ThreadPoolExecutor(45) as pool:
        futures = [pool.submit(trigger, i) for i in range(45)]
        deadline = time.monotonic() + 30  # they all arrive (was a fixed 1 s)
        while len(worker._listeners) < 45 and not done:
            assert time.monotonic() < deadline, len(worker._listeners)
            time.sleep(0.02)
        # waiting for a frame takes no place in the limiter: a trigger's share of its key
        # is taken from the frame's arrival (review, session 32: waiting triggers made
        # uploads 503)
        assert srv.app.state.limiter.in_system == 0 and not done
        # a route served from the thread pool (a plain def) still gets a thread: had each
        # waiting trigger held one, the pool (40) would be exhausted until they ended, and
        # the probe came back only after them (nothing ends them before the stream resumes)
        with srv.client("reviewer") as c:
            assert c.get("/v1/cameras").status_code == 200
            answered_before = len(done)
        # a trigger whose wait runs out while the stream still sends nothing: a 503 saying
        # so, never a verdict on the frame from before it
        with srv.client("line") as c:
            late = c.post("/v1/cameras/slow/trigger", params={"timeout_s": 0.5})
        assert answered_before == 0, done
        assert late.status_code == 503, late.text
        assert "no frame captured within 0.5s of the trigger" in late.text, late.text
        assert not done and len(worker._listeners) >= 45
        resumed.set()
        statuses = [f.result() for f in futures]
    # every pending trigger is answered with a verdict once frames come again
    assert statuses == [200] * 45, statuses


def test_continuous_cameras_go_through_the_limiter(launch) -> None:
    cam = CameraConfig(id="cont", source=str(SAMPLE), fps=10, mode="continuous", rate_hz=10)
    srv = launch(cameras=[cam])
    limiter = srv.app.state.limiter
    calls: list[Any] = []
    real_run = limiter.run

    async def counted(fn: Any, **kw: Any) -> Any:
        calls.append(fn)
        return await real_run(fn, **kw)

    limiter.run = counted
    deadline = time.time() + 30
    with srv.client("reviewer") as c:
        while True:
            r = c.get("/v1/inspections", params={"camera_id": "cont"})
            if r.json()["total"] >= 2 and len(calls) >= 2:
                break
            assert time.time() < deadline, "no continuous inspection went through the limiter"
            time.sleep(0.2)
    text = httpx.get(srv.url + "/metrics").text
    assert 'camera="cont"' in text


def test_trickled_headers_are_dropped(launch) -> None:
    srv = launch(header_timeout_s=0.5)
    socks = [_connect(srv.url) for _ in range(20)]
    for s in socks:
        s.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    for s in socks:
        assert s.recv(1024) == b""  # closed by the server (a hang would time the test out)
        s.close()
    with srv.client("line") as c:  # and the server still serves
        assert c.get("/healthz").status_code == 200


def test_a_stalled_body_gets_408(launch) -> None:
    srv = launch(body_timeout_s=0.5)
    sock = _connect(srv.url)
    sock.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                 + KEYS["line"].encode() + b"\r\ncontent-type: image/jpeg\r\n"
                 b"content-length: 1000\r\n\r\n\xff\xd8")
    answer = _response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in answer


def _paced_upload(url: str, size: int, rate: int) -> bytes:
    """POST ``size`` bytes (a JPEG's start, then zeros) to /v1/inspect at ``rate`` bytes/s,
    in 1 KiB parts (each far within body_timeout_s); the server's answer. Sending stops
    once the server answered (it may cut the body off)."""
    sock = _connect(url, timeout=60)
    body = b"\xff\xd8" + b"\0" * (size - 2)
    sock.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                 + KEYS["line"].encode() + b"\r\ncontent-type: image/jpeg\r\n"
                 + f"content-length: {len(body)}\r\n\r\n".encode())
    try:
        for at in range(0, len(body), 1024):
            sock.sendall(body[at:at + 1024])
            time.sleep(1024 / rate)
            sock.setblocking(False)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # answered
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
                sock.settimeout(60)
    except OSError:  # the server answered and closed
        pass
    try:
        return _response(sock)
    finally:
        sock.close()


def _body_timeouts(srv: Any) -> float:
    text = srv.client().get("/metrics").text
    return sum(float(x.split()[1]) for x in text.splitlines()
               if x.startswith('lineside_request_errors_total{code="body_timeout"}'))


def test_a_body_slower_than_min_body_rate_gets_408_counted_once(launch) -> None:
    """min_body_rate is the server's setting: an upload at 40 KiB/s goes through when the
    server wants 16 KiB/s (a fixed 64 KiB/s cut such links off); one at 4 KiB/s is cut
    off with a 408 naming the rate, counted once in the request errors; with 0 only the
    per-part timeout holds. body_timeout_s is 2 s (it was 1): the 4 KiB/s upload's 1 KiB
    parts came 0.25 s apart, so a sender given no CPU for 0.75 s on a loaded host was cut
    off by the per-part timeout (session 54)."""
    srv = launch(body_timeout_s=2, min_body_rate=16 * 1024)
    off = launch(body_timeout_s=2, min_body_rate=0)
    # the two uploads that go through, each lasting past the first body_timeout_s, run at
    # once (on their own servers), then the one cut off
    with ThreadPoolExecutor(2) as pool:
        fast = pool.submit(_paced_upload, srv.url, 120_000, 40 * 1024)
        unrated = pool.submit(_paced_upload, off.url, 12_000, 4 * 1024)
        answer, answer_off = fast.result(), unrated.result()
    assert answer.startswith(b"HTTP/1.1 4") and b'"body_timeout"' not in answer  # not a JPEG
    assert _body_timeouts(srv) == 0
    answer = _paced_upload(srv.url, 100_000, 4 * 1024)
    assert answer.startswith(b"HTTP/1.1 408") and b"16384 bytes/s on average" in answer
    assert _body_timeouts(srv) == 1
    assert answer_off.startswith(b"HTTP/1.1 4") and b'"body_timeout"' not in answer_off
    assert _body_timeouts(off) == 0


def test_connections_are_capped(launch) -> None:
    """At max_connections, connections that hold no request (trickling their headers, no
    key needed) make room, the longest waiting first: 300 of them, re-opened every
    header_timeout_s, got every inspection a 503 and were accepted without bound (attacker
    review, session 51). Requests running are never closed for room: beyond them, 503."""
    srv = launch(max_connections=4, header_timeout_s=30)
    idle = [_connect(srv.url) for _ in range(10)]
    try:
        for s in idle:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers unfinished
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/healthz").status_code == 200
        # the first ones were closed to make room, long before their header_timeout_s
        # (30 s; the socket's own timeout, 20 s, fails the test before it)
        assert idle[0].recv(1024) == b""
    finally:
        for s in idle:
            s.close()
    # three requests running: no room for a fourth request
    with _held_uploads(srv, 3), httpx.Client(base_url=srv.url, timeout=30) as c:
        busy = c.get("/healthz")
        # in the API's one error shape (uvicorn's own was "Service Unavailable" as text)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "overloaded", busy.text
    with httpx.Client(base_url=srv.url, timeout=30) as c:  # and it serves again after
        assert c.get("/healthz").status_code == 200


@contextlib.contextmanager
def _small_buffer_server(**overrides: Any) -> Iterator[tuple[uvicorn.Server, str]]:
    """A real server whose accepted sockets have a 4 KiB send buffer: most of a 45 KB
    answer stays in the transport, under its high-water mark, while its client reads
    slowly or not at all."""
    from lineside_inspect.serve import uvicorn_config
    from lineside_inspect.server.app import create_app

    from .conftest import settings

    conf = settings(**overrides)
    app = create_app(conf)
    server = uvicorn.Server(uvicorn_config(app, conf, host="127.0.0.1", port=0,
                                           log_level="warning"))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and app.state.ready):
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield server, f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _slow_reader(url: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    u = urlparse(url)
    sock.connect((u.hostname, u.port))
    sock.sendall(b"GET /static/review.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


def _unsent_answers(server: uvicorn.Server) -> list[Any]:
    return [c for c in server.server_state.connections
            if c.transport is not None and c.transport.get_write_buffer_size() > 0]


def test_an_answer_still_being_sent_is_not_ended_to_make_room() -> None:
    """uvicorn counts a request done once its answer is in the transport: the connection
    then looked idle, and at max_connections the room maker aborted it, the longest
    waiting, mid-answer (a line client fetching an annotated image over a slow link, a
    hub box over a slow uplink; attacker review, session 51). It is a running request:
    the newcomer gets the 503 of a server at its limit and the reader its whole answer."""
    with _small_buffer_server(max_connections=2, header_timeout_s=30) as (server, url):
        reader = _slow_reader(url)
        try:
            head = b""
            while b"\r\n\r\n" not in head:  # reading, slowly: the rest waits in the transport
                head += reader.recv(1)
            deadline = time.monotonic() + 60
            while not _unsent_answers(server):
                assert time.monotonic() < deadline, "the answer was sent whole"
                time.sleep(0.02)
            other = _connect(url)
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _response(other).startswith(b"HTTP/1.1 503")
            other.close()
            assert head.startswith(b"HTTP/1.1 200")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = b""
            while len(body) < length and (part := reader.recv(65536)):
                body += part
        finally:
            reader.close()
    assert len(body) == length > 40_000  # all of it: not cut off


def _await_unsent_answer(server: Any) -> float:
    """Wait until an answer of ``server`` sits unsent (its client reads nothing); the
    deadline (loop time) the test goes on with."""
    deadline = time.monotonic() + 60
    while not _unsent_answers(server):
        assert time.monotonic() < deadline, "the answer was sent whole"
        time.sleep(0.02)
    return deadline


def test_an_answer_its_client_never_reads_does_not_hold_a_connection() -> None:
    """An answer under the write buffer's high mark that its client never reads got no
    send timer: the connection (closed by its header timeout) stayed open, counted by
    uvicorn's 503 check, for good, and held a graceful shutdown its full 30 s (attacker
    review, session 51). Every unsent answer is now watched: it is aborted after
    body_timeout_s without a byte read, and the limit is free again."""
    with _small_buffer_server(max_connections=2, header_timeout_s=0.3,
                              body_timeout_s=0.3) as (server, url):
        silent = _slow_reader(url)  # and reads nothing
        try:
            deadline = _await_unsent_answer(server)
            while server.server_state.connections:
                assert time.monotonic() < deadline, "the unread answer held its connection"
                time.sleep(0.02)
            with httpx.Client(base_url=url, timeout=30) as c:
                assert c.get("/healthz").status_code == 200
        finally:
            silent.close()


def test_a_client_that_keeps_asking_but_never_reads_is_still_ended() -> None:
    """The send timer measured again from scratch whenever a later request's answer had
    been added to the buffer: a client that read nothing (or 120 bytes/s) but sent GET
    /healthz every few seconds held its connection for minutes, or for good, and
    max_connections of them answered everyone else 503 (attacker review, session 51).
    What it drained is now counted across the answers added: it is ended at the first
    check, however many requests it keeps sending."""
    with _small_buffer_server(max_connections=2, header_timeout_s=30,
                              body_timeout_s=0.3) as (server, url):
        silent = _slow_reader(url)  # and reads nothing
        try:
            deadline = _await_unsent_answer(server)
            (conn,) = server.server_state.connections
            checks = 0
            while server.server_state.connections and checks < 6:
                silent.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                mark = conn._send_mark
                while conn._send_mark == mark and server.server_state.connections:
                    assert time.monotonic() < deadline, "the send timer stopped"
                    time.sleep(0.01)
                checks += 1
            assert not server.server_state.connections, f"alive after {checks} checks"
            with httpx.Client(base_url=url, timeout=30) as c:
                assert c.get("/healthz").status_code == 200
        finally:
            silent.close()


def test_a_refusal_its_client_never_reads_does_not_hold_a_connection() -> None:
    """A 400 or 431 written onto an empty write buffer whose socket was already full (a
    client that read nothing of its earlier answers) got no send timer: closing, never
    closed, and skipped by the room maker, it was counted against max_connections for
    good (attacker review, session 51). It is aborted after body_timeout_s unread."""
    from fastapi import FastAPI
    from uvicorn.server import ServerState

    from lineside_inspect.serve import uvicorn_config

    from .conftest import settings

    config = uvicorn_config(FastAPI(), settings(body_timeout_s=0.3, header_timeout_s=30),
                            log_level="warning")
    config.load()

    async def refused() -> bool:
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair()  # the peer never reads
        with ours, peer:
            ours.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:  # the socket's buffers full, as a client's unread answers leave them
                    ours.send(b"x" * 1024)
            state = ServerState()
            transport, _ = await loop.connect_accepted_socket(
                lambda: config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=state, app_state={}), ours)
            peer.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            deadline = loop.time() + 10
            while state.connections and loop.time() < deadline:
                await asyncio.sleep(0.02)
            ended = not state.connections
            transport.abort()
            return ended

    assert asyncio.run(refused()), "the unread refusal held its connection"


def test_a_pipelining_client_that_reads_gets_every_answer_whole(monkeypatch) -> None:
    """A client that pipelines requests behind an answer still in the buffer and reads
    steadily is never judged slow by the count across answers (session 51). It reads
    4 KiB every 0.2 s: slowly enough that the send timer checks it while the second
    answer is added behind the first, and drains less than that answer in a window (what
    it drained is not the buffer's shrinking), yet 20x faster than min_body_rate asks. It
    read at full speed before and was never checked, but when a loaded host gave it no
    CPU for a whole 0.3 s window, which cut it off (session 54): only a reader stalled a
    whole 1 s window is judged slow now."""
    checks: list[float] = []
    check_send = SlowClientProtocol._check_send

    def counted(self: SlowClientProtocol) -> None:
        checks.append(time.monotonic())
        check_send(self)

    monkeypatch.setattr(SlowClientProtocol, "_check_send", counted)
    with _small_buffer_server(max_connections=2, header_timeout_s=30,
                              body_timeout_s=1, min_body_rate=1024) as (_server, url):
        reader = _slow_reader(url)
        reader.sendall(b"GET /static/review.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        bodies = []
        try:
            data = b""
            while len(bodies) < 2:  # steadily, 4 KiB at a time
                time.sleep(0.2)
                part = reader.recv(4096)
                assert part, f"closed after {len(bodies)} answers"
                data += part
                while b"\r\n\r\n" in data:
                    head, rest = data.split(b"\r\n\r\n", 1)
                    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:"))
                    if len(rest) < length:
                        break
                    assert head.startswith(b"HTTP/1.1 200")
                    bodies.append(rest[:length])
                    data = rest[length:]
        finally:
            reader.close()
    assert len({len(b) for b in bodies}) == 1 and len(bodies[0]) > 40_000  # all whole
    assert checks  # judged at least once on the way, and found reading


def test_each_server_says_it_made_room(launch, caplog) -> None:
    """The once-a-minute WARNING of connections closed for room is each server's own: it
    was kept on SlowClientProtocol itself, so one server's warning silenced every other's
    in the process for a minute (session 51)."""
    caplog.set_level(logging.WARNING, "lineside")
    for srv in (launch(max_connections=2, header_timeout_s=30),
                launch(max_connections=2, header_timeout_s=30)):
        idle = [_connect(srv.url) for _ in range(2)]
        try:
            for s in idle:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                assert c.get("/healthz").status_code == 200
            assert idle[0].recv(1024) == b""  # closed to make room
        finally:
            for s in idle:
                s.close()
    said = [r for r in caplog.records if "at max_connections (2)" in r.getMessage()]
    assert len(said) == 2, [r.getMessage() for r in said]


def test_a_request_http_cannot_parse_is_a_json_400(launch) -> None:
    """uvicorn answered these in plain text; every error of the API is JSON."""
    srv = launch()
    for request in (b"FOO /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # unknown method
                    b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: -1\r\n\r\n",
                    b"GET /\x01 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
        sock = _connect(srv.url)
        sock.sendall(request)
        answer = _response(sock)
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head
        assert b"\r\ndate: " in head.lower()  # as every other answer
        assert json.loads(body)["error"]["code"] == "invalid_request", answer
    with srv.client("line") as c:  # and the server still serves
        assert c.get("/healthz").status_code == 200


def test_request_headers_past_their_cap_get_431_before_any_key(launch) -> None:
    """uvicorn keeps every header in a list before any route runs: 3 million tiny headers
    (24 MB, no key needed) took 370 MB a request (attacker review). Past 64 KiB of request
    line and headers the connection gets a JSON 431 and is closed; 40 KiB of cookies on a
    keep-alive connection's second request still go through."""
    srv = launch()
    sock = _connect(srv.url)
    flood = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 3_000_000
    sent = 0
    try:
        while sent < len(flood):  # the server closes once it has seen enough
            sent += sock.send(flood[sent:sent + 65536])
    except OSError:
        pass
    answer = _response(sock)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"content-type: application/json" in head
    # (the headers never end: only the cap answers, a timeout closes without a word)
    assert json.loads(body)["error"]["code"] == "headers_too_large", answer
    cookie = b"Cookie: " + b"c" * 40_000 + b"\r\n"
    with _connect(srv.url) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + cookie + b"\r\n")
            assert _response(sock).startswith(b"HTTP/1.1 200")
    # one header of 1 MB is counted as it comes, not once llhttp hands it over
    with _connect(srv.url) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 1_000_000)
        assert _response(sock).startswith(b"HTTP/1.1 431")
    # a body left unread after an early answer is a body, not headers: the 401 alone
    # (it was followed by a 431 and a reset; second review)
    with _connect(srv.url, timeout=3) as sock:
        body = b"\xff\xd8" + b"\0" * 300_000
        sock.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     b"wrong\r\ncontent-type: image/jpeg\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\n\r\n")
        with contextlib.suppress(OSError):
            sock.sendall(body)
        # then a request of its own: whatever the server says of that body comes before
        # this one's answer (it was read until the socket's 3 s timeout, the connection
        # staying open)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while b"HTTP/1.1 200" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401") and b"431" not in answer, answer
        assert b"HTTP/1.1 200" in answer, answer  # the connection went on after the body
    # ... also when the next request begins in the same read as that body's end (its
    # bytes were counted as the next request's headers; third review)
    with _connect(srv.url, timeout=5) as sock:
        sock.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     b"wrong\r\ncontent-type: image/jpeg\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 401")
        sock.sendall(body + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(0.3)
        sock.sendall(b"\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200")
    # a chunked body's trailer is headers too: httptools builds it up unbounded
    with _connect(srv.url, timeout=10) as sock:
        sock.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     b"wrong\r\ncontent-type: image/jpeg\r\ntransfer-encoding: chunked\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 401")
        sent = 0
        with contextlib.suppress(OSError):
            sock.sendall(b"0\r\nX-Trailer: ")
            while sent < 20_000_000:
                sent += sock.send(b"a" * 65536)
        assert sent < 20_000_000  # cut off, not taken in
    # a chunked upload whose reads end on a chunk's size line is a body, not a trailer
    # (100 KiB of chunk data were counted as headers: the upload was cut; fourth review)
    with _connect(srv.url, timeout=20) as sock:
        sock.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     + KEYS["line"].encode() + b"\r\ncontent-type: image/jpeg\r\n"
                     b"transfer-encoding: chunked\r\n\r\n19000\r\n")
        for last in (False, True):
            time.sleep(0.2)
            sock.sendall(b"\xff" * 0x19000 + (b"\r\n0\r\n\r\n" if last else b"\r\n19000\r\n"))
        answer = _response(sock)
        assert answer.startswith(b"HTTP/1.1 400") and b"headers_too_large" not in answer, answer
    with srv.client("line") as c:  # and the server still serves
        assert c.get("/healthz").status_code == 200


def test_headers_pipelined_behind_a_running_answer_are_capped(launch) -> None:
    """The cap counted only while no request ran: a request pipelined behind a camera's
    endless stream took 20 MB of headers (+490 MB; second review). Behind a running
    answer a 431 would land inside it: the connection is closed."""
    sim = MJPEGSimulator(fps=10)
    try:
        srv = launch(cameras=[CameraConfig(id="cam", source=sim.url)])
        deadline = time.time() + 30
        with srv.client("reviewer") as c:
            while c.get("/v1/cameras").json()[0]["state"] != "online":
                assert time.time() < deadline, "the camera did not come online"
                time.sleep(0.1)
        with _connect(srv.url, timeout=20) as sock:
            sock.sendall(b"GET /v1/cameras/cam/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Authorization: Bearer reviewer-secret\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             + b"a: b\r\n" * 300_000)
            end = time.time() + 30
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(1 << 20):  # the stream never ends by itself
                    assert time.time() < end, "the pipelined headers were taken in"
        # a malformed request pipelined behind it: its 400 landed inside the stream
        with _connect(srv.url, timeout=20) as sock:
            sock.sendall(b"GET /v1/cameras/cam/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Authorization: Bearer reviewer-secret\r\n\r\n")
            got = sock.recv(65536)
            assert got.startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /x HTTP/1.1\r\nBad Header: x\r\n\r\n")
            end = time.time() + 30
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    got += chunk
                    assert time.time() < end, "the malformed request was not refused"
            assert b"HTTP/1.1 400" not in got
    finally:
        sim.kill()


def test_requests_pipelined_far_behind_a_running_one_close_the_connection(launch) -> None:
    """uvicorn (httptools) queues every request it parses behind a running one and reads on
    after each answer: one connection sending "GET /healthz" faster than it was answered
    grew that queue without end, no key needed (650 MB in 11 s, /healthz stalled 1.8 s;
    OIP review, session 36). A few pipelined requests are answered in turn; past
    max_pipelined waiting, the connection is closed."""
    srv = launch()
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with _connect(srv.url) as sock:
        sock.sendall(request * 3)
        answers = b""
        while answers.count(b"HTTP/1.1 200") < 3:
            chunk = sock.recv(65536)
            assert chunk, answers
            answers += chunk
    with _connect(srv.url) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request * 2000)
        got = b""
        with contextlib.suppress(OSError):  # a reset, or the socket's timeout on the old code
            while chunk := sock.recv(65536):
                got += chunk
    assert got.count(b"HTTP/1.1 200") <= SlowClientProtocol.max_pipelined + 1, \
        got.count(b"HTTP/1.1 200")
    with srv.client("line") as c:  # and the server still serves
        assert c.get("/healthz").status_code == 200


def test_an_answer_the_client_does_not_read_is_dropped(launch, caplog) -> None:
    """uvicorn hands the whole answer to the transport and counts the request done: 30
    unread 34 MB annotated answers held 1 GB for as long as their clients liked (attacker
    review). A write buffer that does not drain at min_body_rate over body_timeout_s
    has its connection aborted; a client that reads gets the whole answer."""
    srv = launch(body_timeout_s=0.5)
    board = (np.indices((5000, 5000)).sum(axis=0) % 2 * 255).astype(np.uint8)  # JPEG's worst
    ok, png = cv2.imencode(".png", board)
    assert ok
    request = (b"POST /v1/inspect?annotated=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
               b"Bearer " + KEYS["line"].encode() + b"\r\ncontent-type: image/png\r\n"
               + f"content-length: {len(png)}\r\n\r\n".encode() + png.tobytes())
    with srv.client("line") as c:
        whole = c.post("/v1/inspect", params={"annotated": 1}, content=png.tobytes(),
                       headers={"content-type": "image/png"})
    assert whole.status_code == 200 and len(whole.content) > 8_000_000  # read: all of it
    u = urlparse(srv.url)
    caplog.set_level("WARNING", logger="lineside")
    closing = "closing a connection whose client read"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((u.hostname, u.port))
    sock.sendall(request)
    # judged, drawn, sent into a full buffer and left unread until the server drops it (a
    # fixed 8 s: a loaded host still judging or drawing then had its answer read in full)
    deadline = time.monotonic() + 120
    while not any(closing in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the unread answer was never dropped"
        time.sleep(0.1)
    got, closed = 0, False
    sock.settimeout(20)
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
        closed = True
    except ConnectionResetError:  # aborted with bytes still unsent
        closed = True
    finally:
        sock.close()
    assert closed and got < len(whole.content), got  # never sent in full: dropped
    with srv.client("line") as c:  # and the server still serves
        assert c.get("/healthz").status_code == 200


def test_v2_infer_is_admitted_before_its_body_and_parsed_off_the_loop(launch, monkeypatch) -> None:
    """OIP v2 infer read its body before taking a place in the limiter and parsed the JSON
    on the event loop: 25 held 30 MB bodies were all read, and one 30 MB parse stalled
    /healthz for 2.3 s (attacker review). Now it is admitted first, as /v1/inspect is,
    and parsed in a worker thread."""
    from lineside_inspect.server.routes import v2

    on_loop: list[bool] = []
    real = v2._parse

    def watched(body: bytes, header: str | None) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(body, header)

    monkeypatch.setattr(v2, "_parse", watched)
    srv = launch(max_concurrency=1, max_queue=0)
    limiter = srv.app.state.limiter
    held = _connect(srv.url)
    try:  # a slow client: its headers and the first byte of its body, then nothing
        held.sendall(b"POST /v2/models/deeppcb/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer line-secret\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n{")
        deadline = time.monotonic() + 20
        while limiter.in_system < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert limiter.in_system == 1  # it holds the only place while its body is unread
        with srv.client("line") as c:
            r = c.post("/v2/models/deeppcb/infer", content=b"{" + b" " * 100_000,
                       headers={"content-type": "application/json"})
        assert r.status_code == 503 and r.json()["code"] == "overloaded", r.text
        assert on_loop == []  # refused before its body was parsed
    finally:
        held.close()
    body = {"inputs": [{"name": "images", "shape": [1, 3, 640, 640], "datatype": "UINT8",
                        "data": [0] * (3 * 640 * 640)}]}
    deadline = time.monotonic() + 20
    while limiter.in_system and time.monotonic() < deadline:
        time.sleep(0.02)
    with srv.client("line") as c:
        r = c.post("/v2/models/deeppcb/infer", json=body)
    assert r.status_code == 200, r.text[:300]
    assert on_loop and not any(on_loop)


@contextlib.contextmanager
def _held_uploads(srv: Any, n: int, auth: bytes = b"Authorization: Bearer line-secret\r\n"
                  ) -> Iterator[None]:
    """``n`` uploads whose headers and first bytes came, then nothing more: each holds a
    place in the limiter until the block ends (their sockets close)."""
    limiter = srv.app.state.limiter
    held = [_connect(srv.url) for _ in range(n)]
    try:
        for sock in held:
            sock.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth +
                         b"Content-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n\xff\xd8")
        deadline = time.monotonic() + 20
        while limiter.in_system < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert limiter.in_system == n
        yield
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 20  # the held places are given back with their sockets
    while limiter.in_system and time.monotonic() < deadline:
        time.sleep(0.02)
    assert limiter.in_system == 0 and limiter._held == {}


def test_one_keys_slow_uploads_leave_the_other_keys_their_places(launch, image_bytes) -> None:
    """A line key's uploads trickled at the minimum rate held every place for up to ~68
    minutes, and every other key got 503 meanwhile (attacker review). A key now holds at
    most ``max_places_per_key`` places (default max(max_concurrency, max_queue))."""
    srv = launch(max_concurrency=1, max_queue=2,  # 3 places, a key's share: 2
                 cameras=[CameraConfig(id="sim", source=str(SAMPLE), fps=10)])
    assert srv.app.state.limiter.per_holder == 2
    with _held_uploads(srv, 2):
        with srv.client("line") as c:  # the same key's third: refused at once, unread
            r = c.post("/v1/inspect", content=image_bytes,
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "overloaded"
            assert "max_places_per_key" in r.json()["error"]["message"]
            assert "retry-after" in r.headers
            # a camera trigger takes the key's share too (it took none; camera review)
            r = c.post("/v1/cameras/sim/trigger")
            assert r.status_code == 503 and "max_places_per_key" in r.text, r.text
            v2 = c.post("/v2/models/deeppcb/infer", content=b"{}",
                        headers={"content-type": "application/json"})
            assert v2.status_code == 503 and "'line'" in v2.json()["error"]
        with srv.client("admin") as c:  # another key still has the place left
            r = c.post("/v1/inspect", content=image_bytes,
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            assert r.json()["verdict"] in ("pass", "fail")
    with srv.client("line") as c:
        r = c.post("/v1/inspect", content=image_bytes, headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text


def test_without_keys_there_is_no_share(launch, image_bytes) -> None:
    """Keyless, the server listens on loopback only and its callers share no identity:
    one caller may take every place."""
    srv = launch(keys=False, max_concurrency=1, max_queue=2)
    with _held_uploads(srv, 2, auth=b""):
        r = httpx.post(srv.url + "/v1/inspect", content=image_bytes,
                       headers={"content-type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text


def test_the_share_setting_is_capped_by_the_places() -> None:
    from lineside_inspect.config import Settings
    assert Settings(max_concurrency=2, max_queue=16).places_per_key == 16
    assert Settings(max_concurrency=2, max_queue=16, max_places_per_key=40).places_per_key == 18
    assert Settings(max_concurrency=4, max_queue=0).places_per_key == 4
    assert Settings(max_places_per_key=3).places_per_key == 3


def test_a_plain_key_entry_keeps_loading_with_fields_it_never_used() -> None:
    """A plain ``key`` entry's other fields were dropped with the key; pins (site, line)
    are now kept, and anything else must still not stop a config from loading."""
    from lineside_inspect.config import Settings

    [key] = Settings(api_keys=[{"name": "line1", "role": "line", "key": "s3cret",
                                "comment": "press 3"}]).api_keys
    assert (key.name, key.role, key.site) == ("line1", "line", None)
    [box] = Settings(api_keys=[{"name": "b1", "role": "box", "key": "k", "site": "p1",
                                "line": "l1"}]).api_keys
    assert (box.site, box.line) == ("p1", "l1")



def test_the_queue_depth_gauge_shows_places_held_without_an_inspection(srv) -> None:
    """lineside_queue_depth was set only after an inspection: two uploads stuck on their
    bodies held every place while the gauge said 0 (OIP review, session 33)."""
    def depth() -> float:
        with srv.client() as c:
            text = c.get("/metrics").text
        return float(next(ln.split()[1] for ln in text.splitlines()
                          if ln.startswith("lineside_queue_depth ")))

    with _held_uploads(srv, 2):
        assert depth() == 2
    assert depth() == 0
