"""Model and recipe management (admin role; a recipe's regions: a reviewer's): list,
load, activate, roll back, unload."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from lineside_inspect.errors import (
    ActiveChanged,
    ConfigError,
    GateRefused,
    NotFoundError,
    PackageError,
    RecipeBreaksCamera,
    RecipeNameTaken,
    RecipesCannotFollow,
    RecipeVersionNotRaised,
    echo,
)
from lineside_inspect.names import Name, Text
from lineside_inspect.package import confine
from lineside_inspect.recipes import Recipe
from lineside_inspect.recipes.saved import SavedRecipes, judged_otherwise
from lineside_inspect.recipes.schema import RecipeRegions, rules_digest, version_key
from lineside_inspect.server.deps import Admin, RegistryDep, Reviewer, RoleFirstRoute, SettingsDep
from lineside_inspect.server.responses import (
    ActiveVersion,
    ListedRecipe,
    LoadedModel,
    LoadedVersion,
    ModelLoaded,
    RecipeDropped,
    UnloadedVersion,
    VersionUnloaded,
    errors,
)

log = logging.getLogger("lineside")

router = APIRouter(route_class=RoleFirstRoute, prefix="/v1", tags=["admin"])


class LoadModel(BaseModel):
    path: str = Field(..., min_length=1, max_length=4096, description=(
        "the package folder, inside one of the server's model_roots (relative paths: to the "
        "server's working folder)"))
    # strict: JSON true or false only ("yes" or 1 activated)
    activate: bool = Field(True, strict=True)
    force: bool = Field(False, strict=True, description=(
        "activate even though the package failed its gate (needs a reason; recorded)"))
    reason: Text = Field("", max_length=2000, description="why (recorded in the audit log)")


class Activate(BaseModel):
    version: Name
    force: bool = Field(False, strict=True, description=(
        "activate a version whose gate failed (POST /v1/models/{name}/gate): admins only, "
        "with a reason; recorded in the audit log"))
    reason: Text = Field("", max_length=2000, description="why (recorded in the audit log)")


@router.get("/models", responses=errors(401, 403))
def list_models(who: Admin, registry: RegistryDep) -> list[LoadedModel]:
    """Every loaded model with its versions (admins only: it names the packages' folders)."""
    return [LoadedModel(
        name=name, active=slot.active, history=slot.history,
        versions=[LoadedVersion(version=v, sha256=d.card.sha256, precision=d.card.precision,
                                needs_reference=d.card.needs_reference, kind=d.card.kind,
                                providers=d.session.providers, path=str(d.package.path))
                  for v, d in slot.versions.items()],
        unloaded=[UnloadedVersion(version=v, sha256=p.card.sha256, path=str(p.path))
                  for v, p in slot.unloaded.items()])
        for name, slot in registry.models().items()]


@router.post("/models", responses=errors(401, 403, 408, 409, 413, 422))
async def load_model(body: LoadModel, who: Admin, registry: RegistryDep, settings: SettingsDep,
                     request: Request) -> ModelLoaded:
    """Load (and warm up) a package beside the serving one, then activate it atomically.
    A failed load leaves the serving version untouched and says why. Only packages inside
    the configured ``model_roots`` load: an admin key must not turn into a way to read or
    run any file the server can reach."""
    path = confine(body.path, settings.model_root_paths())
    lifecycle = getattr(request.app.state, "lifecycle", None)
    try:  # with the lifecycle, activation is its decision (the gate), made just below
        loaded = await anyio.to_thread.run_sync(
            lambda: registry.load(path, activate=body.activate and lifecycle is None))
    except PackageError as exc:  # name the package as the caller did, not the resolved path
        raise PackageError(exc.message.replace(str(path), body.path)) from None
    det = loaded.detector
    name, version = det.card.name, det.card.version
    # kept across a restart (session 47): loaded again at start-up, from model_roots
    await anyio.to_thread.run_sync(lambda: _keep(request, "loaded", name, version))
    if lifecycle is not None and loaded.first:
        # the first version of a new model judges at once (there is nothing to gate it
        # against, and its recipes need it): recorded like any activation
        await anyio.to_thread.run_sync(lambda: lifecycle.first_version(det, actor=who.name))
        await anyio.to_thread.run_sync(lambda: _keep(request, "activated", name, version))
    elif lifecycle is not None and body.activate:
        try:
            await anyio.to_thread.run_sync(lambda: lifecycle.activate(
                name, version, actor=who.name, force=body.force, reason=body.reason))
        except (GateRefused, RecipesCannotFollow) as exc:
            # the same kind of error, said to be loaded (it is, beside the active version)
            raise type(exc)(f"loaded {name} {version} but did not activate "
                            f"it: {exc.message}") from None
        await anyio.to_thread.run_sync(lambda: _keep(request, "activated", name, version))
    _publish(request, registry)
    return ModelLoaded(name=det.card.name, version=det.card.version, sha256=det.card.sha256,
                       active=registry.models()[det.card.name].active)


@router.post("/models/{name}/activate", responses=errors(401, 403, 404, 408, 409, 413, 422))
def activate(name: str, body: Activate, who: Admin, registry: RegistryDep,
             request: Request) -> ActiveVersion:
    """Make a loaded version active (one unloaded from memory is loaded again from its
    package first: 422 naming why when it was removed or changed on disk). Refused (409
    gate_failed) for a version the admission rule refuses (docs/lifecycle.md: a failed gate
    report not cleared since; with require_gate, no pass against the active version),
    unless ``force`` with a ``reason``;
    every activation is in the audit log (``GET /v1/audit``), a forced one as force_activate."""
    lifecycle = getattr(request.app.state, "lifecycle", None)
    if lifecycle is not None:
        lifecycle.activate(name, body.version, actor=who.name, force=body.force, reason=body.reason)
    else:
        registry.activate(name, body.version)
    _keep(request, "activated", name, body.version)
    _publish(request, registry)
    return ActiveVersion(name=name, active=body.version)


@router.post("/models/{name}/rollback", responses=errors(401, 403, 404, 408, 409, 413, 422))
def rollback(name: str, who: Admin, registry: RegistryDep, request: Request,
             expect: Annotated[Name | None, Query(alias="from", description=(
                 "the version you see active: refused (409 active_changed) if another is "
                 "active now, so two admins rolling back at once do not go back twice"))] = None,
             ) -> ActiveVersion:
    """Make the previously active version active again (422 when there is none; 409
    gate_failed when it may not judge parts: a failed gate, or an automatic rollback since
    its last passing gate)."""
    lifecycle = getattr(request.app.state, "lifecycle", None)
    if lifecycle is not None:
        version = lifecycle.rollback(name, actor=who.name, expect=expect)
    else:
        active = registry.models().get(name)
        if expect is not None and active is not None and active.active != expect:
            raise ActiveChanged(f"{name} {expect} is not the active version now "
                                f"({active.active}): nothing rolled back; look again")
        version = registry.rollback(name)
    _keep(request, "activated", name, version)
    _publish(request, registry)
    return ActiveVersion(name=name, active=version)


@router.delete("/models/{name}/versions/{version}",
               responses=errors(401, 403, 404, 408, 409, 413, 422))
def unload_version(name: str, version: str, who: Admin, registry: RegistryDep, request: Request,
           force: Annotated[bool, Query(description=(
               "unload the version a rollback goes back to (the rollback then loads it "
               "again from its package); needs a reason"))] = False,
           reason: Annotated[Text, Query(max_length=2000, description=(
               "why (recorded in the audit log)"))] = "") -> VersionUnloaded:
    """Take a version that no longer judges out of memory (its onnxruntime sessions are
    freed once the inspections that took it finish). Nothing stored goes: its package,
    gate reports and history stay, and whatever chooses it again (an activation, a
    recipe pinning it, a gate, shadow run, promotion or rollback) loads it again. 409
    version_in_use for the active version, one a recipe pins or fuses with, one a shadow
    run compares or a rollout watch may roll back to, and (without ``force``) the one a
    rollback goes back to; 404 for a version not loaded."""
    if force and not reason.strip():
        raise ConfigError("force needs a reason: it is recorded in the audit log")
    lifecycle = getattr(request.app.state, "lifecycle", None)
    if lifecycle is not None:
        lifecycle.unload(name, version, actor=who.name, force=force, reason=reason)
    else:
        registry.unload(name, version, force=force)
    _keep(request, "unloaded", name, version)
    _publish(request, registry)
    return VersionUnloaded(name=name, version=version,
                           loaded=list(registry.models()[name].versions))


@router.get("/recipes", responses=errors(401, 403))
def list_recipes(who: Admin, registry: RegistryDep, request: Request) -> list[ListedRecipe]:
    put: set[str] = request.app.state.api_recipes
    return [ListedRecipe(**r.model_dump(), default=r.name == registry.default_recipe,
                         put_over_api=r.name in put)
            for r in registry.recipes()]


@router.get("/recipes/{name}", responses=errors(401, 403, 404, 422))
def get_recipe(name: Name, who: Admin, registry: RegistryDep) -> Recipe:
    """The recipe judging under ``name``, as ``PUT /v1/recipes/{name}`` takes and answers
    it: put back unchanged it changes nothing, and a script reads it, changes it and puts
    it with a raised version. The recipe alone, not the list's ``default`` and
    ``put_over_api`` (``GET /v1/recipes``): a recipe refuses keys it does not know, and
    the answer would no longer put back. Admins only, as the list: a configured recipe
    names its remote endpoint's settings. 404 naming the recipe when none of that name
    judges (one a fleet box's configuration holds that waits for its model says why)."""
    return registry.recipe(name)


@router.get("/recipes/{name}/regions", responses=errors(401, 403, 404, 422))
def recipe_regions(name: Name, who: Reviewer, registry: RegistryDep,
                   request: Request) -> RecipeRegions:
    """Where each version of recipe ``name`` known here looks (its ``roi`` and
    ``ignore``): the one judging now (``version``, null when none of the name does) and
    those that judged before, kept beside their rules' digests (recipes/saved.py), in one
    answer: for a reviewer's ``lineside data pull``, which paints out what a recipe never
    judged in the frames it pulls (a detection there was never counted nor shown for
    review). Reviewers, not admins only: a pull's key is a reviewer's, and these regions
    are drawn on the frames a reviewer sees anyway. 404 when no version of the name is
    known (a version kept by an earlier release has no regions kept: left out)."""
    saved: SavedRecipes = request.app.state.saved_recipes
    versions = saved.regions(name)
    try:
        now: Recipe | None = registry.recipe(name)
    except NotFoundError:
        if not versions:
            raise
        now = None
    if now is not None:  # (the registry's word for the version judging: the same regions)
        versions[now.version] = now.regions
    return RecipeRegions(name=name, version=None if now is None else now.version,
                         versions=versions)


@router.put("/recipes/{name}", responses=errors(401, 403, 404, 408, 409, 413, 422))
def put_recipe(name: str, recipe: Recipe, who: Admin, registry: RegistryDep,
               request: Request) -> Recipe:
    """Add or replace a recipe; switching a line's product needs no model reload. It is
    kept in the data folder and replaces the configuration's recipe of its name over
    restarts, until ``DELETE /v1/recipes/NAME``. 404 when its model (or pinned version)
    was never loaded (a version unloaded from memory is loaded again from its package:
    422 naming why when that fails), 422 when it names classes the model lacks,
    409 gate_failed when it pins a version the lifecycle would not activate, 409
    recipe_breaks_camera when a configured camera triggers with it and the model's need for
    a golden image contradicts that camera's config. The recipe judging now under its
    name, put again as it is (version and rules), changes nothing (200, nothing written or
    audited); other rules need a version above that one's, and one that never judged here
    with other rules: 409 recipe_version_not_raised naming the version judging now (stored
    verdicts name the version that judged them)."""
    if recipe.name != name:
        raise ConfigError(f"recipe name {recipe.name!r} does not match the URL's {name!r}")
    if recipe.remote is not None:
        # an endpoint URL, its token's variable and a card path are the box's own
        # settings: over the API they would let a key make the box call any address
        raise ConfigError(f"recipe {recipe.name}: a remote inference endpoint is set in a "
                          "recipe file of the server's config, not over the API")
    state = request.app.state
    saved: SavedRecipes = state.saved_recipes
    # a pinned version unloaded from memory is loaded again first (and held): the cameras'
    # check below passed over it as not loaded, and a reference model then went to a
    # camera that names no golden image
    with saved.lock, registry.loaded(recipe.model, recipe.model_version):
        # a new name only: one held already (a pair put before session 54) is put again
        held = [r.name for r in registry.recipes()] + list(registry.waiting)
        if name not in held and (clash := [n for n in held if n.lower() == name.lower()]):
            raise RecipeNameTaken(f"recipe {name}: the server holds recipe {clash[0]}, a name "
                                  "that differs only in case: a PLC, a page or a person "
                                  f"choosing by name would take one for the other; put it as "
                                  f"{clash[0]} to change that one, or choose another name")
        try:
            before: Recipe | None = registry.recipe(name)
        except NotFoundError:
            before = None
        if before is not None and before.model_dump() == recipe.model_dump():
            return before  # the recipe judging now, put again: nothing changes (no write, no audit)
        _check_version(recipe, before, saved.judged(name))
        state.service.check_recipe_for_cameras(recipe)
        # on disk first: what the audit log then records is what a restart brings back
        old = saved.raw(name)
        saved.save(recipe, actor=who.name, keep_place=before is not None)
        try:
            lifecycle = getattr(state, "lifecycle", None)
            if lifecycle is not None:  # admission of a pinned version, and the audit log
                lifecycle.put_recipe(recipe, actor=who.name)
            else:
                registry.add_recipe(recipe)
        except BaseException:  # refused (404, 409, 422) or not recorded: the file as it was
            saved.put_back(name, old)
            raise
        state.api_recipes.add(name)
        try:  # both judged under their versions: neither version takes other rules later
            saved.remember(name, *([before] if before is not None else []), recipe)
        except OSError as exc:  # the recipe is in place and recorded: said, not undone
            log.error("recipe %s: versions %s not kept as judged (%s): a later put of "
                      "either with other rules is checked against the recipe judging then "
                      "only", name, recipe.version, exc.strerror or exc)
    return recipe


def _check_version(recipe: Recipe, before: Recipe | None, judged: dict[str, str]) -> None:
    """Refuse ``recipe`` (other rules than ``before``, the one of its name judging now)
    unless its version is above ``before``'s and names no other rules that judged here
    (``judged``: version -> rules digest): a stored verdict names its recipe's version,
    which must say which rules judged it. A version put back with the rules it judged
    with passes (a product's earlier rules, put again as they were)."""
    known = dict(judged)
    if before is not None:
        known.setdefault(before.version, rules_digest(before))
    version = judged_otherwise(known, recipe)
    if version is not None:
        if before is not None and version == before.version:
            raise RecipeVersionNotRaised(
                f"recipe {recipe.name} version {version} is the one judging now, with "
                f"other rules: a changed recipe needs a version above {version} (stored "
                "verdicts name the version that judged them); nothing was changed")
        now = "" if before is None else f" (version {before.version} judges now)"
        raise RecipeVersionNotRaised(
            f"recipe {recipe.name} version {version} judged here before with other "
            f"rules{now}: a changed recipe needs a version of its own (stored verdicts "
            "name the version that judged them); nothing was changed")
    if before is not None and known.get(recipe.version) != rules_digest(recipe) \
            and version_key(recipe.version) < version_key(before.version):
        raise RecipeVersionNotRaised(
            f"recipe {recipe.name} version {recipe.version} is below version "
            f"{before.version}, the one judging now: a recipe put in its place needs a version "
            f"above {before.version} (stored verdicts name the version that judged them); nothing "
            "was changed")


@router.delete("/recipes/{name}", responses=errors(401, 403, 404, 408, 409, 413))
def delete_recipe(name: str, who: Admin, registry: RegistryDep,
                  request: Request) -> RecipeDropped:
    """Drop a recipe put over the API: the configuration's recipe of its name judges
    again, or, when the configuration has none, the recipe is gone (on a fleet box whose
    configured recipe of that name waits for its model: it waits again, ``waits`` says
    why, and is put once the model is pulled). 404 for a recipe not
    put over the API (the configuration's are changed in its files); 409
    recipe_breaks_camera when a configured camera triggers with it and the configuration
    has none to take its place."""
    state = request.app.state
    saved: SavedRecipes = state.saved_recipes
    with saved.lock:
        if not saved.has(name):
            raise NotFoundError(f"no recipe {echo(name)} was put over the API (the "
                                "configuration's recipes are changed in its files)")
        configured: Recipe | None = state.configured_recipes.get(name)
        # a fleet box's configured recipe of this name waiting for its model: the name goes
        # back to waiting (a 404 saying so, the default still), as before the PUT; the
        # cameras triggering with it are warned of, as at start-up (review, session 46)
        waits = registry.waiting.get(name) if configured is None else None
        if configured is not None:  # it must still fit the cameras that trigger with it
            state.service.check_recipe_for_cameras(configured)
        elif waits is None and (cameras := state.service.cameras_with_recipe(name)):
            raise RecipeBreaksCamera(
                f"recipe {name} is what camera(s) {', '.join(c.id for c in cameras)} trigger "
                "with, and the server has no recipe of its own of that name to take its "
                "place; put another recipe under this name instead")
        lifecycle = getattr(state, "lifecycle", None)
        if lifecycle is not None:  # recorded first: a drop that cannot be recorded is not made
            lifecycle.recipe_dropped(name, configured=configured is not None, actor=who.name,
                                     waits=waits is not None)
        saved.delete(name)
        registry.restore_recipe(name, configured)
        state.api_recipes.discard(name)
        if waits is not None:  # its cameras' triggers fail until the pull: said as at start-up
            state.service.warn_cameras()
        alarm = getattr(lifecycle, "alarm", None)
        if alarm is not None:  # dropped: its fail-rate counts go; what judges now learns afresh
            alarm.forget(name)
    return RecipeDropped(name=name, recipe=configured, waits=waits)


def _keep(request: Request, change: str, model: str, version: str) -> None:
    """What the API changed, kept across a restart (``lifecycle/kept.py``): ``loaded``,
    ``activated`` or ``unloaded``."""
    kept = getattr(getattr(request.app.state, "lifecycle", None), "kept", None)
    if kept is not None:
        getattr(kept, change)(model, version)


def _publish(request: Request, registry: Any) -> None:
    publish_state(request.app.state.metrics, registry)


def publish_state(metrics: Any, registry: Any) -> None:
    """The active version of each model, as the ``lineside_model_info{model, version}``
    series."""
    metrics.set_active({name: slot.active or "" for name, slot in registry.models().items()})
