"""``lineside bench model``: latency and throughput of a package through the edge runtime."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lineside_inspect.runtime.detector import Detector


def bench_model(package: str | Path, *, runs: int = 50, batches: list[int] | None = None,
                threads: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for th in threads:
        det = Detector(package, device="cpu", threads=th)
        size = det.size
        x1 = rng.integers(0, 255, (1, 3, size, size), dtype=np.uint8)
        for _ in range(5):
            det.forward(x1)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            det.forward(x1)
            times.append(time.perf_counter() - t)
        best = (0.0, 1)
        for b in batches or [1, 2, 4, 8]:
            xb = rng.integers(0, 255, (b, 3, size, size), dtype=np.uint8)
            det.forward(xb)
            n = max(3, runs // (2 * b))
            t = time.perf_counter()
            for _ in range(n):
                det.forward(xb)
            ips = n * b / (time.perf_counter() - t)
            best = max(best, (ips, b))
        rows.append({"package": str(package), "precision": det.card.precision, "threads": th,
                     "size": size, "p50_ms": float(np.percentile(times, 50) * 1000),
                     "p95_ms": float(np.percentile(times, 95) * 1000),
                     "best_img_s": best[0], "best_batch": best[1], "cores": os.cpu_count()})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = "| package | precision | threads | input | p50 ms | p95 ms | img/s (best batch) |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['package']} | {r['precision']} | {r['threads']} | {r['size']} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['best_img_s']:.1f} "
                     f"(b{r['best_batch']}) |")
    return "\n".join(lines)
