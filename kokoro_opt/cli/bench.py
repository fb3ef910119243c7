"""`kokoro-opt bench MODEL...`: load time, latency, RTF, time to first audio, CPU time and peak
memory of models on the runtime, interleaved A B A B, with speedups against the first model;
or, with `--server URL`, a load test of a running `kokoro-opt serve`."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kokoro_opt.cli.console import console

if TYPE_CHECKING:
    from kokoro_opt.bench.harness import ModelBench
    from kokoro_opt.report.schema import Report

DEFAULT_MODELS = ["kokoro-fp32", "kokoro-int8-export"]
# Same as kokoro_opt.runtime.voices.DEFAULT_VOICE; not imported so `--help` stays instant.
DEFAULT_VOICE = "jf_gongitsune"
SERVER_FILE = "server-load.json"


def register(app: typer.Typer) -> None:
    """Add the `bench` command to the root app."""
    app.command("bench")(bench)


def bench(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to measure: cache names or .onnx paths; the first is the baseline of "
            "the speedup ratios. Default: kokoro-fp32 kokoro-int8-export.",
            show_default=False,
        ),
    ] = None,
    provider: Annotated[
        str,
        typer.Option(
            help="The ONNX Runtime provider: cpu, cuda, coreml or auto (the best this build has)."
        ),
    ] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(
            help="Intra-op threads per session; default: ONNX Runtime's (one per core).",
            show_default=False,
        ),
    ] = None,
    runs: Annotated[int, typer.Option(help="Measured runs over the texts.")] = 5,
    warmup: Annotated[int, typer.Option(help="Unmeasured warm-up runs before them.")] = 1,
    concurrency: Annotated[
        int,
        typer.Option(
            help="Also run N parallel streams on one session (each speaks every text once), or "
            "N concurrent clients with --server."
        ),
    ] = 1,
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
    voice: Annotated[str, typer.Option(help="The voice (or blend) to speak with.")] = DEFAULT_VOICE,
    speed: Annotated[float, typer.Option(help="Speaking rate from 0.5 to 2.0.")] = 1.0,
    lang: Annotated[str, typer.Option(help="The language of the texts, such as en-us.")] = "en-us",
    memory: Annotated[
        bool,
        typer.Option(
            "--memory/--no-memory",
            help="Measure each model's peak RSS in a fresh child process (a few seconds each).",
        ),
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option(
            help="The run folder for report.json/md/html; an existing report.json in it is "
            "merged with (default: reports/bench-<time>).",
            show_default=False,
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            help="Instead of loading models, drive the kokoro-opt server at this URL (such as "
            "http://127.0.0.1:8880) with --concurrency clients for --duration seconds.",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        float, typer.Option(help="Seconds to drive the server for (with --server).")
    ] = 30.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON instead of tables.")
    ] = False,
) -> None:
    """Measure speed and memory of models, interleaved, with speedups against the first."""
    from kokoro_opt.cli._evidence import check_count, check_provider

    created = datetime.now(timezone.utc).astimezone()
    if server is not None:
        _drive_server(
            server,
            models=models,
            concurrency=concurrency,
            duration=duration,
            texts=texts,
            limit=limit,
            voice=voice,
            speed=speed,
            out=out,
            created=created,
            json_output=json_output,
        )
        return
    resolved_provider = check_provider(provider)  # before anything is loaded
    check_count(threads, "--threads", minimum=1)
    check_count(runs, "--runs", minimum=1)
    check_count(warmup, "--warmup", minimum=0)
    check_count(concurrency, "--concurrency", minimum=1)
    _run_local(
        models or DEFAULT_MODELS,
        provider=resolved_provider,
        threads=threads,
        runs=runs,
        warmup=warmup,
        concurrency=concurrency,
        texts=texts,
        limit=limit,
        voice=voice,
        speed=speed,
        lang=lang,
        memory=memory,
        out=out,
        created=created,
        json_output=json_output,
    )


def _run_local(
    model_args: list[str],
    *,
    provider: str,
    threads: int | None,
    runs: int,
    warmup: int,
    concurrency: int,
    texts: str,
    limit: int | None,
    voice: str,
    speed: float,
    lang: str,
    memory: bool,
    out: Path | None,
    created: datetime,
    json_output: bool,
) -> None:
    from kokoro_opt.bench.harness import BenchConfig, run_bench, speedups
    from kokoro_opt.bench.reports import bench_report, check_mergeable
    from kokoro_opt.cli._artifacts import progress_bar
    from kokoro_opt.cli._evidence import describe, load_corpus, resolve_models, run_dir, write_run
    from kokoro_opt.report.meta import collect_run_meta
    from kokoro_opt.runtime.g2p import normalize_lang
    from kokoro_opt.runtime.synthesizer import check_speed
    from kokoro_opt.runtime.voices import VoiceLibrary

    check_speed(speed)
    normalize_lang(lang)
    VoiceLibrary.default().validate(voice)
    corpus = load_corpus(texts, limit)
    chosen = resolve_models(model_args)
    config = BenchConfig(
        texts=corpus,
        voice=voice,
        speed=speed,
        lang=lang,
        provider=provider,
        threads=threads,
        runs=runs,
        warmup=warmup,
        concurrency=concurrency,
        measure_memory=memory,
    )
    folder = run_dir(out, "bench", created)
    entries = describe(chosen)
    check_mergeable(folder, entries)
    with progress_bar() as report_progress:
        results = run_bench(chosen, config, progress=report_progress)
    ratios = speedups(results)
    meta = collect_run_meta(
        provider=provider,  # type: ignore[arg-type]  # check_provider returns cpu|cuda|coreml
        threads=threads,
        created=created,
        title=f"bench: {', '.join(m.name for m in chosen)}",
        voice=voice,
        lang=lang,
        speed=speed,
        texts=texts if limit is None else f"{texts} (first {limit})",
        settings={"runs": runs, "warmup": warmup, "concurrency": concurrency},
    )
    report, written = write_run(bench_report(results, ratios, entries, meta, config), folder)
    if json_output:
        console.print_json(json.dumps(_json(results, ratios, report, folder, written)))
        return
    _print_tables(results, ratios, runs=runs, n_texts=len(corpus))
    console.print(
        f"Report: {written['report.html']} (and report.md, report.json)",
        highlight=False,
        soft_wrap=True,
    )


def _json(
    results: list[ModelBench],
    ratios: list[float | None],
    report: Report,
    folder: Path,
    written: dict[str, Path],
) -> dict[str, Any]:
    names = [r.model.name for r in results]
    entries = {m.name: m for m in report.models}
    return {
        "run_dir": str(folder),
        "files": {k: str(v) for k, v in written.items()},
        "baseline": names[0],
        "models": [
            {
                **entries[name].model_dump(mode="json", exclude={"quality"}),
                "speedup": ratio,
            }
            for name, ratio in zip(names, ratios, strict=True)
        ],
    }


def _print_tables(
    results: list[ModelBench], ratios: list[float | None], *, runs: int, n_texts: int
) -> None:
    from rich.table import Table

    from kokoro_opt.cli._evidence import fmt

    base = results[0].model.name
    table = Table(
        title=f"Speed over {n_texts} texts x {runs} runs, interleaved (speedup vs {base})",
        title_justify="left",
    )
    columns = (
        "model", "load s", "latency ms", "p90 ms", "RTF", "RTF p90",
        "TTFA p50", "TTFA p95", "CPU s", "RSS MB", "speedup",
    )  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right")
    for res, ratio in zip(results, ratios, strict=True):
        s = res.summary()
        table.add_row(
            res.model.name,
            fmt(s["load_s"], ".2f"),
            fmt(s["latency_ms"]["median"], ".0f"),
            fmt(s["latency_ms"]["p90"], ".0f"),
            fmt(s["rtf"]["median"]),
            fmt(s["rtf"]["p90"]),
            fmt(s["ttfa_ms"]["p50"], ".0f"),
            fmt(s["ttfa_ms"]["p95"], ".0f"),
            fmt(s["cpu_time_s"], ".2f"),
            fmt(s["peak_rss_mb"], ".0f"),
            fmt(ratio, ".2f", suffix="x"),
        )
    console.print(table)
    conc = [r for r in results if r.concurrency]
    if conc:
        ctable = Table(title="Parallel streams on one session", title_justify="left")
        for col in ("model", "streams", "wall s", "audio s/s", "RTF median", "RTF max", "errors"):
            ctable.add_column(col, justify="left" if col == "model" else "right")
        for res in conc:
            c = res.concurrency or {}
            ctable.add_row(
                res.model.name,
                str(c["streams"]),
                fmt(c["wall_s"], ".2f"),
                fmt(c["throughput_audio_s_per_s"], ".2f"),
                fmt(c["rtf_median"]),
                fmt(c["rtf_max"]),
                str(len(c["errors"])),
            )
        console.print(ctable)


def _drive_server(
    url: str,
    *,
    models: list[str] | None,
    concurrency: int,
    duration: float,
    texts: str,
    limit: int | None,
    voice: str,
    speed: float,
    out: Path | None,
    created: datetime,
    json_output: bool,
) -> None:
    from kokoro_opt.bench.server_load import drive
    from kokoro_opt.cli._evidence import fmt, load_corpus, run_dir
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.report.files import write_text_atomic

    if models:
        raise UserInputError(
            "--server measures the model the server has loaded; drop the MODEL arguments, or "
            "drop --server to measure model files."
        )
    if not url.startswith(("http://", "https://")):
        raise UserInputError(
            f"--server must be an http(s) URL such as http://127.0.0.1:8880; got {url!r}."
        )
    corpus = load_corpus(texts, limit)
    folder = run_dir(out, "server", created) if out is not None else None
    with console.status(f"Driving {url} with {concurrency} clients for {duration:g} s ..."):
        result = drive(
            url, concurrency=concurrency, duration_s=duration, texts=corpus, voice=voice,
            speed=speed,
        )  # fmt: skip
    written = None
    if folder is not None:
        written = write_text_atomic(folder / SERVER_FILE, json.dumps(result, indent=2) + "\n")
    if json_output:
        console.print_json(json.dumps({**result, "file": str(written) if written else None}))
        return
    from rich.table import Table

    table = Table(title=f"Server load: {url}, {concurrency} clients", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    ttfa = result["ttfa_ms"]
    speedx = result["x_realtime"]
    for label, value in (
        ("requests (completed / rejected / errors / hangs)",
         f"{result['requests']} ({result['completed']} / {result['rejected']} / "
         f"{result['errors']} / {result['hangs']})"),
        ("time to first audio p50 / p95 ms",
         f"{fmt(ttfa.get('p50'), '.0f')} / {fmt(ttfa.get('p95'), '.0f')}"),
        ("x real time p50 (per request)", fmt(speedx.get("p50"), ".2f")),
        ("audio s per wall s (all clients)", fmt(result["audio_s_per_wall_s"], ".2f")),
        ("underruns", str(result["underruns"])),
    ):  # fmt: skip
        table.add_row(label, value)
    console.print(table)
    if written:
        console.print(f"Written: {written}", highlight=False, soft_wrap=True)
