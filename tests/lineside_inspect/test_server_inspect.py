"""POST /v1/inspect on a real uvicorn server: content types, contract, bad input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from lineside_inspect.imageio import decode_image
from lineside_inspect.opencv import cv2

CONTRACT = {"id", "verdict", "reasons", "defects", "recipe", "model", "timings_ms", "stored"}


def _encoded(image_bytes: bytes, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, decode_image(image_bytes))
    assert ok
    return bytes(buf.tobytes())


@pytest.mark.parametrize("ctype,ext", [("image/jpeg", None), ("image/png", ".png"),
                                       ("image/bmp", ".bmp")])
def test_inspect_each_content_type(srv, image_bytes: bytes, ctype: str, ext: str | None) -> None:
    body = image_bytes if ext is None else _encoded(image_bytes, ext)
    with srv.client("line") as c:
        r = c.post("/v1/inspect", content=body, headers={"content-type": ctype},
                   params={"camera_id": "cam1", "part_id": "SN-1"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) >= CONTRACT
    assert doc["verdict"] in ("pass", "fail")
    assert doc["model"]["name"] == "deeppcb" and len(doc["model"]["sha256"]) == 64
    assert doc["recipe"] == {"name": "deeppcb-default", "version": "1"}
    assert set(doc["timings_ms"]) == {"decode", "preprocess", "infer", "postprocess", "total"}
    assert doc["part_id"] == "SN-1" and doc["camera_id"] == "cam1"
    for d in doc["defects"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 640 and 0 <= d["score"] <= 1
    assert (doc["verdict"] == "fail") == bool(doc["reasons"])


def test_inspect_multipart_and_annotated(srv, image_bytes: bytes) -> None:
    with srv.client("line") as c:
        r = c.post("/v1/inspect", files={"image": ("a.jpg", image_bytes, "image/jpeg")})
        assert r.status_code == 200 and r.json()["verdict"] in ("pass", "fail")
        a = c.post("/v1/inspect?annotated=1", content=image_bytes,
                   headers={"content-type": "image/jpeg"})
    assert a.status_code == 200 and a.headers["content-type"] == "image/jpeg"
    assert a.headers["x-lineside-verdict"] in ("pass", "fail")
    assert decode_image(a.content).shape == (640, 640, 3)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge size (the body need not be complete: it must be
    refused from the header alone)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 100000)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + crc
            + struct.pack(">I", len(idat)) + b"IDAT" + idat)


def test_every_bad_input_is_a_4xx_json_error(srv, image_bytes: bytes) -> None:
    cases = [
        (b"", "image/jpeg", 400, "invalid_image"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"not an image at all", "image/jpeg", 400, "invalid_image"),
        (image_bytes[: len(image_bytes) // 2], "image/jpeg", 400, "invalid_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "image/jpeg", 400, "invalid_image"),
        (_bomb_png(20000, 20000), "image/png", 413, "image_too_large"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 4, "image/png", 400, "invalid_image"),
    ]
    with srv.client("line") as c:
        for body, ctype, status, code in cases:
            r = c.post("/v1/inspect", content=body, headers={"content-type": ctype})
            assert r.status_code == status, (code, r.text)
            assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
            ok = c.post("/v1/inspect", content=image_bytes, headers={"content-type": "image/jpeg"})
            assert ok.status_code == 200  # the next valid request is unaffected
        r = c.post("/v1/inspect?recipe=nope", content=image_bytes,
                   headers={"content-type": "image/jpeg"})
        assert r.status_code == 404 and "unknown recipe 'nope'" in r.json()["error"]["message"]
        # a name no recipe can have is refused as such, not echoed back in a 5 KB 404
        r = c.post("/v1/inspect?recipe=" + "r" * 5000, content=image_bytes,
                   headers={"content-type": "image/jpeg"})
        assert r.status_code == 422 and "query.recipe" in r.json()["error"]["message"]
        assert len(r.content) < 1000
        r = c.post("/v1/inspect", files={"other": ("a.jpg", image_bytes, "image/jpeg")})
        assert r.status_code == 400 and "field named 'image'" in r.json()["error"]["message"]
        r = c.post("/v1/inspect?annotated=maybe", content=image_bytes,
                   headers={"content-type": "image/jpeg"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        assert "query.annotated" in r.json()["error"]["message"]
        r = c.post("/v1/inspect?part_id=p&camera_id=" + "c" * 129, content=image_bytes,
                   headers={"content-type": "image/jpeg"})
        assert r.status_code == 422
        assert r.json()["error"]["message"].startswith("query.camera_id: ")
        assert "1-128 ASCII letters" in r.json()["error"]["message"]


@pytest.mark.parametrize("camera_id", ["../x", "a/b", "/abs", "..", ".hidden", "a\\b", "cam 1"])
def test_a_camera_id_that_is_not_a_name_is_refused(srv, image_bytes: bytes,
                                                   camera_id: str) -> None:
    """A camera id becomes a folder when reviewed inspections are pulled as a dataset: one
    that is not a name was stored, then sank the whole pull ('../x.jpg leaves images/')."""
    with srv.client("line") as c:
        for send in ({"content": image_bytes, "headers": {"content-type": "image/jpeg"}},
                     {"files": {"image": ("a.jpg", image_bytes, "image/jpeg")}}):
            r = c.post("/v1/inspect", params={"camera_id": camera_id}, **send)
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["code"] == "invalid_request" and err["message"].startswith("query.camera_id: ")
            assert "1-128 ASCII letters" in err["message"]
        ok = c.post("/v1/inspect", params={"camera_id": "line1-top_2.b"}, content=image_bytes,
                    headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200 and ok.json()["camera_id"] == "line1-top_2.b"


@pytest.mark.parametrize("part_id", ["\u202eevil", "a\u2066b", "x\u200fy"])
def test_a_part_id_with_a_bidi_control_is_refused(srv, image_bytes: bytes, part_id: str) -> None:
    """A part id holding U+202E showed the review page's whole line reversed, its model
    and recipe read backwards: a part id is read in order."""
    with srv.client("line") as c:
        r = c.post("/v1/inspect", params={"part_id": part_id}, content=image_bytes,
                   headers={"content-type": "image/jpeg"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"].startswith("query.part_id: ")
        assert "bidirectional control" in r.json()["error"]["message"]
        r = c.post("/v1/cameras/nope/trigger", params={"part_id": part_id})
        assert r.status_code == 422 and "bidirectional" in r.text, r.text
        ok = c.post("/v1/inspect", params={"part_id": "SN-ünïcode-板-1"}, content=image_bytes,
                    headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200 and ok.json()["part_id"] == "SN-ünïcode-板-1"


@pytest.mark.parametrize("part_id,said", [
    ("SN-1\u200b", "an invisible format character (U+200B at character 5)"),  # zero-width space
    ("SN\u00ad1", "an invisible format character (U+00AD at character 3)"),  # soft hyphen
    ("\ufeffSN-1", "an invisible format character (U+FEFF at character 1)"),  # BOM
    ("SN-1\U000e0041", "an invisible format character (U+E0041 at character 5)"),  # a tag
    ("SN\u0085FORGED", "a control character (U+0085 at character 3)"),  # C1 next line
    ("SN\u009b31m", "a control character (U+009B at character 3)"),  # C1 CSI
    ("SN\u2028FORGED", "a line separator (U+2028 at character 3)"),
    ("SN\u2029FORGED", "a paragraph separator (U+2029 at character 3)"),
    ("SN-1\u202e", "a bidirectional control character (U+202E at character 5)"),
])
def test_a_part_id_with_an_invisible_or_line_breaking_character_is_refused(
        srv, image_bytes: bytes, part_id: str, said: str) -> None:
    """"SN-1" + U+200B showed as SN-1 on the review page, the dashboard and the CSV, yet
    matched no filter for SN-1; U+0085 and U+2028 start a line in Python's logs, U+009B a
    terminal escape. Each was kept and passed on as sent (session 53): now a 422 naming
    the field and the character by its code point, at the inspection, the camera trigger
    and every part filter alike (one type), and nothing is stored. An id kept before
    still lists and shows."""
    store = srv.app.state.store
    with srv.client("line") as c, srv.client("reviewer") as v:
        store.flush()
        before = v.get("/v1/inspections", params={"limit": 1}).json()["total"]
        r = c.post("/v1/inspect", params={"part_id": part_id}, content=image_bytes,
                   headers={"content-type": "image/jpeg"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"] == f"query.part_id: must not contain {said}"
        r = c.post("/v1/cameras/nope/trigger", params={"part_id": part_id})
        assert r.status_code == 422 and said in r.json()["error"]["message"], r.text
        for path in ("/v1/inspections", "/v1/stats", "/v1/stats.csv"):
            r = v.get(path, params={"part_id": part_id})
            assert r.status_code == 422 and said in r.json()["error"]["message"], (path, r.text)
        store.flush()
        assert v.get("/v1/inspections", params={"limit": 1}).json()["total"] == before
        # an id an older server kept: listed and shown as kept
        ok = c.post("/v1/inspect", params={"part_id": "SN-1"}, content=image_bytes,
                    headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200, ok.text
        store.flush()
        with store.engine.begin() as db:
            db.execute(text("UPDATE inspections SET part_id = :p WHERE id = :i"),
                       {"p": part_id, "i": ok.json()["id"]})
        r = v.get(f"/v1/inspections/{ok.json()['id']}")
        assert r.status_code == 200 and r.json()["part_id"] == part_id
        listed = v.get("/v1/inspections", params={"limit": 1}).json()["items"]
        assert [i["part_id"] for i in listed] == [part_id]


def test_a_query_that_is_not_utf8_is_refused_not_read_as_another_id(srv, image_bytes: bytes) -> None:
    """A reader sending its serials in Latin-1 ("SN-Ü1" as ``SN-%DC1``): each byte that
    is no UTF-8 was read as U+FFFD, so SN-Ü1 and SN-Ö1 (``SN-%D61``) were kept as one part
    id, neither as sent, and a filter for either found both. A 400 naming the byte now,
    before anything is kept; the same id sent as UTF-8 is kept as sent."""
    store = srv.app.state.store
    with srv.client("line") as c, srv.client("reviewer") as v:
        store.flush()
        before = v.get("/v1/inspections", params={"limit": 1}).json()["total"]
        for query, byte in (("part_id=SN-%DC1", "0xDC"), ("part_id=SN-%D61", "0xD6"),
                            ("camera_id=cam1&part_id=%FF", "0xFF")):
            r = c.post(f"/v1/inspect?{query}", content=image_bytes,
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "invalid_url" and f"query holds byte {byte}, which is not UTF-8" \
                in err["message"], err
            r = v.get(f"/v1/inspections?{query}")
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_url", r.text
        store.flush()
        assert v.get("/v1/inspections", params={"limit": 1}).json()["total"] == before
        ok = c.post("/v1/inspect?part_id=SN-%C3%9C1", content=image_bytes,
                    headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200 and ok.json()["part_id"] == "SN-\u00dc1", ok.text
        store.flush()
        found = v.get("/v1/inspections", params={"part_id": "SN-\u00dc1"}).json()["items"]
        assert [i["id"] for i in found] == [ok.json()["id"]]


def test_body_over_the_limit_is_413(launch, image_bytes: bytes) -> None:
    small = launch(max_body_bytes=len(image_bytes) - 1)
    with small.client("line") as c:
        r = c.post("/v1/inspect", content=image_bytes, headers={"content-type": "image/jpeg"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
        r = c.post("/v1/inspect", files={"image": ("a.jpg", image_bytes, "image/jpeg")})
        assert r.status_code == 413

        def chunks():  # no Content-Length: the limit must hold while streaming
            for _ in range(4):
                yield image_bytes[: len(image_bytes) // 2]

        r = c.post("/v1/inspect", content=chunks(), headers={"content-type": "image/jpeg"})
        assert r.status_code == 413


def test_wrong_method_and_path_are_json(srv) -> None:
    with srv.client("line") as c:
        assert c.get("/v1/inspect").json()["error"]["code"] == "method_not_allowed"
        r = c.get("/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_metrics_count_inspections(srv, image_bytes: bytes) -> None:
    with srv.client("line") as c:
        for i in range(30):  # camera ids a caller makes up must not each grow a series
            r = c.post("/v1/inspect", content=image_bytes, headers={"content-type": "image/jpeg"},
                       params={"camera_id": f"made-up-{i}"})
            assert r.status_code == 200 and r.json()["camera_id"] == f"made-up-{i}"
        text = c.get("/metrics").text
    assert "made-up" not in text
    series = [ln for ln in text.splitlines() if ln.startswith("lineside_inspections_total{")]
    assert series and all('camera="(api)"' in ln for ln in series)
    assert sum(float(ln.split()[-1]) for ln in series) >= 30
    assert 'lineside_stage_seconds_bucket{le="0.001",stage="infer"}' in text
    assert "lineside_model_info" in text and "lineside_queue_depth" in text
    depth = [ln for ln in text.splitlines() if ln.startswith("lineside_queue_depth ")]
    assert len(depth) == 1 and np.isfinite(float(depth[0].split()[1]))
    # no MQTT configured: no MQTT figures (lineside_mqtt_connected 0 fired an alert on
    # every box without MQTT; they show where it is, test_line_mqtt.py)
    assert "lineside_mqtt" not in text and "lineside_outbox" not in text


def test_the_annotated_answer_is_drawn_in_a_slot_of_its_admission(
        launch: Any, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """``annotated=1`` draws and encodes a copy of the frame: inside the request's admission
    and in the inspection's own limiter slot, so the pixels in memory stay bounded by
    max_concurrency (it ran in anyio's pool of 40 threads after the admission ended; then
    in a second slot, waited for after the inspection was stored; found by reviews)."""
    from lineside_inspect.server import service as route  # where the frame is drawn

    running = launch()
    limiter = running.app.state.limiter
    seen: list[tuple[int, int]] = []
    real = route.annotate

    def watched(*args: Any, **kwargs: Any) -> Any:
        seen.append((limiter.in_system, limiter.capacity.borrowed_tokens))
        return real(*args, **kwargs)

    monkeypatch.setattr(route, "annotate", watched)
    with running.client("line") as c:
        r = c.post("/v1/inspect?annotated=1", content=image_bytes,
                   headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert seen == [(1, 1)]  # admitted, and holding a slot, while drawing


def test_an_inspection_is_matched_before_any_other_route(tmp_path: Path) -> None:
    """Routes are matched in order on every request: the inspection, the hot path, is
    matched first, with the store, the lifecycle and a fleet link configured (the
    lifecycle's router had put 15 routes ahead of it)."""
    from starlette.routing import Match

    from lineside_inspect.config import Settings
    from lineside_inspect.server.app import create_app

    app = create_app(Settings(models=[], store=True, data_dir=str(tmp_path),
                              fleet={"hub_url": "http://127.0.0.1:9", "token": "k"}))
    scope = {"type": "http", "method": "POST", "path": "/v1/inspect", "root_path": "",
             "headers": [], "query_string": b""}
    matched = [route.matches(scope)[0] for route in app.router.routes]
    assert matched.index(Match.FULL) == 1  # after only FastAPI's /openapi.json


def test_fails_are_counted_by_the_rules_of_their_reasons() -> None:
    """A camera with its lens cap on failed every part as blank_frame, and /metrics showed a
    run of fails with no defects, as a bad batch would (review, session 39): fails are
    counted by reason rule, each rule once per inspection, passes not at all."""
    from lineside_inspect.server.metrics import Metrics

    m = Metrics()
    m.count_inspection("fail", "ref", "cam1", [], {}, ["blank_frame"])
    m.count_inspection("fail", "ref", "cam1", ["open", "short"], {}, ["critical", "critical"])
    m.count_inspection("fail", "ref", "cam2", ["open"], {}, ["critical", "reference_mismatch"])
    m.count_inspection("pass", "ref", "cam1", [], {}, [])
    get = m.registry.get_sample_value
    assert get("lineside_fail_reasons_total",
               {"rule": "blank_frame", "recipe": "ref", "camera": "cam1"}) == 1
    assert get("lineside_fail_reasons_total",
               {"rule": "critical", "recipe": "ref", "camera": "cam1"}) == 1
    assert get("lineside_fail_reasons_total",
               {"rule": "reference_mismatch", "recipe": "ref", "camera": "cam2"}) == 1
    series = {tuple(sorted(smp.labels.items())) for metric in m.registry.collect()
              if metric.name == "lineside_fail_reasons" for smp in metric.samples
              if smp.name.endswith("_total")}
    assert len(series) == 4  # blank_frame and critical on cam1; critical, mismatch on cam2


def test_count_inspection_adds_to_the_labelled_series() -> None:
    """The hot path's metrics go through cached labelled children: the same series as
    labels() would give, each inspection counted once."""
    from lineside_inspect.server.metrics import Metrics

    m = Metrics()
    for _ in range(3):
        m.count_inspection("fail", "r1", "cam", ["open", "short", "open"],
                           {"infer": 40.0, "total": 45.0})
    m.count_inspection("pass", "r1", "cam", [], {"infer": 2.0})
    get = m.registry.get_sample_value
    assert get("lineside_inspections_total", {"verdict": "fail", "recipe": "r1", "camera": "cam"}) == 3
    assert get("lineside_inspections_total", {"verdict": "pass", "recipe": "r1", "camera": "cam"}) == 1
    assert get("lineside_defects_total", {"label": "open"}) == 6
    assert get("lineside_defects_total", {"label": "short"}) == 3
    assert get("lineside_stage_seconds_count", {"stage": "infer"}) == 4
    assert get("lineside_stage_seconds_sum", {"stage": "infer"}) == pytest.approx(0.122)
    assert get("lineside_stage_seconds_bucket", {"stage": "total", "le": "0.04"}) == 0
    assert get("lineside_stage_seconds_bucket", {"stage": "total", "le": "0.08"}) == 3
