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
    ("busy box", {"box_id": "box-1", "verdict": "fail", "review_state": "unreviewed"}),
    ("quiet box", {"box_id": "box-3", "verdict": "fail", "review_state": "unreviewed"}),
    ("quiet box, all", {"box_id": "box-3"}),
    ("camera", {"camera_id": "cam2", "verdict": "fail", "review_state": "unreviewed"}),
    ("site, camera", {"site": "plant-a", "camera_id": "cam3"}),
)
# boxes' shares of the inspections: two busy lines and a quiet one (box-1, box-2, box-3)
SHARES = (0.49, 0.49, 0.02)


def synthetic_records(n: int, *, shares: tuple[float, ...] = SHARES, box_id: str | None = None,
                      site: str | None = None, line: str | None = None,
                      now: datetime | None = None, fail_every: int = 10,
                      seed: int = 0) -> list[dict[str, Any]]:
    """``n`` inspection rows as the store keeps them, one every 10 s back from ``now``,
    spread over boxes box-1..N by ``shares`` (each its own line; odd boxes at site
    plant-a, even ones at plant-b) unless ``box_id``/``site``/``line`` pin them; four
    cameras each; about one in ``fail_every`` a fail."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    out = []
    for i in range(n):
        b = rng.choices(range(1, len(shares) + 1), shares)[0]
        fail = rng.random() < 1 / fail_every
        labels = sorted({rng.choice(CLASSES) for _ in range(rng.choice((1, 1, 2)))}) if fail else []
        defects = [{"label": lb, "score": 0.8, "box": [100.0, 100.0, 140.0, 130.0]} for lb in labels]
        out.append({
            "id": uuid.UUID(int=rng.getrandbits(128)).hex, "created_at": now - timedelta(seconds=10 * i),
            "camera_id": f"cam{rng.randrange(4) + 1}", "part_id": f"SN{i:07d}", "recipe_name": "deeppcb",
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
            "site": site or f"plant-{'ba'[b % 2]}", "line": line or f"line-{b}"})
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


def bench_review_list(database_url: str, *, n: int = 100_000, rounds: int = 30,
                      objects: dict[str, Any] | None = None, seed_rows: bool = True,
                      workdir: str | None = None) -> dict[str, Any]:
    """The figure of ``lineside bench hub``'s review list: ``n`` inspections bulk-inserted
    into ``database_url`` (an empty PostgreSQL database: the hub makes its tables), a real
    ``lineside hub`` process on it, and :func:`review_list_latency` from this process.
    ``objects``: the hub's object store settings (not touched by the list; by default a
    loopback port nobody listens on)."""
    import shutil
    import tempfile
    from pathlib import Path

    import yaml
    from sqlalchemy import create_engine, text

    from lineside_inspect.serve_process import free_port, interrupts_held, start, stopped_at_exit

    port = free_port()
    key = uuid.uuid4().hex
    made: Path | None = None
    try:
        # a SIGTERM (Ctrl-C) as mkdtemp returned, or while hub.yaml was written, left the
        # folder behind: held until its name is kept, then raised inside this try
        if workdir:
            folder = Path(workdir)
        else:
            with interrupts_held():
                folder = made = Path(tempfile.mkdtemp(prefix="lineside-bench-hub-"))
        (folder / "hub.yaml").write_text(yaml.safe_dump({
            "database_url": database_url, "data_dir": str(folder / "hub-data"), "port": port,
            "objects": objects or {"endpoint": "127.0.0.1:9", "access_key": "x",
                                   "secret_key": "x", "timeout_s": 1},
            "api_keys": [{"name": "bench", "role": "reviewer", "key": key}]}))
        with stopped_at_exit():  # the hub, also on a Ctrl-C (SIGTERM) while it starts
            # ready once the hub has made its tables
            _, url = start(["hub", "--config", str(folder / "hub.yaml")], port,
                           log=folder / "hub.log")
            with httpx.Client(base_url=url, timeout=60,
                              headers={"Authorization": f"Bearer {key}"}) as client:
                engine = create_engine(database_url)
                seeded = seed_inspections(engine, n) if seed_rows else 0.0
                # what autovacuum does to a table that filled up: statistics for the planner, the
                # visibility map for index-only counts
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM ANALYZE inspections"))
                    held = int(conn.execute(text("SELECT count(*) FROM inspections")).scalar() or 0)
                engine.dispose()
                rows = review_list_latency(client, rounds=rounds)
    finally:
        if made is not None:  # the hub's folder was ours: it held a log and nothing kept
            shutil.rmtree(made, ignore_errors=True)
    return {"inspections": held, "seed_s": round(seeded, 1), "rounds": rounds, "queries": rows}


def bench_review_list_on_server(database_url: str, *, n: int = 100_000, rounds: int = 30,
                                objects: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`bench_review_list` in a database of its own, made on ``database_url``'s
    PostgreSQL server (the role needs CREATEDB) and dropped afterwards: a hub's own
    records are never touched."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError("the review-list benchmark needs a PostgreSQL database_url")
    name = f"lineside_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            return bench_review_list(url.set(database=name).render_as_string(hide_password=False),
                                     n=n, rounds=rounds, objects=objects)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
