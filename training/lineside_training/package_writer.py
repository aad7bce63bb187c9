"""Writing a model package folder, shared by ``lineside export``'s detector and good-only
paths: where it goes and what it is called, the ONNX graph from a torch module, the
parent package of the card's lineage, and the folder staged beside ``out`` so that a
package that fails a gate never replaces anything."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from lineside_inspect.atomic import link_or_copy
from lineside_inspect.errors import ConfigError
from lineside_inspect.lifecycle.lineage import parent_of
from lineside_inspect.names import NAME_RULE, is_name, is_package_member
from lineside_inspect.package import (
    CARD,
    GRAPH,
    INPUT_NAME,
    MAX_VERSION_CHARS,
    META_CLASSES,
    ParentModel,
    load_package,
    read_card,
)
from lineside_inspect.version import __version__

OPSET = 17


def check_out(out: str | Path, overwrite: bool, *, run: str | Path) -> Path:
    """``out`` as a path, refused before anything is written when replacing it could lose
    work: an existing folder is replaced only with ``overwrite``, and then only if it is a
    model package or empty; a folder that is or holds ``run`` (the run being exported,
    whose checkpoints the package is made from) never, nor a symbolic link."""
    out = Path(out)
    real, run_real = out.resolve(), Path(run).resolve()
    if run_real.is_relative_to(real):
        raise ConfigError(f"--out {out}: it holds the run being exported; give the package "
                          "a folder of its own (models/NAME/VERSION)")
    if out.is_symlink():
        # written beside it and renamed into place, a package cannot go through a link: one
        # to a package failed after the whole export ("Cannot call rmtree on a symbolic
        # link"), a dangling one named the temp folder ("Not a directory"); and the card's
        # name and version come from the link's path, not the folder's (session 52)
        raise ConfigError(f"--out {out}: a symbolic link (to {os.readlink(out)}): a package "
                          "is written as a folder of its own, not through a link; give the "
                          "folder itself (models/NAME/VERSION) or a new one")
    if not out.exists():
        return out
    if not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; choose another")
    if not overwrite:
        raise ConfigError(f"{out}: already exists (pass --overwrite to replace it)")
    if any(out.iterdir()) and not (out / CARD).is_file():
        raise ConfigError(f"--out {out}: not a model package (no {CARD}) and not empty; "
                          "--overwrite only replaces a package folder. Choose a new or "
                          "empty folder")
    return out


def package_name(out: Path, name: str | None, version: str | None,
                 default_name: str) -> tuple[str, str]:
    """The card's name and version: as given, else from ``out`` laid out as
    ``models/NAME/VERSION`` (the name falls back to ``default_name``, the run's)."""
    name = name or (out.parent.name if out.parent.name not in ("", ".") else default_name)
    version = version or out.name
    # checked here, before the export's work: the card refused them only at the end, with
    # a validation traceback, and left an empty folder (new-user review)
    for what, value, limit in (("name", name, 128), ("version", version, 64)):
        if not is_name(value) or len(value) > limit:
            raise ConfigError(
                f"--out {out}: the package {what} {value!r} must be {NAME_RULE}"
                + (f", at most {limit} long" if limit < 128 else "")
                + " (a package folder is models/NAME/VERSION); choose another folder")
    return name, version


def parent_model(parent: str | Path | None) -> ParentModel | None:
    """The lineage's parent: the package at ``parent`` (the one the run started from)."""
    return None if parent is None else ParentModel(**parent_of(read_card(Path(parent))))


def export_graph(module: nn.Module, size: int, path: Path, outputs: Sequence[str],
                 class_names: list[str] | None = None, *, check: bool = True) -> None:
    """``module`` (uint8 ``[B, 3, size, size]`` in) as an ONNX graph at ``path``: the
    classic exporter (torch's dynamo exporter fails on torchvision's batched NMS), the
    batch axis dynamic, the class names (when given) in the graph's metadata, and with
    ``check`` the graph checked in full (what a package ships; an in-run evaluation's
    throw-away graph skips it)."""
    dummy = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (dummy,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=list(outputs),
            dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *outputs)},
        )
    if class_names is None and not check:
        return
    graph = onnx.load(str(path))
    if class_names is not None:
        onnx.helper.set_model_props(graph, {META_CLASSES: json.dumps(class_names)})
    if check:
        onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))


@contextmanager
def staged_package(out: Path, *, replace: bool = True) -> Iterator[Path]:
    """A temp folder beside ``out`` to write the package in; when the block ends without
    an error the package must load as the server will see it, and then replaces ``out``
    (without ``replace``: takes its place only if nothing is there, checked by creating
    it, so a folder that appeared meanwhile is never removed). On any error (a failed
    gate included) the temp folder is removed and ``out`` is left as it was, and so are
    the folders above it: those made for it are removed again while empty (a refused
    export left an empty ``models/NAME``: export review, session 55). An OSError that
    names no file (a full disk's, from the graph's writer) is raised naming ``out``."""
    made: list[Path] = []  # the folders made here (``out``, those above it), deepest first
    for folder in (out.parent, *out.parent.parents):
        if os.path.lexists(folder):
            break
        made.append(folder)
    out.parent.mkdir(parents=True, exist_ok=True)  # staged beside it: a rename, not a copy
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except BaseException:
        _remove_empty(made)
        raise
    try:
        yield tmp
        load_package(tmp)  # the final package must verify as the server will see it
        tmp.chmod(0o755)  # mkdtemp makes it private; a package is meant to be shared
        if not replace:
            try:
                out.mkdir()  # ours alone: another writer's mkdir fails
            except FileExistsError:
                raise ConfigError(f"{out}: appeared while this was written: a version is "
                                  "written once, give another") from None
            made.insert(0, out)
        elif out.exists():
            shutil.rmtree(out)
        tmp.rename(out)  # over our own empty folder; fails if anything was put in it
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)  # each only while still empty: what was put in one stays
        if isinstance(exc, OSError) and exc.filename is None and exc.strerror:
            # "error: No space left on device", and where was not said
            raise OSError(exc.errno, exc.strerror, str(out)) from exc
        raise


def _remove_empty(folders: list[Path]) -> None:
    """``folders`` (deepest first) removed while empty: a folder something was put in
    meanwhile, and every one above it (it holds that one), stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def rewrite_card(package: Path, doc: dict[str, Any]) -> None:
    """Replace ``package``'s card with ``doc`` once the package loader accepts it beside
    the untouched graph (the old card stays if it does not). For a package not yet serving:
    a loaded version keeps its package (docs/lifecycle.md); see :func:`write_new_version`."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{package.name}.", dir=package.parent))
    try:
        (tmp / CARD).write_text(json.dumps(doc, indent=1) + "\n")
        # not a symlink: the package loader refuses a file that links out of its folder
        _copy_graph(package, tmp, doc, link=True)
        load_package(tmp)  # the new card must verify against the untouched graph
        (tmp / CARD).replace(package / CARD)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_graph(package: Path, tmp: Path, doc: dict[str, Any], *, link: bool = False) -> None:
    """``package``'s graph and the external data files ``doc`` lists into ``tmp``, where
    the loader checks them: with model.onnx alone, a package keeping its weights beside it
    was refused ("not in the package"). ``link``: hard links where the disk allows (a
    folder removed after the check; the weights may run to gigabytes)."""
    extra = doc.get("external_data")
    names = [n for n in (extra if isinstance(extra, dict) else {}) if is_package_member(n)]
    for name in (GRAPH, *names):
        src, dst = package / name, tmp / name
        if name != GRAPH and not src.is_file():
            continue  # the loader names what is missing
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link:
            link_or_copy(src.resolve(), dst)
        else:
            shutil.copyfile(src, dst)


def new_version_folder(package: Path, out: str | Path) -> Path:
    """``out`` as the folder of a new version of ``package``'s model, checked before any
    work: laid out as ``models/NAME/VERSION`` (NAME the card's), a version name other
    than the package's own, outside the package, and nothing there yet (not even a link):
    a version is written once."""
    out, card = Path(out), read_card(package)
    where = out.resolve()
    if os.path.lexists(out):
        raise ConfigError(f"{out}: already exists: a version is written once, give another")
    if not is_name(out.name):
        raise ConfigError(f"{out}: the version {out.name!r} must be {NAME_RULE}")
    if len(out.name) > MAX_VERSION_CHARS:  # the card's bound, told before calibrating
        raise ConfigError(f"{out}: the version {out.name[:20]!r}... is {len(out.name)} "
                          f"characters; a card's version is at most {MAX_VERSION_CHARS}")
    if where.parent.name != card.name:
        raise ConfigError(f"{out}: a new version of {card.name} goes in a folder named "
                          f"{card.name} (models/{card.name}/VERSION)")
    if out.name == card.version:
        raise ConfigError(f"{out}: {card.name}:{card.version} is the package's own version: "
                          "give a new one")
    if where.is_relative_to(package.resolve()):
        raise ConfigError(f"{out}: inside the package {package}: give a folder beside it")
    return out


def write_new_version(package: Path, out: str | Path, doc: dict[str, Any]) -> str:
    """``doc`` (``package``'s card, edited) as a new version of the model at ``out``
    (:func:`new_version_folder`) with a copy of the untouched graph; staged, so it
    appears whole or not at all, and never over a folder that appeared meanwhile. The
    source's other metrics were measured at its thresholds: they are kept apart, under
    ``metrics.at_source_thresholds``. What a serving package's recalibration writes: a
    changed package is a new version, gated like any other (docs/lifecycle.md). Returns
    the new ``name:version``."""
    out = new_version_folder(package, out)
    source = f"{doc['name']}:{doc['version']}"
    # what the source measured at its own thresholds, its calibration included; a source
    # that was itself recalibrated adds nothing of its own but that calibration
    before = json.loads((package / CARD).read_text()).get("metrics", {})
    measured = {k: v for k, v in before.items()
                if k not in ("recalibrated_from", "at_source_thresholds")}
    calibration = doc.get("metrics", {}).get("calibration")
    # the weights' lineage stays (same graph, same training data); the lineage says what
    # made this version another one, so the box's lineage view and admissions show it
    lineage = dict(doc.get("lineage") or {})
    said = f"thresholds recalibrated from {source}"
    on = (calibration or {}).get("source") if isinstance(calibration, dict) else None
    if on:  # a good-only calibration names its package first: said once
        said += f" on {on.removeprefix(source + ': ')}"
    lineage["note"] = "; ".join(n for n in (lineage.get("note"), said) if n)
    doc = {**doc, "version": out.name, "lineside_version": __version__,
           "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "lineage": lineage,
           "metrics": {"calibration": calibration,
                       "recalibrated_from": source, "at_source_thresholds": measured}}
    with staged_package(out, replace=False) as tmp:
        _copy_graph(package, tmp, doc)
        (tmp / CARD).write_text(json.dumps(doc, indent=1) + "\n")
    return f"{doc['name']}:{out.name}"
