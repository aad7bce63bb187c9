"""Native-scale training (a config's ``tiling``) beside the whole-frame recipe, on the
same large frames in the same time: ``make bench-native`` (docs/benchmarks.md).

The frames are procedural: mosaics of the sample's 640 px boards (``--grid 2x2``: 1280 px
frames), their boxes moved into frame pixels, written as a canonical dataset that keeps
the sample's group split (a val mosaic holds val boards only, a train mosaic train boards
only; defective boards with defective ones and good with good, every board in up to
``--repeats`` frames, in shuffled company and places). Then,
through the ``lineside`` commands a user runs (printed as they run):

    lineside train --config training/configs/single-default.yaml --data SET --time T
        --threads 1 [--set tiling.tile=640]          # (a) whole, 2x down; (b) native scale
    lineside export RUN --out PKG
    lineside evaluate PKG --data SET --out REPORT    # val mosaics, at the card's thresholds

The two trainings run side by side, one torch thread each, so that they meet the same
load. Each package is then timed judging the val mosaics through ``inspector.inspect``
under its card's own recipe (whole for (a), tiled for (b)), as a server would.

    .venv/bin/python tools/bench_native.py [--time 4m] [--work runs/bench-native]
    .venv/bin/python tools/bench_native.py --build-only --work /tmp/native   # the set alone

A few minutes on a procedural set is a smoke figure, not a recipe's accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "training" / "configs" / "single-default.yaml"


def build(data: Path, out: Path, *, cols: int, rows: int, repeats: int, seed: int) -> Path:
    """The mosaic dataset at ``out`` (replaced): per split of ``data``, its defective
    images and its good ones each shuffled ``repeats`` times and cut into ``cols x rows``
    frames (a few boards left over: in no frame of that shuffle)."""
    import cv2

    from lineside_inspect.bench_tiles import compose
    from lineside_inspect.dataset import Box, Dataset, ImageRecord, read_dataset, write_dataset
    from lineside_inspect.imageio import read_image

    ds = read_dataset(data)
    per = cols * rows
    cell = (max(r.width for r in ds.images), max(r.height for r in ds.images))
    rng = random.Random(seed)
    staging = out.parent / f".{out.name}.frames"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    records: list[ImageRecord] = []
    for split in ("train", "val"):
        # defective boards with defective, good with good: a good frame's false reject
        # is measurable (a frame with one defective board of four is failed anyway)
        pools = ([r for r in ds.images if r.split == split and bool(r.boxes) is bad]
                 for bad in (True, False))
        cuts = []
        for pool in pools:
            order = [r for _ in range(repeats) for r in rng.sample(pool, len(pool))]
            cuts += [order[f * per:(f + 1) * per] for f in range(len(order) // per)]
        for f, parts in enumerate(cuts):
            frame, truth = compose([(read_image(ds.image_path(r)), r.boxes) for r in parts],
                                   cols=cols, rows=rows, cell=cell, pad_value=114)
            name = f"{split}/mosaic{f:03d}.png"
            (staging / split).mkdir(exist_ok=True)
            cv2.imwrite(str(staging / name), frame)
            records.append(ImageRecord(
                file_name=name, width=frame.shape[1], height=frame.shape[0],
                boxes=[Box(*map(float, xyxy), label=label) for label, xyxy in truth],
                # one group per split: a later `data split --by group` keeps boards apart
                group=f"{split}-boards", split=split, source=staging / name))
    mosaic = Dataset(categories=list(ds.categories), images=records,
                     info={"source": f"tools/bench_native.py: {cols}x{rows} mosaics of {data}",
                           **{k: v for k, v in ds.info.items() if k == "licence"}})
    write_dataset(mosaic, out, overwrite=True)
    shutil.rmtree(staging, ignore_errors=True)
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lineside_inspect.cli", *args]


def show(cmd: list[str]) -> str:
    return "lineside " + " ".join(cmd[3:])


def run(cmd: list[str], log: Path) -> None:
    print(f"$ {show(cmd)}  (log: {log})", flush=True)
    with open(log, "w") as fh:
        done = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{show(cmd)} failed (exit {done.returncode}); its output: {log}")


def latency(package: Path, data: Path, runs: int = 3) -> dict[str, Any]:
    """p50 ms per val frame judged under the card's own recipe, and its forward passes."""
    from lineside_inspect.dataset import read_dataset
    from lineside_inspect.imageio import read_image
    from lineside_inspect.inspector import inspect
    from lineside_inspect.recipes import card_recipe
    from lineside_inspect.runtime.detector import Detector
    from lineside_inspect.runtime.tiles import tile_origins

    det = Detector(package, device="cpu", threads=1)
    recipe = card_recipe(det.card)
    ds = read_dataset(data)
    frames = [read_image(ds.image_path(r)) for r in ds.in_split("val")]
    inspect(frames[0], det, recipe)  # warm up
    times = []
    for frame in frames:
        for _ in range(runs):
            t0 = time.perf_counter()
            inspect(frame, det, recipe)
            times.append(time.perf_counter() - t0)
    h, w = frames[0].shape[:2]
    t = recipe.tiling
    return {"p50_ms": float(np.percentile(times, 50) * 1000),
            "passes": 1 if t is None else len(tile_origins(w, h, t) or [0]),
            "frame": f"{w}x{h}", "input": det.size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "datasets" / "deeppcb-sample")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-native")
    ap.add_argument("--time", default="4m", help="each training's budget (lineside train --time)")
    ap.add_argument("--tile", type=int, default=640, help="(b)'s tiling.tile")
    ap.add_argument("--grid", default="2x2", help="boards across x down in a frame")
    ap.add_argument("--repeats", type=int, default=3, help="frames each board appears in")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-only", action="store_true", help="write the mosaic set and stop")
    a = ap.parse_args(argv)
    cols, _, rows = a.grid.partition("x")
    if not (cols.isdigit() and rows.isdigit() and int(cols) >= 1 and int(rows) >= 1):
        ap.error(f"--grid: boards across x down, e.g. 2x2; got {a.grid!r}")
    work = a.work.resolve()
    data = build(a.data, work / "data", cols=int(cols), rows=int(rows), repeats=a.repeats,
                 seed=a.seed)
    print(f"mosaic set: {data}")
    if a.build_only:
        return 0
    arms = {"a": ("whole (letterboxed to the auto input size)", []),
            "b": (f"native scale (tiling.tile={a.tile})", ["--set", f"tiling.tile={a.tile}"])}
    with contextlib.ExitStack() as logs:
        trains = {}
        for arm, (_, extra) in arms.items():
            cmd = cli("train", "--config", str(CONFIG), "--data", str(data), "--time", a.time,
                      "--threads", "1", "--name", f"native-{arm}", "--set",
                      f"out_dir={work / 'runs'}", *extra)
            shutil.rmtree(work / "runs" / f"native-{arm}", ignore_errors=True)
            log = work / f"train-{arm}.log"
            print(f"$ {show(cmd)}  (log: {log})", flush=True)
            trains[arm] = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.STDOUT,
                                           stdout=logs.enter_context(open(log, "w")))
        for arm, p in trains.items():
            if p.wait():
                sys.exit(f"training ({arm}) failed (exit {p.returncode}); its output: "
                         f"{work / f'train-{arm}.log'}")
    rows_ = []
    for arm, (what, _) in arms.items():
        pkg = work / "models" / f"native-{arm}" / "1"
        run(cli("export", str(work / "runs" / f"native-{arm}"), "--out", str(pkg), "--overwrite"),
            work / f"export-{arm}.log")
        report = work / f"eval-{arm}"
        run(cli("evaluate", str(pkg), "--data", str(data), "--out", str(report), "--device", "cpu"),
            work / f"eval-{arm}.log")
        m = json.loads((report / "metrics.json").read_text())
        log = [json.loads(x) for x in (work / "runs" / f"native-{arm}" / "metrics.jsonl")
               .read_text().splitlines() if x.strip()]
        rows_.append({"arm": arm, "what": what, "coco": m["coco"], "quality": m["quality"],
                      "images": m["images"], "steps": log[-1].get("step") if log else None,
                      **latency(pkg, data)})
    print(f"\n{rows_[0]['images']} val frames of {rows_[0]['frame']} px; {a.time} of training "
          f"each, side by side, one thread each")
    print("| run | input | steps | passes / frame | mAP@.5 | mAP@[.5:.95] | escapes | "
          "false rejects | p50 ms / frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows_:
        q = r["quality"]
        print(f"| ({r['arm']}) {r['what']} | {r['input']} | {r['steps']} | {r['passes']} | "
              f"{r['coco']['map50']:.3f} | {r['coco']['map']:.3f} | "
              f"{q['escapes']}/{q['defective_images']} | "
              f"{q['false_rejects']}/{q['good_images']} | {r['p50_ms']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
