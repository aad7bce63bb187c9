"""Entry points behind the ``lineside`` CLI's training commands (imported lazily)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lineside_inspect.errors import ConfigError
from lineside_inspect.package import read_card
from lineside_inspect.user_files import load_yaml, read_text
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
from lineside_training.checkpoint import recorded_set
from lineside_training.config import TrainConfig, read_config, shown, sizes_from_data, validate_config
from lineside_training.models import list_models
from lineside_training.weights import read_torch_file

__all__ = ["anomaly_summary", "bench_train", "calibrate", "evaluate", "export",
           "kept_over_config", "list_models", "load_config", "resumed", "train"]


def _run_folder(doc: dict[str, Any]) -> Path:
    """Where a config document's run is: ``out_dir/name``, as ``engine.train`` puts it."""
    return Path(str(doc.get("out_dir", "runs"))) / str(doc.get("name", "run"))


def resumed(path: str | Path | None, overrides: list[str] | None,
            name: str | None, *, data: str | None = None,
            merge: list[str] | None = None) -> dict[str, Any]:
    """For ``--resume``: what the run to continue was trained with (its ``config.yaml``),
    as a base for the command's config (:func:`load_config`'s ``base``: its values replace
    the config file's, and a ``--set`` or flag given again replaces them, a ``--set`` of
    one key in a section that key of the run's section). Every field of the run's is kept
    that no ``--set`` names again (a run started with ``--set lr=0.005``
    went on at the config file's 0.004; issue #18): its schedule, optimiser, model, input
    size, tiling, augmentation. ``engine.train`` refuses a field given again that cannot
    change midway and logs those that do. A ``--set tiling...`` leaves the input size to
    the tile it names (the tile is the input; the run refuses another scale by name). Its
    ``data`` (and ``extra_data``, from ``--merge``) replace the config file's unless an
    override names a set (``--data``/``--merge``, applied by the command, replace them).
    Fields of a release that no longer has them are left out, and fields a run's older
    release did not write are the command's. Empty when there is no such run (``train``
    says so); a good-only run's data only (good-only runs do not resume, and say so).
    Its sets are where this command finds them (:func:`_run_set`: runs before session 47
    kept them relative to the folder ``train`` ran in), unless ``data`` (``--data``) or
    ``merge`` (``--merge``) name them again."""
    doc = read_config(path, overrides, name=name)
    run = _run_folder(doc)
    was = run_config(run)
    if was is None:
        return {}
    fill: dict[str, Any] = {}
    keys = [item.partition("=")[0].strip().split(".") for item in overrides or []]
    # a whole field given again is the --set's; one key of a section (augment.hflip)
    # edits the run's section
    given = {key[0] for key in keys if len(key) == 1}
    if doc.get("kind") != "anomaly" and was.get("kind") != "anomaly":
        # (its data is taken on its own below: --data or --set data=... replace it)
        fill = {k: v for k, v in was.items() if k in TrainConfig.model_fields
                and k not in engine.NOT_RESUMED and k not in given}
        if any(key[0] == "tiling" for key in keys):  # its tile is the input (TrainConfig)
            fill.pop("input_size", None)
    # its own data over the config file's (the shipped configs name data/deeppcb): a run
    # trained with --data went on with the config file's set, a copy of its own silently,
    # another refused as "this run names" a set nobody gave (new-user review, session 46).
    # Only a --set data=... (or --data, which the command applies over this) names another
    if "data" not in given and was.get("data"):
        fill["data"] = str(was["data"]) if data else _run_set(run, str(was["data"]), "data")
    # its --merge sets, when it is resumed on its own data
    same = "data" not in given or _same_path(doc.get("data"), was.get("data"))
    if same and "extra_data" not in given and was.get("extra_data"):
        extra = was["extra_data"]  # (not a list: refused by name when validated)
        fill["extra_data"] = ([str(d) if merge else _run_set(run, str(d), "extra_data")
                               for d in extra] if isinstance(extra, list) else extra)
    return fill


def _run_set(run: Path, given: str, key: str) -> str:
    """A set the run's config names (``key``: data, or one of its ``extra_data``), where
    this command finds it. A run's config keeps them absolute (:func:`config.as_written`);
    an older run's as typed, relative to the folder ``train`` ran in, which from another
    folder is no set (review, session 47): the main set is then found where its
    ``last.pt`` recorded it, and else (a merged set, whose place no checkpoint kept)
    refused naming the path looked for and from where, before any work."""
    path = Path(given)
    if path.is_absolute() or path.exists():  # (refused by the set's own checks if not one)
        return given
    if key == "data" and (run / "last.pt").is_file():
        with contextlib.suppress(ConfigError):
            if (recorded := recorded_set(read_torch_file(run / "last.pt", mmap=True))):
                return recorded
    saved = run / "config.yaml" if (run / "config.yaml").is_file() else run / "last.pt"
    flag = "--data DATASET" if key == "data" else "--merge DATASET for each merged set"
    raise ConfigError(f"--resume: {saved} names {key} {given}, relative to the folder train "
                      f"ran in: from {Path.cwd()} there is no {path.absolute()}; run --resume "
                      f"from the folder the run was trained in, or give {flag} where it is "
                      "now (the run checks it is the set it trained on)")


# values in a run's config (about 60, a few model_kwargs): past this it is no config
# Lineside wrote but an alias bomb (``b: [*a, *a, ...]``), which expanded to millions when
# dumped and hung --resume (review, session 46)
MAX_RUN_CONFIG_VALUES = 10_000


def _too_many_values(doc: Any, limit: int = MAX_RUN_CONFIG_VALUES) -> bool:
    stack, seen = [doc], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return False


def run_config(run: Path) -> dict[str, Any] | None:
    """What the run at ``run`` trained with, for ``--resume``: its ``config.yaml``, or the
    config its ``last.pt`` saved when that file is gone; None when there is no run. Of a run
    with a ``last.pt``, a ``config.yaml`` that cannot be read, is no mapping or is an alias
    bomb is refused naming it, with what to do (it was passed over: the resume went on with
    the config file's values, or asked for --data; review, session 46)."""
    saved, last = run / "config.yaml", run / "last.pt"
    if not last.is_file():  # nothing to continue (train says so); a good-only run's data
        try:
            was = load_yaml(saved.read_text())
        except (OSError, ValueError, yaml.YAMLError):
            return None
        return was if isinstance(was, dict) else None
    if not saved.exists():  # the checkpoint holds the same config
        try:
            ck = read_torch_file(last, mmap=True)
        except ConfigError:
            return None  # train refuses the checkpoint by name
        config = ck.get("config") if isinstance(ck, dict) else None
        return config if isinstance(config, dict) and not _too_many_values(config) else None
    fix = (f"; put back the run's own, or remove {saved}: --resume then takes the config "
           f"{last} saved")
    try:
        was = load_yaml(read_text(saved, "run's config"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"--resume: {saved}: cannot read the run's config: {exc}{fix}") from None
    if not isinstance(was, dict):
        raise ConfigError(f"--resume: {saved}: the run's config is a mapping of keys (epochs: "
                          f"40), not a {type(was).__name__}{fix}")
    if _too_many_values(was):
        raise ConfigError(f"--resume: {saved}: the run's config expands to more than "
                          f"{MAX_RUN_CONFIG_VALUES} values (aliases repeating others), which "
                          f"no run writes{fix}")
    return was


def kept_over_config(path: str | Path | None, fill: dict[str, Any]) -> list[str]:
    """The config file's values a resume does not apply, ``fill`` (:func:`resumed`) keeping
    the run's: ``lr 0.005 (CONFIG: 0.004)``. Only keys the file sets, within a section the
    keys it sets, compared as a run reads them: its ``input_size: auto``, a time budget
    written another way (``30m`` for ``1800s``), ``4e-3`` for 0.004, a crop a run reads as
    none (as large as the input) are no difference."""
    if path is None or not fill:
        return []
    file = read_config(path)
    said: list[str] = []
    run = _validated({**file, **fill})

    def differs(key: str, raw: Any, mine: Any, its: Any) -> None:
        # within a section, the keys the file sets; values compared as the run reads them
        # (4e-3 is the lr 0.004, a crop as large as the input none)
        if isinstance(raw, dict) and isinstance(mine, dict) and isinstance(its, dict):
            for k, v in raw.items():
                differs(f"{key}.{k}", v, mine.get(k, v), its.get(k))
        elif mine != its:  # as the file writes it (its crop_size 640, not none)
            said.append(f"{key} {shown(its)} ({path}: {shown(raw)})")

    for key, kept in fill.items():
        if key == "data" and key in file and not _same_path(file[key], kept):
            said.append(f"data {kept} ({path}: {file[key]})")  # (a path: as written)
        if key not in file or key in ("data", "extra_data"):
            continue
        raw = file[key]
        if key == "input_size" and raw == "auto":
            continue
        mine = _validated({**file, **fill, key: raw})
        if run is not None and mine is not None:
            differs(key, raw, mine[key], run[key])
            continue
        if key == "time_budget" and raw is not None:  # (one of them is not valid)
            with contextlib.suppress(ValueError):
                raw = budget_text(raw)
        differs(key, raw, raw, kept)
    return said


def _validated(doc: dict[str, Any]) -> dict[str, Any] | None:
    """``doc`` as a run reads it (:class:`TrainConfig`), or None when it is not valid."""
    try:
        return TrainConfig.model_validate({**doc, "data": "-"}).model_dump()
    except ValidationError:
        return None


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
    if "kind" in doc and doc["kind"] != "anomaly":
        # a misspelt kind (anomally) was read as a detector's config: every good-only key
        # was refused as "no config key", a dozen at once, none naming kind (session 51)
        where = "--set kind" if any(o.partition("=")[0].strip() == "kind"
                                    for o in overrides or []) else f"{path}: kind"
        # an empty one (kind: with no value, --set kind=) was shown as Python's None
        said = "empty" if doc["kind"] in (None, "") else f"{doc['kind']!r} is no kind of model"
        raise ConfigError(f"{where}: {said}: write kind: anomaly for a good-only model, or "
                          "leave kind out for a detector")
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
    blame: dict[str, Path] = {}
    if base:  # a value the run's config.yaml holds (lr: fast) was blamed on the config file
        run = _run_folder(doc)
        kept = run / "config.yaml" if (run / "config.yaml").exists() else run / "last.pt"
        blame = dict.fromkeys(base, kept)
    return validate_config(TrainConfig, path, sizes_from_data(doc), overrides, base=blame)


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
    options.pop("calibration_images", None)  # --int8's sample: fp32 has none
    options.pop("calibration_seed", None)
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
