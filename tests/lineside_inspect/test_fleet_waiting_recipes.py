"""A fleet box whose config names a recipe for a model it gets from the hub (docs/fleet.md:
the box pulls its line's model, the recipe is the station's). The start-up check let such
a recipe through ("the start-up checks that one"), and the start-up then stopped the box
with a lifespan traceback: ``unknown model``, before and after the pull alike. Now the
recipe waits for its model: put when a pull loads it, or at start-up once restored."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lineside_inspect.fleet.protocol import AssignedModel
from lineside_inspect.package import card_digest, load_package
from lineside_inspect.recipes import Recipe
from lineside_inspect.server.app import load_saved_recipes

from .conftest import ROOT, Running

GOOD = ROOT / "models" / "deeppcb-good" / "1"  # the bundled good-only model: not configured


def _config(tmp_path: Path) -> dict[str, Any]:
    recipe = tmp_path / "station-good.yaml"
    recipe.write_text(yaml.safe_dump({"name": "station-good", "version": "7",
                                      "model": "deeppcb-good", "min_size_px": 12}))
    return {"data_dir": str(tmp_path / "box"), "recipes": [str(recipe)],
            "default_recipe": "station-good",
            # a hub nobody answers on: the pull below is made by hand
            "fleet": {"hub_url": "http://127.0.0.1:9", "token": "t", "line": "L1",
                      "pull_interval_s": 3600, "timeout_s": 1}}


def _recipes(box: Running) -> dict[str, Any]:
    with box.client("admin") as admin:
        return {r["name"]: r for r in admin.get("/v1/recipes").json()}


def test_a_recipe_for_a_model_to_pull_waits_for_the_pull(
        launch: Callable[..., Running], tmp_path: Path, image_bytes: bytes) -> None:
    box = launch(keys=True, **_config(tmp_path))
    assert "station-good" not in _recipes(box)
    with box.client("line") as line:  # the default recipe is the waiting one: 404, named
        r = line.post("/v1/inspect", files={"image": ("a.jpg", image_bytes, "image/jpeg")})
        assert r.status_code == 404 and "station-good" in r.text, r.text
    # the pull's activation (what ModelPuller does once the package is verified)
    dest = tmp_path / "box" / "fleet-models" / "deeppcb-good" / "1"
    shutil.copytree(GOOD, dest)
    box.app.state.fleet_models._activate(
        dest, AssignedModel(name="deeppcb-good", version="1", sha256="0" * 64),
        card_digest(load_package(dest).card))
    recipes = _recipes(box)
    # the configured recipe, not the card's default one
    assert recipes["station-good"]["version"] == "7", recipes
    assert recipes["station-good"]["min_size_px"] == 12
    assert not any(r["model"] == "deeppcb-good" and n != "station-good" for n, r in recipes.items())
    with box.client("line") as line:
        r = line.post("/v1/inspect", files={"image": ("a.jpg", image_bytes, "image/jpeg")})
        assert r.status_code == 200, r.text
        assert r.json()["recipe"] == {"name": "station-good", "version": "7"}


def test_a_restarted_box_puts_the_recipe_of_a_pulled_model(
        launch: Callable[..., Running], tmp_path: Path) -> None:
    _pulled_before(tmp_path)
    box = launch(keys=True, **_config(tmp_path))
    recipes = _recipes(box)
    assert recipes["station-good"]["version"] == "7", recipes
    assert [n for n, r in recipes.items() if r["model"] == "deeppcb-good"] == ["station-good"]


def _pulled_before(tmp_path: Path) -> None:
    """The box pulled deeppcb-good before it stopped: its package and pulled.json."""
    root = tmp_path / "box" / "fleet-models"
    shutil.copytree(GOOD, root / "deeppcb-good" / "1")
    card = load_package(root / "deeppcb-good" / "1").card
    (root / "pulled.json").write_text(json.dumps({"models": {"deeppcb-good": {
        "version": "1", "sha256": "0" * 64, "graph_sha256": card.sha256,
        "card_digest": card_digest(card)}}}))


def _station(tmp_path: Path) -> dict[str, Any]:
    """A station whose first configured recipe (no default_recipe) waits for the hub's
    model, then one of a configured model, then one the pulled model cannot serve."""
    docs = [{"name": "a-wait", "version": "1", "model": "deeppcb-good"},
            {"name": "b-here", "version": "1", "model": "deeppcb"},
            {"name": "c-bad", "version": "1", "model": "deeppcb-good", "critical": ["open"]}]
    for doc in docs:
        (tmp_path / f"{doc['name']}.yaml").write_text(yaml.safe_dump(doc))
    config = _config(tmp_path)
    del config["default_recipe"]
    config["recipes"] = [str(tmp_path / f"{d['name']}.yaml") for d in docs]
    return config


def _pull(box: Running, tmp_path: Path) -> None:
    dest = tmp_path / "box" / "fleet-models" / "deeppcb-good" / "1"
    shutil.copytree(GOOD, dest)
    box.app.state.fleet_models._activate(
        dest, AssignedModel(name="deeppcb-good", version="1", sha256="0" * 64),
        card_digest(load_package(dest).card))


def test_a_waiting_recipe_keeps_its_configured_place_and_says_why_it_is_missing(
        launch: Callable[..., Running], tmp_path: Path, image_bytes: bytes) -> None:
    """Session 44 review: the first configured recipe, waiting, was not the default (the
    next one put was: a camera without recipe judged with another product's recipe, before
    the pull and after it); once put it came last (a Modbus PLC's recipe index named
    another recipe than on a box configured with the model); its 404 said "unknown
    recipe"; one the pulled model could not serve was said only in the log, and never
    tried again."""
    box = launch(keys=True, **_station(tmp_path))
    jpeg = {"image": ("a.jpg", image_bytes, "image/jpeg")}
    with box.client("line") as line:
        r = line.post("/v1/inspect", files=jpeg)  # the default: the first configured one
        assert r.status_code == 404, r.text
        assert "'a-wait' is not loaded: it waits for model deeppcb-good" in r.text, r.text
    _pull(box, tmp_path)
    with box.client("admin") as admin:
        listed = admin.get("/v1/recipes").json()
        assert [(r["name"], r["default"]) for r in listed] == [
            ("a-wait", True), ("b-here", False)], listed
        r = admin.post("/v1/inspect?recipe=c-bad", files=jpeg)
        assert r.status_code == 404 and "cannot serve it" in r.text, r.text
    assert any(e.startswith("recipe c-bad (configured) not loaded")
               for e in box.app.state.fleet_models.errors())
    # tried again at the next pull
    assert [r.name for r in box.app.state.registry.waiting_recipes()] == ["c-bad"]


def test_a_restarted_box_puts_a_waiting_recipe_in_its_configured_place(
        launch: Callable[..., Running], tmp_path: Path) -> None:
    _pulled_before(tmp_path)
    box = launch(keys=True, **_station(tmp_path))
    assert list(_recipes(box)) == ["a-wait", "b-here"]
    assert box.app.state.registry.default_recipe == "a-wait"


def test_a_waiting_name_an_api_recipe_serves_is_no_model_error(
        launch: Callable[..., Running], tmp_path: Path) -> None:
    """A recipe put over the API under a waiting configured recipe's name answers
    inspections: the box's model_errors said it was "not loaded" all the same (final
    review, session 44)."""
    box = launch(keys=True, **_station(tmp_path))
    assert any(e.startswith("recipe a-wait") for e in box.app.state.fleet_models.errors())
    with box.client("admin") as admin:
        r = admin.put("/v1/recipes/a-wait", json={"name": "a-wait", "version": "2",
                                                  "model": "deeppcb"})
        assert r.status_code == 200, r.text
    errors = box.app.state.fleet_models.errors()
    assert not any(e.startswith("recipe a-wait") for e in errors), errors
    assert any(e.startswith("recipe c-bad") for e in errors), errors  # still waiting


class _Watched:
    """The saved recipes' own lock, saying who holds it and when another thread comes to
    take it."""

    def __init__(self, lock: Any, pull: int) -> None:
        self.lock, self.pull = lock, pull
        self.owner: int | None = None
        self.tried = threading.Event()  # a thread other than the pull's came to take it

    def __enter__(self) -> None:
        if threading.get_ident() != self.pull:
            self.tried.set()
        self.lock.acquire()
        self.owner = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        self.owner = None
        self.lock.release()


@pytest.mark.parametrize("writer", ["put", "start-up"])
def test_a_pull_and_a_recipe_put_meanwhile_leave_the_put_recipe_judging(
        launch: Callable[..., Running], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        writer: str) -> None:
    """Session 45: a pull putting a waiting configured recipe took no lock of the saved
    recipes: a recipe PUT under its name (or, at start-up, the saved one loaded while the
    first pull ran) between the pull's look at the API's recipes and its put was replaced
    by the configured one, while the API listed its own as judging. The other writer runs
    in that window here; with the lock it waits for the pull."""
    box = launch(keys=True, **_station(tmp_path))
    state, registry = box.app.state, box.app.state.registry
    put = {"name": "a-wait", "version": "2", "model": "deeppcb"}
    watched = _Watched(state.saved_recipes.lock, threading.get_ident())
    monkeypatch.setattr(state.saved_recipes, "lock", watched)

    def other_writer() -> None:
        if writer == "put":
            with box.client("admin") as admin:
                assert admin.put("/v1/recipes/a-wait", json=put).status_code == 200
        else:  # the start-up's load of the saved recipes, as the first pull runs
            load_saved_recipes(box.app)

    if writer == "start-up":
        state.saved_recipes.save(Recipe.model_validate(put), actor="admin", keep_place=False)
    other = threading.Thread(target=other_writer)
    add_recipe = registry.add_recipe

    def pulls_add(recipe: Recipe) -> None:
        if recipe.name == "a-wait" and recipe.model == "deeppcb-good" \
                and other.ident is None:
            other.start()
            while not watched.tried.is_set() and other.is_alive():
                watched.tried.wait(0.01)
            if watched.owner != watched.pull:  # nothing holds it off: it goes through now
                other.join(30)
        add_recipe(recipe)

    monkeypatch.setattr(registry, "add_recipe", pulls_add)
    _pull(box, tmp_path)
    other.join(30)
    assert not other.is_alive()
    assert registry.recipe("a-wait").version == "2"  # the API's, as it lists it
    with box.client("admin") as admin:
        listed = {r["name"]: r for r in admin.get("/v1/recipes").json()}
        assert (listed["a-wait"]["version"], listed["a-wait"]["put_over_api"]) == ("2", True)
        # dropped: the configured one, now put, judges again
        assert admin.delete("/v1/recipes/a-wait").status_code == 200
    assert registry.recipe("a-wait").model == "deeppcb-good"
    assert "a-wait" not in registry.waiting


def test_an_api_recipe_dropped_over_a_waiting_name_leaves_it_waiting_and_the_default(
        launch: Callable[..., Running], tmp_path: Path, image_bytes: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    """Review, session 46: a recipe PUT under the name of the waiting configured default,
    then DELETEd before the pull, made the next recipe (another product's) the box's
    default, before the pull and after it: triggers naming no recipe judged with it. With a
    camera triggering with the default, the DELETE was refused 409 "no recipe of its own
    of that name", though the configured one waits for its model."""
    config = _station(tmp_path)
    config["cameras"] = [{"id": "sim1", "source": str(ROOT / "datasets" / "deeppcb-sample"
                                                      / "images"), "fps": 5}]
    box = launch(keys=True, **config)
    jpeg = {"image": ("a.jpg", image_bytes, "image/jpeg")}
    with box.client("admin") as admin:
        put = {"name": "a-wait", "version": "2", "model": "deeppcb"}
        assert admin.put("/v1/recipes/a-wait", json=put).status_code == 200
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lineside_inspect"):
            r = admin.delete("/v1/recipes/a-wait")
        assert r.status_code == 200, r.text
        assert r.json()["recipe"] is None
        assert r.json()["waits"].startswith("it waits for model deeppcb-good"), r.text
        # the camera triggering with it is said to lack its recipe again, as at start-up
        assert any("sim1" in m and "a-wait" in m for m in caplog.messages), caplog.messages
        # and the audit log says it waits, not that the name is gone
        audit = admin.get("/v1/audit", params={"action": "recipe_delete"}).json()["items"]
        assert audit[0]["details"] == {"recipe": "a-wait", "configured": False, "waits": True}
    with box.client("line") as line:  # the default waits again, as before the PUT
        r = line.post("/v1/inspect", files=jpeg)
        assert r.status_code == 404 and "'a-wait' is not loaded: it waits" in r.text, r.text
    _pull(box, tmp_path)
    with box.client("line") as line:
        r = line.post("/v1/inspect", files=jpeg)
        assert r.status_code == 200 and r.json()["recipe"]["name"] == "a-wait", r.text
