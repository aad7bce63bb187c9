"""``lineside serve`` says truly where it listens without keys: loopback only, or (with
--insecure on another address) that auth is off for anyone who can reach it."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lineside_inspect.serve_process import stop

from .server_process import LINESIDE, ROOT, free_port


def _first_warning(tmp_path: Path, *args: str, command: tuple[str, ...] = (
        "serve", "--device", "cpu"), until: str = " WARNING ", port: int = 0) -> str:
    """Start the real CLI, return its first WARNING line (or its output up to the first
    line holding ``until``), then stop it."""
    env = {**os.environ, "LINESIDE_DATA_DIR": str(tmp_path), "LINESIDE_API_KEYS": "[]",
           "LINESIDE_HUB_API_KEYS": "[]"}
    proc = subprocess.Popen([*LINESIDE, *command, "--port", str(port or free_port()),
                             *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:  # in a thread: a line never logged fails the test, not hangs it
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen = ""
    try:
        deadline = time.monotonic() + 60
        while (line := lines.get(timeout=max(deadline - time.monotonic(), 0.1))) is not None:
            seen += line
            if until in line:
                return line if until == " WARNING " else seen
        raise AssertionError(f"the server exited ({proc.wait()}) without {until!r}:\n{seen}")
    except queue.Empty:
        raise AssertionError(f"no {until.strip()!r} logged within 60 s:\n{seen}") from None
    finally:
        stop(proc)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_insecure_open_bind_says_auth_is_off_there(tmp_path: Path, host: str) -> None:
    line = _first_warning(tmp_path, "--host", host, "--insecure")
    assert "loopback" not in line
    assert "auth is OFF" in line and f"listening on {host}:" in line


def test_loopback_bind_says_loopback_and_where_the_pages_are(tmp_path: Path) -> None:
    """And, once it serves, the address to open: on the socket bound before start-up
    (session 46) uvicorn's "Uvicorn running on ..." was never logged, so nothing said
    where the pages were (new-user review, session 47)."""
    port = free_port()
    out = _first_warning(tmp_path, "--host", "127.0.0.1", until="listening on http", port=port)
    assert "auth is off, listening on loopback only (127.0.0.1)" in out
    assert f"INFO listening on http://127.0.0.1:{port} (Ctrl+C to stop)" in out, out
    # said once serving: after the start-up that loads the models
    assert out.index("lineside ready") < out.index(f"http://127.0.0.1:{port}"), out


def test_the_hub_says_so_too(tmp_path: Path) -> None:
    """The hub started without keys said nothing (fleet review, session 32)."""
    config = tmp_path / "hub.yaml"
    config.write_text(f"database_url: sqlite:///{tmp_path / 'hub.db'}\n"
                      f"data_dir: {tmp_path / 'hub'}\n"
                      "objects: {endpoint: '127.0.0.1:9', access_key: a, secret_key: s}\n")
    port = free_port()
    out = _first_warning(tmp_path, "--host", "0.0.0.0", "--insecure",
                         command=("hub", "--config", str(config)), until="listening on http",
                         port=port)
    line = next(x for x in out.splitlines() if " WARNING " in x)
    assert "auth is OFF" in line and "listening on 0.0.0.0:" in line
    assert "publish and assign models" in line
    assert f"listening on http://0.0.0.0:{port} (Ctrl+C to stop)" in out, out
