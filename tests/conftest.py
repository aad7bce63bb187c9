"""Shared fixtures: the repository's sample dataset and the DeepPCB training split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
DEEPPCB = ROOT.parent / "shared" / "datasets" / "deeppcb"


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
