"""Entry points behind the ``lineside`` CLI's training commands (imported lazily)."""

from __future__ import annotations

from lineside_training.bench import bench_train
from lineside_training.config import load_config
from lineside_training.engine import train
from lineside_training.evaluate import evaluate
from lineside_training.export import export
from lineside_training.models import list_models

__all__ = ["bench_train", "evaluate", "export", "list_models", "load_config", "train"]
