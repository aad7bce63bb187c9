"""Make the old-release store fixture of tests/lineside_inspect/test_upgrade_in_place.py.

An older Lineside (a checkout of it: ``--old``) serves on a fresh data folder, SQLite or a
PostgreSQL database, and is filled through its HTTP API: uploads (passes, fails, one with
a camera id), reference inspections (a registered reference and one sent with the part),
camera triggers, every kind of review, a recipe put over the API, a golden set, a gate,
a promotion. Its answers are kept (``expected-<db>.json.gz``). Then three more inspections are
acknowledged and the server is killed (-9) before its journal is applied: they are in the
folder's journal only. The folder is packed (``<db>.tar.gz``; PostgreSQL: with the
database's ``pg_dump`` beside it, ``pg.sql.gz``). A second old server on a copy applies the
journal, and its dashboard figures are kept too (the same window, from its own clock).

Images are DeepPCB sample boards at 160 px (a camera's frame at 96 px: it is kept as
PNG), so the whole fixture stays small. Run with the venv's Python, any PYTHONPATH::

    python tools/old_release_fixture.py --old /tmp/lineside-old --out tests/.../old_release \\
        --pg postgresql+psycopg://postgres@127.0.0.1:5432 --port 20680
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import httpx

KEYS = {"line": "line-secret", "reviewer": "reviewer-secret", "admin": "admin-secret"}
APPLIED_S = 11  # the old server applies its journal every 10 s (store_sync_interval_s)


def tiny(path: str, side: int = 160) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.resize(cv2.imread(path), (side, side),
                                              interpolation=cv2.INTER_AREA),
                           [cv2.IMWRITE_JPEG_QUALITY, 60])
    assert ok
    return buf.tobytes()


def config(old: Path, work: Path, port: int, url: str | None) -> Path:
    frames = work / "frames"
    frames.mkdir(exist_ok=True)
    tests = sorted(glob.glob(f"{old}/datasets/deeppcb-sample/images/*/*_test.jpg"))
    # a camera's frame is kept as PNG: the smallest that still fails
    (frames / "f0.jpg").write_bytes(tiny(tests[6], 96))
    doc: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "device": "cpu", "threads": 1,
        "models": [f"{old}/models/deeppcb/1", f"{old}/models/deeppcb-ref/1"],
        "model_roots": [f"{old}/models"],
        "recipes": [f"{old}/configs/recipes/deeppcb.yaml", f"{old}/configs/recipes/deeppcb-ref.yaml"],
        "default_recipe": "deeppcb", "data_dir": str(work / "data"), "store_pass_rate": 1.0,
        "store_sync_interval_s": 10,
        "api_keys": [{"name": r, "role": r, "sha256": hashlib.sha256(k.encode()).hexdigest()}
                     for r, k in KEYS.items()],
        "cameras": [{"id": "cam1", "source": str(frames), "recipe": "deeppcb",
                     "mode": "triggered", "fps": 5}],
    }
    if url:
        doc["database_url"] = url
    path = work / "serve.yaml"
    path.write_text(json.dumps(doc))
    return path


def serve(old: Path, conf: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{old}/inspect:{old}/training"}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lineside_inspect.cli", "serve",
                                 "--config", str(conf)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=conf.parent)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise SystemExit(f"old server did not start: {log.read_text()[-2000:]}")


def client(port: int, role: str) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                        headers={"Authorization": f"Bearer {KEYS[role]}"})


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, (r.request.url, r.status_code, r.text[:300])
    return r.json()


def fill(old: Path, port: int) -> None:
    line, rev, adm = client(port, "line"), client(port, "reviewer"), client(port, "admin")
    tests = sorted(glob.glob(f"{old}/datasets/deeppcb-sample/images/*/*_test.jpg"))
    temps = sorted(glob.glob(f"{old}/datasets/deeppcb-sample/images/*/*_temp.jpg"))
    jpeg = {"Content-Type": "image/jpeg"}
    for n, p in enumerate(tests[:4] + temps[:2]):
        params = {"part_id": f"up-{n}", **({"camera_id": "up1"} if n % 2 else {})}
        ok(line.post("/v1/inspect", params=params, content=tiny(p), headers=jpeg))
    ok(adm.put("/v1/references/board1", content=tiny(temps[0]), headers=jpeg))
    ok(line.post("/v1/inspect", params={"recipe": "deeppcb-ref", "reference": "board1",
                                         "part_id": "ref-1"}, content=tiny(tests[0]), headers=jpeg))
    ok(line.post("/v1/inspect", params={"recipe": "deeppcb-ref", "part_id": "ref-2"},
                 files={"image": ("i.jpg", tiny(tests[1]), "image/jpeg"),
                        "reference": ("r.jpg", tiny(temps[1]), "image/jpeg")}))
    ok(line.post("/v1/cameras/cam1/trigger", params={"part_id": "cam-0"}))
    time.sleep(APPLIED_S)
    items = ok(rev.get("/v1/inspections", params={"limit": 500}))["items"]
    fails = [i["id"] for i in items if i["verdict"] == "fail"]
    passes = [i["id"] for i in items if i["verdict"] == "pass"]
    ok(rev.post(f"/v1/inspections/{fails[0]}/reviews", json={"action": "confirm", "note": "ok"}))
    ok(rev.post(f"/v1/inspections/{fails[1]}/reviews", json={"action": "false_reject"}))
    ok(rev.post(f"/v1/inspections/{fails[2]}/reviews",
                json={"action": "relabel", "index": 0, "label": "spur"}))
    ok(adm.post(f"/v1/inspections/{fails[2]}/reviews", json={"action": "confirm"}))
    ok(rev.post(f"/v1/inspections/{passes[0]}/reviews", json={
        "action": "missed_defect", "boxes": [{"label": "open", "box": [10, 10, 40, 40]}]}))
    ok(rev.post(f"/v1/inspections/{passes[1]}/reviews", json={"action": "confirm"}))
    ok(adm.put("/v1/recipes/custom", json={"name": "custom", "version": "5", "model": "deeppcb",
                                           "min_size_px": 6, "critical": ["open"]}))
    ok(line.post("/v1/inspect", params={"recipe": "custom", "part_id": "custom-1"},
                 content=tiny(tests[2]), headers=jpeg))
    time.sleep(APPLIED_S)
    ok(adm.post("/v1/golden/g1", json={"note": "from store"}))
    ok(adm.post("/v1/models", json={"path": f"{old}/models/deeppcb/1-int8", "activate": False}))
    ok(adm.post("/v1/models/deeppcb/gate", json={"version": "1-int8", "golden": "g1"}))
    ok(adm.post("/v1/models/deeppcb/promote", json={"version": "1-int8", "golden": "g1",
                                                    "force": True, "reason": "fixture"}))
    ok(line.post("/v1/inspect", params={"part_id": "after-promote"}, content=tiny(tests[3]),
                 headers=jpeg))
    time.sleep(APPLIED_S)


def answers(port: int) -> dict[str, Any]:
    """Everything the old server answers about what it stores."""
    adm = client(port, "admin")
    got: dict[str, Any] = {"inspections": {}}
    for item in ok(adm.get("/v1/inspections", params={"limit": 500}))["items"]:
        i = item["id"]
        one = ok(adm.get(f"/v1/inspections/{i}"))
        image = adm.get(f"/v1/inspections/{i}/image")
        ref = adm.get(f"/v1/inspections/{i}/reference")
        got["inspections"][i] = {
            "record": one,
            "image_sha256": hashlib.sha256(image.content).hexdigest() if image.status_code == 200 else None,
            "reference_sha256": hashlib.sha256(ref.content).hexdigest() if ref.status_code == 200 else None}
    for path in ("/v1/reviews", "/v1/recipes", "/v1/references", "/v1/golden/g1", "/v1/audit",
                 "/v1/models/deeppcb/gates", "/v1/models/deeppcb/lineage"):
        got[path] = ok(adm.get(path, params={"limit": 500} if path in ("/v1/reviews", "/v1/audit") else None))
    got["/v1/references/board1"] = hashlib.sha256(adm.get("/v1/references/board1").content).hexdigest()
    return got


def pulled(old: Path, port: int, dst: Path) -> dict[str, Any]:
    """What the old release's ``data pull --no-reviewed`` of its server makes: each image
    with its boxes."""
    env = {**os.environ, "PYTHONPATH": f"{old}/inspect:{old}/training"}
    subprocess.run([sys.executable, "-m", "lineside_inspect.cli", "data", "pull", "--no-reviewed",
                    f"http://127.0.0.1:{port}", str(dst), "--key", KEYS["reviewer"]],
                   env=env, check=True, capture_output=True)
    coco = json.loads((dst / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes: dict[int, list[Any]] = {}
    for a in coco["annotations"]:
        boxes.setdefault(a["image_id"], []).append([names[a["category_id"]], a["bbox"]])
    return {i["file_name"]: sorted(boxes.get(i["id"], [])) for i in coco["images"]}


def one_run(old: Path, out: Path, port: int, tag: str, url: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix=f"old-{tag}-") as tmp:
        work = Path(tmp)
        conf = config(old, work, port, url)
        proc = serve(old, conf, port, work / "old.log")
        try:
            fill(old, port)
            expected = answers(port)
            line = client(port, "line")
            tests = sorted(glob.glob(f"{old}/datasets/deeppcb-sample/images/*/*_test.jpg"))
            journal = {}
            for n, p in enumerate(tests[4:6] + tests[:1]):  # acknowledged, not applied yet
                r = ok(line.post("/v1/inspect", params={"part_id": f"journal-{n}"},
                                 content=tiny(p), headers={"Content-Type": "image/jpeg"}))
                journal[r["id"]] = r
            expected["journal"] = journal
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        data = work / "data"
        (data / ".lock").unlink(missing_ok=True)
        assert any((data / "journal").glob("*.journal")), "the journal was applied already"
        if url:
            sql = subprocess.run(["pg_dump", "--no-owner", "--no-privileges", url.replace(
                "postgresql+psycopg", "postgresql")], check=True, capture_output=True).stdout
            (out / "pg.sql.gz").write_bytes(gzip.compress(sql, mtime=0))
        with tarfile.open(out / f"{tag}.tar.gz", "w:gz") as tar:
            tar.add(data, arcname="data")
        # the old release's own dashboard once it applied its journal (on a copy)
        shutil.copytree(data, work / "again")
        conf2 = work / "again.yaml"
        doc = json.loads(conf.read_text())
        doc["data_dir"] = str(work / "again")
        if url:
            doc["database_url"] = url  # (applied into the database the dump was taken of)
        conf2.write_text(json.dumps(doc))
        proc = serve(old, conf2, port, work / "again.log")
        try:
            adm = client(port, "admin")
            expected["stats"] = ok(adm.get("/v1/stats", params={"hours": 24}))
            expected["total"] = ok(adm.get("/v1/inspections", params={"limit": 1}))["total"]
            expected["pull"] = pulled(old, port, work / "pulled")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        expected["release"] = subprocess.run(["git", "-C", str(old), "rev-parse", "HEAD"],
                                             capture_output=True, text=True).stdout.strip()
        (out / f"expected-{tag}.json.gz").write_bytes(gzip.compress(
            json.dumps(expected, indent=1, sort_keys=True).encode(), mtime=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="a checkout of the older release")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pg", help="a PostgreSQL server URL; a database lineside_old is made on it")
    ap.add_argument("--port", type=int, default=20680)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    one_run(args.old, args.out, args.port, "sqlite", None)
    if args.pg:
        admin = args.pg.replace("postgresql+psycopg", "postgresql")
        subprocess.run(["psql", f"{admin}/postgres", "-qc", "DROP DATABASE IF EXISTS lineside_old"],
                       check=True)
        subprocess.run(["psql", f"{admin}/postgres", "-qc", "CREATE DATABASE lineside_old"],
                       check=True)
        one_run(args.old, args.out, args.port, "pg", f"{args.pg}/lineside_old")


if __name__ == "__main__":
    main()
