"""Text normalization and streaming segmentation (pure functions)."""

from __future__ import annotations

import random

import pytest

from kokoro_opt.runtime.segment import (
    SegmentPolicy,
    is_speakable,
    normalize_text,
    segment_text,
    split_clauses,
    split_sentences,
    split_words,
)

HARVARD = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It's easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch."
)


def test_normalize_text() -> None:
    assert normalize_text("  Hello\tworld  ") == "Hello world"
    assert normalize_text("line one\nline two") == "line one line two"
    assert normalize_text("para one.\n\n  para two.\r\n\r\npara three") == (
        "para one.\npara two.\npara three"
    )
    assert normalize_text("zero\u200bwidth\x00 and\u00adsoft") == "zerowidth andsoft"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC
    assert normalize_text(" \n\n ") == ""


def test_is_speakable() -> None:
    assert is_speakable("a") and is_speakable("42") and is_speakable("こんにちは")
    assert not is_speakable("...!?") and not is_speakable(" — ") and not is_speakable("")


def test_split_sentences() -> None:
    text = (
        "Hello, Mr. Smith - how are you? I met J. R. R. Tolkien in 1950, e.g. at 3.14 pm... "
        "Really!\n\nNew paragraph without an end\n\n今日は、いい天気ですね。明日も。"
    )
    assert split_sentences(text) == [
        "Hello, Mr. Smith - how are you?",
        "I met J. R. R. Tolkien in 1950, e.g. at 3.14 pm...",
        "Really!",
        "New paragraph without an end",
        "今日は、いい天気ですね。",
        "明日も。",
    ]
    assert split_sentences('He said "Stop." Then left.') == ['He said "Stop."', "Then left."]
    assert split_sentences("Version 2.0 is out. ... Yes!") == ["Version 2.0 is out. ...", "Yes!"]


def test_split_clauses() -> None:
    assert split_clauses("Hello, Mr. Smith - how are you — fine; ok: yes") == [
        "Hello,",
        "Mr. Smith -",
        "how are you —",
        "fine;",
        "ok:",
        "yes",
    ]
    assert split_clauses("1,000 people") == ["1,000 people"]
    assert split_clauses("今日は、いい天気") == ["今日は、", "いい天気"]


def test_split_words() -> None:
    assert split_words("a bb ccc dddd", 6) == ["a bb", "ccc", "dddd"]
    assert split_words("abcdefghij", 4) == ["abcd", "efgh", "ij"]


def test_first_segment_is_the_first_short_clause() -> None:
    segments = segment_text("Well, that went better than expected. " + HARVARD)
    assert segments[0] == "Well,"
    assert segments[1].startswith("that went better")
    plain = segment_text(HARVARD)
    assert plain[0] == "The birch canoe slid on the smooth planks."


def test_long_first_clause_is_cut_at_a_word() -> None:
    first = " ".join(["word"] * 60) + "."
    segments = segment_text(first, policy=SegmentPolicy(first_max_chars=40, max_chars=400))
    assert len(segments[0]) <= 40 and segments[0].endswith("word")
    assert " ".join(segments) == first


def test_segments_grow_and_stay_within_budget() -> None:
    policy = SegmentPolicy(first_max_chars=60, max_chars=300, growth=2.0)
    segments = segment_text(HARVARD * 6, policy=policy)
    emitted = len(segments[0])
    for seg in segments[1:]:
        budget = min(policy.max_chars, max(policy.first_max_chars, policy.growth * emitted))
        assert len(seg) <= budget
        emitted += len(seg)
    assert max(len(s) for s in segments) > 200  # later segments are long, for throughput
    assert " ".join(segments) == normalize_text(HARVARD * 6)


def test_without_fast_path_sentences_pack_to_max() -> None:
    policy = SegmentPolicy(first_max_chars=60, max_chars=200)
    segments = segment_text(HARVARD, first_segment_fast=False, policy=policy)
    assert len(segments[0]) > 60 and all(len(s) <= 200 for s in segments)
    assert all(s.endswith(".") for s in segments)  # whole sentences


def test_unspeakable_pieces_are_dropped_or_attached() -> None:
    assert segment_text("...!?") == []
    assert segment_text("") == []
    assert segment_text("Hello. ... World.") == ["Hello. ...", "World."]


@pytest.mark.parametrize("seed", range(5))
def test_random_text_keeps_every_word_in_order(seed: int) -> None:
    rng = random.Random(seed)
    vocab = [
        "alpha",
        "beta,",
        "gamma.",
        "delta;",
        "epsilon!",
        "zeta?",
        "eta",
        "—",
        "theta:",
        "Mr.",
        "iota",
        "3.5",
        "kappa",
    ]
    text = " ".join(rng.choice(vocab) for _ in range(rng.randint(20, 800)))
    policy = SegmentPolicy(first_max_chars=50, max_chars=250)
    segments = segment_text(text, policy=policy)
    assert " ".join(segments).split() == text.split()
    assert all(0 < len(s) <= policy.max_chars for s in segments)
    assert len(segments[0]) <= policy.first_max_chars


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        SegmentPolicy(first_max_chars=500, max_chars=100)
    with pytest.raises(ValueError):
        SegmentPolicy(growth=0)


def test_first_sentence_whole_for_windowed_synthesis() -> None:
    text = "Well, that went better than expected. " + HARVARD
    segments = segment_text(text, policy=SegmentPolicy(first="sentence"))
    assert segments[0] == "Well, that went better than expected."
    assert " ".join(segments) == normalize_text(text)
    with pytest.raises(ValueError):
        SegmentPolicy(first="word")  # type: ignore[arg-type]


def test_the_server_plans_with_the_same_segmenter() -> None:
    from kokoro_opt.server.segments import plan_segments

    policy = SegmentPolicy(first_max_chars=12, max_chars=300, growth=3.0)
    text = "The birch canoe slid on the smooth planks. " + HARVARD
    assert plan_segments(text) == segment_text(text, policy=policy)
    assert plan_segments(text)[0] == "The birch"
    assert plan_segments(text, first="sentence")[0] == "The birch canoe slid on the smooth planks."
