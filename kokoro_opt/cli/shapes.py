"""`kokoro-opt shapes bind MODEL --tokens 32,64,... -o OUTDIR`: one static model per bucket.

Thin: parse options, run `kokoro_opt.passes.static_shapes` once per bucket with a progress bar,
save each model atomically with its `.json` manifest, write the `buckets.json` index the
runtime reads (`kokoro_opt.runtime.buckets`), optionally check the audio and time each bucket
against the dynamic model, print a table.
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
        typer.Argument(help="A dynamic-shape model: a cache name (such as kokoro-fp32) or a path."),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The folder for the bucket models and buckets.json."),
    ],
    tokens: Annotated[
        str,
        typer.Option(help="Bucket lengths in tokens, pads included, comma-separated (3 to 512)."),
    ] = DEFAULT_TOKENS,
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
            "and the dynamic model and compare the audio.",
        ),
    ] = True,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure",
            help="Time each bucket against the dynamic model, interleaved, on that utterance.",
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

    buckets = _parse_tokens(tokens)
    if length_mask not in ("auto", "on", "off"):
        raise UserInputError(f"--length-mask must be auto, on or off; got {length_mask!r}.")
    if runs < 1:
        raise UserInputError(f"--runs must be at least 1, got {runs}.")
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
