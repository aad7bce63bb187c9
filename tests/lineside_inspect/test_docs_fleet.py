"""What a fleet operator copies from docs/fleet.md and docs/fleet/*.md exists (beside
test_docs_commands.py, which pins the `lineside` commands): every hub and box route the
pages quote, every YAML example (loaded with the settings models, so an unknown key is
an error), the defaults they show, and every `lineside_fleet_*`/`lineside_hub_*` metric.
No process, no database."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter

from lineside_inspect.config import ApiKeys, Settings
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.fleet.hub.app import create_hub_app
from lineside_inspect.fleet.hub.config import HubSettings
from lineside_inspect.recipes.schema import Recipe, RemoteModel
from lineside_inspect.server.app import create_app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "fleet.md", *sorted((ROOT / "docs" / "fleet").glob("*.md"))]
TEXT = {d: d.read_text() for d in DOCS}


def _routes(paths: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), re.sub(r"\{[^}]*\}", "{}", p)) for p, ops in paths.items() for m in ops}


def test_every_route_the_fleet_pages_quote_exists(tmp_path: Path) -> None:
    hub = create_hub_app(HubSettings(
        database_url=f"sqlite:///{tmp_path / 'hub.db'}", data_dir=str(tmp_path / "hub"),
        objects={"endpoint": "127.0.0.1:9", "access_key": "a", "secret_key": "s"}))
    box = create_app(Settings(models=[], store=False, data_dir=str(tmp_path / "box"),
                              fleet={"hub_url": "http://127.0.0.1:9"}))
    exists = _routes(hub.openapi()["paths"]) | _routes(box.openapi()["paths"])
    quoted: set[tuple[str, str]] = set()
    for text in TEXT.values():
        flat = re.sub(r"\s+", " ", text)
        for method, path in re.findall(r"`(GET|POST|PUT|DELETE) (/[^`? ]+)", flat):
            quoted.add((method, re.sub(r"\{[^}]*\}", "{}", path)))
        # the prose's `PUT /fleet/v1/...` without backticks around the method
        for method, path in re.findall(r"(GET|POST|PUT|DELETE) `?(/fleet/v1/[^`? ,)]+)", flat):
            quoted.add((method, re.sub(r"\{[^}]*\}", "{}", path)))
    fleet = {q for q in quoted if "fleet" in q[1]}
    assert len(fleet) >= 10  # the parser still finds them
    assert sorted(q for q in quoted if q not in exists) == []


def _yaml_blocks(marker: str) -> list[tuple[str, str]]:
    return [(d.name, b) for d, t in TEXT.items()
            for b in re.findall(r"```yaml\n(.*?)```", t, flags=re.S) if marker in b]


def _defaults(model: type[BaseModel], doc: dict[str, Any], keys: set[str]) -> list[str]:
    return [f"{k}: {doc[k]!r}, default {model.model_fields[k].default!r}"
            for k in sorted(keys & set(doc)) if doc[k] != model.model_fields[k].default]


def test_the_hub_yaml_loads_and_its_commented_defaults_are_the_defaults() -> None:
    (where, block), = _yaml_blocks("# hub.yaml")
    doc = yaml.safe_load(block)
    commented: dict[str, Any] = {}
    for key, value, note in re.findall(r"^# (\w+): (\S+)\s*(#.*)?$", block, flags=re.M):
        commented[key] = yaml.safe_load(value)
        if "default" not in note:  # shown as the default: it is one
            assert HubSettings.model_fields[key].default == commented[key], (where, key)
    assert {"max_body_bytes", "max_forward_bodies", "retention_days"} <= set(commented)
    HubSettings.model_validate({**doc, **commented})


def test_every_box_fleet_section_loads_with_the_defaults_it_shows() -> None:
    tuning = {"forward_interval_s", "forward_batch", "timeout_s", "pull_interval_s",
              "status_interval_s", "models_dir", "max_package_bytes"}
    blocks = _yaml_blocks("\nfleet:") + _yaml_blocks("box_id:")
    assert len(blocks) >= 4
    wrong: list[str] = []
    for where, block in blocks:
        doc = yaml.safe_load(block)
        wrong += [f"{where}: {k}" for k in doc if k not in Settings.model_fields]
        section = FleetSettings.model_validate(doc["fleet"])
        assert section.hub_url
        wrong += [f"{where}: fleet.{w}" for w in _defaults(FleetSettings, doc["fleet"], tuning)]
    # every `fleet.KEY` the pages name in prose
    named = {k for t in TEXT.values() for k in re.findall(r"`fleet\.(\w+)`", t)}
    wrong += [f"fleet.{k}" for k in sorted(named - set(FleetSettings.model_fields))]
    assert wrong == []


def test_the_pinned_box_key_and_the_remote_recipe_load() -> None:
    (_, keys), = [(w, b) for w, b in _yaml_blocks("api_keys:") if "# hub.yaml" not in b]
    pinned = TypeAdapter(ApiKeys).validate_python(yaml.safe_load(keys)["api_keys"])
    assert pinned[0].site == "plant-a" and pinned[0].line == "press-1"
    (_, block), = _yaml_blocks("remote:")
    recipe = Recipe.model_validate(yaml.safe_load(block))
    assert recipe.remote is not None
    # "(default 5, at most 60)"
    default, most = map(float, re.search(r"default (\d+), at most (\d+)", block).groups())  # type: ignore[union-attr]
    assert RemoteModel.model_fields["timeout_s"].default == default
    assert RemoteModel.model_validate({**recipe.remote.model_dump(), "timeout_s": most})
    assert not _valid(RemoteModel, {**recipe.remote.model_dump(), "timeout_s": most + 1})


def _valid(model: type[BaseModel], doc: dict[str, Any]) -> bool:
    try:
        model.model_validate(doc)
    except ValueError:
        return False
    return True


def test_every_fleet_metric_the_docs_name_is_exposed() -> None:
    """As prometheus_client exposes them: a Counter ``X`` as ``X_total``."""
    exposed: set[str] = set()
    for src in (ROOT / "inspect" / "lineside_inspect").rglob("*.py"):
        for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"(lineside_\w+)\"",
                                     src.read_text()):
            exposed.add(name + "_total" if kind == "Counter" else name)
    docs = [*DOCS, ROOT / "README.md"]
    named = {n for d in docs for n in re.findall(r"`(lineside_(?:fleet|hub)_\w+)", d.read_text())}
    assert len(named) >= 15
    assert sorted(named - exposed) == []
