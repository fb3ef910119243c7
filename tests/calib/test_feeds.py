"""Calibration feeds: cached phonemes, seeded samples, feeds identical to the runtime's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.calib.feeds import (
    FeedReader,
    build_samples,
    corpus_feeds,
    make_feeds,
    phonemes_cache_path,
    phonemize_texts,
    usable_pieces,
)
from kokoro_opt.errors import CorpusError, UserInputError, VoiceError
from kokoro_opt.runtime.contract import ModelContract
from kokoro_opt.runtime.tokenizer import MAX_PHONEMES, PAD_ID, tokenize
from kokoro_opt.runtime.voices import VoiceLibrary, style_for

TEXTS = ["The birch canoe slid on the smooth planks.", "Is it ten o'clock?", "Wow!"]


@pytest.fixture(scope="module")
def contract(synthetic_fp32: Path) -> ModelContract:
    return ModelContract.from_onnx(onnx.load(str(synthetic_fp32)))


def test_phonemes_are_cached_and_reused(tmp_path: Path) -> None:
    first = phonemize_texts(TEXTS, cache_folder=tmp_path)
    assert all(first) and len(first) == 3
    path = phonemes_cache_path(TEXTS, "en-us", tmp_path)
    payload = json.loads(path.read_text("utf-8"))
    assert payload["phonemes"] == first
    # The cache is what is read back: an edited cache file shows through.
    payload["phonemes"][0] = "hˈɛlO"
    path.write_text(json.dumps(payload), "utf-8")
    assert phonemize_texts(TEXTS, cache_folder=tmp_path)[0] == "hˈɛlO"
    assert phonemize_texts(TEXTS, cache_folder=tmp_path, use_cache=False) == first


def test_cache_key_depends_on_texts_and_language(tmp_path: Path) -> None:
    a = phonemes_cache_path(TEXTS, "en-us", tmp_path)
    assert a == phonemes_cache_path(TEXTS, "en", tmp_path)  # `en` means en-us
    assert a != phonemes_cache_path(TEXTS[:2], "en-us", tmp_path)
    assert a != phonemes_cache_path(TEXTS, "en-gb", tmp_path)


def test_malformed_cache_is_ignored(tmp_path: Path) -> None:
    path = phonemes_cache_path(TEXTS, "en-us", tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"phonemes": ["only one"]}', "utf-8")
    assert len(phonemize_texts(TEXTS, cache_folder=tmp_path)) == 3


def test_long_text_is_split_like_the_runtime() -> None:
    long_phonemes = ", ".join(["ðə kˈæt sˈæt"] * 80)
    pieces = usable_pieces(["long"], [long_phonemes])
    assert len(pieces) >= 2
    assert all(len(p) <= MAX_PHONEMES for _, p in pieces)
    # Punctuation-only pieces are never sent to the model.
    assert usable_pieces(["x"], ["…!?"]) == []


def test_samples_are_deterministic_and_balanced() -> None:
    phonemes = phonemize_texts(TEXTS)
    a = build_samples(TEXTS, phonemes, count=12, seed=7)
    b = build_samples(TEXTS, phonemes, count=12, seed=7)
    c = build_samples(TEXTS, phonemes, count=12, seed=8)
    assert a == b and a != c
    voices = [s.voice for s in a]
    counts = [voices.count(v) for v in set(voices)]
    assert max(counts) - min(counts) <= 1
    assert {s.text_index for s in a[:3]} == {0, 1, 2}  # every piece before any repeats
    assert all(0.8 <= s.speed <= 1.2 for s in a)


def test_feeds_match_what_the_runtime_sends(contract: ModelContract) -> None:
    samples, feeds = corpus_feeds(TEXTS, contract, count=4, voices=["jf_alpha"], speeds=[0.9])
    pack = VoiceLibrary.default().get("jf_alpha")
    for sample, feed in zip(samples, feeds, strict=True):
        tokens = feed[contract.tokens][0].tolist()
        assert tokens == [PAD_ID, *tokenize(sample.phonemes), PAD_ID]
        np.testing.assert_array_equal(feed[contract.style], style_for(pack, sample.n_phonemes))
        assert float(feed[contract.speed][0]) == pytest.approx(0.9)
    assert make_feeds(samples, contract)[0].keys() == feeds[0].keys()


def test_bad_sampling_settings_are_clear(contract: ModelContract) -> None:
    with pytest.raises(UserInputError, match="at least 1"):
        corpus_feeds(TEXTS, contract, count=0)
    with pytest.raises(UserInputError, match="repeated"):
        corpus_feeds(TEXTS, contract, count=2, voices=["jf_alpha", "jf_alpha"])
    with pytest.raises(UserInputError, match="out of range"):
        corpus_feeds(TEXTS, contract, count=2, speeds=[3.0])
    with pytest.raises(VoiceError):
        corpus_feeds(TEXTS, contract, count=2, voices=["af_heart"])
    with pytest.raises(CorpusError, match="no usable sentences"):
        build_samples(["..."], ["..."], count=2)


def test_feed_reader_serves_ranges_and_rewinds() -> None:
    feeds = [{"x": np.full(1, i)} for i in range(5)]
    seen: list[tuple[int, int]] = []
    reader = FeedReader(feeds, on_next=lambda d, t: seen.append((d, t)))
    assert [int(f["x"][0]) for f in reader] == [0, 1, 2, 3, 4]
    assert reader.get_next() is None
    reader.set_range(1, 3)
    assert [int(f["x"][0]) for f in reader] == [1, 2]
    reader.rewind()
    assert len(list(reader)) == 5 and len(reader) == 5
    assert seen[-1] == (12, 5)
