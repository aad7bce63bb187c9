"""The hub's review-list latency, for ``lineside bench hub``: a database holding as many
inspections as a plant's boxes forward (100,000 by default, bulk-inserted directly: the
figure is about reading them), then ``GET /v1/inspections`` timed on a running hub as
reviewers use it — the unreviewed fails, and narrowed to a site, a line, a box, a camera.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, insert

from lineside_inspect.store.models import InspectionRow

CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
# what a reviewer asks the hub for: (name, query parameters)
QUERIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("unreviewed fails", {"verdict": "fail", "review_state": "unreviewed"}),
    ("all, newest first", {}),
    ("site", {"site": "plant-b", "verdict": "fail", "review_state": "unreviewed"}),
    ("line", {"line": "line-2", "verdict": "fail", "review_state": "unreviewed"}),
    ("box", {"box_id": "box-3", "verdict": "fail", "review_state": "unreviewed"}),
    ("camera", {"camera_id": "cam2", "verdict": "fail", "review_state": "unreviewed"}),
)


def synthetic_records(n: int, *, boxes: int = 3, sites: int = 2, box_id: str | None = None,
                      site: str | None = None, line: str | None = None,
                      now: datetime | None = None, fail_every: int = 10,
                      seed: int = 0) -> list[dict[str, Any]]:
    """``n`` inspection rows as the store keeps them, one every 10 s back from ``now``,
    spread over ``boxes`` boxes (box-1..N, each its own line, over ``sites`` sites) unless
    ``box_id``/``site``/``line`` pin them; every ``fail_every``-th one a fail."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    out = []
    for i in range(n):
        b = i % boxes + 1
        fail = i % fail_every == 0
        labels = sorted({rng.choice(CLASSES) for _ in range(rng.choice((1, 1, 2)))}) if fail else []
        defects = [{"label": lb, "score": 0.8, "box": [100.0, 100.0, 140.0, 130.0]} for lb in labels]
        out.append({
            "id": uuid.UUID(int=rng.getrandbits(128)).hex, "created_at": now - timedelta(seconds=10 * i),
            "camera_id": f"cam{i % 4 + 1}", "part_id": f"SN{i:07d}", "recipe_name": "deeppcb",
            "recipe_version": "1", "model_name": "deeppcb", "model_version": "1",
            "model_sha256": "0" * 64, "class_names": CLASSES, "verdict": "fail" if fail else "pass",
            "reasons": [{"rule": "critical", "label": labels[0], "count": 1, "allowed": 0,
                         "message": f"{labels[0]}: critical"}] if fail else [],
            "defects": defects, "labels": "," + ",".join(labels) + "," if labels else "",
            "max_score": 0.8 if fail else 0.0,
            "timings_ms": {"decode": 2.0, "preprocess": 0.5, "infer": 30.0, "postprocess": 0.3,
                           "total": 33.0},
            "image_path": None, "width": 640, "height": 640, "image_bytes": 0,
            "review_state": "unreviewed", "box_id": box_id or f"box-{b}",
            "site": site or f"plant-{'ab'[b % sites]}", "line": line or f"line-{b}"})
    return out


def synthetic_rows(n: int, **kw: Any) -> list[InspectionRow]:
    """:func:`synthetic_records` as ORM rows."""
    return [InspectionRow(**r) for r in synthetic_records(n, **kw)]


def seed_inspections(engine: Engine, n: int, *, batch: int = 5000, **kw: Any) -> float:
    """Bulk-insert ``n`` synthetic inspections (tables must exist); seconds it took."""
    started = time.perf_counter()
    records = synthetic_records(n, **kw)
    with engine.begin() as conn:
        for start in range(0, n, batch):
            conn.execute(insert(InspectionRow), records[start:start + batch])
    return time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def review_list_latency(client: httpx.Client, *, rounds: int = 30, limit: int = 24,
                        queries: tuple[tuple[str, dict[str, str]], ...] = QUERIES,
                        ) -> list[dict[str, Any]]:
    """p50/p95 of ``GET /v1/inspections`` (a page of ``limit``, as the review page asks)
    per query, rounds interleaved so no query gets the warm cache alone; ``client``
    carries the hub's URL and a reviewer key."""
    times: dict[str, list[float]] = {name: [] for name, _ in queries}
    totals: dict[str, int] = {}
    for _name, params in queries:  # one warm-up each
        client.get("/v1/inspections", params={**params, "limit": limit}).raise_for_status()
    for _ in range(rounds):
        for name, params in queries:
            t = time.perf_counter()
            resp = client.get("/v1/inspections", params={**params, "limit": limit})
            times[name].append(1000 * (time.perf_counter() - t))
            resp.raise_for_status()
            totals[name] = int(resp.json()["total"])
    return [{"query": name, "matching": totals[name], "p50_ms": round(statistics.median(times[name]), 1),
             "p95_ms": round(_percentile(times[name], 0.95), 1)} for name, _ in queries]


def format_latency(rows: list[dict[str, Any]], n: int) -> str:
    lines = [f"hub review list, {n:,} inspections in the database (GET /v1/inspections, 24 a page)",
             f"{'query':<20} {'matching':>9} {'p50 ms':>8} {'p95 ms':>8}"]
    lines += [f"{r['query']:<20} {r['matching']:>9,} {r['p50_ms']:>8} {r['p95_ms']:>8}" for r in rows]
    return "\n".join(lines)
