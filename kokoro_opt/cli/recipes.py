"""`kokoro-opt recipes list` and `kokoro-opt recipes show NAME`: the shipped recipes.

Thin: the recipes are package data (`kokoro_opt/data/recipes/`, which `recipes/` in a checkout
links to); each is validated on the way, so a broken one says why.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kokoro_opt.cli.console import console

app = typer.Typer(help="Shipped recipes: list them, or show one with every default filled in.")


def register(app_root: typer.Typer) -> None:
    """Add the `recipes` group to the root app."""
    app_root.add_typer(app, name="recipes")


@app.command("list")
def list_recipes(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the recipes as JSON instead of a table.")
    ] = False,
) -> None:
    """List the shipped recipes, their steps, and whether each can run in this installation."""
    from rich.table import Table

    from kokoro_opt.errors import RecipeError
    from kokoro_opt.recipe import load_recipe, shipped_recipes

    rows = []
    for name, path in shipped_recipes().items():
        try:
            recipe = load_recipe(path)
        except RecipeError as exc:
            problem = str(exc).removeprefix(f"{path}:")
            line, _, rest = problem.partition(": ")
            problem = f"line {line}: {rest}" if line.isdigit() else problem
            rows.append({"name": name, "path": str(path), "valid": False, "problem": problem})
            continue
        rows.append(
            {
                "name": name,
                "path": str(path),
                "valid": True,
                "description": recipe.description,
                "steps": [s.id for s in recipe.steps],
            }
        )
    if json_output:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="Shipped recipes (kokoro-opt run NAME)", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("steps")
    table.add_column("description")
    for row in rows:
        if row["valid"]:
            table.add_row(row["name"], " -> ".join(row["steps"]), row["description"])
        else:
            table.add_row(row["name"], "[red]cannot run here[/]", row["problem"])
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A shipped recipe name, or a recipe file.")],
    resolved: Annotated[
        bool,
        typer.Option(
            "--resolved",
            help="Print the validated recipe with every option's default filled in (YAML), "
            "instead of the file as written.",
        ),
    ] = False,
) -> None:
    """Print a recipe (validated first, so a broken one says what is wrong and where)."""
    import yaml

    from kokoro_opt.recipe import load_recipe, resolve_recipe

    path = resolve_recipe(name)
    recipe = load_recipe(path)
    if resolved:
        text = yaml.safe_dump(recipe.resolved(), sort_keys=False, allow_unicode=True)
    else:
        text = recipe.text
    console.print(f"# {path}", highlight=False, markup=False)
    console.print(text.rstrip("\n"), highlight=False, markup=False, soft_wrap=True)
