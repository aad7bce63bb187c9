"""Where ``serve`` keeps its store without a configured data_dir: a per-user data folder,
said at start-up, never the folder it was started in (beside the user's dataset)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lineside_inspect.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_default_is_the_per_user_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LINESIDE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings().data_dir == str(tmp_path / "xdg" / "lineside" / "store")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the spec: only absolute paths
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().data_dir == str(tmp_path / "home" / ".local" / "share" / "lineside" / "store")
    # make serve's config sets none: it gets the default too, and a configured one wins
    assert load_settings(ROOT / "configs" / "serve.yaml").data_dir == Settings().data_dir
    monkeypatch.setenv("LINESIDE_DATA_DIR", str(tmp_path / "chosen"))
    assert load_settings(ROOT / "configs" / "serve.yaml").data_dir == str(tmp_path / "chosen")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_stores_under_the_user_folder_and_says_so(tmp_path: Path) -> None:
    work = tmp_path / "my-dataset"  # where a user would start it: beside their data
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINESIDE_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    port = _port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lineside_inspect.cli", "serve", "--model",
         str(ROOT / "models" / "deeppcb" / "1"), "--port", str(port), "--device", "cpu"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "lineside serve did not get ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    store = tmp_path / "xdg" / "lineside" / "store"
    assert (store / "lineside.db").is_file()
    assert list(work.iterdir()) == []  # nothing written where it was started
    out = (tmp_path / "serve.log").read_text()
    assert f"store in {store} (the per-user default" in out
