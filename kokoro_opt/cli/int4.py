"""`kokoro-opt int4 MODEL -o OUT`: 4-bit weights (MatMulNBits, int4 DequantizeLinear for Conv and
LSTM); `--trial` builds a matrix of configs, measures each against FP32 and recommends one.

Thin: parse options, build `kokoro_opt.passes.int4.Config` (or the trial settings), run with a
Rich progress bar, save atomically with `OUT.json` beside it, print a table.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from kokoro_opt.cli.console import console, err_console
from kokoro_opt.measure.executors import EXECUTOR_HELP

_MANIFEST_PACKAGES = ("kokoro-opt", "onnx", "onnxruntime", "onnx-ir", "numpy", "misaki")


def register(app: typer.Typer) -> None:
    """Add the `int4` command to the root app."""
    app.command("int4")(int4)


def int4(
    model: Annotated[
        str,
        typer.Argument(help="A float32 model: a cache name (such as kokoro-fp32) or a path."),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The .onnx file to write (OUT.json is written beside it); with --trial, the "
            "folder for the trial's models and report.",
        ),
    ],
    algo: Annotated[
        str,
        typer.Option(
            help="How weights are rounded: rtn (round to nearest), hqq (data-free zero-point "
            "fit) or gptq (data-aware, calibrated on the train sentences)."
        ),
    ] = "rtn",
    block_size: Annotated[
        int, typer.Option(help="Weights per scale along the input axis: 32, 64 or 128.")
    ] = 32,
    symmetric: Annotated[
        bool,
        typer.Option(
            "--symmetric/--asymmetric",
            help="Signed int4 with no zero point, or unsigned int4 with a zero point per block.",
        ),
    ] = False,
    accuracy_level: Annotated[
        int,
        typer.Option(
            help="MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 (fastest "
            "on CPUs with VNNI)."
        ),
    ] = 0,
    matmul: Annotated[
        bool, typer.Option("--matmul/--no-matmul", help="Quantize MatMul weights (MatMulNBits).")
    ] = True,
    gather: Annotated[
        bool,
        typer.Option(
            "--gather/--no-gather", help="Quantize embedding tables (GatherBlockQuantized)."
        ),
    ] = False,
    conv: Annotated[
        bool,
        typer.Option(
            "--conv/--no-conv",
            help="Store Conv and ConvTranspose weights as int4 behind DequantizeLinear (opset "
            "21); 71 % of Kokoro's parameters.",
        ),
    ] = False,
    lstm: Annotated[
        bool,
        typer.Option(
            "--lstm/--no-lstm", help="Store LSTM weights as int4 behind DequantizeLinear."
        ),
    ] = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            help="Keep weights float when a node reading them matches this glob (or re:regex); "
            "repeat or separate with commas."
        ),
    ] = None,
    min_elements: Annotated[
        int, typer.Option(help="Weights with fewer values than this stay float.")
    ] = 4096,
    samples: Annotated[
        int, typer.Option(help="Calibration inputs for --algo gptq (sentence, voice, speed).")
    ] = 32,
    calib: Annotated[
        str,
        typer.Option(help="Calibration corpus for --algo gptq: 'train' or a corpus file."),
    ] = "train",
    threads: Annotated[
        int | None, typer.Option(help="Intra-op threads for calibration and measuring.")
    ] = None,
    trial: Annotated[
        bool,
        typer.Option(
            "--trial",
            help="Build the matrix of configs into the OUTPUT folder, measure size, speed and "
            "fidelity of each against MODEL, and write a report with a recommendation.",
        ),
    ] = False,
    variants: Annotated[
        list[str] | None,
        typer.Option(help="With --trial: only these variants of the matrix (names, commas)."),
    ] = None,
    sentences: Annotated[
        int, typer.Option(help="With --trial: held-out sentences for fidelity and WER (1-80).")
    ] = 40,
    timing_texts: Annotated[
        int, typer.Option(help="With --trial: sentences timed (short to long).")
    ] = 3,
    timing_rounds: Annotated[
        int, typer.Option(help="With --trial: interleaved timing rounds per sentence.")
    ] = 3,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            help="With --trial: also measure NAME=MODEL (a cache name or path) for context, "
            "such as int8=kokoro-int8-export."
        ),
    ] = None,
    wer: Annotated[
        bool,
        typer.Option("--wer/--no-wer", help="With --trial: measure WER with the offline ASR."),
    ] = True,
    executor: Annotated[str, typer.Option(help="With --trial: " + EXECUTOR_HELP)] = "local",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of tables.")
    ] = False,
) -> None:
    """Quantize MODEL's weights to 4 bits, or run the INT4 trial with --trial."""
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.store import resolve_model

    if threads is not None and threads < 1:
        raise UserInputError(
            f"--threads must be at least 1, got {threads}; leave it out for onnxruntime's default."
        )
    model_path = resolve_model(model)
    if trial:
        _trial(
            model_path,
            output,
            variants=_split(variants or []),
            sentences=sentences,
            timing_texts=timing_texts,
            timing_rounds=timing_rounds,
            compare=compare or [],
            wer=wer,
            threads=threads or 2,
            executor=executor,
            json_output=json_output,
        )
        return
    config = _config(
        algo=algo,
        block_size=block_size,
        symmetric=symmetric,
        accuracy_level=accuracy_level,
        matmul=matmul,
        gather=gather,
        conv=conv,
        lstm=lstm,
        exclude=_split(exclude or []),
        min_elements=min_elements,
        samples=samples,
        calib=calib,
    )
    out = _check_output(output, model_path)

    from kokoro_opt.passes import int4 as int4_pass
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.recipe.artifacts import apply_pass

    with _progress() as report:
        ctx = PassContext(work_dir=out.parent, progress=report, threads=threads)
        manifest = apply_pass(
            int4_pass, config, model_path, out, ctx=ctx, command="int4", packages=_MANIFEST_PACKAGES
        )
    details = manifest["details"]
    for pattern in details["unmatched_patterns"]:
        err_console.print(f"[yellow]warning:[/] exclude pattern {pattern!r} matched no node")
    if json_output:
        console.print_json(json.dumps(manifest, default=str))
        return
    _render(manifest, model_path)


# ------------------------------------------------------------------------- the trial


def _trial(
    model_path: Path,
    output: Path,
    *,
    variants: list[str],
    sentences: int,
    timing_texts: int,
    timing_rounds: int,
    compare: list[str],
    wer: bool,
    threads: int,
    executor: str,
    json_output: bool,
) -> None:
    import sys

    from kokoro_opt.errors import UserInputError
    from kokoro_opt.measure.executors import check_executor, parse_executor
    from kokoro_opt.store import resolve_model
    from kokoro_opt.trials.int4 import TrialSettings, check_plan, parse_variants, run_trial

    out_dir = output.expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(
            f"With --trial, --output is a folder for the trial; {out_dir} is a file. Give a "
            "folder such as reports/int4-trial."
        )
    extra: dict[str, Path] = {}
    for item in compare:
        name, sep, ref = item.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise UserInputError(
                f"--compare takes NAME=MODEL (such as int8=kokoro-int8-export), got {item!r}."
            )
        if name.strip() in extra:
            raise UserInputError(
                f"--compare names must be unique; {name.strip()!r} is given twice. Name each "
                "model once, such as int8=kokoro-int8-export."
            )
        extra[name.strip()] = resolve_model(ref.strip())
    chosen = parse_variants(variants)
    settings = TrialSettings(
        sentences=sentences,
        timing_texts=timing_texts,
        timing_rounds=timing_rounds,
        threads=threads,
        wer=wer,
        compare=extra,
    )
    check_plan(chosen, settings)
    check_executor(executor)
    with parse_executor(executor) as run, _progress() as report:
        result = run_trial(
            model_path,
            out_dir,
            variants=chosen,
            settings=settings,
            progress=report,
            command=["kokoro-opt", *sys.argv[1:]],
            executor=run,
        )
    rec = result["recommendation"]
    if json_output:
        console.print_json(
            json.dumps({"recommendation": rec, "report": str(result["paths"]["report.json"])})
        )
        return
    from rich.table import Table

    report_obj = result["report"]
    ref = report_obj.models[0]
    table = Table(title="INT4 trial (vs FP32)", title_justify="left")
    for col, just in (
        ("model", "left"),
        ("size", "right"),
        ("WER", "right"),
        ("log-mel", "right"),
        ("speed runtime", "right"),
        ("speed folded", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in report_obj.models:
        if m.name.endswith("+fold"):
            continue
        q = m.quality
        runtime = report_obj.comparison(m.name)
        folded = report_obj.comparison(f"{m.name}+fold")
        mark = " *" if m.name == rec["chosen"] else ""
        table.add_row(
            m.name + mark,
            f"{m.size_bytes / 1e6:.1f} MB",
            "n/a" if q is None or q.wer is None else f"{q.wer * 100:.1f} %",
            "-" if q is None or q.logmel_distance is None else f"{q.logmel_distance:.3f}",
            "-" if runtime is None else f"{runtime.speedup:.2f}x",
            "-" if folded is None else f"{folded.speedup:.2f}x",
        )
    console.print(table)
    for note in report_obj.notes:
        console.print(f"- {note}")
    console.print(f"Reference {ref.name}: {ref.path}. Wrote {result['paths']['report.md']}.")


# ------------------------------------------------------------------------- helpers


def _config(**settings: Any) -> Any:
    """The pass Config; pydantic's messages become one UserInputError line."""
    from pydantic import ValidationError

    from kokoro_opt.errors import UserInputError
    from kokoro_opt.passes.int4 import Config

    try:
        return Config(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        where = f" --{field.replace('_', '-')}" if field else ""
        raise UserInputError(f"Invalid option{where}: {message}.") from None


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _check_output(output: Path, model_path: Path) -> Path:
    """The output path, checked before any work: a file in a writable folder, not the input."""
    from kokoro_opt.errors import UserInputError

    out = output.expanduser().absolute()
    if out.is_dir():
        raise UserInputError(f"Output {out} is a folder; give a file path such as {out}/q4.onnx.")
    if out.suffix != ".onnx":
        raise UserInputError(f"Output {out} must end in .onnx; give a path such as q4.onnx.")
    if out.exists() and out.resolve() == model_path.resolve():
        raise UserInputError(
            f"Output {out} is the input model; write the quantized model to another path."
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserInputError(
            f"Cannot write {out}: {exc.strerror or exc}. Choose an output path in a writable "
            "folder."
        ) from None
    return out


def _progress() -> Any:
    from contextlib import contextmanager

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    @contextmanager
    def bar() -> Any:
        if not err_console.is_terminal:
            # Rich draws a non-terminal's bar once at the end, which leaves a stray line before
            # an error; logs and pipes get no bar.
            yield lambda task, completed, total: None
            return
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

    return bar()


def _render(manifest: dict[str, Any], model_path: Path) -> None:
    from rich.table import Table

    details = manifest["details"]
    table = Table(
        title=f"{model_path.name} -> {Path(manifest['output']).name}", title_justify="left"
    )
    table.add_column("quantized as")
    table.add_column("nodes", justify="right")
    for what, n in details["quantized"].items():
        table.add_row(what, str(n))
    table.add_row("weights kept float", str(len(details["kept_float"])))
    console.print(table)
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    before, after = manifest["input_bytes"], manifest["output_bytes"]
    summary.add_row("Size", f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB ({after / before:.0%})")
    share = details["parameters_quantized"] / max(details["parameters_total"], 1)
    summary.add_row("Parameters", f"{share:.1%} in 4 bits")
    err = details["weight_error"]
    if err.get("weights"):
        summary.add_row(
            "Weight error",
            f"mean {err['mean_relative_rms']:.3f}, max {err['max_relative_rms']:.3f} (relative "
            "RMS; GPTQ trades weight error for output error)",
        )
    if details["calibration"]:
        cal = details["calibration"]
        fallback = len(details["gptq_rtn_fallback"])
        summary.add_row(
            "Calibration",
            f"{cal['samples']} samples ({cal['phonemes']} phonemes) from {cal['corpus']}; "
            f"{fallback} weight(s) with too few inputs used RTN",
        )
    if details["session_config"]:
        cfg = ", ".join(f"{k}={v}" for k, v in details["session_config"].items())
        summary.add_row("Tip", f"session config {cfg} dequantizes once at load (FP32 speed)")
    summary.add_row("Time", f"{manifest['elapsed_s']:.1f} s")
    summary.add_row("Wrote", f"{manifest['output']} and {Path(manifest['output']).name}.json")
    console.print(summary)
