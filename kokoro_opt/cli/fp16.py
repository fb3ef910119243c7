"""`kokoro-opt fp16 MODEL -o OUT`: full FP16 for GPU and CoreML, hazardous nodes kept FP32.

Thin: parse options, run `kokoro_opt.passes.fp16`, check the result with onnx.checker and
(unless --no-check-audio) speak a few held-out sentences on CPU against the float32 model
(NaN/inf check and log-mel distance), save atomically with `OUT.json` beside it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kokoro_opt.cli._artifacts import (
    check_output_file,
    mb,
    progress_bar,
    write_json_atomic,
)
from kokoro_opt.cli.console import console, err_console


def register(app: typer.Typer) -> None:
    """Add the `fp16` command to the root app."""
    app.command("fp16")(fp16)


def fp16(
    model: Annotated[
        str,
        typer.Argument(help="A float32 model: a cache name (such as kokoro-fp32) or a path."),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The .onnx file to write; OUT.json is written too."),
    ],
    keep_fp32: Annotated[
        list[str] | None,
        typer.Option(
            help="Keep nodes whose name matches this pattern in FP32 (repeatable): a glob on "
            "the whole name, or a regular expression after 're:'. Added to the built-in list "
            "(harmonic source, STFT and its phase, iSTFT)."
        ),
    ] = None,
    keep_fp32_op: Annotated[
        list[str] | None,
        typer.Option(help="Keep every node of this op type in FP32 (repeatable)."),
    ] = None,
    default_keep: Annotated[
        bool,
        typer.Option(
            "--default-keep/--no-default-keep",
            help="Start from the built-in FP32 list (recommended) or from nothing but the "
            "hazard ops (CumSum, STFT, Range ...).",
        ),
    ] = True,
    check_audio: Annotated[
        bool,
        typer.Option(
            "--check-audio/--no-check-audio",
            help="Speak held-out sentences with both models on CPU: NaN check and distance.",
        ),
    ] = True,
    sentences: Annotated[int, typer.Option(help="Held-out sentences for the audio check.")] = 4,
    threads: Annotated[
        int, typer.Option(help="Intra-op threads for the audio check's sessions.")
    ] = 2,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON instead of a summary.")
    ] = False,
) -> None:
    """Convert MODEL to FP16 (weights and compute), keeping I/O float32 and hazards FP32."""
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.passes import fp16 as pass_
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.recipe.artifacts import apply_pass
    from kokoro_opt.store import resolve_model

    if threads < 1 or sentences < 1:
        raise UserInputError("--threads and --sentences must be at least 1.")
    patterns = (list(pass_.DEFAULT_KEEP_FP32) if default_keep else []) + list(keep_fp32 or [])
    config = pass_.build_config({"keep_fp32": patterns, "keep_fp32_ops": list(keep_fp32_op or [])})
    model_path = resolve_model(model)
    out = check_output_file(output, model_path, what="fp16")
    with progress_bar() as report, tempfile.TemporaryDirectory(prefix="kokoro-opt-fp16-") as tmp:
        ctx = PassContext(work_dir=Path(tmp), progress=report, threads=threads)
        manifest = apply_pass(pass_, config, model_path, out, ctx=ctx, command="fp16")
        _checked(out)
        manifest["checker"] = "passed"
        audio = _audio_check(model_path, out, sentences, threads, report) if check_audio else None
        manifest["audio_check"] = audio
    write_json_atomic(out.with_name(out.name + ".json"), manifest)
    for pattern in manifest["details"]["unmatched_patterns"]:
        err_console.print(f"[yellow]warning:[/] --keep-fp32 pattern {pattern!r} matched no node")
    if json_output:
        console.print_json(json.dumps(manifest, default=str))
    else:
        _render(manifest)
    if audio is not None and audio["nonfinite_sentences"]:
        err_console.print(
            f"[bold red]error:[/] the FP16 model produced NaN or infinite audio on "
            f"{audio['nonfinite_sentences']} of {audio['sentences']} sentences; keep more nodes "
            "in FP32 with --keep-fp32."
        )
        raise typer.Exit(1)


def _checked(out: Path) -> None:
    """onnx.checker on the written model; a model that fails it is removed with its manifest."""
    import onnx

    try:
        onnx.checker.check_model(str(out))
    except onnx.checker.ValidationError:
        out.unlink(missing_ok=True)
        out.with_name(out.name + ".json").unlink(missing_ok=True)
        raise


def _audio_check(
    reference: Path, fp16_path: Path, sentences: int, threads: int, report: Any
) -> dict[str, Any]:
    """Speak held-out sentences with both models: non-finite audio and log-mel distance."""
    import numpy as np
    import onnx

    from kokoro_opt.measure.reference import heldout_feeds, logmel_distances, speak_model
    from kokoro_opt.runtime.contract import ModelContract

    contract = ModelContract.from_onnx(onnx.load(str(reference), load_external_data=False))
    _, feeds = heldout_feeds(
        contract, sentences, voice="jf_gongitsune", lang="en-us", progress=report
    )
    t0 = time.perf_counter()
    ref = speak_model(reference, feeds, threads=threads, progress=report, label="Speaking (FP32)")
    t1 = time.perf_counter()
    half = speak_model(fp16_path, feeds, threads=threads, progress=report, label="Speaking (FP16)")
    t2 = time.perf_counter()
    nonfinite = sum(1 for a in half if a.size == 0 or not np.isfinite(a).all())
    dists = logmel_distances(half, ref)
    finite = [d for d in dists if np.isfinite(d)]
    return {
        "sentences": len(feeds),
        "nonfinite_sentences": nonfinite,
        "logmel_distance": float(np.mean(finite)) if finite else None,
        "per_sentence": [round(d, 4) if np.isfinite(d) else None for d in dists],
        "fp32_s": round(t1 - t0, 2),
        "fp16_cpu_s": round(t2 - t1, 2),
    }


def _render(manifest: dict[str, Any]) -> None:
    details = manifest["details"]
    console.print(
        f"FP16: {details['converted_nodes']} nodes converted, {details['blocked_nodes']} kept "
        f"FP32, {details['casts_added']} casts added; {mb(details['bytes_before'])} -> "
        f"{mb(manifest['output_bytes'])}; onnx.checker passed."
    )
    audio = manifest["audio_check"]
    if audio is not None:
        dist = audio["logmel_distance"]
        console.print(
            f"Audio on CPU over {audio['sentences']} held-out sentences: "
            f"{audio['nonfinite_sentences']} with NaN/inf; log-mel distance to FP32 "
            f"{'n/a' if dist is None else f'{dist:.3f}'}; FP16 took {audio['fp16_cpu_s']:.1f} s "
            f"vs FP32 {audio['fp32_s']:.1f} s (CPU runs FP16 through casts: slow here, meant "
            "for GPU/CoreML)."
        )
    console.print(f"Wrote {manifest['output']} and {Path(manifest['output']).name}.json")
