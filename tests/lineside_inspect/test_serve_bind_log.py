"""``lineside serve`` says truly where it listens without keys: loopback only, or (with
--insecure on another address) that auth is off for anyone who can reach it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lineside_inspect.serve_process import stop

from .server_process import LINESIDE, ROOT, free_port


def _first_warning(tmp_path: Path, *args: str, command: tuple[str, ...] = (
        "serve", "--device", "cpu")) -> str:
    """Start the real CLI, return its first WARNING line, then stop it."""
    env = {**os.environ, "LINESIDE_DATA_DIR": str(tmp_path), "LINESIDE_API_KEYS": "[]",
           "LINESIDE_HUB_API_KEYS": "[]"}
    proc = subprocess.Popen([*LINESIDE, *command, "--port", str(free_port()),
                             *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if " WARNING " in line:
                return line
            assert time.monotonic() < deadline, "no warning logged"
        raise AssertionError(f"the server exited ({proc.wait()}) without a warning")
    finally:
        stop(proc)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_insecure_open_bind_says_auth_is_off_there(tmp_path: Path, host: str) -> None:
    line = _first_warning(tmp_path, "--host", host, "--insecure")
    assert "loopback" not in line
    assert "auth is OFF" in line and f"listening on {host}:" in line


def test_loopback_bind_says_loopback(tmp_path: Path) -> None:
    line = _first_warning(tmp_path, "--host", "127.0.0.1")
    assert "auth is off, listening on loopback only (127.0.0.1)" in line


def test_the_hub_says_so_too(tmp_path: Path) -> None:
    """The hub started without keys said nothing (fleet review, session 32)."""
    config = tmp_path / "hub.yaml"
    config.write_text(f"database_url: sqlite:///{tmp_path / 'hub.db'}\n"
                      f"data_dir: {tmp_path / 'hub'}\n"
                      "objects: {endpoint: '127.0.0.1:9', access_key: a, secret_key: s}\n")
    line = _first_warning(tmp_path, "--host", "0.0.0.0", "--insecure",
                          command=("hub", "--config", str(config)))
    assert "auth is OFF" in line and "listening on 0.0.0.0:" in line
    assert "publish and assign models" in line
