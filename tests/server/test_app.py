"""The server over real HTTP (uvicorn on 127.0.0.1) with the synthetic model: streaming WAV
with httpx and the openai package, PCM, whole files, compressed formats, ndjson/SSE, the primer
cache, and the operations endpoints."""

from __future__ import annotations

import io
import struct
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from kokoro_opt.server.client import reassemble, stream_speech
from kokoro_opt.server.encoding import supported_formats

TEXT = (
    "Well, that went better than expected. The birch canoe slid on the smooth planks. "
    "Glue the sheet to the dark blue background."
)
VOICE = "jf_gongitsune"


def _speech(url: str, **fields: object) -> httpx.Response:
    body = {"model": "kokoro", "input": TEXT, "voice": VOICE, **fields}
    return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60)


def _wav_pcm(data: bytes) -> np.ndarray:
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    fmt_tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[20:36])
    assert (fmt_tag, channels, rate, bits) == (1, 1, 24000, 16)
    assert data[36:40] == b"data"
    return np.frombuffer(data[44:], dtype="<i2")


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode any soundfile format in blocks (a streamed FLAC says its length is unknown)."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        parts = []
        while len(block := f.read(24000, dtype="float32")):
            parts.append(block)
        return np.concatenate(parts), f.samplerate


def test_health_models_voices(server: str) -> None:
    health = httpx.get(f"{server}/health").json()
    assert health == {"status": "ok", "model": "kokoro-synthetic"}
    models = httpx.get(f"{server}/v1/models").json()
    ids = [m["id"] for m in models["data"]]
    assert ids[0] == "kokoro-synthetic" and "tts-1" in ids and models["object"] == "list"
    assert httpx.get(f"{server}/v1/models/tts-1").json()["root"] == "kokoro-synthetic"
    voices = httpx.get(f"{server}/v1/audio/voices").json()
    assert VOICE in voices["voices"] and voices["default"] == VOICE


def test_streaming_wav_with_httpx(server: str) -> None:
    body = {"model": "kokoro", "input": TEXT, "voice": VOICE}
    arrivals: list[tuple[float, int]] = []
    data = b""
    start = time.perf_counter()
    with httpx.stream("POST", f"{server}/v1/audio/speech", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        for piece in response.iter_raw():
            arrivals.append((time.perf_counter() - start, len(piece)))
            data += piece
    # Streaming header: sizes unknown (0xFFFFFFFF) because the length is not known yet.
    assert struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    pcm = _wav_pcm(data)
    assert len(data) % 2 == 0 and len(pcm) > 1000
    assert np.abs(pcm).max() > 300  # audible
    # soundfile reads the unknown-length stream to the end
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000 and len(audio) == len(pcm)


def test_streaming_wav_with_openai_client(server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=VOICE, input=TEXT, response_format="wav"
    ) as response:
        assert response.status_code == 200
        data = b"".join(response.iter_bytes(chunk_size=4096))
    assert len(_wav_pcm(data)) > 1000


def test_formats_carry_the_same_audio(server: str) -> None:
    """The model is deterministic, so WAV stream, PCM stream, a whole WAV, ndjson and SSE must
    carry the same samples."""
    streamed = _wav_pcm(_speech(server).content)
    pcm = np.frombuffer(_speech(server, response_format="pcm").content, dtype="<i2")
    whole_pcm = _speech(server, response_format="pcm", stream=False).content
    assert whole_pcm == pcm.tobytes()
    whole = _speech(server, stream=False)
    assert whole.headers["content-length"] == str(len(whole.content))
    data = whole.content
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8  # exact sizes when not streamed
    assert struct.unpack("<I", data[40:44])[0] == len(data) - 44
    ndjson = stream_speech(server, TEXT, voice=VOICE, stream_format="ndjson")
    sse = stream_speech(server, TEXT, voice=VOICE, stream_format="sse")
    for other in (pcm, _wav_pcm(data), ndjson.samples, sse.samples):
        np.testing.assert_array_equal(other, streamed)
    assert ndjson.chunks >= 3  # one chunk per segment: the short first clause, then sentences
    assert ndjson.done["total_samples"] == len(streamed)


COMPRESSED = [f for f in ("mp3", "opus", "flac") if f in supported_formats()]


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_compressed_formats_decode(server: str, fmt: str) -> None:
    reference = _wav_pcm(_speech(server).content)
    whole = _speech(server, response_format=fmt, stream=False)
    streamed = _speech(server, response_format=fmt)
    assert whole.status_code == streamed.status_code == 200, whole.text
    audio, rate = sf.read(io.BytesIO(whole.content), dtype="float32")
    assert rate == 24000
    # Lossy codecs pad and delay a little; the length must still match within 100 ms.
    assert abs(len(audio) - len(reference)) < 0.1 * 24000
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.01
    if fmt == "flac":
        # A stream cannot go back to fill in FLAC's totals, so it says "length unknown" (which
        # libsndfile reads badly); everything after the 42-byte STREAMINFO header is identical.
        assert len(streamed.content) == len(whole.content)
        assert streamed.content[42:] == whole.content[42:]
    else:
        decoded, rate = _decode(streamed.content)
        assert rate == 24000 and abs(len(decoded) - len(reference)) < 0.1 * 24000


def test_ndjson_records_are_sequence_tagged(server: str) -> None:
    body = {
        "model": "kokoro",
        "input": TEXT,
        "voice": VOICE,
        "response_format": "pcm",
        "stream_format": "ndjson",
    }
    response = httpx.post(f"{server}/v1/audio/speech", json=body, timeout=60)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    result = reassemble(lines)
    seqs = [r["seq"] for r in result.records if r["type"] == "chunk"]
    assert seqs == list(range(len(seqs)))
    assert result.records[-1]["type"] == "done"
    # Reversed lines still reassemble (reordered by seq), and say so.
    head, done = lines[:-1], lines[-1]
    again = reassemble([*reversed(head), done])
    assert again.reordered and np.array_equal(again.samples, result.samples)


def test_primer_cache_hits_on_repeated_opening(server: str) -> None:
    before = httpx.get(f"{server}/status").json()["cache"]
    first = _speech(server, input="Hello there, primer cache. A second sentence follows.")
    second = _speech(server, input="Hello there, primer cache. A second sentence follows.")
    after = httpx.get(f"{server}/status").json()["cache"]
    assert after["hits"] >= before["hits"] + 1
    assert first.content == second.content  # a cache hit does not change the audio


def test_silence_primer(engine: object) -> None:
    from kokoro_opt.server import ServerSettings
    from tests.server.conftest import running_server

    with running_server(engine, ServerSettings(primer_ms=50, warmup=False)) as url:
        pcm = _wav_pcm(_speech(url).content)
        ndjson = stream_speech(url, TEXT, voice=VOICE)
    assert np.all(pcm[:1200] == 0)  # 50 ms of silence at 24 kHz
    assert ndjson.records[0]["num_samples"] == 1200 and ndjson.records[0]["seq"] == 0
    np.testing.assert_array_equal(ndjson.samples, pcm)


def test_status_and_metrics(server: str) -> None:
    _speech(server)
    status = httpx.get(f"{server}/status").json()
    assert status["ready"] is True
    assert status["model"]["id"] == "kokoro-synthetic"
    assert status["model"]["providers"] == ["CPUExecutionProvider"] * 2
    assert status["pool"]["size"] == 2 and status["pool"]["idle"] == 2
    assert status["limits"]["max_concurrent"] == 8  # default: 4 streams per session
    assert status["requests"]["completed"] >= 1
    assert status["requests"]["ttfa_ms"]["p50"] > 0
    assert status["requests"]["rtf"]["p50"] > 0
    assert set(status["queues"]) == {"text", "audio", "out", "session_waiters"}
    assert status["warmup"]["total_s"] > 0 and status["warmup"]["rtf"] > 0
    # the warm-up's speed seeds load shedding: a capacity is known before any request
    assert status["limits"]["stream_capacity"] >= 1
    assert status["process"]["rss_mb"] > 0
    text = httpx.get(f"{server}/metrics").text
    for name in (
        "kokoro_requests_total",
        'kokoro_responses_total{code="200"}',
        'kokoro_time_to_first_audio_seconds{quantile="0.5"}',
        "kokoro_time_to_first_audio_seconds_count",
        'kokoro_pool_sessions{state="idle"} 2',
        "kokoro_cache_hits",
    ):
        assert name in text, name
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value)


def test_self_bench_runs_while_idle(engine: object) -> None:
    from kokoro_opt.server import ServerSettings
    from tests.server.conftest import running_server

    with running_server(engine, ServerSettings(self_bench_interval_s=0.2, warmup=False)) as url:
        deadline = time.monotonic() + 30
        runs: list[dict] = []
        while time.monotonic() < deadline and not runs:
            runs = httpx.get(f"{url}/status").json()["self_bench"]
            time.sleep(0.1)
        metrics = httpx.get(f"{url}/metrics").text
    assert runs and runs[0]["rtf"] > 0 and runs[0]["ttfa_ms"] > 0 and runs[0]["segments"] >= 2
    assert "kokoro_self_bench_rtf" in metrics


@pytest.mark.parametrize(
    ("lang", "text"), [("en", "Hello there."), ("a", "Hello there."), ("es", "Hola, ¿cómo estás?")]
)
def test_languages_and_aliases(server: str, lang: str, text: str) -> None:
    """`en` is English (the seed's espeak backend rejected it), Kokoro's one-letter codes work,
    and other languages go through espeak-ng."""
    response = _speech(server, input=text, lang=lang, stream=False)
    assert response.status_code == 200, response.text
    assert len(_wav_pcm(response.content)) > 100
