"""`kokoro-opt eval MODEL... --reference MODEL`: intelligibility (ASR WER/CER) and closeness to
a reference (DTW log-mel, MCD, duration, F0) of models speaking the same phonemes."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kokoro_opt.cli.console import console
from kokoro_opt.measure.executors import EXECUTOR_HELP

if TYPE_CHECKING:
    from kokoro_opt.bench.evaluate import EvalResult
    from kokoro_opt.bench.harness import BenchModel
    from kokoro_opt.report.schema import Report
    from kokoro_opt.runtime.markup import Lexicon

DEFAULT_MODELS = ["kokoro-int8-export"]
DEFAULT_REFERENCE = "kokoro-fp32"
# Same as kokoro_opt.runtime.voices.DEFAULT_VOICE; not imported so `--help` stays instant.
DEFAULT_VOICE = "jf_gongitsune"


def register(app: typer.Typer) -> None:
    """Add the `eval` command to the root app."""
    app.command("eval")(eval_models)


def eval_models(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to evaluate: cache names (such as kokoro-int8-export) or .onnx paths. "
            "Default: kokoro-int8-export.",
            show_default=False,
        ),
    ] = None,
    reference: Annotated[
        str,
        typer.Option(
            help="The model the others are compared with (a cache name or an .onnx path); it is "
            "evaluated too and listed first in the report."
        ),
    ] = DEFAULT_REFERENCE,
    texts: Annotated[
        str,
        typer.Option(
            help="The sentences: a built-in split (smoke: 6 sentences, heldout: 80) or a .txt "
            "file with one sentence per line."
        ),
    ] = "smoke",
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N sentences.", show_default=False)
    ] = None,
    voice: Annotated[
        str,
        typer.Option(
            help="The voice (or blend) every model speaks with; the ASR reads the default best."
        ),
    ] = DEFAULT_VOICE,
    speed: Annotated[float, typer.Option(help="Speaking rate from 0.5 to 2.0.")] = 1.0,
    lang: Annotated[str, typer.Option(help="The language of the texts, such as en-us.")] = "en-us",
    provider: Annotated[
        str, typer.Option(help="The ONNX Runtime provider: cpu, cuda, coreml or auto.")
    ] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(
            help="Intra-op threads for ONNX Runtime and the ASR; default: ORT's default for the "
            "models, 2 for the ASR.",
            show_default=False,
        ),
    ] = None,
    asr: Annotated[
        bool,
        typer.Option(
            "--asr/--no-asr",
            help="Transcribe every rendering with the offline ASR for WER/CER; --no-asr keeps "
            "only the distances to the reference (faster).",
        ),
    ] = True,
    executor: Annotated[str, typer.Option(help=EXECUTOR_HELP)] = "local",
    out: Annotated[
        Path | None,
        typer.Option(
            help="The run folder for report.json/md/html and wav/; an existing report.json in "
            "it is merged with (default: reports/eval-<time>).",
            show_default=False,
        ),
    ] = None,
    lexicon: Annotated[
        Path | None,
        typer.Option(
            help="A pronunciation file (word<TAB>phonemes per line) applied to every text.",
            show_default=False,
        ),
    ] = None,
    timestamps: Annotated[
        bool,
        typer.Option(
            "--timestamps",
            help="Instead of fidelity, check every model's word timestamps (the reference's too) "
            "against Whisper's word timestamps: median absolute boundary difference, and "
            "whether the words spell each text. Writes timestamps.json in the run folder.",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON instead of tables.")
    ] = False,
) -> None:
    """Compare models speaking the same phonemes: ASR WER/CER and distance to the reference."""
    from kokoro_opt.bench.evaluate import EvalConfig, evaluate
    from kokoro_opt.bench.reports import check_mergeable, eval_report
    from kokoro_opt.cli._artifacts import progress_bar
    from kokoro_opt.cli._evidence import (
        check_count,
        check_provider,
        describe,
        load_corpus,
        resolve_models,
        run_dir,
        write_run,
    )
    from kokoro_opt.measure.executors import check_executor, parse_executor
    from kokoro_opt.quality.asr import MODEL_NAME
    from kokoro_opt.report.meta import collect_run_meta
    from kokoro_opt.runtime.synthesizer import check_speed
    from kokoro_opt.runtime.voices import VoiceLibrary

    created = datetime.now(timezone.utc).astimezone()
    resolved_provider = check_provider(provider)
    check_count(threads, "--threads", minimum=1)
    check_executor(executor)
    check_speed(speed)
    VoiceLibrary.default().validate(voice)
    corpus = load_corpus(texts, limit)
    lex = _load_lexicon(lexicon)
    args = list(models or DEFAULT_MODELS)
    ref_model, *_ = resolve_models([reference])
    chosen = resolve_models(args)
    matching = [m for m in chosen if m.path.resolve() == ref_model.path.resolve()]
    if matching:
        ref_model = matching[0]
    else:
        chosen = resolve_models([reference, *args])
    folder = run_dir(out, "eval", created)
    if timestamps:
        _check_timestamps(
            chosen,
            corpus,
            folder,
            voice=voice,
            speed=speed,
            lang=lang,
            provider=resolved_provider,
            threads=threads,
            lexicon=lex,
            json_output=json_output,
        )
        return
    entries = describe(chosen)
    check_mergeable(folder, entries)

    config = EvalConfig(
        texts=corpus,
        reference=ref_model.name,
        voice=voice,
        speed=speed,
        lang=lang,
        provider=resolved_provider,
        threads=threads,
        asr=asr,
        asr_threads=threads or 2,
        wav_dir=folder / "wav",
        lexicon=lex,
    )
    with parse_executor(executor) as run, progress_bar() as report_progress:
        where = run.describe()
        result = evaluate(chosen, config, executor=run, progress=report_progress)
    meta = collect_run_meta(
        provider=resolved_provider,
        threads=threads,
        created=created,
        title=f"eval: {', '.join(m.name for m in chosen)} vs {ref_model.name}",
        voice=voice,
        lang=lang,
        speed=speed,
        texts=texts if limit is None else f"{texts} (first {limit})",
        asr_model=MODEL_NAME if asr else None,
        settings={
            "segments": "sentences up to 400 characters, no short first segment",
            "f0": True,
            "asr_threads": config.asr_threads,
            "executor": where,
        },
    )
    report, written = write_run(eval_report(result, entries, meta, run_dir=folder), folder)

    if json_output:
        console.print_json(json.dumps(_json(result, report, folder, written)))
        return
    _print_tables(result)
    console.print(
        f"Report: {written['report.html']} (and report.md, report.json); WAVs under "
        f"{folder / 'wav'}",
        highlight=False,
        soft_wrap=True,
    )


def _load_lexicon(path: Path | None) -> Lexicon | None:
    from kokoro_opt.runtime.markup import Lexicon

    return Lexicon.load(path) if path is not None else None


def _check_timestamps(
    models: list[BenchModel],
    corpus: list[str],
    folder: Path,
    *,
    voice: str,
    speed: float,
    lang: str,
    provider: str,
    threads: int | None,
    lexicon: Lexicon | None,
    json_output: bool,
) -> None:
    from rich.table import Table

    from kokoro_opt.bench.timestamps import TimestampConfig, check_timestamps
    from kokoro_opt.cli._artifacts import progress_bar, write_json_atomic

    config = TimestampConfig(
        texts=corpus,
        voice=voice,
        speed=speed,
        lang=lang,
        provider=provider,
        threads=threads,
        asr_threads=threads or 2,
        lexicon=lexicon,
    )
    with progress_bar() as report_progress:
        result = check_timestamps(models, config, progress=report_progress)
    path = write_json_atomic(folder / "timestamps.json", result.to_dict())
    if json_output:
        summary = {m.name: m.summary.to_dict() for m in result.models}
        console.print_json(json.dumps({"file": str(path), "models": summary}))
        return
    table = Table(
        title=f"Word timestamps vs Whisper over {len(corpus)} texts", title_justify="left"
    )
    for col in ("model", "words", "boundaries", "median |Δ|", "p90 |Δ|", "start bias",
                "end bias", "all words"):  # fmt: skip
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in result.models:
        s = m.summary
        table.add_row(
            m.name,
            str(s.words),
            str(s.boundaries),
            f"{s.median_abs_ms:.0f} ms",
            f"{s.p90_abs_ms:.0f} ms",
            f"{s.median_start_bias_ms:+.0f} ms",
            f"{s.median_end_bias_ms:+.0f} ms",
            f"{s.complete_sentences}/{s.sentences}",
        )
    console.print(table)
    console.print(f"Details: {path}", highlight=False, soft_wrap=True)


def _json(
    result: EvalResult, report: Report, folder: Path, written: dict[str, Path]
) -> dict[str, object]:
    names = {m.name for m in result.models}
    return {
        "run_dir": str(folder),
        "files": {k: str(v) for k, v in written.items()},
        "reference": result.reference,
        "texts": len(result.texts),
        "asr": result.asr.to_dict() if result.asr else None,
        "models": [
            m.model_dump(mode="json", exclude={"speed"}) for m in report.models if m.name in names
        ],
    }


def _print_tables(result: EvalResult) -> None:
    from rich.table import Table

    from kokoro_opt.cli._evidence import fmt

    table = Table(
        title=f"Fidelity over {len(result.texts)} texts (reference: {result.reference})",
        title_justify="left",
    )
    for col in ("model", "WER", "CER", "log-mel", "MCD dB", "duration", "F0 cents", "voicing"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in sorted(result.models, key=lambda x: not x.is_reference):
        s = m.summary()
        table.add_row(
            m.name + (" (reference)" if m.is_reference else ""),
            fmt(s["wer"], ".1f", 100, " %"),
            fmt(s["cer"], ".1f", 100, " %"),
            fmt(s.get("logmel_distance")),
            fmt(s.get("mcd_db"), ".2f"),
            fmt(s.get("duration_ratio")),
            fmt(s.get("f0_rmse_cents"), ".0f"),
            fmt(s.get("voicing_error"), ".1f", 100, " %"),
        )
    console.print(table)

    rows = Table(
        title="Per utterance (WER; log-mel distance to the reference)", title_justify="left"
    )
    rows.add_column("#", justify="right")
    rows.add_column("text", ratio=1, overflow="ellipsis", no_wrap=True)
    ordered = sorted(result.models, key=lambda x: not x.is_reference)
    for m in ordered:
        rows.add_column(f"{m.name} WER", justify="right")
        if not m.is_reference:
            rows.add_column(f"{m.name} log-mel", justify="right")
    for i, text in enumerate(result.texts):
        cells = [str(i + 1), text]
        for m in ordered:
            cells.append(fmt(m.errors.utterances[i].wer if m.errors else None, ".0f", 100, " %"))
            if not m.is_reference:
                cells.append(fmt(m.distances[i].logmel_distance if m.distances else None))
        rows.add_row(*cells)
    console.print(rows)

    if result.asr is not None:
        a = result.asr
        console.print(
            f"ASR {a.model}: loaded in {a.load_s:.2f} s; {a.audio_s:.1f} s of audio in "
            f"{a.asr_s:.1f} s = {fmt(a.audio_s_per_s, '.1f')} s of audio per second "
            f"({a.threads} threads).",
            highlight=False,
            soft_wrap=True,
        )
