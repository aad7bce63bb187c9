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


def bench_camera(package: str | Path, frames_folder: str | Path, *, triggers: int = 40,
                 fps: float = 30.0) -> dict[str, Any]:
    """End-to-end trigger latency (trigger sent -> verdict received) and frame age at
    inspection, through a real server reading a simulated 30 fps MJPEG camera."""
    import threading

    import httpx
    import uvicorn

    from lineside_inspect.cameras.simulator import MJPEGSimulator, folder_frames
    from lineside_inspect.config import CameraConfig, Settings
    from lineside_inspect.server.app import create_app

    sim = MJPEGSimulator(folder_frames(frames_folder), fps=fps)
    settings = Settings(models=[str(package)], device="cpu", threads=2,
                        cameras=[CameraConfig(id="bench", source=sim.url, stale_after_s=2)])
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not (server.started and app.state.ready):
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        latency, age, wait = [], [], []
        with httpx.Client(base_url=url, timeout=30) as c:
            while c.get("/v1/cameras").json()[0]["state"] != "online":
                time.sleep(0.1)
            for i in range(triggers + 3):
                t = time.perf_counter()
                r = c.post("/v1/cameras/bench/trigger")
                dt = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                if i >= 3:  # warm-up
                    doc = r.json()
                    latency.append(dt)
                    age.append(doc["frame_age_ms"])
                    wait.append(doc["trigger_to_frame_ms"])
                time.sleep(0.05)
    finally:
        server.should_exit = True
        thread.join(10)
        sim.kill()
    return {"triggers": triggers, "stream_fps": fps, "cores": os.cpu_count(),
            "latency_p50_ms": float(np.percentile(latency, 50)),
            "latency_p95_ms": float(np.percentile(latency, 95)),
            "frame_age_p50_ms": float(np.percentile(age, 50)),
            "frame_age_p95_ms": float(np.percentile(age, 95)),
            "trigger_to_frame_p50_ms": float(np.percentile(wait, 50))}
