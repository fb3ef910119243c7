"""The synthesizer on the synthetic Kokoro-shaped model: streaming, validation, audio guards."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from kokoro_opt.errors import LanguageError, TextError, UserInputError, VoiceError
from kokoro_opt.runtime.audio import tail_report
from kokoro_opt.runtime.segment import SegmentPolicy
from kokoro_opt.runtime.synthesizer import (
    EDGE_RAMP_S,
    SAMPLE_RATE,
    AudioChunk,
    Synthesizer,
    finish_audio,
    guard_audio,
)
from kokoro_opt.runtime.tokenizer import MAX_PHONEMES, tokenize
from kokoro_opt.runtime.voices import VoiceLibrary, style_for
from tests.runtime.tiny_models import build_contract_model

TEXT = (
    "Well, that went better than expected. The birch canoe slid on the smooth planks. "
    "Glue the sheet to the dark blue background. It's easy to tell the depth of a well."
)


@pytest.fixture(scope="module")
def synth(synthetic_fp32: Path) -> Synthesizer:
    return Synthesizer(synthetic_fp32, threads=1)


def test_loads_contract_and_voices(synth: Synthesizer) -> None:
    assert synth.contract.tokens == "tokens" and synth.contract.audio == "audio"
    assert synth.providers == ["CPUExecutionProvider"]
    assert "jf_gongitsune" in synth.voices


def test_infer_pads_and_scales(synth: Synthesizer) -> None:
    style = np.zeros((1, 256), np.float32)
    short = synth.infer([43, 44, 45], style, 1.0)
    long_ = synth.infer([43, 44, 45] * 10, style, 1.0)
    slow = synth.infer([43, 44, 45], style, 0.5)
    assert short.dtype == np.float32 and short.ndim == 1
    assert len(long_) > len(short) and len(slow) > len(short)
    with pytest.raises(TextError, match="No phonemes"):
        synth.infer([], style, 1.0)
    with pytest.raises(TextError, match="at most 510"):
        synth.infer([43] * (MAX_PHONEMES + 1), style, 1.0)


def test_stream_yields_one_chunk_per_segment(synth: Synthesizer) -> None:
    chunks = list(synth.stream(TEXT, voice="jf_gongitsune", lang="en"))
    assert len(chunks) >= 2
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[0].text == "Well,"  # early-primer fast path: the first short clause
    assert " ".join(c.text for c in chunks) == TEXT
    for c in chunks:
        assert isinstance(c, AudioChunk) and c.sample_rate == SAMPLE_RATE == 24000
        assert c.samples.dtype == np.float32 and c.samples.ndim == 1 and len(c.samples) > 0
        assert np.isfinite(c.samples).all() and np.abs(c.samples).max() <= 1.0
        assert c.nonfinite == 0
        assert c.samples[0] == 0.0 and c.samples[-1] == 0.0  # edge ramps: no click
        assert set(c.timings) == {"g2p_ms", "infer_ms", "audio_s"}
        assert c.timings["audio_s"] == pytest.approx(c.duration_s)
        assert tokenize(c.phonemes) and len(tokenize(c.phonemes)) <= MAX_PHONEMES


def test_stream_without_fast_path_packs_sentences(synth: Synthesizer) -> None:
    fast = list(synth.stream(TEXT, voice="jf_alpha"))
    packed = list(synth.stream(TEXT, voice="jf_alpha", first_segment_fast=False))
    assert len(packed) < len(fast)
    assert packed[0].text.startswith("Well, that went better than expected.")


def test_per_call_segment_policy(synth: Synthesizer) -> None:
    tiny = SegmentPolicy(first_max_chars=10, max_chars=30)
    chunks = list(synth.stream(TEXT, voice="jf_alpha", segment_policy=tiny))
    assert all(len(c.text) <= 30 for c in chunks) and len(chunks) > 5
    assert " ".join(c.text for c in chunks) == TEXT


def test_closing_the_stream_stops_it(synth: Synthesizer) -> None:
    stream = synth.stream(TEXT, voice="jf_alpha")
    first = next(stream)
    assert first.seq == 0
    stream.close()
    assert next(stream, None) is None


def test_synthesize_is_the_stream_concatenated(synth: Synthesizer) -> None:
    audio, sr = synth.synthesize(TEXT, voice="jf_alpha*0.7+jm_kumo*0.3", speed=1.2)
    chunks = synth.stream(TEXT, voice="jf_alpha*0.7+jm_kumo*0.3", speed=1.2)
    assert sr == 24000
    np.testing.assert_array_equal(audio, np.concatenate([c.samples for c in chunks]))


def test_speed_changes_duration(synth: Synthesizer) -> None:
    normal, _ = synth.synthesize("Hello there, friend.", voice="jf_alpha")
    slow, _ = synth.synthesize("Hello there, friend.", voice="jf_alpha", speed=0.5)
    fast, _ = synth.synthesize("Hello there, friend.", voice="jf_alpha", speed=2.0)
    assert len(slow) > len(normal) > len(fast)


def test_over_long_segments_split_at_the_phoneme_limit(synthetic_fp32: Path) -> None:
    synth = Synthesizer(
        synthetic_fp32, threads=1, segment_policy=SegmentPolicy(first_max_chars=40, max_chars=2000)
    )
    sentence = " ".join(["banana bread"] * 80) + "."
    text = f"Hi. {sentence}"
    pieces = synth.phonemize(text, "en-us", first_segment_fast=False)
    assert len(pieces) >= 2 and all(len(p) <= MAX_PHONEMES for p in pieces)
    chunks = list(synth.stream(text, voice="jf_alpha", first_segment_fast=False))
    assert [c.phonemes for c in chunks] == pieces
    assert {c.segment for c in chunks} == {0}  # one text segment, several model calls
    assert all(c.text == text for c in chunks)
    assert chunks[-1].is_last and not any(c.is_last for c in chunks[:-1])


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("", TextError, "empty"),
        ("   \n ", TextError, "empty"),
        ("...!?!", TextError, "Nothing speakable"),
        ("— … —", TextError, "Nothing speakable"),
        ("a" * 10_001, TextError, "10,001 characters; the limit is 10,000"),
        ("word " * 4_000, TextError, "20,000 characters"),
    ],
)
def test_bad_text_fails_when_called(
    synth: Synthesizer, text: str, error: type, fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        synth.stream(text, voice="jf_alpha")  # not iterated: validation is eager
    with pytest.raises(error, match=fragment):
        synth.synthesize(text, voice="jf_alpha")


@pytest.mark.parametrize("speed", [0, 0.49, 2.01, 10, -1, float("nan"), float("inf")])
def test_speed_out_of_range(synth: Synthesizer, speed: float) -> None:
    with pytest.raises(UserInputError, match="from 0.5 to 2.0"):
        synth.stream("Hello.", voice="jf_alpha", speed=speed)


def test_unknown_voice_and_language(synth: Synthesizer) -> None:
    with pytest.raises(VoiceError, match="Available: jf_alpha"):
        synth.stream("Hello.", voice="af_heart")
    with pytest.raises(LanguageError, match="Supported: en-us"):
        synth.stream("Hello.", voice="jf_alpha", lang="klingon")


def test_other_languages(synth: Synthesizer) -> None:
    chunks = list(synth.stream("Hola, ¿cómo estás? Muy bien.", voice="jf_alpha", lang="es"))
    assert chunks and chunks[-1].is_last


def test_concurrent_streams_match_sequential(synth: Synthesizer) -> None:
    texts = [TEXT, "Rice is often served in round bowls.", "The juice of lemons makes fine punch."]
    expected = [synth.synthesize(t, voice="jm_kumo")[0] for t in texts]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = synth.synthesize(texts[i], voice="jm_kumo")[0]
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, audio in enumerate(expected):
        np.testing.assert_array_equal(results[i], audio)


def test_kokoro_onnx_contract_end_to_end(tmp_path: Path) -> None:
    """A kokoro-onnx style export (input_ids, int32 speed, waveform + duration) synthesizes,
    and loud output is clipped to [-1, 1]."""
    model = build_contract_model(
        tmp_path / "kokoro-onnx.onnx",
        tokens="input_ids",
        speed_dtype="int32",
        audio="waveform",
        extra_outputs=("duration",),
    )
    voices = tmp_path / "voices"
    voices.mkdir()
    np.save(voices / "af_loud.npy", np.ones((510, 1, 256), np.float32))
    synth = Synthesizer(model, voices=VoiceLibrary.load(voices), threads=1)
    audio, sr = synth.synthesize("Hello world.", voice="af_loud", speed=1.0)
    assert sr == 24000 and np.abs(audio).max() == 1.0  # token ids > 1 were clipped
    with pytest.raises(UserInputError, match="integer speed"):
        synth.synthesize("Hello world.", voice="af_loud", speed=1.5)


def test_stream_chunks_are_finished_infer_output(synth: Synthesizer) -> None:
    chunk = next(synth.stream("Hello there.", voice="jf_nezumi"))
    tokens = tokenize(chunk.phonemes)
    pack = synth.voices.get("jf_nezumi")
    raw = synth.infer(tokens, style_for(pack, len(tokens)), 1.0)
    samples, nonfinite = finish_audio(raw)
    np.testing.assert_array_equal(samples, chunk.samples)
    assert nonfinite == chunk.nonfinite == 0


def test_finish_audio_trims_padding_silence() -> None:
    speech = (np.sin(np.arange(SAMPLE_RATE) / 5) * 0.4).astype(np.float32)
    pad = np.full(int(0.4 * SAMPLE_RATE), 1e-8, np.float32)
    raw = np.concatenate([pad, speech, pad, pad])
    trimmed, _ = finish_audio(raw)
    untrimmed, _ = finish_audio(raw, trim=False)
    assert len(untrimmed) == len(raw)
    assert len(trimmed) == pytest.approx(SAMPLE_RATE * 1.35, abs=SAMPLE_RATE * 0.011)


def test_guard_audio() -> None:
    raw = np.array([0.5, np.nan, 3.0, -np.inf, -0.2] * 100, np.float32)
    safe, nonfinite = guard_audio(raw)
    assert nonfinite == 200
    assert np.isfinite(safe).all() and np.abs(safe).max() <= 1.0
    ramp = int(EDGE_RAMP_S * SAMPLE_RATE)
    assert safe[0] == 0.0 and safe[-1] == 0.0
    expected = np.clip(np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0), -1, 1)
    np.testing.assert_array_equal(safe[ramp:-ramp], expected[ramp:-ramp])
    tiny, _ = guard_audio(np.ones(3, np.float32))
    assert len(tiny) == 3


def test_tail_report_tells_silence_from_static() -> None:
    rng = np.random.default_rng(0)
    quiet = np.concatenate([np.sin(np.arange(24000) / 10) * 0.5, np.zeros(2400)]).astype(np.float32)
    static = np.concatenate([quiet, rng.uniform(-0.5, 0.5, 2400)]).astype(np.float32)
    assert tail_report(quiet, 24000)["rms"] < 1e-6
    noisy = tail_report(static, 24000)
    assert noisy["rms"] > 0.2 and noisy["zcr"] > 0.3
