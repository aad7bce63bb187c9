"""Hot swap during a burst, failed loads, rollback, recipes, readiness, load shedding."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

MODEL = Path(__file__).resolve().parents[2] / "models" / "deeppcb" / "1"
JPEG = {"content-type": "image/jpeg"}


def _version(src: Path, dst: Path, version: str) -> Path:
    shutil.copytree(src, dst)
    card = json.loads((dst / "model.json").read_text())
    card["version"] = version
    (dst / "model.json").write_text(json.dumps(card))
    return dst


def test_hot_swap_during_burst_loses_no_request(launch, image_bytes: bytes, tmp_path: Path) -> None:
    srv = launch(max_concurrency=2, max_queue=64, model_roots=[str(tmp_path)])
    v2 = _version(MODEL, tmp_path / "deeppcb" / "2", "2")

    def inspect(_: int) -> tuple[int, str]:
        with srv.client("line") as c:
            r = c.post("/v1/inspect", content=image_bytes, headers=JPEG)
            return r.status_code, r.json()["model"]["version"] if r.status_code == 200 else r.text

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(inspect, i) for i in range(40)]
        with srv.client("admin") as admin:
            r = admin.post("/v1/models", json={"path": str(v2)})
            assert r.status_code == 200, r.text
            assert r.json()["active"] == "2"
        results = [f.result() for f in futures]
    assert all(status == 200 for status, _ in results), results
    assert {v for _, v in results} <= {"1", "2"}
    with srv.client("line") as c:
        assert c.post("/v1/inspect", content=image_bytes, headers=JPEG).json()["model"]["version"] == "2"
    with srv.client("admin") as admin:
        assert admin.post("/v1/models/deeppcb/rollback").json()["active"] == "1"
        assert admin.post("/v1/models/deeppcb/rollback").status_code == 422  # nothing earlier
        models = admin.get("/v1/models").json()
        assert models[0]["active"] == "1" and {v["version"] for v in models[0]["versions"]} == {"1", "2"}
        assert admin.post("/v1/models/deeppcb/activate", json={"version": "2"}).json()["active"] == "2"
        assert admin.post("/v1/models/deeppcb/activate", json={"version": "9"}).status_code == 404
        # a reason with a NUL is refused before anything changes: on PostgreSQL the model
        # was activated and then its audit row refused, leaving no trace
        nul = admin.post("/v1/models/deeppcb/activate", json={"version": "1", "reason": "a\u0000"})
        assert nul.status_code == 422 and "NUL" in nul.text
        assert admin.get("/v1/models").json()[0]["active"] == "2"


def test_a_yes_or_no_is_a_json_boolean(launch, tmp_path: Path) -> None:
    """``"activate": "yes"`` (or 1) loaded and activated the version."""
    srv = launch(model_roots=[str(tmp_path)])
    v2 = _version(MODEL, tmp_path / "deeppcb" / "2", "2")
    with srv.client("admin") as admin:
        for body in ({"activate": "yes"}, {"activate": 1}, {"activate": "false"},
                     {"activate": False, "force": "yes"}):
            r = admin.post("/v1/models", json={"path": str(v2), **body})
            assert r.status_code == 422, (body, r.text)
            field = next(iter(body)) if "force" not in body else "force"
            assert f"body.{field}" in r.json()["error"]["message"], r.text
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "1", "force": 1})
        assert r.status_code == 422 and "body.force" in r.json()["error"]["message"], r.text
        [model] = admin.get("/v1/models").json()
        assert model["active"] == "1" and [v["version"] for v in model["versions"]] == ["1"]
        r = admin.post("/v1/models", json={"path": str(v2), "activate": False})
        assert r.status_code == 200 and r.json()["active"] == "1", r.text


def test_failed_load_keeps_the_old_model_serving(launch, image_bytes: bytes, tmp_path: Path) -> None:
    srv = launch(model_roots=[str(tmp_path)])
    bad = _version(MODEL, tmp_path / "bad", "3")
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes()[:-10])
    with srv.client("admin") as admin:
        before = admin.get("/v1/models").json()[0]["active"]
        r = admin.post("/v1/models", json={"path": str(bad)})
        assert r.status_code == 422 and "sha256" in r.json()["error"]["message"]
        r = admin.post("/v1/models", json={"path": str(tmp_path / "missing")})
        assert r.status_code == 422 and "not found" in r.json()["error"]["message"]
        assert admin.get("/v1/models").json()[0]["active"] == before
    with srv.client("line") as c:
        assert c.post("/v1/inspect", content=image_bytes, headers=JPEG).status_code == 200


def test_recipes_switch_products_without_reload(srv, image_bytes: bytes) -> None:
    lenient = {"name": "lenient", "version": "2", "model": "deeppcb", "default_min_score": 1.0}
    strict = {"name": "strict", "version": "1", "model": "deeppcb", "default_min_score": 0.0,
              "critical": ["open"]}
    with srv.client("admin") as admin:
        assert admin.put("/v1/recipes/lenient", json=lenient).status_code == 200
        assert admin.put("/v1/recipes/strict", json=strict).status_code == 200
        r = admin.put("/v1/recipes/typo", json={**strict, "name": "typo", "critical": ["opne"]})
        assert r.status_code == 422 and "unknown class 'opne'" in r.json()["error"]["message"]
        r = admin.put("/v1/recipes/x", json={"name": "x"})
        assert r.status_code == 422 and "model" in r.json()["error"]["message"]
        names = {r["name"] for r in admin.get("/v1/recipes").json()}
    assert {"deeppcb-default", "lenient", "strict"} <= names
    with srv.client("line") as c:
        a = c.post("/v1/inspect?recipe=lenient", content=image_bytes, headers=JPEG).json()
        b = c.post("/v1/inspect?recipe=strict", content=image_bytes, headers=JPEG).json()
    assert a["verdict"] == "pass" and a["defects"] == [] and a["recipe"]["version"] == "2"
    assert b["verdict"] == "fail" and len(b["defects"]) > 0


def test_overload_answers_503_with_retry_after(launch, image_bytes: bytes) -> None:
    srv = launch(max_concurrency=1, max_queue=0)

    def inspect(_: int) -> httpx.Response:
        with srv.client("line") as c:
            return c.post("/v1/inspect", content=image_bytes, headers=JPEG)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(inspect, range(36)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.headers["retry-after"] == "1" and shed.json()["error"]["code"] == "overloaded"


def test_readiness_follows_lifecycle(srv) -> None:
    with srv.client() as c:
        assert c.get("/readyz").json() == {"ready": True}
        srv.app.state.ready = False  # what shutdown does first
        try:
            assert c.get("/readyz").status_code == 503
            assert c.get("/v2/health/ready").status_code == 503
            assert c.get("/healthz").status_code == 200
        finally:
            srv.app.state.ready = True
