"""Standing rules: no stdlib shadowing, a torch-free edge side, lint settings kept."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import lineside_inspect

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_inspect_not_shadowed_from_repo_root() -> None:
    code = "import dataclasses, inspect; print(inspect.signature(len))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(obj, /)"
    assert not (ROOT / "inspect" / "__init__.py").exists()
    assert not (ROOT / "training" / "__init__.py").exists()


def test_pytest_runs_from_repo_root() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q",
                          "tests/lineside_inspect/test_guards.py"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_edge_side_never_imports_torch() -> None:
    modules = [m.name for m in pkgutil.walk_packages(lineside_inspect.__path__, "lineside_inspect.")]
    assert "lineside_inspect.cli" in modules and len(modules) > 10
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m == 'torch' or m.startswith(('torch.', 'torchvision', 'lineside_training')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"edge modules pulled in: {out.stdout.strip()}"


def test_lint_settings_keep_a005_and_importlib_mode() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "A" in cfg["tool"]["ruff"]["lint"]["select"]
    assert "A005" not in cfg["tool"]["ruff"]["lint"].get("ignore", [])
    assert "--import-mode=importlib" in cfg["tool"]["pytest"]["ini_options"]["addopts"]


def test_public_api_resolves() -> None:
    for name in lineside_inspect.__all__:
        assert getattr(lineside_inspect, name) is not None, name
