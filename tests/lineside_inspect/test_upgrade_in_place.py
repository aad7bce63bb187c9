"""Upgrade in place: this release opens a data folder and database an older release wrote
(tests/lineside_inspect/old_release, made by tools/old_release_fixture.py from a55a127:
its docstring says what is in it) and answers for everything in it as that release did.
SQLite: the folder as the old server left it when killed (-9), three inspections in its
journal only. PostgreSQL: the old database's pg_dump replayed into a fresh database, with
the folder of that run."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lineside_inspect.dataset.canonical import read_dataset
from lineside_inspect.server.responses import DashboardStats
from lineside_inspect.store.pull import pull_from_server
from lineside_inspect.store.stats import Shifts

from .conftest import KEYS, MODEL, ROOT, _initdb, keyed, start_server

FIXTURE = Path(__file__).parent / "old_release"
MODELS = [str(MODEL), str(ROOT / "models" / "deeppcb-ref" / "1")]


def expected(tag: str) -> dict[str, Any]:
    return json.loads(gzip.decompress((FIXTURE / f"expected-{tag}.json.gz").read_bytes()))


def kept(old: Any, new: Any, where: str = "") -> list[str]:
    """Where ``new`` does not hold what ``old`` held: every key of an old object with its
    value (a newer release may add keys), lists item by item."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for k, v in old.items()
                for line in ([f"{where}.{k}: gone"] if k not in new else kept(v, new[k], f"{where}.{k}"))]
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} items, now {len(new)}"]
        return [line for n, (a, b) in enumerate(zip(old, new, strict=True))
                for line in kept(a, b, f"{where}[{n}]")]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def unpack(tag: str, into: Path) -> Path:
    with tarfile.open(FIXTURE / f"{tag}.tar.gz") as tar:
        tar.extractall(into, filter="data")
    return into / "data"


def replay_dump(server: str, name: str) -> str:
    """A fresh database ``name`` on ``server`` holding the old release's dump."""
    psql = _initdb().parent / "psql"  # type: ignore[union-attr]  # (postgres ran it)
    plain = server.replace("postgresql+psycopg", "postgresql")
    subprocess.run([str(psql), f"{plain}/postgres", "-qc", f'CREATE DATABASE "{name}"'],
                   check=True, capture_output=True)
    out = subprocess.run([str(psql), "-q", "-v", "ON_ERROR_STOP=1", f"{plain}/{name}"],
                         input=gzip.decompress((FIXTURE / "pg.sql.gz").read_bytes()),
                         capture_output=True)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "pg"])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, str | None]:
    tag = request.param
    data = unpack(tag, tmp_path)
    url = replay_dump(request.getfixturevalue("postgres"), f"old_{tmp_path.name[-20:]}".lower()
                      .replace("-", "_")) if tag == "pg" else None
    return tag, data, url


def test_an_old_release_store_reads_back_whole(upgraded: tuple[str, Path, str | None],
                                               tmp_path: Path) -> None:
    tag, data, url = upgraded
    old = expected(tag)
    assert any((data / "journal").glob("*.journal"))  # left unapplied by the kill
    running, stop = start_server(keyed(data_dir=str(data), database_url=url, models=MODELS))
    try:
        c = running.client("admin")
        listed = c.get("/v1/inspections", params={"limit": 500}).json()
        # every inspection: those the old database held, and those only its journal held
        assert listed["total"] == old["total"] == len(old["inspections"]) + len(old["journal"])
        assert {i["id"] for i in listed["items"]} == set(old["inspections"]) | set(old["journal"])
        for i, was in old["inspections"].items():
            now = c.get(f"/v1/inspections/{i}")
            assert now.status_code == 200
            assert kept(was["record"], now.json(), i) == []
            image = c.get(f"/v1/inspections/{i}/image")
            assert hashlib.sha256(image.content).hexdigest() == was["image_sha256"]
            ref = c.get(f"/v1/inspections/{i}/reference")
            assert (hashlib.sha256(ref.content).hexdigest() if ref.status_code == 200
                    else None) == was["reference_sha256"], i
        for i, answer in old["journal"].items():  # as the line was answered
            now = c.get(f"/v1/inspections/{i}").json()
            assert kept({k: answer[k] for k in ("id", "verdict", "defects", "reasons", "part_id",
                                                "camera_id", "recipe", "model")}, now, i) == []
            assert now["has_image"] and c.get(f"/v1/inspections/{i}/image").status_code == 200
        assert kept(old["/v1/reviews"], c.get("/v1/reviews", params={"limit": 500}).json()) == []
        # a recipe put over the API is still the one that judges
        recipes = {r["name"]: r for r in c.get("/v1/recipes").json()}
        was_custom = next(r for r in old["/v1/recipes"] if r["name"] == "custom")
        assert kept(was_custom, recipes["custom"]) == [] and recipes["custom"]["put_over_api"]
        assert kept(old["/v1/references"], c.get("/v1/references").json()) == []
        board = c.get("/v1/references/board1")
        assert hashlib.sha256(board.content).hexdigest() == old["/v1/references/board1"]
        assert kept(old["/v1/golden/g1"], c.get("/v1/golden/g1").json()) == []
        assert kept(old["/v1/models/deeppcb/gates"], c.get("/v1/models/deeppcb/gates").json()) == []
        # the audit trail: every old entry as it was (this start adds its own after them)
        audit = {e["id"]: e for e in c.get("/v1/audit", params={"limit": 500}).json()["items"]}
        for entry in old["/v1/audit"]["items"]:
            assert kept(entry, audit.get(entry["id"]), str(entry["id"])) == []
        # its admissions (the version it promoted was loaded over the API, and a restart of
        # either release serves the configured ones: the loaded versions are not compared)
        lineage = c.get("/v1/models/deeppcb/lineage").json()
        assert kept(old["/v1/models/deeppcb/lineage"]["admissions"], lineage["admissions"]) == []
        # the dashboard of the old release's own clock, once it applied its journal (the
        # first hourly row starts with the window now: session 37)
        was = old["stats"]
        until = datetime.fromisoformat(was["until"].replace("Z", "+00:00"))
        doc = running.app.state.store.stats(
            24, now=until, shifts=Shifts(tuple(was["shift_starts"]), UTC))
        figures = DashboardStats.model_validate({**doc, "cameras": []}).model_dump(mode="json")
        for key in ("quality", "pareto", "verdicts_per_hour", "defects_per_class",
                    "inspections_per_camera", "reviewers", "reviewed_fails",
                    "false_rejects_confirmed", "shifts"):
            assert kept(was[key], figures[key], key) == []
        assert kept(was["hourly"][1:], figures["hourly"][1:], "hourly") == []
        # data pull takes what the old release's pull took
        pulled = tmp_path / "pulled"
        pull_from_server(running.url, pulled, key=KEYS["reviewer"], reviewed=False)
        ds = read_dataset(pulled)
        got = {im.file_name: sorted([b.label, [round(v, 3) for v in (b.x1, b.y1, b.x2 - b.x1,
                                                                    b.y2 - b.y1)]]
                                    for b in im.boxes) for im in ds.images}
        was_pulled = {k: [[n, [round(v, 3) for v in box]] for n, box in v]
                      for k, v in old["pull"].items()}
        # but each picture once: of byte-identical frames, one (session 52), as it was pulled

        def picture(name: str) -> str:
            if name.startswith("references/"):
                return name
            return hashlib.sha256(c.get(f"/v1/inspections/{Path(name).stem}/image")
                                  .content).hexdigest()

        assert all(was_pulled.get(k) == v for k, v in got.items()), got
        assert len({picture(k) for k in got}) == len(got)
        assert {picture(k) for k in got} == {picture(k) for k in was_pulled}
    finally:
        stop()
    assert not any((data / "journal").glob("*.journal"))  # applied, then removed
