"""`kokoro-opt serve [MODEL]`: a local OpenAI-compatible streaming TTS server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kokoro_opt.cli._windows import FirstWindow, WindowContext, window_plan
from kokoro_opt.cli.console import err_console
from kokoro_opt.runtime.voices import DEFAULT_VOICE

DEFAULT_MODEL = "kokoro-fp32"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the root app."""
    app.command("serve")(serve)


def serve(
    model: Annotated[
        str,
        typer.Argument(help="A model cache name (such as kokoro-int8-export) or an .onnx path."),
    ] = DEFAULT_MODEL,
    host: Annotated[
        str,
        typer.Option(help="The address to listen on; loopback by default, so only this machine."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The TCP port to listen on.")] = 8880,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="KOKORO_OPT_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every endpoint but /health.",
            show_envvar=True,
        ),
    ] = None,
    sessions: Annotated[
        int, typer.Option(help="Inference sessions in the pool (requests share them).")
    ] = 1,
    provider: Annotated[
        list[str] | None,
        typer.Option(
            help="Execution provider(s) for the sessions, repeatable or comma-separated "
            "(cpu, cuda, coreml, auto); sessions take them in turn, the first is preferred."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="Intra-op threads per session; default splits the cores between them."),
    ] = None,
    max_chars: Annotated[
        int, typer.Option(help="The longest input accepted, in characters.")
    ] = 4096,
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            help="Speech requests served at once (default 4 per session); more get 429 with "
            "Retry-After."
        ),
    ] = None,
    load_shedding: Annotated[
        bool,
        typer.Option(
            help="Also refuse new requests while the measured speed cannot keep one more "
            "stream ahead of real time."
        ),
    ] = True,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds a request may wait for its next audio chunk before it fails."),
    ] = 30.0,
    primer_ms: Annotated[
        int, typer.Option(help="Milliseconds of silence sent right after the WAV header.")
    ] = 0,
    self_bench_interval: Annotated[
        float,
        typer.Option(help="Run a small self-benchmark this often (seconds) while idle; 0 is off."),
    ] = 0.0,
    first_segment_chars: Annotated[
        int,
        typer.Option(help="Longest first segment in characters: shorter gives earlier audio."),
    ] = 12,
    first_segment: Annotated[
        str,
        typer.Option(
            help="clause: the first segment is the early primer (--first-segment-chars); "
            "sentence: the whole first sentence."
        ),
    ] = "clause",
    split: Annotated[
        Path | None,
        typer.Option(
            help="A folder from `kokoro-opt split` of the same model: render each segment in "
            "windows (first audio before the segment is done)."
        ),
    ] = None,
    window: Annotated[
        str,
        typer.Option(
            help="Statistics policy with --split: first (default: first window approximate, "
            "exact after it), generator, window, or whole (no windowing)."
        ),
    ] = "first",
    first_window: FirstWindow = 6,
    window_context: WindowContext = 3,
    cache_entries: Annotated[
        int,
        typer.Option(help="First segments kept in the primer cache; 0 turns the cache off."),
    ] = 64,
    trim_silence: Annotated[
        bool,
        typer.Option(
            help="Cut the model's long silences where segments meet down to natural pauses."
        ),
    ] = True,
    voices: Annotated[
        Path | None,
        typer.Option(
            help="A voice pack to use instead of the bundled Japanese voices: a kokoro-onnx "
            ".bin/.npz, a .npy file, or a folder of .npy files."
        ),
    ] = None,
    voice: Annotated[
        str, typer.Option(help="The voice used for warm-up and the self-benchmark.")
    ] = DEFAULT_VOICE,
    lang: Annotated[
        str, typer.Option(help="The language of requests that do not name one (en-us, en-gb...).")
    ] = "en-us",
    log_level: Annotated[
        str, typer.Option(help="Server log level: debug, info, warning or error.")
    ] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request.")] = False,
    wyoming: Annotated[
        str | None,
        typer.Option(
            metavar="URI",
            help="Also serve Home Assistant's Wyoming protocol at URI: tcp://HOST:PORT (such as "
            "tcp://127.0.0.1:10200) or unix:///path/to/socket. It shares the sessions, limits "
            "and telemetry of the HTTP server.",
        ),
    ] = None,
    http: Annotated[
        bool,
        typer.Option(help="Serve HTTP; --no-http with --wyoming serves only Wyoming."),
    ] = True,
    lexicon: Annotated[
        Path | None,
        typer.Option(
            help="A pronunciation file (word<TAB>phonemes per line) applied to every request.",
            show_default=False,
        ),
    ] = None,
    ssml: Annotated[
        str,
        typer.Option(
            help="SSML tags other than <break> and <speak> in requests: 'strict' answers 400, "
            "'lenient' strips them and keeps their text."
        ),
    ] = "strict",
    timestamps: Annotated[
        bool,
        typer.Option(
            help="Word timestamps in ndjson/SSE records and POST /v1/audio/speech/timestamps "
            "(the sessions get the model's durations; off for a model without a duration "
            "predictor). --no-timestamps loads faster."
        ),
    ] = True,
) -> None:
    """Serve MODEL over HTTP: POST /v1/audio/speech (OpenAI-compatible, streaming),
    POST /v1/audio/speech/timestamps (audio and word times in one JSON body), /health,
    /v1/models, /v1/audio/voices, /status and /metrics; with --wyoming also (or, with
    --no-http, only) over Home Assistant's Wyoming protocol."""
    import uvicorn

    from kokoro_opt.errors import UserInputError
    from kokoro_opt.runtime.g2p import normalize_lang
    from kokoro_opt.runtime.markup import Lexicon
    from kokoro_opt.runtime.session import normalize_provider
    from kokoro_opt.server import Engine, ServerSettings, create_app
    from kokoro_opt.store import resolve_model

    levels = ("debug", "info", "warning", "error")
    if log_level.lower() not in levels:
        raise UserInputError(
            f"Unknown log level {log_level!r}. Choose one of: {', '.join(levels)}."
        )
    if not 0 < port < 65536:
        raise UserInputError(f"Port {port} is out of range: use 1 to 65535.")
    wyoming_address = None
    if wyoming is not None:
        from kokoro_opt.server.wyoming import parse_uri

        wyoming_address = parse_uri(wyoming)
    elif not http:
        raise UserInputError(
            "Nothing to serve: --no-http needs --wyoming URI (such as tcp://127.0.0.1:10200)."
        )
    providers = [
        normalize_provider(p) for item in (provider or ["cpu"]) for p in item.split(",") if p
    ]
    plan = None
    if split is not None:
        plan = window_plan(window, first_window, window_context)
    settings = ServerSettings(
        api_key=api_key,
        max_chars=max_chars,
        max_concurrent=max_concurrent,
        load_shedding=load_shedding,
        timeout_s=timeout,
        primer_ms=primer_ms,
        self_bench_interval_s=self_bench_interval,
        first_segment_chars=first_segment_chars,
        first_segment=first_segment,
        trim_silence=trim_silence,
        cache_entries=cache_entries,
        default_voice=voice,
        default_lang=normalize_lang(lang),
        lexicon=Lexicon.load(lexicon) if lexicon is not None else None,
        ssml=ssml,
    )
    model_path = resolve_model(model)
    with err_console.status(f"Loading {model_path.name} into {sessions} session(s) ..."):
        engine = Engine.load(
            model_path,
            sessions=sessions,
            providers=providers,
            threads=threads,
            voices=voices,
            timestamps="auto" if timestamps else False,
            split=split,
            window=plan,
        )
    app = create_app(engine, settings)
    if http and host not in LOOPBACK and api_key is None:
        err_console.print(
            f"[bold yellow]warning:[/] listening on {host} without an API key: anyone who can "
            "reach this port can use the server. Set --api-key or KOKORO_OPT_API_KEY."
        )
    if wyoming_address is not None and wyoming_address.host not in (None, *LOOPBACK):
        err_console.print(
            f"[bold yellow]warning:[/] the Wyoming protocol has no authentication: anyone who "
            f"can reach {wyoming_address.uri} can use it."
        )
    where = [f"http://{host}:{port}"] if http else []
    where += [wyoming_address.uri] if wyoming_address is not None else []
    err_console.print(
        f"Serving [bold]{engine.model_id}[/] on {', '.join(engine.providers)} at "
        f"{' and '.join(where)} once warm (Ctrl+C stops it)."
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=access_log,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    if wyoming_address is None:
        uvicorn.Server(config).run()
        return
    import asyncio

    from kokoro_opt.server.wyoming import run

    asyncio.run(run(app, wyoming_uri=wyoming_address.uri, http=config if http else None))
