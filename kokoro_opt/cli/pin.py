"""`kokoro-opt pin analyze|apply|search`: hybrid INT8/FP16 layer pinning.

Thin: parse options, call `kokoro_opt.passes.pin` (groups, pinned builds) and
`kokoro_opt.trials.pin` (sensitivity analysis, accuracy-aware search) with a Rich progress
bar, render tables, write JSON. Every variant reuses one calibration, cached under
`<cache>/pin/ranges/` by model sha256 and calibration settings.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kokoro_opt.cli._artifacts import (
    check_output_file,
    check_writable_dir,
    mb,
    progress_bar,
    versions,
    write_json_atomic,
)
from kokoro_opt.cli.console import console, err_console
from kokoro_opt.measure.executors import EXECUTOR_HELP

app = typer.Typer(
    help="Keep the layers that INT8 hurts in FP32/FP16: analyze, apply, search.",
    no_args_is_help=True,
)

_MODEL_HELP = "A float32 model: a cache name (such as kokoro-fp32) or a path."
_SAMPLES_HELP = "Calibration inputs (sentence, voice, speed); the ranges are computed once."
_DEPTH_HELP = (
    "Group nodes by the first N components of their module path instead of the built-in "
    "Kokoro groups (generator/resblocks.3, generator/conv_post, bert ...)."
)
_THREADS_HELP = "Intra-op threads for every ONNX Runtime session (keep it at 2 on a shared box)."
_VOICE_HELP = "The voice the held-out sentences are read with."


def register(app_: typer.Typer) -> None:
    """Add the `pin` command group to the root app."""
    app_.add_typer(app, name="pin")


Samples = Annotated[int, typer.Option(help=_SAMPLES_HELP)]
Method = Annotated[
    str, typer.Option(help="How activation ranges are calibrated: minmax, entropy or percentile.")
]
Depth = Annotated[int | None, typer.Option(help=_DEPTH_HELP)]
Threads = Annotated[int, typer.Option(help=_THREADS_HELP)]
Voice = Annotated[str, typer.Option(help=_VOICE_HELP)]
ExecutorOption = Annotated[str, typer.Option("--executor", help=EXECUTOR_HELP)]
Ranges = Annotated[
    Path | None,
    typer.Option(
        help="Reuse this calibration cache (activation ranges JSON of every Conv/ConvTranspose/"
        "MatMul tensor of this model) instead of calibrating."
    ),
]


@app.command("analyze")
def analyze(
    model: Annotated[str, typer.Argument(help=_MODEL_HELP)],
    sentences: Annotated[
        int, typer.Option(help="Held-out sentences each variant speaks (more is slower).")
    ] = 4,
    all_but: Annotated[
        bool,
        typer.Option(
            "--all-but/--alone-only",
            help="Also measure each group kept float while every other group is quantized "
            "(twice the work).",
        ),
    ] = False,
    qdq_debug: Annotated[
        bool,
        typer.Option(
            "--qdq-debug/--no-qdq-debug",
            help="Add the per-tensor float-vs-QDQ error (onnxruntime qdq_loss_debug).",
        ),
    ] = True,
    group: Annotated[
        list[str] | None,
        typer.Option(help="Analyze only these groups (names or globs, repeatable)."),
    ] = None,
    depth: Depth = None,
    samples: Samples = 32,
    method: Method = "percentile",
    ranges: Ranges = None,
    voice: Voice = "jf_gongitsune",
    threads: Threads = 2,
    executor: ExecutorOption = "local",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of a table.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the JSON result here.")
    ] = None,
) -> None:
    """Rank the layer groups by the damage INT8 does to each, with their time share."""
    from kokoro_opt.measure.executors import check_executor, parse_executor
    from kokoro_opt.passes import pin as pin_pass
    from kokoro_opt.trials import pin as trial

    config = pin_pass.build_config({"depth": depth, "samples": samples, "method": method})
    model_path = _resolve(model)
    _check_threads(threads)
    check_executor(executor)
    if output is not None:
        output = output.expanduser().absolute()
        check_writable_dir(output.parent)
    with parse_executor(executor) as run, progress_bar() as report:
        prepared = trial.prepare(
            model_path,
            config,
            cache_folder=_cache(),
            threads=threads,
            ranges_path=ranges,
            progress=report,
        )
        names = pin_pass.resolve_groups(_split(group), prepared.groups) if group else None
        result = trial.analyze(
            prepared,
            sentences=sentences,
            voice=voice,
            all_but=all_but,
            qdq_debug=qdq_debug,
            groups=names,
            executor=run,
            progress=report,
        )
        result["executor"] = run.describe()
    result["command"] = ["kokoro-opt", *sys.argv[1:]]
    result["versions"] = versions()
    if output is not None:
        write_json_atomic(output, result)
    if json_output:
        console.print_json(json.dumps(result, default=_json_default))
        return
    _render_analysis(result)
    if output is not None:
        console.print(f"Wrote {output}")


@app.command("apply")
def apply(
    model: Annotated[str, typer.Argument(help=_MODEL_HELP)],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The .onnx file to write; OUT.json is written too."),
    ],
    keep: Annotated[
        list[str] | None,
        typer.Option(
            help="A group to keep out of INT8 (repeatable; names or globs such as "
            "'generator/resblocks.*'; see `pin analyze`)."
        ),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="Precision of the kept groups: fp32 or fp16.")
    ] = "fp32",
    keep_fp32: Annotated[
        list[str] | None,
        typer.Option(
            help="With --precision fp16: nodes of the kept groups that stay FP32 anyway "
            "(a glob on the node name, or a regular expression after 're:'; repeatable)."
        ),
    ] = None,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure",
            help="With --precision fp16 on CPU: time it against the same groups kept FP32.",
        ),
    ] = True,
    depth: Depth = None,
    samples: Samples = 32,
    method: Method = "percentile",
    ranges: Ranges = None,
    threads: Threads = 2,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON instead of a table.")
    ] = False,
) -> None:
    """Quantize MODEL to per-channel static INT8 except the kept groups (FP32 or FP16)."""
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.graph.io import load_model, save_model_atomic, sha256_file
    from kokoro_opt.passes import pin as pin_pass
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.passes.quantize_static import check_float_model
    from kokoro_opt.recipe.artifacts import apply_pass, pin_ranges

    if precision not in ("fp32", "fp16"):
        raise UserInputError(
            f"Unknown precision {precision!r}: use --precision fp32 (keep the groups float32) "
            "or --precision fp16 (convert them to float16)."
        )
    if keep_fp32 and precision != "fp16":
        raise UserInputError("--keep-fp32 only applies with --precision fp16.")
    config = pin_pass.build_config(
        {
            "keep": _split(keep or []),
            "precision": precision,
            "depth": depth,
            "samples": samples,
            "method": method,
            "keep_fp32": list(keep_fp32 or []),
        }
    )
    model_path = _resolve(model)
    _check_threads(threads)
    out = check_output_file(output, model_path, what="pinned")
    with err_console.status(f"Loading {model_path.name} ..."):
        source = load_model(model_path)
        check_float_model(source)
        groups = pin_pass.group_nodes(source, ops=config.ops, depth=config.depth)
        kept = pin_pass.resolve_groups(config.keep, groups)
        input_sha = sha256_file(model_path)
    if precision == "fp16":
        err_console.print(
            "[yellow]note:[/] onnxruntime's CPU provider has few FP16 kernels: it runs FP16 "
            "nodes through inserted casts, so FP16 groups are slower than FP32 here. FP16 is "
            "for GPU and CoreML targets; measuring the CPU cost anyway."
        )
    with progress_bar() as report, tempfile.TemporaryDirectory(prefix="kokoro-opt-pin-") as tmp:
        ctx = PassContext(work_dir=Path(tmp), progress=report, threads=threads)
        if ranges is not None:
            ranges, reused = pin_pass.check_ranges_file(ranges), True
        else:
            ranges, reused = pin_ranges(model_path, config, ctx, source_sha256=input_sha)
        manifest = apply_pass(
            pin_pass, config, model_path, out, ctx=ctx, command="pin apply",
            source_sha256=input_sha, run_options={"ranges_path": ranges},
        )  # fmt: skip
        fp16_timing = None
        if precision == "fp16" and measure and kept:
            fp32_config = config.model_copy(update={"precision": "fp32"})
            fp32_pinned = pin_pass.run(source, fp32_config, ctx, ranges_path=ranges)
            fp32_path = Path(tmp) / "fp32-pinned.onnx"
            save_model_atomic(fp32_pinned.model, fp32_path)
            del fp32_pinned
            fp16_timing = _fp16_cost(model_path, fp32_path, out, threads, report)
    manifest["calibration"] = {"ranges": str(ranges), "reused": reused}
    manifest["fp16_cpu_timing"] = fp16_timing
    write_json_atomic(out.with_name(out.name + ".json"), manifest)
    if json_output:
        console.print_json(json.dumps(manifest, default=_json_default))
        return
    _render_apply(manifest, groups)


@app.command("search")
def search(
    model: Annotated[str, typer.Argument(help=_MODEL_HELP)],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="A folder for pinned.onnx, search.json and the report (md, html, json).",
        ),
    ],
    max_wer_increase: Annotated[
        float | None,
        typer.Option(help="Largest WER increase over FP32 allowed, in percentage points."),
    ] = None,
    max_logmel: Annotated[
        float | None,
        typer.Option(help="Largest mean log-mel distance to FP32 allowed (such as 0.28)."),
    ] = None,
    max_logmel_of: Annotated[
        str | None,
        typer.Option(
            help="Set the log-mel limit to this model's distance to FP32 on the same sentences "
            "(such as kokoro-int8-export: 'no worse than the export')."
        ),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(help="Both limits in one: 'wer=+0.5,logmel=0.28' (either part optional)."),
    ] = None,
    sentences: Annotated[
        int, typer.Option(help="Held-out sentences every step is screened on.")
    ] = 12,
    confirm_sentences: Annotated[
        int | None,
        typer.Option(
            help="A step that meets the budget on the screening sentences is checked again "
            "on this many, and counts only if it holds there too (default: the whole held-out "
            "split; 0: no check)."
        ),
    ] = None,
    analysis: Annotated[
        Path | None,
        typer.Option(
            help="A `pin analyze -o` JSON of this model to take the order from (otherwise a "
            "quick analysis runs first)."
        ),
    ] = None,
    analysis_sentences: Annotated[
        int, typer.Option(help="Sentences for the quick analysis when no --analysis is given.")
    ] = 4,
    timing_runs: Annotated[
        int, typer.Option(help="Interleaved timing rounds per step (the chosen model gets 5+).")
    ] = 3,
    max_steps: Annotated[int, typer.Option(help="Stop after this many verified steps.")] = 40,
    depth: Depth = None,
    samples: Samples = 32,
    method: Method = "percentile",
    ranges: Ranges = None,
    voice: Voice = "jf_gongitsune",
    threads: Threads = 2,
    executor: ExecutorOption = "local",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of tables.")
    ] = False,
) -> None:
    """Find the fastest pinning that keeps the quality budget (greedy, verified end to end)."""
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.measure.executors import check_executor, parse_executor
    from kokoro_opt.passes import pin as pin_pass
    from kokoro_opt.trials import pin as trial

    check_executor(executor)
    limits = trial.parse_budget(budget) if budget else None
    if limits is not None and (max_wer_increase is not None or max_logmel is not None):
        raise UserInputError(
            "Give the budget either as --budget or as --max-wer-increase/--max-logmel, not both."
        )
    if limits is None:
        limits = trial.Budget(max_wer_increase=max_wer_increase, max_logmel=max_logmel)
    logmel_of = None
    if max_logmel_of is not None:
        if limits.max_logmel is not None:
            raise UserInputError(
                "Give the log-mel limit either as a number (--max-logmel, --budget logmel=) or "
                "as --max-logmel-of MODEL, not both."
            )
        logmel_of = _resolve(max_logmel_of)
    else:
        limits.check()
    if timing_runs < 1 or max_steps < 1:
        raise UserInputError("--timing-runs and --max-steps must be at least 1.")
    confirm = _confirm_count(confirm_sentences, sentences)
    config = pin_pass.build_config({"depth": depth, "samples": samples, "method": method})
    model_path = _resolve(model)
    _check_threads(threads)
    out_dir = output.expanduser().absolute()
    if out_dir.suffix == ".onnx" or (out_dir.exists() and not out_dir.is_dir()):
        raise UserInputError(
            f"--output {out_dir} must be a folder (pinned.onnx and the report go inside)."
        )
    check_writable_dir(out_dir)
    prior = _read_analysis(analysis) if analysis is not None else None
    start = time.perf_counter()
    with parse_executor(executor) as run, progress_bar() as report:
        prepared = trial.prepare(
            model_path,
            config,
            cache_folder=_cache(),
            threads=threads,
            ranges_path=ranges,
            progress=report,
        )
        order = shares = alone = None
        if prior is not None:
            if prior.get("model_sha256") != prepared.sha256:
                raise UserInputError(
                    f"--analysis {analysis} was made for another model (sha256 differs); run "
                    "`kokoro-opt pin analyze` on this model or leave --analysis out."
                )
            ranked = sorted(prior["groups"], key=lambda r: -float(r["sensitivity_per_time"]))
            order = [r["group"] for r in ranked if r["group"] in prepared.groups]
            order += [g for g in prepared.groups if g not in order]
            shares = {r["group"]: float(r["time_share"]) for r in prior["groups"]}
            alone = {r["group"]: float(r["logmel_alone"]) for r in prior["groups"]}
        found = trial.search(
            prepared,
            limits,
            sentences=sentences,
            voice=voice,
            order=order,
            shares=shares,
            alone=alone,
            analysis_sentences=analysis_sentences,
            timing_runs=timing_runs,
            max_steps=max_steps,
            logmel_of=logmel_of,
            confirm_sentences=confirm,
            out_dir=out_dir,
            executor=run,
            progress=report,
        )
        where = run.describe()
    result = found.to_dict()
    result["executor"] = where
    result["command"] = ["kokoro-opt", *sys.argv[1:]]
    result["versions"] = versions()
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    write_json_atomic(out_dir / "search.json", result)
    if result["output"]:
        write_json_atomic(
            out_dir / "pinned.onnx.json",
            {
                "command": "pin search",
                "input": str(model_path),
                "input_sha256": prepared.sha256,
                "pinned": result["pinned"],
                "budget": result["budget"],
                "settings": config.model_dump(),
                "calibration": {"ranges": str(prepared.ranges_path)},
                "versions": versions(),
            },
        )
    paths = trial.write_search_report(found, prepared, out_dir, command=result["command"])
    if json_output:
        console.print_json(json.dumps(result, default=_json_default))
    else:
        _render_search(result, paths)
    if result["chosen"] is None:
        raise typer.Exit(1)


# ------------------------------------------------------------------------- helpers


def _resolve(model: str) -> Path:
    from kokoro_opt.store import resolve_model

    return resolve_model(model)


def _cache() -> Path:
    from kokoro_opt.store import cache_dir

    return cache_dir() / "pin"


def _check_threads(threads: int) -> None:
    from kokoro_opt.errors import UserInputError

    if threads < 1:
        raise UserInputError(f"--threads must be at least 1, got {threads}.")


def _confirm_count(confirm_sentences: int | None, sentences: int) -> int:
    """--confirm-sentences resolved: None -> the held-out split's size; 0 -> no check."""
    from kokoro_opt.calib.corpus import load_texts
    from kokoro_opt.errors import UserInputError

    available = len(load_texts("heldout"))
    if confirm_sentences is None:
        return available if available > sentences else 0
    if confirm_sentences == 0:
        return 0
    if not sentences < confirm_sentences <= available:
        raise UserInputError(
            f"--confirm-sentences must be 0 (no check) or more than --sentences ({sentences}) "
            f"and at most {available} (the held-out split's size), got {confirm_sentences}."
        )
    return confirm_sentences


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _read_analysis(path: Path) -> dict[str, Any]:
    from kokoro_opt.errors import UserInputError

    try:
        data = json.loads(path.expanduser().read_text(encoding="utf-8"))
        rows = data["groups"]
        for row in rows:
            float(row["sensitivity_per_time"]), float(row["time_share"]), str(row["group"])
            float(row["logmel_alone"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserInputError(
            f"--analysis {path} is not a `kokoro-opt pin analyze -o` JSON file; write one with "
            "`kokoro-opt pin analyze MODEL -o analysis.json`."
        ) from None
    return data


def _fp16_cost(
    model_path: Path, fp32_pinned: Path, fp16_pinned: Path, threads: int, report: Any
) -> dict[str, Any]:
    """Interleaved latency of the FP16-pinned build vs the same groups kept FP32, on CPU."""
    import onnx

    from kokoro_opt.bench.ab import ab_latency
    from kokoro_opt.measure.reference import heldout_feeds
    from kokoro_opt.runtime.contract import ModelContract

    contract = ModelContract.from_onnx(onnx.load(str(model_path), load_external_data=False))
    _, feeds = heldout_feeds(contract, 1, voice="jf_gongitsune", lang="en-us")
    result = ab_latency(
        {"fp32-pinned": fp32_pinned, "fp16-pinned": fp16_pinned},
        feeds,
        runs=3,
        warmup=1,
        threads=threads,
        progress=report,
    )
    m = result["models"]
    return {
        "fp32_pinned_median_ms": round(m["fp32-pinned"]["median_ms"], 1),
        "fp16_pinned_median_ms": round(m["fp16-pinned"]["median_ms"], 1),
        "latency_ratio": round(m["fp16-pinned"]["paired_ratio"], 3),
        "runs": 3,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}f}"


def _render_analysis(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"Sensitivity of {Path(result['model']).name}: each group quantized alone, "
        f"log-mel distance to FP32 over {result['sentences']} held-out sentences",
        title_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("group")
    table.add_column("nodes", justify="right")
    table.add_column("time share", justify="right")
    table.add_column("log-mel alone", justify="right")
    all_but = any(r.get("logmel_all_but") is not None for r in result["groups"])
    if all_but:
        table.add_column("all but it", justify="right")
    table.add_column("weight SQNR dB", justify="right")
    table.add_column("act. SQNR dB", justify="right")
    table.add_column("per time", justify="right")
    for i, row in enumerate(result["groups"], 1):
        cells = [
            str(i),
            row["group"],
            str(row["nodes"]),
            f"{row['time_share'] * 100:.1f} %",
            _num(row["logmel_alone"]),
        ]
        if all_but:
            cells.append(_num(row.get("logmel_all_but")))
        cells += [
            _num(row.get("weight_sqnr_db"), 1),
            _num(row.get("activation_sqnr_db"), 1),
            _num(row["sensitivity_per_time"], 2),
        ]
        table.add_row(*cells)
    console.print(table)
    if result.get("all_quantized_logmel") is not None:
        console.print(
            f"Every group quantized: log-mel distance {_num(result['all_quantized_logmel'])}. "
            f"Calibration {'reused' if result['calibration']['reused'] else 'computed'}: "
            f"{result['calibration']['ranges']}. {result['elapsed_s']:.0f} s."
        )


def _render_apply(manifest: dict[str, Any], groups: dict[str, list[str]]) -> None:
    from rich.table import Table

    details = manifest["details"]
    table = Table(title=f"Pinned build -> {manifest['output']}", title_justify="left")
    table.add_column("group")
    table.add_column("nodes", justify="right")
    table.add_column("precision")
    kept = set(details["kept"])
    for group, names in groups.items():
        table.add_row(
            group, str(len(names)), details["precision"].upper() if group in kept else "INT8"
        )
    console.print(table)
    quantized = ", ".join(f"{n} {op}" for op, n in details["quantized"].items() if n)
    console.print(f"Quantized: {quantized or 'nothing'}; kept: {len(kept)} group(s).")
    console.print(
        f"Size: {mb(details['bytes_before'])} -> {mb(manifest['output_bytes'])}; "
        f"{manifest['elapsed_s']:.1f} s."
    )
    timing = manifest.get("fp16_cpu_timing")
    if timing:
        console.print(
            f"CPU latency, FP16 groups vs the same groups in FP32: "
            f"{timing['fp16_pinned_median_ms']:.0f} ms vs {timing['fp32_pinned_median_ms']:.0f} "
            f"ms (ratio {timing['latency_ratio']:.2f}x, interleaved, {timing['runs']} runs)."
        )


def _render_search(result: dict[str, Any], paths: dict[str, Path]) -> None:
    from rich.table import Table

    table = Table(
        title=f"Pinning search: {result['budget_text']} ({result['sentences']} held-out sentences)",
        title_justify="left",
    )
    table.add_column("step")
    table.add_column("action")
    table.add_column("pinned", justify="right")
    table.add_column("log-mel", justify="right")
    table.add_column("WER", justify="right")
    table.add_column("speed vs FP32", justify="right")
    table.add_column("meets")
    confirm = result.get("confirm")
    if confirm is not None:
        table.add_column(f"on {confirm['sentences']}: log-mel / WER")
    for step in result["steps"]:
        cells = [
            step["name"],
            step["action"],
            str(len(step["pinned"])),
            _num(step["logmel"]),
            _pct(step["wer"]),
            f"{step['speedup']:.2f}x",
            "[green]yes[/]" if step["meets"] else "[red]no[/]",
        ]
        if confirm is not None:
            checked = step.get("confirmation")
            cells.append(
                "-" if not checked else f"{_num(checked['logmel'])} / {_pct(checked['wer'])}"
            )
        table.add_row(*cells)
    console.print(table)
    if confirm is not None:
        console.print(
            f"Steps that met the budget on the first {result['sentences']} sentences were "
            f"checked on {confirm['sentences']}: {confirm['budget_text']}."
        )
    if result["chosen"] is None:
        err_console.print(
            "[bold red]No pinning met the budget[/] (even with the groups tried kept float). "
            "Loosen the budget or raise --max-steps."
        )
    else:
        final = result["final_speed"]
        console.print(
            f"Chosen {result['chosen']}: pinned {', '.join(result['pinned']) or 'nothing'}; "
            f"{final['speedup']:.2f}x FP32 ({final['pinned_median_ms']:.0f} vs "
            f"{final['fp32_median_ms']:.0f} ms, interleaved, {final['runs']} runs). Wrote "
            f"{result['output']}."
        )
    console.print(f"Report: {paths.get('report.html', paths)}")
