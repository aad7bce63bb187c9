"""Shared fixtures: the repository's sample dataset and the DeepPCB training split."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lineside_inspect.serve_process import share_ports

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
DEEPPCB = ROOT.parent / "shared" / "datasets" / "deeppcb"

# The files that take longest (a full run's --durations, 2 cores), run first: with make
# test's pytest-xdist --dist loadfile, a long file started last is a tail one worker runs
# while the other idles. Only the order changes; the rest keep theirs.
SLOW_FIRST = ("test_fuzz_api.py", "test_engine.py", "test_edge_install.py",
              "test_fleet_sync_processes.py", "test_line_plc.py", "test_reference_loop.py",
              "test_ui_screens.py", "test_ui_security.py", "test_budget.py", "test_export.py",
              "test_bench_server.py")


def pytest_configure(config: pytest.Config) -> None:
    """Under make test's xdist workers, each picks loopback ports from its own share (half the
    port, mod the worker count): a port one picked for a server not yet bound is never another's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and count.isdigit():
        share_ports(int(worker[2:]), int(count))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A private copy of the canonical DeepPCB sample (tests may modify it)."""
    dst = tmp_path / "sample"
    shutil.copytree(SAMPLE, dst)
    return dst


@pytest.fixture
def deeppcb() -> Path:
    if not (DEEPPCB / "PCBData").is_dir():
        pytest.skip(f"DeepPCB not found at {DEEPPCB}")
    return DEEPPCB
