"""``lineside bench model PACKAGE --mosaic DATASET``: frames larger than the model's input
judged whole (letterboxed) and tiled (a recipe's ``tiling``), side by side in one run:
latency per frame, boxes counted and recall against the mosaics' truth."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lineside_inspect.boxes import iou_matrix
from lineside_inspect.dataset.model import Box
from lineside_inspect.errors import BenchError
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.tiles import Tiling

IOU = 0.5  # a truth box is found when a counted box of its class covers it this much


def mosaics(data: str | Path, *, cols: int, rows: int, frames: int,
            pad_value: int) -> list[tuple[np.ndarray, list[tuple[str, np.ndarray]]]]:
    """Up to ``frames`` frames of ``cols x rows`` defective images of ``data`` each, at
    native scale in cells the size of the largest, with their boxes in frame pixels."""
    from lineside_inspect.dataset import read_dataset
    from lineside_inspect.imageio import read_image

    ds = read_dataset(data)
    recs = [r for r in ds.images if r.boxes]
    per = cols * rows
    if len(recs) < per:
        raise BenchError(f"--mosaic {data}: {len(recs)} images with boxes, a {cols}x{rows} "
                         f"mosaic needs {per}")
    cw, ch = max(r.width for r in recs), max(r.height for r in recs)
    return [compose([(read_image(ds.image_path(rec)), rec.boxes)
                     for rec in recs[f * per:(f + 1) * per]],
                    cols=cols, rows=rows, cell=(cw, ch), pad_value=pad_value)
            for f in range(min(frames, len(recs) // per))]


def compose(parts: list[tuple[np.ndarray, list[Box]]], *, cols: int, rows: int,
            cell: tuple[int, int], pad_value: int) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One frame of ``parts`` (images with their boxes) side by side at native scale,
    row by row in ``cell``-sized cells (width, height), with their boxes moved into frame
    pixels (``bench model --mosaic``; ``tools/bench_native.py``'s procedural set)."""
    cw, ch = cell
    frame = np.full((ch * rows, cw * cols, 3), pad_value, dtype=np.uint8)
    truth: list[tuple[str, np.ndarray]] = []
    for k, (image, boxes) in enumerate(parts):
        x, y = (k % cols) * cw, (k // cols) * ch
        frame[y:y + image.shape[0], x:x + image.shape[1]] = image
        truth += [(b.label, np.array([b.x1 + x, b.y1 + y, b.x2 + x, b.y2 + y]))
                  for b in boxes]
    return frame, truth


def _hits(xyxy: np.ndarray, labels: list[str], truth: list[tuple[str, np.ndarray]]) -> int:
    hits = 0
    for label, t in truth:
        b = xyxy[[lab == label for lab in labels]]
        if len(b):
            hits += bool(iou_matrix(t[None].astype(np.float32), b).max() >= IOU)
    return hits


def bench_tiles(package: str | Path, data: str | Path, *, tiling: Tiling, cols: int = 3,
                rows: int = 2, frames: int = 4, runs: int = 3,
                threads: int | None = None) -> dict[str, Any]:
    """Each mosaic judged ``runs`` times whole and tiled through ``inspector.inspect``
    under the card's default rules (its calibrated thresholds), as the server judges."""
    from lineside_inspect.inspector import inspect
    from lineside_inspect.recipes import Recipe

    det = Detector(package, device="cpu", threads=threads)
    if det.card.kind != "detector" or det.needs_reference:
        raise BenchError(f"{package}: --mosaic tiles frames for single-image detectors; "
                         f"this is a {'reference' if det.needs_reference else det.card.kind} model")
    frames_ = mosaics(data, cols=cols, rows=rows, frames=frames,
                      pad_value=det.card.input.letterbox.pad_value)
    if not frames_:
        raise BenchError(f"--mosaic {data}: no mosaic could be made")
    truth = sum(len(t) for _, t in frames_)
    h, w = frames_[0][0].shape[:2]
    out: dict[str, Any] = {"package": str(package), "frame": f"{w}x{h}", "frames": len(frames_),
                           "truth": truth, "size": det.size, "cores": os.cpu_count(),
                           "threads": threads, "modes": []}
    for name, t in (("whole (letterboxed)", None), (f"tiled {tiling.tile} px, overlap "
                                                   f"{tiling.overlap:g}", tiling)):
        recipe = Recipe(name="bench", model=det.card.name, tiling=t)
        inspect(frames_[0][0], det, recipe)  # warm up
        times, counted, hits = [], 0, 0
        for frame, boxes in frames_:
            for _ in range(runs):
                t0 = time.perf_counter()
                done = inspect(frame, det, recipe)
                times.append(time.perf_counter() - t0)
            counted += len(done.defects)
            hits += _hits(done.defects.xyxy, done.defects.labels, boxes)
        out["modes"].append({"mode": name, "p50_ms": float(np.percentile(times, 50) * 1000),
                             "tiles": _tiles(w, h, t), "counted": counted, "found": hits,
                             "recall": hits / truth if truth else 0.0})
    return out


def _tiles(width: int, height: int, tiling: Tiling | None) -> int:
    from lineside_inspect.runtime.tiles import tile_origins

    return 1 if tiling is None else len(tile_origins(width, height, tiling) or [0])


def format_tiles(r: dict[str, Any]) -> str:
    lines = [f"{r['package']} (input {r['size']}): {r['frames']} mosaics of {r['frame']} px, "
             f"{r['truth']} truth boxes; {r['cores']} cores, threads "
             f"{r['threads'] or 'all'}; counted at the card's thresholds, found at IoU {IOU}",
             "| mode | forward passes / frame | p50 ms / frame | boxes counted | truth found | "
             "recall |", "|---|---|---|---|---|---|"]
    base = r["modes"][0]["p50_ms"]
    for m in r["modes"]:
        lines.append(f"| {m['mode']} | {m['tiles']} | {m['p50_ms']:.1f} "
                     f"({m['p50_ms'] / base:.1f}x) | {m['counted']} | {m['found']}/{r['truth']} "
                     f"| {m['recall']:.2f} |")
    return "\n".join(lines)
