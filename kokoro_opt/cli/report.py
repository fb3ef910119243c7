"""`kokoro-opt report RUN_DIR`: re-render report.md and report.html from a run's report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kokoro_opt.cli.console import console, err_console


def register(app: typer.Typer) -> None:
    """Add the `report` command to the root app."""
    app.command("report")(report)


def report(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A run folder holding report.json, or the report.json file itself."),
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the written files as JSON instead of a table.")
    ] = False,
) -> None:
    """Re-render report.md and report.html (with plots) from RUN_DIR/report.json."""
    from rich.table import Table

    from kokoro_opt.report.render import write_report_dir
    from kokoro_opt.report.schema import REPORT_FILE, load_report

    path = run_dir / REPORT_FILE if run_dir.is_dir() else run_dir
    loaded = load_report(path, role="report")
    with err_console.status("Rendering plots and tables ..."):
        written = write_report_dir(loaded, path.parent, include_json=False)
    rows = [{"file": str(p), "bytes": p.stat().st_size} for p in written.values()]
    if json_output:
        console.print_json(json.dumps({"report": str(path), "written": rows}))
        return
    table = Table(title=f"Re-rendered {path}", title_justify="left")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for row in rows:
        table.add_row(row["file"], f"{row['bytes']:,}")
    console.print(table)
    console.print(f"Open {written['report.html']} in a browser; it works offline.", highlight=False)
