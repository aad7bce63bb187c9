"""A fleet box's configured recipes waiting for a model only its hub gives: put once a
pull (or the start-up's restore of pulled packages) loads it, in the configuration's
order. Apart from ``server.app`` so the box's puller (fleet/box/models.py) can call it
without importing the app that installs the box."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from lineside_inspect.errors import LinesideError
from lineside_inspect.recipes import Recipe
from lineside_inspect.server.registry import Registry

log = logging.getLogger("lineside")


def waits_for(recipe: Recipe) -> str:
    """What a recipe waiting for its model says (its inspections' 404)."""
    pins = [f"{recipe.model}" + (f" {recipe.model_version}" if recipe.model_version else "")]
    if (fused := recipe.fused()) is not None:
        pins.append(fused[0] + (f" {fused[1]}" if fused[1] else ""))
    return (f"it waits for model {' and '.join(pins)}, which this box gets from its hub "
            "(not pulled yet)")


def model_missing(registry: Registry, recipe: Recipe) -> bool:
    """Whether a model version ``recipe`` judges with (or fuses with) is not loaded."""
    if recipe.remote is not None:
        return False
    models = registry.models()
    for name, version in ((recipe.model, recipe.model_version), recipe.fused() or (None, None)):
        if name is None:
            continue
        slot = models.get(name)
        if slot is None or (version is not None and version not in slot.versions
                            and version not in slot.unloaded):
            return True
    return False


def add_waiting_recipes(app: FastAPI, model: str | None = None) -> None:
    """Put the configured recipes that waited for their model (a fleet box's pull, or the
    pulled models it restored at start-up) once it is loaded: all of them, or those of
    ``model``. One put over the API under the same name since stays in their place; one
    the pulled model cannot serve (classes, reference) is logged and left out.

    Under the saved recipes' lock, as a recipe's PUT and DELETE: a PUT between this
    seeing its name not put over the API and putting the configured recipe was replaced
    by it (the API listed its recipe, the configured one judged); a DELETE meanwhile
    dropped the configured recipe it was to restore."""
    registry: Registry = app.state.registry
    with app.state.saved_recipes.lock:  # also the start-up's and a pull's thread, one at a time
        _add_waiting(app, registry, model)


def _add_waiting(app: FastAPI, registry: Registry, model: str | None) -> None:
    for recipe in registry.waiting_recipes():
        if (model is not None and model not in (recipe.model, (recipe.fused() or ("",))[0])) \
                or model_missing(registry, recipe):
            continue
        if recipe.name in app.state.api_recipes:  # kept for a DELETE of the API's to restore
            registry.stop_waiting(recipe.name)
            app.state.configured_recipes[recipe.name] = recipe
            continue
        try:
            registry.add_recipe(recipe)
        except LinesideError as exc:
            # it keeps waiting, tried again when a pull loads its model again (another
            # version may fit it); said by its 404s and the box's model_errors on the hub
            # (it was dropped, said only in the log, until a restart)
            why = (f"its model {recipe.model} as pulled cannot serve it ({exc.message}); "
                   "tried again when a pull loads another version")
            registry.wait(recipe, why)
            log.error("recipe %s (configured) is not loaded: %s", recipe.name, exc.message)
            continue
        registry.stop_waiting(recipe.name)
        app.state.configured_recipes[recipe.name] = recipe
        log.info("recipe %s (configured): its model %s is loaded now", recipe.name, recipe.model)
    registry.order_recipes(registry.configured_order)
