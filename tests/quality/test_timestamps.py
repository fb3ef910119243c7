"""Word timestamps against a reference: token matching after WER normalization, boundaries,
completeness."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from kokoro_opt.quality.timestamps import compare_words, summarize


@dataclass
class W:
    word: str
    start: float
    end: float


def test_boundaries_of_matched_words_after_normalization() -> None:
    text = "Hello, it costs $5 now."
    ours = [W("Hello", 0.10, 0.40), W("it", 0.45, 0.55), W("costs", 0.6, 0.9), W("$5", 1.0, 1.6),
            W("now", 1.7, 2.0)]  # fmt: skip
    heard = [W("Hello,", 0.12, 0.38), W("it", 0.45, 0.50), W("cost", 0.6, 0.9),
             W("five", 1.02, 1.3), W("dollars", 1.3, 1.58), W("now.", 1.7, 2.05)]  # fmt: skip
    row = compare_words(text, ours, heard)
    # "costs" != "cost": no boundary; "$5" -> "five dollars": start with five, end with dollars
    assert row.start_diffs == pytest.approx([-0.02, 0.0, -0.02, 0.0])
    assert row.end_diffs == pytest.approx([0.02, 0.05, 0.02, -0.05])
    assert row.complete and row.words == 5 and row.heard == 6
    summary = summarize([row])
    assert summary.boundaries == 8 and summary.median_abs_ms == pytest.approx(20.0)
    assert summary.median_start_bias_ms == pytest.approx(-10.0)
    assert summary.all_complete


def test_missing_or_reordered_words_are_incomplete() -> None:
    text = "one two three"
    missing = compare_words(text, [W("one", 0, 1), W("three", 2, 3)], [])
    swapped = compare_words(text, [W("two", 0, 1), W("one", 1, 2), W("three", 2, 3)], [])
    assert not missing.complete and not swapped.complete
    summary = summarize([missing, swapped])
    assert summary.complete_sentences == 0 and summary.boundaries == 0
    assert math.isnan(summary.median_abs_ms)


def test_abbreviations_are_complete_as_timestamps_name_them() -> None:
    # The runtime names "Ave." and "etc." without their period (as a sentence's full stop);
    # the normalizer would expand the text's "Ave." to "avenue" but not our "Ave".
    text = "Turn right on Oak Ave. and buy milk, bread, etc. for U.S.A. Day."
    words = ["Turn", "right", "on", "Oak", "Ave", "and", "buy", "milk", "bread", "etc", "for",
             "U.S.A.", "Day"]  # fmt: skip
    ours = [W(w, i, i + 0.5) for i, w in enumerate(words)]
    assert compare_words(text, ours, []).complete
    assert not compare_words(text, [w for w in ours if w.word != "etc"], []).complete
