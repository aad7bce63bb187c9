"""Recipes a line engineer gets wrong, refused before they judge a part (session 54).

- A ``roi`` drawn for another frame size (a 5 MP station's figures on a 640 px frame) lies
  wholly outside the frame: no box centre could count, and every defective board passed
  with ``"reasons": []``. Each inspection under it is now an error naming the recipe, its
  roi and the frame size (422; a PLC's ``RECIPE_NOT_USABLE``), never a pass; a roi wholly
  left of or above any image is refused when put.
- Two recipe files naming one recipe: the later replaced the earlier unseen (a copied file
  not renamed judged the first product by the copy's rules). Names that differ only in
  case (``A`` beside ``a``) were two products one choice apart. Both are refused at start
  naming the files; a new name differing only in case from a held one is refused over the
  API (409 ``recipe_name_taken``).

Real servers (uvicorn on loopback, the bundled onnxruntime models, SQLite) and a real
``lineside serve`` process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lineside_inspect.errors import ConfigError, RecipeDoesNotFitFrame
from lineside_inspect.line.plc import error_code
from lineside_inspect.line.station import ErrorCode
from lineside_inspect.server.app import create_app

from .conftest import ROOT, SAMPLE, Running, keyed, start_server
from .server_process import LINESIDE, free_port

RECIPES = ROOT / "configs" / "recipes"
GOOD_MODEL = ROOT / "models" / "deeppcb-good" / "1"
MODEL = ROOT / "models" / "deeppcb" / "1"
# a DeepPCB board (640 x 640) the bundled detector fails with several defects
DEFECTIVE = SAMPLE / "images" / "group13000" / "13000001_test.jpg"
FAR = [[5000, 5000], [6000, 5000], [6000, 6000], [5000, 6000]]  # a 5 MP station's roi


@pytest.fixture(scope="module")
def served() -> Any:
    running, stop = start_server(keyed(models=[str(MODEL), str(GOOD_MODEL)],
                                       recipes=[str(RECIPES / "deeppcb.yaml"),
                                                str(RECIPES / "deeppcb-good.yaml")]))
    yield running
    stop()


def _inspect(srv: Running, recipe: str) -> Any:
    with srv.client("line") as c:
        return c.post(f"/v1/inspect?recipe={recipe}", content=DEFECTIVE.read_bytes(),
                      headers={"content-type": "image/jpeg"})


def _put(srv: Running, body: dict[str, Any]) -> Any:
    with srv.client("admin") as c:
        return c.put(f"/v1/recipes/{body['name']}", json=body)


def _stored(srv: Running) -> int:
    with srv.client("reviewer") as c:
        r = c.get("/v1/inspections?limit=500")
        assert r.status_code == 200, r.text
        return len(r.json()["items"])


def test_a_roi_outside_the_frame_is_an_error_never_a_pass(served: Running) -> None:
    judged = _inspect(served, "deeppcb")
    assert judged.status_code == 200 and judged.json()["verdict"] == "fail", judged.text
    for body in ({"name": "far", "version": "2", "model": "deeppcb", "roi": [FAR]},
                 # a good-only model judges its map inside the roi: nothing there either
                 {"name": "far-good", "version": "2", "model": "deeppcb-good", "roi": [FAR]}):
        assert _put(served, body).status_code == 200
        before = _stored(served)
        r = _inspect(served, body["name"])
        assert r.status_code == 422, r.text  # was 200 {"verdict": "pass", "reasons": []}
        error = r.json()["error"]
        assert error["code"] == "invalid_config"
        assert error["message"].startswith(
            f"recipe {body['name']} version 2: its roi (x 5000..6000, y 5000..6000) lies "
            "wholly outside the 640x640 frame, so no defect could count"), error
        assert "Traceback" not in r.text and "/" not in error["message"]
        assert _stored(served) == before  # no verdict was kept for the part
    # a roi reaching into the frame judges as before: the same board fails inside it
    part = {"name": "part", "model": "deeppcb", "roi": [[[-100, -100], [700, -100], [700, 700]]]}
    assert _put(served, part).status_code == 200
    r = _inspect(served, "part")
    assert r.status_code == 200 and r.json()["verdict"] == "fail", r.text
    assert r.json()["recipe"] == {"name": "part", "version": "1"}


def test_a_roi_no_frame_can_reach_is_refused_when_put(served: Running) -> None:
    for roi in ([[-100, -100], [-50, -100], [-50, -50]],  # left of and above the image
                [[10, -90], [600, -90], [300, 0]]):  # above it: y never above 0
        r = _put(served, {"name": "nowhere", "model": "deeppcb", "roi": [[[10, 10], [20, 10],
                                                                          [20, 20]], roi]})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"] == (
            "body.roi: polygon 1 lies wholly left of or above the image (frame pixels are at "
            "x >= 0 and y >= 0): it holds no pixel of any frame, so no defect would count and "
            "every part would pass")
    with served.client("admin") as c:
        assert "nowhere" not in {x["name"] for x in c.get("/v1/recipes").json()}
    # ignore polygons anywhere are harmless: they only leave boxes out
    r = _put(served, {"name": "nowhere", "model": "deeppcb",
                      "ignore": [[[-100, -100], [-50, -100], [-50, -50]]]})
    assert r.status_code == 200, r.text


def test_a_plc_reads_a_roi_outside_the_frame_as_a_recipe_not_usable() -> None:
    assert error_code(RecipeDoesNotFitFrame("recipe far: ...")) is ErrorCode.RECIPE_NOT_USABLE


def test_a_new_name_differing_only_in_case_is_refused_over_the_api(served: Running) -> None:
    r = _put(served, {"name": "DeepPCB", "model": "deeppcb", "max_count": {"open": 3}})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == {"code": "recipe_name_taken", "message": (
        "recipe DeepPCB: the server holds recipe deeppcb, a name that differs only in case: a "
        "PLC, a page or a person choosing by name would take one for the other; put it as "
        "deeppcb to change that one, or choose another name")}
    with served.client("admin") as c:
        names = [x["name"] for x in c.get("/v1/recipes").json()]
    assert "DeepPCB" not in names and "deeppcb" in names
    assert not (Path(served.app.state.saved_recipes.folder) / "DeepPCB.json").exists()
    # the name held is put again as before
    r = _put(served, {"name": "deeppcb", "version": "5", "model": "deeppcb"})
    assert r.status_code == 200, r.text


def _recipe_file(folder: Path, file: str, name: str, **rules: Any) -> Path:
    path = folder / file
    path.write_text(f"name: {name}\nversion: '1'\nmodel: deeppcb\n"
                    + "".join(f"{k}: {v}\n" for k, v in rules.items()))
    return path


@pytest.mark.parametrize("second", ["a", "A"])
def test_two_recipe_files_of_one_name_refuse_to_start(tmp_path: Path, second: str) -> None:
    first = _recipe_file(tmp_path, "first.yaml", "a")
    copy = _recipe_file(tmp_path, "copy.yaml", second, min_size_px=50)
    said = (f"recipes: {first} and {copy} both name recipe a: the later would replace the "
            "earlier unseen" if second == "a" else
            f"recipes: {first} names recipe a and {copy} recipe A, names that differ only in "
            "case")
    # the application, as a test or an embedding starts it (its start-up names both)
    app = create_app(keyed(recipes=[str(first), str(copy)], data_dir=str(tmp_path / "app")))
    with pytest.raises(ConfigError) as refused, TestClient(app):
        pass
    assert str(refused.value).startswith(said), refused.value
    assert app.state.startup_error is refused.value
    # `lineside serve`: one line naming both files, before anything is made
    out = subprocess.run([*LINESIDE, "serve", "--model", str(MODEL), "--recipe", str(first),
                          "--recipe", str(copy), "--port", str(free_port()), "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LINESIDE_DATA_DIR": str(tmp_path / "store")})
    assert out.returncode == 2, out.stderr
    assert f"error: {said}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "File \"" not in out.stderr


def test_a_gate_on_golden_images_the_roi_misses_names_the_set_and_the_image(
        tmp_path: Path) -> None:
    """A gate replays its golden set under the recipe as the line judges: one whose roi
    misses a golden image (a set made of another camera's frames, or a roi drawn for
    another station) was refused with the inspection's words, "draw the roi in this
    camera's frame pixels", naming neither the set nor which of its images: the roi may be
    right for the line and the image the stranger. Now a 422 invalid_golden_set naming the
    set, the image and its size, the recipe and its roi's span (and what to do); before
    session 54 every part passed under both versions and the gate passed, comparing
    nothing."""
    from lineside_inspect.errors import GoldenSetError
    from lineside_inspect.lifecycle.gate import run_gate
    from lineside_inspect.recipes import Recipe
    from lineside_inspect.runtime.detector import Detector

    from .test_gate_fused import _golden

    det = Detector(MODEL, device="cpu", threads=1)
    lib, manifest = _golden(tmp_path / "golden")
    far = Recipe(name="far", version="2", model="deeppcb", roi=[FAR])  # type: ignore[list-item]
    with pytest.raises(GoldenSetError) as refused:
        run_gate(det, det, lib, manifest, far)
    assert refused.value.message == (
        f"golden set {manifest.ref}: bad+square is a 640x640 image, and recipe far version 2's "
        "roi (x 5000..6000, y 5000..6000) lies wholly outside it: no defect could count there, "
        "so the gate would compare passes alone. Gate under a recipe whose roi fits the set's "
        "images, or make the set of this line's frames"), refused.value.message
    assert refused.value.status == 422 and refused.value.code == "invalid_golden_set"
    # a roi reaching into the images gates as before
    part = far.model_copy(update={"roi": [[(-100.0, -100.0), (700.0, -100.0), (700.0, 700.0)]]})
    assert run_gate(det, det, lib, manifest, part).passed


def test_a_recipe_file_edited_under_a_version_that_judged_refuses_to_start(
        tmp_path: Path) -> None:
    """Session 55: a recipe version stands for one set of rules (stored verdicts name the
    version that judged them; a PUT of other rules under it is a 409). A configured
    recipe's file edited without raising its version (``min_size_px`` 0 to 50 under
    version 1) started and judged as "a version 1", two rule sets under one name. The
    server keeps each configured version's rules digest in the data folder and refuses to
    start naming the file; the version raised starts, and the first rules under version
    1 again start too."""
    data = tmp_path / "store"  # (store=False: a start refused keeps no data folder lock)
    first = _recipe_file(tmp_path, "a.yaml", "a")
    app = create_app(keyed(recipes=[str(first)], data_dir=str(data), store=False))
    with TestClient(app):
        assert app.state.startup_error is None
    assert (data / "recipes" / ".versions" / "a.json").is_file()

    edited = _recipe_file(tmp_path, "a.yaml", "a", min_size_px=50)  # version 1 still
    said = (f"{edited}: recipe a version 1 judged on this server before with other rules "
            f"(kept in {data / 'recipes' / '.versions' / 'a.json'})")
    app = create_app(keyed(recipes=[str(edited)], data_dir=str(data), store=False))
    with pytest.raises(ConfigError) as refused, TestClient(app):
        pass
    assert str(refused.value).startswith(said), refused.value
    # `lineside serve`: one line naming the file, before anything is made
    out = subprocess.run([*LINESIDE, "serve", "--model", str(MODEL), "--recipe", str(edited),
                          "--port", str(free_port()), "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LINESIDE_DATA_DIR": str(data)})
    assert out.returncode == 2, out.stderr
    assert f"error: {said}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr

    # the version raised starts (and is kept); the first rules put back start as version 1
    raised = edited.read_text().replace("version: '1'", "version: '2'")
    edited.write_text(raised)
    _recipe_file(tmp_path, "b.yaml", "a")  # (version 1's own rules, for the last start)
    for path, version in ((edited, "2"), (tmp_path / "b.yaml", "1")):
        app = create_app(keyed(recipes=[str(path)], data_dir=str(data), store=False))
        with TestClient(app):
            assert app.state.startup_error is None
            assert app.state.registry.recipe("a").version == version
    kept = (data / "recipes" / ".versions" / "a.json").read_text()
    assert '"1"' in kept and '"2"' in kept, kept
