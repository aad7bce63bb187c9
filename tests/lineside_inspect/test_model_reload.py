"""A version unloaded from memory chosen again: every way of choosing it (an activation, a
recipe pinning it, a shadow run, a promotion) loads it again from its package, or says
why not; unloads racing recipe puts, hot swaps and inspections in flight (session 40)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lineside_inspect.config import ApiKey, Settings
from lineside_inspect.imageio import encode_jpeg
from lineside_inspect.server.app import create_app

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models" / "deeppcb" / "1"
ADMIN = "admin-secret"


def _bundled(roots: Path, version: str) -> Path:
    """The bundled deeppcb package copied under ``version`` (its card says it)."""
    dst = roots / "deeppcb" / version
    shutil.copytree(BUNDLED, dst)
    card = json.loads((dst / "model.json").read_text())
    card["version"] = version
    (dst / "model.json").write_text(json.dumps(card))
    return dst


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """The bundled model's version 1 serving in process (no port), two versions of a model
    kept in memory, two inferences at a time; its model_roots."""
    tmp = tmp_path_factory.mktemp("reload")
    roots = tmp / "roots"
    v1 = _bundled(roots, "1")
    settings = Settings(models=[str(v1)], device="cpu", threads=1, data_dir=str(tmp / "data"),
                        model_roots=[str(roots)], keep_loaded=2, max_concurrency=2,
                        api_keys=[ApiKey.from_plain("admin", "admin", ADMIN)])  # type: ignore[arg-type]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        yield client, roots


def _listed(client: TestClient, name: str) -> tuple[list[str], list[str]]:
    """``name``'s loaded and unloaded versions, as GET /v1/models lists them."""
    model = next(m for m in client.get("/v1/models").json() if m["name"] == name)
    return ([v["version"] for v in model["versions"]],
            [v["version"] for v in model["unloaded"]])


def test_every_way_of_choosing_an_unloaded_version_loads_it(
        server: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    client, roots = server
    for version in ("2", "3"):
        r = client.post("/v1/models", json={"path": str(_bundled(roots, version))})
        assert r.status_code == 200 and r.json()["active"] == version, r.text
    assert _listed(client, "deeppcb") == (["2", "3"], ["1"])

    # an activation by hand: it is on disk, so it loads (was 404 "unloaded")
    r = client.post("/v1/models/deeppcb/activate", json={"version": "1"})
    assert r.status_code == 200 and r.json()["active"] == "1", r.text
    assert _listed(client, "deeppcb") == (["3", "1"], ["2"])

    # a recipe pinning it
    pin = {"name": "pin2", "version": "1", "model": "deeppcb", "model_version": "2"}
    r = client.put("/v1/recipes/pin2", json=pin)
    assert r.status_code == 200, r.text
    assert "2" in _listed(client, "deeppcb")[0]
    assert client.delete("/v1/recipes/pin2").status_code == 200
    assert client.delete("/v1/models/deeppcb/versions/2").status_code == 200

    # its package changed on disk: a clear 422 naming why, and nothing changes
    card_file = roots / "deeppcb" / "2" / "model.json"
    card = card_file.read_text()
    changed = json.loads(card)
    changed["thresholds"]["open"] = 0.5
    card_file.write_text(json.dumps(changed))
    try:
        for r in (client.post("/v1/models/deeppcb/shadow", json={"version": "2"}),
                  client.post("/v1/models/deeppcb/activate", json={"version": "2"}),
                  client.put("/v1/recipes/pin2", json=pin)):
            assert r.status_code == 422, r.text
            assert "unloaded from memory and cannot be loaded again" in r.text
            assert "changed on disk" in r.text
    finally:
        card_file.write_text(card)
    assert _listed(client, "deeppcb") == (["3", "1"], ["2"])
    assert client.get("/v1/models/deeppcb/shadow").json()["running"] is False

    # a DELETE of the version a hot swap loaded, before its activation: it loads again
    lifecycle = client.app.state.lifecycle  # type: ignore[attr-defined]
    real = lifecycle.activate
    deleted: list[int] = []

    def unloaded_first(model: str, version: str, **kwargs: Any) -> Any:
        if not deleted:
            deleted.append(client.delete(f"/v1/models/{model}/versions/{version}").status_code)
        return real(model, version, **kwargs)

    monkeypatch.setattr(lifecycle, "activate", unloaded_first)
    r = client.post("/v1/models", json={"path": str(_bundled(roots, "4"))})
    assert deleted == [200]
    assert r.status_code == 200 and r.json()["active"] == "4", r.text
    assert "4" in _listed(client, "deeppcb")[0]


def test_a_load_meanwhile_does_not_unload_the_version_a_recipe_put_pins(
        server: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch, tiny_onnx: Any) -> None:
    """A recipe put over the API was checked against its pinned version outside the
    registry's lock: a load meanwhile beyond keep_loaded (a fleet pull) unloaded that
    version, and the recipe then pinned one no longer in memory (404 on each of its
    inspections; session 39's leftover)."""
    client, roots = server
    registry = client.app.state.registry  # type: ignore[attr-defined]
    paths = {v: tiny_onnx.package(roots / "pinned" / v, tiny_onnx.graph(), name="pinned",
                                  version=v) for v in ("1", "2", "3")}
    assert client.post("/v1/models", json={"path": str(paths["1"])}).status_code == 200
    r = client.post("/v1/models", json={"path": str(paths["2"]), "activate": False})
    assert r.status_code == 200, r.text
    real = registry.check_recipe

    def load_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # keep_loaded 2: 1 active, 2 being pinned, 3 loaded beside them
        registry.load(paths["3"], activate=False)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "check_recipe", load_meanwhile)
    pin = {"name": "pinned2", "version": "1", "model": "pinned", "model_version": "2"}
    assert client.put("/v1/recipes/pinned2", json=pin).status_code == 200
    monkeypatch.undo()
    assert "2" in _listed(client, "pinned")[0]
    jpeg = encode_jpeg(np.full((32, 32, 3), 128, np.uint8))
    r = client.post("/v1/inspect", params={"recipe": "pinned2"}, content=jpeg,
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["model"]["version"] == "2", r.text

    # a gate and a promotion of a version unloaded: loaded again, then gated
    from lineside_inspect.lifecycle.golden import candidate

    lifecycle = client.app.state.lifecycle  # type: ignore[attr-defined]
    lifecycle.library.create("pinned", [candidate(jpeg, expected="pass", boxes=[],
                                                  source="test")], ["a"])
    follows = {"name": "pinned", "version": "1", "model": "pinned"}  # (what a watch counts)
    assert client.put("/v1/recipes/pinned", json=follows).status_code == 200
    for route, body in (("gate", {}), ("promote", {"force": True, "reason": "test",
                                                   "recipe": "pinned"})):
        assert client.delete("/v1/models/pinned/versions/3").status_code == 200
        r = client.post(f"/v1/models/pinned/{route}", json={"version": "3", "golden": "pinned",
                                                            **body})
        assert r.status_code == 200, r.text
        assert "3" in _listed(client, "pinned")[0]
    assert _listed(client, "pinned")[0] == ["1", "2", "3"] and r.json()["rollout"]
    lifecycle.rollout.stop("pinned", "test over")


def test_unloads_racing_puts_swaps_and_inspections(
        server: tuple[TestClient, Path], tiny_onnx: Any) -> None:
    """Real threads through the app: inspections in flight, two DELETEs of one version, a
    recipe put pinning it and an activation, at once. No 5xx; each inspection a verdict;
    the pinned version loaded at the end; one audit entry per unload made."""
    client, roots = server
    for v in ("1", "2", "3"):
        path = tiny_onnx.package(roots / "race" / v, tiny_onnx.graph(), name="race", version=v)
        r = client.post("/v1/models", json={"path": str(path), "activate": v == "1"})
        assert r.status_code == 200, r.text
    assert client.put("/v1/recipes/race", json={"name": "race", "version": "1",
                                                "model": "race"}).status_code == 200
    jpeg = encode_jpeg(np.full((32, 32, 3), 128, np.uint8))
    pin = {"name": "race2", "version": "1", "model": "race", "model_version": "2"}
    unload = "/v1/models/race/versions/2"

    def inspect() -> Any:
        return client.post("/v1/inspect", params={"recipe": "race"}, content=jpeg,
                           headers={"content-type": "image/jpeg"})

    made = 0
    with ThreadPoolExecutor(8) as pool:
        for target in ("3", "1", "3"):
            jobs = {
                "inspect": [pool.submit(inspect) for _ in range(4)],
                "delete": [pool.submit(client.delete, unload,
                                       params={"force": "true", "reason": "race"})
                           for _ in range(2)],
                "put": [pool.submit(client.put, "/v1/recipes/race2", json=pin)],
                "activate": [pool.submit(client.post, "/v1/models/race/activate",
                                         json={"version": target})],
            }
            done = {k: [f.result(timeout=60) for f in fs] for k, fs in jobs.items()}
            for r in (r for rs in done.values() for r in rs):
                assert r.status_code < 500, r.text
            for r in done["inspect"]:
                assert r.status_code == 200 and r.json()["verdict"] in ("pass", "fail"), r.text
            assert [r.status_code for r in done["put"] + done["activate"]] == [200, 200]
            for r in done["delete"]:
                # one unloads it, or it is pinned (409), or it was unloaded already (404)
                assert r.status_code in (200, 404, 409), r.text
                if r.status_code != 200:
                    error = r.json()["error"]
                    assert error["code"] == {404: "not_found", 409: "version_in_use"}[
                        r.status_code] and "model race" in error["message"], r.text
            made += sum(r.status_code == 200 for r in done["delete"])
            loaded, _ = _listed(client, "race")
            assert "2" in loaded and target in loaded  # pinned; active
            assert client.delete("/v1/recipes/race2").status_code == 200
    audit = client.get("/v1/audit", params={"model": "race", "limit": 100}).json()["items"]
    assert sum(a["action"] in ("unload", "force_unload") for a in audit) == made
    scraped = client.get("/metrics").text
    for version in ("1", "2", "3"):
        series = f'lineside_model_version_loaded{{model="race",version="{version}"}} 1.0'
        assert (series in scraped) == (version in _listed(client, "race")[0])


def test_a_recipe_pinning_an_unloaded_version_is_checked_against_the_cameras(
        tmp_path: Path) -> None:
    """The cameras' check of a recipe put over the API passed over a pinned version not in
    memory; loaded again after it, a reference model went to a camera naming no golden
    image (each of its triggers then 422)."""
    from lineside_inspect.config import CameraConfig

    roots, frames = tmp_path / "roots", tmp_path / "frames"
    v1 = _bundled(roots, "1")
    ref = roots / "deeppcb" / "2"  # version 2 compares each frame with a golden image
    shutil.copytree(ROOT / "models" / "deeppcb-ref" / "1", ref)
    card = json.loads((ref / "model.json").read_text())
    card.update(name="deeppcb", version="2")
    card["default_recipe"]["model"] = "deeppcb"
    (ref / "model.json").write_text(json.dumps(card))
    frames.mkdir()
    (frames / "a.jpg").write_bytes(encode_jpeg(np.full((32, 32, 3), 128, np.uint8)))
    cams = [CameraConfig(id="sim1", source=str(frames), recipe="deeppcb", fps=0.5)]
    settings = Settings(models=[str(v1)], device="cpu", threads=1, data_dir=str(tmp_path / "d"),
                        model_roots=[str(roots)], keep_loaded=2, cameras=cams,
                        api_keys=[ApiKey.from_plain("admin", "admin", ADMIN)])  # type: ignore[arg-type]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        r = client.post("/v1/models", json={"path": str(ref), "activate": False})
        assert r.status_code == 200, r.text
        assert client.delete("/v1/models/deeppcb/versions/2").status_code == 200
        body = {"name": "deeppcb", "version": "9", "model": "deeppcb", "model_version": "2"}
        r = client.put("/v1/recipes/deeppcb", json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "recipe_breaks_camera", r.text
        assert "camera(s) sim1 name none" in r.json()["error"]["message"]
        recipes = client.get("/v1/recipes").json()
        assert recipes and all(r["model_version"] != "2" for r in recipes)
