"""Loading a trained model from a run folder or a checkpoint file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lineside_inspect.dataset.canonical import ANNOTATIONS
from lineside_inspect.errors import ConfigError
from lineside_inspect.package import sha256_file
from lineside_training.config import TrainConfig
from lineside_training.models import build_model
from lineside_training.weights import read_torch_file

THRESHOLDS = "thresholds.json"
# the key that ties thresholds.json and a report's metrics.json to the checkpoint file
CHECKPOINT_STAMP = "checkpoint_sha256"


def recorded_set(checkpoint: Any) -> str | None:
    """Where ``checkpoint`` (a run's ``last.pt``/``best.pt``, a detector's or a good-only
    one's) recorded the dataset it trained on (``data.path``, absolute), if a dataset is
    there now; None otherwise (a checkpoint of a release that recorded none, a set moved)."""
    fp = checkpoint.get("data") if isinstance(checkpoint, dict) else None
    recorded = fp.get("path") if isinstance(fp, dict) else None
    return recorded if isinstance(recorded, str) and (Path(recorded) / ANNOTATIONS).is_file() \
        else None


@dataclass
class Trained:
    model: nn.Module
    config: TrainConfig
    class_names: list[str]
    run_dir: Path
    checkpoint: dict[str, Any]
    checkpoint_file: Path | None = None
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str | None:
        """The checkpoint file's digest: what a run's thresholds and report belong to."""
        if self._sha256 is None and self.checkpoint_file is not None:
            self._sha256 = sha256_file(self.checkpoint_file)
        return self._sha256

    def belongs(self, doc: dict[str, Any]) -> bool:
        """Whether ``doc`` (thresholds, a report's metrics) was made from this checkpoint:
        a resumed run's new best.pt kept the old one's thresholds and metrics, and export
        shipped them (new-user review). Documents from before the stamp are taken as
        they are."""
        stamp = doc.get(CHECKPOINT_STAMP)
        return stamp is None or stamp == self.sha256

    def save_thresholds(self, calib: dict[str, Any]) -> Path:
        """Write ``calib`` as the run's thresholds, stamped with this checkpoint."""
        path = self.run_dir / THRESHOLDS
        path.write_text(json.dumps({**calib, CHECKPOINT_STAMP: self.sha256}, indent=1))
        return path

    @property
    def data(self) -> Path:
        """The dataset the run trained on. Its config names it as given to ``train``
        (often relative, ``data/my-set``); the checkpoint also records where that was, so
        ``evaluate`` or ``export`` run from another folder still find it."""
        given = Path(self.config.data)
        if (found := recorded_set(self.checkpoint)) is not None:
            return Path(found)
        if (given / ANNOTATIONS).is_file():
            return given
        recorded = self.checkpoint.get("data", {}).get("path")
        raise ConfigError(f"the run's dataset {self.config.data} was not found (it trained on "
                          f"{recorded or given}); pass --data DATASET")

    def data_changed(self) -> bool:
        """Whether the run's dataset is not the one it trained on: its labels' digest
        differs from the one the checkpoint recorded (a checkpoint without one: False).
        OSError when the labels cannot be read."""
        seen = self.checkpoint.get("data", {}).get("annotations_sha256")
        return bool(seen) and sha256_file(self.data / ANNOTATIONS) != seen

    def is_own_data(self, data: str | Path | None) -> bool:
        """Whether ``data`` (None: the run's own) is the dataset the run trained on."""
        if data is None:
            return True
        try:
            return Path(data).resolve() == self.data.resolve()
        except ConfigError:
            return False

    @property
    def thresholds(self) -> dict[str, Any] | None:
        """The run's saved thresholds, None when there are none or they were calibrated
        on another checkpoint (see :attr:`stale_thresholds`)."""
        doc = self._saved_thresholds()
        return doc if doc is not None and self.belongs(doc) else None

    @property
    def stale_thresholds(self) -> bool:
        """Whether the saved thresholds belong to another checkpoint (resumed since)."""
        doc = self._saved_thresholds()
        return doc is not None and not self.belongs(doc)

    def _saved_thresholds(self) -> dict[str, Any] | None:
        doc = read_run_json(self.run_dir / THRESHOLDS)
        if doc is not None and not isinstance(doc.get("thresholds"), dict):
            raise ConfigError(f"{self.run_dir / THRESHOLDS}: no 'thresholds' mapping: not "
                              f"a file Lineside wrote; {REWRITE}")
        return doc


REWRITE = "'lineside evaluate RUN' writes it again (or delete it)"


def read_run_json(path: Path) -> dict[str, Any] | None:
    """A JSON object a run folder keeps (thresholds.json, a report's metrics.json), None
    when there is none. A run folder from elsewhere may hold anything there: damaged,
    not UTF-8 or not an object, one line naming the file (export was a traceback)."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"
                          ) from None
    except (ValueError, RecursionError) as exc:  # JSON, UTF-8, int()'s digits, nesting
        raise ConfigError(f"{path}: not JSON Lineside can read ({type(exc).__name__}); "
                          f"{REWRITE}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a {type(doc).__name__}, not the object Lineside "
                          f"writes; {REWRITE}")
    return doc


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        if (path / "best.pt").is_file():
            return path / "best.pt"
        if (path / "last.pt").is_file():
            _check_best_kept(path)
            return path / "last.pt"
        if (path / "anomaly.pt").is_file():  # (anomaly.train.CHECKPOINT)
            raise ConfigError(f"{path}: a good-only run, calibrated at training on its "
                              "held-out good images; to set its threshold on the line's own "
                              "good parts, export it and calibrate the package: lineside "
                              "calibrate models/NAME/VERSION --data GOOD_PARTS")
        raise ConfigError(f"{path}: run folder has no best.pt or last.pt")
    if not path.is_file():
        raise ConfigError(f"{path}: no such run folder or checkpoint")
    return path


def _check_best_kept(run: Path) -> None:
    """Refuse a run folder whose best.pt is gone though its last.pt says it saved one:
    export (and evaluate) took last.pt in its place without a word, shipping the last
    epoch's weights as the run's best (session 51). A run that evaluated none (stopped
    in its first epoch) goes on with its last.pt."""
    ck = read_torch_file(run / "last.pt", mmap=True)
    best = ck.get("best") if isinstance(ck, dict) else None
    if isinstance(best, int | float) and best >= 0:
        epoch = ck.get("best_epoch")
        at = f" at epoch {epoch}" if isinstance(epoch, int) and epoch > 0 else ""
        raise ConfigError(f"{run / 'best.pt'} is missing: the run saved its best weights "
                          f"there{at}; put it back, or give {run / 'last.pt'} to use the "
                          "last epoch's weights")


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> Trained:
    """The evaluation weights (EMA when trained with it) of a run or checkpoint, in eval mode."""
    ck_path = resolve_checkpoint(path)
    # tensors and plain values only: a run folder from elsewhere cannot run code on load
    ck = read_torch_file(ck_path, device)
    try:  # plain values that are not our checkpoint's (a list, a bare state dict): said
        cfg = TrainConfig.model_validate(ck["config"])
        names = list(ck["class_names"])
        model = build_model(cfg.model, num_classes=len(names), **cfg.model_kwargs)
        model.load_state_dict(ck["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"{ck_path}: not a Lineside checkpoint "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                          ) from None
    model.to(device).eval()
    return Trained(model, cfg, names, ck_path.parent, ck, ck_path)
