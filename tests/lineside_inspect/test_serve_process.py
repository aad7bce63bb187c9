"""``lineside serve`` as a real process: refuses an open bind without keys, and on
SIGTERM drops readiness first, finishes in-flight requests, then exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from .server_process import LINESIDE, ROOT, ServerProcess, free_port


def test_open_bind_without_keys_is_refused() -> None:
    out = subprocess.run([*LINESIDE, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_port_in_use_is_one_line_before_anything_loads(tmp_path: Path) -> None:
    # new-user review, session 46: uvicorn binds after the application's start-up, so a
    # port in use was found once every model was loaded and the store made, as uvicorn's
    # "ERROR: [Errno 98] ... address already in use" and exit 3
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([*LINESIDE, "serve", "--port", str(port), "--device", "cpu"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "LINESIDE_DATA_DIR": str(tmp_path / "store")})
    assert out.returncode == 2, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr and "Errno" not in out.stderr
    assert not (tmp_path / "store").exists()  # nothing made


def test_a_mistake_found_in_the_start_up_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # session 50: a camera whose config contradicts itself is found in the application's
    # start-up (after the port is bound and the models load), where uvicorn logged a
    # 60-line traceback and exited 3; a service manager, and the operator, get one line
    # and the exit code of the mistakes found before start-up
    config = tmp_path / "serve.yaml"
    config.write_text(json.dumps({
        "port": free_port(), "device": "cpu", "data_dir": str(tmp_path / "store"),
        "models": [str(ROOT / "models" / "deeppcb-ref" / "1")],
        "recipes": [str(ROOT / "configs" / "recipes" / "deeppcb-ref.yaml")],
        "cameras": [{"id": "cam1", "recipe": "deeppcb-ref", "mode": "triggered",
                     "source": str(ROOT / "datasets" / "deeppcb-sample" / "images")}]}))
    out = subprocess.run([*LINESIDE, "serve", "--config", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "error: camera cam1 has no reference configured" in out.stderr
    assert "Traceback" not in out.stderr and "File \"" not in out.stderr


def test_sigterm_drains(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess([*LINESIDE, "serve", "--port", str(port), "--device", "cpu"],
                           tmp_path / "serve.log", port,
                           env={**os.environ, "LINESIDE_DATA_DIR": str(tmp_path / "store"),
                                # long enough to be seen on a busy machine (0.5 s was not)
                                "LINESIDE_DRAIN_S": "3"})
    server.start()
    proc, url = server.proc, server.url
    assert proc is not None
    try:
        server.wait_ready(60)
        image = next((ROOT / "datasets" / "deeppcb-sample" / "images").rglob("*.jpg")).read_bytes()
        results: list[str] = []
        first = threading.Event()

        def client() -> None:
            for _ in range(40):
                try:
                    r = httpx.post(url + "/v1/inspect", content=image, timeout=30,
                                   headers={"content-type": "image/jpeg"})
                    results.append(str(r.status_code))
                    first.set()
                except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                        httpx.WriteError) as exc:
                    # after shutdown began: refused, or a connection the kernel had
                    # accepted closed before its request was read (a reset reads as
                    # ReadError or WriteError). Nothing was processed, so a client may
                    # retry: the store below shows no processed inspection went unanswered.
                    results.append(f"unanswered: {type(exc).__name__}")
                    return
                except httpx.TransportError as exc:  # a timeout: shutdown hung on it
                    results.append(f"dropped: {exc!r}")
                    return

        clients = [threading.Thread(target=client) for _ in range(4)]
        for t in clients:
            t.start()
        assert first.wait(30)
        proc.send_signal(signal.SIGTERM)
        seen = set()
        while proc.poll() is None:
            try:
                seen.add(httpx.get(url + "/readyz", timeout=1).status_code)
            except httpx.TransportError:
                seen.add(0)
            time.sleep(0.02)
        for t in clients:
            t.join(30)
        assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert 503 in seen, f"readiness never dropped before exit: {seen}"
        answered = [r for r in results if not r.startswith("unanswered")]
        assert all(r == "200" for r in answered), [r for r in results if r != "200"]
        assert results.count("200") > 4
        # every inspection the server ran was answered: none was processed and then lost
        # (the closed store has applied its journal)
        with sqlite3.connect(tmp_path / "store" / "lineside.db") as conn:
            rows = int(conn.execute("SELECT count(*) FROM inspections").fetchone()[0])
        assert rows == results.count("200"), (rows, results)
        # what it wrote is not for every user of the box (0644 images under 0755
        # folders; deploy review, session 33): umask 027 as the systemd unit's
        written = list((tmp_path / "store").rglob("*"))
        assert written and not [q for q in written if q.stat().st_mode & 0o007], \
            sorted(oct(q.stat().st_mode) for q in written)[:5]
    finally:
        server.stop(signal.SIGKILL)  # a no-op once it has exited
    assert "readiness dropped" in server.output()


def test_sigterm_ends_a_cameras_live_view(tmp_path: Path) -> None:
    """An open live view (an endless MJPEG stream) held the stop for uvicorn's whole
    graceful timeout: 31 s after SIGTERM, past docker stop's 10 s (then a kill), with an
    ERROR traceback (deploy review). It ends at the signal, and the server exits soon."""
    import json

    port = free_port()
    camera = {"id": "cam1", "source": str(ROOT / "datasets" / "deeppcb-sample" / "images"),
              "mode": "triggered", "fps": 5}
    server = ServerProcess([*LINESIDE, "serve", "--port", str(port), "--device", "cpu"],
                           tmp_path / "serve.log", port,
                           env={**os.environ, "LINESIDE_DATA_DIR": str(tmp_path / "store"),
                                "LINESIDE_CAMERAS": json.dumps([camera])})
    server.start()
    proc = server.proc
    assert proc is not None
    try:
        server.wait_ready(60)
        parts: list[int] = []
        ended = threading.Event()

        def watch() -> None:
            try:
                with httpx.stream("GET", server.url + "/v1/cameras/cam1/stream?fps=1",
                                  timeout=60) as r:
                    for chunk in r.iter_bytes():
                        parts.append(len(chunk))
            except httpx.TransportError:
                pass
            ended.set()

        viewer = threading.Thread(target=watch, daemon=True)
        viewer.start()
        deadline = time.monotonic() + 30
        while not parts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert parts, "the live view sent nothing"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # a hang guard: the old stop took uvicorn's whole 30 s
        assert ended.wait(5), "the live view did not end with the server"
        assert proc.returncode in (0, -signal.SIGTERM)
        # uvicorn's words when its graceful timeout ran out on the open stream
        assert "graceful shutdown exceeded" not in server.output()
        assert "Traceback" not in server.output()
    finally:
        server.stop(signal.SIGKILL)  # a no-op once it has exited


def test_ctrl_c_with_a_camera_stalled_mid_read_ends_at_once_and_cleanly(tmp_path: Path) -> None:
    """Ctrl-C while a camera's stream had stalled mid-read waited, silently, for the read's
    own read_timeout_s (20 s for 20; up to 300), and a read outlasting that met the
    finalizing interpreter: "FATAL: exception not rethrown", an abort (session 49). The
    server shuts down (store closed), waits a bounded time for the read, says which
    camera it left, and ends with 130, not finalized under the read."""
    from lineside_inspect.cameras.simulator import MJPEGSimulator

    stream = MJPEGSimulator()
    port = free_port()
    camera = {"id": "cam1", "source": stream.url, "mode": "triggered",
              "open_timeout_s": 300, "read_timeout_s": 300}
    server = ServerProcess([*LINESIDE, "serve", "--port", str(port), "--device", "cpu"],
                           tmp_path / "serve.log", port,
                           env={**os.environ, "LINESIDE_DATA_DIR": str(tmp_path / "store"),
                                "LINESIDE_CAMERAS": json.dumps([camera]),
                                "LINESIDE_DRAIN_S": "0.1"})
    try:
        with server:
            proc = server.proc
            assert proc is not None
            deadline = time.monotonic() + 60
            while httpx.get(server.url + "/v1/cameras", timeout=5).json()[0]["frames"] < 3:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
            stream.mode = "hang"  # the connection open, no more bytes: the next read stalls
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)  # a hang guard: it waited out the read's 300 s
        out = server.output()
        assert proc.returncode == 130, out
        assert "FATAL" not in out and "Traceback" not in out and "Aborted" not in out
        assert "Application shutdown complete" in out  # the store closed before the end
        assert "camera cam1 still in a read of its source" in out
    finally:
        server.stop(signal.SIGKILL)  # a no-op once it has exited
        stream.kill()


def test_free_ports_are_never_handed_out_twice_lately() -> None:
    """A port picked but not yet bound is free again in the OS's eyes and can come back
    from the next pick: once in CI it did, a weed master and its S3 grpc port got the
    same port. free_port and free_ports remember what they handed out."""
    from lineside_inspect.serve_process import free_ports

    one_at_a_time = [free_port() for _ in range(150)]
    together = free_ports(9)
    assert len(set(one_at_a_time + together)) == 159
    for port in together:  # free when handed out
        with socket.create_server(("127.0.0.1", port)):
            pass


def test_a_port_share_keeps_side_by_side_processes_apart() -> None:
    """share_ports(i, n): only ports p // 2 % n == i, as each xdist worker takes
    (conftest)."""
    from lineside_inspect.serve_process import free_ports, share_ports

    before = share_ports(1, 3)
    try:
        assert all(p // 2 % 3 == 1 for p in free_ports(20))
        assert free_port() // 2 % 3 == 1
    finally:
        share_ports(*before)
    with pytest.raises(ValueError, match="index must be"):
        share_ports(2, 2)


# a server for serve_process.start that answers /readyz at once (the port is its argument):
# what start, stop and the blocks around them do, not what lineside serve does
READY_SERVER = """
import http.server, sys
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[-1])), Ready).serve_forever()
"""


@pytest.fixture
def tiny_servers(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """serve_process.start runs READY_SERVER; the processes it started, killed at the end."""
    import sys

    from lineside_inspect import serve_process

    started: list[subprocess.Popen[bytes]] = []
    real = serve_process._popen

    def recording(*args: object) -> subprocess.Popen[bytes]:
        proc = real(*args)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    monkeypatch.setattr(serve_process, "LINESIDE", [sys.executable, "-c", READY_SERVER])
    monkeypatch.setattr(serve_process, "_popen", recording)
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_sigterm_inside_popen_still_stops_the_child(
        tiny_servers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """``lineside bench`` turns SIGTERM into a Ctrl-C, which stops its servers; one that
    came inside ``Popen`` (after the fork, before it returned) left the child running, with
    nothing holding it to stop. The signal is held until the child is recorded now."""
    from lineside_inspect import serve_process
    from lineside_inspect.cli import sigterm_as_ctrl_c

    real = serve_process._popen  # (the fixture's recording one)

    def signalled_inside(*args: object) -> subprocess.Popen[bytes]:
        proc = real(*args)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGTERM)  # as if it came before Popen returned
        return proc

    monkeypatch.setattr(serve_process, "_popen", signalled_inside)
    port = free_port()
    with sigterm_as_ctrl_c(), pytest.raises(KeyboardInterrupt):
        serve_process.start([str(port)], port)
    assert len(tiny_servers) == 1
    assert tiny_servers[0].poll() is not None  # killed before the Ctrl-C went on


def test_a_server_the_caller_never_recorded_is_stopped_at_the_blocks_end(
        tiny_servers: list[subprocess.Popen[bytes]]) -> None:
    """A Ctrl-C (SIGTERM) between start returning and the bench recording the server left
    it running; and a start still going on in a thread when the block ended (a bench's
    pool starting its two servers) kept its server. The block stops the one, the start the
    other."""
    from lineside_inspect import serve_process
    from lineside_inspect.serve_process import start, stopped_at_exit

    port = free_port()
    with pytest.raises(KeyboardInterrupt), stopped_at_exit():
        start([str(port)], port)
        raise KeyboardInterrupt  # before the caller kept what start returned
    assert len(tiny_servers) == 1 and tiny_servers[0].poll() is not None

    began, go = threading.Event(), threading.Event()
    real = serve_process._popen
    outcome: list[BaseException | None] = []

    def late(*args: object) -> subprocess.Popen[bytes]:
        began.set()
        go.wait(30)
        return real(*args)  # type: ignore[arg-type]

    def start_in_thread() -> None:
        late_port = free_port()
        try:
            start([str(late_port)], late_port)
            outcome.append(None)
        except BaseException as exc:  # (what the thread's start raised)
            outcome.append(exc)

    serve_process._popen = late  # type: ignore[assignment]
    try:
        with stopped_at_exit():
            thread = threading.Thread(target=start_in_thread)
            thread.start()
            assert began.wait(30)
        go.set()  # the block has ended: the start goes on
        thread.join(60)
    finally:
        serve_process._popen = real  # type: ignore[assignment]
    assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError), outcome
    assert len(tiny_servers) == 2 and tiny_servers[1].poll() is not None


def test_a_frame_over_the_built_in_limit_the_server_took_is_drawn(tmp_path: Path) -> None:
    """``GET /v1/inspections/{id}/annotated`` decoded the stored frame under the built-in
    pixel limit, not the server's ``max_pixels``: on a server allowed larger frames one it
    had taken and judged was a 404 "cannot be drawn" (docs/security.md session 42). The
    built-in limit (``LINESIDE_MAX_IMAGE_PIXELS``, read as the process starts) is lowered
    under the frame's size instead of sending a frame over 64 Mpx."""
    from lineside_inspect.imageio import decode_image, encode_jpeg
    from lineside_inspect.opencv import cv2

    board = next((ROOT / "datasets" / "deeppcb-sample" / "images").rglob("*_test.jpg"))
    # a mono camera's 640x640 = 409600 pixels: within the server's 500000, over the 300000
    grey = encode_jpeg(cv2.cvtColor(decode_image(board.read_bytes()), cv2.COLOR_BGR2GRAY))
    env = {**os.environ, "LINESIDE_DATA_DIR": str(tmp_path / "store"),
           "LINESIDE_MAX_IMAGE_PIXELS": "300000", "LINESIDE_MAX_PIXELS": "500000"}
    port = free_port()
    with ServerProcess([*LINESIDE, "serve", "--port", str(port), "--device", "cpu"],
                       tmp_path / "serve.log", port, env=env) as server:
        r = httpx.post(server.url + "/v1/inspect", content=grey, timeout=60,
                       headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        drawn = httpx.get(f"{server.url}/v1/inspections/{r.json()['id']}/annotated", timeout=60)
        assert drawn.status_code == 200, drawn.text
        assert drawn.headers["content-type"] == "image/jpeg"
        # the frame's own size, drawn in colour (the boxes red on the grey frame)
        assert decode_image(drawn.content, 500_000).shape == (640, 640, 3)
        # over the server's own limit it is still refused as it was taken: not drawn
        big = encode_jpeg(np.zeros((800, 800), np.uint8))
        assert httpx.post(server.url + "/v1/inspect", content=big, timeout=60,
                          headers={"content-type": "image/jpeg"}).status_code == 413


def test_a_golden_set_of_frames_the_server_took_is_made_and_gated_as_the_line_judged(
        tmp_path: Path) -> None:
    """A golden set from the store (``POST /v1/golden/NAME``) decoded each reviewed frame
    and its reference under the built-in pixel limit, and a gate's replay an item's own
    reference image the same way: on a server allowed larger frames, a mono camera's
    frame it had judged against its golden was refused (422 "over the limit") when added,
    and again at gate time (docs/security.md session 42). Both now decode as the service
    does (``decode_frame``, goldens ``Reference.from_bytes``, under the server's
    ``max_pixels``): the gate sees the very boxes the line's version found. The built-in
    limit (read as the process starts) is lowered under the frames' size instead."""
    from lineside_inspect.imageio import decode_image, encode_jpeg
    from lineside_inspect.opencv import cv2

    pair = ROOT / "datasets" / "deeppcb-sample" / "images" / "group00041"
    # a mono camera's 640x640 = 409600 pixels and its golden: within 500000, over 300000
    part, golden = (encode_jpeg(cv2.cvtColor(decode_image((pair / f"00041000_{k}.jpg")
                                                          .read_bytes()), cv2.COLOR_BGR2GRAY))
                    for k in ("test", "temp"))
    ref = ROOT / "models" / "deeppcb-ref"
    env = {**os.environ, "LINESIDE_DATA_DIR": str(tmp_path / "store"),
           "LINESIDE_MAX_IMAGE_PIXELS": "300000", "LINESIDE_MAX_PIXELS": "500000",
           "LINESIDE_MODELS": json.dumps([str(ref / "1"), str(ref / "1-int8")])}  # 1-int8 active
    port = free_port()
    with ServerProcess([*LINESIDE, "serve", "--port", str(port), "--device", "cpu"],
                       tmp_path / "serve.log", port, env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as c:
        served = c.post("/v1/inspect", files={"image": ("f.jpg", part, "image/jpeg"),
                                              "reference": ("r.jpg", golden, "image/jpeg")})
        assert served.status_code == 200 and served.json()["verdict"] == "fail", served.text
        done = served.json()
        assert c.post(f"/v1/inspections/{done['id']}/reviews",
                      json={"action": "confirm"}).status_code == 200
        made = c.post("/v1/golden/g", json={"inspections": [done["id"]]})
        assert made.status_code == 200, made.text
        assert made.json()["items"][0]["reference"] is not None  # its own golden, kept
        gate = c.post("/v1/models/deeppcb-ref/gate", json={"version": "1", "golden": "g"})
        assert gate.status_code == 200, gate.text
        against = gate.json()["against"]
        assert (against["version"], against["escapes"], against["boxes_found"]) \
            == ("1-int8", 0, len(done["defects"])), against
