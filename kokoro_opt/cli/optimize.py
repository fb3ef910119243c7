"""`kokoro-opt optimize MODEL -o OUT`: graph optimization with a before/after table.

Thin: parse options, build `kokoro_opt.passes.optimize.Config`, run the chain with a Rich
progress bar, check the audio against the input model, time both interleaved, save the model
atomically with `OUT.json` beside it, print the table (or the manifest with --json).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from kokoro_opt.cli._artifacts import (
    MANIFEST_PACKAGES,
    check_output_file,
    mb,
    progress_bar,
    write_json_atomic,
)
from kokoro_opt.cli.console import console, err_console

LEVELS = ("basic", "extended", "layout")


def register(app: typer.Typer) -> None:
    """Add the `optimize` command to the root app."""
    app.command("optimize")(optimize)


def optimize(
    model: Annotated[
        str,
        typer.Argument(help="The model to optimize: a cache name (such as kokoro-fp32) or a path."),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The .onnx file to write; OUT.json is written too."),
    ],
    level: Annotated[
        str | None,
        typer.Option(
            help="ONNX Runtime optimization level: basic (standard ops), extended (ORT fused ops) "
            "or layout (also NCHWc; the output only suits the machine that made it). Default: "
            "extended, or basic with --portable.",
            show_default=False,
        ),
    ] = None,
    simplify: Annotated[
        bool, typer.Option("--simplify/--no-simplify", help="Run onnxsim constant folding first.")
    ] = True,
    fusion: Annotated[
        bool,
        typer.Option(
            "--fusion/--no-fusion", help="Run the transformer fusions on the ALBERT text encoder."
        ),
    ] = True,
    portable: Annotated[
        bool,
        typer.Option(
            "--portable",
            help="Write only standard ONNX ops (contrib ops rewritten) for CoreML and other "
            "runtimes; needs --level basic.",
        ),
    ] = False,
    for_quantization: Annotated[
        bool,
        typer.Option(
            "--for-quantization",
            help="Prepare a float model for `kokoro-opt quantize`: rewrites only (instnorm, "
            "conv2d unless --rewrite says otherwise: the Snake fold hurts INT8), standard ops "
            "(level basic, no onnxsim Gemm fusion, no transformer fusions), so every Conv and "
            "MatMul stays visible to the quantizer.",
        ),
    ] = False,
    rewrite: Annotated[
        str | None,
        typer.Option(
            help="Hot-spot rewrites, comma-separated: instnorm, snake, stft, conv2d; 'default' "
            "(the measured-good set: instnorm, snake, conv2d), 'all' or 'none'. Default: "
            "'default', or instnorm,conv2d with --for-quantization."
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Render three reference utterances with both models and compare the audio.",
        ),
    ] = True,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure", help="Time both models interleaved on one sentence."
        ),
    ] = True,
    runs: Annotated[int, typer.Option(help="Timed runs per model for --measure.")] = 5,
    threads: Annotated[
        int, typer.Option(help="Intra-op threads for checking and timing (and ORT optimization).")
    ] = 2,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON instead of a table.")
    ] = False,
) -> None:
    """Optimize MODEL's graph and show what changed: op counts, size, latency and audio."""
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.passes import optimize as chain
    from kokoro_opt.passes import rewrites
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.recipe.artifacts import apply_pass
    from kokoro_opt.store import resolve_model

    preset = chain.FOR_QUANTIZATION
    if level is None:
        level = "basic" if portable or for_quantization else "extended"
    if for_quantization:
        if level != preset["level"]:
            raise UserInputError(
                f"--for-quantization cannot be combined with --level {level}: the quantizer "
                "needs standard ops. Leave --level out (it becomes basic)."
            )
        simplify, fusion = preset["simplify"], preset["fusion"]
    if level not in LEVELS:
        raise UserInputError(f"--level must be one of {', '.join(LEVELS)}; got {level!r}.")
    if portable and level != "basic":
        raise UserInputError(
            f"--portable cannot be combined with --level {level}: that level writes ONNX "
            "Runtime-only ops. Use --level basic (the default with --portable)."
        )
    if runs < 1:
        raise UserInputError(f"--runs must be at least 1, got {runs}.")
    if rewrite is None:
        names = list(preset["rewrites"] if for_quantization else rewrites.DEFAULT)
    else:
        names = rewrites.parse(rewrite)
    try:
        config = chain.Config(
            level=level, simplify=simplify, fusion=fusion, portable=portable, rewrites=names
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UserInputError(f"Invalid options: {_first_error(exc)}.") from None
    model_path = resolve_model(model)
    out = check_output_file(output, model_path)

    with progress_bar() as report, tempfile.TemporaryDirectory(prefix="kokoro-opt-opt-") as tmp:
        ctx = PassContext(work_dir=Path(tmp), progress=report, threads=threads)
        manifest: dict[str, Any] = apply_pass(
            chain, config, model_path, out, ctx=ctx, command="optimize", packages=MANIFEST_PACKAGES
        )
        manifest["for_quantization"] = for_quantization
        manifest["audio_check"] = _check(model_path, out, threads, report) if check else None
        manifest["latency"] = _measure(model_path, out, runs, threads, report) if measure else None
    write_json_atomic(out.with_name(out.name + ".json"), manifest)
    for warning in manifest["details"]["warnings"]:
        err_console.print(f"[yellow]warning:[/] {warning}")
    if json_output:
        console.print_json(json.dumps(manifest, default=str))
        return
    _render(manifest)


# ------------------------------------------------------------------------- helpers


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        items = errors()
        if items:
            return str(items[0].get("msg", exc)).removeprefix("Value error, ")
    return str(exc).splitlines()[0]


def _check(model_path: Path, out: Path, threads: int, report: Any) -> dict[str, Any]:
    from kokoro_opt.measure.reference import compare_models
    from kokoro_opt.passes.verify import NOISE_FLOOR_LOGMEL, reference_feeds

    report("checking audio", 0, 1)
    result = compare_models(model_path, out, reference_feeds(model_path), threads=threads)
    report("checking audio", 1, 1)
    result["noise_floor_logmel"] = NOISE_FLOOR_LOGMEL
    result["within_noise"] = bool(
        result["same_lengths"]
        and result["nonfinite"] == 0
        and result["max_logmel_distance"] <= NOISE_FLOOR_LOGMEL
    )
    return result


def _measure(model_path: Path, out: Path, runs: int, threads: int, report: Any) -> dict[str, Any]:
    from kokoro_opt.bench.ab import ab_latency
    from kokoro_opt.passes.verify import REFERENCE_PHONEMES, reference_feeds

    feeds = reference_feeds(model_path, phonemes=[REFERENCE_PHONEMES[1]])
    return ab_latency(
        {"before": model_path, "after": out}, feeds, runs=runs, threads=threads, progress=report
    )


def _render(manifest: dict[str, Any]) -> None:
    from rich.table import Table

    details = manifest["details"]
    before, after = details["ops_before"], details["ops_after"]
    table = Table(
        title=f"{Path(manifest['input']).name} -> {Path(manifest['output']).name}",
        title_justify="left",
    )
    table.add_column("op type")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    changed = [op for op in sorted(set(before) | set(after)) if before.get(op) != after.get(op)]
    changed.sort(key=lambda op: -abs(after.get(op, 0) - before.get(op, 0)))
    for op in changed:
        b, a = before.get(op, 0), after.get(op, 0)
        table.add_row(op, str(b), str(a), f"{a - b:+d}")
    same = len(set(before) & set(after)) - len(
        [op for op in changed if op in before and op in after]
    )
    table.add_row(
        "[bold]all nodes[/]",
        str(details["nodes_before"]),
        str(details["nodes_after"]),
        f"{details['nodes_after'] - details['nodes_before']:+d}",
        end_section=True,
    )
    table.caption = f"{same} op types unchanged"
    console.print(table)

    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("Size", f"{mb(manifest['input_bytes'])} -> {mb(manifest['output_bytes'])}")
    latency = manifest["latency"]
    if latency:
        b, a = latency["models"]["before"], latency["models"]["after"]
        summary.add_row(
            "Latency",
            f"{b['median_ms']:.0f} -> {a['median_ms']:.0f} ms median of {latency['runs']} "
            f"(paired ratio {a['paired_ratio']:.3f}, {latency['threads']} threads)",
        )
    audio = manifest["audio_check"]
    if audio:
        verdict = "[green]within float noise[/]" if audio["within_noise"] else "[yellow]changed[/]"
        summary.add_row(
            "Audio",
            f"{verdict}: log-mel distance {audio['max_logmel_distance']:.4f} (noise floor "
            f"{audio['noise_floor_logmel']}), max |diff| {audio['max_abs_diff']:.3g}, "
            f"lengths {'equal' if audio['same_lengths'] else 'differ'}",
        )
    stages = details["stages"]
    if "rewrites" in stages:
        parts = [
            f"{name} {info.get('rewritten', info.get('matched', 0))}"
            for name, info in stages["rewrites"].items()
        ]
        summary.add_row("Rewrites", ", ".join(parts) or "none")
    fusion = stages.get("transformer_fusion", {})
    if "fused" in fusion:
        fused = {k: v for k, v in fusion["fused"].items() if v}
        summary.add_row("Fusions", ", ".join(f"{k} {v:+d}" for k, v in fused.items()) or "none new")
    elif "skipped" in fusion:
        summary.add_row("Fusions", f"skipped ({fusion['skipped']})")
    if details["non_standard_ops"]:
        ops = ", ".join(f"{k} {v}" for k, v in details["non_standard_ops"].items())
        summary.add_row("Contrib ops", ops)
    else:
        summary.add_row("Contrib ops", "none (standard ONNX only)")
    summary.add_row("Time", f"{manifest['elapsed_s']:.1f} s")
    summary.add_row("Wrote", f"{manifest['output']} and {Path(manifest['output']).name}.json")
    console.print(summary)
