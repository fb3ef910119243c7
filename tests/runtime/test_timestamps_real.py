"""Timestamps, pauses and pronunciations on the real Kokoro-82M (the INT8 export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.graph.durations import find_duration_tensor
from kokoro_opt.quality.asr import transcribe_words
from kokoro_opt.quality.timestamps import compare_words, summarize
from kokoro_opt.runtime.markup import Lexicon
from kokoro_opt.runtime.synthesizer import SAMPLE_RATE, Synthesizer

pytestmark = pytest.mark.real

VOICE = "jf_gongitsune"


@pytest.fixture(scope="module")
def synth(real_models: dict[str, Path]) -> Synthesizer:
    return Synthesizer(real_models["kokoro-int8-export"], threads=2, timestamps=True)


def test_duration_chain_is_found_in_both_real_graphs(real_models: dict[str, Path]) -> None:
    for name in ("kokoro-fp32", "kokoro-int8-export"):
        model = onnx.load(str(real_models[name]), load_external_data=False)
        assert find_duration_tensor(model) == "/encoder/Gather_output_0"


def test_words_agree_with_whisper(synth: Synthesizer) -> None:
    texts = [
        "Joy pointed at the noisy oyster boat moored beside the toy shop.",
        "Dr. Smith paid $5.50 at 6:45, didn't he?",
    ]
    rows = []
    for text in texts:
        audio, rate, words = synth.synthesize_timed(text, voice=VOICE)
        rows.append(compare_words(text, words, transcribe_words(audio, rate)))
    summary = summarize(rows)
    assert summary.all_complete  # every word of the text, numbers and abbreviations included
    assert summary.boundaries >= 30
    assert summary.median_abs_ms <= 80.0, summary


def test_pause_and_break_add_exact_silence(synth: Synthesizer) -> None:
    for markup in ("[pause:0.5s]", '<break time="500ms"/>'):
        audio, _ = synth.synthesize(f"The birch canoe slid. {markup} It was late.", voice=VOICE)
        loud = np.flatnonzero(np.abs(audio) >= 1e-3)
        longest = int(np.max(np.diff(loud))) - 1
        assert abs(longest / SAMPLE_RATE - 0.5) <= 0.010, longest / SAMPLE_RATE


def test_lexicon_changes_phonemes_and_length(synth: Synthesizer) -> None:
    lexicon = Lexicon.from_entries([("canoe", "kənˈu kənˈu")])
    text = "The birch canoe slid."
    plain = synth.phonemize(text, first_segment_fast=False)
    custom = synth.phonemize(text, first_segment_fast=False, lexicon=lexicon)
    assert "kənˈu kənˈu" in custom[0] and "kənˈu kənˈu" not in plain[0]
    a, _ = synth.synthesize(text, voice=VOICE)
    b, _ = synth.synthesize(text, voice=VOICE, lexicon=lexicon)
    assert len(b) > len(a) + 0.2 * SAMPLE_RATE
