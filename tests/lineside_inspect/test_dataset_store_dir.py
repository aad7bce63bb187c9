"""Where ``serve`` keeps its store without a configured data_dir: a per-user data folder,
said at start-up, never the folder it was started in (beside the user's dataset)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lineside_inspect.config import Settings, load_settings

from .server_process import LINESIDE, ROOT, ServerProcess, free_port


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


def test_serve_stores_under_the_user_folder_and_says_so(tmp_path: Path) -> None:
    work = tmp_path / "my-dataset"  # where a user would start it: beside their data
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINESIDE_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    port = free_port()
    with ServerProcess([*LINESIDE, "serve", "--model", str(ROOT / "models" / "deeppcb" / "1"),
                        "--port", str(port), "--device", "cpu"], tmp_path / "serve.log", port,
                       cwd=work, env=env):
        pass  # ready, then stopped
    store = tmp_path / "xdg" / "lineside" / "store"
    assert (store / "lineside.db").is_file()
    assert list(work.iterdir()) == []  # nothing written where it was started
    out = (tmp_path / "serve.log").read_text()
    assert f"store in {store} (the per-user default" in out
