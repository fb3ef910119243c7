"""`kokoro-opt quantize MODEL -o OUT`: static per-channel INT8 (QDQ) calibrated on phonemized text.

Thin: parse options, build the pass Config, run `kokoro_opt.passes.quantize_static` through
`recipe.artifacts.apply_pass` (the recipe's quantize step does the same, so both write the
same manifest) with a Rich progress bar, print a table.
The defaults are the settings measured best on Kokoro-82M (docs/int8-static.md).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from kokoro_opt.cli._artifacts import (
    check_output_file,
    mb,
    progress_bar,
)
from kokoro_opt.cli.console import console, err_console

# Kept equal to kokoro_opt.passes.quantize_static defaults by a test; not imported from there
# so that `kokoro-opt --help` does not import onnx and pydantic.
DEFAULT_METHOD = "percentile"
DEFAULT_SAMPLES = 32
DEFAULT_OPS = "Conv"
DEFAULT_PERCENTILE = 99.99
DEFAULT_OUTPUT_PERCENTILE = 99.9
DEFAULT_REWRITES = "instnorm,conv2d"


def register(app: typer.Typer) -> None:
    """Add the `quantize` command to the root app."""
    app.command("quantize")(quantize)


def quantize(
    model: Annotated[
        str,
        typer.Argument(help="A float32 model: a cache name (such as kokoro-fp32) or a path."),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The .onnx file to write; OUT.json is written too."),
    ],
    per_channel: Annotated[
        bool,
        typer.Option(
            "--per-channel/--per-tensor",
            help="One weight scale per output channel (accurate) or one per tensor.",
        ),
    ] = True,
    method: Annotated[
        str,
        typer.Option(help="How activation ranges are calibrated: minmax, entropy or percentile."),
    ] = DEFAULT_METHOD,
    percentile: Annotated[
        float,
        typer.Option(
            help="The central percent of each input activation kept by --method percentile "
            "(90 to below 100)."
        ),
    ] = DEFAULT_PERCENTILE,
    output_percentile: Annotated[
        float,
        typer.Option(
            help="The same for the outputs of quantized nodes (they carry rarer, larger peaks)."
        ),
    ] = DEFAULT_OUTPUT_PERCENTILE,
    samples: Annotated[
        int, typer.Option(help="How many calibration inputs (sentence, voice, speed) to run.")
    ] = DEFAULT_SAMPLES,
    activations: Annotated[
        str, typer.Option(help="Activation type: uint8 (best on x86 CPUs) or int8.")
    ] = "uint8",
    symmetric_activations: Annotated[
        bool,
        typer.Option(
            "--symmetric-activations",
            help="Use ranges symmetric around zero for activations (zero point in the middle).",
        ),
    ] = False,
    weights: Annotated[
        str, typer.Option(help="Weight type: int8 (recommended) or uint8.")
    ] = "int8",
    ops: Annotated[
        list[str] | None,
        typer.Option(
            help="Op types to quantize, repeated or comma-separated, from Conv, ConvTranspose, "
            f"MatMul and Gemm. Default: {DEFAULT_OPS}."
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            help="Quantize only nodes whose name matches this pattern (repeatable): a glob on "
            "the whole name such as '*/generator/*', or a regular expression after 're:'. "
            "Replaces the built-in selection (the generator's residual blocks and noise branch)."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            help="Keep nodes whose name matches this pattern float (repeatable), same syntax. "
            "Added to the built-in exclusions."
        ),
    ] = None,
    default_selection: Annotated[
        bool,
        typer.Option(
            "--default-selection/--all-nodes",
            help="Start from the built-in selection measured best on Kokoro, or from every node "
            "of the --ops types.",
        ),
    ] = True,
    weight_only_rest: Annotated[
        bool,
        typer.Option(
            "--weight-only-rest/--float-rest",
            help="Store the weights of nodes left float as int8 too (computed in float; the "
            "file shrinks, the speed does not change).",
        ),
    ] = True,
    lookup_tables: Annotated[
        str,
        typer.Option(
            help="Turn the AdaIN + Snake chains that feed INT8 Convs into per-channel lookup "
            "tables: 'all' (also where the chain's input is float: one extra 8-bit rounding), "
            "'exact' (only between INT8 Convs: the model's own codes) or 'none'.",
        ),
    ] = "all",
    calib: Annotated[
        str,
        typer.Option(
            help="Calibration corpus: 'train' (the shipped corpus), a .txt/.csv/.tsv/.jsonl/"
            ".json/.parquet file, or a Hugging Face dataset id (online only)."
        ),
    ] = "train",
    text_column: Annotated[
        str | None,
        typer.Option(help="The text column of a tabular corpus (default: 'text')."),
    ] = None,
    voices: Annotated[
        str | None,
        typer.Option(help="Comma-separated voices to calibrate with (default: all five bundled)."),
    ] = None,
    speeds: Annotated[
        str | None,
        typer.Option(help="Comma-separated speeds to calibrate with (default: 0.8,0.9,1,1.1,1.2)."),
    ] = None,
    lang: Annotated[str, typer.Option(help="The language of the corpus, such as en-us.")] = "en-us",
    seed: Annotated[int, typer.Option(help="Seed for picking sentences, voices and speeds.")] = 0,
    preprocess: Annotated[
        bool,
        typer.Option(
            "--preprocess/--no-preprocess",
            help="Run onnxruntime's quant_pre_process (graph optimization) first.",
        ),
    ] = False,
    rewrites: Annotated[
        str | None,
        typer.Option(
            help="Graph rewrites before calibration, comma-separated from instnorm, snake, stft "
            f"and conv2d, or 'none' to quantize the graph as given. Default: {DEFAULT_REWRITES} "
            "(as optimize --for-quantization: float Convs on ORT's fast kernels).",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="Intra-op threads for calibration; default is one per core."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON instead of a table.")
    ] = False,
) -> None:
    """Quantize MODEL to static INT8 (QDQ) with ranges calibrated on phonemized text."""
    from kokoro_opt.passes import quantize_static as pass_
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.recipe.artifacts import apply_pass
    from kokoro_opt.store import resolve_model

    builtin_include = pass_.DEFAULT_INCLUDE if default_selection else []
    builtin_exclude = pass_.DEFAULT_EXCLUDE if default_selection else []
    settings: dict[str, Any] = {
        "per_channel": per_channel,
        "method": method,
        "percentile": percentile,
        "output_percentile": output_percentile,
        "samples": samples,
        "activations": activations,
        "symmetric_activations": symmetric_activations,
        "weights": weights,
        "ops": _split(ops) if ops else pass_.DEFAULT_OPS,
        "include": _split(include) if include else list(builtin_include),
        "exclude": list(builtin_exclude) + list(exclude or []),
        "weight_only_rest": weight_only_rest,
        "lookup_tables": lookup_tables,
        "calib": calib,
        "text_column": text_column,
        "lang": lang,
        "seed": seed,
        "preprocess": preprocess,
    }
    if rewrites is not None:
        settings["rewrites"] = rewrites
    if voices is not None:
        settings["voices"] = _split([voices])
    if speeds is not None:
        settings["speeds"] = _floats(speeds)
    config = pass_.build_config(settings)
    model_path = resolve_model(model)
    out = check_output_file(output, model_path, what="int8")

    with progress_bar() as report, tempfile.TemporaryDirectory(prefix="kokoro-opt-quant-") as tmp:
        ctx = PassContext(work_dir=Path(tmp), progress=report, threads=threads)
        manifest = apply_pass(pass_, config, model_path, out, ctx=ctx, command="quantize")
    details = manifest["details"]
    for pattern in details["unmatched_patterns"]:
        err_console.print(
            f"[yellow]warning:[/] pattern {pattern!r} matched no {'/'.join(config.ops)} node"
        )
    if json_output:
        console.print_json(json.dumps(manifest))
        return
    _render(manifest, model_path)


# ------------------------------------------------------------------------- helpers


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _floats(text: str) -> list[float]:
    from kokoro_opt.errors import UserInputError

    try:
        return [float(part) for part in _split([text])]
    except ValueError:
        raise UserInputError(
            f"--speeds must be comma-separated numbers such as 0.9,1.0,1.1; got {text!r}."
        ) from None


def _render(manifest: dict[str, Any], model_path: Path) -> None:
    from rich.table import Table

    details = manifest["details"]
    excluded_by_op: dict[str, int] = {}
    for op, n in details["candidates"].items():
        excluded_by_op[op] = n - details["quantized"].get(op, 0)
    table = Table(
        title=f"{model_path.name} -> {Path(manifest['output']).name}", title_justify="left"
    )
    table.add_column("op type")
    table.add_column("nodes", justify="right")
    table.add_column("quantized", justify="right")
    table.add_column("kept float", justify="right")
    table.add_column("int8 weights, float compute", justify="right")
    stored = details["int8_weights_float_compute"]
    for op in sorted(set(details["candidates"]) | set(stored)):
        n = details["candidates"].get(op, 0)
        quantized = details["quantized"].get(op, 0) if op in details["candidates"] else 0
        kept = excluded_by_op.get(op, 0)
        table.add_row(op, str(n or "-"), str(quantized), str(kept), str(stored.get(op, 0)))
    console.print(table)

    timings = details["timings"]
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    before, after = details["bytes_before"], manifest["output_bytes"]
    summary.add_row("Size", f"{mb(before)} -> {mb(after)} ({after / before:.0%})")
    rewrites = details.get("rewrites") or {}
    if rewrites:
        summary.add_row(
            "Rewrites", ", ".join(f"{n} {info['rewritten']}" for n, info in rewrites.items())
        )
    tables = details.get("lookup_tables") or {}
    if tables:
        summary.add_row(
            "Lookup tables",
            f"{tables['rewritten']} AdaIN + Snake chains ({tables['from_int8']} from INT8, "
            f"{tables['from_float']} from float inputs)",
        )
    cal = details["calibration"]
    summary.add_row(
        "Calibration",
        f"{cal['samples']} samples ({cal['phonemes']} phonemes) from {cal['corpus']}, "
        f"{manifest['settings']['method']}",
    )
    summary.add_row(
        "Time",
        f"{manifest['elapsed_s']:.1f} s (calibration {timings['calibrate_s']:.1f} s, "
        f"quantization {timings['quantize_s']:.1f} s)",
    )
    summary.add_row("Wrote", f"{manifest['output']} and {Path(manifest['output']).name}.json")
    console.print(summary)
