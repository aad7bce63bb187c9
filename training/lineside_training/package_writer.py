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
from pathlib import Path

import onnx
import torch
from torch import nn

from lineside_inspect.errors import ConfigError
from lineside_inspect.lifecycle.lineage import parent_of
from lineside_inspect.package import INPUT_NAME, META_CLASSES, ParentModel, load_package, read_card

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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.",
                                dir=out.parent if out.parent.exists() else None))
    try:
        yield tmp
        load_package(tmp)  # the final package must verify as the server will see it
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o755)  # mkdtemp makes it private; a package is meant to be shared
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
