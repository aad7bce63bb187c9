"""Recipes: per-product rules that turn detections into a pass/fail verdict."""

from lineside_inspect.recipes.rules import Verdict, judge
from lineside_inspect.recipes.schema import Recipe, load_recipe

__all__ = ["Recipe", "Verdict", "judge", "load_recipe"]
