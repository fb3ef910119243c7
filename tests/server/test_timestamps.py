"""Word timestamps, pauses and markup through the server: ndjson/SSE records, the JSON endpoint,
and the same times as `Synthesizer` gives for the same audio."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from kokoro_opt.runtime.audio import speech_span
from kokoro_opt.runtime.markup import Lexicon
from kokoro_opt.runtime.synthesizer import Synthesizer
from kokoro_opt.server import Engine, ServerSettings
from kokoro_opt.server.client import stream_speech
from tests.runtime.timed_models import build_timed_model
from tests.server.conftest import running_server

VOICE = "jf_gongitsune"
TEXT = "Well, that went better than expected. [pause:0.4s] The birch canoe slid on 5 planks."


@pytest.fixture(scope="module")
def timed_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_timed_model(tmp_path_factory.mktemp("timed") / "timed.onnx")


@pytest.fixture(scope="module")
def timed_server(timed_path: Path) -> Iterator[str]:
    engine = Engine.load(timed_path, sessions=1, threads=1, model_id="kokoro-timed")
    assert engine.timestamps
    lexicon = Lexicon.from_entries([("planks", "plˈæŋks plˈæŋks")])
    with running_server(engine, ServerSettings(lexicon=lexicon, cache_entries=4)) as url:
        yield url


def _json_endpoint(url: str, text: str, **extra: object) -> httpx.Response:
    body = {"model": "kokoro", "input": text, "voice": VOICE, "response_format": "wav", **extra}
    return httpx.post(f"{url}/v1/audio/speech/timestamps", json=body, timeout=120)


def test_records_and_json_endpoint_carry_the_same_words(timed_server: str) -> None:
    ndjson = stream_speech(timed_server, TEXT, voice=VOICE, stream_format="ndjson")
    sse = stream_speech(timed_server, TEXT, voice=VOICE, stream_format="sse")
    response = _json_endpoint(timed_server, TEXT)
    assert response.status_code == 200, response.text
    body = response.json()
    audio, rate = sf.read(io.BytesIO(base64.b64decode(body["audio"])), dtype="int16")
    assert rate == 24000 and body["sample_rate"] == 24000
    np.testing.assert_array_equal(audio, ndjson.samples)  # the same audio everywhere ...
    assert ndjson.words == sse.words == body["words"]  # ... so the same words and times
    words = [w["word"] for w in body["words"]]
    expected = "Well that went better than expected The birch canoe slid on 5 planks"
    assert words == expected.split(" ")
    duration = len(audio) / rate
    assert body["duration_s"] == pytest.approx(duration, abs=1e-3)
    for w in body["words"]:
        assert 0 <= w["start"] <= w["end"] <= duration + 1e-3
    starts = [w["start"] for w in body["words"]]
    assert starts == sorted(starts)


def test_primer_cache_hit_keeps_the_words(timed_server: str) -> None:
    first = stream_speech(timed_server, "Hello world. Goodbye.", voice=VOICE)
    again = stream_speech(timed_server, "Hello world. Goodbye.", voice=VOICE)
    assert first.words == again.words and [w["word"] for w in first.words][:2] == [
        "Hello",
        "world",
    ]


def test_same_times_as_the_runtime_for_one_segment(timed_server: str, timed_path: Path) -> None:
    """`kokoro-opt speak` (the Synthesizer) and the server cut one-segment text the same way,
    so they give the same audio start and the same word times."""
    synth = Synthesizer(timed_path, threads=1, timestamps=True)
    _, _, words = synth.synthesize_timed("Hello world.", voice=VOICE)
    served = stream_speech(timed_server, "Hello world.", voice=VOICE).words
    assert [w["word"] for w in served] == [w.word for w in words]
    for a, b in zip(served, words, strict=True):
        assert a["start"] == pytest.approx(b.start, abs=1e-3)
        assert a["end"] == pytest.approx(b.end, abs=1e-3)


def test_pause_and_break_are_exact_in_the_stream(timed_server: str) -> None:
    for markup, seconds in (("[pause:0.5s]", 0.5), ('<break time="250ms"/>', 0.25)):
        result = stream_speech(timed_server, f"Hello world. {markup} Goodbye now.", voice=VOICE)
        chunks = sorted(
            (r for r in result.records if r.get("type") == "chunk"), key=lambda r: r["seq"]
        )
        assert len(chunks) == 3
        pcm = result.float_samples()
        first = chunks[0]["num_samples"]
        gap_start = speech_span(pcm[:first])[1]
        third = chunks[2]["sample_offset"]
        gap_end = third + speech_span(pcm[third:])[0]
        assert abs((gap_end - gap_start) / 24000 - seconds) <= 0.010


def test_lexicon_and_markup_errors(timed_server: str) -> None:
    lexicon = stream_speech(timed_server, "Smooth planks.", voice=VOICE)  # planks said twice
    inline = stream_speech(timed_server, "Smooth [planks](/plˈæŋks/).", voice=VOICE)
    assert lexicon.words[-1]["word"] == inline.words[-1]["word"] == "planks"
    assert lexicon.duration_s > inline.duration_s  # the inline pronunciation wins
    bad = [
        ("Hi <emphasis>you</emphasis>.", "Unsupported SSML tag <emphasis>"),
        ("Hi [pause:later] you.", "Bad pause"),
        ("Say [it](/ɪ#t/).", "'#' (U+0023) is not a Kokoro phoneme symbol"),
        ("[pause:1s]", "Nothing speakable"),
    ]
    for text, message in bad:
        for path in ("/v1/audio/speech", "/v1/audio/speech/timestamps"):
            response = httpx.post(
                f"{timed_server}{path}",
                json={"model": "kokoro", "input": text, "voice": VOICE},
                timeout=60,
            )
            assert response.status_code == 400, (text, path)
            assert message in response.json()["error"]["message"]


def test_json_endpoint_refuses_a_stream_format(timed_server: str) -> None:
    response = _json_endpoint(timed_server, "Hello.", stream_format="ndjson", response_format="pcm")
    assert response.status_code == 400
    assert "stream_format" in response.json()["error"]["message"]


def test_models_without_durations(synthetic_fp32: Path) -> None:
    engine = Engine.load(synthetic_fp32, sessions=1, threads=1)
    assert not engine.timestamps
    with running_server(engine) as url:
        result = stream_speech(url, "Hello there. [pause:0.2s] Bye.", voice=VOICE)
        assert result.words == [] and all("words" not in r for r in result.records)
        response = _json_endpoint(url, "Hello.")
        assert response.status_code == 501
        assert "no duration predictor" in response.json()["error"]["message"]
