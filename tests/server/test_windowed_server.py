"""The server with a split model: windows stream as ndjson records with their words, the audio
is whole."""

from __future__ import annotations

import httpx
import numpy as np
import onnx
import pytest

from kokoro_opt.passes import split as split_pass
from kokoro_opt.passes.base import PassContext
from kokoro_opt.runtime.windowed import WindowPlan
from kokoro_opt.server import Engine, ServerSettings
from kokoro_opt.server.client import reassemble, stream_speech
from tests.passes.split_graphs import kokoro_anatomy_model, timed_anatomy_model
from tests.server.conftest import running_server

TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."


@pytest.fixture(scope="module")
def split_engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Engine]:
    folder = tmp_path_factory.mktemp("server-split")
    model = kokoro_anatomy_model()
    onnx.save(model, folder / "k.onnx")
    models = split_pass.split(model, split_pass.Config(), PassContext(threads=1))
    split_pass.save(models, folder / "k.split")
    plan = WindowPlan("first", first=4, trail=12)
    windowed = Engine.load(folder / "k.onnx", threads=1, split=folder / "k.split", window=plan)
    whole = Engine.load(folder / "k.onnx", threads=1, split=folder / "k.split")
    return windowed, whole


def _speak(url: str) -> tuple[int, np.ndarray]:
    body = {"model": "kokoro", "input": TEXT, "voice": "jf_alpha", "response_format": "pcm",
            "stream_format": "ndjson"}  # fmt: skip
    response = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == 200
    result = reassemble(response.text.splitlines())
    chunks = [r for r in result.records if r["type"] == "chunk"]
    return len(chunks), result.samples


def test_windowed_server_streams_windows(split_engines: tuple[Engine, Engine]) -> None:
    windowed, whole = split_engines
    assert windowed.windowed and not whole.windowed
    settings = ServerSettings(first_segment_chars=300, cache_entries=0)
    with running_server(windowed, settings) as url:
        chunks, pcm = _speak(url)
    with running_server(whole, settings) as url:
        whole_chunks, ref = _speak(url)
    assert chunks > whole_chunks
    assert np.abs(pcm).max() > 300
    assert abs(len(pcm) - len(ref)) < 0.2 * len(ref)  # same speech, trimmed pads may differ
    with running_server(windowed, ServerSettings(first_segment="clause", cache_entries=0)) as url:
        primed_chunks, primed = _speak(url)
    assert primed_chunks > 1 and np.abs(primed).max() > 300


def test_first_segment_setting_is_checked() -> None:
    with pytest.raises(Exception, match="first-segment must be clause or sentence"):
        ServerSettings(first_segment="word")


def test_windowed_records_carry_the_words(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A split model at 600 samples per frame with silent pads: the windowed server's ndjson and
    SSE records and its JSON endpoint give the words of the whole-segment server, at the same
    times (seconds of the stream) within a frame, each in the record of the window it starts in."""
    folder = tmp_path_factory.mktemp("server-split-words")
    model = timed_anatomy_model()
    onnx.save(model, folder / "k.onnx")
    split_pass.save(split_pass.split(model, split_pass.Config(), PassContext(threads=1)),
                    folder / "k.split")  # fmt: skip
    plan = WindowPlan("first", first=6, ahead=0, trail=12)
    windowed = Engine.load(folder / "k.onnx", threads=1, split=folder / "k.split", window=plan)
    whole = Engine.load(folder / "k.onnx", threads=1)
    assert windowed.windowed and windowed.timestamps and whole.timestamps
    text = "The birch canoe slid on the smooth planks."
    settings = ServerSettings(first_segment="sentence", first_segment_chars=300, cache_entries=0)
    with running_server(windowed, settings) as url:
        ndjson = stream_speech(url, text, voice="jf_alpha", stream_format="ndjson")
        sse = stream_speech(url, text, voice="jf_alpha", stream_format="sse")
        body = {"model": "kokoro", "input": text, "voice": "jf_alpha", "response_format": "wav"}
        response = httpx.post(f"{url}/v1/audio/speech/timestamps", json=body, timeout=60)
    with running_server(whole, settings) as url:
        reference = stream_speech(url, text, voice="jf_alpha", stream_format="ndjson")
    assert response.status_code == 200, response.text
    chunks = [r for r in ndjson.records if r["type"] == "chunk"]
    assert len(chunks) == 2 and all(r["words"] for r in chunks)  # words in both windows
    for record in chunks:  # each word starts in its record's audio
        begin = record["sample_offset"] / 24000
        for w in record["words"]:
            assert begin - 1e-3 <= w["start"] <= begin + record["num_samples"] / 24000
    assert ndjson.words == sse.words == response.json()["words"]
    assert [w["word"] for w in ndjson.words] == [w["word"] for w in reference.words]
    assert len(ndjson.words) == 8
    for got, ref in zip(ndjson.words, reference.words, strict=True):
        assert abs(got["start"] - ref["start"]) <= 0.025 and abs(got["end"] - ref["end"]) <= 0.025
