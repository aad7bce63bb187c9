"""The recipe a model card brings (``default_recipe``): what the server judges a model by
when no recipe is configured, and what follows the active card on a swap."""

from __future__ import annotations

from pydantic import ValidationError

from lineside_inspect.errors import ConfigError, PackageError, describe_validation
from lineside_inspect.package import ModelCard, default_recipe_name
from lineside_inspect.recipes.schema import Recipe


def card_recipe(card: ModelCard) -> Recipe:
    """The recipe a card brings (as the server makes it when none is configured)."""
    doc = {"name": default_recipe_name(card.name), "version": "1", "model": card.name,
           **card.default_recipe}
    doc["model"] = doc.get("model") or card.name
    return Recipe.model_validate(doc)


def check_card_recipe(card: ModelCard, class_names: list[str]) -> None:
    """Refuse a card whose own recipe does not fit its model, when it is loaded: a
    ``min_score`` of NaN or for a class the model lacks made its gate a 500 and a server
    start a traceback, and a swap to it left the line judging at the old version's
    floors (lifecycle review, session 32). An ``anomaly.model`` it fuses with is checked
    when the recipe is added, against what is loaded then."""
    where = f"model {card.name} {card.version}: its card's default_recipe"
    try:
        recipe = card_recipe(card)
    except ValidationError as exc:
        raise PackageError(f"{where}: {describe_validation(exc.errors())}") from None
    try:
        recipe.check_models(card.kind, class_names, "anomaly")
        # tiling (or align_reference, unchanged_gate) against the card's own input: the
        # registry refused it only when adding the recipe, a traceback from a server's
        # start-up (session 44)
        recipe.check_reference_use(card.needs_reference)
    except ConfigError as exc:
        raise PackageError(f"{where}: {exc.message}") from None
    if recipe.model != card.name:
        raise PackageError(f"{where} judges model {recipe.model}, not {card.name}")
