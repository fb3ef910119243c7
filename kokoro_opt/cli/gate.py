"""`kokoro-opt gate REPORT`: check a report against threshold rules; CI fails on a regression.

Exit codes: 0 when every rule holds (and `--model` is the file the report measured), 1 when one
fails, 2 for bad input (a missing or invalid report, baseline or rules file, or model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kokoro_opt.cli.console import console, err_console

if TYPE_CHECKING:
    from kokoro_opt.gates import GateResult, ModelBinding
    from kokoro_opt.report.schema import Report


def register(app: typer.Typer) -> None:
    """Add the `gate` command to the root app."""
    app.command("gate")(gate)


def gate(
    report: Annotated[
        Path,
        typer.Argument(help="The report to check: a report.json, or the run folder holding it."),
    ],
    rules: Annotated[
        str,
        typer.Option(
            help="A gates.yaml rules file, or the name of a shipped one: 'default' (candidate "
            "vs the reference model of the same report) or 'regression' (vs --baseline)."
        ),
    ] = "default",
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="An earlier report (report.json or run folder) that relative rules compare with."
        ),
    ] = None,
    junit: Annotated[
        Path | None,
        typer.Option(help="Also write the outcomes as JUnit XML to this file, for CI systems."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The model file (or cache name) you ship: the gate also fails unless REPORT "
            "measured exactly this file (by sha256) as a model its rules judge."
        ),
    ] = None,
    update_baseline: Annotated[
        bool,
        typer.Option(
            "--update-baseline",
            help="When every rule holds, copy REPORT over the --baseline file; when one fails, "
            "leave the baseline as it is.",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the outcomes as JSON instead of a table.")
    ] = False,
) -> None:
    """Check REPORT against RULES (and a baseline); exit 1 when a rule fails, or when --model is
    not the model the report measured."""
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.gates import evaluate, junit_xml, load_rules, resolve_rules
    from kokoro_opt.report.files import copy_atomic, write_text_atomic
    from kokoro_opt.report.schema import REPORT_FILE, load_report

    if update_baseline and baseline is None:
        raise UserInputError(
            "--update-baseline needs --baseline FILE: the file to replace when all rules hold."
        )
    rules_path = resolve_rules(rules)
    gate_rules = load_rules(rules_path)
    report_path = report / REPORT_FILE if report.is_dir() else report
    current = load_report(report_path, role="report")
    baseline_path = baseline / REPORT_FILE if baseline and baseline.is_dir() else baseline
    previous = None
    if baseline_path is not None:
        if not baseline_path.exists() and update_baseline and gate_rules.needs_baseline:
            raise UserInputError(
                f"The baseline '{baseline_path}' does not exist yet and these rules compare with "
                f"it; start one with 'cp {report_path} {baseline_path}', or run once with rules "
                "that need no baseline (--rules default --update-baseline)."
            )
        if baseline_path.exists() or not update_baseline:
            previous = load_report(baseline_path, role="baseline")
    result = evaluate(current, gate_rules, baseline=previous)
    binding = _bind(current, model, result) if model is not None else None
    passed = result.passed and (binding is None or binding.passed)

    if junit is not None:
        write_text_atomic(junit, junit_xml(result, binding=binding))
    updated = False
    if update_baseline and baseline_path is not None and passed:
        copy_atomic(report_path, baseline_path)
        updated = True

    if json_output:
        data = {
            "report": str(report_path),
            "baseline": str(baseline_path) if baseline_path else None,
            "rules_file": str(rules_path),
            **result.to_dict(),
            "passed": passed,
            "model_check": binding.to_dict() if binding else None,
            "baseline_updated": updated,
            "junit": str(junit) if junit else None,
        }
        console.print_json(json.dumps(data))
    else:
        _print_table(
            result, rules_path=rules_path, baseline_path=baseline_path if previous else None
        )
        if binding is not None:
            mark = "[green]PASS[/]" if binding.passed else "[bold red]FAIL[/]"
            console.print(f"{mark} model: {binding.message}", highlight=False)
        if junit is not None:
            console.print(f"JUnit XML written to {junit}", highlight=False)
        if update_baseline:
            if updated:
                console.print(
                    f"[green]Baseline updated:[/] {baseline_path} now holds {report_path}.",
                    highlight=False,
                )
            else:
                why = (
                    f"{len(result.failures)} rule(s) failed"
                    if not result.passed
                    else "--model is not the model it measured"
                )
                console.print(
                    f"[yellow]Baseline not updated:[/] {why}, so {baseline_path} is unchanged.",
                    highlight=False,
                )
    if not passed:
        raise typer.Exit(1)


def _bind(report: Report, model: str, result: GateResult) -> ModelBinding:
    """Check that `model` (a path or cache name; a cached model is verified) is a model the
    rules judged in `report`."""
    from kokoro_opt.gates import bind_model
    from kokoro_opt.store import resolve_model, verified_sha256

    path = resolve_model(model)
    with err_console.status(f"Hashing {path.name} ..."):
        sha256 = verified_sha256(path)
    judged = {o.model for o in result.outcomes}
    return bind_model(report, str(path), sha256, judged=judged)


def _print_table(result: GateResult, *, rules_path: Path, baseline_path: Path | None) -> None:
    from rich.table import Table

    from kokoro_opt.gates import format_value

    models = sorted({o.model for o in result.outcomes})
    held = len(result.outcomes) - len(result.failures)
    caption = f"Rules: {rules_path}" + (f"; baseline: {baseline_path}" if baseline_path else "")
    table = Table(
        title=f"Gate for {', '.join(models)}: {held} of {len(result.outcomes)} rules hold",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    table.add_column("", no_wrap=True)
    table.add_column("rule", ratio=3)
    if len(models) > 1:
        table.add_column("model")
    table.add_column("observed", justify="right", no_wrap=True)
    table.add_column("limit", justify="right", no_wrap=True)
    table.add_column("compared with", justify="right", ratio=1)
    for o in result.outcomes:
        row = ["[green]PASS[/]" if o.passed else "[bold red]FAIL[/]", o.label]
        if len(models) > 1:
            row.append(o.model)
        row += [
            format_value(o.observed),
            f"{'<=' if o.bound == 'max' else '>='} {format_value(o.limit)}",
            f"{o.against} {format_value(o.baseline)}" if o.baseline is not None else "-",
        ]
        table.add_row(*row)
    console.print(table)
    if result.passed:
        console.print(f"[green]All {len(result.outcomes)} rules hold.[/]")
    else:
        for o in result.failures:
            console.print(f"[bold red]FAIL[/] {o.label}: {o.message}", highlight=False)
