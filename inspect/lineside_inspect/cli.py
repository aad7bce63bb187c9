"""The ``lineside`` command.

Edge commands live here; training commands (``train``, ``evaluate``, ``export``,
``bench train``) are thin wrappers that import :mod:`lineside_training` only when
run, so the edge install (no torch) still has a working CLI and says what to install.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from lineside_inspect.errors import DatasetError, LinesideError, MissingExtraError

app = typer.Typer(help="Lineside: automated visual inspection, from labeled images to the line.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Import, validate, split and inspect labeled datasets.",
                       no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print figures for docs/benchmarks.md.",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn :class:`LinesideError` into a clear message and exit code 2, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LinesideError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            problems = getattr(exc, "problems", [])
            for p in problems[:200]:
                err.print(f"  {p}", highlight=False, soft_wrap=True)
            if len(problems) > 200:
                err.print(f"  ... and {len(problems) - 200} more", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def training() -> Any:
    """Import :mod:`lineside_training`, or fail with one line naming the extra to install."""
    try:
        import torch  # noqa: F401

        import lineside_training.commands as commands
    except ImportError as exc:
        raise MissingExtraError(
            f"this command needs the training extra ({exc.name} is missing): "
            "pip install 'lineside[train]'"
        ) from None
    return commands


# ---------------------------------------------------------------- data
@data_app.command("import")
@friendly
def data_import(
    src: Annotated[Path, typer.Argument(help="source folder (or COCO JSON file)")],
    dst: Annotated[Path, typer.Argument(help="canonical dataset folder to create")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="deeppcb|voc|yolo|coco|good")],
    skip_invalid: Annotated[bool, typer.Option(help="leave out broken images, list them")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace DST if it exists")] = False,
) -> None:
    """Import a labeled set into the canonical form (images/ + annotations.json)."""
    from lineside_inspect.dataset import dataset_stats, import_dataset

    dataset, skipped = import_dataset(fmt, src, dst, skip_invalid=skip_invalid, overwrite=overwrite)
    for p in skipped:
        err.print(f"skipped: {p}", highlight=False, soft_wrap=True)
    s = dataset_stats(dataset)
    good = sum(v.get("good", 0) for v in s["images_per_split"].values())
    nboxes = sum(len(r.boxes) for r in dataset.images)
    out.print(f"imported {s['images']} images ({good} good, {s['images'] - good} defective), "
              f"{nboxes} boxes, {len(s['classes'])} classes into {dst}"
              + (f"; skipped {len({p.subject for p in skipped})} image(s)" if skipped else ""))


@data_app.command("validate")
@friendly
def data_validate(root: Annotated[Path, typer.Argument(help="canonical dataset folder")]) -> None:
    """Check a dataset and list every problem with its file and line or field."""
    from lineside_inspect.dataset import validate_dir

    problems = validate_dir(root)
    if problems:
        raise DatasetError(f"{root}: {len(problems)} problem(s)", problems)
    out.print(f"{root}: valid")


@data_app.command("stats")
@friendly
def data_stats(
    root: Annotated[Path, typer.Argument(help="canonical dataset folder")],
    plot: Annotated[Path | None, typer.Option(help="save a PNG plot here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Counts per class and split, good vs defective images, box sizes."""
    from lineside_inspect.dataset import dataset_stats, read_dataset
    from lineside_inspect.dataset.stats import plot_stats

    s = dataset_stats(read_dataset(root))
    if as_json:
        out.print_json(json.dumps(s))
    else:
        splits = list(s["boxes_per_class"])
        table = Table(title=f"{root}: {s['images']} images, {s['groups']} groups")
        table.add_column("")
        for split in splits:
            table.add_column(split, justify="right")
        for c in s["classes"]:
            table.add_row(c, *(str(s["boxes_per_class"][sp][c]) for sp in splits))
        for kind in ("defective", "good"):
            table.add_row(f"{kind} images",
                          *(str(s["images_per_split"][sp].get(kind, 0)) for sp in splits))
        out.print(table)
        hist = Table(title="box size (longer side)")
        for b in s["box_size_histogram"]:
            hist.add_column(b, justify="right")
        hist.add_row(*(str(v) for v in s["box_size_histogram"].values()))
        out.print(hist)
    if plot is not None:
        plot_stats(s, plot)
        out.print(f"plot saved to {plot}")


@data_app.command("split")
@friendly
def data_split(
    root: Annotated[Path, typer.Argument(help="canonical dataset folder")],
    val: Annotated[float, typer.Option(help="validation fraction")] = 0.2,
    test: Annotated[float, typer.Option(help="test fraction")] = 0.0,
    by: Annotated[str, typer.Option(help="group|image")] = "group",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Assign train/val/test deterministically, keeping each group on one side."""
    from lineside_inspect.dataset import read_dataset, save_annotations, split_dataset

    dataset = read_dataset(root)
    counts = split_dataset(dataset, val=val, test=test, by=by, seed=seed)
    save_annotations(dataset)
    out.print("split: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@data_app.command("export")
@friendly
def data_export(
    src: Annotated[Path, typer.Argument(help="canonical dataset folder")],
    dst: Annotated[Path, typer.Argument(help="folder to write")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="coco|yolo")],
) -> None:
    """Export a canonical dataset as COCO or YOLO."""
    from lineside_inspect.dataset import export_dataset

    export_dataset(fmt, src, dst)
    out.print(f"exported {src} as {fmt} to {dst}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
