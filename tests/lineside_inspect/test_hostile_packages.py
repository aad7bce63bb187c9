"""Model packages from elsewhere (a vendor's folder, a fleet pull, ``POST /v1/models``):
what the runtime loads is what was verified, every file it loads is covered by a hash,
nothing is read outside the package, and a card cannot ask for what breaks the server
(session 38). Tiny graphs made with ``onnx``, run by the real onnxruntime."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lineside_inspect.errors import PackageError
from lineside_inspect.package import load_package
from lineside_inspect.runtime.detector import Detector

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models" / "deeppcb" / "1"


def _scores(det: Detector) -> list[float]:
    return [float(s) for d in det.predict([np.zeros((32, 32, 3), np.uint8)]) for s in d.scores]


def test_a_graph_swapped_after_its_check_is_not_the_one_served(
        tmp_path: Path, tiny_onnx: Any) -> None:
    # the sha256 was taken on one read and onnxruntime loaded the folder again: a graph
    # put in its place between the two (same names, shapes and classes) served unchecked
    pkg = load_package(tiny_onnx.package(tmp_path / "pkg", tiny_onnx.graph(score=0.0)))
    onnx.save(tiny_onnx.graph(score=0.9), str(tmp_path / "pkg" / "model.onnx"))
    assert _scores(Detector(pkg, device="cpu", threads=1)) == []


def test_every_external_data_file_is_covered_by_the_card(tmp_path: Path, tiny_onnx: Any) -> None:
    # the card's sha256 covers model.onnx only: weights kept in an external data file
    # were loaded unchecked, any values whoever placed the package liked
    bare = tiny_onnx.package(tmp_path / "bare", tiny_onnx.graph(score=0.0, external=True))
    with pytest.raises(PackageError, match=r"'weights\.bin' has no sha256 in the card's "
                                           "external_data"):
        load_package(bare)
    weights = hashlib.sha256((bare / "weights.bin").read_bytes()).hexdigest()
    pkg = tiny_onnx.package(tmp_path / "pkg", tiny_onnx.graph(score=0.0, external=True),
                   external_data={"weights.bin": weights})
    loaded = load_package(pkg)
    (pkg / "weights.bin").write_bytes(np.full(1, 0.9, np.float32).tobytes())
    # the bytes verified are the ones served, not the file as it is now
    assert _scores(Detector(loaded, device="cpu", threads=1)) == []
    with pytest.raises(PackageError, match=r"weights\.bin: sha256 .* does not match the card's "
                                           "external_data"):
        load_package(pkg)
    listed = tiny_onnx.package(tmp_path / "listed", tiny_onnx.graph(score=0.0),
                      external_data={"weights.bin": weights})
    with pytest.raises(PackageError, match=r"external_data names 'weights\.bin', which the "
                                           "graph keeps no tensor in"):
        load_package(listed)


def test_a_package_file_linking_out_of_its_folder_is_refused(
        tmp_path: Path, tiny_onnx: Any) -> None:
    # the graph is a real one, its hash the card's: only where it lies is wrong (a link
    # out let the checks read any file, its sha256 named in the refusal)
    pkg = tiny_onnx.package(tmp_path / "pkg", tiny_onnx.graph())
    (pkg / "model.onnx").rename(tmp_path / "elsewhere.onnx")
    (pkg / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(PackageError, match=r"model\.onnx: links out of the package folder"):
        load_package(pkg)
    (pkg / "model.onnx").unlink()
    (pkg / "model.onnx").symlink_to("/dev/zero")  # hashed for ever
    with pytest.raises(PackageError, match="links out of the package folder"):
        load_package(pkg)
    (pkg / "inside").mkdir()
    shutil.move(tmp_path / "elsewhere.onnx", pkg / "inside" / "graph.onnx")
    (pkg / "model.onnx").unlink()
    (pkg / "model.onnx").symlink_to("inside/graph.onnx")  # within the folder: fine
    assert load_package(pkg).card.name == "tiny"


@pytest.mark.timeout(60)
def test_a_package_file_that_is_a_fifo_is_refused_not_waited_on(
        tmp_path: Path, tiny_onnx: Any) -> None:
    # opening a FIFO nobody writes to waited for ever: POST /v1/models held a worker, a
    # server's start-up never ended
    pkg = tiny_onnx.package(tmp_path / "pkg", tiny_onnx.graph())
    (pkg / "model.json").unlink()
    os.mkfifo(pkg / "model.json")
    with pytest.raises(PackageError, match=r"model\.json: cannot be read \(not a regular file"):
        load_package(pkg)


@pytest.mark.parametrize(("names", "words"), [
    (("a\x00b",), "class_names.0 'a\\\\x00b' holds a control or bidirectional character"),
    (("ok", "<b>x</b>\n"), "class_names.1 .* holds a control"),
    (("a\u202eb",), "holds a control or bidirectional character"),
    (("a", "b", "a"), "class_names lists 'a' more than once"),
])
def test_class_names_that_cannot_be_stored_or_shown_are_refused(
        tmp_path: Path, names: tuple[str, ...], words: str, tiny_onnx: Any) -> None:
    # a NUL was refused by PostgreSQL at every inspection's write; a newline or U+202E
    # garbled the page, CSV and log lines they are shown on; two classes of one name
    # shared one threshold and one count
    with pytest.raises(PackageError, match=words):
        load_package(tiny_onnx.package(tmp_path / "pkg", tiny_onnx.graph(classes=names)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """The bundled model serving, in process (no port), and its model_roots."""
    from fastapi.testclient import TestClient

    from lineside_inspect.config import ApiKey, Settings
    from lineside_inspect.server.app import create_app

    tmp = tmp_path_factory.mktemp("server")
    roots = tmp / "roots"
    roots.mkdir()
    settings = Settings(models=[str(BUNDLED)], device="cpu", threads=1,
                        data_dir=str(tmp / "data"), model_roots=[str(roots)],
                        api_keys=[ApiKey.from_plain("admin", "admin", "admin-secret")])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = "Bearer admin-secret"
        yield client, roots


def _refused_and_still_serving(client: Any, pkg: Path, said: str) -> None:
    """POST /v1/models of ``pkg`` is a 422 invalid_model_package saying ``said``, and the
    model serving before still serves."""
    r = client.post("/v1/models", json={"path": str(pkg)})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_model_package"
    assert said in err["message"]
    assert {m["name"]: m["active"] for m in client.get("/v1/models").json()} == {"deeppcb": "1"}


def test_a_card_asking_for_a_huge_input_is_a_422_and_the_model_keeps_serving(
        server: tuple[Any, Path], tiny_onnx: Any) -> None:
    # 100000 x 100000: the warm-up's frame alone was 28 GiB, a MemoryError and a 500
    client, roots = server
    pkg = tiny_onnx.package(roots / "huge", tiny_onnx.graph(size=100_000))
    _refused_and_still_serving(client, pkg, "input.size: Input should be less than or equal to 4096")


def test_a_graph_that_cannot_run_is_a_422_and_the_model_keeps_serving(
        server: tuple[Any, Path], tiny_onnx: Any) -> None:
    # a graph asking at its first run for a 2^32 x 2^32 tensor (onnxruntime refuses the
    # size before allocating): its error came out of the warm-up, a 500
    client, roots = server
    model = tiny_onnx.graph()
    model.graph.initializer.append(
        numpy_helper.from_array(np.array([1 << 32, 1 << 32], np.int64), "shape"))
    model.graph.node.extend([
        helper.make_node("ConstantOfShape", ["shape"], ["big"],
                         value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("ReduceMax", ["big"], ["m"], keepdims=0)])
    model.graph.output.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, []))
    pkg = tiny_onnx.package(roots / "overflow", model,
                   outputs=["boxes", "scores", "labels", "m"])
    _refused_and_still_serving(client, pkg, "model tiny 1: the graph failed its first run")


def _with_graph_classes(pkg: Path, value: str) -> Path:
    """``pkg`` with its graph's ``lineside.class_names`` metadata set to ``value`` (the
    card's sha256 made to match: a crafter controls both)."""
    model = onnx.load(str(pkg / "model.onnx"))
    del model.metadata_props[:]
    helper.set_model_props(model, {"lineside.class_names": value})
    onnx.save(model, str(pkg / "model.onnx"))
    doc = json.loads((pkg / "model.json").read_text())
    doc["sha256"] = hashlib.sha256((pkg / "model.onnx").read_bytes()).hexdigest()
    (pkg / "model.json").write_text(json.dumps(doc))
    return pkg


@pytest.mark.parametrize(("value", "words"), [
    ("not json", r"invalid JSON"),
    ("5", r"it holds int 5"),
    ('{"a": 1}', r"it holds dict"),
    ('["a", 2]', r"it holds list"),
    ("[" * 100_000, r"nested too deeply"),
    ("1" * 5000, r"invalid JSON"),
])
def test_graph_class_metadata_that_is_no_list_of_names_is_refused_by_name(
        tmp_path: Path, value: str, words: str, tiny_onnx: Any) -> None:
    # read with json.loads unchecked: a JSONDecodeError, TypeError, RecursionError or
    # ValueError, a 500 from POST /v1/models and the hub's publish (session 51)
    pkg = _with_graph_classes(tiny_onnx.package(tmp_path / "pkg", tiny_onnx.graph()), value)
    with pytest.raises(PackageError, match="graph's lineside.class_names metadata is not a "
                                           rf"JSON list of class names \(.*{words}"):
        load_package(pkg)


def test_a_refusal_shows_a_huge_class_list_cut_short(tmp_path: Path, tiny_onnx: Any) -> None:
    # the graph's metadata (up to its 2 GiB) was echoed whole in the 422
    names = json.dumps([f"c{i}" for i in range(100_000)])
    pkg = _with_graph_classes(tiny_onnx.package(tmp_path / "pkg", tiny_onnx.graph()), names)
    with pytest.raises(PackageError) as exc:
        load_package(pkg)
    message = exc.value.message
    assert "graph was exported for 100000 classes" in message
    assert "card lists 1 [\"a\"]" in message
    assert len(message) < 1000


def test_junk_graph_class_metadata_is_a_422_and_the_model_keeps_serving(
        server: tuple[Any, Path], tiny_onnx: Any) -> None:
    client, roots = server
    pkg = _with_graph_classes(tiny_onnx.package(roots / "junkmeta", tiny_onnx.graph()), "{")
    _refused_and_still_serving(client, pkg, "lineside.class_names metadata is not a JSON list")
