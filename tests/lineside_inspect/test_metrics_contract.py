"""What monitoring reads: every metric the code can serve is documented and every metric the
docs name is served, both with Prometheus' naming (counters ``_total``, units last), and no
request grows a series."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from typing import Any

from .conftest import MODEL, ROOT

# the metric classes of prometheus_client and the name each exposes
_SUFFIX = {"Counter": "_total", "Gauge": "", "Histogram": "", "Info": "_info"}
# the docs' words that start as a metric does and are none (packages, a table, a cookie)
_NOT_METRICS = {"lineside_inspect", "lineside_training", "lineside_schema", "lineside_session"}
_HISTORY = {"security.md", "upgrading.md"}  # what was, not what is


def declared() -> dict[str, str]:
    """``{exposed name: type}`` of every metric made in the edge side's code."""
    found: dict[str, str] = {}
    for path in (ROOT / "inspect" / "lineside_inspect").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in _SUFFIX and node.args \
                    and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).startswith("lineside_"):
                found[node.args[0].value + _SUFFIX[node.func.id]] = node.func.id
    return found


def documented() -> set[str]:
    pages = [ROOT / "README.md", *(p for p in (ROOT / "docs").rglob("*.md")
                                   if p.name not in _HISTORY)]
    names = {m for p in pages for m in re.findall(r"\blineside_[a-z_]*[a-z]", p.read_text())}
    return names - _NOT_METRICS


def test_every_metric_served_is_documented_and_every_one_documented_is_served() -> None:
    code, docs = declared(), documented()
    assert len(code) > 30  # the walk found the metrics
    assert sorted(set(code) - docs) == [], "served, in no doc"
    assert sorted(docs - set(code)) == [], "documented, never served"
    table = (ROOT / "README.md").read_text().split("<!-- metrics: box -->")[1].split("\n\n")[0]
    rows = re.findall(r"^\| `(lineside_[a-z_]+)[^`]*` \| (\w+) \|", table, re.M)
    assert len(rows) > 20
    for name, kind in rows:  # the README's table says each one's type
        assert {"Info": "gauge"}.get(code[name], code[name].lower()) == kind, (name, kind)


def test_names_follow_prometheus_conventions() -> None:
    for name, kind in declared().items():
        assert name.endswith("_total") == (kind == "Counter"), name
        for unit in ("seconds", "bytes"):  # a unit is the last word (before _total)
            assert unit not in name or name.removesuffix("_total").endswith(unit), name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|kb|mb)(_|$)", name), name


def _series(text: str) -> set[str]:
    return {ln.rsplit(" ", 1)[0] for ln in text.splitlines() if ln.startswith("lineside_")}


def test_requests_grow_no_series_and_the_probes_take_no_key(srv, image_bytes: bytes) -> None:
    jpeg = {"content-type": "image/jpeg"}

    def junk(c: Any, i: int) -> None:
        for params in ({"camera_id": f"cam-{i}"}, {"recipe": f"recipe-{i}"},
                       {"model": f"model-{i}"}, {"camera_id": f"cam-{i}", "part_id": f"p{i}"}):
            c.post("/v1/inspect", content=image_bytes, headers=jpeg, params=params)
        c.post(f"/v1/cameras/cam-{i}/trigger")
        c.get(f"/v1/inspections/{i:032x}")
        c.get(f"/v1/models/model-{i}")
        c.get(f"/v1/recipes/recipe-{i}")
        c.get(f"/no/such/route/{i}")
        c.get("/v1/inspections", params={"camera_id": f"cam-{i}", "recipe": f"recipe-{i}"})

    with srv.client("line") as c:
        junk(c, 0)  # each kind of answer once
        with srv.client() as anonymous:  # no key: the probes and the metrics answer
            before = anonymous.get("/metrics")
            health = anonymous.get("/healthz")
            assert (before.status_code, anonymous.get("/readyz").json()) == (200, {"ready": True})
        for i in range(1, 9):
            junk(c, i)
        after = c.get("/metrics").text
    assert _series(before.text) == _series(after), "a request grew a series"
    assert not re.search(r"(cam|recipe|model)-\d", after)
    # liveness says it is alive and nothing else (no version, no path)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert not set(health.headers) & {"x-powered-by", "x-version"}
    served = {ln.split()[2] for ln in after.splitlines() if ln.startswith("# TYPE lineside_")}
    assert served <= set(declared())


def test_the_active_versions_of_models_whose_names_differ_by_punctuation_scrape(
        launch: Any, tmp_path: Path) -> None:
    """Model names were once the label names of one ``lineside_model_info`` sample, their
    '-' and '.' made '_': two models ``a-b`` and ``a.b`` gave a label twice, a sample
    Prometheus refuses, and the whole scrape failed."""
    paths = []
    for name in ("a-b", "a.b"):
        dest = tmp_path / name
        shutil.copytree(MODEL, dest)
        card = json.loads((dest / "model.json").read_text())
        (dest / "model.json").write_text(json.dumps({**card, "name": name}))
        paths.append(str(dest))
    running = launch(models=[str(MODEL), *paths])
    with running.client() as c:
        text = c.get("/metrics").text
    info = sorted(ln for ln in text.splitlines() if ln.startswith("lineside_model_info"))
    assert info == ['lineside_model_info{model="a-b",version="1"} 1.0',
                    'lineside_model_info{model="a.b",version="1"} 1.0',
                    'lineside_model_info{model="deeppcb",version="1"} 1.0']
    for ln in text.splitlines():  # no sample names a label twice
        if ln.startswith("lineside_") and "{" in ln:
            labels = re.findall(r'([a-zA-Z_]\w*)="', ln.split("{", 1)[1].rsplit("}", 1)[0])
            assert len(labels) == len(set(labels)), ln


def test_a_version_activated_off_the_admin_routes_is_the_one_scraped(
        launch: Any, tmp_path: Path) -> None:
    """``lineside_model_info`` was set by the admin routes and at start only: a version a
    fleet box's model puller, an automatic rollback or a kept model's restore activated
    (each calls the registry, not a route) left it naming the version before."""
    paths = []
    for version in ("1", "2"):
        dest = tmp_path / "m" / version
        shutil.copytree(MODEL, dest)
        card = json.loads((dest / "model.json").read_text())
        (dest / "model.json").write_text(json.dumps({**card, "name": "m", "version": version}))
        paths.append(str(dest))
    running = launch(models=[str(MODEL), *paths])
    registry = running.app.state.registry

    def info() -> list[str]:
        with running.client() as c:
            text = c.get("/metrics").text
        return [ln for ln in text.splitlines() if ln.startswith('lineside_model_info{model="m"')]

    before = registry.models()["m"].active
    after = "2" if before == "1" else "1"
    assert info() == [f'lineside_model_info{{model="m",version="{before}"}} 1.0']
    registry.activate("m", after)  # as the fleet's puller and the lifecycle's rollback do
    assert info() == [f'lineside_model_info{{model="m",version="{after}"}} 1.0']
