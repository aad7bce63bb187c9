"""Good-only (anomaly) models: trained from good images alone with synthetic anomalies,
exported as packages of kind ``anomaly`` (docs/training/good-only.md)."""

from __future__ import annotations

from lineside_training.anomaly.config import AnomalyConfig
from lineside_training.anomaly.train import is_anomaly_run, load_run, train_anomaly

__all__ = ["AnomalyConfig", "is_anomaly_run", "load_run", "train_anomaly"]
