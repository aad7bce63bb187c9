"""Open Inference Protocol v2, called with tritonclient's HTTP client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from lineside_inspect.imageio import decode_image
from lineside_inspect.runtime.detector import Detector

MODEL = Path(__file__).resolve().parents[2] / "models" / "deeppcb" / "1"
AUTH = {"Authorization": "Bearer line-secret"}


# tritonclient's HTTP client (geventhttpclient) patches process state that later breaks
# httpx in the same process, so it runs in a child process of its own.
CLIENT = """
import json, sys
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
client = httpclient.InferenceServerClient(url=url)
auth = {"Authorization": "Bearer line-secret"}
if mode == "meta":
    try:
        client.get_model_metadata("nope", headers=auth)
        missing = "found"
    except InferenceServerException as exc:
        missing = str(exc.status())
        said = str(exc)  # a TypeError when the error body was not the protocol's string
    try:
        client.get_model_metadata("deeppcb")
        anonymous = "answered"
    except InferenceServerException as exc:
        anonymous = str(exc.status())
    json.dump({"live": client.is_server_live(), "ready": client.is_server_ready(),
               "model_ready": client.is_model_ready("deeppcb", headers=auth),
               "meta": client.get_model_metadata("deeppcb", headers=auth), "missing": missing,
               "said": said, "anonymous": anonymous}, open(out, "w"))
else:
    batch = np.load(out + ".in.npy")
    inp = httpclient.InferInput("images", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch, binary_data=mode == "binary")
    outs = [httpclient.InferRequestedOutput(n, binary_data=False)
            for n in ("boxes", "scores", "labels")]
    result = client.infer("deeppcb", [inp], outputs=outs, headers=auth)
    np.savez(out, **{n: result.as_numpy(n) for n in ("boxes", "scores", "labels")})
"""


def _triton(srv, mode: str, out: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CLIENT, srv.url.removeprefix("http://"), mode,
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_health_and_metadata(srv, tmp_path: Path) -> None:
    _triton(srv, "meta", tmp_path / "meta.json")
    doc = json.loads((tmp_path / "meta.json").read_text())
    assert doc["live"] and doc["ready"] and doc["model_ready"]
    meta = doc["meta"]
    assert meta["inputs"][0] == {"name": "images", "datatype": "UINT8", "shape": [-1, 3, 640, 640]}
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "labels"]
    assert doc["missing"] == "404"
    # the protocol's error body, {"error": "<message>"}: tritonclient's str() of the
    # exception raised TypeError on Lineside's object (OIP review, session 33); and the
    # metadata is for the keys that may infer (anyone listed the loaded models)
    assert "unknown model 'nope'" in doc["said"], doc["said"]
    assert doc["anonymous"] == "401"


@pytest.mark.parametrize("mode", ["binary", "json"])
def test_infer_matches_the_runtime(srv, image_bytes: bytes, mode: str, tmp_path: Path) -> None:
    det = Detector(MODEL, device="cpu", threads=1)
    batch, _ = det.pre_process([decode_image(image_bytes)] * 2)
    expected = det.forward(batch)
    out = tmp_path / "result.npz"
    np.save(str(out) + ".in.npy", batch)
    _triton(srv, mode, out)
    got = np.load(out)
    for name, want in zip(("boxes", "scores", "labels"), expected, strict=True):
        assert got[name].shape == want.shape
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-3)


def test_malformed_tensors_are_400(srv) -> None:
    good = {"name": "images", "datatype": "UINT8", "shape": [1, 3, 640, 640]}
    bad_bodies = [
        b"not json",
        b"{}",
        b'{"inputs": []}',
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 640, 640], "data": [1]}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 3, 32, 32], "data": [1]}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 3, 640, 640], "data": [1, 2]}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": "x", "data": [1]}]}',
    ]
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as c:
        for body in bad_bodies:
            r = c.post("/v2/models/deeppcb/infer", content=body)
            assert r.status_code == 400, body
            assert r.json()["code"] == "invalid_tensor" and isinstance(r.json()["error"], str)
        head = (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 3, 640, 640], '
                b'"parameters": {"binary_data_size": 999}}]}')
        r = c.post("/v2/models/deeppcb/infer", content=head + b"\x00" * 10,
                   headers={"Inference-Header-Content-Length": str(len(head))})
        assert r.status_code == 400
        r = c.post("/v2/models/nope/infer", json={"inputs": [good]})
        assert r.status_code == 404
        values = [300] * (3 * 640 * 640)
        r = c.post("/v2/models/deeppcb/infer", json={"inputs": [{**good, "data": values}]})
        assert r.status_code == 400 and "0..255" in r.json()["error"]


def test_large_json_tensors_are_parsed_one_at_a_time_and_kept_as_arrays(monkeypatch) -> None:
    """A JSON tensor takes tens of times its bytes while parsed (30 MB: ~850 MB), and all
    18 admitted requests could parse at once (attacker review): a header over BIG_HEADER
    parses under one lock, and the parsed request keeps the uint8 array, not the list."""
    from lineside_inspect.server.routes import v2

    entered: list[bool] = []

    class Recording:
        def __enter__(self) -> None:
            entered.append(True)

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(v2, "_BIG_PARSE", Recording())
    head = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 3, 4, 4],
                                   "data": list(range(48))}]}).encode()
    monkeypatch.setattr(v2, "BIG_HEADER", len(head))
    doc, rest = v2._parse(head, None)
    assert entered == [] and rest == b""  # at the limit: parsed at once
    assert doc.inputs[0].data is None and doc.inputs[0].array.tolist() == list(range(48))
    monkeypatch.setattr(v2, "BIG_HEADER", len(head) - 1)
    v2._parse(head, None)
    assert entered == [True]


def test_a_compressed_request_is_refused_naming_its_encoding(srv) -> None:
    """tritonclient's request_compression_algorithm="gzip" got "inference request header
    is not valid JSON" and sent the integrator after a JSON bug (OIP review, session 33)."""
    import gzip

    body = gzip.compress(json.dumps({"inputs": [{"name": "images", "datatype": "UINT8",
                                                 "shape": [1, 3, 640, 640], "data": [0]}]}).encode())
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as c:
        for path in ("/v2/models/deeppcb/infer", "/v1/inspect"):
            r = c.post(path, content=body, headers={"content-encoding": "gzip",
                                                    "content-type": "application/json"})
            assert r.status_code == 415, (path, r.text)
            assert "content encoding 'gzip' is not accepted" in r.text, r.text


def test_nested_tensor_data_is_taken_as_its_shape(srv, image_bytes: bytes) -> None:
    """The protocol lets a tensor come nested as its shape (``ndarray.tolist()``): it was
    a 400 "must be a flat list" (OIP review, session 33). Ragged rows stay a 400."""
    det = Detector(MODEL, device="cpu", threads=1)
    batch, _ = det.pre_process([decode_image(image_bytes)])
    spec = {"name": "images", "datatype": "UINT8", "shape": list(batch.shape)}
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        answers = [c.post("/v2/models/deeppcb/infer", json={"inputs": [{**spec, "data": data}]})
                   for data in (batch.reshape(-1).tolist(), batch.tolist())]
        assert [a.status_code for a in answers] == [200, 200], answers[1].text
        assert answers[0].json()["outputs"] == answers[1].json()["outputs"]
        ragged = batch.tolist()
        ragged[0][1][5] = ragged[0][1][5][:-1]
        r = c.post("/v2/models/deeppcb/infer", json={"inputs": [{**spec, "data": ragged}]})
        assert r.status_code == 400 and "unequal lengths" in r.json()["error"], r.text


def _package_answering(folder: Path, boxes: np.ndarray, scores: np.ndarray,
                       labels: np.ndarray) -> Path:
    """The bundled package with a graph that answers these constants, in their types."""
    import shutil

    import onnx
    from onnx import helper, numpy_helper

    from lineside_inspect.package import sha256_file

    pkg = folder / "deeppcb" / "1"
    shutil.copytree(MODEL, pkg)
    outputs = {"boxes": boxes, "scores": scores, "labels": labels}
    graph = helper.make_graph(
        [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v))
         for n, v in outputs.items()], "constant",
        [helper.make_tensor_value_info("images", onnx.TensorProto.UINT8, [1, 3, 640, 640])],
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
         for n, v in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    bundled = onnx.load(str(MODEL / "model.onnx"), load_external_data=False)
    helper.set_model_props(model, {p.key: p.value for p in bundled.metadata_props})
    onnx.save(model, pkg / "model.onnx")
    card = json.loads((pkg / "model.json").read_text())
    (pkg / "model.json").write_text(json.dumps({**card, "sha256": sha256_file(pkg / "model.onnx")}))
    return pkg


def test_outputs_come_in_the_types_the_metadata_names(launch, tmp_path: Path) -> None:
    """A graph giving float64 boxes and scores and int16 labels loads and judges on /v1
    (the runtime takes any float and integer), but had no OIP name for them: every v2
    infer was a 500 (OIP review, session 36). Each output now comes in the type the
    model's metadata names."""
    pkg = _package_answering(tmp_path, np.array([[[1, 2, 30, 40], [0, 0, 0, 0]]], np.float64),
                             np.array([[0.9, 0.0]], np.float64), np.array([[1, 0]], np.int16))
    srv = launch(models=[str(pkg)])
    head = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8",
                                   "shape": [1, 3, 640, 640],
                                   "parameters": {"binary_data_size": 3 * 640 * 640}}]}).encode()
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        meta = c.get("/v2/models/deeppcb").json()
        r = c.post("/v2/models/deeppcb/infer", content=head + bytes(3 * 640 * 640),
                   headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    declared = {o["name"]: o["datatype"] for o in meta["outputs"]}
    got = {o["name"]: o for o in r.json()["outputs"]}
    assert {n: o["datatype"] for n, o in got.items()} == declared == {
        "boxes": "FP32", "scores": "FP32", "labels": "INT64"}
    assert got["labels"]["data"] == [1, 0] and got["scores"]["data"] == [pytest.approx(0.9), 0]
    assert got["boxes"]["data"][:4] == [1, 2, 30, 40]


def test_a_kserve_client_body_is_taken_and_its_model_name_checked(srv) -> None:
    """KServe's Python SDK (``InferRequest.to_rest``, used by its InferenceRESTClient) puts
    ``model_name`` in the request body beside ``id`` and ``inputs``: every infer from it
    was a 400 "model_name: Extra inputs are not permitted" (OIP review, session 55). The
    name is taken when it is the path's, and refused naming both when it is not."""
    spec = {"name": "images", "datatype": "UINT8", "shape": [1, 3, 640, 640],
            "data": [0] * (3 * 640 * 640)}
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        r = c.post("/v2/models/deeppcb/infer",
                   json={"id": "k-1", "model_name": "deeppcb", "inputs": [spec]})
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "k-1" and r.json()["model_name"] == "deeppcb"
        r = c.post("/v2/models/deeppcb/versions/1/infer",
                   json={"id": "k-2", "model_name": "other", "inputs": [spec]})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == ("the body's model_name 'other' is not the model of the "
                                     "path, 'deeppcb'"), r.text


def test_refusals_name_the_datatype_and_the_missing_header(srv) -> None:
    """A client sending FP32 (a normalised image) or BYTES as JSON was told "'data' must
    be a list of integers", not that the model takes UINT8; a binary tensor sent without
    Inference-Header-Content-Length was "not valid JSON" (OIP review, session 55)."""
    shape = [1, 3, 640, 640]
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
        for datatype, data in (("FP32", [0.5] * (3 * 640 * 640)), ("FP32", [float("nan")]),
                               ("BYTES", ["AAAA"]), ("INT64", [0] * (3 * 640 * 640))):
            body = json.dumps({"inputs": [{"name": "images", "datatype": datatype,
                                           "shape": shape, "data": data}]})
            r = c.post("/v2/models/deeppcb/infer", content=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"] == (f"inputs.0.datatype: datatype must be UINT8 (the "
                                         f"model's input), got {datatype}"), r.text
        head = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": shape,
                                       "parameters": {"binary_data_size": 3 * 640 * 640}}]})
        r = c.post("/v2/models/deeppcb/infer", content=head.encode() + bytes(3 * 640 * 640))
        assert r.status_code == 400, r.text
        assert "needs the Inference-Header-Content-Length header" in r.json()["error"], r.text
        # the same body with the header is a tensor
        r = c.post("/v2/models/deeppcb/infer", content=head.encode() + bytes(3 * 640 * 640),
                   headers={"Inference-Header-Content-Length": str(len(head))})
        assert r.status_code == 200, r.text
