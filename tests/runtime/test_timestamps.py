"""Word timestamps: phoneme spans from the G2P, times from the model's durations, pauses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.runtime.audio import silence_bounds, speech_span
from kokoro_opt.runtime.g2p import get_g2p
from kokoro_opt.runtime.markup import Lexicon
from kokoro_opt.runtime.synthesizer import SAMPLE_RATE, Synthesizer
from kokoro_opt.runtime.timestamps import (
    LEAD_FRAMES,
    PhonemeWord,
    WordTiming,
    clip,
    locate_pieces,
    phoneme_words,
    render,
    shift,
    word_timings,
    words_in,
)
from kokoro_opt.runtime.tokenizer import filter_phonemes, split_phonemes, tokenize
from kokoro_opt.runtime.voices import style_for
from tests.runtime.timed_models import HOP, build_timed_model


@dataclass
class Tok:
    text: str
    phonemes: str | None
    whitespace: str


def test_phoneme_words_glue_tokens_and_skip_punctuation() -> None:
    tokens = [
        Tok("Dr.", "dˈɑktəɹ", " "),
        Tok("paid", "pˈAd", " "),
        Tok("$", "", ""),
        Tok("5", "fˈIv dˈɑləɹz", " "),
        Tok("--", "", " "),
        Tok("at", "æt", " "),
        Tok("6:45", "sˈɪks fˈɔɹTi fˈIv", ""),
        Tok(",", ",", " "),
        Tok("ok", "ˌOkˈA❓", ""),  # a symbol outside the vocabulary is dropped
        Tok("?", "?", ""),
    ]
    phonemes, words = phoneme_words(tokens)
    joined = "".join((t.phonemes or "") + t.whitespace for t in tokens)
    assert phonemes == filter_phonemes(joined)
    assert [(w.text, phonemes[w.start : w.end]) for w in words] == [
        ("Dr", "dˈɑktəɹ"),
        ("paid", "pˈAd"),
        ("$5", "fˈIv dˈɑləɹz"),
        ("at", "æt"),
        ("6:45", "sˈɪks fˈɔɹTi fˈIv"),
        ("ok", "ˌOkˈA"),
    ]


def test_english_g2p_words_cover_numbers_and_abbreviations() -> None:
    text = "Dr. Smith paid $5.50 at 6:45, didn't he? The U.S.A. [Kokoro](/kˈOkəɹO/) rocks!"
    phonemes, words = get_g2p("en-us").phonemize_words(text)
    assert phonemes == get_g2p("en-us").phonemize(text)
    assert [w.text for w in words] == [
        "Dr", "Smith", "paid", "$5.50", "at", "6:45", "didn't", "he", "The", "U.S.A.",
        "Kokoro", "rocks",
    ]  # fmt: skip
    spans = {w.text: phonemes[w.start : w.end] for w in words}
    assert spans["Kokoro"] == "kˈOkəɹO" and "dˈɑləɹz" in spans["$5.50"]


def test_espeak_words_and_inline_pronunciations() -> None:
    phonemes, words = get_g2p("es").phonemize_words("Hola, ¿cómo estás [Kokoro](/kˈOkəɹO/) hoy?")
    assert [w.text for w in words] == ["Hola", "cómo", "estás", "Kokoro", "hoy"]
    spans = [phonemes[w.start : w.end] for w in words]
    assert spans[3] == "kˈOkəɹO" and all(s and "," not in s and "?" not in s for s in spans)


def test_word_timings_from_durations() -> None:
    # pad, 'a', 'b', ' ', 'c', pad -> frames 2, 1, 3, 1, 2, 4 (13 frames of 10 samples)
    durations = np.array([2, 1, 3, 1, 2, 4])
    words = [PhonemeWord("ab", 0, 2), PhonemeWord("c", 3, 4)]
    args = {"raw_samples": 130, "sample_rate": 100, "lead_cut": 10}
    plain = word_timings(words, durations, **args, lead_frames=0)
    assert plain == [WordTiming("ab", 0.1, 0.5), WordTiming("c", 0.6, 0.8)]
    # the reference pipeline's convention: spaces split between words, times a lead earlier
    joined = word_timings(words, durations, **args, phonemes="ab c", lead_frames=1)
    assert joined == [
        WordTiming("ab", 0.0, pytest.approx(0.45)),
        WordTiming("c", pytest.approx(0.45), pytest.approx(0.7)),
    ]
    kept = word_timings(words, durations, **args, kept_samples=60, lead_frames=0)
    assert kept[-1] == WordTiming("c", 0.6, 0.6)  # clamped into the kept audio
    assert shift(plain, 1.0)[0] == WordTiming("ab", 1.1, 1.5)
    assert clip(plain, 0.2, 0.7) == [
        WordTiming("ab", 0.0, pytest.approx(0.3)),
        WordTiming("c", pytest.approx(0.4), pytest.approx(0.5)),
    ]


def test_pieces_and_their_words() -> None:
    phonemes = "ab cd. ef gh"
    pieces = split_phonemes(phonemes, 6)
    offsets = locate_pieces(phonemes, pieces)
    assert [phonemes[o : o + len(p)] for o, p in zip(offsets, pieces, strict=True)] == pieces
    words = [PhonemeWord("ab", 0, 2), PhonemeWord("cd", 3, 5), PhonemeWord("ef", 7, 9)]
    second = words_in(words, offsets[1], len(pieces[1]))
    assert second == [PhonemeWord("ef", 7 - offsets[1], 9 - offsets[1])]


def test_srt_vtt_json() -> None:
    words = [WordTiming("Hello", 0.0, 0.42), WordTiming("world", 3661.5, 3662.0)]
    assert render(words, ".srt") == (
        "1\n00:00:00,000 --> 00:00:00,420\nHello\n\n2\n01:01:01,500 --> 01:01:02,000\nworld\n"
    )
    assert render(words, ".vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.420\nHello\n")
    assert '"word": "world"' in render(words, ".json")


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Synthesizer:
    path = build_timed_model(tmp_path_factory.mktemp("timed") / "timed.onnx")
    return Synthesizer(path, threads=1, timestamps=True)


TEXT = "Well, that went better than expected. The birch canoe slid on 5 smooth planks."


def test_stream_words_are_in_order_and_inside_their_chunk(timed: Synthesizer) -> None:
    assert timed.timestamps and timed.contract.durations == "durations"
    chunks = list(timed.stream(TEXT, voice="jf_gongitsune"))
    assert len(chunks) >= 2
    words = [w for c in chunks for w in c.words]
    expected = "Well that went better than expected The birch canoe slid on 5 smooth planks"
    assert [w.word for w in words] == expected.split()
    for chunk in chunks:
        for w in chunk.words:
            assert 0.0 <= w.start < w.end <= chunk.duration_s + 1e-9
        starts = [w.start for w in chunk.words]
        assert starts == sorted(starts)
    audio, rate, whole = timed.synthesize_timed(TEXT, voice="jf_gongitsune")
    assert rate == SAMPLE_RATE and len(audio) == sum(len(c.samples) for c in chunks)
    assert [w.word for w in whole] == [w.word for w in words]
    assert whole[-1].end <= len(audio) / SAMPLE_RATE
    assert whole[-1].start > chunks[0].duration_s  # shifted along the stream


def test_word_times_follow_the_frames(timed: Synthesizer) -> None:
    """Against the model directly: a word starts at its first phoneme's first frame, counted
    from the first sample kept after trimming."""
    (chunk,) = timed.stream("Hello world.", voice="jf_gongitsune", first_segment_fast=False)
    ids = tokenize(chunk.phonemes)
    style = style_for(timed.voices.get("jf_gongitsune"), len(ids))
    raw, durations = timed.infer_timed(ids, style, 1.0)
    assert durations is not None and len(durations) == len(chunk.phonemes) + 2
    assert len(raw) == int(durations.sum()) * HOP
    lead, end = silence_bounds(raw, SAMPLE_RATE)
    assert len(chunk.samples) == end - lead
    space = chunk.phonemes.index(" ")  # between "Hello" and "world"; padded index space + 1
    frame = int(durations[: space + 2].sum())  # frames before "world", the leading pad included
    boundary = frame - durations[space + 1] / 2 - LEAD_FRAMES  # half the space, 3 frames early
    expected = (boundary * HOP - lead) / SAMPLE_RATE
    assert [w.word for w in chunk.words] == ["Hello", "world"]
    assert chunk.words[1].start == pytest.approx(expected, abs=1e-9)
    assert chunk.words[0].end == pytest.approx(expected, abs=1e-9)  # words meet mid-space


def test_pause_is_exact_silence_between_words(timed: Synthesizer) -> None:
    for markup, seconds in (("[pause:0.5s]", 0.5), ('<break time="300ms"/>', 0.3)):
        chunks = list(timed.stream(f"Hello world. {markup} Goodbye now.", voice="jf_gongitsune"))
        assert [c.text for c in chunks] == ["Hello world.", "", "Goodbye now."]
        audio = np.concatenate([c.samples for c in chunks])
        before = speech_span(chunks[0].samples)
        after = speech_span(chunks[2].samples)
        assert before is not None and after is not None
        gap = len(audio) - len(chunks[2].samples) + after[0] - before[1]
        assert abs(gap / SAMPLE_RATE - seconds) <= 0.010
        assert np.all(np.abs(audio[before[1] : before[1] + gap]) < 1e-3)


def test_lexicon_changes_phonemes_and_length(timed: Synthesizer) -> None:
    lexicon = Lexicon.from_entries([("planks", "plˈæŋks plˈæŋks plˈæŋks")])
    plain = timed.phonemize("Smooth planks.", "en-us", first_segment_fast=False)
    custom = timed.phonemize("Smooth planks.", "en-us", first_segment_fast=False, lexicon=lexicon)
    assert plain != custom and "plˈæŋks plˈæŋks plˈæŋks" in custom[0]
    a, _ = timed.synthesize("Smooth planks.", voice="jf_gongitsune")
    b, _ = timed.synthesize("Smooth planks.", voice="jf_gongitsune", lexicon=lexicon)
    assert len(b) > len(a)


def test_models_without_a_duration_predictor(synthetic_fp32: Path) -> None:
    with pytest.raises(ModelFormatError, match="Cannot find Kokoro's duration predictor"):
        Synthesizer(synthetic_fp32, threads=1, timestamps=True)
    plain = Synthesizer(synthetic_fp32, threads=1)
    assert not plain.timestamps
    assert all(c.words == () for c in plain.stream("Hello there.", voice="jf_gongitsune"))
    with pytest.raises(UserInputError, match="timestamps=True"):
        plain.synthesize_timed("Hello.", voice="jf_gongitsune")
