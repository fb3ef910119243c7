"""Recipes: a YAML file saying which model to start from and which steps to run on it.

`schema` validates a recipe (errors name the file, line and key), `steps` maps each step kind to
the library function its CLI command calls, `cache` keys finished steps by content, and
`runner` runs a recipe into a run folder with a provenance manifest and the evidence report.
"""

from __future__ import annotations

from kokoro_opt.recipe.schema import (
    Recipe,
    Step,
    load_recipe,
    parse_recipe,
    resolve_recipe,
    shipped_recipes,
)

__all__ = [
    "Recipe",
    "Step",
    "load_recipe",
    "parse_recipe",
    "resolve_recipe",
    "shipped_recipes",
]
