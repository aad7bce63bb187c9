"""Writing a model package folder, shared by ``lineside export``'s detector and good-only
paths: where it goes and what it is called, the ONNX graph from a torch module, the
parent package of the card's lineage, and the folder staged beside ``out`` so that a
package that fails a gate never replaces anything."""

from __future__ import annotations

import json
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

from lineside_inspect.errors import ConfigError
from lineside_inspect.lifecycle.lineage import parent_of
from lineside_inspect.names import NAME_RULE, is_name
from lineside_inspect.package import (
    CARD,
    GRAPH,
    INPUT_NAME,
    META_CLASSES,
    ParentModel,
    load_package,
    read_card,
)

OPSET = 17


def check_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a path; an existing package there is replaced only with ``overwrite``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists (pass --overwrite to replace it)")
    return out


def package_name(out: Path, name: str | None, version: str | None,
                 default_name: str) -> tuple[str, str]:
    """The card's name and version: as given, else from ``out`` laid out as
    ``models/NAME/VERSION`` (the name falls back to ``default_name``, the run's)."""
    name = name or (out.parent.name if out.parent.name not in ("", ".") else default_name)
    return name, version or out.name


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
def staged_package(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out`` to write the package in; when the block ends without
    an error the package must load as the server will see it, and then replaces ``out``.
    On any error (a failed gate included) the temp folder is removed and ``out`` is left
    as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)  # staged beside it: a rename, not a copy
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        load_package(tmp)  # the final package must verify as the server will see it
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)  # mkdtemp makes it private; a package is meant to be shared
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def rewrite_card(package: Path, doc: dict[str, Any]) -> None:
    """Replace ``package``'s card with ``doc`` once the package loader accepts it beside
    the untouched graph (the old card stays if it does not). For a package not yet serving:
    a loaded version keeps its package (docs/lifecycle.md); see :func:`write_new_version`."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{package.name}.", dir=package.parent))
    try:
        (tmp / CARD).write_text(json.dumps(doc, indent=1) + "\n")
        (tmp / GRAPH).symlink_to((package / GRAPH).resolve())
        load_package(tmp)  # the new card must verify against the untouched graph
        (tmp / CARD).replace(package / CARD)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def new_version_folder(out: str | Path) -> Path:
    """``out`` as a new version's folder: not there yet, its name a version name (checked
    before any work, so a mistyped folder is said at once)."""
    out = check_out(out, overwrite=False)
    if not is_name(out.name):
        raise ConfigError(f"{out}: the version {out.name!r} must be {NAME_RULE}")
    return out


def write_new_version(package: Path, out: str | Path, doc: dict[str, Any]) -> Path:
    """``doc`` (``package``'s card, edited) as a new version of the model at ``out``
    (``models/NAME/VERSION``: the version is the folder's name, the model's name stays),
    with a copy of the untouched graph; staged, so it appears whole or not at all, and
    never over an existing folder. What a serving package's recalibration writes: a
    changed package is a new version, gated like any other (docs/lifecycle.md)."""
    out = new_version_folder(out)
    version = out.name
    if version == doc["version"] and out.resolve().parent == package.resolve().parent:
        raise ConfigError(f"{out}: that is the package's own version: give a new one")
    source = f"{doc['name']}:{doc['version']}"
    doc = {**doc, "version": version, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    doc["metrics"] = {**doc.get("metrics", {}), "recalibrated_from": source}
    with staged_package(out) as tmp:
        shutil.copyfile(package / GRAPH, tmp / GRAPH)
        (tmp / CARD).write_text(json.dumps(doc, indent=1) + "\n")
    return out
