"""Does a ``lineside serve`` left running leak? A soak of one real server process with
everything a line box does at once, sampling what would grow if something leaked.

The server (its own interpreter, as in production) runs with the store on SQLite under a
small quota (retention runs all the time), a simulated MJPEG camera in continuous mode and
a folder camera that is triggered, and the line outputs: events to a real mosquitto, the
PLC handshake on OPC UA and Modbus TCP. A client sends inspections and reviews at a steady
rate and triggers the camera; every ``--swap-every`` seconds the int8 version of the model
is loaded and activated over ``POST /v1/models`` and the fp32 one activated again; every
``--drop-every`` seconds the MJPEG camera's stream is killed for a few seconds and comes
back; every sample a Modbus and an OPC UA client connect, read and leave. With
``--versions N`` each swap instead loads and activates the next of N copies of
``models/deeppcb/1`` (each its own version, its card naming it; the N-th swap is followed
by the first again) and prints the server's RSS, fds, threads and loaded versions after
it: what a box that takes a new version every day does over months (``--keep-loaded``
sets the server's bound). Every
``--interval`` seconds it prints (and appends to ``--csv``) the server's RSS, open file
descriptors, threads, SQLite database / -wal / -journal sizes, image folder size and a few
of ``/metrics``'s figures. Usage (``make soak``; the venv's Python, PYTHONPATH=inspect)::

    python tools/soak.py [--seconds 900] [--interval 10] [--csv soak.csv]
    python tools/soak.py --versions 40 --swap-every 10 [--keep-loaded 3]

Needs mosquitto (``make system-deps``) and the line extra (asyncua, pymodbus). Loopback
only; it stops by itself after ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from lineside_inspect.bench import camera_frames
from lineside_inspect.cameras.simulator import MJPEGSimulator
from lineside_inspect.serve_process import LINESIDE, free_ports, wait_ready

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = Path("/usr/sbin/mosquitto")


def proc_figures(pid: int) -> dict[str, int]:
    """RSS (kB), open file descriptors and threads of process ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def fd_targets(pid: int) -> dict[str, int]:
    """What the open file descriptors point at, by kind (socket, pipe, a file's suffix)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kind = target.split(":")[0] if ":" in target else Path(target).suffix or target
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (all labels) in ``text``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def version_copies(model: Path, root: Path, count: int) -> list[Path]:
    """``count`` copies of the package ``model`` under ``root``/NAME/soak-K, each with its
    own version in its card (the graph is the same, so its sha256 still matches; hard links
    where the file system allows, so 40 copies take no room)."""
    card = json.loads((model / "model.json").read_text())
    copies = []
    for k in range(1, count + 1):
        folder = root / card["name"] / f"soak-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for member in model.iterdir():
            if member.name != "model.json" and not (folder / member.name).exists():
                try:
                    os.link(member, folder / member.name)
                except OSError:
                    shutil.copyfile(member, folder / member.name)
        (folder / "model.json").write_text(json.dumps({**card, "version": f"soak-{k}"}))
        copies.append(folder)
    return copies


def slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of ``points`` (x, y); 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def start_mosquitto(port: int, folder: Path) -> subprocess.Popen[bytes]:
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    + ("user root\n" if os.getuid() == 0 else ""))
    proc = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def plc_visit(opc_endpoint: str, modbus_port: int) -> None:
    """A PLC that connects, reads and leaves, over each protocol."""
    from asyncua import Client
    from pymodbus.client import AsyncModbusTcpClient

    async def visit() -> None:
        async with Client(opc_endpoint, timeout=10) as opc:
            await opc.get_namespace_index("urn:lineside")
        mb = AsyncModbusTcpClient("127.0.0.1", port=modbus_port)
        await mb.connect()
        await mb.read_coils(0, count=16, device_id=1)
        mb.close()

    logging.getLogger("asyncua").setLevel(logging.ERROR)  # its notes on revised timeouts
    with contextlib.suppress(Exception):  # a visit that failed is the server's to log
        asyncio.run(visit())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=900)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--rate", type=float, default=4, help="client inspections per second")
    ap.add_argument("--swap-every", type=float, default=60)
    ap.add_argument("--drop-every", type=float, default=45)
    ap.add_argument("--quota-mb", type=float, default=4)
    ap.add_argument("--versions", type=int, default=0, help=(
        "swap through this many versions of the model, one new one loaded and activated "
        "at each swap (default: 0, the int8 and fp32 versions back and forth)"))
    ap.add_argument("--keep-loaded", type=int, default=None,
                    help="the server's keep_loaded (default: its own)")
    ap.add_argument("--port-base", type=int, default=0,
                    help="first of 5 loopback ports to use (default: free ones)")
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="data folder (default: a temporary one)")
    args = ap.parse_args()

    ports = (list(range(args.port_base, args.port_base + 5)) if args.port_base
             else free_ports(5))
    http_port, mqtt_port, opc_port, modbus_port, cam_port = ports
    tmp = tempfile.TemporaryDirectory(prefix="lineside-soak-")
    work = args.keep or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "store"
    copies = version_copies(ROOT / "models/deeppcb/1", work / "models", args.versions)
    frames_dir = ROOT / "datasets/deeppcb-sample/images"
    images = sorted(p.read_bytes() for p in frames_dir.rglob("*.jpg"))
    sim = MJPEGSimulator(camera_frames(frames_dir), fps=10, port=cam_port)
    broker = start_mosquitto(mqtt_port, work)
    opc_endpoint = f"opc.tcp://127.0.0.1:{opc_port}/lineside/"
    config: dict[str, Any] = {
        "host": "127.0.0.1", "port": http_port, "data_dir": str(data), "device": "cpu",
        "threads": 1, "max_concurrency": 1,
        "models": [str(ROOT / "models/deeppcb/1")],
        "recipes": [str(ROOT / "configs/recipes/deeppcb.yaml")],
        "store_max_bytes": int(args.quota_mb * 1e6), "store_pass_rate": 1.0,
        "model_roots": [str(ROOT / "models")] + ([str(work / "models")] if copies else []),
        "cameras": [
            {"id": "cont", "source": sim.url, "mode": "continuous", "rate_hz": 1},
            {"id": "trig", "source": str(frames_dir), "mode": "triggered", "fps": 5}],
        "line": {"opcua": {"endpoint": opc_endpoint},
                 "modbus": {"port": modbus_port}, "ack_timeout_s": 1,
                 "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}"}},
    }
    if args.keep_loaded is not None:
        config["keep_loaded"] = args.keep_loaded
    cfg = work / "soak.json"
    cfg.write_text(json.dumps(config))
    log = open(work / "serve.log", "wb")  # noqa: SIM115 (open for the server's life)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'inspect'}:{ROOT / 'training'}"}
    server = subprocess.Popen([*LINESIDE, "serve", "--config", str(cfg)], stdout=log,
                              stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{http_port}"
    stop = threading.Event()
    counts = {"inspect": 0, "review": 0, "trigger": 0, "swap": 0, "drop": 0, "errors": 0}
    swaps: list[dict[str, Any]] = []  # with --versions: the server after each swap

    def client() -> None:
        i = 0
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    r = c.post("/v1/inspect", content=images[i % len(images)],
                               headers={"Content-Type": "image/jpeg"},
                               params={"part_id": f"p{i}"})
                    counts["inspect"] += 1
                    doc = r.json()
                    if i % 2 == 0 and "id" in doc:
                        r = c.post(f"/v1/inspections/{doc['id']}/reviews",
                                   json={"action": "confirm", "note": "soak"})
                        counts["review"] += 1
                    if i % 4 == 0:
                        r = c.post("/v1/cameras/trig/trigger")
                        counts["trigger"] += 1
                    if r.status_code >= 500:
                        counts["errors"] += 1
                except httpx.HTTPError:
                    counts["errors"] += 1
                i += 1
                stop.wait(max(0.0, 1 / args.rate - (time.monotonic() - t)))

    def chores() -> None:
        next_swap = time.monotonic() + args.swap_every
        next_drop = time.monotonic() + args.drop_every
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.wait(1):
                now = time.monotonic()
                if now >= next_swap:
                    next_swap = now + args.swap_every
                    paths = ([copies[counts["swap"] % len(copies)]] if copies else
                             [ROOT / "models/deeppcb/1-int8", ROOT / "models/deeppcb/1"])
                    for path in paths:
                        r = c.post("/v1/models", json={"path": str(path)})
                        if r.status_code != 200:
                            counts["errors"] += 1
                            print(f"swap {path}: {r.status_code} {r.text[:200]}", flush=True)
                    counts["swap"] += 1
                    if copies:
                        listed = c.get("/v1/models").json()
                        swaps.append({"swap": counts["swap"], "version": paths[0].name,
                                      **proc_figures(server.pid),
                                      "loaded": sum(len(m["versions"]) for m in listed)})
                        print("swap", " ".join(f"{k}={v}" for k, v in swaps[-1].items()),
                              flush=True)
                if now >= next_drop:
                    next_drop = now + args.drop_every
                    sim.kill()
                    stop.wait(4)
                    sim.start()
                    counts["drop"] += 1

    fields = ["t_s", "rss_kb", "fds", "threads", "db", "wal", "journal", "images",
              "inspections", "outbox", "mqtt_sent", "reconnects"]
    try:
        wait_ready(server, url, log=work / "serve.log")
        threads = [threading.Thread(target=client, daemon=True),
                   threading.Thread(target=chores, daemon=True)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        out = open(args.csv, "w") if args.csv else None  # noqa: SIM115
        if out:
            out.write(",".join(fields) + "\n")
        print(" ".join(f"{f:>10}" for f in fields), flush=True)
        while True:
            plc_visit(opc_endpoint, modbus_port)
            m = httpx.get(url + "/metrics", timeout=30).text
            db = data / "lineside.db"
            row: dict[str, Any] = {
                "t_s": round(time.monotonic() - t0), **proc_figures(server.pid),
                "db": db.stat().st_size if db.exists() else 0,
                "wal": Path(f"{db}-wal").stat().st_size if Path(f"{db}-wal").exists() else 0,
                "journal": folder_bytes(data / "journal") if (data / "journal").exists() else 0,
                "images": folder_bytes(data / "images") if (data / "images").exists() else 0,
                "inspections": metric(m, "lineside_inspections_total"),
                "outbox": metric(m, "lineside_outbox_backlog"),
                "mqtt_sent": metric(m, "lineside_mqtt_events_delivered_total"),
                "reconnects": metric(m, "lineside_camera_reconnects_total")}
            line = " ".join(f"{row[f]:>10.0f}" for f in fields)
            print(line, flush=True)
            if out:
                out.write(",".join(str(row[f]) for f in fields) + "\n")
                out.flush()
            if row["t_s"] >= args.seconds or server.poll() is not None:
                break
            time.sleep(max(0.0, args.interval - (time.monotonic() - t0 - row["t_s"])))
        print("fds by kind:", fd_targets(server.pid), flush=True)
        print("client:", counts, flush=True)
        if swaps:
            # per swap from the second half on: the first ones fill the bound and warm up
            late = swaps[len(swaps) // 2:]
            print(f"after swap {late[0]['swap']}..{late[-1]['swap']}, per swap: RSS "
                  f"{slope([(s['swap'], s['rss_kb']) for s in late]):+.0f} kB, fds "
                  f"{slope([(s['swap'], s['fds']) for s in late]):+.2f}, threads "
                  f"{slope([(s['swap'], s['threads']) for s in late]):+.2f}", flush=True)
            if args.csv:
                with open(args.csv.with_suffix(".swaps.csv"), "w") as fh:
                    fh.write(",".join(swaps[0]) + "\n")
                    fh.writelines(",".join(str(v) for v in s.values()) + "\n" for s in swaps)
    finally:
        stop.set()
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(30)
        if server.poll() is None:
            server.kill()
        broker.terminate()
        broker.wait(10)
        sim.kill()
        log.close()
        tmp.cleanup()


if __name__ == "__main__":
    main()
