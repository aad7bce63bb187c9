"""``lineside serve`` as a real process: refuses an open bind without keys, and on
SIGTERM drops readiness first, finishes in-flight requests, then exits cleanly."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from .server_process import LINESIDE, ROOT, ServerProcess, free_port


def test_open_bind_without_keys_is_refused() -> None:
    out = subprocess.run([*LINESIDE, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in out.stderr
    assert "Traceback" not in out.stderr


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
