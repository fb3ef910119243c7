"""`kokoro-opt shapes bind MODEL --tokens 32,64,... -o OUTDIR`: one static model per bucket;
`kokoro-opt shapes bind SPLIT_DIR --window-frames 24 -o OUTDIR`: a split folder whose back
graphs take one window size.

Thin: parse options, run `kokoro_opt.passes.static_shapes` once per bucket with a progress bar,
save each model atomically with its `.json` manifest, write the `buckets.json` index the
runtime reads (`kokoro_opt.runtime.buckets`), optionally check the audio and time each bucket
against the dynamic model, print a table. For a split folder: `passes.static_window.bind_split`
(the same pass per back graph), its window check, optionally timed against the dynamic graphs.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kokoro_opt.cli._artifacts import (
    check_writable_dir,
    mb,
    progress_bar,
    write_json_atomic,
)
from kokoro_opt.cli.console import console, err_console

app = typer.Typer(help="Static shapes: bind token-length buckets for runtimes that want them.")

DEFAULT_TOKENS = "32,64,128,256,512"


@app.command("bind")
def bind(
    model: Annotated[
        str,
        typer.Argument(
            help="A dynamic-shape model (a cache name such as kokoro-fp32, or a path), or a split "
            "folder (kokoro-opt split) with --window-frames."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The folder for the bucket models and buckets.json, or for the bound split "
            "folder.",
        ),
    ],
    tokens: Annotated[
        str | None,
        typer.Option(
            help="Bucket lengths in tokens, pads included, comma-separated (3 to 512). "
            f"Default: {DEFAULT_TOKENS}."
        ),
    ] = None,
    window_frames: Annotated[
        int | None,
        typer.Option(
            help="For a split folder: bind back.onnx and generator.onnx to windows of this many "
            "frames (25 ms each, 1 to 2048), so every frame-level shape is static."
        ),
    ] = None,
    overlap: Annotated[
        int,
        typer.Option(help="With --window-frames: frames rendered twice at each join (0 to 64)."),
    ] = 1,
    length_mask: Annotated[
        str,
        typer.Option(
            help="Mask padding so a bucket renders the same audio as the dynamic model: auto "
            "(when the model's structure allows), on (require it) or off."
        ),
    ] = "auto",
    simplify: Annotated[
        bool,
        typer.Option("--simplify/--no-simplify", help="Fold what became constant with onnxsim."),
    ] = True,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Render the longest reference utterance that fits each bucket with the bucket "
            "and the dynamic model and compare the audio (for a split folder: one window of a "
            "reference utterance through the bound and the dynamic graph).",
        ),
    ] = True,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure",
            help="Time each bucket (or bound graph) against the dynamic one, interleaved, on "
            "that utterance (window).",
        ),
    ] = False,
    runs: Annotated[int, typer.Option(help="Timed runs per model for --measure.")] = 5,
    threads: Annotated[int, typer.Option(help="Intra-op threads for checking and timing.")] = 2,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON instead of a table.")
    ] = False,
) -> None:
    """Write one static-shape model per token bucket, plus the index the runtime reads."""
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.graph.io import sha256_file
    from kokoro_opt.passes import static_shapes
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.recipe.artifacts import apply_pass
    from kokoro_opt.runtime.buckets import Bucket, write_index
    from kokoro_opt.store import resolve_model

    if runs < 1:
        raise UserInputError(f"--runs must be at least 1, got {runs}.")
    split_dir = Path(model).expanduser()
    if split_dir.is_dir() and (split_dir / "split.json").is_file():
        if window_frames is None:
            raise UserInputError(
                f"{split_dir} is a split folder: give --window-frames (such as 24) to bind its "
                "back graphs to one window size."
            )
        if tokens is not None:
            raise UserInputError(
                "--tokens binds a whole model's token buckets; a split folder takes "
                "--window-frames only."
            )
        _bind_window(
            split_dir.absolute(), output, frames=window_frames, overlap=overlap,
            simplify=simplify, check=check, measure=measure, runs=runs, threads=threads,
            json_output=json_output,
        )  # fmt: skip
        return
    if window_frames is not None:
        raise UserInputError(
            f"--window-frames binds a split folder's back graphs, and {model} is not a split "
            "folder (no split.json): make one with `kokoro-opt split MODEL -o DIR`."
        )
    buckets = _parse_tokens(tokens or DEFAULT_TOKENS)
    if length_mask not in ("auto", "on", "off"):
        raise UserInputError(f"--length-mask must be auto, on or off; got {length_mask!r}.")
    model_path = resolve_model(model)
    folder = output.expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"Output {folder} is a file; give a folder for the bucket models.")
    check_writable_dir(folder)

    start = time.perf_counter()
    input_sha = sha256_file(model_path)
    rows: list[dict[str, Any]] = []
    made: list[Bucket] = []
    stem = model_path.name.removesuffix(".onnx")
    with progress_bar() as report, tempfile.TemporaryDirectory(prefix="kokoro-opt-shapes-") as tmp:
        ctx = PassContext(work_dir=Path(tmp), progress=report, threads=threads)
        for i, t in enumerate(buckets):
            report("binding buckets", i, len(buckets))
            config = static_shapes.Config(tokens=t, length_mask=length_mask, simplify=simplify)
            out = folder / f"{stem}.t{t}.onnx"
            manifest = apply_pass(
                static_shapes, config, model_path, out, ctx=ctx, command="shapes bind",
                source_sha256=input_sha,
            )  # fmt: skip
            masked = bool(manifest["details"]["length_mask"]["applied"])
            row: dict[str, Any] = {
                "tokens": t,
                "file": out.name,
                "bytes": manifest["output_bytes"],
                "length_mask": masked,
                "details": manifest["details"],
                "elapsed_s": manifest["elapsed_s"],
            }
            if check:
                row["audio_check"] = manifest["audio_check"] = _check(model_path, out, t, threads)
            if measure:
                row["latency"] = manifest["latency"] = _measure(
                    model_path, out, t, runs, threads, report
                )
            write_json_atomic(out.with_name(out.name + ".json"), manifest)
            made.append(Bucket(t, out, masked))
            rows.append(row)
        report("binding buckets", len(buckets), len(buckets))
    index = write_index(folder, made, source=str(model_path), source_sha256=input_sha)
    summary = {
        "command": "shapes bind",
        "input": str(model_path),
        "output": str(folder),
        "index": str(index),
        "elapsed_s": round(time.perf_counter() - start, 3),
        "buckets": rows,
    }
    if not all(r["length_mask"] for r in rows):
        err_console.print(
            "[yellow]warning:[/] these buckets have no length masking: padded inputs change the "
            "audio, and the runtime refuses them. Feed only inputs of exactly the bucket length."
        )
    if json_output:
        console.print_json(json.dumps(summary, default=str))
        return
    _render(summary, model_path)


def register(app_root: typer.Typer) -> None:
    """Add the `shapes` group to the root app."""
    app_root.add_typer(app, name="shapes")


# ------------------------------------------------------------------------- helpers


def _bind_window(
    source: Path,
    output: Path,
    *,
    frames: int,
    overlap: int,
    simplify: bool,
    check: bool,
    measure: bool,
    runs: int,
    threads: int,
    json_output: bool,
) -> None:
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.passes import static_window
    from kokoro_opt.passes.base import PassContext

    static_window.check_frames(frames)
    if not 0 <= overlap <= 64:
        raise UserInputError(f"--overlap takes 0 to 64 frames; got {overlap}.")
    folder = output.expanduser().absolute()
    if folder == source:
        raise UserInputError("The output folder is the split folder itself; give a new folder.")
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"Output {folder} is a file; give a folder for the bound split.")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "split.json").is_file():
        raise UserInputError(
            f"Output {folder} is a folder with other files in it; give a new folder or an "
            "earlier split folder to replace."
        )
    check_writable_dir(folder.parent)
    start = time.perf_counter()
    with progress_bar() as report, tempfile.TemporaryDirectory(prefix="kokoro-opt-shapes-") as tmp:
        ctx = PassContext(work_dir=Path(tmp), progress=report, threads=threads)
        result = static_window.bind_split(
            source, folder, frames=frames, overlap=overlap, simplify=simplify, check=check,
            ctx=ctx,
        )  # fmt: skip
        if measure:
            for graph, config in result.configs.items():
                result.graphs[graph]["latency"] = _measure_window(
                    source, folder, graph, config, runs, threads, report
                )
    summary = {
        "command": "shapes bind",
        "input": str(source),
        "output": str(folder),
        "window": result.window,
        "elapsed_s": round(time.perf_counter() - start, 3),
        "graphs": result.graphs,
    }
    write_json_atomic(folder / "shapes.json", summary)
    if json_output:
        console.print_json(json.dumps(summary, default=str))
        return
    _render_window(summary)


def _measure_window(
    source: Path, folder: Path, graph: str, config: Any, runs: int, threads: int, report: Any
) -> dict[str, Any]:
    """The dynamic and the bound graph, interleaved, on the same windows (ms summed over 3
    windows spread over a reference utterance)."""
    from kokoro_opt.bench.ab import ab_latency
    from kokoro_opt.passes.static_window import window_feeds

    feeds = window_feeds(source, graph, config, threads=threads)
    result = ab_latency(
        {"dynamic": source / graph, "bound": folder / graph},
        feeds,
        runs=runs,
        threads=threads,
        progress=lambda _task, done, total: report(f"timing {graph}", done, total),
    )
    dyn, bound = result["models"]["dynamic"], result["models"]["bound"]
    return {
        "runs": runs,
        "threads": threads,
        "windows": len(feeds),
        "span_frames": config.span,
        "dynamic_median_ms": dyn["median_ms"],
        "bound_median_ms": bound["median_ms"],
        "paired_ratio": bound["paired_ratio"],
    }


def _render_window(summary: dict[str, Any]) -> None:
    from rich.table import Table

    window = summary["window"]
    table = Table(
        title=f"{summary['input']} -> {summary['output']} ({window['frames']}-frame windows)",
        title_justify="left",
    )
    table.add_column("graph", no_wrap=True)
    table.add_column("span", justify="right")
    table.add_column("nodes", justify="right")
    table.add_column("static tensors", justify="right")
    table.add_column("output vs dynamic")
    table.add_column("speed vs dynamic", justify="right")
    for graph, d in summary["graphs"].items():
        check = d.get("check")
        if check is None:
            audio = "not checked"
        elif not check["same_length"]:
            audio = "[bold red]other length[/]"
        elif check["identical"]:
            audio = "identical"
        else:
            audio = f"max diff {check['max_abs_diff']:.1e} (SNR {check['snr_db']} dB)"
        lat = d.get("latency")
        table.add_row(
            graph,
            f"{d['span']} frames",
            f"{d['nodes_before']} -> {d['nodes_after']}",
            f"{d['static_tensors']} / {d['tensors']}",
            audio,
            f"{lat['paired_ratio']:.2f}x time" if lat else "-",
        )
    console.print(table)
    console.print(
        f"Wrote {summary['output']} ({summary['elapsed_s']:.1f} s)", soft_wrap=True, highlight=False
    )


def _parse_tokens(text: str) -> list[int]:
    from kokoro_opt.errors import UserInputError

    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise UserInputError(
                f"--tokens takes whole numbers such as 32,64,128; got {part!r}."
            ) from None
        if not 3 <= value <= 512:
            raise UserInputError(
                f"Bucket {value} is out of range: a bucket holds 3 to 512 tokens (the two pads "
                "included; Kokoro reads at most 510 phonemes)."
            )
        values.append(value)
    if not values:
        raise UserInputError("--tokens is empty: give bucket lengths such as 32,64,128,256,512.")
    return sorted(set(values))


def _fitting_phonemes(t: int) -> str:
    from kokoro_opt.passes.verify import PROBE_PHONEMES, REFERENCE_PHONEMES
    from kokoro_opt.runtime.tokenizer import tokenize

    fits = [p for p in REFERENCE_PHONEMES if len(tokenize(p)) + 2 <= t]
    return max(fits, key=lambda p: len(tokenize(p))) if fits else PROBE_PHONEMES


def _check(model_path: Path, out: Path, t: int, threads: int) -> dict[str, Any]:
    from kokoro_opt.measure.reference import compare_models
    from kokoro_opt.passes.verify import NOISE_FLOOR_LOGMEL, reference_feeds

    phonemes = [_fitting_phonemes(t)]
    result = compare_models(
        model_path,
        out,
        reference_feeds(model_path, phonemes=phonemes),
        test_feeds=reference_feeds(out, phonemes=phonemes),
        threads=threads,
    )
    result["within_noise"] = bool(
        result["same_lengths"] and result["max_logmel_distance"] <= NOISE_FLOOR_LOGMEL
    )
    return result


def _measure(
    model_path: Path, out: Path, t: int, runs: int, threads: int, report: Any
) -> dict[str, Any]:
    """Dynamic model on the natural-length input vs the bucket on the padded one."""
    from kokoro_opt.bench.ab import ab_latency
    from kokoro_opt.passes.verify import reference_feeds
    from kokoro_opt.runtime.tokenizer import tokenize

    phonemes = [_fitting_phonemes(t)]
    feeds = {
        "dynamic": reference_feeds(model_path, phonemes=phonemes),
        "bucket": reference_feeds(out, phonemes=phonemes),
    }
    result = ab_latency(
        {"dynamic": model_path, "bucket": out},
        feeds,
        runs=runs,
        threads=threads,
        progress=lambda _task, done, total: report(f"timing bucket {t}", done, total),
    )
    dyn, buck = result["models"]["dynamic"], result["models"]["bucket"]
    return {
        "runs": runs,
        "phonemes": len(tokenize(phonemes[0])),
        "dynamic_median_ms": dyn["median_ms"],
        "bucket_median_ms": buck["median_ms"],
        "paired_ratio": buck["paired_ratio"],
    }


def _render(summary: dict[str, Any], model_path: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{model_path.name} -> {summary['output']}", title_justify="left")
    table.add_column("tokens", justify="right")
    table.add_column("file", no_wrap=True)
    table.add_column("size", justify="right")
    table.add_column("nodes", justify="right")
    table.add_column("mask")
    table.add_column("audio vs dynamic")
    table.add_column("speed vs dynamic", justify="right")
    for row in summary["buckets"]:
        d = row["details"]
        audio = row.get("audio_check")
        if audio:
            verdict = "same" if audio["within_noise"] else "[yellow]differs[/]"
            audio_text = f"{verdict} (log-mel {audio['max_logmel_distance']:.3f})"
        else:
            audio_text = "not checked"
        lat = row.get("latency")
        speed = f"{lat['paired_ratio']:.2f}x time" if lat else "-"
        table.add_row(
            str(row["tokens"]),
            row["file"],
            mb(row["bytes"]),
            f"{d['nodes_before']} -> {d['nodes_after']}",
            "on" if row["length_mask"] else "[yellow]off[/]",
            audio_text,
            speed,
        )
    console.print(table)
    # soft_wrap: a path must stay one line (scripts and people copy it)
    console.print(f"Wrote {summary['index']} ({summary['elapsed_s']:.1f} s)", soft_wrap=True)
