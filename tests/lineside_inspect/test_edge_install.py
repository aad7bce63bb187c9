"""An edge-only install, as on a line-side box: ``pip install lineside`` (no extras) into a
fresh venv. Its CLI serves, inspects a real image through ``lineside serve`` and pulls the
result back with ``lineside data pull URL``; torch and the training extras are absent and
the commands that need them say which extra to install.

Slow (about a minute): pip installs the edge dependencies (from its cache or index) into
the new venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .server_process import ROOT, ServerProcess, free_port

SAMPLE = ROOT / "datasets" / "deeppcb-sample"
pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH or LINESIDE_ settings of the test run: only what the venv has."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("LINESIDE_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The new venv's bin folder, lineside installed in it without extras (non-editable,
    from a copy of the sources, so nothing from the repository's folders leaks in)."""
    tmp = tmp_path_factory.mktemp("edge")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "inspect" / "lineside_inspect", src / "inspect" / "lineside_inspect",
                    ignore=skip)
    shutil.copytree(ROOT / "training" / "lineside_training",
                    src / "training" / "lineside_training", ignore=skip)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # this environment's pip installs into the new venv (--python): no pip to bootstrap there
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                          "install", "-q", "--no-compile", str(src)],
                         capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return venv / "bin"


def _run(edge: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(edge / args[0]), *args[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=_env())


def test_edge_install_has_no_training_dependencies(edge: Path, tmp_path: Path) -> None:
    code = ("import importlib.metadata, importlib.util, lineside_inspect\n"
            "print(lineside_inspect.__file__)\n"
            "print(importlib.metadata.version('lineside') == lineside_inspect.__version__)\n"
            "for m in ('httpx', 'torch', 'torchvision', 'albumentations', 'pycocotools', "
            "'matplotlib'):\n"
            "    print(m, importlib.util.find_spec(m) is not None)\n")
    out = _run(edge, "python", "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(edge.parent)), "lineside_inspect must come from the venv"
    assert lines[1] == "True", "the installed version is lineside_inspect.version's"
    assert lines[2:] == ["httpx True", "torch False", "torchvision False", "albumentations False",
                         "pycocotools False", "matplotlib False"]
    out = _run(edge, "python", "-c", "import torch", cwd=tmp_path)
    assert out.returncode == 1 and "No module named 'torch'" in out.stderr


def test_edge_commands_and_what_needs_the_training_extra(edge: Path, tmp_path: Path) -> None:
    for command in (["serve", "--help"], ["data", "pull", "--help"]):
        out = _run(edge, "lineside", *command, cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Usage" in out.stdout
    out = _run(edge, "lineside", "train", "--data", str(SAMPLE), cwd=tmp_path)
    assert out.returncode == 2 and "pip install 'lineside[train]'" in out.stderr
    out = _run(edge, "lineside", "data", "stats", str(SAMPLE), "--plot", "stats.png", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pip install 'lineside[train]'" in out.stderr and "Traceback" not in out.stderr
    assert "open" in out.stdout  # the table itself needs no extra


@pytest.fixture
def served(edge: Path, tmp_path: Path) -> Iterator[str]:
    """``lineside serve`` from the edge venv on a free loopback port: its URL."""
    port = free_port()
    with ServerProcess([str(edge / "lineside"), "serve", "--model",
                        str(ROOT / "models" / "deeppcb" / "1"), "--port", str(port), "--device",
                        "cpu"], tmp_path / "serve.log", port, cwd=tmp_path,
                       env=_env(LINESIDE_DATA_DIR=str(tmp_path / "store"))) as server:
        yield server.url


def test_edge_install_inspects_and_pulls(edge: Path, served: str, tmp_path: Path) -> None:
    image = next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()
    r = httpx.post(served + "/v1/inspect?part_id=edge-1", content=image, timeout=60,
                   headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["verdict"] in ("pass", "fail") and doc["model"]["name"] == "deeppcb"
    assert doc["part_id"] == "edge-1" and doc["stored"] is True
    # the verdict back as a training dataset, over HTTP (httpx on a plain install)
    out = _run(edge, "lineside", "data", "pull", served, str(tmp_path / "pulled"), "--no-reviewed",
               cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pulled 1 images" in out.stdout
    assert (tmp_path / "pulled" / "annotations.json").is_file()
