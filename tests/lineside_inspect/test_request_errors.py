"""Errors a new user met on a real server, each answered as a 4xx that names the problem
the caller can act on: camera/recipe reference mismatches told as config matters, image
bodies refused by content type and encoding, a broken reference or multipart body named
as such, an unknown inspection's shadow a 404 (a long id not echoed in full), and HEAD on the
probes, /metrics and the landing page."""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np
import pytest

from lineside_inspect.config import CameraConfig

from .conftest import KEYS, MODEL, ROOT, SAMPLE, Running, keyed, start_server

REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"
STATION = ROOT / "configs" / "line"
RECIPES = ROOT / "configs" / "recipes"
JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def srv() -> Iterator[Running]:
    """Both kinds of model; a camera with a golden image configured and one without."""
    cams = [CameraConfig(id="station1", source=str(STATION / "station1"), recipe="deeppcb-ref",
                         reference=str(STATION / "station1-reference.jpg"), fps=5),
            CameraConfig(id="sim1", source=str(SAMPLE / "images"), recipe="deeppcb", fps=5)]
    running, stop = start_server(keyed(
        cameras=cams, models=[str(MODEL), str(REF_MODEL)], store_pass_rate=1.0,
        recipes=[str(RECIPES / "deeppcb.yaml"), str(RECIPES / "deeppcb-ref.yaml")]))
    yield running
    stop()


@pytest.fixture(scope="module")
def board() -> bytes:
    return (STATION / "station1" / "part-0001.jpg").read_bytes()


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    return str(r.json()["error"]["message"])


def test_trigger_reference_mismatch_is_told_as_the_camera_config(srv: Running, board: bytes) -> None:
    with srv.client("line") as c:
        msg = _error(c.post("/v1/cameras/station1/trigger", params={"recipe": "deeppcb"}), 422)
        assert msg == ("camera station1 has a reference configured (station1-reference.jpg); "
                       "recipe deeppcb's model deeppcb takes none"), msg
        msg = _error(c.post("/v1/cameras/sim1/trigger", params={"recipe": "deeppcb-ref"}), 422)
        assert msg == ("camera sim1 has no reference configured; recipe deeppcb-ref's model "
                       "deeppcb-ref needs one (cameras[].reference, or cameras[].references "
                       "for this recipe, in the server config)"), msg
        # an upload still hears what to send
        msg = _error(c.post("/v1/inspect", content=board, headers=JPEG,
                            params={"recipe": "deeppcb", "reference": "x"}), 422)
        assert msg == "model deeppcb takes no reference image; send the image alone"
        msg = _error(c.post("/v1/inspect", content=board, headers=JPEG,
                            params={"recipe": "deeppcb-ref"}), 422)
        assert "send a 'reference' file field" in msg


def test_put_reference_refuses_other_types_and_encodings(srv: Running, board: bytes) -> None:
    with srv.client("admin") as c:
        r = c.put("/v1/references/golden", files={"image": ("golden.jpg", board, "image/jpeg")})
        assert "'multipart/form-data' is not accepted" in _error(r, 415)
        assert "'application/json' is not accepted" in _error(
            c.put("/v1/references/golden", json={"image": "x"}), 415)
        r = c.put("/v1/references/golden", content=gzip.compress(board),
                  headers={**JPEG, "content-encoding": "gzip"})
        assert "content encoding 'gzip' is not accepted" in _error(r, 415)
        assert c.get("/v1/references").json()["items"] == []  # nothing registered
        r = c.put("/v1/references/golden", content=board,
                  headers={**JPEG, "content-encoding": "identity"})
        assert r.status_code == 200, r.text
        assert c.delete("/v1/references/golden").status_code == 204
    with srv.client("line") as c:
        r = c.post("/v1/inspect", content=gzip.compress(board), params={"recipe": "deeppcb"},
                   headers={**JPEG, "content-encoding": "gzip"})
        assert "content encoding 'gzip' is not accepted" in _error(r, 415)
        r = c.post("/v1/inspect", params={"recipe": "deeppcb"}, headers={"content-encoding": "br"},
                   files={"image": ("b.jpg", board, "image/jpeg")})
        assert "content encoding 'br' is not accepted" in _error(r, 415)


def test_a_broken_reference_part_is_named(srv: Running, board: bytes) -> None:
    with srv.client("line") as c:
        for broken, problem in ((board[: len(board) // 2], "truncated JPEG"),  # fails to decode
                                (b"hello", "not a JPEG, PNG or BMP image")):  # fails its header
            r = c.post("/v1/inspect", params={"recipe": "deeppcb-ref"},
                       files={"image": ("b.jpg", board, "image/jpeg"),
                              "reference": ("r.jpg", broken, "image/jpeg")})
            msg = _error(r, 400)
            assert msg.startswith(f"reference image: {problem}"), msg
        # the frame's own errors read as before
        r = c.post("/v1/inspect", params={"recipe": "deeppcb-ref"},
                   files={"image": ("b.jpg", b"hello", "image/jpeg"),
                          "reference": ("r.jpg", board, "image/jpeg")})
        assert _error(r, 400).startswith("not a JPEG, PNG or BMP image")


def _multipart(parts: list[tuple[str, bytes]], *, close: bool) -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--B0UND\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"f.jpg\"\r\n"
                    b"Content-Type: image/jpeg\r\n\r\n%s\r\n" % (name.encode(), data)
                    for name, data in parts)
    return body + (b"--B0UND--\r\n" if close else b""), {
        "content-type": "multipart/form-data; boundary=B0UND"}


def test_a_multipart_body_without_its_closing_boundary_is_malformed(srv: Running, board: bytes) -> None:
    with srv.client("line") as c:
        body, headers = _multipart([("image", board)], close=True)
        r = c.post("/v1/inspect", content=body, headers=headers, params={"recipe": "deeppcb"})
        assert r.status_code == 200, r.text
        for parts in ([("image", board)], [("image", board), ("reference", board)]):
            body, headers = _multipart(parts, close=False)
            r = c.post("/v1/inspect", content=body, headers=headers, params={"recipe": "deeppcb-ref"})
            msg = _error(r, 400)
            assert msg.startswith("malformed multipart body: it ends before its closing boundary"), msg
        r = c.post("/v1/inspect", content=b"--B0UND\r\nno headers\r\n\r\n\r\n--B0UND--\r\n",
                   headers=headers, params={"recipe": "deeppcb"})
        assert _error(r, 400).startswith("malformed multipart body: ")


def test_an_image_field_given_twice_is_refused(srv: Running, board: bytes) -> None:
    """Two 'image' parts in one body: the last was inspected, silently."""
    other = (STATION / "station1" / "part-0002.jpg").read_bytes()
    with srv.client("line") as c:
        for parts, recipe, told in (
                ([("image", board), ("image", other)], "deeppcb", "field 'image' was given twice"),
                ([("image", board), ("file", other)], "deeppcb", "'image' and 'file' were both given"),
                ([("file", board), ("file", other)], "deeppcb", "field 'file' was given twice"),
                ([("reference", board), ("reference", other)], "deeppcb-ref",
                 "field 'reference' was given twice"),
                # three files are more than a body may carry at all
                ([("image", board), ("image", other), ("reference", board)], "deeppcb-ref",
                 "malformed multipart body: ")):
            body, headers = _multipart(parts, close=True)
            r = c.post("/v1/inspect", content=body, headers=headers, params={"recipe": recipe})
            msg = _error(r, 400)
            assert told in msg, msg
            assert r.json()["error"]["code"] == "invalid_image"
        body, headers = _multipart([("image", board), ("reference", board)], close=True)
        r = c.post("/v1/inspect", content=body, headers=headers, params={"recipe": "deeppcb-ref"})
        assert r.status_code == 200, r.text


def test_shadow_of_an_unknown_inspection_is_404(srv: Running, board: bytes) -> None:
    with srv.client("line") as c:
        r = c.post("/v1/inspect", content=board, headers=JPEG, params={"recipe": "deeppcb"})
        assert r.status_code == 200, r.text
        known = r.json()["id"]
    with srv.client("reviewer") as c:
        assert _error(c.get("/v1/inspections/nope/shadow"), 404) == "no inspection 'nope'"
        # a long id is not echoed in full (the URL limit is ~64 KB)
        msg = _error(c.get("/v1/inspections/" + "a" * 5000), 404)
        assert msg == "no inspection '" + "a" * 138 + "\u2026 (5000 characters)", msg
        r = c.get(f"/v1/inspections/{known}/shadow")
        assert r.status_code == 200 and r.json() == {"items": []}, r.text
    with srv.client("admin") as c:
        msg = _error(c.get("/v1/gates/" + "b" * 5000), 404)
        assert len(msg) < 200 and "(5000 characters)" in msg, msg
    with srv.client("line") as c:
        msg = _error(c.post("/v1/cameras/" + "c" * 5000 + "/trigger"), 404)
        assert msg.startswith("unknown camera 'ccc") and "(5000 characters)" in msg, msg
        assert len(msg) < 250, msg


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/", "/dashboard", "/review", "/fleet",
                                  "/metrics", "/v2/health/live", "/v2/health/ready"])
@pytest.mark.parametrize("role", [None, "reviewer"])  # the sign-in page, the page itself
def test_head_answers_as_get_without_a_body(srv: Running, path: str, role: str | None) -> None:
    with srv.client(role) as c:
        got = c.get(path)
        head = c.head(path)
        again = c.get(path)  # the same connection still parses: no stray body was sent
    # (/fleet is the hub's page: on a box it is a 404, to HEAD as to GET)
    assert head.status_code == got.status_code and got.status_code in (200, 303, 307, 404), head
    assert head.content == b""
    same: dict[str, Any] = {k: head.headers.get(k) for k in ("content-type", "location")}
    assert same == {k: got.headers.get(k) for k in same}
    if got.content and path in ("/metrics", "/"):
        # its figures move between the two requests (process CPU seconds, memory, request
        # counts: 8230 then 8231 bytes; the status page's live camera fps, 3275 then 3274:
        # a fresh-clone failure), so the length is the GET's give or take a few digits
        assert abs(int(head.headers["content-length"]) - len(got.content)) <= 64, head.headers
    elif got.content:
        assert head.headers["content-length"] == str(len(got.content))
    assert again.status_code == got.status_code


@pytest.mark.parametrize("path", ["/v1/inspect", "/v1/references/dropped"])
def test_a_client_gone_mid_body_is_no_internal_error(srv: Running, path: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A client that closes its connection part-way through the body is logged as such at
    info: before, each was an "internal error" with a 50-line traceback (attacker review),
    a false alarm for an operator alerting on internal errors."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(srv.url)
    method = "POST" if path == "/v1/inspect" else "PUT"
    caplog.set_level(logging.INFO, logger="lineside")
    with socket.create_connection((host.hostname, host.port)) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  f"{KEYS['admin' if method == 'PUT' else 'line']}\r\nContent-Type: image/jpeg"
                  f"\r\nContent-Length: 50000\r\n\r\n".encode() + b"\xff" * 1000)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            "client disconnected" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"client disconnected during the request body on {method} '{path}'" in m
               for m in messages), messages
    assert not any("internal error" in m for m in messages), messages
    with srv.client() as c:
        assert c.get("/healthz").status_code == 200


def test_a_put_recipe_that_would_break_a_configured_camera_is_refused(srv: Running) -> None:
    """A recipe put over the API whose model needs a golden image, under the name a camera
    without one triggers with, was accepted, and that camera's every trigger got 422 until
    a restart (attacker review). It is refused now, and the recipe stays as it was."""
    body = {"name": "deeppcb", "version": "9", "model": "deeppcb-ref", "critical": ["open"]}
    with srv.client("admin") as c:
        msg = _error(c.put("/v1/recipes/deeppcb", json=body), 409)
        assert msg.startswith("recipe deeppcb: model deeppcb-ref compares each frame with a "
                              "golden image, and camera(s) sim1 name none"), msg
        assert c.put("/v1/recipes/deeppcb", json=body).json()["error"]["code"] == \
            "recipe_breaks_camera"
        # the reverse: a camera with a golden image and a model that takes none
        other = {"name": "deeppcb-ref", "version": "9", "model": "deeppcb"}
        msg = _error(c.put("/v1/recipes/deeppcb-ref", json=other), 409)
        assert "takes no golden image, and camera(s) station1 name one" in msg, msg
        recipes = {r["name"]: r for r in c.get("/v1/recipes").json()}
        assert (recipes["deeppcb"]["model"], recipes["deeppcb"]["version"]) == ("deeppcb", "1")
        assert recipes["deeppcb-ref"]["model"] == "deeppcb-ref"
        # under another name, or of the same kind, a recipe is put as before
        assert c.put("/v1/recipes/spare", json={**body, "name": "spare"}).status_code == 200
        same = {"name": "deeppcb", "version": "1", "model": "deeppcb", "min_size_px": 8,
                "critical": ["open", "short"]}
        assert c.put("/v1/recipes/deeppcb", json=same).status_code == 200
    with srv.client("line") as c:
        r = c.post("/v1/cameras/sim1/trigger")
        assert r.status_code == 200 and r.json()["recipe"]["name"] == "deeppcb", r.text


def test_deleting_the_golden_image_a_camera_names_is_refused(launch, board: bytes) -> None:
    """DELETE /v1/references/NAME of a camera's golden image was a 204, and then every
    trigger of that camera a 422; refused now as deleting a camera's recipe is."""
    cam = CameraConfig(id="station1", source=str(STATION / "station1"), recipe="deeppcb-ref",
                       reference="golden", fps=5)
    srv = launch(cameras=[cam], models=[str(MODEL), str(REF_MODEL)],
                 recipes=[str(RECIPES / "deeppcb.yaml"), str(RECIPES / "deeppcb-ref.yaml")])
    golden = (STATION / "station1-reference.jpg").read_bytes()
    with srv.client("admin") as c:
        for name in ("golden", "spare"):
            assert c.put(f"/v1/references/{name}", content=golden, headers=JPEG).status_code == 200
        r = c.delete("/v1/references/golden")
        msg = _error(r, 409)
        assert r.json()["error"]["code"] == "reference_breaks_camera"
        assert msg.startswith("reference golden is the golden image camera(s) station1 "), msg
        assert c.get("/v1/references").json()["items"] == ["golden", "spare"]  # nothing gone
        assert c.delete("/v1/references/spare").status_code == 204  # one no camera names
        assert _error(c.delete("/v1/references/nope"), 404)
        assert _error(c.delete("/v1/references/a.jpg"), 422)
    with srv.client("line") as c:
        r = c.post("/v1/cameras/station1/trigger")
        assert r.status_code == 200 and r.json()["reference"]["name"] == "golden", r.text


def test_a_json_body_nested_thousands_deep_is_named_as_such(srv: Running) -> None:
    """FastAPI's parser hit Python's recursion limit and the answer said only "There was an
    error parsing the body"."""
    nested = b'{"a":' * 5000 + b"1" + b"}" * 5000  # within max_json_bytes
    with srv.client("admin") as c:
        for method, path in (("PUT", "/v1/recipes/x"), ("POST", "/v1/models")):
            r = c.request(method, path, content=nested, headers={"content-type": "application/json"})
            assert r.json()["error"]["code"] == "invalid_request"
            assert _error(r, 400).startswith("the JSON body is nested too deeply to parse")
        assert c.get("/healthz").status_code == 200


def test_a_body_that_is_not_utf8_json_or_carries_a_huge_number_is_named(srv: Running) -> None:
    """Both were "There was an error parsing the body" (attacker review of the hub, whose
    error answers are the edge's)."""
    json_type = {"content-type": "application/json"}
    with srv.client("admin") as c:
        r = c.put("/v1/recipes/x", content=gzip.compress(b'{"name": "x"}'),
                  headers={**json_type, "content-encoding": "gzip"})
        assert "content encoding 'gzip' is not accepted" in _error(r, 415), r.text
        r = c.put("/v1/recipes/x", content=gzip.compress(b'{"name": "x"}'), headers=json_type)
        assert _error(r, 400).startswith("the body is not UTF-8 JSON (a compressed body"), r.text
        r = c.put("/v1/recipes/x", content=b'{"name": "x", "version": ' + b"9" * 5000 + b"}",
                  headers=json_type)
        assert _error(r, 400) == ("a number in the JSON body has more digits than any value "
                                  "of this API"), r.text


def test_annotated_images_are_drawn_a_few_at_a_time(srv: Running, board: bytes,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each drawing decodes a whole image; anyio's pool ran up to 40 at once (on a hub, of
    images boxes sent: 360 MB each for a 64 Mpx one)."""
    import threading

    from lineside_inspect.server.routes import inspections

    now = [0]
    most = [0]
    lock = threading.Lock()
    real = inspections.decode_frame

    def slow_decode(data: bytes, *args: Any, **kw: Any) -> Any:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(0.2)  # long enough for the others to arrive meanwhile
            return real(data, *args, **kw)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(inspections, "decode_frame", slow_decode)
    with srv.client("line") as c:
        r = c.post("/v1/inspect", content=board, headers=JPEG, params={"recipe": "deeppcb"})
        assert r.status_code == 200 and r.json()["stored"], r.text
        iid = r.json()["id"]
    results: list[int] = []

    def fetch() -> None:
        with srv.client("reviewer") as c:
            results.append(c.get(f"/v1/inspections/{iid}/annotated").status_code)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 6
    assert most[0] == inspections.DRAWINGS_AT_ONCE  # never more, and the limit is reached


@pytest.mark.parametrize("field", ["camera_id", "recipe", "label"])
def test_inspection_filters_are_bounded_as_inspect_bounds_them(srv: Running, field: str) -> None:
    """/v1/inspect takes at most 128 characters of a camera id; the list's filter took 9000."""
    with srv.client("reviewer") as c:
        r = c.get("/v1/inspections", params={field: "x" * 9000})
        assert r.status_code == 422 and field in r.text, r.text
        assert c.get("/v1/inspections", params={field: "x" * 128}).status_code in (200, 404)


def test_a_json_route_names_the_content_type_it_takes(srv: Running) -> None:
    """PUT /v1/recipes with JSON sent as text/plain (or without a type) was 422 "Input
    should be a valid dictionary"."""
    body = b'{"name": "x", "model": "deeppcb"}'
    with srv.client("admin") as c:
        for headers in ({"content-type": "text/plain"}, {},  # {}: curl -d sends a form type
                        {"content-type": "application/x-www-form-urlencoded"},
                        {"content-type": "text/json"}):  # FastAPI parses application/* only
            r = c.put("/v1/recipes/x", content=body, headers=headers)
            assert r.status_code == 415, r.text
            assert "this route takes JSON (Content-Type: application/json)" in _error(r, 415)
        r = c.put("/v1/recipes/x", content=b'{"name": 3}',
                  headers={"content-type": "application/json"})
        assert r.status_code == 422  # JSON of the wrong shape stays a 422
        assert "x" not in [r["name"] for r in c.get("/v1/recipes").json()]  # nothing stored
        r = c.put("/v1/recipes/x")  # no body at all: what is missing, not its type
        assert r.status_code == 422, r.text
        r = c.put("/v1/recipes/x", content=iter([b""]))  # an empty chunked body: the same
        assert r.status_code == 422, r.text
    with srv.client(None) as c:  # the sign-in form is a form: a missing field stays a 422
        r = c.post("/review/login", data={"nope": "1"})
        assert r.status_code == 422 and "key" in r.text, r.text
        r = c.post("/review/login", content=b"key=x", headers={"content-type": "text/plain"})
        assert r.status_code == 422 and "JSON" not in r.text, r.text


def test_a_damaged_stored_image_is_not_blamed_on_the_caller(srv: Running, board: bytes) -> None:
    """A stored image that no longer decodes (a hub takes a box's image by its header)
    answered the reviewer 400 invalid_image, a "your request was wrong" for data the
    server holds."""
    with srv.client("line") as c:
        r = c.post("/v1/inspect", content=board, headers=JPEG, params={"recipe": "deeppcb"})
        assert r.status_code == 200 and r.json()["stored"], r.text
        iid = r.json()["id"]
    store = srv.app.state.store
    store.flush()
    path = store.image_file(store.get(iid))
    path.write_bytes(board[: len(board) // 2])  # its header whole, the rest gone
    with srv.client("reviewer") as c:
        r = c.get(f"/v1/inspections/{iid}/annotated")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert f"the stored image of inspection {iid} cannot be drawn: truncated JPEG" in r.text
    assert str(path) not in r.text


def test_a_long_part_id_and_a_nan_bound_are_named_as_what_they_are(srv: Running,
                                                                   board: bytes) -> None:
    """A 500-character part id was "at most 256 items after validation", and NaN for a
    score or a timeout was "less than or equal to 1" (QA review, session 32)."""
    with srv.client("line") as c:
        r = c.post("/v1/inspect", params={"part_id": "p" * 500},
                   files={"image": ("a.jpg", board, "image/jpeg")})
        assert "part_id: String should have at most 256 characters, not 500" in _error(r, 422)
        r = c.post("/v1/cameras/sim1/trigger", params={"timeout_s": "nan"})
        assert "timeout_s: Input should be a finite number" in _error(r, 422)
    with srv.client("reviewer") as c:
        r = c.get("/v1/inspections", params={"min_score": "nan"})
        assert "min_score: Input should be a finite number" in _error(r, 422)


_TAKES = ("not a time: this {} takes an ISO 8601 time, such as 2026-12-07T08:00:00Z "
          "(without an offset: UTC), or a date, 2026-12-07")


def test_a_time_that_is_not_one_is_named_in_a_body_as_in_a_query(srv: Running) -> None:
    """A body's time said pydantic's "Input should be a valid datetime or date, input is
    too short" where a query's said what it takes (session 47): now both do, the reason
    in brackets and the value not echoed. An offset past a day, a year 0 or 99999, NaN
    or an endless timestamp: each such a 422; one out of range once taken to UTC says so
    (session 48)."""
    hostile = "yesterday" + "x" * 5000
    not_times: list[Any] = [hostile, "", "2026-12-07T08:00:00+99:00", "0000-01-01",
                            "99999-01-01", 1e300, float("nan"), float("-inf"), True, [], {}]
    with srv.client("admin") as c:
        for value in not_times:
            r = c.post("/v1/golden/s48", content=json.dumps({"since": value}),
                       headers={"content-type": "application/json"})
            msg = _error(r, 422)
            assert r.json()["error"]["code"] == "invalid_request"
            assert msg.startswith("body.since: " + _TAKES.format("field")), (value, msg)
            assert "yesterdayx" not in msg and len(msg) < 400, msg
        r = c.post("/v1/golden/s48", json={"since": "2026-13-01"})
        assert _error(r, 422).endswith("(month value is outside expected range of 1-12)")
        r = c.post("/v1/golden/s48", json={"since": "0001-01-01T00:00:00+05:00"})
        assert _error(r, 422) == "body.since: out of range once taken to UTC"
        # naive (UTC), aware and a date all taken: no reviewed inspection is made after them
        for fine in ("9999-12-30T08:00:00", "9999-12-30T08:00:00+23:59", "9999-12-30"):
            r = c.post("/v1/golden/s48", json={"since": fine})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_golden_set"
    with srv.client("reviewer") as c:
        for value in ("2026-12-07T08:00:00+99:00", "0000-01-01", "99999-01-01", "nan",
                      "inf", "1e300"):
            msg = _error(c.get("/v1/inspections", params={"since": value}), 422)
            assert msg.startswith("query.since: " + _TAKES.format("parameter")), (value, msg)
        r = c.get("/v1/inspections", params={"until": "0001-01-01T00:00:00+05:00"})
        assert _error(r, 422) == "query.until: out of range once taken to UTC"


def test_a_window_or_score_range_that_holds_nothing_is_named(srv: Running, board: bytes) -> None:
    """``until`` before ``since`` (the two swapped), or ``min_score`` above ``max_score``,
    listed ``total: 0``: read as "no inspections in that hour" by a line lead checking a
    shift's figures by hand (review, session 55). Each is a 422 naming both bounds; times
    compared in UTC (an offset, or none, moves the bound, not the check), an equal pair of
    scores is one score, and a window whose bounds are in order still lists its rows."""
    with srv.client("line") as c:
        r = c.post("/v1/inspect", content=board, headers=JPEG, params={"camera_id": "s55w"})
        assert r.status_code == 200 and r.json()["stored"] is True, r.text
        made = r.json()["created_at"]
    with srv.client("reviewer") as c:
        for since, until in (("2026-12-07T22:00:00Z", "2026-12-07T21:00:00Z"),
                             ("2026-12-07T22:00:00", "2026-12-07T22:00:00Z"),  # naive: UTC
                             ("2026-12-07T23:30:00+01:00", "2026-12-07T22:00:00")):
            msg = _error(c.get("/v1/inspections", params={"since": since, "until": until}), 422)
            assert msg.startswith("query.until: ") and "is not after since" in msg, msg
            assert "2026-12-07T22:00:00+00:00" in msg, msg  # both bounds as UTC
        msg = _error(c.get("/v1/inspections", params={"min_score": 0.9, "max_score": 0.1}), 422)
        assert msg.startswith("query.max_score: 0.1 is below min_score 0.9"), msg
        # in order (an hour either side of the inspection, one bound with an offset): listed
        at = datetime.fromisoformat(made)
        window = {"since": (at - timedelta(hours=1)).astimezone(timezone(timedelta(hours=5)))
                  .isoformat(), "until": (at + timedelta(hours=1)).isoformat(),
                  "camera_id": "s55w"}
        r = c.get("/v1/inspections", params=window)
        assert r.status_code == 200 and r.json()["total"] == 1, r.text
        r = c.get("/v1/inspections", params={"camera_id": "s55w", "min_score": 0.5,
                                             "max_score": 0.5})
        assert r.status_code == 200, r.text  # one score: a range, not refused


def test_a_blank_golden_is_refused_at_upload_when_a_recipe_sets_min_contrast(
        srv: Running) -> None:
    """A golden image with nothing on it (a lens cap, a lamp off at setup) was taken, and
    every part inspected against it then failed as blank_frame (review, session 39): it is
    refused at upload, naming why, once every reference recipe sets min_contrast above it.
    One that sets none takes a flat golden: it may be the part's own look (a tile all of
    one colour), and frames against it are then not checked for contrast; one strict
    recipe beside it refused the golden that station could use (review, session 39)."""
    from lineside_inspect.opencv import cv2

    blank = bytes(cv2.imencode(".png", np.full((64, 64, 3), 3, np.uint8))[1])
    png = {"content-type": "image/png"}
    with srv.client("admin") as c:
        # the reference recipes loaded (deeppcb-ref, and any an earlier test left), as put
        loaded = [{k: v for k, v in r.items() if k not in ("default", "put_over_api")}
                  for r in c.get("/v1/recipes").json() if r["model"] == "deeppcb-ref"]
        assert loaded and all(r["min_contrast"] is None for r in loaded), loaded
        strict = {"name": "strict-view", "model": "deeppcb-ref", "min_contrast": 16}
        assert c.put("/v1/recipes/strict-view", json=strict).status_code == 200
        try:  # deeppcb-ref sets none: its station may image a flat part
            r = c.put("/v1/references/capped", content=blank, headers=png)
            assert r.status_code == 200, r.text
            assert c.delete("/v1/references/capped").status_code == 204
            for recipe in loaded:  # other rules: a version of their own (session 55)
                r = c.put(f"/v1/recipes/{recipe['name']}", json={
                    **recipe, "version": f"{recipe['version']}.1", "min_contrast": 16})
                assert r.status_code == 200, r.text
            msg = _error(c.put("/v1/references/capped", content=blank, headers=png), 422)
            assert "reference image capped: nearly blank, it spans 0 grey levels" in msg, msg
            assert "set the recipe's min_contrast lower" in msg, msg
            assert "capped" not in c.get("/v1/references").json()["items"]
        finally:
            assert c.delete("/v1/recipes/strict-view").status_code == 200
            for recipe in loaded:  # put back as they judged before: their versions again
                r = c.put(f"/v1/recipes/{recipe['name']}", json=recipe)
                assert r.status_code == 200, r.text


def test_a_configured_blank_golden_is_warned_about_at_start(launch, tmp_path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A blank golden over PUT /v1/references is refused, but one a camera's config names
    (a file, a lens cap at setup) started in silence: every trigger then failed as
    blank_frame and told the PLC to check a camera that was fine (review, session 39). The
    start-up log names the camera, its golden's grey levels and the fix."""
    from lineside_inspect.opencv import cv2

    capped = tmp_path / "capped.png"
    capped.write_bytes(bytes(cv2.imencode(".png", np.full((64, 64, 3), 3, np.uint8))[1]))
    cams = [CameraConfig(id=cam, source=str(STATION / "station1"), recipe="deeppcb-ref",
                         reference=str(golden), fps=5)
            for cam, golden in (("capped", capped),
                                ("station1", STATION / "station1-reference.jpg"))]
    caplog.set_level(logging.WARNING, logger="lineside_inspect.server.service")
    # (a recipe that sets min_contrast: unset, a flat golden is the part's own look)
    recipe = tmp_path / "deeppcb-ref.yaml"
    recipe.write_text((RECIPES / "deeppcb-ref.yaml").read_text() + "min_contrast: 16\n")
    launch(cameras=cams, models=[str(REF_MODEL)], recipes=[str(recipe)])
    warned = [r.getMessage() for r in caplog.records if "nearly blank" in r.getMessage()]
    assert warned == [
        "camera capped: its golden image capped is nearly blank, it spans 0 grey levels (5th "
        "to 95th percentile), under recipe deeppcb-ref's min_contrast 16: its triggers fail "
        "as blank_frame until it shows the part (or the recipe sets min_contrast lower for a "
        "part that flat)"], warned
