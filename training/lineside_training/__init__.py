"""Lineside training side: datasets, augmentation, detectors, training, evaluation, export.

Imports torch; the edge side (:mod:`lineside_inspect`) never imports this package.
"""

from __future__ import annotations

from lineside_training.models import build_model, list_models

__all__ = ["build_model", "list_models"]
