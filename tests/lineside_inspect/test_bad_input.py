"""Bad input is a 4xx JSON error naming the problem, never a 500 with internals, and the
keep-alive connection it came on stays usable (the next request reuses it)."""

from __future__ import annotations

import json
import logging
import re
import struct
from typing import Any

import httpx
import numpy as np
import pytest

from lineside_inspect.opencv import cv2

AUTH = {"Authorization": "Bearer line-secret"}
ADMIN = {"Authorization": "Bearer admin-secret"}
GOOD = {"name": "images", "datatype": "UINT8", "shape": [1, 3, 640, 640]}
INTERNALS = re.compile(r"(/[a-z_]+/|\.py\b|Traceback|numpy|pydantic|cv2|OpenCV|Error:|Exception)")


def _port(response: httpx.Response) -> int:
    """The client-side port the response came on: the same port means the same connection."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def _then_good_request_on_same_connection(c: httpx.Client, bad: httpx.Response) -> None:
    good = c.get("/v2/models/deeppcb")
    assert good.status_code == 200, good.text
    assert _port(good) == _port(bad), "the server closed the connection after the error"


def _assert_clean_4xx(r: httpx.Response, code: str | None = None) -> dict[str, Any]:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    if r.request.url.path.startswith("/v2/"):  # the protocol's shape: {"error": "...", "code"}
        assert set(r.json()) == {"error", "code"} and isinstance(err, str), r.text
        err = {"code": r.json()["code"], "message": err}
    assert set(err) == {"code", "message"}
    if code:
        assert err["code"] == code, err
    assert not INTERNALS.search(err["message"]), err["message"]
    return dict(err)


def _ragged() -> list[Any]:
    rows: list[Any] = np.zeros((1, 3, 640, 640), int).tolist()
    rows[0][2][7] = rows[0][2][7][:-1]
    return rows


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


N = 3 * 640 * 640
BINARY = {**GOOD, "parameters": {"binary_data_size": N}}  # a valid input, sent as bytes


def _binary(header: dict[str, Any], tensors: int = 1) -> tuple[bytes, dict[str, str]]:
    """A request that sends its tensors with the binary extension (as tritonclient does)."""
    head = json.dumps(header).encode()
    return head + bytes(N * tensors), {"Inference-Header-Content-Length": str(len(head))}


def _json_data(values: str) -> tuple[bytes, dict[str, str]]:
    """A request with its tensor inline as JSON ``data`` (``values``: the JSON array text)."""
    return (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 3, 640, 640], '
            b'"data": ' + values.encode() + b"}]}"), {}


# each is a valid request but for the one defect its name says: every one was either a
# 500 (and a dropped connection) or silently accepted before the request was typed strictly
V2_BAD: dict[str, Any] = {
    "parameters is a list": lambda: _binary({"inputs": [{**GOOD, "parameters": [1]}]}),
    "request parameters is a list": lambda: _binary({"parameters": [1], "inputs": [BINARY]}),
    "outputs is a number": lambda: _binary({"inputs": [BINARY], "outputs": 5}),
    "outputs of numbers": lambda: _binary({"inputs": [BINARY], "outputs": [5]}),
    "unknown output": lambda: _binary({"inputs": [BINARY], "outputs": [{"name": "secrets"}]}),
    "boolean in shape": lambda: _binary({"inputs": [{**BINARY, "shape": [True, 3, 640, 640]}]}),
    "string in shape": lambda: _binary({"inputs": [{**BINARY, "shape": ["1", 3, 640, 640]}]}),
    "huge shape": lambda: _binary({"inputs": [{**BINARY, "shape": [2**40, 3, 640, 640]}]}),
    "boolean binary size": lambda: _binary({"inputs": [{**GOOD, "parameters":
                                                        {"binary_data_size": True}}]}),
    "both data and binary": lambda: _binary({"inputs": [{**BINARY, "data": [0]}]}),
    "neither data nor binary": lambda: _binary({"inputs": [GOOD]}),
    "two inputs": lambda: _binary({"inputs": [BINARY, BINARY]}, tensors=2),
    "wrong input name": lambda: _binary({"inputs": [{**BINARY, "name": "pixels"}]}),
    "unknown datatype": lambda: _binary({"inputs": [{**BINARY, "datatype": "UINT9"}]}),
    "id is a number": lambda: _binary({"id": 5, "inputs": [BINARY]}),
    "value over int64": lambda: _json_data("[" + "0," * (N - 1) + str(2**70) + "]"),
    "value over 255": lambda: _json_data("[" + "0," * (N - 1) + "256]"),
    "boolean data": lambda: _json_data("[" + "true," * (N - 1) + "true]"),
    "float data": lambda: _json_data("[" + "1.5," * (N - 1) + "1.5]"),
    # nested as its shape is the protocol's too (test_server_v2.py); ragged rows are not
    "ragged nested data": lambda: _json_data(json.dumps(_ragged())),
    "deeply nested data": lambda: _json_data(_nested(20_000)),
    "deeply nested body": lambda: (_nested(100_000).encode(), {}),
    "not UTF-8": lambda: (b'{"inputs": "\xff\xfe"}', {}),
}


@pytest.mark.parametrize("case", list(V2_BAD))
def test_bad_v2_request_is_400_and_the_connection_stays(srv, case: str) -> None:
    body, headers = V2_BAD[case]()
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        r = c.post("/v2/models/deeppcb/infer", content=body, headers=headers)
        assert r.status_code == 400, (case, r.text[:300])
        _assert_clean_4xx(r, "invalid_tensor")
        _then_good_request_on_same_connection(c, r)


def test_v2_messages_name_the_problem(srv) -> None:
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        def message(case: str) -> str:
            body, headers = V2_BAD[case]()
            r = c.post("/v2/models/deeppcb/infer", content=body, headers=headers)
            return str(r.json()["error"])

        assert "0..255" in message("value over int64") and "0..255" in message("value over 255")
        assert "inputs.0.parameters" in message("parameters is a list")
        assert "outputs" in message("outputs is a number")
        assert "nests deeper" in message("deeply nested body")
        assert "inputs.0.shape.0" in message("boolean in shape")
        assert "'secrets'" in message("unknown output") and "boxes" in message("unknown output")
        assert "'pixels'" in message("wrong input name")
        assert "list of integers, flat (row-major) or nested" in message("float data")
        body, _ = V2_BAD["parameters is a list"]()
        r = c.post("/v2/models/deeppcb/infer", content=body,
                   headers={"Inference-Header-Content-Length": "\u00b2".encode("latin-1")})  # isdigit()
        assert r.status_code == 400 and "Inference-Header-Content-Length" in r.text


def test_good_v2_json_request_still_answers(srv) -> None:
    batch = np.full((1, 3, 640, 640), 114, dtype=np.uint8)
    body = {"id": "r1", "inputs": [{**GOOD, "data": batch.reshape(-1).tolist()}],
            "outputs": [{"name": "scores", "parameters": {"binary_data": False}}],
            "parameters": {"priority": 0}}
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        r = c.post("/v2/models/deeppcb/infer", json=body)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["id"] == "r1" and [o["name"] for o in doc["outputs"]] == ["scores"]
        head = json.dumps({"inputs": [{**GOOD, "parameters": {"binary_data_size": batch.size}}]})
        r = c.post("/v2/models/deeppcb/infer", content=head.encode() + batch.tobytes() + b"extra",
                   headers={"Inference-Header-Content-Length": str(len(head))})
        assert r.status_code == 400 and "5 bytes" in r.json()["error"]


def _png(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 200, dtype=np.uint8))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("size", [(1281, 1), (1, 1281), (1, 1), (5000, 3), (640, 639), (639, 640)])
def test_sliver_images_get_a_verdict(srv, size: tuple[int, int]) -> None:
    """A 1281x1 image letterboxes to under one row: it used to trip OpenCV's resize. A
    frame one pixel short of the input (640x639) has no pad before it, and was passed on
    unpadded, a row short of the batch (adversarial review, session 50)."""
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        r = c.post("/v1/inspect", content=_png(*size), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["verdict"] in {"pass", "fail"}
        for d in r.json()["defects"]:
            assert 0 <= d["box"][0] <= d["box"][2] <= size[0]
        _then_good_request_on_same_connection(c, r)


def test_deeply_nested_json_on_a_model_route_is_4xx(srv) -> None:
    """FastAPI parses these bodies with the stdlib, which raises RecursionError."""
    with httpx.Client(base_url=srv.url, headers=ADMIN, timeout=60) as c:
        for depth in (1_000, 20_000):
            r = c.put("/v1/recipes/x", content=_nested(depth).encode(),
                      headers={"content-type": "application/json"})
            assert r.status_code == 400
            _assert_clean_4xx(r, "invalid_request")
            _then_good_request_on_same_connection(c, r)
        # over the JSON body limit: refused unread (and so the connection closes)
        r = c.put("/v1/recipes/x", content=_nested(100_000).encode(),
                  headers={"content-type": "application/json"})
        _assert_clean_4xx(r)


def _exif_oriented_jpeg(width: int, height: int, orientation: int) -> bytes:
    image = np.full((height, width, 3), 180, dtype=np.uint8)
    cv2.rectangle(image, (20, 20), (120, 60), (0, 0, 0), -1)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + entry + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    jpeg = buf.tobytes()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_jpeg_with_exif_orientation_is_inspected_in_the_sensor_frame(srv) -> None:
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        r = c.post("/v1/inspect", content=_exif_oriented_jpeg(640, 400, 6),
                   headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        for d in r.json()["defects"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 400


def test_truncated_jpeg_closed_with_eoi_is_400(srv, image_bytes: bytes) -> None:
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        for fraction in (0.5, 0.9):
            cut = image_bytes[: int(len(image_bytes) * fraction)] + b"\xff\xd9"
            r = c.post("/v1/inspect", content=cut, headers={"content-type": "image/jpeg"})
            assert r.status_code == 400, r.text
            assert "truncated JPEG" in _assert_clean_4xx(r, "invalid_image")["message"]
            _then_good_request_on_same_connection(c, r)


def test_unexpected_error_is_generic_logged_and_keeps_the_connection(
        launch, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An error no handler anticipated (here: a model file gone from under the registry)."""
    srv = launch()
    registry = srv.app.state.registry

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(5, "Input/output error", "/srv/secret/models/deeppcb/1/model.onnx")

    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        first = c.get("/v2/health/live")
        monkeypatch.setattr(registry, "detector", broken)
        with caplog.at_level(logging.ERROR, logger="lineside"):
            r = c.get("/v2/models/deeppcb")
        monkeypatch.undo()
        assert r.status_code == 500
        err = {"message": r.json()["error"], "code": r.json()["code"]}  # the protocol's shape
        assert err["code"] == "internal_error"
        assert "secret" not in r.text and "OSError" not in r.text and "Input/output" not in r.text
        error_id = r.headers["x-lineside-error-id"]
        assert re.fullmatch(r"[0-9a-f]{12}", error_id) and error_id in err["message"]
        logged = [rec for rec in caplog.records if error_id in rec.getMessage()]
        assert logged and logged[0].exc_info is not None  # the traceback, for the operator
        assert "/srv/secret" in str(logged[0].exc_info[1])
        again = c.get("/v2/models/deeppcb")
        assert again.status_code == 200
        assert _port(again) == _port(r) == _port(first)


def test_a_value_the_database_refuses_is_422_not_500(launch, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value no check caught that the database refuses (PostgreSQL: a NUL in text) is the
    request's fault: 422 naming the kind of problem, no statement or driver text."""
    from sqlalchemy.exc import DataError

    srv = launch()
    registry = srv.app.state.registry

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise DataError("INSERT INTO inspections (part_id) VALUES (%(p)s)", {"p": "a\x00b"},
                        ValueError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))

    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        monkeypatch.setattr(registry, "detector", refused)
        r = c.get("/v2/models/deeppcb")
        monkeypatch.undo()
        err = _assert_clean_4xx(r, "unstorable_value")
        assert r.status_code == 422 and "NUL" in err["message"]
        assert "INSERT" not in r.text and "inspections" not in r.text

        # any other DataError (a value too long for its column) is the server's fault: a 500
        class TooLong(ValueError):
            sqlstate = "22001"

        def too_long(*args: Any, **kwargs: Any) -> Any:
            raise DataError("INSERT ...", {}, TooLong("value too long for type character(64)"))

        monkeypatch.setattr(registry, "detector", too_long)
        r = c.get("/v2/models/deeppcb")
        monkeypatch.undo()
        assert r.status_code == 500 and r.json()["code"] == "internal_error"
        assert "character(64)" not in r.text


def test_a_misspelt_key_of_a_json_body_names_the_keys_meant(srv) -> None:
    """A ``PUT /v1/recipes`` body with ``min_size_pix`` said only "Extra inputs are not
    permitted", where the same recipe as a file named the key meant (session 41); nested
    keys and other routes' bodies too. The hint names the schema's keys only, as text in
    JSON: a key of markup is not echoed back in it."""
    with httpx.Client(base_url=srv.url, headers=ADMIN, timeout=60) as c:
        recipe = {"name": "x", "model": "deeppcb", "min_size_pix": 4,
                  "anomaly": {"treshold": 0.5}, "<b>critcal</b>": []}
        r = c.put("/v1/recipes/x", json=recipe)
        err = _assert_clean_4xx(r, "invalid_request")
        assert r.status_code == 422 and r.headers["content-type"] == "application/json"
        assert "body.min_size_pix: Extra inputs are not permitted (no such key; did you mean " \
            "min_size_px or min_size_mm?)" in err["message"]
        assert "body.anomaly.treshold: Extra inputs are not permitted (no such key; did you " \
            "mean threshold?)" in err["message"]
        assert "body.<b>critcal</b>: Extra inputs are not permitted (no such key; did you " \
            "mean critical?)" in err["message"]
        r = c.post("/v1/inspections/1/reviews", json={"actoin": "confirm"})
        err = _assert_clean_4xx(r, "invalid_request")
        assert "body.actoin: Extra inputs are not permitted (no such key; did you mean " \
            "action?)" in err["message"]
