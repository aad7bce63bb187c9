"""Names that become paths (session 36's read of every such place): a model package's
external-data file names are full-matched, a model path the file system cannot take is
the package's 422, and a dataset ``file_name`` with a NUL is a problem, not a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from lineside_inspect.dataset import read_dataset
from lineside_inspect.dataset.exporters import export_coco
from lineside_inspect.dataset.validate import validate_dir
from lineside_inspect.errors import DatasetError, PackageError
from lineside_inspect.package import load_package, sha256_file
from lineside_inspect.triton import export_triton

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "deeppcb" / "1"


def _with_external_data(dst: Path, location: str) -> Path:
    """A copy of the bundled package whose weights are external data named ``location``
    (edited in as an attacker would: onnx refuses to write such names), card re-hashed."""
    shutil.copytree(MODEL, dst)
    graph = onnx.load(str(dst / "model.onnx"))
    onnx.save(graph, str(dst / "model.onnx"), save_as_external_data=True,
              location="weights.bin", size_threshold=0)
    graph = onnx.load(str(dst / "model.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (dst / "model.onnx").write_bytes(graph.SerializeToString())
    card = json.loads((dst / "model.json").read_text())
    card["sha256"] = sha256_file(dst / "model.onnx")
    card["external_data"] = {"weights.bin": sha256_file(dst / "weights.bin")}
    (dst / "model.json").write_text(json.dumps(card))
    return dst


def test_external_data_that_climbs_through_a_link_is_refused(tmp_path: Path) -> None:
    # 'd' links five folders down inside the package, so 'd/../../../../../weights.bin'
    # resolves inside it: the old check passed it, and export --triton then copied the
    # file to that name under its staging folder, where 'd' is a real folder: outside
    pkg = _with_external_data(tmp_path / "pkg", "d/../../../../../weights.bin")
    (pkg / "a" / "b" / "c" / "e" / "f").mkdir(parents=True)
    (pkg / "d").symlink_to("a/b/c/e/f")
    repo = tmp_path / "x" / "y" / "repo"
    repo.mkdir(parents=True)
    with pytest.raises(PackageError, match="not by a plain relative name"):
        load_package(pkg)
    with pytest.raises(PackageError):
        export_triton(pkg, repo)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("weights.bin")) \
        == ["pkg/weights.bin"]


@pytest.mark.parametrize("location", ["../outside.bin", "/tmp/outside.bin",
                                      "weights\x00.bin", "", "./weights.bin", "a//weights.bin",
                                      "weights.bin/", "C:weights.bin", "w\\..\\weights.bin",
                                      "w\u2215eights.bin"])
def test_external_data_names_are_full_matched(tmp_path: Path, location: str) -> None:
    # a NUL was a ValueError out of load_package: a 500 from POST /v1/models and from the
    # hub's publish
    pkg = _with_external_data(tmp_path / "pkg", location)
    with pytest.raises(PackageError, match="plain relative name"):
        load_package(pkg)


def test_a_plain_external_data_name_still_loads(tmp_path: Path) -> None:
    pkg = _with_external_data(tmp_path / "pkg", "weights.bin")
    assert load_package(pkg).card.name == "deeppcb"
    folder = export_triton(pkg, tmp_path / "repo")
    assert (folder / "1" / "weights.bin").is_file()


def test_a_model_path_the_file_system_cannot_take_is_a_package_error(tmp_path: Path) -> None:
    # POST /v1/models confines the path to model_roots, then loads it: a name over 255
    # bytes (ENAMETOOLONG) was an OSError out of is_dir(), a 500 naming the server's path
    with pytest.raises(PackageError, match="cannot be read"):
        load_package(tmp_path / ("x" * 300))


def test_the_admin_load_of_a_too_long_name_is_422(tmp_path: Path) -> None:
    # in process (no port): the route's answer, as the server's handlers make it
    from fastapi.testclient import TestClient

    from lineside_inspect.config import ApiKey, Settings
    from lineside_inspect.server.app import create_app

    roots = tmp_path / "roots"
    roots.mkdir()
    settings = Settings(models=[str(MODEL)], device="cpu", threads=1,
                        data_dir=str(tmp_path / "data"), model_roots=[str(roots)],
                        api_keys=[ApiKey.from_plain("admin", "admin", "admin-secret")])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        r = client.post("/v1/models", json={"path": str(roots / ("x" * 300))},
                        headers={"Authorization": "Bearer admin-secret"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_model_package" and "cannot be read" in err["message"]


def test_a_dataset_file_name_with_a_nul_is_a_problem_not_a_traceback(sample: Path,
                                                                     tmp_path: Path) -> None:
    doc = json.loads((sample / "annotations.json").read_text())
    doc["images"][0]["file_name"] = "a\x00b.jpg"
    (sample / "annotations.json").write_text(json.dumps(doc))
    problems = validate_dir(sample)  # was: ValueError: embedded null byte
    assert any(p.location == "file_name" and "relative path inside images/" in p.message
               for p in problems), problems
    with pytest.raises(DatasetError, match="leaves the dataset's images/ folder"):
        export_coco(read_dataset(sample), tmp_path / "coco")
