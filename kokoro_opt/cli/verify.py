"""`kokoro-opt verify RUN_DIR`: check a recipe's run folder before trusting or shipping it.

Exit codes: 0 when every check holds, 1 when one fails (a changed artifact, a report that
measured another model, a failed gate), 2 when RUN_DIR is not a run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kokoro_opt.cli.console import console, err_console


def register(app: typer.Typer) -> None:
    """Add the `verify` command to the root app."""
    app.command("verify")(verify)


def verify(
    run_dir: Annotated[
        Path, typer.Argument(help="A folder written by `kokoro-opt run` (it holds manifest.json).")
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the checks as JSON instead of a table.")
    ] = False,
) -> None:
    """Check RUN_DIR: every artifact's sha256 against manifest.json, the final model and report,
    the models the report measured, and the gate; exit 1 when a check fails."""
    from rich.table import Table

    from kokoro_opt.recipe.verify import verify_run

    with err_console.status(f"Hashing the artifacts of {run_dir} ..."):
        result = verify_run(run_dir)
    if json_output:
        console.print_json(json.dumps(result.to_dict()))
    else:
        verdict = "[green]intact[/]" if result.passed else "[bold red]FAILED[/]"
        table = Table(title=f"{run_dir}: {verdict}", title_justify="left")
        table.add_column("check", no_wrap=True)
        table.add_column("", no_wrap=True)
        table.add_column("detail", overflow="fold")
        for c in result.checks:
            mark = {True: "[green]PASS[/]", False: "[bold red]FAIL[/]"}.get(c.passed, "skip")
            table.add_row(c.check, mark, c.detail)
        console.print(table)
    if not result.passed:
        raise typer.Exit(1)
