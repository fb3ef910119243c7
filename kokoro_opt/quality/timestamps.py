"""Word timestamps against an independent reference (Whisper's word timestamps).

Both word lists are normalized as for WER (`normalize_for_wer`: numbers and abbreviations
spelled out, lower case), so "$5.50" on one side and "five dollars fifty cents" on the other are
the same tokens. A word's start belongs to its first token and its end to its last; tokens are
matched in order (difflib's longest matching blocks), and every start and end that both sides
have on a matched token is one boundary. The score is the median absolute difference over all
boundaries. Separately, our words must spell the whole text, in order.

    row = compare_words(text, ours, heard)     # ours/heard: objects with word, start, end
    summary = summarize([row, ...])
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from kokoro_opt.quality.text_norm import normalize_for_wer
from kokoro_opt.runtime.timestamps import clean_word


class TimedWord(Protocol):
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class SentenceTimestamps:
    """One sentence: its boundary differences (seconds, ours minus reference) and whether our
    words spell the text."""

    text: str
    words: int
    heard: int
    start_diffs: list[float] = field(default_factory=list)
    end_diffs: list[float] = field(default_factory=list)
    complete: bool = True

    @property
    def diffs(self) -> list[float]:
        return [*self.start_diffs, *self.end_diffs]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["start_diffs"] = [round(d, 4) for d in self.start_diffs]
        out["end_diffs"] = [round(d, 4) for d in self.end_diffs]
        return out


@dataclass(frozen=True)
class TimestampSummary:
    sentences: int
    words: int
    boundaries: int
    median_abs_ms: float
    p90_abs_ms: float
    median_start_bias_ms: float
    median_end_bias_ms: float
    complete_sentences: int

    @property
    def all_complete(self) -> bool:
        return self.complete_sentences == self.sentences

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "all_complete": self.all_complete}


def compare_words(
    text: str, ours: Sequence[TimedWord], heard: Sequence[TimedWord]
) -> SentenceTimestamps:
    """Our word times against the reference's on one sentence (see the module docstring)."""
    a = _tokens(ours)
    b = _tokens(heard)
    matcher = difflib.SequenceMatcher(
        a=[t for t, _, _ in a], b=[t for t, _, _ in b], autojunk=False
    )
    starts: list[float] = []
    ends: list[float] = []
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            _, s1, e1 = a[block.a + k]
            _, s2, e2 = b[block.b + k]
            if s1 is not None and s2 is not None:
                starts.append(s1 - s2)
            if e1 is not None and e2 is not None:
                ends.append(e1 - e2)
    spelled = normalize_for_wer(" ".join(w.word for w in ours))
    return SentenceTimestamps(
        text=text,
        words=len(ours),
        heard=len(heard),
        start_diffs=starts,
        end_diffs=ends,
        # The text's words as timestamps name them: "Ave." is "Ave" on both sides, so the
        # normalizer cannot expand one side's abbreviation and not the other's.
        complete=spelled == normalize_for_wer(" ".join(clean_word(w) for w in text.split())),
    )


def summarize(rows: Sequence[SentenceTimestamps]) -> TimestampSummary:
    diffs = np.array([d for r in rows for d in r.diffs], dtype=np.float64)
    starts = np.array([d for r in rows for d in r.start_diffs], dtype=np.float64)
    ends = np.array([d for r in rows for d in r.end_diffs], dtype=np.float64)

    def ms(values: np.ndarray, fn: Any) -> float:
        return round(float(fn(values)) * 1e3, 1) if values.size else float("nan")

    return TimestampSummary(
        sentences=len(rows),
        words=sum(r.words for r in rows),
        boundaries=int(diffs.size),
        median_abs_ms=ms(np.abs(diffs), np.median),
        p90_abs_ms=ms(np.abs(diffs), lambda v: np.percentile(v, 90)),
        median_start_bias_ms=ms(starts, np.median),
        median_end_bias_ms=ms(ends, np.median),
        complete_sentences=sum(r.complete for r in rows),
    )


def _tokens(words: Sequence[TimedWord]) -> list[tuple[str, float | None, float | None]]:
    out: list[tuple[str, float | None, float | None]] = []
    for w in words:
        parts = normalize_for_wer(w.word).split()
        for i, part in enumerate(parts):
            start = float(w.start) if i == 0 else None
            end = float(w.end) if i == len(parts) - 1 else None
            out.append((part, start, end))
    return out
