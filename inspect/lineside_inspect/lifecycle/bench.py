"""``lineside bench shadow``: the verdict latency of the active model with and without a
shadow model, under load, against a ``lineside serve`` process (its own interpreter, as in
production).

Two loads, each run in rounds alternating shadow off and on so both see the same machine:

- *line rate*: one client sending a frame every ``1 / rate_hz`` s (a camera on a line,
  leaving spare capacity the shadow may use);
- *saturated*: ``clients`` clients sending back to back (no spare capacity: the shadow
  should get little or nothing, and the verdicts should not notice it).

With ``fused_with`` (a good-only package) the frames are judged under a recipe fusing the
active detector with that good-only model (the detector's default recipe with
``anomaly.model`` set), and the shadow may be a version of either: of the detector (judged
beside the served good-only finding) or of the good-only partner (its process runs only
the candidate and fuses its finding with the served detections), as on a line.

Reported per load and state: requests, round-trip p50/p95/p99, what the shadow did in
that time (frames offered, compared, dropped because it was busy), and on/off ratios of
the same run. A figure, not an assertion: the machine's other work moves it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineside_inspect.errors import ConfigError
from lineside_inspect.imageio import IMAGE_SUFFIXES
from lineside_inspect.serve_process import stopped_at_exit, temp_directory

if TYPE_CHECKING:
    import httpx

    from lineside_inspect.package import ModelCard

_COUNTS = ("offered", "compared", "dropped", "errors")
FUSED_RECIPE = "bench-fused"
WARM_UP_FRAMES = 8
SETTLE_S = 10.0  # the longest wait for the shadow's queued frames after a phase


@dataclass
class _Phase:
    load: str
    on: bool
    ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    shadow: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))


def _ok(r: httpx.Response, what: str) -> httpx.Response:
    """``r`` when the bench's server took ``what``; else one line saying what it answered
    (:class:`ConfigError`: the bench's inputs are what it refused), not an httpx traceback."""
    if r.is_success:
        return r
    try:
        said = str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        said = r.text[:200]
    raise ConfigError(f"the bench's server refused {what} ({r.status_code}): {said}")


def _send(url: str, images: list[bytes], *, seconds: float, clients: int,
          interval_s: float | None, recipe: str | None = None) -> list[float]:
    """Round trips (ms) of ``clients`` clients over ``seconds``; each waits ``interval_s``
    between sends (None: back to back); ``recipe``: the recipe the frames name."""
    import httpx

    stop = time.perf_counter() + seconds
    times: list[list[float]] = [[] for _ in range(clients)]
    failed: list[httpx.Response] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            n, sent = i, 0
            start = time.perf_counter()
            while time.perf_counter() < stop:
                if interval_s is not None:
                    # the k-th send is due at start + k x interval (a sum of intervals drifted
                    # under the round's end: 10 x 0.05 s made an 11th send in 0.5 s)
                    next_at = start + sent * interval_s
                    if next_at >= stop:  # a send due after the round's end is not in it
                        break
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                sent += 1
                t = time.perf_counter()
                r = c.post("/v1/inspect", content=images[n % len(images)],
                           params={"recipe": recipe} if recipe else None,
                           headers={"content-type": "image/jpeg"})
                if not r.is_success:  # said once all clients stopped, not in a thread
                    failed.append(r)
                    return
                times[i].append((time.perf_counter() - t) * 1000)
                n += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        _ok(failed[0], "a frame")
    return [x for ts in times for x in ts]


def _checked(package: str | Path, shadow: str | Path, fused_with: str | Path | None,
             ) -> tuple[ModelCard, ModelCard, ModelCard | None]:
    """The cards of the active package, the shadow and the fused good-only partner (None),
    or one clear line: before the server starts, a missing package was its child's exit in
    a traceback, and a shadow of another model (or the active version itself) the shadow
    route's 4xx."""
    from lineside_inspect.bench import single_image_package
    from lineside_inspect.errors import BenchError
    from lineside_inspect.package import read_card

    single_image_package(package, "shadow")
    single_image_package(shadow, "shadow")
    active_card, shadow_card = read_card(Path(package)), read_card(Path(shadow))
    partner = None
    if fused_with is not None:
        single_image_package(fused_with, "shadow")
        partner = read_card(Path(fused_with))
        if partner.kind != "anomaly":
            raise BenchError(f"--fused-with {fused_with} is {partner.kind} {partner.name}, not a "
                             "good-only (anomaly) package: it names the good-only model the "
                             "recipe fuses with the active detector")
        if active_card.kind != "detector":
            raise BenchError(f"{package} is the good-only model {active_card.name}: --fused-with "
                             "fuses a good-only package with the active detector; give a "
                             "detector package")
    if shadow_card.name == active_card.name:
        served = active_card
    elif partner is not None and shadow_card.name == partner.name:
        served = partner
    elif partner is not None:
        raise BenchError(f"--shadow {shadow} is model {shadow_card.name}, neither {package}'s "
                         f"{active_card.name} nor --fused-with {fused_with}'s {partner.name}: a "
                         "shadow is another version of one of the recipe's two models")
    else:
        raise BenchError(f"--shadow {shadow} is model {shadow_card.name}, {package} is "
                         f"{active_card.name}: a shadow is another version of the active model")
    if shadow_card.version == served.version:
        which = package if served is active_card else f"--fused-with {fused_with}"
        raise BenchError(f"--shadow {shadow} is version {shadow_card.version} of "
                         f"{shadow_card.name}, the version {which} is: give another version")
    return active_card, shadow_card, partner


def bench_shadow(package: str | Path, shadow: str | Path, frames: str | Path, *,
                 seconds: float = 10.0, rounds: int = 2, rate_hz: float = 4.0, clients: int = 2,
                 sample_rate: float = 1.0, threads: int | None = None,
                 fused_with: str | Path | None = None) -> list[dict[str, Any]]:
    import httpx

    from lineside_inspect.bench import _serve_process
    from lineside_inspect.errors import BenchError

    images = [p.read_bytes() for p in sorted(Path(frames).rglob("*"))
              if p.suffix.lower() in IMAGE_SUFFIXES][:40]
    if not images:
        raise BenchError(f"--frames {frames}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    active_card, shadow_card, partner = _checked(package, shadow, fused_with)
    recipe = None if partner is None else FUSED_RECIPE
    judged = (f"{active_card.name} {active_card.version}" if partner is None else
              f"{active_card.name} {active_card.version} fused with {partner.name} {partner.version}")
    loads = {"line rate": (1, 1.0 / rate_hz), "saturated": (clients, None)}
    rows = {(load, on): _Phase(load, on) for load in loads for on in (False, True)}
    # the server: stopped at the end, also on a Ctrl-C (SIGTERM) while it starts
    with temp_directory("lineside-bench-shadow-") as tmp, stopped_at_exit():
        # the shadow and the partner are loaded over the API: from their folders, wherever
        # they are (a shadow outside the active package's models/ folder was a 403 traceback)
        roots = [Path(p).resolve().parent.parent for p in (package, shadow, fused_with)
                 if p is not None]
        _, url = _serve_process(Path(package).resolve(), Path(tmp), store=True, threads=threads,
                                concurrency=2, model_roots=list(dict.fromkeys(roots)))
        with httpx.Client(base_url=url, timeout=60) as c:
            if partner is not None:
                # the partner first: its first version loaded is its active one (a shadow of
                # it loaded before would be), then the detector's default recipe fusing it
                _ok(c.post("/v1/models", json={"path": str(Path(str(fused_with)).resolve()),
                                               "activate": True}), "the --fused-with package")
                rules = next(({k: v for k, v in r.items() if k not in ("default", "put_over_api")}
                              for r in c.get("/v1/recipes").json()
                              if r["default"] and r["model"] == active_card.name),
                             {"model": active_card.name})
                _ok(c.put(f"/v1/recipes/{FUSED_RECIPE}", json={
                    **rules, "name": FUSED_RECIPE, "anomaly": {"model": partner.name}}),
                    "the recipe fusing the detector with the --fused-with package")
            _ok(c.post("/v1/models", json={"path": str(Path(shadow).resolve()),
                                           "activate": False}), "the --shadow package")
            # warm-up: the first frames allocate the runtime's buffers (and, fused, run the
            # partner for the first time); a few back to back, not timed
            for image in images[:WARM_UP_FRAMES]:
                _ok(c.post("/v1/inspect", content=image, params={"recipe": recipe} if recipe
                           else None, headers={"content-type": "image/jpeg"}), "a frame")
            name = shadow_card.name

            def counts() -> dict[str, int]:
                doc = c.get(f"/v1/models/{name}/shadow").json()
                return {k: int(doc.get(k) or 0) for k in _COUNTS}

            def settled() -> dict[str, int]:
                """The counts once every frame offered has ended (compared, dropped or an
                error): what was queued at the phase's end finishes. Bounded: a shadow that
                stops answering leaves its frames offered and not compared."""
                deadline = time.monotonic() + SETTLE_S
                while True:
                    now = counts()
                    if now["offered"] <= now["compared"] + now["dropped"] + now["errors"] \
                            or time.monotonic() > deadline:
                        return now
                    time.sleep(0.05)

            for _ in range(rounds):
                for load, (n, interval) in loads.items():
                    for on in (False, True):
                        if on:
                            _ok(c.post(f"/v1/models/{name}/shadow", json={
                                "version": shadow_card.version, "sample_rate": sample_rate,
                                "force": True, "reason": "lineside bench shadow"}),
                                "the shadow's start")
                        before = counts() if on else None
                        row = rows[(load, on)]
                        row.ms += _send(url, images, seconds=seconds, clients=n,
                                        interval_s=interval, recipe=recipe)
                        row.seconds += seconds
                        if on:
                            after = settled()
                            assert before is not None
                            for k in _COUNTS:
                                row.shadow[k] += after[k] - before[k]
                            _ok(c.delete(f"/v1/models/{name}/shadow"), "the shadow's stop")
    return [{"load": r.load, "shadow": r.on, **r.shadow, "requests": len(r.ms),
             "img_s": len(r.ms) / r.seconds, "p50_ms": float(np.percentile(r.ms, 50)),
             "p95_ms": float(np.percentile(r.ms, 95)), "p99_ms": float(np.percentile(r.ms, 99)),
             "cores": os.cpu_count(), "rate_hz": rate_hz, "clients": clients,
             "sample_rate": sample_rate, "judged": judged,
             "shadow_of": f"{shadow_card.name} {shadow_card.version}"} for r in rows.values()]


def format_shadow_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| load | shadow | requests | img/s | round trip p50 | p95 | p99 | shadow compared / "
             "offered (dropped) |", "|---|---|---|---|---|---|---|---|"]
    by_load: dict[str, dict[bool, dict[str, Any]]] = {}
    for r in rows:
        shadow = (f"{r['compared']} / {r['offered']} ({r['dropped']})" if r["shadow"] else "-")
        if r["shadow"] and r.get("errors"):
            shadow += f", {r['errors']} errors"
        load = (f"line rate ({r['rate_hz']:g} Hz, 1 client)" if r["load"] == "line rate"
                else f"saturated ({r['clients']} clients)")
        by_load.setdefault(load, {})[r["shadow"]] = r
        lines.append(f"| {load} | {'on' if r['shadow'] else 'off'} | {r['requests']} | "
                     f"{r['img_s']:.1f} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | "
                     f"{r['p99_ms']:.1f} ms | {shadow} |")
    lines.append("")
    for load, both in by_load.items():  # the same run's off rounds are the baseline
        if False in both and True in both:
            off, on = both[False], both[True]
            lines.append(f"{load}: shadow on / off p50 {on['p50_ms'] / off['p50_ms']:.2f}x, "
                         f"p95 {on['p95_ms'] / off['p95_ms']:.2f}x, "
                         f"p99 {on['p99_ms'] / off['p99_ms']:.2f}x")
    r0 = rows[0]
    return "\n".join(lines) + (f"\n\n(judged by {r0['judged']}, shadow {r0['shadow_of']}, sample "
                               f"rate {r0['sample_rate']:g}, {r0['cores']} cores; rounds "
                               "alternate off and on)")
