"""Model versions out of memory: an admin's unload, the keep_loaded bound, a rollback to a
version no longer loaded, and inspections in flight on a version being unloaded."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lineside_inspect.config import ApiKey, Settings
from lineside_inspect.imageio import encode_jpeg
from lineside_inspect.server.app import create_app

KEYS = {"admin": "admin-secret", "line": "line-secret"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Any
           ) -> Iterator[tuple[TestClient, Path]]:
    """A tiny model's version 1 serving in process (no port), two versions kept in memory,
    one inference at a time; its model_roots."""
    tmp = tmp_path_factory.mktemp("unload")
    roots = tmp / "roots"
    v1 = tiny_onnx.package(roots / "tiny" / "1", tiny_onnx.graph())
    settings = Settings(models=[str(v1)], device="cpu", threads=1, data_dir=str(tmp / "data"),
                        model_roots=[str(roots)], keep_loaded=2, max_concurrency=1,
                        api_keys=[ApiKey.from_plain(r, r, k) for r, k in KEYS.items()])  # type: ignore[arg-type]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {KEYS['admin']}"
        yield client, roots


def _package(tiny_onnx: Any, roots: Path, name: str, version: str, score: float = 0.0) -> str:
    folder = roots / f"{name}-{version}-{score}"
    return str(tiny_onnx.package(folder, tiny_onnx.graph(score=score), name=name,
                                 version=version))


def _listed(client: TestClient, name: str) -> dict[str, Any]:
    return next(m for m in client.get("/v1/models").json() if m["name"] == name)


def test_unload_refuses_what_judges_and_the_bound_keeps_two(
        server: tuple[TestClient, Path], tiny_onnx: Any) -> None:
    client, roots = server
    paths = {v: _package(tiny_onnx, roots, "tiny", v) for v in ("2", "3")}
    for version in ("2", "3"):
        r = client.post("/v1/models", json={"path": paths[version]})
        assert r.status_code == 200 and r.json()["active"] == version, r.text
    # keep_loaded 2: activating 3 unloaded 1 (neither active nor a rollback's way back)
    model = _listed(client, "tiny")
    assert [v["version"] for v in model["versions"]] == ["2", "3"]
    assert [v["version"] for v in model["unloaded"]] == ["1"]
    scraped = client.get("/metrics").text
    assert 'lineside_model_version_loaded{model="tiny",version="3"} 1.0' in scraped
    assert 'version="1"' not in scraped

    def unload(version: str, **query: str) -> Any:
        return client.delete(f"/v1/models/tiny/versions/{version}", params=query)

    r = unload("3")
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_in_use"
    assert "active version" in r.json()["error"]["message"]
    r = unload("2")
    assert r.status_code == 409 and "rollback goes back to" in r.json()["error"]["message"]
    # the way to do it, whole: "with force" alone led to a second refusal, the reason's
    assert "?force=true&reason=" in r.json()["error"]["message"]
    r = unload("2", force="true")
    assert r.status_code == 422 and "force needs a reason" in r.text
    assert unload("9").status_code == 404
    r = client.delete("/v1/models/tiny/versions/2",
                      headers={"Authorization": f"Bearer {KEYS['line']}"})
    assert r.status_code == 403

    # back to 2, then 3 unloaded by hand: recorded, and its package loads again later
    assert client.post("/v1/models/tiny/rollback").json()["active"] == "2"
    r = unload("3", reason="soak")
    assert r.status_code == 200 and r.json()["loaded"] == ["2"], r.text
    audit = client.get("/v1/audit", params={"action": "unload"}).json()
    assert audit["items"][0]["version"] == "3" and audit["items"][0]["reason"] == "soak"
    # a rollback to 1, no longer in memory, loads it again from its package
    assert client.post("/v1/models/tiny/rollback").json()["active"] == "1"
    model = _listed(client, "tiny")
    assert [v["version"] for v in model["versions"]] == ["2", "1"]
    assert [v["version"] for v in model["unloaded"]] == ["3"]

    # a recipe pinning 2 keeps it loaded
    pin = {"name": "pin2", "version": "1", "model": "tiny", "model_version": "2"}
    assert client.put("/v1/recipes/pin2", json=pin).status_code == 200
    r = unload("2")
    assert r.status_code == 409 and "recipe pin2 pins it" in r.json()["error"]["message"]
    assert client.delete("/v1/recipes/pin2").status_code == 200
    assert unload("2").status_code == 200

    # while unloaded, version 3 still names its one package: another card is refused
    r = client.post("/v1/models", json={"path": _package(tiny_onnx, roots, "tiny", "3", 0.5),
                                        "activate": False})
    assert r.status_code == 422 and "another graph or card" in r.text, r.text
    r = client.post("/v1/models", json={"path": paths["3"], "activate": False})
    assert r.status_code == 200, r.text
    assert [v["version"] for v in _listed(client, "tiny")["versions"]] == ["1", "3"]

    # a rollout watch's way back stays loaded, forced or not (its rollback needs it)
    watcher = client.app.state.lifecycle.rollout  # type: ignore[attr-defined]
    watcher.start(model="tiny", version="1", previous="3", recipe=None, actor="test",
                  gate_report_id=None)
    try:
        r = unload("3", force="true", reason="test")
        assert r.status_code == 409 and "rollout watch of tiny 1" in r.text, r.text
    finally:
        watcher.stop("tiny", "test over")
    assert unload("3").status_code == 200


def test_an_inspection_in_flight_finishes_on_the_version_unloaded(
        server: tuple[TestClient, Path], tiny_onnx: Any) -> None:
    client, roots = server
    for version in ("1", "2"):
        r = client.post("/v1/models", json={"path": _package(tiny_onnx, roots, "flight", version),
                                            "activate": version == "1"})
        assert r.status_code == 200, r.text
    assert client.put("/v1/recipes/flight", json={"name": "flight", "version": "1",
                                                  "model": "flight"}).status_code == 200
    app: Any = client.app
    service, limiter = app.state.service, app.state.limiter
    gone = weakref.ref(app.state.registry.detector("flight", "1"))
    free = threading.Event()
    portal: Any = client.portal
    # the one inference slot taken, then an inspection that takes version 1 and waits
    holding = portal.start_task_soon(limiter.run, lambda: free.wait(30))
    inspection = portal.start_task_soon(
        lambda: service.inspect_image(encode_jpeg(np.full((32, 32, 3), 128, np.uint8)),
                                      recipe="flight"))
    deadline = time.monotonic() + 10
    while limiter.in_system < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert limiter.in_system == 2
        r = client.post("/v1/models/flight/activate", json={"version": "2"})
        assert r.status_code == 200, r.text
        r = client.delete("/v1/models/flight/versions/1", params={"force": "true",
                                                                  "reason": "test"})
        assert r.status_code == 200, r.text
        assert gone() is not None  # the waiting inspection holds it
    finally:
        free.set()
    holding.result(timeout=30)
    result = inspection.result(timeout=30)
    assert result.detector.card.version == "1" and result.verdict in ("pass", "fail")
    del result, inspection
    gc.collect()
    assert gone() is None  # freed once nothing holds it: no session kept per swap


def test_a_version_under_its_gate_is_not_unloaded_by_a_load_meanwhile(
        server: tuple[TestClient, Path], tiny_onnx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A promotion gates a loaded version, then activates it: a load meanwhile (a fleet
    pull, another admin) beyond keep_loaded unloaded the version under its gate, and the
    promotion then ended in 404 "unloaded" after the whole gate (review, session 39)."""
    from lineside_inspect.lifecycle import manager
    from lineside_inspect.lifecycle.golden import candidate

    client, roots = server
    lifecycle = client.app.state.lifecycle  # type: ignore[attr-defined]
    paths = {v: _package(tiny_onnx, roots, "held", v) for v in ("1", "2", "3")}
    assert client.post("/v1/models", json={"path": paths["1"]}).status_code == 200
    r = client.post("/v1/models", json={"path": paths["2"], "activate": False})
    assert r.status_code == 200, r.text
    board = encode_jpeg(np.full((32, 32, 3), 128, np.uint8))
    classes = client.app.state.registry.detector("held").class_names  # type: ignore[attr-defined]
    lifecycle.library.create("held", [candidate(board, expected="pass", boxes=[],
                                                source="test")], classes)
    real = manager.run_gate

    def gate_with_a_load_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # keep_loaded 2: 1 active, 2 under its gate, 3 loaded beside them
        r = client.post("/v1/models", json={"path": paths["3"], "activate": False})
        assert r.status_code == 200, r.text
        return real(*args, **kwargs)

    monkeypatch.setattr(manager, "run_gate", gate_with_a_load_meanwhile)
    # (a golden set of one good part: the gate runs, and its refusal is forced)
    lifecycle.promote("held", "2", golden="held", actor="test", force=True, reason="test")
    try:
        model = _listed(client, "held")
        assert model["active"] == "2"
        # once 2 is active, the bound applies at its activation: 3, unused, goes
        assert [v["version"] for v in model["versions"]] == ["1", "2"]
        assert [v["version"] for v in model["unloaded"]] == ["3"]
    finally:
        lifecycle.rollout.stop("held", "test over")


def test_a_rollback_refused_or_undone_leaves_the_version_it_loaded_again_unloaded(
        server: tuple[TestClient, Path], tiny_onnx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback to a version unloaded from memory loads it again from its package before
    its checks: refused (its gate) or undone (its audit entry not written), it left that
    version loaded (GET /v1/models, a model's memory, counted against keep_loaded) and the
    load beyond keep_loaded had unloaded another one. Now the registry is as it was
    (session 49, reload pass)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from lineside_inspect.lifecycle.records import Records

    client, roots = server
    for version, active in (("1", True), ("2", True), ("3", False)):
        r = client.post("/v1/models", json={"path": _package(tiny_onnx, roots, "back", version),
                                            "activate": active})
        assert r.status_code == 200, r.text
    r = client.delete("/v1/models/back/versions/1", params={"force": "true", "reason": "ram"})
    assert r.status_code == 200, r.text
    before = _listed(client, "back")
    assert (before["active"], [v["version"] for v in before["versions"]],
            [v["version"] for v in before["unloaded"]]) == ("2", ["2", "3"], ["1"])

    def locked(self: Records, **_: Any) -> None:
        raise OperationalError("INSERT audit", {}, sqlite3.OperationalError("database is locked"))

    with monkeypatch.context() as m:
        m.setattr(Records, "audit", locked)
        r = client.post("/v1/models/back/rollback", params={"from": "2"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
    assert _listed(client, "back") == before

    lifecycle = client.app.state.lifecycle  # type: ignore[attr-defined]
    lifecycle.records.audit(actor="lineside", action="auto_rollback", model="back",
                            version="2", reason="fail rate", details={"from": "1"})
    r = client.post("/v1/models/back/rollback", params={"from": "2"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "gate_failed", r.text
    assert _listed(client, "back") == before


def _three(tiny_onnx: Any, tmp: Path) -> tuple[Any, dict[str, str]]:
    """A registry (keep_loaded 2) of model m: 1 and 2 activated, 3 loaded beside, 1
    unloaded (forced: the way back); the packages' folders."""
    from lineside_inspect.server.registry import Registry

    registry = Registry(device="cpu", threads=1, keep_loaded=2)
    paths = {v: _package(tiny_onnx, tmp, "m", v) for v in ("1", "2", "3")}
    for version, active in (("1", True), ("2", True), ("3", False)):
        registry.load(paths[version], activate=active)
    registry.unload("m", "1", force=True)
    return registry, paths


def _state(registry: Any) -> tuple[str | None, list[str], list[str]]:
    slot = registry.models()["m"]
    return slot.active, list(slot.versions), list(slot.unloaded)


def test_two_blocks_holding_a_version_loaded_again_the_last_to_leave_settles_it(
        tiny_onnx: Any, tmp_path: Path) -> None:
    """Session 49 (attack3): two blocks of Registry.loaded for one unloaded version (a
    gate and a rollback at once): the first loaded it again (no trim), the second found it
    loaded. The first refused while the second ran left it loaded (the second used it),
    and then: the second standing applied no keep_loaded (three versions in memory, bound
    2), the second refused too left it loaded (not as found). Now the last to leave
    settles it."""
    registry, _ = _three(tiny_onnx, tmp_path)
    assert _state(registry) == ("2", ["2", "3"], ["1"])
    refused = RuntimeError("gate refused")
    for second_stands, after in ((True, ("2", ["2", "1"], ["3"])),  # as a load of 1 would
                                 (False, ("2", ["2", "3"], ["1"]))):  # as found
        registry, _ = _three(tiny_onnx, tmp_path / str(second_stands))
        first, second = registry.loaded("m", "1"), registry.loaded("m", "1")
        first.__enter__()  # loads 1 again
        second.__enter__()  # finds it loaded
        assert first.__exit__(RuntimeError, refused, None) is False  # refused: 1 held by second
        assert _state(registry) == ("2", ["2", "3", "1"], [])
        if second_stands:
            second.__exit__(None, None, None)
        else:
            assert second.__exit__(RuntimeError, refused, None) is False
        assert _state(registry) == after, second_stands
        with registry.holding("m", "2"):  # nothing left unsettled for a later block
            pass
        assert _state(registry) == after and not registry._busy

    # loaded anew by an admin (POST /v1/models) while a block that loaded it again runs:
    # the block refused unloads only what it loaded, never the admin's load
    registry, paths = _three(tiny_onnx, tmp_path / "anew")
    with pytest.raises(RuntimeError), registry.loaded("m", "1"):
        registry.load(paths["1"], activate=False)
        raise refused
    assert _state(registry)[1] == ["2", "1"] and not registry._busy


def test_a_block_loading_again_partway_closed_or_its_trim_failing_leaves_no_hold(
        tiny_onnx: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Session 49 (attack3): loaded(m, 1, 3) with 3's package gone after 1 was loaded
    again: 1 unloaded again, both back in their order (holds); a generator closed at its
    yield (a client gone during a gate): as refused (holds); keep_loaded raising once the
    block stood left both versions held for good (an unload refused 'being put in place'
    ever after) and the change that stood reported as failed: now logged, holds released."""
    import shutil

    from lineside_inspect.errors import PackageError
    from lineside_inspect.server.registry import Registry

    registry, paths = _three(tiny_onnx, tmp_path)
    registry.unload("m", "3")
    assert _state(registry) == ("2", ["2"], ["1", "3"])
    shutil.rmtree(paths["3"])
    with pytest.raises(PackageError, match="cannot be loaded again"), registry.loaded("m", "1", "3"):
        pytest.fail("the block ran without 3")
    assert _state(registry) == ("2", ["2"], ["1", "3"]) and not registry._busy

    def gate() -> Iterator[str]:
        with registry.loaded("m", "1"):
            yield "judging"

    running = gate()
    assert next(running) == "judging" and _state(registry)[1] == ["2", "1"]
    running.close()
    assert _state(registry) == ("2", ["2"], ["1", "3"]) and not registry._busy

    def failing(self: Registry, name: str, loaded: str, held: Any) -> None:
        raise RuntimeError("trim failed")

    with monkeypatch.context() as m:
        m.setattr(Registry, "_trim_locked", failing)
        with registry.loaded("m", "1"):
            pass
    assert not registry._busy
    registry.unload("m", "1", force=True)  # no longer held
    assert _state(registry) == ("2", ["2"], ["3", "1"])
