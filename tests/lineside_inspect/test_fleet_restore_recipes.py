"""A fleet box restarted on a pulled version whose configured recipe was replaced over
the API (pinned to the version it was written for, as the refusal of that version says
to do): the box comes back on the pulled version, the saved recipe judging."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from lineside_inspect.package import card_digest, load_package

from .conftest import Running, keyed, start_server
from .test_fleet_rollout_boxes import renamed


def test_a_restart_keeps_the_pulled_version_a_saved_recipe_made_room_for(
        launch: Callable[..., Running], tmp_path: Path) -> None:
    """Saved recipes are put after the start-up hooks (a box restores its pulled
    models in one): the restored version was checked against the configured recipe the
    saved one replaces, refused, and the box judged with version 1 from then on (the next
    pull took the pulled version for one left on the box)."""
    data = tmp_path / "box"
    root = data / "fleet-models"
    pkg = renamed(tmp_path, "2r", "open", "opening")
    dest = root / "deeppcb" / "2r"
    dest.parent.mkdir(parents=True)
    pkg.rename(dest)
    card = load_package(dest).card
    (root / "pulled.json").write_text(json.dumps({"models": {"deeppcb": {
        "version": "2r", "sha256": "0" * 64, "graph_sha256": card.sha256,
        "card_digest": card_digest(card)}}}))
    recipe = tmp_path / "line1.yaml"
    recipe.write_text(yaml.safe_dump({"name": "line1", "model": "deeppcb",
                                      "min_score": {"open": 0.05}}))
    config = {"data_dir": str(data), "recipes": [str(recipe)], "store_pass_rate": 1.0,
              "fleet": {"hub_url": "http://127.0.0.1:19187", "token": "t", "line": "L1",
                        "pull_interval_s": 3600, "timeout_s": 1}}
    first, stop = start_server(keyed(**config))
    try:
        with first.client("admin") as admin:
            # the configured recipe follows the active version: 2r is refused at first ...
            assert admin.get("/v1/models").json()[0]["active"] == "1"
            # ... until the recipe is pinned to the version it was written for
            r = admin.put("/v1/recipes/line1", json={"name": "line1", "model": "deeppcb",
                                                      "model_version": "1",
                                                      "min_score": {"open": 0.05}})
            assert r.status_code == 200, r.text
            r = admin.post("/v1/models/deeppcb/activate", json={"version": "2r"})
            assert r.status_code == 200, r.text
    finally:
        stop()
    second = launch(**config)
    with second.client("admin") as admin:
        assert admin.get("/v1/models").json()[0]["active"] == "2r"
        line1 = [x for x in admin.get("/v1/recipes").json() if x["name"] == "line1"]
        assert line1[0]["model_version"] == "1", line1
