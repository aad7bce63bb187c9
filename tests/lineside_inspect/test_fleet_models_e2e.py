"""Model distribution end to end, all parts real: a SeaweedFS object store, a ``lineside
hub`` process, two ``lineside serve`` box processes with their own data folders, and the
``lineside fleet`` commands. A package published and signed is pulled and activated on
both boxes (one through its golden-set gate, one by plain activation, both recorded as
actor "fleet"); a version an admin left by hand is not forced back; a package whose bytes
were altered in the hub's store (caught by the sha256, then, with the manifest altered to
match, by the signature) and one signed by a key the boxes do not trust are refused and
never loaded, the boxes serving on; a box restarted while its hub is down serves what it
pulled."""

from __future__ import annotations

import hashlib
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lineside_inspect.config import load_settings
from lineside_inspect.fleet.config import ObjectStoreSettings
from lineside_inspect.fleet.objects import ObjectStore
from lineside_inspect.fleet.signing import generate

from .conftest import MODEL, ROOT, SAMPLE, start_server
from .server_process import LINESIDE, ServerProcess, free_port
from .test_fleet_models_hub import versioned

INT8 = ROOT / "models" / "deeppcb" / "1-int8"
ADMIN = "e2e-admin-key"
BOXES = ("box-a", "box-b")


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except httpx.TransportError:
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def active(box: ServerProcess) -> tuple[str | None, list[str]]:
    model = next(m for m in httpx.get(box.url + "/v1/models", timeout=10).json()
                 if m["name"] == "deeppcb")
    return model["active"], [v["version"] for v in model["versions"]]


def fleet(*args: str) -> dict[str, Any]:
    """``lineside fleet ...`` (in this process: a command's start-up is not what is tested)."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    out = CliRunner().invoke(app, ["fleet", *args], env={"LINESIDE_HUB_TOKEN": ADMIN})
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def hub_process(weed: Any, tmp_path: Path, boxes: tuple[str, ...], bucket: str) -> ServerProcess:
    """A ``lineside hub`` (not started) on SQLite and ``bucket`` in ``weed``, an
    admin key and one box key per box (``<box>-key``), and the publisher's key pair in
    ``tmp_path``."""
    generate(tmp_path / "publisher.pem", tmp_path / "publisher.pub.pem")
    hub_port = free_port()
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump({
        "database_url": f"sqlite:///{tmp_path / 'hub.db'}", "data_dir": str(tmp_path / "hub"),
        "objects": weed.settings(bucket),
        "api_keys": [{"name": "admin", "role": "admin", "key": ADMIN}] + [
            {"name": b, "role": "box", "key": f"{b}-key"} for b in boxes]}))
    return ServerProcess([*LINESIDE, "hub", "--config", str(tmp_path / "hub.yaml"), "--port",
                          str(hub_port)], tmp_path / "hub.log", hub_port, new_session=True)


@pytest.fixture
def plant(weed: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    generate(tmp_path / "stranger.pem", tmp_path / "stranger.pub.pem")
    hub = hub_process(weed, tmp_path, BOXES, bucket)
    boxes: dict[str, ServerProcess] = {}
    for b in BOXES:
        port = free_port()
        data = tmp_path / b
        data.mkdir()
        (tmp_path / f"{b}.yaml").write_text(yaml.safe_dump({
            "models": [str(MODEL)], "device": "cpu", "threads": 1, "data_dir": str(data),
            "box_id": b, "port": port,
            "fleet": {"hub_url": hub.url, "token": f"{b}-key", "site": "plant1", "line": "L1",
                      "trusted_keys": [str(tmp_path / "publisher.pub.pem")],
                      "pull_interval_s": 0.3, "status_interval_s": 0.5, "timeout_s": 5}}))
        boxes[b] = ServerProcess([*LINESIDE, "serve", "--config", str(tmp_path / f"{b}.yaml")],
                                 tmp_path / f"{b}.log", port, new_session=True)
    # box-a keeps a golden set of the model: its pulls go through the gate
    from lineside_inspect.lifecycle.golden import GOLDEN_DIR, GoldenLibrary, from_dataset

    items, classes = from_dataset(SAMPLE, limit=4)
    GoldenLibrary(tmp_path / "box-a" / GOLDEN_DIR).create("deeppcb", items, classes)
    procs = [hub, *boxes.values()]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        yield {"hub": hub, "boxes": boxes, "tmp": tmp_path,
               "objects": ObjectStore(ObjectStoreSettings(**weed.settings(bucket)))}
    finally:
        for p in procs:
            p.stop()


def test_publish_pull_activate_refuse_tampered(plant: dict[str, Any]) -> None:
    hub: ServerProcess = plant["hub"]
    boxes: dict[str, ServerProcess] = plant["boxes"]
    tmp: Path = plant["tmp"]
    key, stranger = str(tmp / "publisher.pem"), str(tmp / "stranger.pem")
    assert all(active(b)[0] == "1" for b in boxes.values())

    # published, signed, assigned: both boxes pull and activate it
    manifest = fleet("publish", str(INT8), "--hub", hub.url, "--key", key)
    assigned = fleet("assign", "--hub", hub.url, "--line", "L1", "--model", "deeppcb",
                     "--version", "1-int8")
    assert assigned["models"] == [{"name": "deeppcb", "version": "1-int8",
                                   "sha256": manifest["sha256"]}]
    for b in boxes.values():
        wait_for(lambda b=b: active(b)[0] == "1-int8", f"{b.url} on 1-int8")  # type: ignore[misc]
    audits = {name: httpx.get(b.url + "/v1/audit", params={"model": "deeppcb"}).json()["items"]
              for name, b in boxes.items()}
    # box-a ran its golden set through the gate, then promoted (a watched rollout)
    by_fleet = {a["action"]: a for a in audits["box-a"]
                if a["actor"] == "fleet" and a["version"] == "1-int8"}
    assert by_fleet["gate"]["details"]["passed"] is True
    assert by_fleet["gate"]["details"]["golden"] == "deeppcb:1"
    assert by_fleet["promote"]["details"]["gate_report_id"] == by_fleet["gate"]["details"]["report_id"]
    assert any(a["action"] == "activate" and a["actor"] == "fleet" and a["version"] == "1-int8"
               for a in audits["box-b"])
    assert not any(a["action"] in ("gate", "promote") for a in audits["box-b"])
    image = next((SAMPLE / "images").rglob("*.jpg")).read_bytes()
    verdict = httpx.post(boxes["box-b"].url + "/v1/inspect", timeout=30, content=image,
                         headers={"content-type": "image/jpeg"}).json()
    assert verdict["model"]["version"] == "1-int8"

    # an admin on box-a goes back to 1 by hand: later pulls leave it so (and say so)
    back = httpx.post(boxes["box-a"].url + "/v1/models/deeppcb/activate", json={"version": "1"})
    assert back.status_code == 200, back.text
    wait_for(lambda: _reported(hub, "box-a", "deeppcb 1-int8 assigned, 1 active"),
             "box-a reporting the version left on the box")
    assert active(boxes["box-a"])[0] == "1"
    serving = {"box-a": "1", "box-b": "1-int8"}

    def refused(box: str, version: str, why: str) -> bool:
        return any(f"refused deeppcb {version}" in line and why in line
                   for line in (tmp / f"{box}.log").read_text().splitlines())

    # one byte flipped in the hub's store: the sha256 the assignment names tells
    objects: ObjectStore = plant["objects"]
    tampered = versioned(tmp, "t1")
    fleet("publish", str(tampered), "--hub", hub.url, "--key", key)
    data = bytearray(objects.get("packages/deeppcb/t1/package.tar.gz"))
    data[len(data) // 2] ^= 0x01
    objects.put("packages/deeppcb/t1/package.tar.gz", bytes(data))
    fleet("assign", "--hub", hub.url, "--line", "L1", "--model", "deeppcb", "--version", "t1")
    for name in boxes:
        wait_for(lambda name=name: refused(name, "t1", "the assignment says"),  # type: ignore[misc]
                 f"{name} refusing t1 by its sha256")
    # the manifest made to match too (so the assignment's sha256 is the altered bytes'):
    # only the signature can tell, and it does
    doc = json.loads(objects.get("packages/deeppcb/t1/manifest.json"))
    doc["sha256"] = hashlib.sha256(data).hexdigest()
    objects.put("packages/deeppcb/t1/manifest.json", json.dumps(doc).encode())
    again = fleet("assign", "--hub", hub.url, "--line", "L1", "--model", "deeppcb",
                  "--version", "t1")
    assert again["models"][0]["sha256"] == doc["sha256"]
    for name, b in boxes.items():
        wait_for(lambda name=name: refused(name, "t1", "signature does not verify"),  # type: ignore[misc]
                 f"{name} refusing t1 by its signature")
        assert active(b) == (serving[name], ["1", "1-int8"])  # never loaded, still serving

    # signed by a key the boxes do not trust: refused the same way
    foreign = versioned(tmp, "t2")
    fleet("publish", str(foreign), "--hub", hub.url, "--key", stranger)
    fleet("assign", "--hub", hub.url, "--line", "L1", "--model", "deeppcb", "--version", "t2")
    for name, b in boxes.items():
        wait_for(lambda name=name: refused(name, "t2", "does not verify"),  # type: ignore[misc]
                 f"{name} refusing t2")
        assert active(b) == (serving[name], ["1", "1-int8"])
    # the refusal is what the box reports to its hub (its status' model_errors)
    wait_for(lambda: all(_reported(hub, b, "deeppcb t2: ") for b in BOXES),
             "the boxes reporting the refusal")
    # and what its /metrics says: the version it pulled and keeps, the refused packages,
    # when it last read its assignment
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(
        httpx.get(boxes["box-b"].url + "/metrics", timeout=10).text) for s in f.samples}
    assert got[("lineside_fleet_model_pulled", (("model", "deeppcb"), ("version", "1-int8")))] == 1
    assert got[("lineside_fleet_model_pulls_total", ())] == 1
    assert got[("lineside_fleet_task_errors_total",
                (("kind", "package_refused"), ("task", "models")))] >= 3  # t1 twice, t2
    assert got[("lineside_fleet_task_last_success_timestamp_seconds", (("task", "models"),))] > 0

    # the hub goes down: a box restarted meanwhile (in this process: its start-up is what
    # is tested) serves what it pulled
    hub.stop(signal.SIGKILL)
    boxes["box-b"].stop()
    running, stop = start_server(load_settings(tmp / "box-b.yaml"))
    try:
        slot = running.app.state.registry.models()["deeppcb"]
        assert (slot.active, sorted(slot.versions)) == ("1-int8", ["1", "1-int8"])
        with running.client() as c:
            verdict = c.post("/v1/inspect", content=image,
                             headers={"content-type": "image/jpeg"}).json()
        assert verdict["model"]["version"] == "1-int8"
        # an admin goes back to 1 on the box, which stops before a pull marks 1-int8 held
        running.app.state.lifecycle.activate("deeppcb", "1", actor="admin", reason="by hand")
    finally:
        stop()
    running, stop = start_server(load_settings(tmp / "box-b.yaml"))
    try:  # the admin's choice stands: the pulled version is not forced back at start-up
        assert running.app.state.registry.models()["deeppcb"].active == "1"
        audit = running.app.state.lifecycle.records.audit_log(model="deeppcb")[1]
        assert not any(a["action"] in ("force_activate", "force_restore") for a in audit)
    finally:
        stop()


def _reported(hub: ServerProcess, box_id: str, error: str) -> bool:
    """Whether ``box_id``'s last status on the hub has ``error`` in its model_errors."""
    boxes = httpx.get(hub.url + "/fleet/v1/boxes", timeout=5,
                      headers={"authorization": f"Bearer {ADMIN}"})
    if boxes.status_code != 200:
        return False
    status = next((b["status"] for b in boxes.json()["boxes"] if b["box_id"] == box_id), None)
    return status is not None and any(error in e for e in status["model_errors"])
