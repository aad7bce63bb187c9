"""Model and recipe management (admin role): list, load, activate, roll back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from pydantic import BaseModel

from lineside_inspect.errors import ConfigError
from lineside_inspect.recipes import Recipe
from lineside_inspect.server.deps import Admin, RegistryDep

router = APIRouter(prefix="/v1", tags=["admin"])


class LoadModel(BaseModel):
    path: str
    activate: bool = True


class Activate(BaseModel):
    version: str


def _models(registry: Any) -> list[dict[str, Any]]:
    out = []
    for name, slot in registry.models().items():
        out.append({"name": name, "active": slot.active, "history": slot.history,
                    "versions": [{"version": v, "sha256": d.card.sha256, "precision":
                                  d.card.precision, "needs_reference": d.card.needs_reference,
                                  "providers": d.session.providers,
                                  "path": str(d.package.path)} for v, d in slot.versions.items()]})
    return out


@router.get("/models")
def list_models(who: Admin, registry: RegistryDep) -> list[dict[str, Any]]:
    return _models(registry)


@router.post("/models")
async def load_model(body: LoadModel, who: Admin, registry: RegistryDep,
                     request: Request) -> dict[str, Any]:
    """Load (and warm up) a package beside the serving one, then activate it atomically.
    A failed load leaves the serving version untouched and says why."""
    det = await anyio.to_thread.run_sync(
        lambda: registry.load_model(Path(body.path), activate=body.activate))
    _publish(request, registry)
    return {"name": det.card.name, "version": det.card.version, "sha256": det.card.sha256,
            "active": registry.models()[det.card.name].active}


@router.post("/models/{name}/activate")
def activate(name: str, body: Activate, who: Admin, registry: RegistryDep,
             request: Request) -> dict[str, Any]:
    registry.activate(name, body.version)
    _publish(request, registry)
    return {"name": name, "active": body.version}


@router.post("/models/{name}/rollback")
def rollback(name: str, who: Admin, registry: RegistryDep, request: Request) -> dict[str, Any]:
    version = registry.rollback(name)
    _publish(request, registry)
    return {"name": name, "active": version}


@router.get("/recipes")
def list_recipes(who: Admin, registry: RegistryDep) -> list[dict[str, Any]]:
    return [{**r.model_dump(), "default": r.name == registry.default_recipe}
            for r in registry.recipes()]


@router.put("/recipes/{name}")
def put_recipe(name: str, recipe: Recipe, who: Admin, registry: RegistryDep) -> dict[str, Any]:
    """Add or replace a recipe; switching a line's product needs no model reload."""
    if recipe.name != name:
        raise ConfigError(f"recipe name {recipe.name!r} does not match the URL's {name!r}")
    registry.add_recipe(recipe)
    return recipe.model_dump()


def _publish(request: Request, registry: Any) -> None:
    publish_state(request.app.state.metrics, registry)


def publish_state(metrics: Any, registry: Any) -> None:
    """The active version of each model, as the ``lineside_model`` info metric."""
    metrics.model_info.info({name: slot.active or "" for name, slot in registry.models().items()})
