"""The Wyoming server, driven by the `wyoming` package's own TCP client (as Home Assistant does).

Each test runs the server in-process on a free loopback port with the HTTP app's start-up (warm
sessions) but no HTTP listener, on the synthetic model.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from kokoro_opt.errors import UserInputError
from kokoro_opt.server import Engine, ServerSettings, create_app
from kokoro_opt.server.app import ServerState
from kokoro_opt.server.wyoming import (
    SAMPLES_PER_CHUNK,
    WyomingServer,
    complete_sentences,
    long_run_pieces,
    parse_uri,
    run,
)

T = TypeVar("T")
READ_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def engine(synthetic_fp32: Path) -> Engine:
    return Engine.load(synthetic_fp32, sessions=1, threads=1, model_id="kokoro-synthetic")


def serve(
    engine: Engine,
    scenario: Callable[[int, ServerState, Any], Awaitable[T]],
    settings: ServerSettings | None = None,
) -> T:
    """Run `scenario(port, state, app)` against a Wyoming server on a free port."""

    async def main() -> T:
        app = create_app(engine, settings or ServerSettings(cache_entries=0))
        async with app.router.lifespan_context(app):
            server = WyomingServer(app.state.kokoro, "tcp://127.0.0.1:0")
            await server.start()
            try:
                return await scenario(server.port, app.state.kokoro, app)
            finally:
                await server.close()

    return asyncio.run(main())


@dataclass
class Answer:
    events: list[Event] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]

    @property
    def pcm(self) -> bytes:
        return b"".join(
            AudioChunk.from_event(e).audio for e in self.events if AudioChunk.is_type(e.type)
        )


async def read_until(client: AsyncTcpClient, last: str) -> Answer:
    answer = Answer()
    while True:
        event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
        assert event is not None, f"connection closed after {answer.types}"
        answer.events.append(event)
        if event.type in (last, "error"):
            return answer


def check_audio(answer: Answer) -> np.ndarray:
    """One audio-start at 24 kHz PCM16 mono, chunks in that format of at most 1024 samples,
    audio-stop after them; returns the samples."""
    types = answer.types
    assert types.count("audio-start") == 1 and types.count("audio-stop") == 1, types
    first, stop = types.index("audio-start"), types.index("audio-stop")
    chunks = [e for e in answer.events if AudioChunk.is_type(e.type)]
    assert chunks and all(first < answer.events.index(c) < stop for c in chunks)
    start = AudioStart.from_event(answer.events[first])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    for event in chunks:
        chunk = AudioChunk.from_event(event)
        assert (chunk.rate, chunk.width, chunk.channels) == (24000, 2, 1)
        assert 0 < len(chunk.audio) <= SAMPLES_PER_CHUNK * 2 and len(chunk.audio) % 2 == 0
    samples = np.frombuffer(answer.pcm, dtype="<i2")
    assert np.abs(samples).max() > 100  # sound, not silence
    return samples


def test_describe_lists_every_voice_and_streaming(engine: Engine) -> None:
    async def scenario(port: int, state: ServerState, app: Any) -> Info:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
            assert event is not None and Info.is_type(event.type)
            return Info.from_event(event)

    info = serve(engine, scenario)
    (program,) = info.tts
    assert program.name == "kokoro-opt" and program.installed
    assert program.supports_synthesize_streaming is True
    assert [v.name for v in program.voices] == engine.voices.names
    assert program.voices[0].languages[0] == "en-US"
    assert "ja" in program.voices[0].languages


def test_synthesize_sends_the_pipelines_pcm_at_the_announced_rate(engine: Engine) -> None:
    text = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."

    async def scenario(port: int, state: ServerState, app: Any) -> tuple[Answer, bytes]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            voice = SynthesizeVoice(name="jm_kumo", language="en_US")
            await client.write_event(Synthesize(text=text, voice=voice).event())
            answer = await read_until(client, "audio-stop")
        # The same request over HTTP, in the same server state: the same pipeline and model.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"model": "tts-1", "input": text, "voice": "jm_kumo", "response_format": "pcm"}
            response = await http.post("/v1/audio/speech", json={**body, "stream": False})
            assert response.status_code == 200, response.text
        return answer, response.content

    answer, http_pcm = serve(engine, scenario)
    samples = check_audio(answer)
    assert answer.types[-1] == "audio-stop" and "synthesize-stopped" not in answer.types
    assert answer.pcm == http_pcm
    assert len(samples) == len(http_pcm) // 2
    stop = AudioStop.from_event(answer.events[-1])
    assert stop.timestamp == int(len(samples) * 1000 / 24000)


def test_streaming_speaks_the_first_sentence_before_the_text_ends(engine: Engine) -> None:
    async def scenario(port: int, state: ServerState, app: Any) -> tuple[Answer, Answer, int]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice("jf_alpha")).event())
            for piece in ("The birch canoe ", "slid on the smooth planks. "):
                await client.write_event(SynthesizeChunk(text=piece).event())
            # Nothing more is sent until audio of the first sentence has arrived.
            early = Answer()
            while not AudioChunk.is_type(early.types[-1] if early.types else ""):
                event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
                assert event is not None
                early.events.append(event)
            for piece in ("Glue the sheet", " to the dark blue background.", " Mr. ", "Smith"):
                await client.write_event(SynthesizeChunk(text=piece).event())
            # Home Assistant's compatibility copy of the whole text: ignored inside a stream.
            full = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue "
            await client.write_event(Synthesize(text=full + "background. Mr. Smith").event())
            await client.write_event(SynthesizeStop().event())
            rest = await read_until(client, "synthesize-stopped")
        return early, rest, state.telemetry.requests

    early, rest, requests = serve(engine, scenario)
    assert early.types[0] == "audio-start"
    whole = Answer(early.events + rest.events)
    check_audio(whole)
    assert whole.types[-2:] == ["audio-stop", "synthesize-stopped"]
    # The first sentence alone, then the rest in one or two calls (whether 'Glue ...' is spoken
    # before the stop arrives depends on timing; 'Mr.' does not end a sentence). The ignored
    # compatibility copy would have added an audio-start of its own (check_audio counts them).
    assert requests in (2, 3), requests


@pytest.mark.parametrize(
    ("events", "code", "words"),
    [
        ([Synthesize(text="Hello.", voice=SynthesizeVoice(name="af_sarah"))], "invalid_voice",
         "Unknown voice 'af_sarah'"),
        ([Synthesize(text="   ")], "invalid_input", "The text is empty"),
        ([Synthesize(text="Hello.", voice=SynthesizeVoice(language="xx"))], "invalid_lang",
         "Unsupported language 'xx'"),
        ([SynthesizeStart(), SynthesizeChunk(text=" ... "), SynthesizeStop()], "invalid_input",
         "streamed text is empty"),
        ([SynthesizeChunk(text="Hello.")], "invalid_value", "outside a stream"),
        ([SynthesizeStart(voice=SynthesizeVoice(name="nobody"))], "invalid_voice",
         "Unknown voice 'nobody'"),
    ],
)  # fmt: skip
def test_bad_input_gets_an_error_event_then_the_connection_closes(
    engine: Engine, events: list[Any], code: str, words: str
) -> None:
    async def scenario(port: int, state: ServerState, app: Any) -> tuple[Answer, Any]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            for event in events:
                await client.write_event(event.event())
            answer = await read_until(client, "error")
            after = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
        return answer, after

    answer, after = serve(engine, scenario)
    assert answer.types == ["error"], answer.types  # no audio-start before it
    error = Error.from_event(answer.events[-1])
    assert error.code == code and words in error.text
    assert "\n" not in error.text
    assert after is None  # closed: a client waiting for audio is not left hanging


def test_unknown_events_are_ignored_and_describe_works_mid_stream(engine: Engine) -> None:
    async def scenario(port: int, state: ServerState, app: Any) -> list[str]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Event(type="ping-something-new"))
            await client.write_event(SynthesizeStart().event())
            await client.write_event(Describe().event())
            info = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
            await client.write_event(SynthesizeChunk(text="Hello there").event())
            await client.write_event(SynthesizeStop().event())
            answer = await read_until(client, "synthesize-stopped")
        return [info.type if info else "closed", *answer.types]

    types = serve(engine, scenario)
    assert types[0] == "info"
    assert types[1] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"]


def test_busy_server_refuses_with_an_error_event(engine: Engine) -> None:
    async def scenario(port: int, state: ServerState, app: Any) -> Error:
        state.active = state.max_concurrent  # as if that many requests were running
        try:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(Synthesize(text="Hello.").event())
                answer = await read_until(client, "error")
        finally:
            state.active = 0
        return Error.from_event(answer.events[-1])

    error = serve(engine, scenario, ServerSettings(max_concurrent=1, cache_entries=0))
    assert error.code == "rate_limit_exceeded" and "--max-concurrent" in error.text


def test_run_alone_serves_until_cancelled(engine: Engine) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        unused_port = sock.getsockname()[1]

    async def main() -> str:
        app = create_app(engine, ServerSettings(cache_entries=0))
        task = asyncio.create_task(run(app, wyoming_uri=f"tcp://127.0.0.1:{unused_port}"))
        for _ in range(600):
            try:
                async with AsyncTcpClient("127.0.0.1", unused_port) as client:
                    await client.write_event(Synthesize(text="Hello.").event())
                    answer = await read_until(client, "audio-stop")
                    break
            except OSError:
                await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert app.state.kokoro.draining  # the app's shut-down ran
        return answer.types[-1]

    assert asyncio.run(main()) == "audio-stop"


@pytest.mark.parametrize(
    ("buffer", "done", "rest"),
    [
        ("Hello there", [], "Hello there"),
        ("Hello there. How", ["Hello there."], "How"),
        ("Hello there. ", ["Hello there."], ""),
        ("Hello there.", [], "Hello there."),  # '.5' may follow
        ("Ask Mr. ", [], "Ask Mr. "),
        ("Wait! Really? Yes", ["Wait!", "Really?"], "Yes"),
        ("One line\n\n", ["One line"], ""),
        ("", [], ""),
    ],
)
def test_complete_sentences(buffer: str, done: list[str], rest: str) -> None:
    assert complete_sentences(buffer) == (done, rest)


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1:10200", "tcp://127.0.0.1", "tcp://:10200", "unix://", "10200",
            "tcp://127.0.0.1:99999", "tcp://127.0.0.1:10200/x"]
)  # fmt: skip
def test_bad_uri_is_a_one_line_error(uri: str) -> None:
    with pytest.raises(UserInputError, match="Bad Wyoming URI") as info:
        parse_uri(uri)
    assert "tcp://HOST:PORT" in str(info.value) and "\n" not in str(info.value)


def test_good_uris() -> None:
    assert parse_uri("tcp://127.0.0.1:10200").uri == "tcp://127.0.0.1:10200"
    assert parse_uri("tcp://[::1]:10200").host == "::1"
    assert str(parse_uri("unix:///tmp/kokoro.sock").path) == "/tmp/kokoro.sock"


def test_port_in_use_is_a_clear_error(engine: Engine) -> None:
    async def scenario(port: int, state: ServerState, app: Any) -> str:
        other = WyomingServer(state, f"tcp://127.0.0.1:{port}")
        with pytest.raises(UserInputError, match=f"Cannot listen on tcp://127.0.0.1:{port}") as e:
            await other.bind()
        return str(e.value)

    assert "another port" in serve(engine, scenario)


def test_long_run_pieces() -> None:
    assert long_run_pieces("one, two, thr", 5) == (["one,", "two,"], "thr")
    assert long_run_pieces("one two three four ", 9) == (["one two", "three"], "four ")
    assert long_run_pieces("short", 100) == ([], "short")


def test_streamed_text_without_sentence_ends_is_spoken_in_clauses(engine: Engine) -> None:
    words = " ".join(f"word{i}," if i % 7 == 6 else f"word{i}" for i in range(80))

    async def scenario(port: int, state: ServerState, app: Any) -> tuple[int, Answer]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text=words + " ").event())
            first = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
            assert first is not None and first.type == "audio-start"  # before the stop
            await client.write_event(SynthesizeStop().event())
            answer = await read_until(client, "synthesize-stopped")
        return state.telemetry.requests, Answer([first, *answer.events])

    requests, answer = serve(
        engine, scenario, ServerSettings(cache_entries=0, max_segment_chars=60)
    )
    check_audio(answer)
    assert requests >= 2


def test_a_whole_book_in_one_chunk_is_split_under_max_chars(engine: Engine) -> None:
    text = "This sentence has some words in it. " * 40  # about 1,400 characters

    async def scenario(port: int, state: ServerState, app: Any) -> tuple[int, Answer]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text=text).event())
            await client.write_event(SynthesizeStop().event())
            answer = await read_until(client, "synthesize-stopped")
        return state.telemetry.requests, answer

    requests, answer = serve(engine, scenario, ServerSettings(cache_entries=0, max_chars=500))
    check_audio(answer)
    assert requests >= 3  # no request over --max-chars, no error


def test_unix_socket(engine: Engine, tmp_path: Path) -> None:
    from wyoming.client import AsyncUnixClient

    path = tmp_path / "kokoro.sock"

    async def main() -> str:
        app = create_app(engine, ServerSettings(cache_entries=0))
        async with app.router.lifespan_context(app):
            server = WyomingServer(app.state.kokoro, f"unix://{path}")
            await server.start()
            try:
                async with AsyncUnixClient(path) as client:
                    await client.write_event(Describe().event())
                    event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
            finally:
                await server.close()
        return event.type if event else "closed"

    assert asyncio.run(main()) == "info"
    assert not path.exists()  # removed at close


def test_markup_pauses_and_ssml_rules_apply(engine: Engine) -> None:
    text = "Hello there. [pause:0.5s] And now more."

    async def scenario(port: int, state: ServerState, app: Any) -> tuple[Answer, bytes, Answer]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Synthesize(text=text).event())
            answer = await read_until(client, "audio-stop")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"model": "tts-1", "input": text, "voice": state.settings.default_voice}
            response = await http.post(
                "/v1/audio/speech", json={**body, "response_format": "pcm", "stream": False}
            )
        async with AsyncTcpClient("127.0.0.1", port) as client:
            bad = Synthesize(text="<prosody rate='slow'>Hello</prosody>")
            await client.write_event(bad.event())
            refused = await read_until(client, "audio-stop")
        return answer, response.content, refused

    answer, http_pcm, refused = serve(engine, scenario)
    samples = check_audio(answer)
    assert answer.pcm == http_pcm  # the same markup reading as HTTP
    silent = samples == 0
    longest = run = 0
    for quiet in silent:
        run = run + 1 if quiet else 0
        longest = max(longest, run)
    assert abs(longest / 24000 - 0.5) < 0.010
    assert refused.types == ["error"] and "prosody" in Error.from_event(refused.events[0]).text


def test_a_stream_may_end_with_a_pause(engine: Engine) -> None:
    async def scenario(port: int, state: ServerState, app: Any) -> Answer:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="Hello there. ").event())
            first = await read_until(client, "audio-chunk")  # the sentence is being spoken
            await client.write_event(SynthesizeChunk(text="[pause:1s]").event())
            await client.write_event(SynthesizeStop().event())
            rest = await read_until(client, "synthesize-stopped")
            return Answer(first.events + rest.events)

    answer = serve(engine, scenario)
    samples = check_audio(answer)
    trailing_zeros = int(np.argmax(samples[::-1] != 0))
    assert abs(trailing_zeros / 24000 - 1.0) < 0.010  # the pause, as silence at the end
