"""The ``lineside`` command.

Edge commands live here; training commands (``train``, ``evaluate``, ``export``,
``bench train``) are thin wrappers that import :mod:`lineside_training` only when
run, so the edge install (no torch) still has a working CLI and says what to install.
"""

from __future__ import annotations

import importlib
import json
import math
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lineside_inspect.errors import (
    ConfigError,
    DatasetError,
    GoldenSetError,
    LinesideError,
    MissingExtraError,
    install_hint,
)

app = typer.Typer(help="Lineside: automated visual inspection, from labeled images to the line.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
data_app = typer.Typer(help="Import, validate, split and inspect labeled datasets.",
                       no_args_is_help=True, rich_markup_mode=None)
bench_app = typer.Typer(help="Benchmarks that print figures for docs/benchmarks.md.",
                        no_args_is_help=True, rich_markup_mode=None)
golden_app = typer.Typer(help="Golden sets: a line's own images with the verdict each must get "
                              "(docs/lifecycle.md).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(golden_app, name="golden")

out = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn :class:`LinesideError` (and an OSError: a file the system refused) into a clear
    message and exit code 2, never a traceback; Ctrl-C into one line and exit code 130."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LinesideError as exc:
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            problems = getattr(exc, "problems", [])
            if len(problems) > 1:  # the causes first: thousands of lines are a few kinds
                from lineside_inspect.dataset.problems import summarise

                err.print("by kind:", highlight=False, markup=False)
                for line in summarise(problems):
                    err.print(f"  {line}", highlight=False, markup=False)
                err.print("all:", highlight=False, markup=False)
            for p in problems[:200]:
                err.print(f"  {p}", highlight=False, markup=False)
            if len(problems) > 200:
                err.print(f"  ... and {len(problems) - 200} more", highlight=False)
            raise typer.Exit(2) from None
        except OSError as exc:
            # the file system said no (a broken link, no permission, the disk full, a busy
            # mount point): what and where, in one line, not a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            # a bare TimeoutError (an OSError) has neither: "error:" and nothing after it
            said = exc.strerror or str(exc) or type(exc).__name__
            err.print(f"[bold red]error:[/] {escape(where + said)}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            # typer ends on 130 without a word: a stopped import or training looked like
            # one that crashed or hung. What was being written is removed or kept whole
            # by the command (staging folders, atomic files) before this is reached; a
            # command may say where that left things (train: what --resume continues)
            said = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else ""
            err.print(f"interrupted: {said}" if said else "interrupted", highlight=False,
                      markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, a CI job's timeout) raised as a Ctrl-C: its default ended the
    process at once, and what a command cleans up on the way out (its servers, its temp
    folder) was left behind."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def training() -> Any:
    """Import :mod:`lineside_training`, or fail with one line naming the extra to install."""
    try:
        # lineside_training imports torch; on an edge install that import is what fails
        commands = importlib.import_module("lineside_training.commands")
    except ImportError as exc:
        raise MissingExtraError(
            f"this command needs the training extra ({exc.name} is missing): "
            + install_hint("train")
        ) from None
    return commands


# ---------------------------------------------------------------- data
@data_app.command("import")
@friendly
def data_import(
    src: Annotated[Path, typer.Argument(help="source folder (or COCO JSON file)")],
    dst: Annotated[Path, typer.Argument(help="canonical dataset folder to create")],
    # words with spaces: a help table at 80 columns wraps them, where it cut one long word
    fmt: Annotated[str, typer.Option("--format", "-f", help=(
        "the source's format, one of: deeppcb, voc, yolo, coco, mvtec (MVTec AD's "
        "train/good, test/DEFECT and ground_truth masks), good (a folder of good images, "
        "no labels)"))],
    skip_invalid: Annotated[bool, typer.Option(help="leave out broken images, list them")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace DST if it exists")] = False,
    follow_links: Annotated[bool, typer.Option(help=(
        "read the files that symbolic links in SRC point to outside SRC (without it such "
        "links are refused: a set from elsewhere may point at your private files; links to "
        "folders outside SRC are followed either way)"))] = False,
) -> None:
    """Import a labeled set into the canonical form (images/ + annotations.json)."""
    from lineside_inspect.dataset import dataset_stats, import_dataset

    dataset, skipped = import_dataset(fmt, src, dst, skip_invalid=skip_invalid, overwrite=overwrite,
                                      follow_links=follow_links)
    if dataset.info.get("layout"):
        out.print(f"layout found: {dataset.info['layout']}")
    if len(skipped) > 1:
        from lineside_inspect.dataset.problems import summarise

        for line in summarise(skipped):
            err.print(f"skipped by kind: {line}", highlight=False, markup=False)
    for p in skipped:
        err.print(f"skipped: {p}", highlight=False, markup=False)
    s = dataset_stats(dataset)
    good = sum(v.get("good", 0) for v in s["images_per_split"].values())
    nboxes = sum(len(r.boxes) for r in dataset.images)
    out.print(f"imported {s['images']} images ({good} good, {s['images'] - good} defective), "
              f"{nboxes} boxes, {len(s['classes'])} classes into {dst}"
              + (f"; skipped {_skipped(skipped)}" if skipped else ""))
    # a split that came with the source (train/valid folders, Validation_*): public sets
    # often ship a copy on both sides; and one picture labelled two ways (a copy, a
    # symlink) is a mislabel wherever it is. validate and split may never be run before
    # train, so import says both
    from lineside_inspect.dataset import find_duplicates, read_dataset
    from lineside_inspect.dataset.duplicates import exact_groups, label_conflicts

    if any(r.split for r in dataset.images):
        groups = find_duplicates(read_dataset(dst))
    elif any(r.boxes for r in dataset.images):  # (good parts alone cannot disagree)
        groups = exact_groups(read_dataset(dst))
    else:
        groups = []
    for g in groups:
        if g.across_splits:
            err.print(f"warning: {g.describe()}: in the split this set came with, "
                      f"{g.leak}; {g.remedy}", highlight=False, markup=False)
        for problem in label_conflicts([g]):
            err.print(f"warning: {problem.message} (lineside data validate lists them)",
                      highlight=False, markup=False)


def _skipped(problems: list[Any]) -> str:
    """'2 image(s)', and the label files with no image left out beside them."""
    from lineside_inspect.dataset.problems import images_concerned

    images = images_concerned(problems)
    labels = len({p.subject for p in problems if p.subject is not None}) - images
    return f"{images} image(s)" + (f" and {labels} label file(s) with no image" if labels else "")


@data_app.command("validate")
@friendly
def data_validate(
    root: Annotated[Path, typer.Argument(help="canonical dataset folder")],
    dedupe: Annotated[bool, typer.Option(
        help="keep one image of each duplicate group labelled alike")] = False,
) -> None:
    """Check a dataset: every problem with its file and line or field, and exact or near
    duplicate images (a problem when copies sit on both sides of a split)."""
    from lineside_inspect.dataset.duplicates import DuplicateGroup
    from lineside_inspect.dataset.validate import (
        check_dir,
        dedupe_dir,
        duplicate_warnings,
        unlisted_warning,
    )

    said: set[str] = set()  # images of groups --dedupe left whole, reported once
    if dedupe:
        removed, groups = dedupe_dir(root)
        gone = {r.file_name for r in removed}
        thinned = sum(any(r.file_name in gone for r in g.members) for g in groups)
        out.print(f"--dedupe: kept one image of each of {thinned} duplicate group(s) or sets "
                  f"of copies, removed {len(removed)}"
                  + "".join(f"\n  removed {r.file_name}" for r in removed))
        for g in (g for g in groups if g.labels_differ):
            left = DuplicateGroup(g.kind, [r for r in g.members if r.file_name not in gone])
            but = ("; only its byte-identical copies labelled alike were removed"
                   if len(left.members) < len(g.members) else "")
            said.update(r.file_name for r in left.members)
            err.print(f"left whole: {left.describe()} (no copy's labels stand for the "
                      f"others'{but})", highlight=False, markup=False)
    report = check_dir(root)
    # copies across the split, and byte-identical copies labelled differently, are
    # problems listed below with their remedy; lineside train says these warnings too
    warnings = duplicate_warnings(report.duplicates, said)
    if (unlisted := unlisted_warning(root, report.dataset)) is not None:
        warnings.append(unlisted)
    for line in warnings:
        err.print(f"warning: {line}", highlight=False, markup=False)
    if report.problems:
        raise DatasetError(f"{root}: {len(report.problems)} problem(s)", report.problems)
    out.print(f"{root}: valid")


@data_app.command("stats")
@friendly
def data_stats(
    root: Annotated[Path, typer.Argument(help="canonical dataset folder")],
    plot: Annotated[Path | None, typer.Option(help="save a PNG plot here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Counts per class and split, good vs defective images, box sizes, and the images'
    contrast with the min_contrast it suggests for a single-image recipe."""
    from lineside_inspect.dataset import dataset_stats, read_dataset
    from lineside_inspect.dataset.stats import TINY_BOX_PX, contrast_stats, plot_stats

    dataset = read_dataset(root)
    s = dataset_stats(dataset)
    # a single-image recipe judges no frame blank unless it sets min_contrast: the
    # product's own images say how low real parts go (review, session 39)
    s["contrast"] = spread = contrast_stats(dataset)
    if as_json:
        out.print_json(json.dumps(s))
    else:
        splits = list(s["boxes_per_class"])
        painted = (f", {s['painted_out']} painted out (grey) where their recipe never "
                   "judged" if s["painted_out"] else "")
        table = Table(title=f"{root}: {s['images']} images, {s['groups']} groups, "
                            f"{s['with_reference']} with a reference{painted}")
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
        if (native := s["native_scale"]) is not None:
            size = native["auto_input_size"]
            out.print(f"native scale: the images' median longer side ({native['median_longer_side']:g}"
                      f" px) is well above the {size} px input training chooses, and "
                      f"{native['tiny_boxes']} of {native['boxes']} boxes fall under "
                      f"{TINY_BOX_PX} px a side scaled to it: train with tiling.tile={size} "
                      f"(lineside train ... --set tiling.tile={size}: {size} px tiles at the "
                      "frames' own scale, a forward pass per tile; docs/training/recipes.md, "
                      "\"Native scale\")", highlight=False, markup=False)
        elif (shrunk := s["letterbox_scale"]) is not None:
            size = shrunk["auto_input_size"]
            small = ("" if shrunk["smallest_box"] is None else
                     f"; the smallest box, {shrunk['smallest_box']:g} px a side, is "
                     f"{shrunk['smallest_box_scaled']:g} px there")
            out.print(f"scale: the images' median longer side ({shrunk['median_longer_side']:g}"
                      f" px) is well above the {size} px input training chooses: it letterboxes"
                      f" each frame whole, shrinking it (x{shrunk['scale']:g} at the median)"
                      f"{small}. If small defects are missed, train at native scale with --set "
                      f"tiling.tile={size} ({size} px tiles at the frames' own scale, a forward "
                      "pass per tile; docs/training/recipes.md, \"Native scale\")",
                      highlight=False, markup=False)
        if spread["images"]:
            flat = (f"; {spread['under_default']} span under 16, as a lens cap does: real parts "
                    "that flat fail as blank_frame at 16" if spread["under_default"] else "")
            # why this figure only: "16 (...; 0: leave it off, real parts look blank)" read
            # as if a set of 255-level boards looked blank (new-user review, session 46)
            figure = spread["suggested_min_contrast"]
            why = "0: leave it off, real parts look blank" if figure == 0 else \
                "half the 1st percentile, at most 16"
            out.print(f"contrast (grey levels, 5th to 95th percentile, of {spread['images']} "
                      f"images): lowest {spread['lowest']}, 1st percentile "
                      f"{spread['first_percentile']}{flat}\nsuggested min_contrast for a "
                      f"single-image recipe: {figure} ({why})", highlight=False, markup=False)
    if plot is not None:
        out.print(f"plot saved to {plot_stats(s, plot)}")


@data_app.command("split")
@friendly
def data_split(
    root: Annotated[Path, typer.Argument(help="canonical dataset folder")],
    val: Annotated[float, typer.Option(help="validation fraction")] = 0.2,
    test: Annotated[float, typer.Option(help="test fraction")] = 0.0,
    by: Annotated[str, typer.Option(help="group|image")] = "group",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    val_groups: Annotated[str | None, typer.Option(
        help="comma-separated groups that make up validation (--val is then not used)")] = None,
) -> None:
    """Assign train/val/test deterministically, keeping each group on one side."""
    from lineside_inspect.dataset import (
        check_split_args,
        empty_split_reason,
        find_duplicates,
        read_dataset,
        save_annotations,
        split_dataset,
        tied_groups,
    )

    dataset = read_dataset(root)
    chosen = None
    if val_groups is not None:
        chosen = [g.strip() for g in val_groups.split(",") if g.strip()]
        if not chosen:
            raise typer.BadParameter(f"--val-groups: no group named in {val_groups!r}")
    before = Counter(r.split for r in dataset.images if r.split is not None)
    check_split_args(dataset, val=val, test=test, by=by, val_groups=chosen)
    if val == 0 and not chosen:  # before the pixels are read: train refuses such a dataset
        raise DatasetError("--val 0 leaves no validation images, and training needs them (it "
                           "keeps the best checkpoint and calibrates its thresholds on them): "
                           "give --val 0.1 or more, or name boards with --val-groups")
    duplicates = find_duplicates(dataset)
    counts = split_dataset(dataset, val=val, test=test, by=by, seed=seed, val_groups=chosen,
                           duplicates=duplicates)
    # nothing saved when a split asked for came out empty: no validation images trains blind
    reason = empty_split_reason(dataset, counts, val=val, test=test, by=by, seed=seed,
                                duplicates=duplicates, val_groups=chosen)
    if reason is not None:
        raise DatasetError(reason)
    save_annotations(dataset)
    if by == "group":
        for line in tied_groups(duplicates):
            err.print(line, highlight=False, markup=False)
        if not any(r.group for r in dataset.images):
            err.print("no image has a group (the board, batch or day it shows: images[].group "
                      "in annotations.json; VOC, YOLO and COCO files carry none), so images were "
                      "split one by one and photos of one part may sit on both sides",
                      highlight=False, markup=False)
    n = len(dataset.images)
    for name, want in (("val", 0.0 if chosen else val), ("test", test)):
        share = counts.get(name, 0) / n
        # whole groups left it far from the share asked (not merely a whole image's rounding)
        if want > 0 and abs(share - want) >= 0.1 - 1e-9 and abs(counts.get(name, 0) - want * n) >= 1:
            sizes = Counter(r.group for r in dataset.images if r.group is not None)
            largest = max(sorted(sizes), key=lambda g: sizes[g]) if sizes and by == "group" else None
            if largest is not None and sizes[largest] < 2:
                largest = None
            err.print(f"{name} is {share:.0%} of the {n} images, not the {want:.0%} asked: "
                      + ("groups move whole" if largest is None else
                         f"groups move whole, and the largest, {largest!r}, holds {sizes[largest]} images")
                      + " (--val-groups names validation's groups by hand)",
                      highlight=False, markup=False, soft_wrap=True)
    if before:  # a split read at import (train/valid folders, ImageSets) is replaced: say so
        err.print("replaced the split the dataset had: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(before.items())), highlight=False)
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


@data_app.command("pull")
@friendly
def data_pull(
    source: Annotated[str, typer.Argument(help="server URL, or the store's data folder")],
    dst: Annotated[Path, typer.Argument(help="canonical dataset folder to create")],
    reviewed: Annotated[bool, typer.Option(help="only reviewed inspections")] = True,
    since: Annotated[str | None, typer.Option(
        help="inspections made since this ISO time, e.g. 2026-11-01 (UTC unless it gives "
             "an offset)")] = None,
    part_id: Annotated[str | None, typer.Option(
        "--part-id", metavar="ID", help="only this part's inspections: exactly this part id, as "
        "sent with the image (GET /v1/inspections?part_id=)")] = None,
    recipe: Annotated[list[str] | None, typer.Option(
        "--recipe", metavar="NAME", help="only this recipe's inspections (repeat for more): "
        "e.g. a reference station's pairs apart from a single-image recipe's frames, each "
        "set for the training config of its model (GET /v1/inspections?recipe=)")] = None,
    key: Annotated[str | None, typer.Option(envvar="LINESIDE_KEY", help="reviewer API key")] = None,
    database_url: Annotated[str | None, typer.Option(help="store database URL")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace DST if it is a dataset (or empty)")] = False,
    keep_anomaly: Annotated[bool, typer.Option(
        "--keep-anomaly", help="pull inspections whose defects are marked `anomaly` (a "
        "good-only model's regions) with them, as class `anomaly`: a set to evaluate a "
        "good-only model on (left out by default: no class a detector learns)")] = False,
) -> None:
    """Reviewed inspections as a training dataset (confirmed, false rejects, missed defects)."""
    from datetime import datetime

    from pydantic import TypeAdapter, ValidationError

    from lineside_inspect.errors import describe_validation
    from lineside_inspect.names import PartId
    from lineside_inspect.store import Store
    from lineside_inspect.store.checks import check_database
    from lineside_inspect.store.pull import pull_from_server, pull_from_store, recipe_filter
    from lineside_inspect.store.store import DB_FILE, default_url

    try:
        when = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise DatasetError(f"--since {since!r} is not an ISO date or time") from None
    if part_id is not None:  # held to what an inspection keeps as its part id, as the list is
        try:
            TypeAdapter(PartId).validate_python(part_id)
        except ValidationError as exc:
            raise DatasetError(f"--part-id: {describe_validation(exc.errors())}") from None
        if not part_id:  # (the list takes "" as no filter: every part's would be pulled)
            raise DatasetError("--part-id is empty: give a part id, or leave it out")
    recipes = recipe_filter(recipe)  # (a name that is not one: refused before any database)
    if source.startswith(("http://", "https://")):
        ds = pull_from_server(source, dst, key=key, since=when, reviewed=reviewed,
                              overwrite=overwrite, part_id=part_id, keep_anomaly=keep_anomaly,
                              recipes=recipes)
    else:
        if not (Path(source) / DB_FILE).exists() and database_url is None:
            raise DatasetError(f"{source}: no {DB_FILE} here; give a server URL, a store "
                               "folder or --database-url")
        # a bad URL or a database down; a SQLite file that is damaged, empty or another
        # program's (its tables were made in it): one line, the file left as it is
        check_database(database_url or default_url(source), "--database-url" if database_url
                       else "the store's database", named="--database-url",
                       data_dir=source, must_exist=True)
        from sqlalchemy.exc import DBAPIError

        try:
            with Store(source, database_url) as store:  # (its lock let go: a second pull)
                ds = pull_from_store(store, dst, since=when, reviewed=reviewed,
                                     overwrite=overwrite, part_id=part_id,
                                     keep_anomaly=keep_anomaly, recipes=recipes)
        except DBAPIError as exc:
            if database_url is not None:  # (--database-url: checked above; its URL unshown)
                raise
            # the folder's own SQLite file is no database, or a damaged one: a traceback
            lines = str(exc.orig or exc).strip().splitlines()
            raise DatasetError(f"{source}: its database {DB_FILE} cannot be read: "
                               f"{lines[0][:300] if lines else type(exc).__name__}") from None
    good = sum(1 for r in ds.images if r.is_good)
    out.print(f"pulled {len(ds.images)} images ({good} good, {len(ds.images) - good} defective) "
              f"into {dst}")


# ---------------------------------------------------------------- training (lazy)
def _escape_rate(value: float) -> float:
    """--target-escape: refused before any training (1 passed typer's range, then every
    fold trained before the calibration refused it)."""
    if not 0 <= value < 1:
        raise typer.BadParameter(f"{value:g} is not an escape rate: 0 to under 1 (0.005 is 0.5%)")
    return value


@app.command("train")
@friendly
def train_cmd(
    config: Annotated[Path | None, typer.Option(help=(
        "training YAML; for your own single-image data start from single-default.yaml, "
        "for good images alone (no defect labels) from good-default.yaml, both in "
        "training/configs/ (docs/training/recipes.md says which recipe when)"))] = None,
    data: Annotated[str | None, typer.Option(help=(
        "canonical dataset folder (from lineside data import): a detector's needs a val "
        "split (lineside data split); a good-only model's good images need none"))] = None,
    model: Annotated[str | None, typer.Option(help="registered model name")] = None,
    weights: Annotated[str | None, typer.Option(help=(
        "local pretrained state dict (good-only: a trained good-only run to start from)"))] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help=(
        "epochs to train, in place of the config's time_budget (with --time, only the "
        "first plan: the schedule is then fitted to the budget)"))] = None,
    name: Annotated[str | None, typer.Option(help="run name (folder under out_dir)")] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda")] = None,
    merge: Annotated[list[str] | None, typer.Option(metavar="DATASET", help=(
        "extra dataset merged into train (repeatable; good-only: its good images)"))] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=(
        "override a config key (repeatable)"))] = None,
    resume: Annotated[bool, typer.Option(help=(
        "continue the run (--name) from its last.pt as it trained: its config.yaml's values "
        "over the config file's, a --set or flag given again applied where it may change"))] = False,
    time: Annotated[str | None, typer.Option(
        "--time", help=("train to this budget (30m, 90s, 1h, 1h30m; a bare number is "
                        "minutes): the schedule is fitted to it; with --resume, the budget "
                        "of the whole run (the time its earlier sessions trained counts)"))] = None,
    threads: Annotated[int | None, typer.Option(min=1, help=(
        "torch threads (default: the cores the load average leaves free)"))] = None,
) -> None:
    """Train a detector, or a good-only model (kind: anomaly) (needs lineside[train]; use
    torchrun for several GPUs/nodes)."""
    t = training()
    overrides = list(set_ or [])
    given = {o.partition("=")[0].strip() for o in overrides}
    if epochs is not None and time is None and "time_budget" not in given:
        # asked for N epochs: the config's budget (single-default.yaml: 30m) would refit
        # the schedule and ignore them
        overrides.append("time_budget=null")
    kept = None  # a resumed run's own config: all it trained with that is not given again
    if resume:  # the run says what it trained on, and how (issue #18: its --set values too)
        kept = t.resumed(config, overrides, name, data=data, merge=merge)
        # out of kept whether or not given: a run's data left there was blamed on its
        # config.yaml when --data named a set that failed validation (final read, 46)
        its_data, its_merge = kept.pop("data", None), kept.pop("extra_data", None)
        said = {"data": its_data} if data is None and its_data is not None else {}
        data, merge = data or its_data, merge or its_merge
        flags = {"model": model, "weights": weights, "epochs": epochs, "device": device,
                 "time_budget": time, "threads": threads}
        for key in [k for k, v in flags.items() if v is not None]:  # given again
            kept.pop(key, None)
        if unused := t.kept_over_config(config, {**said, **kept}):
            err.print(f"--resume: continuing {name or 'the run'} as it trained, not with these "
                    f"values of the config file: {'; '.join(unused)} (--set KEY=VALUE gives "
                    "one again)", highlight=False, markup=False)
    cfg = t.load_config(config, overrides, base=kept, data=data, model=model, weights=weights,
                        epochs=epochs, name=name, device=device, extra_data=merge or None,
                        time_budget=time, threads=threads)
    # a kill (SIGTERM: a job's timeout, a scheduler's preemption) ended the run without a
    # word; stopped as a Ctrl-C, it says what its last.pt keeps (session 51)
    with sigterm_as_ctrl_c():
        run = t.train(cfg, resume=resume)
    out.print(f"run saved to {run}")


@app.command("evaluate")
@friendly
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help="run folder, checkpoint or model package")],
    data: Annotated[str | None, typer.Option(help="dataset (default: the run's)")] = None,
    split: Annotated[str, typer.Option(help="val|test|all")] = "val",
    target_escape: Annotated[float, typer.Option(callback=_escape_rate, help=(
        "escape-rate target for calibration (0 to under 1)"))] = 0.005,
    out_dir: Annotated[Path | None, typer.Option("--out", help=(
        "report folder (default: the run's report-SPLIT; a package's "
        "runs/NAME-VERSION-report-SPLIT under the current folder)"))] = None,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """COCO mAP plus escapes / false rejects; calibrates a run's thresholds on val. A model
    package is evaluated through the edge runtime at its card's thresholds."""
    t = training()
    r = t.evaluate(run, data=data, split=split, target_escape=target_escape,
                   out=out_dir, device=device)
    if r.get("kind") == "anomaly":  # a good-only model: AUROC and escapes at false rejects
        for line in t.anomaly_summary(r):
            out.print(line, highlight=False, markup=False)
        return
    q = r["quality"]
    if (tiling := r.get("tiling")) is not None:
        whose = "its card's recipe will judge" if r.get("package") is None else \
            "the card's recipe judges"
        out.print(f"judged as {whose} frames: tiled, {tiling['tile']} px tiles "
                  f"overlapping by {tiling['overlap']:g}")

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    rates = ("escape and false-reject rates not measurable (no good images)"
             if "no good" in q.get("not_measurable", {}).get("false_reject_rate", "") else
             f"escape rate {fmt(q['escape_rate'])}  false-reject rate {fmt(q['false_reject_rate'])}")
    coco = r["coco"]
    maps = ("mAP n/a (no defects in the data)" if coco.get("boxes") == 0 else
            f"mAP@[.5:.95] {coco['map']:.4f}  mAP@.5 {coco['map50']:.4f}")
    out.print(f"{maps}  {rates}"
              f"  detection rate {fmt(q.get('detection_rate'))}"
              f"  defect recall {fmt(q['defect_recall'])}  precision {fmt(q['defect_precision'])}")
    if (p := r.get("pairs")) is not None:
        out.print(f"DeepPCB-protocol F {fmt(p['f'])}  precision {fmt(p['precision'])}  "
                  f"recall {fmt(p['recall'])}  (IoU > 0.33, class must agree)")
    for name, c in q.get("per_class", {}).items():
        out.print(f"  {name}: recall {fmt(c['recall'])}  precision {fmt(c['precision'])}  "
                  f"images detected {c['images_detected']}/{c['images']}")
    for note in r.get("notes", []):
        err.print(f"note: {note}", highlight=False, markup=False)
    if r.get("thresholds_saved"):  # export puts them in the card: said, not done unsaid
        out.print(f"thresholds calibrated on val saved to {r['thresholds_saved']} (lineside "
                  "export puts them in the package's card)")
    if r.get("report"):
        out.print(f"report: {r['report']} (summary.md, metrics.json, curves, examples)")


def new_version_name(folder: Path) -> str:
    """What ``lineside calibrate --new-version`` wrote: the card's name and version, where."""
    from lineside_inspect.package import read_card

    card = read_card(folder)
    return f"{escape(card.name)}:{escape(card.version)} ({escape(str(folder))})"


@app.command("calibrate")
@friendly
def calibrate_cmd(
    target: Annotated[Path, typer.Argument(help="training config (with --folds), run folder, "
                                                "checkpoint or model package")],
    data: Annotated[str | None, typer.Option(help="dataset (default: the run's or config's)")] = None,
    split: Annotated[str, typer.Option(help="run or package: the split to calibrate on")] = "val",
    folds: Annotated[int | None, typer.Option(help="config: K fold models, by group")] = None,
    time: Annotated[str | None, typer.Option(
        "--time", help=("config: the folds' training budget in all (30m, 1h; a bare "
                        "number is minutes)"))] = None,
    target_escape: Annotated[float, typer.Option(callback=_escape_rate, help=(
        "escape-rate allowance (0 to under 1)"))] = 0.005,
    objective: Annotated[str, typer.Option(help="f (defect F) | rejects (fewest false rejects)")] = "f",
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for calibration.json")] = None,
    run: Annotated[Path | None, typer.Option(
        help="config: write the thresholds into this run (for lineside export)")] = None,
    write: Annotated[bool, typer.Option(
        help="run or package: write the thresholds into it (a package's card only: a "
             "package not yet serving)")] = False,
    new_version: Annotated[Path | None, typer.Option(
        help="package: write it again with the thresholds as this new version "
             "(models/NAME/VERSION; what a serving package needs)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=(
        "override a key of the config (repeatable)"))] = None,
    device: Annotated[str, typer.Option()] = "auto",
    agnostic_iou: Annotated[float | None, typer.Option(
        help="package: count one defect per place, boxes overlapping above this IoU "
             "(0: off; default: the card's)")] = None,
) -> None:
    """Operating thresholds: the best defect-level F (DeepPCB protocol) within the escape
    allowance, a global threshold plus shrunk per-class offsets; from out-of-fold
    predictions of K fold models for a config (docs/training/calibration.md). A good-only
    package: its thresholds from the line's own good images at its false-reject target."""
    c = training().calibrate(target, data=data, split=split, folds=folds, time_budget=time,
                             target_escape=target_escape, out=out_dir, run=run, write=write,
                             new_version=new_version, overrides=set_, device=device,
                             objective=objective, agnostic_iou=agnostic_iou)
    is_package = (target / "model.json").is_file()
    if new_version:
        saved = f"; written as the new version {new_version_name(new_version)}"
    elif write:
        saved = "; written into the card" if is_package else "; written into the run's thresholds.json"
    elif is_package:
        saved = ("; nothing written (--new-version models/NAME/V, or --write for a package "
                 "no server has loaded)")
    else:
        saved = ""
    if "map_threshold" in c:  # a good-only package
        out.print(f"good-only threshold {c['threshold']:.4f} (was {c['previous_threshold']:.4f}"
                  f", rejecting {c['previous_false_reject']:.1%} of these captures) at "
                  f"{c['target_false_reject']:.1%} false rejects: {c['false_reject']:.1%} of "
                  f"{c['calibration_captures']} captures of {c['calibrated_on']} good images; "
                  f"map threshold {c['map_threshold']:.4f}{saved}")
        from lineside_training.anomaly.calibrate import NEAR_CEILING
        if c["threshold"] > NEAR_CEILING:  # as training warns: few defects can score above
            err.print(f"warning: these good captures score at or near 1.0, the score's "
                      f"ceiling: at the threshold {c['threshold']:.6f} {c['false_reject']:.1%} "
                      f"of them fail (target {c['target_false_reject']:.1%}), and a defect must "
                      "score at least that to fail. The model does not know these "
                      "parts: train on some of them (--merge, docs/training/good-only.md) "
                      "rather than serve this threshold", highlight=False, markup=False)
        return
    p = c["pairs"]
    g = c.get("global_threshold")
    f = "n/a" if p["f"] is None else f"{p['f']:.4f}"
    allowed = c.get("allowed_escapes")
    # null where not measurable (no good images; a package calibrated before session 41
    # has 0 there and its good_images says why)
    none = not c.get("good_images", 1)
    escapes = ("escapes n/a" if c.get("escapes") is None or none else f"escapes {c['escapes']}"
               + ("" if allowed is None else f" (allowed {allowed})"))
    rejects = ("false rejects n/a (no good images)" if none or c.get("false_rejects") is None
               else f"false rejects {c['false_rejects']}")
    out.print(f"global threshold {'n/a' if g is None else f'{g:.4f}'}  DeepPCB-protocol F {f}  "
              f"precision {p['precision'] or 0:.4f}  recall {p['recall'] or 0:.4f}  {escapes}  "
              f"{rejects}")
    if not c.get("good_images", 1):
        # nor held to an allowance on escapes it cannot measure (it was, unsaid; session 42)
        out.print("no good images in this split: the thresholds were not traded against false "
                  "rejects, nor held to the escape allowance (--target-escape: escapes are "
                  "not measurable without good images); check them on good parts before use")
    if missed := c.get("allowance_missed"):  # said, not only in calibration.json (session 54)
        err.print(f"warning: {missed}", highlight=False, markup=False)
    if c.get("agnostic_iou") is not None:
        out.print(f"one defect per place: boxes overlapping above IoU {c['agnostic_iou']} "
                  "count once")
    for name, t in c["thresholds"].items():
        off = "  (off in practice: a score must reach 1.0)" if t >= 1.0 else ""
        out.print(f"  {name}: {t:.4f}{off}")
    if saved:
        out.print(saved[2:])


@app.command("calibrate-unchanged")
@friendly
def calibrate_unchanged_cmd(
    reference: Annotated[Path, typer.Argument(help="the golden image of the view")],
    frames: Annotated[list[Path], typer.Argument(help="good parts' frames (files or folders)")],
    tolerance: Annotated[int, typer.Option(min=0, max=3, help=(
        "px an edge may move unnoticed within a tile"))] = 1,
    max_shift: Annotated[int, typer.Option(min=0, max=8, help=(
        "px a part may sit off its fixture"))] = 2,
    tile: Annotated[int, typer.Option(min=8, max=256, help="tile side in px")] = 32,
    margin: Annotated[float, typer.Option(
        min=1.0, max=3.0, help="floor = margin x the highest good score, and at least 12 grey "
        "levels")] = 1.5,
) -> None:
    """The floor of a recipe's unchanged_gate, from good parts of one view: prints the
    recipe lines (runtime/unchanged.py)."""
    from lineside_inspect.imageio import IMAGE_SUFFIXES as suffixes
    from lineside_inspect.imageio import read_image
    from lineside_inspect.runtime.unchanged import calibrate_floor

    ref = read_image(reference)  # read: it exists, for samefile below
    files: list[Path] = []
    for f in frames:
        if f.is_dir():  # the golden image kept among its frames is no part's frame (it scores 0)
            files += [p for p in sorted(f.iterdir()) if p.suffix.lower() in suffixes
                      and not p.samefile(reference)]
        elif f.exists():  # a file named on purpose is a frame: decoding says if it is not
            files.append(f)
        else:
            raise ConfigError(f"{f}: no such file or folder")
    if not files:
        raise ConfigError(f"no good frames ({', '.join(suffixes)}) to calibrate the unchanged "
                          f"gate from in {', '.join(str(f) for f in frames)}")
    c = calibrate_floor(((read_image(f), ref) for f in files), tolerance_px=tolerance,
                        max_shift_px=max_shift, tile=tile, margin=margin,
                        names=[str(f) for f in files])
    out.print(f"{c['good_pairs']} good frames: highest tile score {c['highest_good_score']}, "
              f"p99 {c['p99_good_score']}")
    if c["minimum_applied"]:
        out.print(f"floor {c['floor']}: the least a floor may be (margin x highest score is "
                  f"{c['highest_good_score'] * margin:.2f}), so that noise never makes it tight")
    out.print(f"unchanged_gate:\n  floor: {c['floor']}\n  tolerance_px: {tolerance}\n"
              f"  max_shift_px: {max_shift}\n  tile: {tile}", markup=False)


@app.command("export")
@friendly
def export_cmd(
    run: Annotated[Path, typer.Argument(help="run folder or checkpoint (with --triton: a model "
                                              "package)")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="package folder models/NAME/VERSION")] = None,
    data: Annotated[str | None, typer.Option(help="dataset for parity/calibration")] = None,
    int8: Annotated[bool, typer.Option(help="static int8 quantisation")] = False,
    fp16: Annotated[bool, typer.Option(help="fp16 for GPU deployment")] = False,
    calibration_images: Annotated[int, typer.Option(min=1, help=(
        "--int8: at most this many val images calibrate it, sampled across val's groups "
        "and good/defective parts and classes (fewer than 16 is said in a note)"))] = 64,
    calibration_seed: Annotated[int, typer.Option(min=0, help=(
        "--int8: the seed of that sample (recorded in the card)"))] = 0,
    max_defects_lost: Annotated[float, typer.Option(min=0.0, max=1.0, help=(
        "--int8/--fp16: the share of the defects the fp32 graph counts on val that the "
        "lower-precision graph may miss (a part fp32 fails that it passes is always "
        "refused)"))] = 0.01,
    overwrite: Annotated[bool, typer.Option(help=(
        "replace --out if it is a model package or empty (never the run)"))] = False,
    parent: Annotated[Path | None, typer.Option(
        help="the package this run started from (its lineage: fine-tuned or retrained on its "
             "reviews)")] = None,
    tile: Annotated[int | None, typer.Option(help=(
        "the card's default recipe judges frames larger than this many px as overlapping "
        "tiles (tiling): the size of the model's training images, whose letterbox scale "
        "it learned (another is refused, naming it); card format_version 2. A run trained "
        "with tiling (native scale) writes its own without it"))] = None,
    overlap: Annotated[float | None, typer.Option(help=(
        "with --tile: the least share of a tile its neighbour also covers, 0..0.5 "
        "(default 0.2)"))] = None,
    triton: Annotated[Path | None, typer.Option(
        help="write the package RUN into this Triton model repository instead "
             "(docs/fleet/scale-out.md); no torch needed")] = None,
    triton_version: Annotated[int | None, typer.Option(
        help="Triton version folder (default: the card's version, if a number)")] = None,
    max_batch: Annotated[int, typer.Option(help="Triton max_batch_size")] = 16,
    batch_delay_us: Annotated[int, typer.Option(
        help="Triton dynamic batching: longest wait to fill a batch, microseconds")] = 500,
) -> None:
    """Export an ONNX model package, checked through the edge runtime; its card records
    the training data's revision (a content hash) and the parent model. With --triton,
    write an existing package as a Triton model repository."""
    if triton is not None:
        from lineside_inspect.triton import export_triton

        if tile is not None or overlap is not None:
            raise ConfigError("--tile and --overlap set the tiling of an exported run's card; "
                              "--triton writes an existing package as it is")

        folder = export_triton(run, triton, version=triton_version, max_batch_size=max_batch,
                               queue_delay_us=batch_delay_us, overwrite=overwrite)
        out.print(f"wrote Triton model {folder.name} to {folder}")
        return
    if out_dir is None:
        raise ConfigError("give --out PACKAGE_FOLDER (or --triton REPO to write a package for Triton)")
    s = training().export(run, out_dir, data=data, int8=int8, fp16=fp16, overwrite=overwrite,
                          parent=parent, max_defects_lost=max_defects_lost, tile=tile,
                          overlap=overlap, calibration_images=calibration_images,
                          calibration_seed=calibration_seed)
    for note in s.get("notes", []):
        err.print(f"note: {note}", highlight=False, markup=False)
    out.print_json(json.dumps(s))


@bench_app.command("train")
@friendly
def bench_train_cmd(
    config: Annotated[Path, typer.Option(help="training YAML")] = Path("training/configs/deeppcb.yaml"),
    data: Annotated[str | None, typer.Option(help=(
        "canonical dataset folder (lineside data import); default: the config's"))] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=(
        "override a config key (repeatable)"))] = None,
    steps: Annotated[int, typer.Option(min=1, help="timed steps of each kind")] = 20,
) -> None:
    """Training throughput: full pipeline vs the bare forward+backward step.

    Images are decoded before the clock starts, as a run decodes each image once and
    keeps it; the decode is printed on its own line."""
    t = training()
    r = t.bench_train(t.load_config(config, set_, data=data), steps=steps)
    crop = f"crop {r['crop']}" if r.get("crop") else f"no crop (whole images at {r['input_size']})"
    out.print(f"bare step      {r['bare_img_s']:.1f} img/s\n"
              f"full pipeline  {r['pipeline_img_s']:.1f} img/s  ({r['ratio']:.2f}x of bare, "
              "decoded images kept as the run keeps them)\n"
              f"loading        {r['load_ms']:.1f} ms per batch  ({r['load_share']:.0%} of the "
              "full pipeline's time)\n"
              f"decode         {r['decode_s']:.1f} s for the {r['train_images']} training "
              "images, once per image in a run"
              f"{' and per loader worker' if r['workers'] else ''} (not in the figures above)\n"
              f"batch {r['batch_size']} {crop} threads {r['threads']} "
              f"workers {r['workers']}")


# ---------------------------------------------------------------- edge
@app.command("serve")
@friendly
def serve_cmd(
    config: Annotated[Path | None, typer.Option(help="server YAML config")] = None,
    model: Annotated[list[str] | None, typer.Option(metavar="PACKAGE", help=(
        "model package folder (repeatable; default: the config's, else a checkout's "
        "models/deeppcb/1)"))] = None,
    recipe: Annotated[list[str] | None, typer.Option(metavar="RECIPE_YAML",
                                                     help="recipe YAML (repeatable)")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default: the config's, "
                                             "else 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: the config's, else 8000)")] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda")] = None,
    insecure: Annotated[bool, typer.Option(help="allow a non-loopback bind without keys")] = False,
) -> None:
    """Run the edge inspection server.

    Every setting of the config can also come from the environment as LINESIDE_<NAME>
    (flags win, then the environment, then the file), e.g. LINESIDE_DATA_DIR for the
    folder of the store, or LINESIDE_API_KEYS; the README's "Configuration" lists them.
    It logs the address it listens on once it serves. Model versions an admin loads and
    activates over the API stay active across restarts (DATA_DIR/lifecycle/models.json;
    the start-up log says which) until the config's models change.
    """
    import logging

    from lineside_inspect.config import load_settings
    from lineside_inspect.serve import run

    configure_logging()
    settings = load_settings(config, models=model or None, recipes=recipe or None, host=host,
                             port=port, device=device, insecure=insecure or None)
    if "models" not in settings.model_fields_set and not Path(settings.models[0]).is_dir():
        # no model named anywhere: the default is a checkout's bundled one, a path relative to
        # where the command runs (an edge install's `lineside serve` said only
        # "models/deeppcb/1: model package folder not found", a folder the user never named)
        raise ConfigError(f"no model to serve: give --model PACKAGE_FOLDER or --config FILE "
                          f"(the default, {settings.models[0]}, is a checkout's bundled model, "
                          f"and {Path.cwd()} has none)")
    if settings.store:  # say where inspections go: not beside the user's files by surprise
        chosen = "data_dir" in settings.model_fields_set
        logging.getLogger("lineside_inspect.serve").info(
            "store in %s (%s)", settings.data_dir,
            "data_dir" if chosen else "the per-user default; set data_dir or LINESIDE_DATA_DIR to move it")
    run(settings)


@app.command("hub")
@friendly
def hub_cmd(
    config: Annotated[Path, typer.Option(help="hub YAML config (docs/fleet.md)")],
    host: Annotated[str | None, typer.Option(help="address to listen on (default: the config's, "
                                             "else 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: the config's, else 8100)")] = None,
    insecure: Annotated[bool, typer.Option(help="allow a non-loopback bind without keys")] = False,
) -> None:
    """Run the fleet hub: every box's inspections in one database and object store."""
    from lineside_inspect.fleet.hub.app import run_hub
    from lineside_inspect.fleet.hub.config import load_hub_settings

    configure_logging()
    run_hub(load_hub_settings(config, host=host, port=port, insecure=insecure or None))


def configure_logging() -> None:
    """The log of ``serve`` and ``hub``: INFO for Lineside, WARNING for the HTTP client.
    httpx logs every request at INFO, so a box with a hub wrote a line a second (its review
    poll, forwards, status reports) around the warnings docs/fleet/sync.md points to."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


MIN_KEY_CHARS = 16  # an API key shorter than this is guessable; make one with --new


@app.command("hash-key")
@friendly
def hash_key_cmd(
    key: Annotated[str | None, typer.Argument(help=(
        "the API key to hash; '-' or none: read it from standard input (not left in the "
        "shell's history or the process list)"))] = None,
    new: Annotated[bool, typer.Option("--new", help=(
        "make a random key, print it and its hash (give the key to its user, the hash to "
        "the server)"))] = False,
) -> None:
    """Print the sha256 to put in api_keys (the server never stores plain keys)."""
    import secrets

    from lineside_inspect.config import hash_key

    if new:
        made = secrets.token_urlsafe(24)
        out.print(f"key:    {made}\nsha256: {hash_key(made)}", markup=False)
        return
    if key is None or key == "-":  # "-" was hashed as the key "-" (deploy review)
        key = sys.stdin.readline().rstrip("\r\n")
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"a key of {len(key)} characters is guessable: use at least "
                          f"{MIN_KEY_CHARS} (lineside hash-key --new makes one)")
    out.print(hash_key(key))


@bench_app.command("model")
@friendly
def bench_model_cmd(
    package: Annotated[Path, typer.Argument(help="model package folder")],
    int8: Annotated[Path | None, typer.Option(help="int8 package to compare")] = None,
    runs: Annotated[int | None, typer.Option(min=1, help=(
        "timed batch-1 runs for the latency (default 50); each batch size's throughput is "
        "timed over runs / (2 x batch) runs, at least 3; --mosaic: runs per mosaic "
        "(default 3)"))] = None,
    batches: Annotated[str, typer.Option(help="batch sizes for throughput")] = "1,2,4,8",
    pairs: Annotated[Path | None, typer.Option(help=(
        "reference models: a dataset with references; judge good and defective parts side "
        "by side, with and without the unchanged gate"))] = None,
    parts: Annotated[int, typer.Option(min=1, help="--pairs: parts of each kind")] = 40,
    align: Annotated[bool, typer.Option(help="--pairs: recipe align_reference")] = True,
    mosaic: Annotated[Path | None, typer.Option(help=(
        "single-image detectors: a dataset whose defective images, side by side at native "
        "scale, make frames larger than the model's input; judge them whole and tiled "
        "(a recipe's tiling) side by side: latency, boxes counted, recall"))] = None,
    tile: Annotated[int | None, typer.Option(help="--mosaic: tiling.tile (default: the "
                                             "card's own recipe's, else the model's input "
                                             "size)")] = None,
    overlap: Annotated[float | None, typer.Option(help="--mosaic: tiling.overlap (default: "
                                                  "the card's own recipe's, else 0.2)")] = None,
    grid: Annotated[str, typer.Option(help="--mosaic: images across x down, e.g. 3x2")] = "3x2",
    frames: Annotated[int, typer.Option(min=1, help="--mosaic: mosaics judged")] = 4,
) -> None:
    """p50/p95 latency at batch 1 and best-batch throughput, 1 and 2 threads; with
    --pairs, good and defective parts judged end to end (decode included); with --mosaic,
    large frames judged whole and tiled."""
    from lineside_inspect.bench import (
        bench_model,
        bench_pairs,
        format_pairs,
        format_rows,
        tiling_note,
    )

    if mosaic is not None:
        if pairs is not None or int8 is not None or batches != "1,2,4,8":
            raise typer.BadParameter("--mosaic judges frames whole and tiled: give --tile, "
                                     "--overlap, --grid, --frames and --runs with it")
        return _bench_mosaic(package, mosaic, tile, overlap, grid, frames,
                             3 if runs is None else runs)
    if tile is not None or overlap is not None or grid != "3x2" or frames != 4:
        raise typer.BadParameter("--tile, --overlap, --grid and --frames go with --mosaic DATASET")
    # options of the other mode were silently ignored (new-user review)
    if pairs is not None and (int8 is not None or runs is not None or batches != "1,2,4,8"):
        raise typer.BadParameter("--int8, --runs and --batches time the model alone; "
                                 "with --pairs give --parts and --align")
    if pairs is None and (parts != 40 or not align):
        raise typer.BadParameter("--parts and --align go with --pairs DATASET")
    if pairs is not None:
        out.print(format_pairs(bench_pairs(package, pairs, parts=parts, align=align)))
        return
    sizes = list(_counts("--batches", batches))
    timed = 50 if runs is None else runs
    rows = bench_model(package, runs=timed, batches=sizes)
    if int8 is not None:
        rows += bench_model(int8, runs=timed, batches=sizes)
    out.print(format_rows(rows))
    # a card that tiles is judged a pass per tile: the table alone read as a frame's cost
    for pkg in (package, int8):
        if pkg is not None and (note := tiling_note(pkg)) is not None:
            out.print(note, highlight=False, markup=False, soft_wrap=True)


def _bench_mosaic(package: Path, data: Path, tile: int | None, overlap: float | None,
                  grid: str, frames: int, runs: int) -> None:
    from pydantic import ValidationError

    from lineside_inspect.bench import servable_card
    from lineside_inspect.bench_tiles import bench_tiles, format_tiles
    from lineside_inspect.recipes import card_recipe
    from lineside_inspect.runtime.tiles import Tiling

    cols, x, rows = grid.partition("x")
    if not (x and cols.isdigit() and rows.isdigit() and int(cols) >= 1 and int(rows) >= 1):
        raise typer.BadParameter(f"--grid: images across x down, e.g. 3x2; got {grid!r}")
    card = servable_card(package)  # its recipe refused as a server refuses it
    # a card that tiles (export --tile) is measured as it judges on the line: each of
    # --tile and --overlap not given is the card's (a card loaded has a valid tiling)
    own = card_recipe(card).tiling
    side = tile if tile is not None else own.tile if own else card.input.size
    share = overlap if overlap is not None else own.overlap if own else 0.2
    try:
        tiling = Tiling(tile=side, overlap=share)
    except ValidationError as exc:
        raise typer.BadParameter(f"--tile {side}, --overlap {share:g}: "
                                 f"{exc.errors()[0]['msg']}") from None
    out.print(format_tiles(bench_tiles(package, data, tiling=tiling, cols=int(cols),
                                       rows=int(rows), frames=frames,
                                       runs=runs)))


def _counts(option: str, text: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers, each at least 1 (``--batches 1,2,4``)."""
    try:
        counts = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{option}: comma-separated whole numbers, got {text!r}") \
            from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter(f"{option}: each number at least 1, got {text!r}")
    return counts


def _positive(value: float) -> float:
    """A duration or rate a benchmark divides by: over 0 (0 and negative numbers ended
    in a ZeroDivisionError or an empty percentile after servers had started)."""
    if not value > 0 or math.isinf(value):
        raise typer.BadParameter(f"{value:g}: give a number over 0")
    return value


@bench_app.command("camera")
@friendly
def bench_camera_cmd(
    package: Annotated[Path, typer.Argument(help="model package folder")] = Path("models/deeppcb/1"),
    frames: Annotated[Path, typer.Option(help="images the simulated camera streams")] = Path(
        "datasets/deeppcb-sample/images"),
    triggers: Annotated[int, typer.Option(min=1)] = 40,
    fps: Annotated[float, typer.Option(min=1.0, max=240.0, help="camera frame rate")] = 30.0,
) -> None:
    """Trigger-to-verdict latency and frame age through a simulated 30 fps camera."""
    from lineside_inspect.bench import bench_camera

    r = bench_camera(package, frames, triggers=triggers, fps=fps)
    out.print(f"trigger -> verdict  p50 {r['latency_p50_ms']:.1f} ms  p95 {r['latency_p95_ms']:.1f} ms\n"
              f"frame age at inspection  p50 {r['frame_age_p50_ms']:.1f} ms  "
              f"p95 {r['frame_age_p95_ms']:.1f} ms\n"
              f"trigger -> next frame  p50 {r['trigger_to_frame_p50_ms']:.1f} ms  "
              f"({r['triggers']} triggers, {r['stream_fps']:.0f} fps stream, {r['cores']} cores)")


@bench_app.command("line")
@friendly
def bench_line_cmd(
    package: Annotated[Path, typer.Argument(help="model package folder")] = Path("models/deeppcb/1"),
    frames: Annotated[Path, typer.Option(help="images the simulated camera streams")] = Path(
        "datasets/deeppcb-sample/images"),
    triggers: Annotated[int, typer.Option(min=1)] = 40,
    fps: Annotated[float, typer.Option(min=1.0, max=240.0, help="camera frame rate")] = 30.0,
) -> None:
    """PLC trigger -> ResultReady over OPC UA and Modbus TCP beside HTTP trigger -> verdict,
    in one run through a simulated 30 fps camera (needs lineside[line])."""
    from lineside_inspect.bench import bench_line

    with sigterm_as_ctrl_c():  # its server and the temp folder are stopped, as on Ctrl-C
        r = bench_line(package, frames, triggers=triggers, fps=fps)
    out.print("| trigger | p50 | p95 | p50 minus HTTP |\n|---|---|---|---|")
    for key, name in (("http", "HTTP trigger -> verdict"), ("opcua", "OPC UA Trigger -> ResultReady"),
                      ("modbus", "Modbus TCP Trigger -> ResultReady")):
        out.print(f"| {name} | {r[f'{key}_p50_ms']:.1f} ms | {r[f'{key}_p95_ms']:.1f} ms | "
                  f"{r[f'{key}_p50_ms'] - r['http_p50_ms']:+.1f} ms |")
    out.print(f"\n({r['triggers']} triggers each, interleaved, {r['stream_fps']:.0f} fps stream, "
              f"{r['cores']} cores)")


@bench_app.command("server")
@friendly
def bench_server_cmd(
    package: Annotated[Path, typer.Argument(help="model package folder")] = Path("models/deeppcb/1"),
    image: Annotated[Path, typer.Option(help="the JPEG every request sends")] = Path(
        "datasets/deeppcb-sample/images/group00041/00041000_test.jpg"),
    requests: Annotated[int, typer.Option(min=1, help="sequential requests for the overhead")] = 40,
    seconds: Annotated[float, typer.Option(callback=_positive,
                                           help="load duration per client count")] = 10.0,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads (default: all)")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="the server's max_concurrency")] = 2,
    rounds: Annotated[int, typer.Option(
        min=1, help="interleaved rounds the measurements are split into")] = 3,
    clients: Annotated[str, typer.Option(help="client counts to load the server with")] = "1,4,8",
    golden: Annotated[Path | None, typer.Option(help=(
        "reference models: the golden image every frame is judged against (default: "
        "--image's *_temp twin, as DeepPCB names its pairs)"))] = None,
) -> None:
    """Server overhead (round trip minus inference) and throughput at 1/4/8 clients versus
    the model back to back in-process, store on and off, in one run. A reference model's
    golden is registered on the servers (PUT /v1/references) and named with each frame."""
    from lineside_inspect.bench import bench_server, format_server_rows

    counts = _counts("--clients", clients)
    with sigterm_as_ctrl_c():  # its two servers and the temp folder are stopped, as on Ctrl-C
        rows = bench_server(package, image, requests=requests, seconds=seconds, threads=threads,
                            concurrency=concurrency, rounds=rounds, clients=counts,
                            golden_path=golden)
    out.print(format_server_rows(rows, counts), markup=False)


@bench_app.command("hub")
@friendly
def bench_hub_cmd(
    config: Annotated[Path | None, typer.Option(help=(
        "hub YAML whose database_url and objects to use (without them: SQLite, and a local "
        "weed)"))] = None,
    boxes: Annotated[int, typer.Option(min=1, help="box processes")] = 3,
    rate: Annotated[float, typer.Option(callback=_positive, help="steady inspections/s per box")] = 30.0,
    seconds: Annotated[float, typer.Option(callback=_positive, help="length of the steady phase")] = 20.0,
    burst: Annotated[int, typer.Option(min=1, help="backlog per box for the throughput phase")] = 300,
    review_list: Annotated[int, typer.Option(min=0, help=(
        "inspections for the hub's review-list latency, in a database of their own on the "
        "--config PostgreSQL server (0: skip)"))] = 100_000,
) -> None:
    """Forwarded inspections/s to a hub, the forwarding lag under a steady line rate, and
    the hub's review-list latency with many inspections in PostgreSQL."""
    with sigterm_as_ctrl_c():  # the hub, weed, the boxes and the temp folder are stopped
        _bench_hub(config, boxes, rate, seconds, burst, review_list)


def _bench_hub(config: Path | None, boxes: int, rate: float, seconds: float, burst: int,
               review_list: int) -> None:
    from lineside_inspect.fleet.bench import bench_hub, format_hub

    out.print(format_hub(bench_hub(config, boxes=boxes, rate=rate, seconds=seconds, burst=burst)))
    if review_list:
        from lineside_inspect.config import read_config_file
        from lineside_inspect.fleet.hub.bench_reviews import (
            bench_review_list_on_server,
            format_latency,
        )

        doc = read_config_file(config, "a hub config") if config is not None else {}
        url = str(doc.get("database_url") or "")
        if not url.startswith("postgresql"):
            out.print("review-list latency: skipped (needs a PostgreSQL database_url in --config)")
            return
        r = bench_review_list_on_server(url, n=review_list, objects=doc.get("objects"))
        out.print(format_latency(r["queries"], r["inspections"]), markup=False, highlight=False)


@bench_app.command("shadow")
@friendly
def bench_shadow_cmd(
    package: Annotated[Path, typer.Argument(help="the active model package")] = Path("models/deeppcb/1"),
    shadow: Annotated[Path, typer.Option(help=(
        "the shadow's package: another version of the active model, or with --fused-with "
        "of the good-only partner"))] = Path("models/deeppcb/1-int8"),
    fused_with: Annotated[Path | None, typer.Option(help=(
        "a good-only (anomaly) package: frames are judged by the detector's default recipe "
        "fused with it, as a recipe's anomaly.model"))] = None,
    frames: Annotated[Path, typer.Option(help="images the clients send")] = Path(
        "datasets/deeppcb-sample/images"),
    seconds: Annotated[float, typer.Option(callback=_positive,
                                           help="per round, load and shadow state")] = 10.0,
    rounds: Annotated[int, typer.Option(min=1, help="rounds alternating shadow off and on")] = 2,
    rate: Annotated[float, typer.Option(callback=_positive,
                                        help="line-rate load: frames per second")] = 4.0,
    clients: Annotated[int, typer.Option(min=1, help="saturated load: clients back to back")] = 2,
    sample_rate: Annotated[float, typer.Option(
        min=0.0, max=1.0, callback=_positive, help="share of frames the shadow sees (over 0, "
        "at most 1)")] = 1.0,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads (default: all)")] = None,
) -> None:
    """Verdict latency of the active model with and without a shadow model, at line rate
    and saturated, against a lineside serve process (docs/lifecycle.md); with --fused-with,
    of a recipe fusing the detector with a good-only model, shadowing either."""
    from lineside_inspect.lifecycle.bench import bench_shadow, format_shadow_rows

    with sigterm_as_ctrl_c():  # its server and the temp folder are stopped, as on Ctrl-C
        rows = bench_shadow(package, shadow, frames, seconds=seconds, rounds=rounds,
                            rate_hz=rate, clients=clients, sample_rate=sample_rate,
                            threads=threads, fused_with=fused_with)
    out.print(format_shadow_rows(rows), markup=False)


# ---------------------------------------------------------------- lifecycle
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="LINESIDE_DATA_DIR",
    help="the server's data folder (default: the server's, the per-user data folder); "
         "golden sets live in its golden/ folder")]


def _golden_dir(data_dir: Path | None) -> Path:
    """The golden/ folder of the data folder the server uses by default (one place)."""
    from lineside_inspect.config import default_data_dir
    from lineside_inspect.lifecycle.golden import GOLDEN_DIR

    return (data_dir or Path(default_data_dir())) / GOLDEN_DIR


def _golden_items(data: Path | None, split: str | None, good: Path | None, bad: Path | None,
                  store: Path | None, database_url: str | None, limit: int | None,
                  reference: Path | None = None) -> tuple[list[Any], list[str]]:
    from lineside_inspect.lifecycle import golden

    if reference is not None:  # the folders' golden image: a reference station's good parts
        if good is None and bad is None:
            raise GoldenSetError("--reference is the golden image of the --good and --bad "
                                 "folders' parts: give one of them with it")
        if not reference.is_file():
            raise GoldenSetError(f"--reference {reference}: not a file")
    items: list[Any] = []
    classes: list[str] = []
    if data is not None:
        found, classes = golden.from_dataset(data, split, limit=limit)
        items += found
    for folder, expected in ((good, "pass"), (bad, "fail")):
        if folder is not None:
            items += golden.from_folder(folder, expected=expected, limit=limit,  # type: ignore[arg-type]
                                        reference=reference)
    if store is not None:
        from lineside_inspect.store import Store
        from lineside_inspect.store.checks import check_database
        from lineside_inspect.store.store import DB_FILE, default_url

        if not (store / DB_FILE).exists() and database_url is None:  # read, never made here
            raise GoldenSetError(f"--store {store}: no {DB_FILE} here; give the server's "
                                 "store folder (its data_dir) or --database-url")
        # as data pull checks it (one line; a foreign or damaged SQLite file left as it is)
        check_database(database_url or default_url(store), "--database-url" if database_url
                       else "--store's database", named="--database-url", data_dir=store,
                       must_exist=True)
        with Store(store, database_url) as st:
            found, more = golden.from_store(st, limit=500 if limit is None else limit)
        items += found
        classes += [c for c in more if c not in classes]
    if not items:
        raise GoldenSetError("say where the images come from: --data DATASET [--split SPLIT], "
                             "--good FOLDER, --bad FOLDER or --store DATA_DIR")
    return items, classes


def _golden_line(m: Any) -> str:
    s = m.summary()
    return (f"golden set {s['name']}:{s['version']} ({s['items']} images: {s['expected_fail']} "
            f"must fail, {s['expected_pass']} must pass; {s['with_boxes']} with boxes known), digest "
            f"{s['digest']}")


GoldenSources = {
    "data": typer.Option(help="canonical dataset: images with boxes must fail, without must pass"),
    "split": typer.Option(help="the dataset's split (train|val|test; default: every image)"),
    "good": typer.Option(help="a folder of good parts (must pass)"),
    "bad": typer.Option(help="a folder of bad parts (must fail; boxes unknown)"),
    "store": typer.Option(help="a store folder (server stopped): its reviewed inspections"),
    "reference": typer.Option(help="the golden (template) image the --good and --bad folders' "
                              "parts are compared with, to gate a reference model"),
    "limit": typer.Option(min=1, help="at most this many images from each source (from a dataset a "
                          "seeded sample, defective and good in proportion; from a folder the "
                          "first in name order; from a store the newest reviewed)"),
}


@golden_app.command("create")
@friendly
def golden_create(
    name: Annotated[str, typer.Argument(help="the golden set's name")],
    data_dir: DataDir = None,
    data: Annotated[Path | None, GoldenSources["data"]] = None,
    split: Annotated[str | None, GoldenSources["split"]] = None,
    good: Annotated[Path | None, GoldenSources["good"]] = None,
    bad: Annotated[Path | None, GoldenSources["bad"]] = None,
    store: Annotated[Path | None, GoldenSources["store"]] = None,
    database_url: Annotated[str | None, typer.Option(help="the store's database URL")] = None,
    limit: Annotated[int | None, GoldenSources["limit"]] = None,
    reference: Annotated[Path | None, GoldenSources["reference"]] = None,
    note: Annotated[str, typer.Option(help="a note kept in the manifest")] = "",
) -> None:
    """Make version 1 of a golden set (content-addressed, under DATA_DIR/golden/NAME/1)."""
    from lineside_inspect.lifecycle.golden import GoldenLibrary

    items, classes = _golden_items(data, split, good, bad, store, database_url, limit,
                                   reference)
    m = GoldenLibrary(_golden_dir(data_dir)).create(name, items, classes, note=note)
    out.print(_golden_line(m))


@golden_app.command("add")
@friendly
def golden_add(
    name: Annotated[str, typer.Argument(help="the golden set's name")],
    data_dir: DataDir = None,
    data: Annotated[Path | None, GoldenSources["data"]] = None,
    split: Annotated[str | None, GoldenSources["split"]] = None,
    good: Annotated[Path | None, GoldenSources["good"]] = None,
    bad: Annotated[Path | None, GoldenSources["bad"]] = None,
    store: Annotated[Path | None, GoldenSources["store"]] = None,
    database_url: Annotated[str | None, typer.Option(help="the store's database URL")] = None,
    limit: Annotated[int | None, GoldenSources["limit"]] = None,
    reference: Annotated[Path | None, GoldenSources["reference"]] = None,
    note: Annotated[str, typer.Option(help="a note kept in the manifest")] = "",
) -> None:
    """Add images to a golden set: a new version, the latest plus these (an image already in
    it takes what is given now: its expected verdict and boxes; its reference image too
    with --reference, else it keeps the one it had). Prints what changed; a server's gate
    passes on the version before stop admitting when the content changed (the same
    content keeps them)."""
    from lineside_inspect.lifecycle.golden import GoldenLibrary

    library = GoldenLibrary(_golden_dir(data_dir))
    if not library.versions(name):  # a typo or another data folder: not a new set's version 1
        raise GoldenSetError(f"no golden set {name!r} in {library.root}: create it with "
                             "golden create, or give the server's --data-dir")
    items, classes = _golden_items(data, split, good, bad, store, database_url, limit,
                                   reference)
    m = library.add(name, items, classes, note=note)
    out.print(_golden_line(m))
    if m.parent is not None:
        for line in _golden_change(library.get(name, m.parent), m, items):
            out.print(line)


def _golden_change(prev: Any, m: Any, items: list[Any]) -> list[str]:
    """What ``golden add`` changed from the version before, and what that does to a server's
    gate passes (a pass admits only while the set's latest version holds what it replayed):
    an image already in the set takes the verdict and boxes given now, and the reference
    given with them; given none, it keeps its own (session 47: it lost it, and a reference
    model's gate on the new version failed)."""
    before = {i.sha256: i for i in prev.items}
    given = {c.item.sha256 for c in items}
    new = [i for i in m.items if i.sha256 not in before]
    changed = [i for i in m.items if i.sha256 in before and i.content() != before[i.sha256].content()]
    again = len(given) - len(new) - len(changed)
    lines = [f"from {prev.ref}: {len(new)} new image(s), {len(changed)} already in it taken as "
             f"given now (expected verdict, boxes, reference if given), {again} given again "
             "unchanged"]
    bare = given - {c.item.sha256 for c in items if c.item.reference is not None}
    kept = [i for i in m.items if i.sha256 in bare and i.sha256 in before
            and i.reference is not None]
    if kept:
        lines.append(f"{len(kept)} already in it, given without a reference, kept the reference "
                     f"image each had ({', '.join(i.source for i in kept[:3])}"
                     f"{', ...' if len(kept) > 3 else ''}): give --reference GOLDEN to replace it")
    if m.digest == prev.digest:
        lines.append(f"{m.ref} holds what {prev.ref} held (the same digest): a server's gate "
                     f"passes on {prev.ref} still count")
    else:
        lines.append(f"a server's gate pass judged on {prev.ref} no longer admits a version "
                     f"(lifecycle.gate.require_gate): gate it again on {m.ref}, POST "
                     f"/v1/models/MODEL/gate {{\"version\": \"VERSION\", \"golden\": "
                     f"\"{m.name}\", \"recipe\": \"*\"}}")
    return lines


@golden_app.command("list")
@friendly
def golden_list(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The golden sets and their versions."""
    from lineside_inspect.lifecycle.golden import GoldenLibrary

    sets = GoldenLibrary(_golden_dir(data_dir)).summaries()
    if as_json:
        out.print_json(json.dumps(sets))
        return
    if not sets:
        out.print(f"no golden sets in {_golden_dir(data_dir)}")
    for entry in sets:
        for v in entry["versions"]:  # type: ignore[attr-defined]
            out.print(f"{v['name']}:{v['version']}  {v['items']} images ({v['expected_fail']} fail, "
                      f"{v['expected_pass']} pass, {v['with_boxes']} with boxes known)  {v['digest'][:16]}  "
                      f"{v['created_at']}  {v['note']}")
        for b in entry["broken"]:  # type: ignore[attr-defined]
            out.print(f"{entry['name']}:{b['version']}  cannot be used: {b['error']}",
                      markup=False, highlight=False)


@app.command("gate")
@friendly
def gate_cmd(
    candidate: Annotated[Path, typer.Argument(help="the candidate model package")],
    against: Annotated[Path, typer.Option(help="the package it would replace (the active one)")],
    golden: Annotated[str, typer.Option(help="golden set name (in DATA_DIR/golden)")],
    golden_version: Annotated[int | None, typer.Option(help="default: its latest")] = None,
    recipe: Annotated[Path | None, typer.Option(
        help="recipe YAML whose rules judge both (default: the card recipe of the "
             "candidate, which judges once it is active, as a server's gate under the card "
             "recipe takes it; or of the --fused-with detector when it is one)")] = None,
    fused_with: Annotated[Path | None, typer.Option(
        help="the other package of the recipe's fusion of a detector with a good-only model "
             "(anomaly.model): the good-only one when gating detectors, the detector when "
             "gating versions of the good-only one; both are judged with it, as the line is "
             "(needed when the recipe fuses one)")] = None,
    data_dir: DataDir = None,
    allowance: Annotated[int, typer.Option(
        min=0, help="false rejects the candidate may have beyond the active model's")] = 0,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Replay a golden set through both packages via the edge runtime, each at its card's
    thresholds under the recipe; exit 1 when the candidate has more escapes than the
    active model, passes a defective part it fails, or has more false rejects than it plus
    the allowance (or when the set has no defective part). A recipe that fuses a detector
    with a good-only model judges both with the other model of the fusion (--fused-with
    its package): versions of the detector with the good-only model, versions of the
    good-only model with the detector. The report is printed, not kept: a server's
    require_gate needs its own gate (POST /v1/models/NAME/gate). Images are decoded as a
    server decodes frames and goldens, under the built-in pixel limit
    (LINESIDE_MAX_IMAGE_PIXELS; this command reads no server settings)."""
    from lineside_inspect.lifecycle.gate import (
        check_partner,
        format_report,
        gated_as,
        run_gate,
    )
    from lineside_inspect.lifecycle.golden import GoldenLibrary
    from lineside_inspect.package import card_digest
    from lineside_inspect.recipes import card_recipe, check_card_recipe, load_recipe
    from lineside_inspect.runtime.detector import Detector

    library = GoldenLibrary(_golden_dir(data_dir))
    manifest = library.get(golden, golden_version)
    cand = Detector(candidate, device="cpu", threads=threads)
    active = Detector(against, device="cpu", threads=threads)
    for det in (cand, active):  # a card's own recipe, as a server loading it checks it
        check_card_recipe(det.card, det.class_names)
    if card_digest(cand.card) == card_digest(active.card):
        raise ConfigError("the candidate and --against are the same package (graph and card): "
                          "a package is not gated against itself")
    if (cand.card.name, cand.card.kind) != (active.card.name, active.card.kind):
        raise ConfigError(f"the candidate is {cand.card.kind} model {cand.card.name}, --against "
                          f"is {active.card.kind} model {active.card.name}: a gate compares two "
                          "versions of one model (the one that would replace the other)")
    # the other model of a fused recipe, as a server's gate takes the loaded one (gates
    # judged the detectors alone: escapes the partner catches on the line were charged; a
    # good-only model's versions were judged alone, or refused under the fused recipe)
    partner = None if fused_with is None else Detector(fused_with, device="cpu", threads=threads)
    if partner is not None:
        check_card_recipe(partner.card, partner.class_names)
    if recipe is not None:
        rule = load_recipe(recipe)
    elif partner is not None and partner.card.kind != "anomaly" and cand.card.kind == "anomaly":
        rule = card_recipe(partner.card)  # the detector's: the recipe its station judges by
    else:
        # the card's own recipe follows the active card on a server: once the candidate is
        # active the line judges by the one its card brings, and a server's gate under it
        # judges by that (session 43); the active card's judged both by rules the line
        # would drop at the activation
        rule = card_recipe(cand.card)
    if recipe is None and partner is not None and rule.fused() is None:
        # the card recipe taken without --recipe fuses nothing: say so, not only that
        # --fused-with was given (or that the recipe judges another model)
        raise ConfigError(f"recipe {rule.name}, the card recipe of {rule.model} (no --recipe "
                          f"given), fuses no good-only model with a detector: --fused-with "
                          f"{partner.card.name} {partner.card.version} has nothing to be "
                          "fused with; give the recipe that fuses the two with --recipe")
    as_partner = gated_as(rule, cand.card.name) == "partner"  # as the server's gate refuses it
    if recipe is not None and not as_partner:
        # a recipe the server refuses to put (a good-only model fusing another, a
        # detector's anomaly section naming no model...) is refused here in its words: it
        # was asked for the partner's package, then called the good-only model a detector.
        # The kind of the model it fuses is check_partner's (below)
        rule.check_models(cand.card.kind, cand.class_names, "anomaly")
    if partner is None and (fused := rule.fused()) is not None:
        raise ConfigError(
            f"recipe {rule.name} fuses good-only model {fused[0]} with "
            + (f"detector {rule.model}: give the detector's package with --fused-with, so "
               f"each version of {cand.card.name} is judged as the line judges it"
               if as_partner else
               "its detector: give its package with --fused-with, so both are judged as the "
               "line judges them"))
    check_partner(rule, partner, (cand, active))
    # classes a line's rules name that a version lacks judged nothing. Not the active card's
    # own recipe: a gate judges each card at its own floors (rules_of), as the server's does,
    # and a candidate that renamed a class was refused over the active card's floors. Under
    # a recipe fusing the gated good-only model, its rules are the detector's
    judged = ((partner,) if as_partner and partner is not None else
              (cand, active) if recipe is not None else ())
    for det in judged:
        rule.check_classes(det.class_names)
        rule.check_reference_use(det.card.needs_reference)
    report = run_gate(cand, active, library, manifest, rule, allowance=allowance,
                      partner=partner)
    if as_json:
        out.print_json(report.model_dump_json())
    else:
        out.print(format_report(report, kept=False))
    if not report.passed:
        raise typer.Exit(1)


# lineside fleet keygen / publish / assign (model distribution; fleet/cli.py)
from lineside_inspect.fleet.cli import register as _register_fleet  # noqa: E402

_register_fleet(app, friendly, out)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        code: int = 130
    except SystemExit as exc:  # typer ends every command so
        if not isinstance(exc.code, int | None):
            raise  # a message: said by the interpreter, as before
        code = exc.code or 0
    except Exception as exc:
        # said as the interpreter says it (typer's hook), then ended as below with its 1: a
        # camera left in a read was not interrupted, its read_timeout_s waited out at exit
        if "lineside_inspect.cameras.manager" not in sys.modules:
            raise
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code = 1
    else:
        code = 0
    # a served camera still in a read of a stalled stream: the process ends now, not
    # finalized under that read (only if cameras ran: nothing imported for other commands)
    cameras = sys.modules.get("lineside_inspect.cameras.manager")
    if cameras is not None:
        cameras.end_if_left_in_a_read(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
