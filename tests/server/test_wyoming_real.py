"""The Wyoming server on the real Kokoro-82M (INT8 export): a streamed request from the
`wyoming` package's client gets speech of a plausible length, first audio before the text ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from kokoro_opt.server import Engine, ServerSettings, create_app
from kokoro_opt.server.wyoming import WyomingServer


@pytest.mark.real
def test_real_model_streams_speech_over_wyoming(real_models: dict[str, Path]) -> None:
    engine = Engine.load(real_models["kokoro-int8-export"], sessions=1, threads=2)

    async def main() -> tuple[list[str], bytes, bool]:
        app = create_app(engine, ServerSettings(cache_entries=0, max_segment_chars=100))
        async with app.router.lifespan_context(app):
            server = WyomingServer(app.state.kokoro, "tcp://127.0.0.1:0")
            await server.start()
            try:
                async with AsyncTcpClient("127.0.0.1", server.port) as client:
                    voice = SynthesizeVoice(name="jf_gongitsune")
                    await client.write_event(SynthesizeStart(voice=voice).event())
                    await client.write_event(SynthesizeChunk(text="Hello there. ").event())
                    types: list[str] = []
                    pcm = b""
                    while not pcm:  # audio for the first sentence, before the rest is sent
                        event = await asyncio.wait_for(client.read_event(), 120)
                        assert event is not None and event.type != "error", event
                        types.append(event.type)
                        if AudioStart.is_type(event.type):
                            start = AudioStart.from_event(event)
                            assert (start.rate, start.width, start.channels) == (24000, 2, 1)
                        if AudioChunk.is_type(event.type):
                            pcm += AudioChunk.from_event(event).audio
                    early = True
                    await client.write_event(SynthesizeChunk(text="How are you today?").event())
                    await client.write_event(SynthesizeStop().event())
                    while types[-1] != "synthesize-stopped":
                        event = await asyncio.wait_for(client.read_event(), 120)
                        assert event is not None and event.type != "error", event
                        types.append(event.type)
                        if AudioChunk.is_type(event.type):
                            pcm += AudioChunk.from_event(event).audio
                return types, pcm, early
            finally:
                await server.close()

    types, pcm, early = asyncio.run(main())
    assert (
        early and types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"]
    )
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767
    seconds = len(samples) / 24000
    assert 1.5 < seconds < 6.0, seconds  # two short sentences of speech
    assert np.sqrt(np.mean(samples**2)) > 0.01  # speech, not silence
