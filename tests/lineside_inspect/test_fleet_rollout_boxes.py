"""A fleet rollout on boxes that share one database, all parts real: a SeaweedFS object
store, a ``lineside hub`` process and two ``lineside serve`` boxes of one line whose store
is one SQLite file (as a site that centralises its boxes' records). Each box pulls the
assigned version and promotes it through its own golden set; each box's watch judges that
box's inspections only: another box's fails and false rejects neither roll it back nor
fill its counts, and its baseline is its own previous version's record. And a version
that a recipe following the active version cannot serve (a class it does not have) is not
activated, by hand or pulled: the box reports why and judges on with the version before."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import MODEL, ROOT, SAMPLE, Running
from .server_process import LINESIDE, ServerProcess, free_port
from .test_fleet_models_e2e import INT8, _reported, active, fleet, hub_process, wait_for

BOXES = ("box-a", "box-b")
# a recipe following the active version, stricter on a class a renamed version lacks
STRICT = {"name": "line1", "model": "deeppcb", "min_score": {"open": 0.05}}


@contextlib.contextmanager
def _plant(weed: Any, tmp_path: Path, box_config: dict[str, Any], *,
           shared: bool) -> Iterator[dict[str, Any]]:
    """A hub and the boxes of line L1 (their store one SQLite file when ``shared``), each
    with a golden set of the model when ``shared``."""
    hub = hub_process(weed, tmp_path, BOXES, f"roll-{uuid.uuid4().hex[:10]}")
    from lineside_inspect.lifecycle.golden import GOLDEN_DIR, GoldenLibrary, from_dataset

    items, classes = from_dataset(SAMPLE, limit=4)
    boxes: dict[str, ServerProcess] = {}
    for b in BOXES if shared else BOXES[:1]:
        port = free_port()
        data = tmp_path / b
        data.mkdir()
        if shared:
            GoldenLibrary(data / GOLDEN_DIR).create("deeppcb", items, classes)
        (tmp_path / f"{b}.yaml").write_text(yaml.safe_dump({
            "models": [str(MODEL)], "device": "cpu", "threads": 1, "data_dir": str(data),
            "store_pass_rate": 1.0, "box_id": b, "port": port,
            **({"database_url": f"sqlite:///{tmp_path / 'shared.db'}"} if shared else {}),
            "lifecycle": {"rollout": {"min_inspections": 3, "check_interval_s": 0.1}},
            "fleet": {"hub_url": hub.url, "token": f"{b}-key", "site": "plant1", "line": "L1",
                      "trusted_keys": [str(tmp_path / "publisher.pub.pem")],
                      "pull_interval_s": 0.3, "status_interval_s": 0.5, "timeout_s": 5},
            **box_config}))
        boxes[b] = ServerProcess([*LINESIDE, "serve", "--config", str(tmp_path / f"{b}.yaml")],
                                 tmp_path / f"{b}.log", port, new_session=True)
    procs = [hub, *boxes.values()]
    try:
        for p in procs:  # one after another: both boxes make the shared tables
            p.start()
            p.wait_ready()
        yield {"hub": hub, "boxes": boxes, "tmp": tmp_path}
    finally:
        for p in procs:
            p.stop()


@pytest.fixture
def shared_plant(weed: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with _plant(weed, tmp_path, {}, shared=True) as plant:
        yield plant


def _inspect(box: ServerProcess, images: list[Path]) -> list[dict[str, Any]]:
    return [httpx.post(box.url + "/v1/inspect", timeout=30, content=p.read_bytes(),
                       headers={"content-type": "image/jpeg"}).json() for p in images]


def _rollout(box: ServerProcess) -> dict[str, Any]:
    r = httpx.get(box.url + "/v1/models/deeppcb/rollout", timeout=10)
    return r.json() if r.status_code == 200 else {}  # type: ignore[no-any-return]


def test_each_boxs_watch_judges_its_own_inspections(shared_plant: dict[str, Any]) -> None:
    hub: ServerProcess = shared_plant["hub"]
    a, b = (shared_plant["boxes"][n] for n in BOXES)
    tmp: Path = shared_plant["tmp"]
    defective = sorted((SAMPLE / "images").rglob("*_test.jpg"))[:4]
    # box-b's record of version 1 before the rollout (box-a has none)
    before = _inspect(b, defective)
    assert {r["model"]["version"] for r in before} == {"1"}

    fleet("publish", str(INT8), "--hub", hub.url, "--key", str(tmp / "publisher.pem"))
    fleet("assign", "--hub", hub.url, "--line", "L1", "--model", "deeppcb", "--version", "1-int8")
    for box in (a, b):
        wait_for(lambda box=box: _rollout(box).get("state") == "watching",  # type: ignore[misc]
                 f"{box.url} promoting 1-int8")
        assert active(box)[0] == "1-int8"
    # box-a's baseline is its own: it judged no part with version 1
    assert _rollout(a)["baseline_inspections"] == 0
    assert _rollout(b)["baseline_inspections"] == len(before)

    # box-b's parts fail under 1-int8, and a reviewer calls each a false reject
    judged = _inspect(b, defective)
    fails = [r for r in judged if r["verdict"] == "fail"]
    assert len(fails) >= 3 and {r["model"]["version"] for r in judged} == {"1-int8"}
    for r in fails:
        got = httpx.post(f"{b.url}/v1/inspections/{r['id']}/reviews",
                         json={"action": "false_reject"}, timeout=10)
        assert got.status_code == 200, got.text
    # box-b's watch rolls box-b back
    watch_b = wait_for(lambda: (w := _rollout(b))["state"] == "rolled_back" and w,
                       "box-b's automatic rollback")
    assert watch_b["false_rejects"] > 2  # (max_false_rejects)
    assert active(b)[0] == "1"
    # box-a's watch saw none of it: box-a judged nothing, and keeps 1-int8
    # two of box-a's checks: the second began after box-b's false rejects and rollback
    seen = _rollout(a)["checks"]
    watch_a = wait_for(lambda: (w := _rollout(a))["checks"] >= seen + 2 and w,
                       "two more of box-a's checks")
    assert (watch_a["state"], watch_a["inspections"], watch_a["false_rejects"]) == (
        "watching", 0, 0), watch_a
    assert active(a)[0] == "1-int8"
    # box-a's own inspections are what its watch counts
    mine = _inspect(a, defective[:2])
    wait_for(lambda: _rollout(a)["inspections"] == len(mine), "box-a counting its own")


def renamed(root: Path, version: str, old: str, new: str) -> Path:
    """The bundled package as ``version`` with its class ``old`` called ``new`` (graph
    metadata, card and the card's recipe): a retrained model whose classes changed."""
    import json
    import shutil

    import onnx

    from lineside_inspect.package import GRAPH, META_CLASSES, sha256_file

    dest = root / f"deeppcb-{version}"
    shutil.copytree(MODEL, dest)
    graph = onnx.load(str(dest / GRAPH))
    meta = {p.key: p.value for p in graph.metadata_props}
    classes = [new if c == old else c for c in json.loads(meta[META_CLASSES])]
    onnx.helper.set_model_props(graph, {**meta, META_CLASSES: json.dumps(classes)})
    onnx.save(graph, str(dest / GRAPH))
    card = json.loads((dest / "model.json").read_text())
    card.update(version=version, class_names=classes, sha256=sha256_file(dest / GRAPH),
                thresholds={new if k == old else k: v for k, v in card["thresholds"].items()})
    card["default_recipe"]["min_score"] = {new if k == old else k: v for k, v in
                                           card["default_recipe"]["min_score"].items()}
    card.pop("metrics", None)
    (dest / "model.json").write_text(json.dumps(card))
    return dest


def test_a_version_its_recipes_cannot_serve_is_not_activated(
        launch: Callable[..., Running], tmp_path: Path) -> None:
    """A recipe that follows the active version was checked against that version's
    classes; a new version without one of them (a retrained model, a renamed class) would
    leave its rule dead unseen: its activation is refused (422) naming the recipe."""
    v2 = renamed(tmp_path, "2r", "open", "opening")
    srv = launch(model_roots=[str(ROOT / "models"), str(tmp_path)], store_pass_rate=1.0)
    with srv.client("admin") as admin:
        assert admin.put("/v1/recipes/line1", json=STRICT).status_code == 200
        # loaded with activate: refused, and said to be loaded (it is, beside version 1)
        r = admin.post("/v1/models", json={"path": str(v2), "activate": True})
        assert r.status_code == 422, r.text
        assert "loaded deeppcb 2r but did not activate it" in r.json()["error"]["message"]
        assert "2r" in [v["version"] for v in admin.get("/v1/models").json()[0]["versions"]]
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "2r"})
        assert r.status_code == 422, r.text
        msg = r.json()["error"]["message"]
        assert "recipe line1" in msg and "'open'" in msg, msg
        # forced or not: a force overrides a gate, not a recipe that cannot work
        r = admin.post("/v1/models/deeppcb/activate",
                       json={"version": "2r", "force": True, "reason": "try"})
        assert r.status_code == 422
        assert admin.get("/v1/models").json()[0]["active"] == "1"
        # pinned to the version it was written for, the recipe no longer stands in the way
        assert admin.put("/v1/recipes/line1", json={**STRICT, "model_version": "1"}
                         ).status_code == 200
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "2r"})
        assert r.status_code == 200, r.text


@contextlib.contextmanager
def _refusing_2r(weed: Any, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A hub and box-a, whose configured recipe (STRICT) follows the active version, once
    the box has refused the assigned 2r (its class open renamed) and reported why."""
    recipe = tmp_path / "line1.yaml"
    recipe.write_text(yaml.safe_dump(STRICT))
    with _plant(weed, tmp_path, {"recipes": [str(recipe)]}, shared=False) as plant:
        hub, box = plant["hub"], plant["boxes"]["box-a"]
        fleet("publish", str(renamed(tmp_path, "2r", "open", "opening")), "--hub", hub.url,
              "--key", str(tmp_path / "publisher.pem"))
        fleet("assign", "--hub", hub.url, "--line", "L1", "--model", "deeppcb", "--version",
              "2r")
        wait_for(lambda: _reported(hub, "box-a", "cannot judge under recipe line1"),
                 "box-a refusing 2r")
        yield hub, box


def test_a_pulled_version_its_recipes_cannot_serve_is_refused(
        weed: Any, tmp_path: Path) -> None:
    """The same through the fleet: a box whose configured recipe names a class the
    assigned version lacks refuses it, reports why, and keeps judging with version 1."""
    with _refusing_2r(weed, tmp_path) as (hub, box):
        assert _reported(hub, "box-a", "deeppcb 2r: deeppcb 2r cannot judge under recipe line1")
        assert active(box)[0] == "1"
        judged = _inspect(box, sorted((SAMPLE / "images").rglob("*_test.jpg"))[:1])
        assert judged[0]["model"]["version"] == "1"


def test_a_pulled_version_refused_for_a_recipe_is_taken_once_activated_by_hand(
        weed: Any, tmp_path: Path) -> None:
    """The refusal says: pin the recipe to the version it was written for, then activate.
    Done so on the box, the version judged but the box went on reporting it refused, and
    never recorded it as pulled (a restart came back on version 1 until a pull took it
    again, through the gate once more), as a gate refusal an admin overrode is not."""
    import json

    with _refusing_2r(weed, tmp_path) as (hub, box):
        r = httpx.put(box.url + "/v1/recipes/line1", json={**STRICT, "model_version": "1"},
                      timeout=10)
        assert r.status_code == 200, r.text
        r = httpx.post(box.url + "/v1/models/deeppcb/activate", json={"version": "2r"},
                       timeout=30)
        assert r.status_code == 200, r.text
        pulled = tmp_path / "box-a" / "fleet-models" / "pulled.json"
        wait_for(lambda: pulled.exists() and json.loads(pulled.read_text())["models"].get(
            "deeppcb", {}).get("version") == "2r", "box-a recording 2r as pulled")
        wait_for(lambda: not _reported(hub, "box-a", "cannot judge under recipe line1"),
                 "box-a no longer reporting 2r refused")
        assert active(box)[0] == "2r"
