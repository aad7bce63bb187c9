"""``lineside serve`` as a real process: refuses an open bind without keys, and on
SIGTERM drops readiness first, finishes in-flight requests, then exits cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
LINESIDE = [sys.executable, "-m", "lineside_inspect.cli"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_open_bind_without_keys_is_refused() -> None:
    out = subprocess.run([*LINESIDE, "serve", "--host", "0.0.0.0", "--port", str(_port())],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in out.stderr
    assert "Traceback" not in out.stderr


def test_sigterm_drains(tmp_path: Path) -> None:
    port = _port()
    env = {**os.environ, "LINESIDE_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([*LINESIDE, "serve", "--port", str(port), "--device", "cpu"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
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
                except (httpx.ConnectError, httpx.RemoteProtocolError):
                    # after shutdown began: refused, or the connection closed before the
                    # request was read (nothing was processed; a client may retry)
                    results.append("refused")
                    return
                except httpx.TransportError as exc:
                    results.append(f"dropped: {exc!r}")  # accepted, then lost: a bug
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
        assert all(r in ("200", "refused") for r in results), results
        assert results.count("200") > 4
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read() if proc.stdout else ""
    assert "readiness dropped" in output
