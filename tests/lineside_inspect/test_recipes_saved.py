"""Recipes put over the API are kept over restarts: ``PUT /v1/recipes/NAME`` answered 200
and a restart went back to the configuration's recipe without anyone asking. Each put
recipe now lives in ``<data_dir>/recipes/NAME.json`` and replaces the configuration's of
its name until ``DELETE /v1/recipes/NAME``. Real servers, restarted on one data folder."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lineside_inspect.config import CameraConfig

from .conftest import MODEL, ROOT, SAMPLE, Running, keyed, start_server

RECIPES = ROOT / "configs" / "recipes"
REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"
JPEG = {"content-type": "image/jpeg"}


@contextlib.contextmanager
def _served(data_dir: Path, **kw: Any) -> Iterator[Running]:
    """A server on ``data_dir`` for the block (a restart is the next block); the
    configuration's recipe is deeppcb.yaml unless ``recipes`` says otherwise."""
    kw.setdefault("recipes", [str(RECIPES / "deeppcb.yaml")])
    srv, stop = start_server(keyed(data_dir=str(data_dir), **kw))
    try:
        yield srv
    finally:
        stop()


def _recipes(srv: Running) -> dict[str, dict[str, Any]]:
    with srv.client("admin") as c:
        r = c.get("/v1/recipes")
        assert r.status_code == 200, r.text
        return {x["name"]: x for x in r.json()}


def _image() -> bytes:
    return next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()


def test_a_put_recipe_outlives_a_restart_until_it_is_deleted(tmp_path: Path) -> None:
    changed = {"name": "deeppcb", "version": "7", "model": "deeppcb", "min_size_px": 20,
               "critical": ["open"]}
    with _served(tmp_path) as srv:
        assert _recipes(srv)["deeppcb"]["put_over_api"] is False
        with srv.client("admin") as c:
            assert c.put("/v1/recipes/deeppcb", json=changed).status_code == 200
            assert c.put("/v1/recipes/spare", json={**changed, "name": "spare"}).status_code == 200
        listed = _recipes(srv)
        assert listed["deeppcb"]["version"] == "7" and listed["deeppcb"]["put_over_api"] is True
        kept = json.loads((tmp_path / "recipes" / "deeppcb.json").read_text())
        assert kept["put_by"] == "admin" and kept["recipe"]["min_size_px"] == 20

    with _served(tmp_path) as srv:  # the same data folder: both put recipes are back
        listed = _recipes(srv)
        assert (listed["deeppcb"]["version"], listed["deeppcb"]["min_size_px"]) == ("7", 20)
        assert listed["deeppcb"]["put_over_api"] and listed["spare"]["put_over_api"]
        assert listed["deeppcb"]["default"]  # still the configuration's default name
        with srv.client("line") as c:
            r = c.post("/v1/inspect", content=_image(), headers=JPEG)
            assert r.status_code == 200 and r.json()["recipe"] == {"name": "deeppcb", "version": "7"}
        with srv.client("admin") as c:
            dropped = c.delete("/v1/recipes/deeppcb")
            assert dropped.status_code == 200, dropped.text
            assert dropped.json()["recipe"]["version"] == "1"  # the configuration's again
            gone = c.delete("/v1/recipes/spare")
            assert gone.status_code == 200 and gone.json()["recipe"] is None
            again = c.delete("/v1/recipes/deeppcb")
            assert again.status_code == 404 and "was put over the API" in again.text
            assert c.delete("/v1/recipes/..").status_code == 404
            audit = c.get("/v1/audit", params={"action": "recipe_delete"}).json()["items"]
            assert [(a["actor"], a["details"]) for a in audit] == [
                ("admin", {"recipe": "spare", "configured": False}),
                ("admin", {"recipe": "deeppcb", "configured": True})]
        with srv.client("reviewer") as c:
            assert c.delete("/v1/recipes/deeppcb").status_code == 403
        listed = _recipes(srv)
        assert listed["deeppcb"]["version"] == "1" and "spare" not in listed
        assert not listed["deeppcb"]["put_over_api"]

    with _served(tmp_path) as srv:  # dropped for good
        listed = _recipes(srv)
        assert listed["deeppcb"]["version"] == "1" and "spare" not in listed


def test_a_saved_recipe_that_no_longer_fits_is_logged_and_left_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _served(tmp_path, models=[str(MODEL), str(REF_MODEL)]) as srv, srv.client("admin") as c:
        body = {"name": "golden", "version": "1", "model": "deeppcb-ref"}
        assert c.put("/v1/recipes/golden", json=body).status_code == 200
    folder = tmp_path / "recipes"
    (folder / "broken.json").write_text("{not json")
    (folder / "newer.json").write_text(json.dumps({"format_version": 99, "recipe": {}}))
    (folder / "renamed.json").write_text(json.dumps(
        {"format_version": 1, "recipe": {"name": "other", "version": "1", "model": "deeppcb"}}))
    caplog.set_level(logging.WARNING, logger="lineside")
    with _served(tmp_path) as srv:  # deeppcb-ref is no longer loaded: the server starts
        assert set(_recipes(srv)) == {"deeppcb"}
        said = caplog.text
        assert "recipe golden put over the API (by admin" in said and "is not loaded" in said
        assert "unknown model 'deeppcb-ref'" in said
        for name in ("broken", "newer", "renamed"):
            assert f"recipe {name} put over the API is not loaded" in said, said
        with srv.client("admin") as c:  # a saved recipe left out can still be dropped
            assert c.delete("/v1/recipes/golden").status_code == 200
        assert not (folder / "golden.json").exists() and (folder / "broken.json").exists()


def test_a_recipe_a_camera_needs_is_not_dropped_without_one_to_take_its_place(
        tmp_path: Path) -> None:
    cams = [CameraConfig(id="sim1", source=str(SAMPLE / "images"), recipe="put-only", fps=5)]
    with _served(tmp_path, cameras=cams) as srv:
        with srv.client("admin") as c:
            body = {"name": "put-only", "version": "1", "model": "deeppcb"}
            assert c.put("/v1/recipes/put-only", json=body).status_code == 200
            r = c.delete("/v1/recipes/put-only")
            assert r.status_code == 409 and r.json()["error"]["code"] == "recipe_breaks_camera"
            assert "camera(s) sim1 trigger with" in r.json()["error"]["message"]
        with srv.client("line") as c:
            r = c.post("/v1/cameras/sim1/trigger")
            assert r.status_code == 200 and r.json()["recipe"]["name"] == "put-only", r.text


def test_put_recipes_come_back_in_the_order_their_names_came_in(tmp_path: Path) -> None:
    """A Modbus PLC picks a recipe by its index in load order: a restart must not
    reorder them (a put over a name keeps the name's place, as while the server ran)."""
    with _served(tmp_path) as srv:
        with srv.client("admin") as c:
            for name, version in (("zeta", "1"), ("alpha", "1"), ("zeta", "2")):
                body = {"name": name, "version": version, "model": "deeppcb"}
                assert c.put(f"/v1/recipes/{name}", json=body).status_code == 200
        before = list(_recipes(srv))
        assert before == ["deeppcb", "zeta", "alpha"]
    with _served(tmp_path) as srv:
        listed = _recipes(srv)
        assert list(listed) == before and listed["zeta"]["version"] == "2"


def test_a_left_out_recipe_put_again_keeps_the_place_it_has_while_running(tmp_path: Path) -> None:
    """A saved recipe left out at start (its model gone) and put again runs last; it came
    back at its old place after the next restart, swapping Modbus indexes (review)."""
    with _served(tmp_path, models=[str(MODEL), str(REF_MODEL)]) as srv, srv.client("admin") as c:
        for body in ({"name": "golden", "version": "1", "model": "deeppcb-ref"},
                     {"name": "later", "version": "1", "model": "deeppcb"}):
            assert c.put(f"/v1/recipes/{body['name']}", json=body).status_code == 200
    with _served(tmp_path) as srv:  # deeppcb-ref not loaded: golden is left out
        assert list(_recipes(srv)) == ["deeppcb", "later"]
        with srv.client("admin") as c:
            body = {"name": "golden", "version": "2", "model": "deeppcb"}
            assert c.put("/v1/recipes/golden", json=body).status_code == 200
        running = list(_recipes(srv))
        assert running == ["deeppcb", "later", "golden"]
    with _served(tmp_path) as srv:
        assert list(_recipes(srv)) == running


def test_a_recipe_put_for_a_model_a_fleet_box_pulled_outlives_a_restart(tmp_path: Path) -> None:
    """Saved recipes loaded before the fleet puller restored its models: a recipe for a
    pulled model was left out at every restart, and one over the card's recipe listed as
    put while the card's judged (review)."""
    import shutil

    from lineside_inspect.package import load_package

    pulled = tmp_path / "fleet-models"  # what a box's earlier pulls left in its data folder
    shutil.copytree(REF_MODEL, pulled / "deeppcb-ref" / "1")
    card = load_package(pulled / "deeppcb-ref" / "1").card
    (pulled / "pulled.json").write_text(json.dumps({"revision": 1, "models": {
        "deeppcb-ref": {"version": "1", "sha256": "0" * 64, "graph_sha256": card.sha256}}}))
    fleet = {"hub_url": "http://127.0.0.1:9", "token": "x", "site": "s1", "line": "l1",
             "pull_interval_s": 3600, "timeout_s": 0.5}
    with _served(tmp_path, recipes=[], fleet=fleet) as srv:  # no recipes: the cards'
        assert "deeppcb-ref-default" in _recipes(srv)
        with srv.client("admin") as c:
            for body in ({"name": "golden-line", "version": "3", "model": "deeppcb-ref"},
                         {"name": "deeppcb-ref-default", "version": "7", "model": "deeppcb-ref"}):
                assert c.put(f"/v1/recipes/{body['name']}", json=body).status_code == 200
    with _served(tmp_path, recipes=[], fleet=fleet) as srv:
        listed = _recipes(srv)
        assert (listed["golden-line"]["version"], listed["golden-line"]["put_over_api"]) == ("3", True)
        card_recipe = listed["deeppcb-ref-default"]
        assert (card_recipe["version"], card_recipe["put_over_api"]) == ("7", True)
        with srv.client("admin") as c:  # dropped: the card's recipe judges again
            r = c.delete("/v1/recipes/deeppcb-ref-default")
            assert r.status_code == 200 and r.json()["recipe"]["version"] == "1", r.text
        assert _recipes(srv)["deeppcb-ref-default"]["put_over_api"] is False


def test_a_refused_put_leaves_the_saved_file_as_it_was(tmp_path: Path) -> None:
    """A PUT writes its file first (what the audit then records is what a restart brings
    back) and puts it back when the recipe is refused."""
    folder = tmp_path / "recipes"
    with _served(tmp_path) as srv, srv.client("admin") as c:
        body = {"name": "spare", "version": "1", "model": "deeppcb"}
        assert c.put("/v1/recipes/spare", json=body).status_code == 200
        kept = (folder / "spare.json").read_bytes()
        r = c.put("/v1/recipes/spare", json={**body, "version": "2", "critical": ["nope"]})
        assert r.status_code == 422, r.text  # a class the model lacks
        assert (folder / "spare.json").read_bytes() == kept
        r = c.put("/v1/recipes/fresh", json={**body, "name": "fresh", "model": "gone"})
        assert r.status_code == 404, r.text
        assert not (folder / "fresh.json").exists()
    with _served(tmp_path) as srv:
        listed = _recipes(srv)
        assert listed["spare"]["version"] == "1" and "fresh" not in listed


def _audited_puts(c: Any) -> list[str]:
    r = c.get("/v1/audit", params={"action": "recipe_put"})
    assert r.status_code == 200, r.text
    return [a["details"]["recipe"] for a in r.json()["items"]]


def test_a_recipe_version_means_one_set_of_rules_for_good(tmp_path: Path) -> None:
    """A stored verdict names its recipe's version: ``PUT /v1/recipes/NAME`` with other
    rules under the version judging now (or a lower one, or one that judged before with
    other rules, after a DELETE and a restart too) took it, and "deeppcb version 1" meant
    two rule sets. Now 409 recipe_version_not_raised naming the version judging now,
    nothing changed; the recipe judging now put again as it is changes nothing (session 55)."""
    configured = {"name": "deeppcb", "version": "1", "model": "deeppcb", "min_size_px": 8,
                  "max_count": {}, "critical": ["open", "short"]}  # configs/recipes/deeppcb.yaml
    v3 = {**configured, "version": "3", "min_size_px": 20}
    folder = tmp_path / "recipes"
    with _served(tmp_path) as srv:
        with srv.client("admin") as c:
            r = c.put("/v1/recipes/deeppcb", json={**configured, "min_size_px": 20})
            assert r.status_code == 409, r.text
            assert r.json()["error"] == {"code": "recipe_version_not_raised", "message": (
                "recipe deeppcb version 1 is the one judging now, with other rules: a changed "
                "recipe needs a version above 1 (stored verdicts name the version that judged "
                "them); nothing was changed")}
            same = c.put("/v1/recipes/deeppcb", json=configured)  # as it is: nothing changes
            assert same.status_code == 200 and same.json()["min_size_px"] == 8, same.text
            assert not (folder / "deeppcb.json").exists() and _audited_puts(c) == []
            assert c.put("/v1/recipes/deeppcb", json=v3).status_code == 200
            kept = (folder / "deeppcb.json").read_bytes()
            for body, said in (({**v3, "version": "2", "min_size_px": 30},
                                "version 2 is below version 3, the one judging now"),
                               ({**v3, "version": "03", "critical": ["open"]},
                                "version 3 is the one judging now, with other rules")):
                r = c.put("/v1/recipes/deeppcb", json=body)
                assert r.status_code == 409, r.text
                assert r.json()["error"]["code"] == "recipe_version_not_raised"
                assert said in r.json()["error"]["message"], r.text
            assert c.put("/v1/recipes/deeppcb", json=v3).status_code == 200  # again: no-op
            assert (folder / "deeppcb.json").read_bytes() == kept
            assert _audited_puts(c) == ["deeppcb"]
        listed = _recipes(srv)["deeppcb"]
        assert (listed["version"], listed["min_size_px"], listed["critical"]) == (
            "3", 20, ["open", "short"])
        with srv.client("line") as c:
            r = c.post("/v1/inspect", content=_image(), headers=JPEG)
            assert r.status_code == 200 and r.json()["recipe"] == {"name": "deeppcb", "version": "3"}
            judged = r.json()["id"]
        with srv.client("admin") as c:  # the configuration's version 1 judges again
            assert c.delete("/v1/recipes/deeppcb").json()["recipe"]["version"] == "1"

    with _served(tmp_path) as srv:  # a restart forgets no version that judged
        with srv.client("admin") as c:
            r = c.put("/v1/recipes/deeppcb", json={**v3, "min_size_px": 40})
            assert r.status_code == 409 and r.json()["error"]["message"].startswith(
                "recipe deeppcb version 3 judged here before with other rules (version 1 "
                "judges now)"), r.text
            assert not (folder / "deeppcb.json").exists()
            put_back = c.put("/v1/recipes/deeppcb", json=v3)  # its rules as they were: taken
            assert put_back.status_code == 200, put_back.text
            assert c.put("/v1/recipes/deeppcb", json={**v3, "version": "4",
                                                      "min_size_px": 40}).status_code == 200
        with srv.client("reviewer") as c:  # the verdict stored under version 3 still says so
            r = c.get(f"/v1/inspections/{judged}")
            assert r.status_code == 200 and r.json()["recipe"] == {"name": "deeppcb", "version": "3"}


def test_a_hand_edited_versions_file_neither_stops_a_start_nor_fails_a_put(tmp_path: Path) -> None:
    """``<data_dir>/recipes/.versions/NAME.json`` edited by hand (review, session 55): a
    version of 5,000 digits went through ``int`` in ``version_key``, past Python's limit of
    4,300 digits: a ValueError traceback at every start and a 500 on every put of the
    recipe; a pipe put in its place was waited on for ever at start. Such entries (and a
    digest that is no digest) are left out, logged; the file's real versions still hold."""
    from lineside_inspect.recipes.schema import Recipe, rules_digest

    configured = {"name": "deeppcb", "version": "1", "model": "deeppcb", "min_size_px": 8,
                  "max_count": {}, "critical": ["open", "short"]}  # configs/recipes/deeppcb.yaml
    kept = tmp_path / "recipes" / ".versions" / "deeppcb.json"
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps({"format_version": 1, "recipe": "deeppcb", "versions": {
        "7" * 5000: "0" * 64, "8" * 65: "0" * 64, "2": {"nested": [1]}, "5": 12,
        "1": rules_digest(Recipe.model_validate(configured)), "9": "0" * 64}}))
    with _served(tmp_path) as srv, srv.client("admin") as c:
        r = c.put("/v1/recipes/deeppcb", json={**configured, "version": "9"})
        assert r.status_code == 409, r.text  # (a real entry: version 9 judged with other rules)
        assert r.json()["error"]["message"].startswith(
            "recipe deeppcb version 9 judged here before with other rules"), r.text
        r = c.put("/v1/recipes/deeppcb", json={**configured, "version": "2", "min_size_px": 20})
        assert r.status_code == 200, r.text
    doc = json.loads(kept.read_text())["versions"]
    assert sorted(doc) == ["1", "2", "9"], sorted(map(len, doc))  # (rewritten without them)

    kept.unlink()
    os.mkfifo(kept)  # nobody writes to it
    with _served(tmp_path) as srv:
        assert _recipes(srv)["deeppcb"]["version"] == "2"
    assert kept.is_file() and "1" in json.loads(kept.read_text())["versions"]
