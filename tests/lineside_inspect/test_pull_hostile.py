"""``lineside data pull URL`` treats what another server sends as input: an inspection id
becomes a file name, so one that is not an inspection id must not write anywhere."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineside_inspect.errors import ConfigError
from lineside_inspect.store.pull import pull_from_server


def _item(iid: str) -> dict[str, object]:
    return {"id": iid, "created_at": "2026-12-01T00:00:00+00:00", "verdict": "fail",
            "reasons": [], "defects": [], "recipe": {"name": "r", "version": "1"},
            "model": {"name": "m", "version": "1", "sha256": "0" * 64}, "camera_id": None,
            "part_id": None, "timings_ms": {"decode": 0, "preprocess": 0, "infer": 0,
                                            "postprocess": 0, "total": 0},
            "reference": None, "stored": True, "box_id": "b", "class_names": ["open"],
            "width": 8, "height": 8, "has_image": True, "review_state": "confirmed",
            "reviews": []}


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A server that lists one inspection whose id climbs out of the pull's folder."""
    asked: list[str] = []
    evil = "../../../../" + str(tmp_path / "escaped").lstrip("/")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if self.path.startswith("/v1/inspections?"):
                body = json.dumps({"total": 1, "limit": 500, "offset": 0,
                                   "items": [_item(evil)] if "offset=0" in self.path else []})
                data, ctype = body.encode(), "application/json"
            else:
                data, ctype = b"\xff\xd8 not really an image", "image/jpeg"
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


def test_an_id_that_is_not_an_inspection_id_is_refused(hostile, tmp_path: Path) -> None:
    url, asked = hostile
    with pytest.raises(ConfigError, match="not a Lineside one"):
        pull_from_server(url, tmp_path / "pulled")
    assert not (tmp_path / "escaped.jpg").exists()
    assert not any("/image" in p for p in asked)  # refused before fetching anything by it


# camera ids an older server took (only length and control characters were checked)
BAD_CAMERAS = ["../escaped", "a/b", "/abs/cam", "..", "cam\\x"]


def test_a_stored_camera_id_that_is_not_a_name_does_not_sink_the_pull(
        launch, image_bytes: bytes, tmp_path: Path) -> None:
    """An older store may hold a camera id that is not a name: each such inspection goes
    in a folder of its own inside images/ and the pull goes on (it failed as a whole with
    "image file_name '../<id>.jpg' leaves the dataset's images/ folder")."""
    from sqlalchemy.orm import Session

    from lineside_inspect.dataset import read_dataset, validate_dir
    from lineside_inspect.store.models import InspectionRow

    srv = launch(store_pass_rate=1.0)
    ids = []
    with srv.client("line") as c:
        for _ in range(len(BAD_CAMERAS) + 1):
            r = c.post("/v1/inspect", params={"camera_id": "cam1"}, content=image_bytes,
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["stored"], r.text
            ids.append(r.json()["id"])
    store = srv.app.state.store
    store.flush()  # the journal applied: the rows are in the database
    with Session(store.engine) as s, s.begin():  # as an older server stored them
        for iid, camera in zip(ids, BAD_CAMERAS, strict=False):
            row = s.get(InspectionRow, iid)
            assert row is not None
            row.camera_id = camera
    with srv.client("reviewer") as c:
        for iid in ids:
            r = c.post(f"/v1/inspections/{iid}/reviews", json={"action": "false_reject"})
            assert r.status_code == 200, r.text

    def check(dst: Path) -> None:
        assert validate_dir(dst) == []
        names = sorted(r.file_name for r in read_dataset(dst).images)
        assert len(names) == len(ids)
        folders = {n.split("/")[0] for n in names}
        assert "cam1" in folders and len(folders) == len(BAD_CAMERAS) + 1  # one each
        for n in names:
            folder, file = n.split("/")
            assert file.split(".")[0] in ids and (folder == "cam1" or folder.startswith("camera-"))
        images = (dst / "images").resolve()
        assert all(p.resolve().is_relative_to(images) for p in (dst / "images").rglob("*"))

    from lineside_inspect.store.pull import pull_from_store

    pull_from_server(srv.url, tmp_path / "served", key="reviewer-secret")
    check(tmp_path / "served")
    pull_from_store(store, tmp_path / "stored")
    check(tmp_path / "stored")
    assert not (tmp_path / "escaped").exists() and not Path("/abs/cam").exists()

