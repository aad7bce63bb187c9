"""Entry points behind the ``lineside`` CLI's training commands (imported lazily)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from lineside_inspect.errors import ConfigError
from lineside_inspect.package import read_card
from lineside_inspect.user_files import load_yaml
from lineside_training import engine
from lineside_training import evaluate as detector_evaluate
from lineside_training import export as detector_export
from lineside_training.anomaly import AnomalyConfig, is_anomaly_run, train_anomaly
from lineside_training.anomaly.evaluate import evaluate_anomaly
from lineside_training.anomaly.evaluate import summary_lines as anomaly_summary
from lineside_training.anomaly.export import export_anomaly
from lineside_training.bench import bench_train
from lineside_training.budget import budget_text, parse_duration
from lineside_training.calibrate import calibrate
from lineside_training.config import TrainConfig, read_config, shown, sizes_from_data, validate_config
from lineside_training.models import list_models

__all__ = ["anomaly_summary", "bench_train", "calibrate", "evaluate", "export",
           "kept_over_config", "list_models", "load_config", "resumed", "train"]


# what a resume does not take from the run's config.yaml: where the run is (the command
# says, and found it there), its data, which the command's data replaces when it names
# some (the run's checkpoint then refuses other data than it trained on, by content), and
# the machine's (a run started with --device cuda went on asking for CUDA on a CPU box)
_NOT_KEPT = ("name", "out_dir", "data", "extra_data", "kind", "device", "threads")


def resumed(path: str | Path | None, overrides: list[str] | None,
            name: str | None) -> dict[str, Any]:
    """For ``--resume``: what the run to continue was trained with (its ``config.yaml``),
    as a base for the command's config (:func:`load_config`'s ``base``: its values replace
    the config file's, and a ``--set`` or flag given again replaces them, a ``--set`` of
    one key in a section that key of the run's section). Every field of the run's is kept
    that no ``--set`` names again (a run started with ``--set lr=0.005``
    went on at the config file's 0.004; issue #18): its schedule, optimiser, model, input
    size, tiling, augmentation. ``engine.train`` refuses a field given again that cannot
    change midway and logs those that do. A ``--set tiling...`` leaves the input size to
    the tile it names (the tile is the input; the run refuses another scale by name). Its
    ``data`` (and ``extra_data``, from ``--merge``) are filled in when neither the config
    nor an override names a set. Fields of a release that no longer has them are left
    out, and fields a run's older release did not write are the command's. Empty when
    there is no such run (``train`` says so); a good-only run's data only (good-only runs
    do not resume, and say so)."""
    doc = read_config(path, overrides, name=name)
    saved = Path(str(doc.get("out_dir", "runs"))) / str(doc.get("name", "run")) / "config.yaml"
    try:
        was = load_yaml(saved.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(was, dict):
        return {}
    fill: dict[str, Any] = {}
    if doc.get("kind") != "anomaly" and was.get("kind") != "anomaly":
        keys = [item.partition("=")[0].strip().split(".") for item in overrides or []]
        # a whole field given again is the --set's; one key of a section (augment.hflip)
        # edits the run's section
        given = {key[0] for key in keys if len(key) == 1}
        fill = {k: v for k, v in was.items()
                if k in TrainConfig.model_fields and k not in _NOT_KEPT and k not in given}
        if any(key[0] == "tiling" for key in keys):  # its tile is the input (TrainConfig)
            fill.pop("input_size", None)
    if doc.get("data") is None and was.get("data"):
        fill["data"] = str(was["data"])
    # its --merge sets, when it is resumed on its own data (the shipped configs name one)
    same = doc.get("data") is None or _same_path(doc["data"], was.get("data"))
    if same and not doc.get("extra_data") and was.get("extra_data"):
        fill["extra_data"] = [str(d) for d in was["extra_data"]]
    return fill


def kept_over_config(path: str | Path | None, fill: dict[str, Any]) -> list[str]:
    """The config file's values a resume does not apply, ``fill`` (:func:`resumed`) keeping
    the run's: ``lr 0.005 (CONFIG: 0.004)``. Only keys the file sets, within a section the
    keys it sets; its ``input_size: auto`` and a time budget written another way
    (``30m`` for ``1800s``) are no difference."""
    if path is None or not fill:
        return []
    file = read_config(path)
    said = []

    def differs(key: str, mine: Any, run: Any) -> None:
        if isinstance(mine, dict) and isinstance(run, dict):
            for k, v in mine.items():
                differs(f"{key}.{k}", v, run.get(k))
        elif mine != run:
            said.append(f"{key} {shown(run)} ({path}: {shown(mine)})")

    for key, run in fill.items():
        if key not in file or key in ("data", "extra_data"):
            continue
        mine = file[key]
        if key == "input_size" and mine == "auto":
            continue
        if key == "time_budget" and mine is not None:
            with contextlib.suppress(ValueError):
                mine = budget_text(mine)
        differs(key, mine, run)
    return said


def _same_path(a: object, b: object) -> bool:
    try:
        return b is not None and Path(str(a)).resolve() == Path(str(b)).resolve()
    except OSError:
        return False


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, **fields: Any) -> TrainConfig | AnomalyConfig:
    """A detector's config, or a good-only model's when the YAML says ``kind: anomaly``.
    A ``time_budget`` given as a field (``--time``) is checked here, so its error names the
    flag rather than the config file."""
    if fields.get("time_budget") is not None:
        try:
            parse_duration(fields["time_budget"])
        except ValueError as exc:
            raise ConfigError(f"--time: {exc}") from None
    doc = read_config(path, overrides, base, **fields)
    if doc.get("kind") == "anomaly":
        # a detector's flag given to a good-only config was blamed on the YAML file
        # ("good-default.yaml: epochs: Extra inputs are not permitted"; review, 34)
        given = [k for k, v in fields.items()
                 if v is not None and k not in AnomalyConfig.model_fields]
        if given:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
            raise ConfigError(f"{flags}: not an option of good-only training ({path} is kind: "
                              "anomaly), which trains for its steps or a time budget "
                              "(--time 20m)")
        return validate_config(AnomalyConfig, path, sizes_from_data(doc), overrides)
    return validate_config(TrainConfig, path, sizes_from_data(doc), overrides)


def train(cfg: TrainConfig | AnomalyConfig, *, resume: bool = False) -> Path:
    if isinstance(cfg, AnomalyConfig):
        return train_anomaly(cfg, resume=resume)
    return engine.train(cfg, resume=resume)


def _is_anomaly_package(path: Path) -> bool:
    return (path / "model.json").is_file() and read_card(path).kind == "anomaly"


def _check_siblings(out: Path, kind: str) -> None:
    """Refuse a package of ``kind`` beside versions of another kind: a server keeps one
    kind per model name, and refused the new version only at load (review, session 34)."""
    parent = out.absolute().parent
    others = []
    for sibling in sorted(parent.iterdir()) if parent.is_dir() else []:
        if sibling.name != out.name and (sibling / "model.json").is_file():
            try:
                if read_card(sibling).kind != kind:
                    others.append(sibling.name)
            except Exception:  # an unreadable card is the server's to refuse
                continue
    if others:
        what = "good-only (anomaly) model" if kind == "anomaly" else "detector"
        raise ConfigError(f"--out {out}: {parent.name} holds versions of another kind "
                          f"({', '.join(others)}); a model name keeps one kind: put this "
                          f"{what} under a name of its own")


def export(run: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """A detector's package, or a good-only run's (kind anomaly: fp32 only)."""
    if not is_anomaly_run(run):
        _check_siblings(Path(out), "detector")
        return detector_export.export(run, out, **options)
    _check_siblings(Path(out), "anomaly")
    if options.pop("int8", False) or options.pop("fp16", False):
        raise ConfigError(f"{run}: a good-only model exports in fp32 only (no --int8/--fp16)")
    options.pop("max_defects_lost", None)  # a lower precision's bound: fp32 has none
    if options.pop("tile", None) is not None or options.pop("overlap", None) is not None:
        raise ConfigError(f"{run}: a good-only model judges the whole frame (no --tile)")
    return export_anomaly(run, out, **options)


def evaluate(run: str | Path, *, data: str | None = None, split: str = "val",
             out: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """A detector's evaluation, or a good-only run's or package's (AUROC, escapes at 1% and
    2% false rejects)."""
    if is_anomaly_run(run) or _is_anomaly_package(Path(run)):
        return evaluate_anomaly(run, data=data, split=split, out=out)
    return detector_evaluate.evaluate(run, data=data, split=split, out=out, **options)
