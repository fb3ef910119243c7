"""`kokoro-opt run RECIPE`: run a recipe's steps into a run folder with one progress display.

Thin: load and validate the recipe (`kokoro_opt.recipe`), run it with a Rich progress display
bound to the runner's events, print a table of the steps and where everything went. Exit 0
when it finished and its gate (if any) passed, 1 when the gate failed, 2 for a bad recipe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kokoro_opt.cli.console import console, err_console

if TYPE_CHECKING:
    from kokoro_opt.recipe.runner import RunResult, StepRecord
    from kokoro_opt.recipe.schema import Step


def register(app: typer.Typer) -> None:
    """Add the `run` command to the root app."""
    app.command("run")(run)


def run(
    recipe: Annotated[
        str,
        typer.Argument(
            help="A recipe YAML file, or the name of a shipped recipe (see `kokoro-opt recipes "
            "list`)."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The run folder. Default: reports/<recipe>-<timestamp>/ under the current folder.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Run every step again, even those whose inputs and options did not "
            "change since a cached run.",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the run's manifest as JSON instead of a table.")
    ] = False,
) -> None:
    """Run RECIPE: every step in order, unchanged steps from the cache, evidence and gate."""
    import sys

    from kokoro_opt.recipe import load_recipe, resolve_recipe
    from kokoro_opt.recipe.runner import run_recipe

    loaded = load_recipe(resolve_recipe(recipe))
    with _Display(len(loaded.steps), loaded.name) as display:
        result = run_recipe(
            loaded,
            output_dir=output,
            force=force,
            events=display,
            command=["kokoro-opt", *sys.argv[1:]],
        )
    if json_output:
        console.print_json(json.dumps(result.manifest, default=str))
    else:
        _render(result)
    if result.gate_passed is False:
        raise typer.Exit(1)


# ------------------------------------------------------------------------- display


class _Display:
    """One Rich progress display: the recipe's steps, and the running step's own progress."""

    def __init__(self, total: int, name: str) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.name = name
        self.overall = self.bar.add_task(f"{name}: starting", total=total)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Display:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def step_started(self, step: Step, position: int, total: int) -> None:
        self.bar.update(
            self.overall,
            description=f"{self.name}: step {position + 1}/{total} {step.id}",
            completed=position,
        )

    def step_finished(self, step: Step, record: StepRecord) -> None:
        for task in self.tasks.values():
            self.bar.remove_task(task)
        self.tasks.clear()
        self.bar.advance(self.overall)
        style = {"ran": "green", "cached": "cyan"}.get(record.status, "red")
        cost = _seconds(record.elapsed_s)
        if record.status != "cached" and record.usage:
            cost += f", peak {_memory(record.usage['peak_rss_mb'])}"
        self.bar.console.print(
            f"[{style}]{record.status:>11}[/] {step.id} ({cost})", highlight=False
        )

    def progress(self, task: str, completed: int, total: int) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.bar.add_task(f"  {task}", total=max(total, 1))
        self.bar.update(self.tasks[task], completed=completed, total=max(total, 1))


def _render(result: RunResult) -> None:
    from rich.table import Table

    manifest = result.manifest
    table = Table(
        title=f"Recipe {manifest['recipe']['name']}: {result.status}", title_justify="left"
    )
    table.add_column("step")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("CPU", justify="right")
    table.add_column("peak RSS", justify="right")
    table.add_column("result")
    for record in result.steps:
        status = {"ran": "[green]ran[/]", "cached": "[cyan]cached[/]"}.get(
            record.status, f"[red]{record.status}[/]"
        )
        time_text = _seconds(record.elapsed_s)
        if record.status == "cached" and record.original_elapsed_s is not None:
            time_text += f" (ran {_seconds(record.original_elapsed_s)})"
        usage = record.usage or {}
        cpu_text = _seconds(usage["cpu_s"]) if "cpu_s" in usage else ""
        peak_text = _memory(usage["peak_rss_mb"]) if "peak_rss_mb" in usage else ""
        if record.status == "cached" and usage:
            cpu_text, peak_text = f"({cpu_text})", f"({peak_text})"
        table.add_row(record.id, status, time_text, cpu_text, peak_text, _result_text(record))
    console.print(table)
    peak = manifest.get("peak_rss_mb")
    total = manifest.get("elapsed_s")
    if peak is not None and total is not None:
        console.print(
            f"Run: {_seconds(total)}, peak RSS {_memory(peak)} (cached steps cost nothing here).",
            highlight=False,
        )
    console.print(f"Run folder: {result.run_dir}", highlight=False)
    if result.model is not None:
        console.print(f"Model: {result.model}", highlight=False)
    if result.registered is not None:
        name = result.registered.stem
        console.print(
            f"Cached as [bold]{name}[/] (verified on every load): `kokoro-opt serve {name}`, "
            f"`kokoro-opt speak TEXT -o out.wav --model {name}`",
            highlight=False,
        )
    if result.report is not None:
        console.print(f"Report: {result.report.with_suffix('.html')}", highlight=False)
    if result.gate_passed is False:
        console.print("[bold red]Gate failed[/]: see gate/gate.json in the run folder.")


def _result_text(record: StepRecord) -> str:
    s = record.summary
    if "passed" in s:
        if s["passed"]:
            return f"[green]all {s['rules']} rules hold[/]"
        failed = "; ".join(
            f"{f['rule']} ({f['observed']:.4g} vs {f['limit']:.4g})" for f in s["failed"]
        )
        return f"[red]{len(s['failed'])} of {s['rules']} rules failed[/]: {failed}"
    if "bytes_after" in s:
        text = f"{s['bytes_before'] / 1e6:.1f} MB -> {s['bytes_after'] / 1e6:.1f} MB"
        if "quantized" in s and isinstance(s["quantized"], dict):
            text += ", quantized " + ", ".join(f"{k} {v}" for k, v in s["quantized"].items())
        return text
    if "buckets" in s:
        return "buckets " + ", ".join(str(b["tokens"]) for b in s["buckets"])
    if "window" in s:
        diffs = [g.get("max_abs_diff") for g in s["graphs"].values()]
        spans = ", ".join(f"{name} {g['span']}" for name, g in s["graphs"].items())
        if None in diffs:
            verdict = "[yellow]not compared[/] with the dynamic graphs"
        elif max(diffs) == 0:
            verdict = "identical to the dynamic graphs"
        else:
            verdict = f"max abs difference {max(diffs):.1e} to the dynamic graphs"
        return f"{s['window']['frames']}-frame windows (input frames: {spans}); {verdict}"
    if "receptive_field_frames" in s:
        return f"receptive field {s['receptive_field_frames']} frames each side"
    if "models" in s and isinstance(s["models"], dict):
        return ", ".join(s["models"])
    if "text" in s:
        return str(s["text"])
    return ""


def _memory(mb: float) -> str:
    return f"{mb:.0f} MB" if mb < 1000 else f"{mb / 1000:.2f} GB"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"
