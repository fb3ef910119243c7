"""`kokoro-opt model ...`: pull the default models (offline) or your own, list, inspect, verify
and repair them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from kokoro_opt.cli.console import console, err_console

app = typer.Typer(
    help="Pull, list and inspect models in the kokoro-opt cache.",
    no_args_is_help=True,
)


@app.command("pull")
def pull(
    path_or_url: Annotated[
        str | None,
        typer.Argument(
            help="A model file or http(s) URL to add to the cache. Leave it out to build the "
            "default models (kokoro-int8-export and kokoro-fp32) offline.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Cache name for PATH_OR_URL (default: its file name without .onnx)."),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(help="Expected sha256 of PATH_OR_URL; a different file is refused."),
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Check every cached model in full and repair the damaged ones: rebuild the "
            "defaults, copy a recipe's output again from its run folder, register a user's "
            "model again from its source file (when those are intact).",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the pulled models as JSON instead of a table.")
    ] = False,
) -> None:
    """Build the default models offline, or add your own model to the cache."""
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.store import list_models, pull_default, register_model

    if repair:
        if path_or_url is not None or name is not None or sha256 is not None:
            raise UserInputError(
                "--repair checks the models already in the cache; give no PATH_OR_URL, --name "
                "or --sha256 with it."
            )
        from kokoro_opt.store import repair as repair_models

        with _progress() as report:
            checks = repair_models(progress=report)
        _render_checks(checks, title="Repair", json_output=json_output)
        return

    with _progress() as report:
        if path_or_url is None:
            if name is not None or sha256 is not None:
                raise UserInputError(
                    "--name and --sha256 apply to PATH_OR_URL; leave them out to pull the "
                    "default models."
                )
            paths = pull_default(progress=report)
            wanted = {str(p) for p in paths.values()}
        else:
            wanted = {str(register_model(path_or_url, name, sha256=sha256, progress=report))}
    rows = [row for row in list_models() if row["path"] in wanted]
    if json_output:
        console.print_json(json.dumps(rows))
        return
    _models_table(rows, title="Pulled")


@app.command("list")
def list_(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the cached models as JSON instead of a table.")
    ] = False,
) -> None:
    """Show the models in the cache."""
    from kokoro_opt.store import list_models, models_dir

    rows = list_models()
    if json_output:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print(
            f"No models in {models_dir()} yet. Run `kokoro-opt model pull` to build the defaults."
        )
        return
    _models_table(rows, title="Cached models")


@app.command("verify")
def verify(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Cached model names to check (default: all).", show_default=False),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the outcomes as JSON instead of a table.")
    ] = False,
) -> None:
    """Check cached models against their sidecars by full sha256; exit 1 when one is damaged."""
    from kokoro_opt.store import verify_all

    with err_console.status("Hashing the cached models ..."):
        checks = verify_all(names)
    _render_checks(checks, title="Verify", json_output=json_output)


@app.command("inspect")
def inspect(
    model: Annotated[str, typer.Argument(help="A cache name (see `model list`) or a model path.")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the full description as JSON.")
    ] = False,
    top: Annotated[int, typer.Option(min=0, help="How many of the largest tensors to show.")] = 10,
) -> None:
    """Describe a model: inputs/outputs, opsets, ops, parameters, quantization, big tensors."""
    from kokoro_opt.graph.inspect import inspect_model
    from kokoro_opt.graph.io import load_model
    from kokoro_opt.store import resolve_model

    path = resolve_model(model)
    with err_console.status(f"Loading {path.name} ..."):
        info = inspect_model(load_model(path), top=top)
    info = {"path": str(path), "file_bytes": path.stat().st_size, **info}
    if json_output:
        console.print_json(json.dumps(info))
        return
    _render_inspect(info)


# ------------------------------------------------------------------------- rendering


@contextmanager
def _progress() -> Iterator[Any]:
    """A Rich progress bar on stderr, driven by store progress callbacks."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        tasks: dict[str, Any] = {}

        def report(task: str, completed: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = progress.add_task(task, total=total)
            progress.update(tasks[task], completed=completed, total=total)

        yield report


def _render_checks(checks: list[Any], *, title: str, json_output: bool) -> None:
    """Print model checks (verify, repair); exit 1 when any model is still damaged."""
    from rich.table import Table

    if json_output:
        console.print_json(json.dumps([c.to_dict() for c in checks]))
    else:
        bad = [c for c in checks if not c.ok]
        table = Table(title=f"{title}: {len(checks) - len(bad)} of {len(checks)} models intact")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("sha256", no_wrap=True)
        table.add_column("checked in", justify="right", no_wrap=True)
        if any(c.action for c in checks):
            table.add_column("repair", overflow="fold")
        for c in checks:
            row = [
                c.name,
                "[green]ok[/]" if c.ok else "[bold red]DAMAGED[/]",
                (c.sha256 or "-")[:12],
                f"{c.seconds:.2f} s" if c.seconds is not None else "-",
            ]
            if any(x.action for x in checks):
                row.append(c.action or "-")
            table.add_row(*row)
        if not checks:
            console.print("No models in the cache yet. Run `kokoro-opt model pull`.")
        else:
            console.print(table)
        for c in bad:
            err_console.print(f"[bold red]error:[/] {c.error}", highlight=False, soft_wrap=True)
    if any(not c.ok for c in checks):
        raise typer.Exit(1)


def _models_table(rows: list[dict[str, Any]], *, title: str) -> None:
    from rich.table import Table

    from kokoro_opt.store import models_dir

    table = Table(title=title, title_justify="left", caption=f"Folder: {models_dir()}")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("verified", no_wrap=True)
    for row in rows:
        sha = row.get("sha256") or "-"
        table.add_row(
            row["name"], row["kind"], _mb(row["size_bytes"]), sha[:12], _verified_text(row)
        )
    console.print(table)


def _verified_text(row: dict[str, Any]) -> str:
    """`model list`'s verified column: the state of the last full check (no hashing here)."""
    state, checked = row.get("verified"), row.get("checked")
    when = f" {checked.replace('T', ' ')[:16]}" if checked else ""
    return {
        "verified": f"[green]yes[/]{when}",
        "changed": f"[yellow]changed since{when}[/] (full check on next use)",
        "damaged": "[bold red]DAMAGED[/] (size)",
        "unverified": "[yellow]not yet[/]",
    }.get(str(state), f"[red]{state}[/]")


def _render_inspect(info: dict[str, Any]) -> None:
    from rich.table import Table

    params = info["parameters"]
    summary = Table(title=f"{info['path']}", title_justify="left", show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value", overflow="fold")
    summary.add_row("file size", _mb(info["file_bytes"]))
    summary.add_row("producer", info["producer"] or "-")
    summary.add_row("IR version", str(info["ir_version"]))
    summary.add_row("opsets", ", ".join(f"{d} {v}" for d, v in info["opsets"].items()))
    summary.add_row("nodes", f"{info['node_count']:,}")
    summary.add_row("parameters", f"{params['elements']:,} ({_mb(params['bytes'])})")
    evidence = "; ".join(
        f"{style}: " + ", ".join(f"{k} x{v}" for k, v in found.items())
        for style, found in info["quant_evidence"].items()
    )
    summary.add_row("quantization", info["quant_style"] + (f" ({evidence})" if evidence else ""))
    console.print(summary)

    io = Table(title="Inputs and outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            shape = (
                "?"
                if v["shape"] is None
                else str([d if d is not None else "?" for d in v["shape"]])
            )
            io.add_row(kind[:-1], v["name"], v["dtype"], shape)
    console.print(io)

    dtypes = Table(title="Parameters by dtype", title_justify="left")
    for col in ("dtype", "tensors", "elements", "size"):
        dtypes.add_column(col, justify="left" if col == "dtype" else "right")
    for dtype, row in params["by_dtype"].items():
        dtypes.add_row(dtype, f"{row['tensors']:,}", f"{row['elements']:,}", _mb(row["bytes"]))
    console.print(dtypes)

    ops = Table(title="Op histogram", title_justify="left")
    pairs = list(info["op_histogram"].items())
    n_cols = 2
    for _ in range(n_cols):
        ops.add_column("op")
        ops.add_column("count", justify="right")
    n_rows = (len(pairs) + n_cols - 1) // n_cols
    for r in range(n_rows):
        cells: list[str] = []
        for c in range(n_cols):
            i = c * n_rows + r
            cells += [pairs[i][0], f"{pairs[i][1]:,}"] if i < len(pairs) else ["", ""]
        ops.add_row(*cells)
    console.print(ops)

    if info["largest_tensors"]:
        big = Table(title="Largest tensors", title_justify="left")
        for col in ("name", "dtype", "shape", "size", "used by"):
            big.add_column(col, overflow="fold", justify="right" if col == "size" else "left")
        for t in info["largest_tensors"]:
            big.add_row(
                t["name"], t["dtype"], str(t["shape"]), _mb(t["bytes"]), ", ".join(t["used_by"])
            )
        console.print(big)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"
