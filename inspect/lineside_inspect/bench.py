"""``lineside bench model``: latency and throughput of a package through the edge runtime."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httptools
import numpy as np

from lineside_inspect.allocator import use_one_arena
from lineside_inspect.errors import BenchError
from lineside_inspect.imageio import IMAGE_SUFFIXES
from lineside_inspect.package import ModelCard
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.serve_process import stopped_at_exit, temp_directory

if TYPE_CHECKING:
    from lineside_inspect.references import Reference


def servable_card(package: str | Path) -> ModelCard:
    """``package``'s card, refused (:class:`PackageError`, one line) as a server loading it
    refuses it: a card whose own recipe (``default_recipe``, edited by hand) does not fit
    its model. ``bench model`` timed such a package for a minute, then read the recipe's
    tiling unchecked: a pydantic traceback (new-user review, session 52)."""
    from lineside_inspect.package import load_package
    from lineside_inspect.recipes import check_card_recipe

    card = load_package(package).card
    check_card_recipe(card, card.class_names)
    return card


def bench_model(package: str | Path, *, runs: int = 50, batches: list[int] | None = None,
                threads: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    use_one_arena()  # as lineside serve runs (see lineside_inspect.allocator)
    servable_card(package)  # before any timing
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


def tiling_note(package: str | Path) -> str | None:
    """A line for ``bench model``'s table when the package's card tiles frames (its default
    recipe's ``tiling``): the table's figures are then one forward pass, one tile, not a
    frame, which costs a pass per tile (new-user review, session 45: a 1600x1300 frame
    took 9 passes, ~16x the table's p50, and nothing said so)."""
    from lineside_inspect.errors import ImageTooLargeError
    from lineside_inspect.recipes import card_recipe
    from lineside_inspect.runtime.tiles import MAX_TILES, tile_origins

    own = card_recipe(servable_card(package)).tiling
    if own is None:
        return None
    try:  # as the server cuts it: a frame over MAX_TILES tiles is refused 413, not judged
        example = f"{len(tile_origins(2448, 2048, own) or [0])}"
    except ImageTooLargeError:
        example = f"refused, over {MAX_TILES} tiles"
    return (f"note: {package}'s card judges frames larger than {own.tile} px as {own.tile} px "
            f"tiles overlapping by {own.overlap:g}: the figures above are per tile (one forward "
            f"pass), a frame costs one per tile (a 2448x2048 frame: {example}); lineside bench "
            f"model {package} --mosaic DATASET times frames whole and tiled")


def single_image_package(package: str | Path, command: str) -> None:
    """Refuse, before any server starts, a package a benchmark that sends frames alone
    cannot run: a folder that is no package (the server's start-up failed in a thread or
    a child process: a traceback, or a wait that never ended), or a reference model (every
    frame refused for want of its golden image)."""
    from lineside_inspect.package import load_package

    card = load_package(package).card
    if card.needs_reference:
        raise BenchError(f"{package} is a reference model: lineside bench {command} sends frames "
                         "without a golden image, which it refuses; time it with lineside bench "
                         f"model {package} (--pairs DATASET: parts judged against their golden "
                         "image)")


BENCH_REFERENCE = "bench"  # the name bench server registers a reference model's golden under


def server_golden(package: str | Path, image_path: str | Path,
                  golden_path: str | Path | None) -> Reference | None:
    """The golden image (a :class:`~lineside_inspect.references.Reference`) every frame of
    ``lineside bench server`` is judged against, or None for a single-image model. A
    reference model refuses a frame alone, so the bench registers this golden on its
    servers as a user does (``PUT /v1/references``) and names it with each frame; by
    default the ``_temp`` twin of a DeepPCB-named ``*_test`` image, the sample's pair.
    Read before any server starts: a missing or unreadable golden is one line, not a
    minute of start-up and then every request refused."""
    from lineside_inspect.errors import ImageError
    from lineside_inspect.package import load_package
    from lineside_inspect.references import Reference

    card = load_package(package).card
    if not card.needs_reference:
        if golden_path is not None:
            raise BenchError(f"--golden {golden_path}: {package} is not a reference model, it "
                             "judges frames alone; leave --golden out")
        return None
    if golden_path is None:
        image = Path(image_path)
        twin = image.with_name(image.stem.removesuffix("_test") + "_temp" + image.suffix)
        if not image.stem.endswith("_test") or not twin.is_file():
            raise BenchError(f"{package} is a reference model: give the golden image of "
                             f"--image {image_path} with --golden PATH (the defect-free part "
                             "in the same view); only a DeepPCB *_test image finds its "
                             "*_temp golden by itself")
        golden_path = twin
    if not Path(golden_path).is_file():
        raise BenchError(f"--golden {golden_path}: no such file (the golden image every "
                         "frame is judged against)")
    try:
        return Reference.from_bytes(BENCH_REFERENCE, Path(golden_path).read_bytes())
    except ImageError as exc:
        raise BenchError(f"--golden {golden_path}: {exc.message}") from None


def _register_golden(url: str, golden: Reference) -> None:
    """``golden`` registered on the server at ``url`` as a user does: ``PUT
    /v1/references/NAME`` (the bench's servers run without keys, as a box does before
    its first)."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as c:
        _answered(c.put(f"/v1/references/{BENCH_REFERENCE}", content=golden.raw,
                        headers={"Content-Type": f"image/{golden.ext.replace('jpg', 'jpeg')}"}))


def camera_frames(folder: str | Path) -> Any:
    """The simulated camera's frames from ``folder``, or a clear error (a missing or empty
    folder was a ValueError's traceback)."""
    from lineside_inspect.cameras.simulator import folder_frames

    if not Path(folder).is_dir():
        raise BenchError(f"--frames {folder}: no such folder (a folder of images the simulated "
                         "camera streams)")
    try:
        return folder_frames(folder)
    except ValueError:
        raise BenchError(f"--frames {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it") \
            from None


def _answered(r: Any) -> None:
    """A trigger's answer, or the server's own words for why it failed (it was httpx's
    traceback)."""
    if r.status_code != 200:
        raise BenchError(f"{r.request.method} {r.request.url}: HTTP {r.status_code}: "
                         f"{r.text[:300]}")


def bench_camera(package: str | Path, frames_folder: str | Path, *, triggers: int = 40,
                 fps: float = 30.0) -> dict[str, Any]:
    """End-to-end trigger latency (trigger sent -> verdict received) and frame age at
    inspection, through a real server reading a simulated 30 fps MJPEG camera."""
    import threading

    import httpx
    import uvicorn

    from lineside_inspect.cameras.simulator import MJPEGSimulator
    from lineside_inspect.config import CameraConfig, Settings
    from lineside_inspect.server.app import create_app

    single_image_package(package, "camera")
    frames = camera_frames(frames_folder)
    use_one_arena()  # as lineside serve runs (see lineside_inspect.allocator)
    sim = MJPEGSimulator(frames, fps=fps)
    settings = Settings(models=[str(package)], device="cpu", threads=2,
                        cameras=[CameraConfig(id="bench", source=sim.url, stale_after_s=2)])
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not (server.started and app.state.ready):
            if not thread.is_alive():  # its start-up failed (logged): it will never be ready
                raise BenchError("the server did not start (its log above says why)")
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
                _answered(r)
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


def _serve_process(package: Path, data_dir: Path, *, store: bool, threads: int | None,
                   concurrency: int, model_roots: list[Path] | None = None) -> tuple[Any, str]:
    """``lineside serve`` in a child process (its own interpreter and GIL, as in
    production), on a free loopback port; returns (process, URL) once it is ready.
    ``model_roots``: the folders POST /v1/models may load from (default: ``package``'s)."""
    from lineside_inspect.serve_process import free_port, start

    port = free_port()
    env = {**os.environ, "LINESIDE_MODELS": json.dumps([str(package)]),
           "LINESIDE_DATA_DIR": str(data_dir),
           "LINESIDE_STORE": "true" if store else "false", "LINESIDE_DEVICE": "cpu",
           "LINESIDE_MAX_CONCURRENCY": str(concurrency), "LINESIDE_MAX_QUEUE": "64"}
    if model_roots is not None:
        env["LINESIDE_MODEL_ROOTS"] = json.dumps([str(r) for r in model_roots])
    if threads is not None:
        env["LINESIDE_THREADS"] = str(threads)
    return start(["serve", "--port", str(port)], port, env=env)


class _Answer:
    """One response read by httptools: its body, whether it is complete, and whether the
    connection stays open (known once the headers are in; llhttp forgets it after)."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.done = False
        self.keep_alive = False
        self.headers_done = False
        self.delimited = False  # a Content-Length or chunks say where the body ends
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()

    def closed(self) -> None:
        """The server closed the connection: the end of a body it did not delimit (HTTP/1.0
        style), else an answer cut short."""
        if not (self.headers_done and not self.delimited):
            raise ConnectionError("the server closed the connection mid-answer")
        self.done, self.keep_alive = True, False

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True


class _Line:
    """One keep-alive connection posting JPEGs, as a line PC would. The request goes out as
    one prepared HTTP/1.1 message and the answer is parsed by httptools (llhttp, in C, the
    parser uvicorn uses): this client costs ~0.5 ms less per request than the standard
    library's ``http.client`` (measured side by side on one server: overhead p50 5.48 vs
    5.00 ms), and on two shared cores whatever the client spends is measured as server
    overhead. httpx cost ~0.4 ms more again."""

    def __init__(self, url: str, timeout: float = 60.0, path: str = "/v1/inspect") -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.path = path  # with ?reference=NAME for a reference model
        self.sock: socket.socket | None = None
        self._image: bytes | None = None
        self._request = b""

    def inspect(self, image: bytes) -> tuple[int, bytes]:
        if image is not self._image:
            self._image, self._request = image, (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: image/jpeg\r\nContent-Length: {len(image)}\r\n\r\n"
            ).encode() + image
        try:
            if self.sock is None:
                self.sock = socket.create_connection((self.host, self.port), self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(self._request)
            answer = _Answer()
            while not answer.done:
                data = self.sock.recv(1 << 16)
                if data:
                    answer.parser.feed_data(data)
                else:
                    answer.closed()
            if not answer.keep_alive:
                self.close()
            return answer.parser.get_status_code(), b"".join(answer.body)
        except (OSError, httptools.HttpParserError) as exc:
            self.close()
            raise BenchError(f"http://{self.host}:{self.port}: the connection failed: "
                             f"{exc!r}") from None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _load(url: str, image: bytes, clients: int, seconds: float,
          path: str = "/v1/inspect") -> float:
    """Inspections per second with ``clients`` keep-alive connections sending back to back.
    A refused or failed request stops the measurement with the server's answer: a rate
    from fewer clients than asked would be wrong."""
    import threading

    stop = time.perf_counter() + seconds
    counts = [0] * clients
    failures: list[str] = []

    def client(i: int) -> None:
        line = _Line(url, path=path)
        try:
            while time.perf_counter() < stop and not failures:
                status, body = line.inspect(image)
                if status != 200:
                    failures.append(f"HTTP {status}: {body[:200].decode(errors='replace')}")
                    return
                counts[i] += 1
        except BenchError as exc:
            failures.append(exc.message)
        finally:
            line.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise BenchError(f"{url}: a request failed under {clients} clients: {failures[0]}")
    return sum(counts) / (time.perf_counter() - t0)


def bench_server(package: str | Path, image_path: str | Path, *, requests: int = 40,
                 seconds: float = 10.0, clients: tuple[int, ...] = (1, 4, 8),
                 threads: int | None = None, concurrency: int = 2,
                 rounds: int = 3, golden_path: str | Path | None = None) -> list[dict[str, Any]]:
    """What the server adds to the model, with the store on and off, side by side with
    the same package run back to back in this process:

    - overhead: per request, the round trip minus the ``infer`` time the server reports
      for that request (decode, preprocessing, HTTP, judging, store), p50 of ``requests``
      sequential requests on one keep-alive connection (a lean client, see
      :class:`_Line`);
    - throughput at each number of ``clients``, as a ratio of the in-process rate (decode
      + inspect back to back, one thread) measured just before it.

    A shared host's load changes from minute to minute, so nothing is measured in one
    block: both servers run from the start, and each of ``rounds`` rounds takes its share
    of every measurement in turn (in-process, store on, store off), each load beside its
    own in-process baseline. The figures are medians over the rounds.

    A reference model's frames are each judged against a golden image (``golden_path``,
    see :func:`server_golden`): registered once on each server and named with every
    request, as a station does, and given to the in-process runs too, so the overhead
    stays round trip minus the same inference."""

    from lineside_inspect.imageio import decode_image
    from lineside_inspect.inspector import inspect
    from lineside_inspect.recipes import Recipe

    golden = server_golden(package, image_path, golden_path)
    path = "/v1/inspect" if golden is None else f"/v1/inspect?reference={BENCH_REFERENCE}"
    use_one_arena()  # as lineside serve runs (see lineside_inspect.allocator)
    package = Path(package).resolve()
    image = Path(image_path).read_bytes()
    det = Detector(package, device="cpu", threads=threads)
    recipe = Recipe.model_validate({"name": "bench", "version": "1", "model": det.card.name,
                                    **det.card.default_recipe})
    infer: list[float] = []

    def in_process(span: float) -> float:
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < span:
            infer.append(inspect(decode_image(image, keep_grey=True), det, recipe,
                                 reference=golden).timings_ms["infer"])
            n += 1
        return n / (time.perf_counter() - t0)

    in_process(1.0)  # warm-up
    span = seconds / rounds
    stores = (True, False)
    # servers: stopped at the end, however it comes (a Ctrl-C or SIGTERM while they start too)
    with temp_directory("lineside-bench-") as tmp, stopped_at_exit():
        servers: dict[bool, tuple[Any, str]] = {}
        starting: dict[bool, Future[tuple[Any, str]]] = {}
        with ThreadPoolExecutor(len(stores)) as pool:  # both start at once
            starting.update({store: pool.submit(
                _serve_process, package, Path(tmp) / str(store), store=store,
                threads=threads, concurrency=concurrency) for store in stores})
            for store, future in starting.items():
                with contextlib.suppress(RuntimeError):  # raised again below
                    servers[store] = future.result()
            for future in starting.values():
                try:  # the first start that failed, once all are in servers
                    future.result()
                except RuntimeError as exc:
                    raise BenchError(str(exc)) from None
        if golden is not None:
            for _, url in servers.values():
                _register_golden(url, golden)
        overhead: dict[bool, list[float]] = {s: [] for s in stores}
        round_trip: dict[bool, list[float]] = {s: [] for s in stores}
        server_infer: dict[bool, list[float]] = {s: [] for s in stores}
        baseline: list[float] = []
        ratios: dict[tuple[bool, int], list[float]] = {}
        rates: dict[tuple[bool, int], list[float]] = {}
        for r in range(rounds):
            for store in stores:
                # a connection per round: one left idle through the loads would meet
                # the server's keep-alive timeout
                line = _Line(servers[store][1], path=path)
                try:
                    for i in range(-(-requests // rounds) + (5 if r == 0 else 0)):
                        t = time.perf_counter()
                        status, body = line.inspect(image)
                        rt = (time.perf_counter() - t) * 1000
                        if status != 200:
                            raise BenchError(f"{servers[store][1]}: HTTP {status}: "
                                               f"{body[:200].decode(errors='replace')}")
                        if r == 0 and i < 5:  # warm-up
                            continue
                        doc = json.loads(body)
                        assert doc["stored"] is store or doc["verdict"] == "pass"
                        round_trip[store].append(rt)
                        server_infer[store].append(doc["timings_ms"]["infer"])
                        overhead[store].append(rt - doc["timings_ms"]["infer"])
                finally:
                    line.close()
            for k in clients:
                for store in stores:
                    base = in_process(span)
                    rate = _load(servers[store][1], image, k, span, path)
                    baseline.append(base)
                    rates.setdefault((store, k), []).append(rate)
                    ratios.setdefault((store, k), []).append(rate / base)
    med = lambda xs: float(np.median(xs))  # noqa: E731
    return [{"store": store, "rounds": rounds,
             "round_trip_p50_ms": med(round_trip[store]),
             "infer_p50_ms": med(server_infer[store]),
             "overhead_p50_ms": med(overhead[store]),
             # each round's own p50: how far one round (a shorter run) can land from another
             "overhead_p50_range_ms": _spread([med(xs) for xs in _rounds(overhead[store], rounds)]),
             "in_process_infer_p50_ms": med(infer),
             "in_process_img_s": med(baseline),
             **{f"clients_{k}_img_s": med(rates[store, k]) for k in clients},
             **{f"clients_{k}_ratio": med(ratios[store, k]) for k in clients},
             **{f"clients_{k}_ratio_range": _spread(ratios[store, k]) for k in clients},
             "cores": os.cpu_count()} for store in stores]


def _rounds(xs: list[float], rounds: int) -> list[list[float]]:
    """``xs`` (measured round after round, the same number in each) cut into its rounds."""
    n = max(1, len(xs) // rounds)
    return [xs[i:i + n] for i in range(0, n * rounds, n) if xs[i:i + n]]


def _spread(xs: list[float]) -> tuple[float, float]:
    return (float(min(xs)), float(max(xs))) if xs else (math.nan, math.nan)


def format_server_rows(rows: list[dict[str, Any]], clients: tuple[int, ...] = (1, 4, 8)) -> str:
    cols = ["", *(f"store {'on' if r['store'] else 'off'}" for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def row(name: str, fmt: str, key: str) -> None:
        lines.append(f"| {name} | " + " | ".join(fmt.format(r[key]) for r in rows) + " |")

    row("round trip p50", "{:.1f} ms", "round_trip_p50_ms")
    row("server `infer` p50", "{:.1f} ms", "infer_p50_ms")
    lines.append("| **overhead p50** (round trip minus infer) | " + " | ".join(
        "**{:.1f} ms** (rounds {:.1f}-{:.1f})".format(r["overhead_p50_ms"],
                                                       *r["overhead_p50_range_ms"])
        for r in rows) + " |")
    row("in-process infer p50", "{:.1f} ms", "in_process_infer_p50_ms")
    row("in-process decode+inspect back to back", "{:.1f} img/s", "in_process_img_s")
    for k in clients:
        lines.append(f"| {k} client{'s' if k > 1 else ''} | " + " | ".join(
            f"{r[f'clients_{k}_img_s']:.1f} img/s = {r[f'clients_{k}_ratio']:.2f}x "
            "({:.2f}-{:.2f})".format(*r[f"clients_{k}_ratio_range"]) for r in rows) + " |")
    return "\n".join(lines) + (f"\n\n({rows[0]['cores']} cores; medians of {rows[0]['rounds']} "
                               "interleaved rounds, each ratio against its own in-process run; "
                               "in brackets the lowest and highest round: on a shared host one "
                               "round's figure can land anywhere in that range)")


def bench_line(package: str | Path, frames_folder: str | Path, *, triggers: int = 40,
               fps: float = 30.0) -> dict[str, Any]:
    """PLC trigger -> ``ResultReady`` over OPC UA and Modbus TCP, beside HTTP trigger ->
    verdict, in one run against one ``lineside serve`` process (its own interpreter, as
    in production) reading a simulated ``fps`` MJPEG camera. The three are interleaved
    round by round so they see the same load. The OPC UA client is told of ``ResultReady``
    by a subscription (pushed at once); the Modbus client polls it every millisecond (a
    fast PLC cycle; Modbus has no push), each poll one round trip."""
    import asyncio
    import json

    use_one_arena()  # as lineside serve runs (see lineside_inspect.allocator)
    try:
        from asyncua import Client, ua
        from pymodbus.client import AsyncModbusTcpClient
    except ImportError as exc:
        from lineside_inspect.errors import MissingExtraError, install_hint

        raise MissingExtraError(f"lineside bench line needs {exc.name}: {install_hint('line')}") \
            from None
    import logging

    import httpx

    from lineside_inspect.cameras.simulator import MJPEGSimulator
    from lineside_inspect.line.modbus import COILS
    from lineside_inspect.serve_process import free_ports

    logging.getLogger("asyncua").setLevel(logging.ERROR)  # the client's notes on revised timeouts

    single_image_package(package, "line")
    frames = camera_frames(frames_folder)
    opc_port, modbus_port = free_ports(2)
    endpoint = f"opc.tcp://127.0.0.1:{opc_port}/lineside/"
    sim = MJPEGSimulator(frames, fps=fps)
    line_env = {
        "LINESIDE_CAMERAS": json.dumps([{"id": "bench", "source": sim.url, "stale_after_s": 2}]),
        "LINESIDE_LINE": json.dumps({"opcua": {"endpoint": endpoint},
                                     "modbus": {"port": modbus_port}, "ack_timeout_s": 30}),
        "LINESIDE_STORE_PASS_RATE": "0"}
    saved = {k: os.environ.get(k) for k in line_env}
    http_ms: list[float] = []
    opc_ms: list[float] = []
    modbus_ms: list[float] = []

    async def until(read: Any, want: bool = True) -> None:
        deadline = time.monotonic() + 30
        while await read() != want:
            if time.monotonic() > deadline:
                raise BenchError("the PLC handshake did not answer within 30 s")
            await asyncio.sleep(0.001)

    async def run(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http, \
                Client(endpoint, timeout=30) as opc:
            while (await http.get("/v1/cameras")).json()[0]["state"] != "online":
                await asyncio.sleep(0.1)
            idx = await opc.get_namespace_index("urn:lineside")

            def node(tag: str) -> Any:
                return opc.get_node(f"ns={idx};s=Stations/bench/{tag}")

            async def opc_read(tag: str) -> Any:
                return await node(tag).read_value()

            mb = AsyncModbusTcpClient("127.0.0.1", port=modbus_port)
            await mb.connect()

            async def coil(name: str) -> bool:
                rr = await mb.read_coils(COILS.index(name), count=1, device_id=1)
                return bool(rr.bits[0])

            # OPC UA clients are told of ResultReady by a subscription (publishing interval
            # 0: each change is pushed at once) rather than by polling
            pushed = asyncio.Event()

            class OnResultReady:
                def datachange_notification(self, _node: Any, value: Any, _data: Any) -> None:
                    if value:
                        pushed.set()

            sub = await opc.create_subscription(0, OnResultReady())
            await sub.subscribe_data_change(node("ResultReady"))
            true = ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))
            try:
                for i in range(triggers + 3):
                    warm = i < 3
                    t = time.perf_counter()
                    r = await http.post("/v1/cameras/bench/trigger")
                    dt = (time.perf_counter() - t) * 1000
                    _answered(r)
                    if not warm:
                        http_ms.append(dt)
                    await asyncio.sleep(0.05)

                    await until(lambda: opc_read("TriggerReady"))
                    pushed.clear()
                    t = time.perf_counter()
                    await node("Trigger").write_value(true)
                    await asyncio.wait_for(pushed.wait(), 30)
                    dt = (time.perf_counter() - t) * 1000
                    if await opc_read("ErrorCode") != 0:
                        raise BenchError(f"OPC UA trigger failed: ErrorCode {await opc_read('ErrorCode')}")
                    if not warm:
                        opc_ms.append(dt)
                    await node("ResultAck").write_value(true)
                    await asyncio.sleep(0.05)

                    await until(lambda: coil("TriggerReady"))
                    t = time.perf_counter()
                    await mb.write_coil(COILS.index("Trigger"), True, device_id=1)
                    await until(lambda: coil("ResultReady"))
                    dt = (time.perf_counter() - t) * 1000
                    if await coil("Error"):
                        raise BenchError("Modbus trigger failed (Error coil set)")
                    if not warm:
                        modbus_ms.append(dt)
                    await mb.write_coil(COILS.index("ResultAck"), True, device_id=1)
                    await asyncio.sleep(0.05)
            finally:
                mb.close()
                await sub.delete()

    try:
        os.environ.update(line_env)
        # the server: stopped at the end, also on a Ctrl-C (SIGTERM) while it starts
        with temp_directory("lineside-bench-line-") as tmp, stopped_at_exit():
            _, url = _serve_process(Path(package).resolve(), Path(tmp), store=True,
                                    threads=None, concurrency=2)
            asyncio.run(run(url))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sim.kill()

    def pct(xs: list[float], q: int) -> float:
        return float(np.percentile(xs, q))

    return {"triggers": triggers, "stream_fps": fps, "cores": os.cpu_count(),
            **{f"{name}_p{q}_ms": pct(xs, q) for name, xs in
               (("http", http_ms), ("opcua", opc_ms), ("modbus", modbus_ms)) for q in (50, 95)}}


def rephotographed(image: np.ndarray, rng: np.random.Generator, max_shift: float = 2.0) -> np.ndarray:
    """``image`` as a second photograph of the same part might show it: shifted by up to
    ``max_shift`` px (sub-pixel), gain and offset changed, sensor noise, JPEG re-encoded."""
    from lineside_inspect.opencv import cv2

    h, w = image.shape[:2]
    dx, dy = rng.uniform(-max_shift, max_shift, 2)
    m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    out = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    out = out * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
    out += rng.normal(0, rng.uniform(1.5, 5.0), out.shape)
    encoded = cv2.imencode(".jpg", np.clip(out, 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))])[1]
    return np.asarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR))


def bench_pairs(package: str | Path, data: str | Path, *, parts: int = 40, align: bool = True,
                tolerance_px: int = 1, seed: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Good and defective parts judged side by side, with and without the unchanged gate
    (runtime/unchanged.py), through ``inspector.inspect`` as the server runs it.

    ``data`` is a dataset with references (defective images each with its template). Good
    parts are templates re-photographed (:func:`rephotographed`), defective ones the
    defective images re-photographed; each part is JPEG-encoded and its time counts the
    decode too. The gate's floor is calibrated on the good parts of half the groups and
    judged on the other half's. Returns per mode and kind: p50/p95 ms, and verdicts."""
    from lineside_inspect.dataset import read_dataset
    from lineside_inspect.imageio import decode_image, read_image
    from lineside_inspect.inspector import inspect
    from lineside_inspect.opencv import cv2
    from lineside_inspect.recipes import Recipe
    from lineside_inspect.references import Reference
    from lineside_inspect.runtime.unchanged import UnchangedGate, calibrate_floor

    det = Detector(package, device="cpu", threads=threads)
    if not det.needs_reference:
        raise BenchError(f"{package} is not a reference model: --pairs times parts judged "
                         "against their golden image; leave --pairs out to time this model")
    ds = read_dataset(data)
    recs = [r for r in ds.images if r.boxes and r.reference]
    if not recs:  # it said "no good frames to calibrate the unchanged gate from"
        raise BenchError(f"--pairs {data}: no defective image with a reference (golden image) "
                         "in it: a good part is its golden image re-photographed, a defective one "
                         "an image with boxes; give a dataset of pairs (images[].reference)")
    groups = sorted({r.group or r.file_name for r in recs})
    calib_groups = set(groups[::2])
    rng = np.random.default_rng(seed)

    def load(rec: Any) -> tuple[np.ndarray, np.ndarray]:
        ref_path = ds.reference_path(rec)
        assert ref_path is not None
        return read_image(ds.image_path(rec)), read_image(ref_path)

    calib_pairs = []
    for r in [r for r in recs if (r.group or r.file_name) in calib_groups][:parts]:
        _, ref = load(r)
        calib_pairs.append((rephotographed(ref, rng), ref))
    calib = calibrate_floor(calib_pairs, tolerance_px=tolerance_px)
    gate = UnchangedGate(floor=calib["floor"], tolerance_px=tolerance_px)
    held = [r for r in recs if (r.group or r.file_name) not in calib_groups][:parts]
    held_out = bool(held)
    if not held:  # one group: judged on the boards the floor was calibrated on (said so)
        held = recs[:parts]
    parts_: list[tuple[str, bytes, Reference]] = []
    for r in held:
        test, ref = load(r)
        reference = Reference.from_bytes("golden", cv2.imencode(".png", ref)[1].tobytes(), image=ref)
        for kind, img in (("good", rephotographed(ref, rng)), ("defective", rephotographed(test, rng))):
            parts_.append((kind, cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(),
                           reference))
    out: dict[str, Any] = {"package": str(package), "parts": len(held), "calibration": calib,
                           "align": align, "held_out": held_out}
    for mode, g in (("detector always", None), ("unchanged gate", gate)):
        recipe = Recipe(name="bench", model=det.card.name, align_reference=align, unchanged_gate=g)
        for _ in range(3):  # warm up
            inspect(decode_image(parts_[0][1]), det, recipe, reference=parts_[0][2])
        times: dict[str, list[float]] = {"good": [], "defective": []}
        fails = {"good": 0, "defective": 0}
        skipped = {"good": 0, "defective": 0}
        for kind, encoded, reference in parts_:
            t = time.perf_counter()
            result = inspect(decode_image(encoded), det, recipe, reference=reference)
            times[kind].append(time.perf_counter() - t)
            fails[kind] += result.verdict == "fail"
            skipped[kind] += bool(result.gate is not None and result.gate.unchanged)
        out[mode] = {kind: {"p50_ms": float(np.percentile(v, 50) * 1000),
                            "p95_ms": float(np.percentile(v, 95) * 1000),
                            "fail": fails[kind], "detector_skipped": skipped[kind], "n": len(v)}
                     for kind, v in times.items()}
    return out


def format_pairs(r: dict[str, Any]) -> str:
    where = ("held-out groups" if r.get("held_out", True) else
             "the groups the floor was calibrated on: the dataset has one group")
    lines = [f"{r['package']}: {r['parts']} good and {r['parts']} defective parts ({where}), "
             f"align {r['align']}; gate floor {r['calibration']['floor']} from "
             f"{r['calibration']['good_pairs']} good parts",
             "| mode | part | p50 ms | p95 ms | failed | detector skipped |", "|---|---|---|---|---|---|"]
    for mode in ("detector always", "unchanged gate"):
        for kind, v in r[mode].items():
            lines.append(f"| {mode} | {kind} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} | "
                         f"{v['fail']}/{v['n']} | {v['detector_skipped']}/{v['n']} |")
    return "\n".join(lines)
