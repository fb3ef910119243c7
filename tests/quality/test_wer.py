"""WER and CER with jiwer: known values, pooling, normalization, bad input."""

from __future__ import annotations

import pytest

from kokoro_opt.errors import UserInputError
from kokoro_opt.quality.wer import cer, error_rates, wer


def test_identical_after_normalization() -> None:
    assert wer("The cat sat on the mat.", "the cat sat on the mat") == 0.0
    assert cer("The cat sat on the mat.", "the cat sat on the mat") == 0.0
    assert wer("Dr. Smith, 3rd floor", "doctor smith third floor") == 0.0


def test_known_word_errors() -> None:
    # one substitution, one deletion, one insertion over 4 + 2 reference words
    scores = error_rates(["a b c d", "e f"], ["a x c", "e f g"])
    assert (scores.substitutions, scores.deletions, scores.insertions) == (1, 1, 1)
    assert scores.ref_words == 6
    assert scores.wer == pytest.approx(3 / 6)
    first, second = scores.utterances
    assert first.wer == pytest.approx(2 / 4) and first.hits == 2
    assert second.wer == pytest.approx(1 / 2)


def test_corpus_wer_pools_edits_not_utterance_rates() -> None:
    refs = ["one two three four five six seven eight nine ten", "hello"]
    hyps = ["one two three four five six seven eight nine ten", "goodbye"]
    assert wer(refs, hyps) == pytest.approx(1 / 11)  # not the mean of 0.0 and 1.0


def test_known_character_errors() -> None:
    assert cer("abcd", "abed") == pytest.approx(1 / 4)
    assert cer("abc", "abcxy") == pytest.approx(2 / 3)
    scores = error_rates(["ab", "cd"], ["ab", "c"], normalize=False)
    assert scores.cer == pytest.approx(1 / 4)
    assert [u.char_edits for u in scores.utterances] == [0, 1]


def test_empty_transcript_is_all_deletions() -> None:
    scores = error_rates("The cat sat.", "")
    assert scores.wer == 1.0 and scores.deletions == 3 and scores.cer == 1.0


def test_without_normalization_case_and_punctuation_count() -> None:
    assert wer("The cat.", "the cat", normalize=False) == 1.0
    assert wer("The cat.", "the cat") == 0.0


def test_to_dict_round_trip() -> None:
    data = error_rates(["a b"], ["a c"]).to_dict()
    assert data["wer"] == 0.5 and data["utterances"][0]["substitutions"] == 1


def test_bad_input() -> None:
    with pytest.raises(UserInputError, match="2 references and 1 transcripts"):
        wer(["a", "b"], ["a"])
    with pytest.raises(UserInputError, match="No references"):
        wer([], [])
    with pytest.raises(UserInputError, match="Reference #1 has no words"):
        wer(["fine", "?!"], ["fine", "x"])
    with pytest.raises(UserInputError, match="Transcript #0 is NoneType"):
        wer(["a"], [None])  # type: ignore[list-item]
