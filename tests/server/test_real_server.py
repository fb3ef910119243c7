"""The server on the real Kokoro-82M (INT8 export and restored FP32) over real HTTP: streaming
with the official openai client and with httpx gives a valid WAV whose end is clean speech or
silence, and the ndjson stream reassembles into the same audio."""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from kokoro_opt.runtime.audio import ends_clean, tail_report
from kokoro_opt.server import Engine, ServerSettings
from kokoro_opt.server.client import stream_speech
from tests.server.conftest import running_server

pytestmark = pytest.mark.real

TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
VOICE = "jf_gongitsune"


@pytest.fixture(scope="module", params=["kokoro-int8-export", "kokoro-fp32"])
def real_server(request: pytest.FixtureRequest, real_models: dict[str, Path]) -> Iterator[str]:
    engine = Engine.load(real_models[request.param], sessions=1, threads=2)
    # Short segments keep the warm-up (which runs the longest possible segment) quick.
    settings = ServerSettings(timeout_s=120, max_segment_chars=120)
    with running_server(engine, settings) as url:
        yield url


def _check_audio(pcm: np.ndarray) -> None:
    """Real speech of plausible length whose last 100 ms are quiet, with no garbage."""
    audio = pcm.astype(np.float32) / 32767
    assert 3.0 < len(audio) / 24000 < 12.0
    assert np.sqrt(np.mean(audio**2)) > 0.01  # there is speech
    assert np.mean(np.abs(pcm.astype(np.int32)) >= 32767) < 1e-4  # no clipped garbage
    assert ends_clean(audio, 24000), tail_report(audio, 24000)  # no static at the end


def _wav_pcm(data: bytes) -> np.ndarray:
    assert data[:4] == b"RIFF" and data[36:40] == b"data"
    assert struct.unpack("<HHI", data[20:28]) == (1, 1, 24000)
    pcm = np.frombuffer(data[44:], dtype="<i2")
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")  # a real decoder accepts it
    assert rate == 24000 and len(audio) == len(pcm)
    return pcm


def test_openai_client_streams_a_clean_wav(real_server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{real_server}/v1", api_key="unused", max_retries=0, timeout=300)
    pieces: list[bytes] = []
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=VOICE, input=TEXT, response_format="wav"
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        for piece in response.iter_bytes(chunk_size=8192):
            pieces.append(piece)
    assert len(pieces) > 1  # it arrived in parts, not as one block
    _check_audio(_wav_pcm(b"".join(pieces)))


def test_httpx_stream_ndjson_and_whole_file_agree(real_server: str) -> None:
    body = {"model": "kokoro", "input": TEXT, "voice": VOICE}
    with httpx.stream("POST", f"{real_server}/v1/audio/speech", json=body, timeout=300) as r:
        assert r.status_code == 200
        streamed = _wav_pcm(b"".join(r.iter_raw()))
    _check_audio(streamed)
    whole = httpx.post(
        f"{real_server}/v1/audio/speech", json={**body, "stream": False}, timeout=300
    ).content
    assert struct.unpack("<I", whole[40:44])[0] == len(whole) - 44
    records = stream_speech(real_server, TEXT, voice=VOICE, stream_format="ndjson")
    # The export is deterministic on one machine: every transport carries the same samples.
    np.testing.assert_array_equal(_wav_pcm(whole), streamed)
    np.testing.assert_array_equal(records.samples, streamed)
    chunks = [r for r in records.records if r["type"] == "chunk"]
    assert len(chunks) >= 3  # short first clause, then the rest
    for chunk in chunks:  # every chunk starts and ends near zero: joins cannot click
        pcm = np.frombuffer(base64.b64decode(chunk["samples"]), dtype="<i2")
        assert abs(int(pcm[0])) < 330 and abs(int(pcm[-1])) < 330
    last = np.frombuffer(base64.b64decode(chunks[-1]["samples"]), dtype="<i2")
    tail = last.astype(np.float32) / 32767
    assert ends_clean(tail, 24000), tail_report(tail, 24000)
    status = httpx.get(f"{real_server}/status").json()
    assert status["requests"]["nonfinite_samples"] == 0
    assert status["requests"]["ttfa_ms"]["count"] >= 3
