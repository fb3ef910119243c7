"""The HTTP app: `create_app(engine, settings)` -> FastAPI.

Endpoints: `POST /v1/audio/speech` (OpenAI-compatible; streaming WAV/PCM/MP3/Opus/FLAC, or
sequence-tagged ndjson / SSE records), `GET /health`, `/v1/models`, `/v1/audio/voices`,
`/status` (JSON telemetry) and `/metrics` (Prometheus). Start-up warms every session before
uvicorn opens the port, so a reachable server is a warm one. Errors are always
`{"error": {"message", "type", "param", "code"}}` (see `errors.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from kokoro_opt import __version__
from kokoro_opt.errors import KokoroOptError, TextError
from kokoro_opt.runtime.g2p import normalize_lang
from kokoro_opt.runtime.markup import Speech, parse_markup
from kokoro_opt.runtime.synthesizer import MAX_SPEED, MIN_SPEED, SAMPLE_RATE, check_text
from kokoro_opt.server.cache import PrimerCache
from kokoro_opt.server.encoding import CONTENT_TYPES, UNSUPPORTED_KNOWN, supported_formats
from kokoro_opt.server.engine import Engine
from kokoro_opt.server.errors import APIError, bad_request, from_domain
from kokoro_opt.server.models import FIELDS, STREAM_FORMATS, SpeechRequest, model_card
from kokoro_opt.server.pipeline import PipelineConfig, SpeechJob, SpeechPipeline, error_record
from kokoro_opt.server.settings import STREAMS_PER_SESSION, ServerSettings
from kokoro_opt.server.telemetry import Telemetry

logger = logging.getLogger(__name__)

# Load shedding admits streams up to this fraction of what the sessions can keep in real time.
CAPACITY_HEADROOM = 0.9
# A client that accepts no bytes for this long (or --timeout, if longer) is dropped.
MIN_SEND_TIMEOUT_S = 30.0
SELF_BENCH_TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
)


@dataclass
class ServerState:
    """Everything the endpoints share (lives on the event loop thread)."""

    engine: Engine
    settings: ServerSettings
    telemetry: Telemetry = field(default_factory=Telemetry)
    cache: PrimerCache = field(default_factory=PrimerCache)
    pipelines: set[SpeechPipeline] = field(default_factory=set)
    active: int = 0
    ready: bool = False
    draining: bool = False
    warmup: dict[str, Any] | None = None
    self_bench: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def max_concurrent(self) -> int:
        limit = self.settings.max_concurrent
        return limit if limit is not None else STREAMS_PER_SESSION * self.engine.pool.size

    def stream_capacity(self) -> int | None:
        """Streams the sessions can keep ahead of playback at their recent speed (with 10 %
        headroom; at least 1), or None when load shedding is off or nothing was measured yet."""
        if not self.settings.load_shedding:
            return None
        rtf = self.telemetry.recent_rtf()
        if rtf is None or rtf <= 0:
            return None
        return max(1, int(CAPACITY_HEADROOM * self.engine.pool.size / rtf))

    @property
    def pipeline_config(self) -> PipelineConfig:
        s = self.settings
        return PipelineConfig(
            first_segment_chars=s.first_segment_chars,
            first_segment=s.first_segment or "clause",
            max_segment_chars=s.max_segment_chars,
            growth=s.growth,
            queue_size=s.queue_size,
            timeout_s=s.timeout_s,
            primer_ms=s.primer_ms,
            trim_silence=s.trim_silence,
        )


def create_app(engine: Engine, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `engine` with `settings` (defaults if None)."""
    settings = settings or ServerSettings()
    state = ServerState(engine, settings, cache=PrimerCache(settings.cache_entries))
    # Fail at start-up, not on the first request, if the default voice or language is wrong.
    engine.voices.validate(settings.default_voice)
    normalize_lang(settings.default_lang)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        loop = asyncio.get_running_loop()
        if settings.warmup:
            state.warmup = await loop.run_in_executor(
                engine.text_executor,
                functools.partial(
                    engine.warmup,
                    lang=settings.default_lang,
                    voice=settings.default_voice,
                    longest_chars=settings.max_segment_chars,
                ),
            )
        if state.warmup and state.warmup.get("audio_s"):
            state.telemetry.seed_speed(
                infer_s=state.warmup["infer_s"], audio_s=state.warmup["audio_s"]
            )
        state.ready = True
        bench_task = (
            asyncio.create_task(_self_bench_loop(state), name="kokoro-self-bench")
            if settings.self_bench_interval_s > 0
            else None
        )
        try:
            yield
        finally:
            state.ready = False
            state.draining = True
            if bench_task is not None:
                bench_task.cancel()
                await asyncio.gather(bench_task, return_exceptions=True)
            for pipeline in list(state.pipelines):
                await pipeline.aclose()
            engine.close()  # waits for model calls in progress (at most one segment each)

    app = FastAPI(
        title="kokoro-opt",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.kokoro = state
    app.add_middleware(AuthMiddleware, api_key=settings.api_key, telemetry=state.telemetry)
    _add_error_handlers(app, state)

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "ok" if state.ready else "starting" if not state.draining else "stopping"}
        body["model"] = engine.model_id
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [model_card(engine.model_id, created=state.created)]
        data += [
            model_card(alias, created=state.created, root=engine.model_id)
            for alias in settings.model_aliases
            if alias != engine.model_id
        ]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        _check_model(model_id, engine, settings)
        root = None if model_id == engine.model_id else engine.model_id
        return model_card(model_id, created=state.created, root=root)

    @app.get("/v1/audio/voices")
    async def voices() -> dict[str, Any]:
        return {
            "voices": engine.voices.names,
            "default": settings.default_voice,
            "blends": "Mix voices with weights, such as 'jf_alpha*0.7+jm_kumo*0.3'.",
        }

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return _status(state)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            _prometheus(state), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest, request: Request) -> Response:
        return await _speak(_build_job(body, state), request)

    @app.post("/v1/audio/speech/timestamps")
    async def speech_timestamps(body: SpeechRequest, request: Request) -> Response:
        """The whole audio file (base64, `response_format`) and its words with their times."""
        if not engine.timestamps:
            raise APIError(
                501,
                f"Word timestamps are not available: the model {engine.model_id} has no duration "
                "predictor this server could expose.",
                type="invalid_request_error",
                code="timestamps_unavailable",
            )
        job = _build_job(body.model_copy(update={"stream": False}), state)
        if job.stream_format != "audio":
            raise bad_request(
                "The timestamps endpoint answers with one JSON body: leave stream_format out.",
                code="invalid_value",
                param="stream_format",
            )
        return await _speak(dataclasses.replace(job, timestamps_json=True), request)

    async def _speak(job: SpeechJob, request: Request) -> Response:
        if state.draining or not state.ready:
            raise APIError(
                503,
                "The server is shutting down: retry on another instance.",
                type="server_busy_error",
                code="not_ready",
            )
        if state.active >= state.max_concurrent:
            retry = _retry_after(state)
            raise APIError(
                429,
                f"Too many requests in progress ({state.active} of {state.max_concurrent}): "
                f"retry after {retry} s, or start the server with a higher --max-concurrent.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            )
        capacity = state.stream_capacity()
        if capacity is not None and state.active >= capacity:
            retry = _retry_after(state)
            raise APIError(
                429,
                f"The server is at capacity: {state.active} stream(s) in progress and the model "
                f"now needs {state.telemetry.recent_rtf():.2f} s per second of audio, so one "
                f"more would fall behind real time. Retry after {retry} s.",
                type="rate_limit_error",
                code="overloaded",
                headers={"Retry-After": str(retry)},
            )
        pipeline = SpeechPipeline(
            engine, job, state.pipeline_config, cache=state.cache, telemetry=state.telemetry
        )
        run = _Run(state, pipeline)
        run.begin()
        if not job.stream:
            return await run.whole(request)
        media_type = (
            "application/x-ndjson"
            if job.stream_format == "ndjson"
            else "text/event-stream"
            if job.stream_format == "sse"
            else CONTENT_TYPES[job.response_format]
        )
        headers = {"Cache-Control": "no-store", "X-Sample-Rate": str(SAMPLE_RATE)}
        if job.stream_format == "sse":
            headers["X-Accel-Buffering"] = "no"  # proxies must not hold events back
        send_timeout = max(settings.timeout_s, MIN_SEND_TIMEOUT_S)
        return _PipelineResponse(
            run, media_type=media_type, headers=headers, send_timeout_s=send_timeout
        )

    return app


class _Run:
    """Bookkeeping of one accepted speech request: concurrency slot, telemetry, cleanup."""

    def __init__(self, state: ServerState, pipeline: SpeechPipeline) -> None:
        self.state = state
        self.pipeline = pipeline
        self.completed = False
        self.error: APIError | None = None
        self.ended = False
        self.ttfa_recorded = False

    def begin(self) -> None:
        self.state.active += 1
        self.state.pipelines.add(self.pipeline)
        self.state.telemetry.request_started(len(self.pipeline.job.text))
        self.pipeline.start()

    async def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        with anyio.CancelScope(shield=True):
            await self.pipeline.aclose()
        self.state.active -= 1
        self.state.pipelines.discard(self.pipeline)
        p = self.pipeline
        disconnected = not self.completed and self.error is None
        status = self.error.status if self.error else 499 if disconnected else 200
        self.state.telemetry.request_finished(
            status=status,
            duration_s=time.perf_counter() - p.job.arrived,
            audio_s=p.audio_s,
            compute_s=p.compute_s,
            disconnected=disconnected,
            error_code=self.error.code if self.error else None,
        )

    def _note(self, audible: bool) -> None:
        if audible and not self.ttfa_recorded:
            self.ttfa_recorded = True
            elapsed = time.perf_counter() - self.pipeline.job.arrived
            self.state.telemetry.first_audio(elapsed * 1e3)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Response body of a stream. A failure mid-way ends a record stream with an error
        record; an audio stream cannot carry one, so the connection is cut (`_StreamAborted`)."""
        job = self.pipeline.job
        try:
            async for out in self.pipeline.outputs():
                self._note(out.audible)
                if out.data:
                    yield out.data
            self.completed = True
        except Exception as exc:
            self.error = _as_api_error(exc)
            logger.warning("stream failed: %s", self.error.message)
            if job.stream_format in ("ndjson", "sse"):
                yield error_record(self.error.body(), sse=job.stream_format == "sse")
            else:
                raise _StreamAborted(self.error.message) from None

    async def whole(self, request: Request) -> Response:
        """A complete file; the request is cancelled if the client goes away meanwhile."""
        parts: list[bytes] = []

        async def collect() -> None:
            async for out in self.pipeline.outputs():
                self._note(out.audible)
                parts.append(out.data)

        task = asyncio.create_task(collect())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    return Response(status_code=499)
            try:
                task.result()
            except Exception as exc:
                self.error = _as_api_error(exc)
                raise self.error from None
            self.completed = True
            job = self.pipeline.job
            return Response(
                b"".join(parts),
                media_type="application/json"
                if job.timestamps_json
                else CONTENT_TYPES[job.response_format],
                headers={"X-Sample-Rate": str(SAMPLE_RATE)},
            )
        finally:
            if not task.done():
                task.cancel()
            await self.end()


def _as_api_error(exc: Exception) -> APIError:
    """The APIError for anything a pipeline raised (a bug becomes a logged 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, KokoroOptError):
        return from_domain(exc)
    logger.error("synthesis failed", exc_info=exc)
    return APIError(
        500,
        f"Synthesis failed: {type(exc).__name__}: {exc}".rstrip(": "),
        type="server_error",
        code="internal_error",
    )


class _StreamAborted(Exception):
    """Raised out of an audio stream that failed after its headers were sent."""


class _PipelineResponse(StreamingResponse):
    """A streaming response that always ends its run: after the last byte, after an error, and
    when the client disconnects (Starlette cancels the body; cleanup runs here, outside the
    cancelled scope). A client that takes no data for `send_timeout_s` (it stopped reading but
    keeps the connection open) is dropped, so it cannot hold a request slot for ever."""

    def __init__(
        self, run: _Run, *, media_type: str, headers: dict[str, str], send_timeout_s: float
    ) -> None:
        super().__init__(run.chunks(), media_type=media_type, headers=headers)
        self.run = run
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Any) -> None:
            with anyio.fail_after(self.send_timeout_s):
                await send(message)

        try:
            await super().__call__(scope, receive, timed_send)
        except TimeoutError:
            logger.warning("dropped a client that took no data for %.0f s", self.send_timeout_s)
        except _StreamAborted:
            # Returning without the final empty body makes uvicorn close the connection, so the
            # client sees a truncated transfer instead of a short but "complete" file.
            pass
        except OSError:  # the client went away while we were writing
            pass
        finally:
            await self.run.end()


class AuthMiddleware:
    """`Authorization: Bearer <key>` on every path but /health when a key is set (checked
    before the body is read, so a bad key is always 401)."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, telemetry: Telemetry) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is not None and scope["type"] == "http" and scope["path"] != "/health":
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                missing = not header
                error = APIError(
                    401,
                    "Missing API key: send 'Authorization: Bearer <key>'."
                    if missing
                    else "Incorrect API key: send the key the server was started with "
                    "(--api-key or KOKORO_OPT_API_KEY).",
                    code="missing_api_key" if missing else "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                self.telemetry.rejected(401, error.code)
                response = JSONResponse(error.body(), status_code=401, headers=error.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- validation ------------------------------------------------------------------------------


def _check_model(name: str, engine: Engine, settings: ServerSettings) -> None:
    if name != engine.model_id and name not in settings.model_aliases:
        known = ", ".join([engine.model_id, *settings.model_aliases])
        raise APIError(
            404,
            f"The model {name!r} does not exist here. Available: {known}.",
            code="model_not_found",
            param="model",
        )


def _build_job(body: SpeechRequest, state: ServerState) -> SpeechJob:
    arrived = time.perf_counter()
    engine, settings = state.engine, state.settings
    _check_model(body.model, engine, settings)
    formats = supported_formats()
    fmt = body.response_format.lower()
    if fmt not in formats:
        known = fmt in (*UNSUPPORTED_KNOWN, "mp3", "opus", "flac")
        why = " (no encoder for it is installed)" if known else ""
        raise bad_request(
            f"Unsupported response_format {body.response_format!r}{why}. Choose one of: "
            f"{', '.join(formats)}.",
            code="unsupported_format",
            param="response_format",
        )
    stream_format = body.stream_format.lower()
    if stream_format not in STREAM_FORMATS:
        raise bad_request(
            f"Unknown stream_format {body.stream_format!r}. Choose one of: "
            f"{', '.join(STREAM_FORMATS)}.",
            code="unsupported_stream_format",
            param="stream_format",
        )
    if stream_format != "audio":
        if fmt not in ("pcm", "wav"):
            raise bad_request(
                f"stream_format {stream_format!r} carries PCM16 samples: use response_format "
                "'pcm' (or 'wav'), or stream_format 'audio' for compressed audio.",
                code="unsupported_format",
                param="response_format",
            )
        if not body.stream:
            raise bad_request(
                f"stream_format {stream_format!r} needs stream=true.",
                code="invalid_value",
                param="stream",
            )
    if body.instructions:
        raise bad_request(
            "This model does not follow instructions: leave 'instructions' out and choose a "
            "voice and speed instead.",
            code="unsupported_parameter",
            param="instructions",
        )
    speed = float(body.speed)
    if not (math.isfinite(speed) and MIN_SPEED <= speed <= MAX_SPEED):
        raise bad_request(
            f"speed {body.speed} is out of range: use a value from {MIN_SPEED} to {MAX_SPEED} "
            "(1.0 is normal speed).",
            code="invalid_speed",
            param="speed",
        )
    try:
        check_text(body.input, settings.max_chars)
        items = tuple(parse_markup(body.input, lexicon=settings.lexicon, ssml=settings.ssml))
        if not any(isinstance(i, Speech) for i in items):
            raise TextError("Nothing speakable in the text: give words, not only pauses.")
        lang = normalize_lang(body.lang or settings.default_lang)
        pack = engine.voices.get(body.voice)
        engine.contract.feeds([0], pack[0], speed)  # an integer-speed model rejects 1.5 here
    except KokoroOptError as exc:
        raise from_domain(exc) from None
    return SpeechJob(
        text=body.input,
        voice=body.voice,
        pack=pack,
        speed=speed,
        lang=lang,
        response_format=fmt,
        stream_format=stream_format,
        stream=body.stream,
        arrived=arrived,
        items=items,
        words=engine.timestamps,
    )


def _add_error_handlers(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        if request.url.path == "/v1/audio/speech":
            state.telemetry.rejected(exc.status, exc.code)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_message(exc.errors())
        state.telemetry.rejected(400, error.code)
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"No such endpoint: {request.method} {request.url.path}."
            code = "not_found"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        error = APIError(exc.status_code, message, code=code)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(KokoroOptError)
    async def domain_error(request: Request, exc: KokoroOptError) -> JSONResponse:
        error = from_domain(exc)
        return JSONResponse(error.body(), status_code=error.status)


def _validation_message(errors: Any) -> APIError:
    """One clear 400 for pydantic/FastAPI validation errors (the first one decides)."""
    allowed = ", ".join(FIELDS)
    for err in errors:
        kind = err.get("type", "")
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        name = loc[0] if loc else None
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "not valid JSON")
            return bad_request(
                f"Malformed JSON body ({detail}): send a JSON object such as "
                '{"model": "kokoro", "input": "Hello.", "voice": "jf_alpha"}.',
                code="invalid_json",
            )
        if kind == "missing" and name is None:
            return bad_request(
                "The request has no JSON body: send model, input and voice as a JSON object.",
                code="invalid_json",
            )
        if kind == "missing":
            return bad_request(
                f"Missing required field {name!r}: a speech request needs model, input and voice.",
                code="missing_field",
                param=name,
            )
        if kind == "extra_forbidden":
            return bad_request(
                f"Unknown field {name!r}. Allowed fields: {allowed}.",
                code="unknown_field",
                param=name,
            )
        if name is None:
            return bad_request(
                f"The body must be a JSON object with model, input and voice ({err.get('msg')}).",
                code="invalid_json",
            )
    err = errors[0] if errors else {}
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    name = loc[0] if loc else None
    wants = {"speed": "a number", "stream": "true or false"}
    want = wants.get(name or "", "a string" if name else "a valid value")
    return bad_request(
        f"Invalid value for {name!r}: it must be {want} ({err.get('msg', 'invalid')}).",
        code="invalid_type",
        param=name,
    )


# -- operations ------------------------------------------------------------------------------


def _retry_after(state: ServerState) -> int:
    median = state.telemetry.request_s.summary().get("p50")
    return int(min(30, max(1, math.ceil(float(median or 1.0) / 2))))


def _queues(state: ServerState) -> dict[str, int]:
    totals = {"text": 0, "audio": 0, "out": 0}
    for pipeline in list(state.pipelines):
        for stage, n in pipeline.depths().items():
            totals[stage] += n
    totals["session_waiters"] = state.engine.pool.waiting
    return totals


def _process() -> dict[str, Any]:
    info: dict[str, Any] = {"pid": os.getpid(), "threads": threading.active_count()}
    try:
        import psutil

        proc = psutil.Process()
        info["rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
        info["os_threads"] = proc.num_threads()
    except (ImportError, OSError):
        pass
    return info


def _status(state: ServerState) -> dict[str, Any]:
    engine, settings = state.engine, state.settings
    snap = state.telemetry.snapshot()
    return {
        "ready": state.ready,
        "version": __version__,
        "model": {
            "id": engine.model_id,
            "path": str(engine.model_path),
            "sha256": engine.model_sha256,
            "aliases": list(settings.model_aliases),
            "providers": engine.providers,
            "threads_per_session": engine.threads,
            "sample_rate": SAMPLE_RATE,
        },
        "uptime_s": snap.pop("uptime_s"),
        "requests": snap,
        "active_requests": state.active,
        "queues": _queues(state),
        "pool": engine.pool.stats(),
        "cache": state.cache.stats(),
        "process": _process(),
        "warmup": state.warmup,
        "self_bench": list(state.self_bench),
        "limits": {
            "max_chars": settings.max_chars,
            "max_concurrent": state.max_concurrent,
            "load_shedding": settings.load_shedding,
            "stream_capacity": state.stream_capacity(),
            "timeout_s": settings.timeout_s,
            "auth": settings.api_key is not None,
        },
        "streaming": {
            "formats": list(supported_formats()),
            "stream_formats": list(STREAM_FORMATS),
            "primer_ms": settings.primer_ms,
            "trim_silence": settings.trim_silence,
            "first_segment_chars": settings.first_segment_chars,
            "max_segment_chars": settings.max_segment_chars,
            "growth": settings.growth,
            "queue_size": settings.queue_size,
        },
    }


def _prometheus(state: ServerState) -> str:
    pool = state.engine.pool
    cache = state.cache.stats()
    proc = _process()
    gauges: dict[str, tuple[str, Any]] = {
        "kokoro_ready": ("1 when warm and accepting requests.", 1.0 if state.ready else 0.0),
        "kokoro_pool_sessions": (
            "Inference sessions by state.",
            {'state="idle"': pool.idle, 'state="busy"': pool.size - pool.idle},
        ),
        "kokoro_pool_waiters": ("Segments waiting for an inference session.", pool.waiting),
        "kokoro_queue_depth": (
            "Items in the pipeline queues, summed over requests.",
            {f'stage="{k}"': v for k, v in _queues(state).items() if k != "session_waiters"},
        ),
        "kokoro_cache_entries": ("First segments in the primer cache.", cache["entries"]),
        "kokoro_cache_hits": ("Primer cache hits since start.", cache["hits"]),
        "kokoro_cache_misses": ("Primer cache misses since start.", cache["misses"]),
        "kokoro_threads": ("Python threads in the server process.", proc["threads"]),
    }
    if "rss_mb" in proc:
        gauges["kokoro_resident_memory_bytes"] = ("Resident memory.", proc["rss_mb"] * 2**20)
    last = state.self_bench[-1] if state.self_bench else None
    if last:
        gauges["kokoro_self_bench_rtf"] = (
            "Real-time factor of the last self-benchmark.",
            last["rtf"] or 0.0,
        )
        gauges["kokoro_self_bench_ttfa_seconds"] = (
            "Time to first audio of the last self-benchmark.",
            last["ttfa_ms"] / 1e3,
        )
    return state.telemetry.prometheus(gauges)


async def _self_bench_loop(state: ServerState) -> None:
    """Every `self_bench_interval_s`, when no request is running, synthesize a fixed text
    (without the primer cache) and record time to first audio and RTF for /status."""
    settings = state.settings
    while True:
        await asyncio.sleep(settings.self_bench_interval_s)
        if state.active or not state.ready:
            continue
        try:
            state.self_bench.append(await self_bench_once(state))
        except (APIError, KokoroOptError) as exc:
            state.self_bench.append({"at": time.time(), "error": str(exc)})


async def self_bench_once(state: ServerState) -> dict[str, Any]:
    """One self-benchmark run through the real pipeline (streamed, PCM, cache off)."""
    settings = state.settings
    job = SpeechJob(
        text=SELF_BENCH_TEXT,
        voice=settings.default_voice,
        pack=state.engine.voices.get(settings.default_voice),
        speed=1.0,
        lang=normalize_lang(settings.default_lang),
        response_format="pcm",
        stream_format="audio",
        stream=True,
        arrived=time.perf_counter(),
    )
    pipeline = SpeechPipeline(
        state.engine, job, state.pipeline_config, cache=PrimerCache(0), telemetry=Telemetry()
    )
    first = None
    try:
        async for out in pipeline.outputs():
            if out.audible and first is None:
                first = time.perf_counter() - job.arrived
    finally:
        await pipeline.aclose()
    wall = time.perf_counter() - job.arrived
    return {
        "at": time.time(),
        "ttfa_ms": round((first or wall) * 1e3, 1),
        "wall_ms": round(wall * 1e3, 1),
        "audio_s": round(pipeline.audio_s, 3),
        "rtf": round(pipeline.compute_s / pipeline.audio_s, 4) if pipeline.audio_s else None,
        "segments": pipeline.segments,
    }
