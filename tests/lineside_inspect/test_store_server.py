"""The store behind a real server: missing images are 404s without paths, boxes sharing
a database serve only their own images, a second ``lineside serve`` on a live data folder
stops before touching it, bad review boxes and offsets are 422s, times carry their offset
(issue 11, items 2, 3, 7, 10, 17)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from lineside_inspect.store.pull import pull_from_server

from .conftest import KEYS, MODEL, Running
from .server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample" / "images"
REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"
JPEG = {"content-type": "image/jpeg"}


def _inspect(srv: Running, **params: Any) -> dict[str, Any]:
    image = next(SAMPLE.rglob("*_test.jpg")).read_bytes()
    with srv.client("line") as c:
        r = c.post("/v1/inspect", content=image, headers=JPEG, params=params)
    assert r.status_code == 200 and r.json()["stored"] is True, r.text
    return dict(r.json())


def _store_dir(srv: Running) -> Path:
    return Path(srv.app.state.store.data_dir)


def test_missing_stored_image_is_a_404_without_a_path(launch) -> None:
    srv = launch(store_pass_rate=1.0, models=[str(REF_MODEL)])
    test = next(SAMPLE.rglob("*_test.jpg"))
    template = test.with_name(test.name.replace("_test", "_temp"))
    with srv.client("line") as c:
        r = c.post("/v1/inspect", files={"image": ("t.jpg", test.read_bytes(), "image/jpeg"),
                                         "reference": ("r.jpg", template.read_bytes(), "image/jpeg")})
        assert r.status_code == 200 and r.json()["stored"] is True
    iid = r.json()["id"]
    routes = [f"/v1/inspections/{iid}/{what}" for what in ("image", "reference", "annotated")]
    with srv.client("reviewer") as c:
        assert [c.get(u).status_code for u in routes] == [200, 200, 200]
        assert c.get(routes[0]).content == test.read_bytes()
        assert c.get(routes[1]).content == template.read_bytes()
        for f in (_store_dir(srv) / "images").rglob("*.jpg"):  # lost from the disk
            f.unlink()
        for url in routes:
            r = c.get(url)
            assert r.status_code == 404, (url, r.status_code, r.text)
            assert r.json()["error"]["code"] == "not_found"
            assert "missing" in r.json()["error"]["message"]
            assert "/" not in r.text and str(_store_dir(srv)) not in r.text
        assert c.get("/readyz").status_code == 200


def test_boxes_sharing_a_database_serve_only_their_own_images(launch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = launch(store_pass_rate=1.0, database_url=url, box_id="line-a",
               data_dir=str(tmp_path / "a"))
    b = launch(store_pass_rate=1.0, database_url=url, data_dir=str(tmp_path / "b"))
    on_a, on_b = _inspect(a), _inspect(b)
    # a read applies its own box's journal; box a's rows reach the shared database when a's
    # writer applies them (within store_apply_interval_s): here, at once
    a.app.state.store.flush()
    with b.client("reviewer") as c:
        listed = {i["id"]: i for i in c.get("/v1/inspections").json()["items"]}
        assert set(listed) == {on_a["id"], on_b["id"]}  # one database: both boxes' rows
        assert listed[on_a["id"]]["box_id"] == "line-a"
        assert listed[on_b["id"]]["box_id"] == (tmp_path / "b" / "box_id").read_text().strip()
        r = c.get(f"/v1/inspections/{on_a['id']}/image")
        assert r.status_code == 404 and "stored on box line-a" in r.json()["error"]["message"]
        assert c.get(f"/v1/inspections/{on_b['id']}/image").status_code == 200
        for iid in (on_a["id"], on_b["id"]):  # reviewing works from either box
            assert c.post(f"/v1/inspections/{iid}/reviews", json={"action": "confirm"}).status_code == 200
    pulled = pull_from_server(b.url, tmp_path / "pulled", key=KEYS["reviewer"])
    assert [Path(r.file_name).stem for r in pulled.images] == [on_b["id"]]  # a's image is on a


def test_second_serve_on_a_live_data_dir_exits_before_touching_it(launch, tmp_path: Path) -> None:
    live = launch(keys=False, store_pass_rate=1.0, data_dir=str(tmp_path / "store"))
    docs = [_inspect(live) for _ in range(3)]
    live.app.state.store.flush()  # their images out of the journal into the folder
    before = sorted(p for p in (tmp_path / "store" / "images").rglob("*") if p.is_file())
    assert len(before) == 3
    # an image being written right now, its row not committed yet: the second server's
    # start-up cleanup would have deleted it as an orphan
    in_flight = before[0].with_name("0123456789abcdef0123456789abcdef.jpg")
    in_flight.write_bytes(before[0].read_bytes())
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"models": [str(MODEL)], "device": "cpu", "port": port,
                                      "data_dir": str(tmp_path / "store")}))
    lineside = Path(sys.executable).parent / "lineside"
    out = subprocess.run([str(lineside), "serve", "--config", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    errors = [ln for ln in out.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and f"in use by process {os.getpid()}" in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    with socket.socket() as s:  # it never got as far as listening
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert in_flight.is_file()
    assert sorted(p for p in (tmp_path / "store" / "images").rglob("*") if p.is_file()) == \
        sorted([*before, in_flight])
    with live.client() as c:
        for d in docs:
            assert c.get(f"/v1/inspections/{d['id']}/image").status_code == 200


def test_bad_review_boxes_and_offsets_are_422s(srv: Running) -> None:
    doc = _inspect(srv)
    url = f"/v1/inspections/{doc['id']}/reviews"
    bad_boxes: list[Any] = [["a", 1, 2, 3], [1, 2, 3], [1, 2, 3, 4, 5], None, "1,2,3,4",
                            ["1", 0, 5, 5], [True, 0, 5, 5]]
    with srv.client("reviewer") as c:
        for box in bad_boxes:
            r = c.post(url, json={"action": "missed_defect", "boxes": [{"label": "short", "box": box}]})
            assert r.status_code == 422, (box, r.status_code, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
            assert "boxes.0.box" in r.json()["error"]["message"], r.text
        for number in ("NaN", "Infinity", "1e400"):  # Python's JSON parser takes all three
            body = '{"action": "missed_defect", "boxes": [{"label": "short", "box": [%s, 1, 2, 3]}]}'
            r = c.post(url, content=body % number, headers={"content-type": "application/json"})
            assert r.status_code == 422 and "boxes.0.box.0" in r.json()["error"]["message"], r.text
        r = c.post(url, json={"action": "missed_defect", "boxes": [{"box": [1, 2, 3, 4]}]})
        assert r.status_code == 422 and "boxes.0.label" in r.json()["error"]["message"]
        good = c.post(url, json={"action": "missed_defect",
                                 "boxes": [{"label": "short", "box": [1, 2.5, 30, 40]}]})
        assert good.status_code == 200 and good.json()["reviews"][-1]["boxes"][-1] == \
            {"label": "short", "box": [1.0, 2.5, 30.0, 40.0]}
        # an inspection's truth holds at most 1,000 boxes, however many reviews add them
        # (each review row keeps the whole truth: 80 reviews of 1,000 made one inspection
        # a 136 MB answer; QA review, session 32)
        held = len(good.json()["reviews"][-1]["boxes"])
        box = {"label": "short", "box": [1, 1, 5, 5]}
        fill = c.post(url, json={"action": "missed_defect", "boxes": [box] * (1000 - held)})
        assert fill.status_code == 200, fill.text
        over = c.post(url, json={"action": "missed_defect", "boxes": [box]})
        assert over.status_code == 422, over.text
        assert "would hold 1001 boxes; an inspection's truth holds at most 1000" in \
            over.json()["error"]["message"]
        assert len(c.get(f"/v1/inspections/{doc['id']}").json()["reviews"][-1]["boxes"]) == 1000
        for offset in (2**63, 2**63 - 1, 10**9 + 1, -1):
            r = c.get("/v1/inspections", params={"offset": offset})
            assert r.status_code == 422 and "offset" in r.json()["error"]["message"], r.text
        r = c.get("/v1/inspections", params={"offset": 10**9})
        assert r.status_code == 200 and r.json()["items"] == []
        assert c.get("/readyz").status_code == 200  # nothing broke


def test_times_are_answered_and_filtered_in_utc(srv: Running) -> None:
    doc = _inspect(srv, camera_id="utc-cam")
    created = datetime.fromisoformat(doc["created_at"])
    assert created.utcoffset() == timedelta(0)
    plus5, minus8 = timezone(timedelta(hours=5)), timezone(timedelta(hours=-8))
    with srv.client("reviewer") as c:
        item = c.get(f"/v1/inspections/{doc['id']}").json()
        stored = datetime.fromisoformat(item["created_at"])
        assert stored.utcoffset() == timedelta(0) and abs(stored - created) < timedelta(seconds=1)

        def total(**times: datetime) -> int:
            params = {"camera_id": "utc-cam", **{k: v.isoformat() for k, v in times.items()}}
            return int(c.get("/v1/inspections", params=params).json()["total"])

        just_before, just_after = stored - timedelta(seconds=1), stored + timedelta(seconds=1)
        for tz in (plus5, minus8):
            assert total(since=just_before.astimezone(tz)) == 1
            assert total(since=just_after.astimezone(tz)) == 0
            assert total(until=just_after.astimezone(tz)) == 1
            assert total(until=just_before.astimezone(tz)) == 0
        naive = just_after.astimezone(UTC).replace(tzinfo=None)  # naive means UTC
        assert total(since=naive) == 0 and total(until=naive) == 1


def test_records_the_database_refused_show_in_the_metrics(launch) -> None:
    """A record the database refused is kept in ``journal/refused/`` (test_store_journal);
    ``lineside_store_refused`` says how many are there, so an alert can ask someone to look."""
    import httpx

    srv = launch()
    _inspect(srv)
    assert "\nlineside_store_refused 0.0\n" in httpx.get(srv.url + "/metrics").text
    refused = _store_dir(srv) / "journal" / "refused"
    refused.mkdir(exist_ok=True)
    for name in ("a", "b"):  # (as the store writes them: one journal file per record)
        (refused / f"{name}.journal").write_bytes(b"")
    assert "\nlineside_store_refused 2.0\n" in httpx.get(srv.url + "/metrics").text
