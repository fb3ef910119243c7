"""Word timestamps of windowed synthesis: each window's chunk carries the words that start in
it, at the times a whole-segment render gives them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.passes import split as split_pass
from kokoro_opt.passes.base import PassContext
from kokoro_opt.runtime.segment import SegmentPolicy
from kokoro_opt.runtime.synthesizer import SAMPLE_RATE, AudioChunk, Synthesizer
from kokoro_opt.runtime.timestamps import PhonemeWord, WindowWords, shift, word_timings
from kokoro_opt.runtime.windowed import WindowChunk, WindowPlan
from tests.passes.split_graphs import timed_anatomy_model

TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
VOICE = "jf_alpha"
SPF = 600


@pytest.fixture(scope="module")
def timed_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("window-words")
    model = timed_anatomy_model()
    onnx.save(model, folder / "k.onnx")
    models = split_pass.split(model, split_pass.Config(), PassContext(threads=1))
    assert models.meta["samples_per_frame"] == SPF
    return folder / "k.onnx", split_pass.save(models, folder / "k.split")


def test_chunks_get_the_times_of_one_call_trimmed_at_the_same_sample() -> None:
    """Three chunks after 4 skipped pad frames and 250 trimmed samples: their words, moved to
    where each chunk starts, are exactly those of the whole call with the same cut."""
    durations = np.array([6, 2, 3, 1, 2, 4, 3, 2, 5, 7])  # both pads included
    phonemes = "ab cd ef"
    words = [PhonemeWord("ab", 0, 2), PhonemeWord("cd", 3, 5), PhonemeWord("ef", 6, 8)]
    frames = [(4, 7), (7, 12), (12, 35)]
    cut, tail = 250, 1000
    lengths = [(b - a) * SPF for a, b in frames]
    lengths[0] -= cut
    lengths[-1] -= tail
    timer = WindowWords(words, phonemes=phonemes, tokens=8, samples_per_frame=SPF,
                        sample_rate=SAMPLE_RATE)  # fmt: skip
    got, per_chunk, offset = [], [], 0
    for k, ((a, _), n) in enumerate(zip(frames, lengths, strict=True)):
        window = WindowChunk(np.zeros(0), first=k == 0, last=k == len(frames) - 1, frame=a,
                             durations=durations)  # fmt: skip
        chunk = timer.take(window, cut=cut if k == 0 else 0, samples=n)
        per_chunk.append([w.word for w in chunk])
        assert all(0 <= w.start <= n / SAMPLE_RATE for w in chunk)  # each starts in its chunk
        got += shift(chunk, offset / SAMPLE_RATE)
        offset += n
    expected = word_timings(words, durations, raw_samples=35 * SPF, sample_rate=SAMPLE_RATE,
                            lead_cut=4 * SPF + cut, kept_samples=sum(lengths),
                            phonemes=phonemes)  # fmt: skip
    assert per_chunk == [["ab"], ["cd"], ["ef"]]
    assert [w.word for w in got] == [w.word for w in expected]
    np.testing.assert_allclose([(w.start, w.end) for w in got],
                               [(w.start, w.end) for w in expected], atol=1e-9)  # fmt: skip
    assert got[1].end > lengths[0] / SAMPLE_RATE + lengths[1] / SAMPLE_RATE  # "cd" runs on


def _segment_words(chunks: Sequence[AudioChunk]) -> list[tuple[int, str, float, float]]:
    """Every word with its times in seconds from the first sample of its segment."""
    out: list[tuple[int, str, float, float]] = []
    offset = 0
    starts: dict[int, int] = {}
    for chunk in chunks:
        base = (offset - starts.setdefault(chunk.segment, offset)) / SAMPLE_RATE
        out += [(chunk.segment, w.word, w.start + base, w.end + base) for w in chunk.words]
        offset += len(chunk.samples)
    return out


@pytest.mark.parametrize(
    "plan",
    [
        WindowPlan("first", first=4, ahead=0),
        WindowPlan("first", first=6, ahead=0, trail=12),  # as `speak --split` renders
        WindowPlan("window", first=4, largest=16),
        WindowPlan("generator", first=5),
    ],
    ids=["first", "first-trail", "window", "generator"],
)
def test_windowed_words_match_whole_segments(
    timed_split: tuple[Path, Path], plan: WindowPlan
) -> None:
    model, folder = timed_split
    policy = SegmentPolicy(first="sentence")
    whole = Synthesizer(model, threads=1, timestamps=True, segment_policy=policy)
    windowed = Synthesizer(model, threads=1, timestamps=True, split=folder, window=plan,
                           segment_policy=policy)  # fmt: skip
    assert windowed.windowed and windowed.timestamps
    a = list(whole.stream(TEXT, voice=VOICE))
    b = list(windowed.stream(TEXT, voice=VOICE))
    assert len(a) == 2 and len(b) >= 2 * len(a)  # two segments, several windows each
    assert sum(1 for c in b if c.words) > len(a)  # words spread over the windows
    for chunk in b:
        assert all(0 <= w.start <= chunk.duration_s + 1e-9 for w in chunk.words)
    wa, wb = _segment_words(a), _segment_words(b)
    assert [w[:2] for w in wb] == [w[:2] for w in wa] and len(wa) == 16
    worst = max(max(abs(x[2] - y[2]), abs(x[3] - y[3])) for x, y in zip(wa, wb, strict=True))
    assert worst <= 0.025, worst  # within a frame (25 ms)
    audio, _, words = windowed.synthesize_timed(TEXT, voice=VOICE)
    starts = [w.start for w in words]
    assert starts == sorted(starts) and words[-1].end <= len(audio) / SAMPLE_RATE
