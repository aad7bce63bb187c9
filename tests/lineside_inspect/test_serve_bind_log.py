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


def _first_warning(tmp_path: Path, *args: str) -> str:
    """Start the real CLI, return its first WARNING line, then stop it."""
    env = {**os.environ, "LINESIDE_DATA_DIR": str(tmp_path), "LINESIDE_API_KEYS": "[]"}
    proc = subprocess.Popen([*LINESIDE, "serve", "--device", "cpu", "--port", str(free_port()),
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
