"""Recipes: per-product rules that turn detections into a pass/fail verdict."""

from lineside_inspect.recipes.card import card_recipe, check_card_recipe
from lineside_inspect.recipes.rules import Verdict, judge
from lineside_inspect.recipes.schema import Recipe, load_recipe

__all__ = ["Recipe", "Verdict", "card_recipe", "check_card_recipe", "judge", "load_recipe"]
