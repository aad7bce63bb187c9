"""``POST /v1/models`` loads packages only from the configured model roots: no system
folders, no ``..`` out of a root, no symlink inside a root that points outside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lineside_inspect.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "deeppcb" / "1"


def _package(dst: Path, version: str) -> Path:
    shutil.copytree(MODEL, dst)
    card = json.loads((dst / "model.json").read_text())
    card["version"] = version
    (dst / "model.json").write_text(json.dumps(card))
    return dst


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    roots, outside = tmp_path / "roots", tmp_path / "outside"
    inside = _package(roots / "deeppcb" / "2", "2")
    away = _package(outside / "deeppcb" / "3", "3")
    (roots / "deeppcb" / "link").symlink_to(away, target_is_directory=True)
    mixed = _package(roots / "deeppcb" / "4", "4")  # its graph is a link to one outside
    (mixed / "model.onnx").unlink()
    (mixed / "model.onnx").symlink_to(away / "model.onnx")
    return {"roots": roots, "outside": outside, "inside": inside, "away": away, "mixed": mixed}


def test_only_packages_inside_the_roots_load(launch, layout: dict[str, Path]) -> None:
    srv = launch(model_roots=[str(layout["roots"])])
    roots, away = layout["roots"], layout["away"]
    refused = ["/etc", "/", "../../..", "../../../../../../../../etc", str(away),
               str(roots / ".." / "outside" / "deeppcb" / "3"), str(roots / "deeppcb" / "link"),
               str(layout["mixed"]), "models/deeppcb/1", "a\x00b"]
    with srv.client("admin") as admin:
        for path in refused:
            r = admin.post("/v1/models", json={"path": path})
            assert r.status_code == 403, (path, r.text)
            err = r.json()["error"]
            assert err["code"] == "path_not_allowed" and "model_roots" in err["message"]
            # session 47: a relative path (README's own example) says what it is taken from
            assert (("a relative path is taken from the folder the server was started in: "
                     "give the package's absolute path" in err["message"])
                    == (path in ("../../..", "../../../../../../../../etc", "models/deeppcb/1"))), err
            # the caller's own path, never the server's folders or where a link leads
            if not path.startswith(str(roots)):
                assert str(roots) not in err["message"], err
            assert str(layout["outside"]) not in err["message"] or path.startswith(str(away))
        assert [m["active"] for m in admin.get("/v1/models").json()] == ["1"]
        r = admin.post("/v1/models", json={"path": str(layout["inside"])})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "2" and r.json()["active"] == "2"


def test_errors_name_the_package_as_sent(launch, layout: dict[str, Path]) -> None:
    srv = launch(model_roots=[str(layout["roots"])])
    (layout["inside"] / "model.json").write_text("{not json")
    relative = layout["roots"] / "deeppcb" / "." / "2"
    with srv.client("admin") as admin:
        r = admin.post("/v1/models", json={"path": str(relative)})
        assert r.status_code == 422
        assert str(relative) in r.json()["error"]["message"]


def test_default_root_is_the_folder_holding_the_configured_models(tmp_path: Path) -> None:
    assert Settings(models=[str(MODEL)]).model_root_paths() == [ROOT / "models"]
    # a package directly under / gives no default root: never the whole filesystem
    assert Settings(models=["/pkg"]).model_root_paths() == []
    config = tmp_path / "serve.yaml"
    config.write_text("models: [pkgs/a/1]\nmodel_roots: [pkgs, other]\n")
    settings = load_settings(config)
    assert settings.model_root_paths() == [tmp_path / "pkgs", tmp_path / "other"]
