"""Home Assistant's Wyoming protocol: `kokoro-opt serve --wyoming tcp://127.0.0.1:10200`.

Events (the `wyoming` package's own classes and framing):
- `describe` -> `info`: one TTS program, `kokoro-opt`, with every voice of the engine and the
  languages the G2P speaks; `supports_synthesize_streaming` is true.
- `synthesize` -> `audio-start`, `audio-chunk`s, `audio-stop`: 16-bit mono PCM at 24 kHz, in
  chunks of `samples_per_chunk` samples (1024, as wyoming-piper sends).
- `synthesize-start`, `synthesize-chunk`s, `synthesize-stop` (text streaming, e.g. from an LLM):
  each sentence is synthesized as soon as it is complete in the text received so far, so audio
  starts before the text ends; sentences that complete while one is being spoken go together into
  the next model call. One `audio-start` before the first chunk, one `audio-stop` after the last,
  then `synthesize-stopped`. A `synthesize` inside a stream is Home Assistant's compatibility copy
  of the same text and is ignored.
- Speech markup is read as for HTTP requests (`[pause:0.5s]`, `<break>`, pronunciations, the
  server's --ssml and --lexicon); a stream may end with a pause.
- Bad input (unknown voice or language, empty text, a busy server) is answered with an `error`
  event (`text`, `code`), after which the server closes the connection, so a client waiting for
  audio is never left hanging.

Synthesis goes through the HTTP server's pipeline (`SpeechPipeline`: short first segment,
session pool, primer cache, joins trimmed to natural pauses), and a Wyoming server beside the
HTTP one shares its `ServerState`: the same sessions, limits, cache and telemetry (`/status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from kokoro_opt import __version__
from kokoro_opt.errors import KokoroOptError, TextError, UserInputError
from kokoro_opt.runtime.g2p import LANGUAGES, normalize_lang
from kokoro_opt.runtime.markup import Pause, Speech, parse_markup
from kokoro_opt.runtime.segment import is_speakable, split_clauses, split_sentences, split_words
from kokoro_opt.runtime.synthesizer import SAMPLE_RATE, check_text
from kokoro_opt.server.errors import APIError, from_domain
from kokoro_opt.server.pipeline import SpeechJob, SpeechPipeline

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from kokoro_opt.server.app import ServerState

logger = logging.getLogger(__name__)

SAMPLE_WIDTH = 2  # bytes: PCM16
CHANNELS = 1
SAMPLES_PER_CHUNK = 1024
DEFAULT_PORT = 10200
URI_HELP = "tcp://HOST:PORT (such as tcp://127.0.0.1:10200) or unix:///path/to/socket"
ATTRIBUTION = Attribution(
    name="hexgrad (Kokoro-82M)", url="https://huggingface.co/hexgrad/Kokoro-82M"
)


@dataclass(frozen=True)
class WyomingAddress:
    """Where the Wyoming server listens: `tcp` with host and port, or `unix` with a path."""

    scheme: str
    host: str | None = None
    port: int | None = None
    path: Path | None = None

    @property
    def uri(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_uri(uri: str) -> WyomingAddress:
    """`tcp://HOST:PORT` or `unix:///path`, else UserInputError naming what is allowed."""
    text = str(uri).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise UserInputError(f"Bad Wyoming URI {uri!r}: use {URI_HELP}.") from None
    if parts.scheme == "tcp":
        if not parts.hostname or port is None:
            raise UserInputError(f"Bad Wyoming URI {uri!r}: give host and port, {URI_HELP}.")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise UserInputError(f"Bad Wyoming URI {uri!r}: a tcp URI has no path; {URI_HELP}.")
        return WyomingAddress("tcp", host=parts.hostname, port=port)
    if parts.scheme == "unix":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise UserInputError(f"Bad Wyoming URI {uri!r}: give a socket path, {URI_HELP}.")
        return WyomingAddress("unix", path=Path(path))
    raise UserInputError(f"Bad Wyoming URI {uri!r}: use {URI_HELP}.")


def wyoming_info(state: ServerState) -> Info:
    """The `info` answer: one TTS program with the engine's voices."""
    engine, settings = state.engine, state.settings
    languages = _languages(settings.default_lang)
    voices = [
        TtsVoice(
            name=name,
            attribution=ATTRIBUTION,
            installed=True,
            description=f"Kokoro voice {name} ({engine.model_id})",
            version=None,
            languages=languages,
        )
        for name in engine.voices.names
    ]
    program = TtsProgram(
        name="kokoro-opt",
        attribution=ATTRIBUTION,
        installed=True,
        description=f"Kokoro-82M ({engine.model_id}), optimized by kokoro-opt",
        version=__version__,
        voices=voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])


def complete_sentences(buffer: str) -> tuple[list[str], str]:
    """(sentences complete in `buffer`, the rest to keep) for text that arrives in pieces.

    Every sentence but the last is complete. The last one is complete when the text after it
    has begun: a sentence end followed by white space counts when a capital letter there would
    start a new sentence (so `Mr. ` and `J. ` wait, as the runtime's sentence splitter says).
    """
    sentences = split_sentences(buffer)
    if not sentences:
        return [], buffer
    if buffer[-1:].isspace() and len(split_sentences(buffer + "A")) > len(sentences):
        return sentences, ""
    rest = sentences[-1] + (" " if buffer[-1:].isspace() else "")
    return sentences[:-1], rest


def long_run_pieces(buffer: str, limit: int) -> tuple[list[str], str]:
    """(pieces to speak now, the rest) for text without a sentence end that grew past `limit`
    characters: its complete clauses (cut after `, ; :` and dashes), else words up to `limit`;
    the last clause or word may still grow, so it stays."""
    clauses = split_clauses(buffer)
    if len(clauses) > 1:
        return clauses[:-1], clauses[-1] + (" " if buffer[-1:].isspace() else "")
    words = split_words(buffer, limit)
    if len(words) > 1:
        return words[:-1], words[-1] + (" " if buffer[-1:].isspace() else "")
    return [], buffer


class WyomingServer:
    """A Wyoming listener for a `ServerState` (see the module docstring).

    `bind()` opens the socket without accepting (so a bad address fails before the warm-up),
    `start()` begins accepting, `close()` stops it and ends open connections.
    """

    def __init__(
        self, state: ServerState, uri: str, *, samples_per_chunk: int = SAMPLES_PER_CHUNK
    ) -> None:
        self.state = state
        self.address = parse_uri(uri)
        self.samples_per_chunk = samples_per_chunk
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._handlers: set[WyomingHandler] = set()

    @property
    def port(self) -> int | None:
        """The TCP port listened on (the real one when the URI asked for port 0)."""
        if self._server is None or self.address.scheme != "tcp":
            return self.address.port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def uri(self) -> str:
        address = self.address
        if address.scheme == "tcp":
            address = WyomingAddress("tcp", host=address.host, port=self.port)
        return address.uri

    async def bind(self) -> None:
        if self._server is not None:
            return
        try:
            if self.address.scheme == "unix":
                assert self.address.path is not None
                self.address.path.unlink(missing_ok=True)
                self._server = await asyncio.start_unix_server(
                    self._accept, path=str(self.address.path), start_serving=False
                )
            else:
                self._server = await asyncio.start_server(
                    self._accept, self.address.host, self.address.port, start_serving=False
                )
        except OSError as exc:
            raise UserInputError(
                f"Cannot listen on {self.address.uri}: {exc.strerror or exc}. Is another "
                "server using it? Choose another port or path."
            ) from None

    async def start(self) -> None:
        await self.bind()
        assert self._server is not None
        await self._server.start_serving()
        logger.info("Wyoming server listening on %s", self.uri)

    async def close(self) -> None:
        """Stop accepting and end every connection now (requests in progress are cancelled at
        their next segment; a model call running finishes first)."""
        if self._server is not None:
            self._server.close()
        for handler in list(self._handlers):
            await handler.stop()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self.address.scheme == "unix" and self.address.path is not None:
            self.address.path.unlink(missing_ok=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = WyomingHandler(
            reader, writer, state=self.state, samples_per_chunk=self.samples_per_chunk
        )
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(handler)
        self._connections.add(task)
        try:
            await handler.run()
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            self._handlers.discard(handler)
            self._connections.discard(task)


class WyomingHandler(AsyncEventHandler):
    """One client connection: answers its events in order."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        state: ServerState,
        samples_per_chunk: int = SAMPLES_PER_CHUNK,
    ) -> None:
        super().__init__(reader, writer)
        self.state = state
        self.samples_per_chunk = samples_per_chunk
        self._write_lock = asyncio.Lock()
        self._stream: _TextStream | None = None

    async def write_event(self, event: Event) -> None:
        async with self._write_lock:  # the stream's worker writes too
            await super().write_event(event)

    async def handle_event(self, event: Event) -> bool:
        try:
            if Describe.is_type(event.type):
                await self.write_event(wyoming_info(self.state).event())
            elif Synthesize.is_type(event.type):
                if self._stream is None:  # inside a stream it repeats the streamed text
                    request = Synthesize.from_event(event)
                    utterance = self._utterance(request.voice)
                    await utterance.say(check_text(request.text, self.state.settings.max_chars))
                    await utterance.finish()
            elif SynthesizeStart.is_type(event.type):
                if self._stream is not None:
                    raise UserInputError(
                        "synthesize-start inside a stream: send synthesize-stop first."
                    )
                start = SynthesizeStart.from_event(event)
                self._stream = _TextStream(self, self._utterance(start.voice))
            elif SynthesizeChunk.is_type(event.type):
                if self._stream is None:
                    raise UserInputError(
                        "synthesize-chunk outside a stream: send synthesize-start."
                    )
                self._stream.add(SynthesizeChunk.from_event(event).text)
            elif SynthesizeStop.is_type(event.type):
                if self._stream is None:
                    raise UserInputError("synthesize-stop outside a stream: send synthesize-start.")
                stream, self._stream = self._stream, None
                await stream.finish()
                await self.write_event(SynthesizeStopped().event())
            else:
                logger.debug("ignoring Wyoming event %r", event.type)
            return True
        except (ConnectionError, OSError):
            return False  # the client went away
        except _Reported:
            return False
        except Exception as exc:
            await self.fail(exc)
            return False

    async def fail(self, exc: BaseException) -> None:
        """Send an `error` event for `exc` (the connection then closes). A synthesis failure was
        counted by its pipeline; anything else is a request refused before synthesis."""
        if isinstance(exc, _SynthesisFailed):
            error = exc.error
        else:
            error = _as_error(exc)
            self.state.telemetry.rejected(error.status, error.code)
        with contextlib.suppress(ConnectionError, OSError):
            await self.write_event(Error(text=error.message, code=error.code).event())

    async def disconnect(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.cancel()

    def _utterance(self, voice: SynthesizeVoice | None) -> _Utterance:
        """A validated request: voice (a name or a blend), language, and admission."""
        state, settings = self.state, self.state.settings
        name = (voice.name if voice else None) or settings.default_voice
        lang = normalize_lang((voice.language if voice else None) or settings.default_lang)
        pack = state.engine.voices.get(name)
        if state.draining or not state.ready:
            raise APIError(503, "The server is not ready: retry in a moment.", code="not_ready")
        if state.active >= state.max_concurrent:
            raise APIError(
                429,
                f"Too many requests in progress ({state.active} of {state.max_concurrent}): "
                "retry later, or start the server with a higher --max-concurrent.",
                code="rate_limit_exceeded",
            )
        return _Utterance(self, name=name, pack=pack, lang=lang)


class _Utterance:
    """One answer: `audio-start` before its first chunk, `audio-stop` after its last; each
    `say` runs one pipeline over a piece of text."""

    def __init__(self, handler: WyomingHandler, *, name: str, pack: Any, lang: str) -> None:
        self.handler = handler
        self.name = name
        self.pack = pack
        self.lang = lang
        self.arrived = time.perf_counter()
        self.started = False
        self.samples = 0
        self.first_audio_noted = False

    async def say(self, text: str, *, whole: bool = True) -> bool:
        """Speak `text` through one pipeline; its speech markup (pauses, SSML breaks,
        pronunciations) is read with the server's --ssml and --lexicon. A piece of a stream
        (`whole=False`) made only of pauses is sent as that much silence; a request without
        speech is a TextError. Returns whether there was speech."""
        state = self.handler.state
        settings = state.settings
        items = tuple(parse_markup(text, lexicon=settings.lexicon, ssml=settings.ssml))
        if not any(isinstance(item, Speech) for item in items):
            seconds = sum(item.seconds for item in items if isinstance(item, Pause))
            if whole or seconds <= 0:
                raise TextError("Nothing speakable in the text: give words, not only pauses.")
            await self._send(bytes(SAMPLE_WIDTH * round(seconds * SAMPLE_RATE)), audible=False)
            return False
        job = SpeechJob(
            text=text,
            voice=self.name,
            pack=self.pack,
            speed=1.0,
            lang=self.lang,
            response_format="pcm",
            stream_format="audio",
            stream=True,
            arrived=time.perf_counter(),
            items=items,
        )
        pipeline = SpeechPipeline(
            state.engine, job, state.pipeline_config, cache=state.cache, telemetry=state.telemetry
        )
        state.active += 1
        state.pipelines.add(pipeline)
        state.telemetry.request_started(len(text))
        error: APIError | None = None
        completed = False
        try:
            async for out in pipeline.outputs():
                if out.data:
                    await self._send(out.data, audible=out.audible)
            completed = True
        except (ConnectionError, OSError):
            raise  # the client went away: counted as a disconnect
        except Exception as exc:
            error = _as_error(exc)
            raise _SynthesisFailed(error) from exc
        finally:
            await pipeline.aclose()
            state.active -= 1
            state.pipelines.discard(pipeline)
            state.telemetry.request_finished(
                status=error.status if error else 200 if completed else 499,
                duration_s=time.perf_counter() - job.arrived,
                audio_s=pipeline.audio_s,
                compute_s=pipeline.compute_s,
                disconnected=error is None and not completed,
                error_code=error.code if error else None,
            )
        return True

    async def finish(self) -> None:
        """End the audio: `audio-stop` (an `audio-start` first if nothing was said)."""
        await self._start()
        await self.handler.write_event(AudioStop(timestamp=self._ms()).event())

    async def _start(self) -> None:
        if not self.started:
            self.started = True
            start = AudioStart(rate=SAMPLE_RATE, width=SAMPLE_WIDTH, channels=CHANNELS, timestamp=0)
            await self.handler.write_event(start.event())

    async def _send(self, pcm: bytes, *, audible: bool) -> None:
        await self._start()
        if audible and not self.first_audio_noted:
            self.first_audio_noted = True
            self.handler.state.telemetry.first_audio((time.perf_counter() - self.arrived) * 1e3)
        step = self.handler.samples_per_chunk * SAMPLE_WIDTH * CHANNELS
        for at in range(0, len(pcm), step):
            piece = pcm[at : at + step]
            chunk = AudioChunk(
                rate=SAMPLE_RATE,
                width=SAMPLE_WIDTH,
                channels=CHANNELS,
                audio=piece,
                timestamp=self._ms(),
            )
            await self.handler.write_event(chunk.event())
            self.samples += len(piece) // (SAMPLE_WIDTH * CHANNELS)

    def _ms(self) -> int:
        return int(self.samples * 1000 / SAMPLE_RATE)


class _TextStream:
    """A streamed request: text in, complete sentences out to a worker that speaks them."""

    def __init__(self, handler: WyomingHandler, utterance: _Utterance) -> None:
        self.handler = handler
        self.utterance = utterance
        self.buffer = ""
        self.spoken = False
        self.reported = False  # a failure was already sent to the client
        self.queue: asyncio.Queue[Any] = asyncio.Queue()  # sentences, then None at the end
        self.worker = asyncio.create_task(self._work(), name="kokoro-wyoming-stream")

    def add(self, text: str) -> None:
        self.buffer += text
        done, self.buffer = complete_sentences(self.buffer)
        limit = self.handler.state.settings.max_segment_chars
        if len(self.buffer) > limit:  # a long run without a sentence end: speak its clauses
            more, self.buffer = long_run_pieces(self.buffer, limit)
            done += more
        max_chars = self.handler.state.settings.max_chars
        for sentence in done:
            for piece in (
                split_words(sentence, max_chars) if len(sentence) > max_chars else [sentence]
            ):
                self.queue.put_nowait(piece)

    async def finish(self) -> None:
        """Queue what is left, wait until everything is spoken, end the audio."""
        rest = self.buffer.strip()
        self.buffer = ""
        if rest:
            self.queue.put_nowait(rest)
        self.queue.put_nowait(None)
        await self.worker
        if self.reported:
            raise _Reported
        if not self.spoken:
            raise TextError("The streamed text is empty: send words in synthesize-chunk events.")
        await self.utterance.finish()

    async def cancel(self) -> None:
        self.worker.cancel()
        await asyncio.gather(self.worker, return_exceptions=True)

    async def _work(self) -> None:
        """Speak queued text until the end marker; a failure is reported to the client here
        and closes the connection."""
        max_chars = self.handler.state.settings.max_chars
        backlog: list[str] = []
        ended = False
        try:
            while backlog or not ended:
                if not backlog and not ended:
                    backlog.append(await self.queue.get())
                while not self.queue.empty():
                    backlog.append(self.queue.get_nowait())
                if backlog and backlog[-1] is None:
                    backlog.pop()
                    ended = True
                # Sentences completed while the last one was spoken go into one request, up to
                # --max-chars (the rest goes next).
                take, size = 0, 0
                while take < len(backlog) and (take == 0 or size + len(backlog[take]) < max_chars):
                    size += len(backlog[take]) + 1
                    take += 1
                text = " ".join(backlog[:take])
                del backlog[:take]
                if text and is_speakable(text):
                    spoke = await self.utterance.say(check_text(text, max_chars), whole=False)
                    self.spoken = self.spoken or spoke
        except (ConnectionError, OSError):
            self.reported = True
            await self.handler.stop()
        except Exception as exc:
            self.reported = True
            await self.handler.fail(exc)
            await self.handler.stop()


async def run(app: FastAPI, *, wyoming_uri: str, http: uvicorn.Config | None = None) -> None:
    """Serve `app`'s engine over Wyoming at `wyoming_uri`, alone (`http=None`: the app's
    start-up and shut-down run without HTTP) or beside uvicorn serving the app with `http`.
    Returns when the servers stop (Ctrl+C, SIGTERM)."""
    state: ServerState = app.state.kokoro
    wyoming = WyomingServer(state, wyoming_uri)
    await wyoming.bind()  # a bad address fails now, not after the warm-up
    try:
        if http is None:
            loop = asyncio.get_running_loop()
            main = asyncio.current_task()
            assert main is not None
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGTERM, main.cancel)
            async with app.router.lifespan_context(app):
                await wyoming.start()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()  # until cancelled
        else:
            import uvicorn

            server = uvicorn.Server(http)
            task = asyncio.create_task(server.serve(), name="kokoro-http")
            while not server.started and not task.done():
                await asyncio.sleep(0.05)
            if server.started:
                await wyoming.start()
            # Close Wyoming connections as soon as uvicorn begins to shut down (before the
            # engine they use stops).
            while not task.done() and not server.should_exit:
                await asyncio.wait({task}, timeout=0.1)
            await wyoming.close()
            await task
    finally:
        await wyoming.close()


class _SynthesisFailed(Exception):
    """A pipeline failed; its error was counted in the telemetry and is to be sent."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


class _Reported(Exception):
    """A failure already sent to the client: just close the connection."""


def _as_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, KokoroOptError):
        return from_domain(exc)
    logger.error("Wyoming request failed", exc_info=exc)
    return APIError(500, f"Synthesis failed: {type(exc).__name__}: {exc}", code="internal_error")


def _languages(default: str) -> list[str]:
    """The G2P's languages as BCP 47 tags (`en-US`), the server's default first."""
    codes = [default, *(c for c in LANGUAGES if c != default)]
    return [_bcp47(code) for code in codes]


def _bcp47(code: str) -> str:
    lang, _, region = code.partition("-")
    return f"{lang}-{region.upper()}" if region else lang
