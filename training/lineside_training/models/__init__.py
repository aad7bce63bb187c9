"""Detector registry: ``build_model(name, num_classes=..., **kwargs)``."""

from __future__ import annotations

from lineside_training.models import lsdet, zoo  # noqa: F401  (register builders)
from lineside_training.models.registry import build_model, list_models, register

__all__ = ["build_model", "list_models", "register"]
