"""Text normalization and segmentation for streaming synthesis (pure functions).

The one segmenter of kokoro-opt: `speak`, the Synthesizer and the server all cut text with
`segment_text` (the server through `server.segments.plan_segments`, with its own policy).

Streaming wants two things that pull in opposite directions: the first audio should come fast
(a short first segment) and the whole text should be synthesized efficiently (long segments,
few model calls). So segments grow:

- the first segment (`first="clause"`) is the first clause of the first sentence, cut to
  `first_max_chars` at a word boundary when longer, backing off over a trailing function word
  ("on", "the", ...) so it ends where a speaker could pause: the "early primer". With windowed
  synthesis the first audio no longer waits for the whole segment, so `first="sentence"` makes
  the first segment the whole first sentence (no fragment boundary changes its phrasing);
- each later segment packs whole sentences up to a budget of `growth` times the characters
  already emitted (at least `first_max_chars`, at most `max_chars`). With growth 2, a segment
  is never more than twice the audio already delivered, so a runtime with a real-time factor
  below 0.5 finishes segment N+1 before segment N has finished playing: no underrun.

A sentence longer than the budget is split at clause punctuation; a single clause over the
budget but within `max_chars` stays whole; only a clause longer than `max_chars` is cut between
words. The phoneme limit (510) is enforced after G2P by `tokenizer.split_phonemes`;
`max_chars` keeps that rare.
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from dataclasses import dataclass
from typing import Literal

# Abbreviations whose period does not end a sentence (compared lower-case, without the period).
ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "fig", "mt",
        "capt", "gen", "col", "lt", "sgt", "rev", "hon", "approx", "dept",
    }
)  # fmt: skip

_TERMINATOR = re.compile(r"(?:[.!?…]+|[。！？]+)[\"'”’»)\]]*")
_CJK_TERMINATOR = re.compile(r"[。！？]")
_CLAUSE = re.compile(r"(?<=[,;:—–])\s+|(?<=\s-)\s+|(?<=[、，；：])\s*")
_PARAGRAPH = re.compile(r"\n\s*\n")
_SPACES = re.compile(r"[^\S\n]+")


# Words a phrase rarely ends on (English): the primer cut backs off over them.
FUNCTION_WORDS = frozenset(
    {
        "a", "an", "the", "of", "on", "in", "at", "to", "for", "from", "with", "by", "as",
        "and", "or", "but", "nor", "so", "if", "that", "than", "then", "my", "your", "his",
        "her", "its", "our", "their", "this", "these", "those", "is", "are", "was", "were",
        "be", "been", "very", "into", "onto", "over", "under", "about", "not", "no",
    }
)  # fmt: skip

FirstSegment = Literal["clause", "sentence"]


@dataclass(frozen=True)
class SegmentPolicy:
    """How text is cut into synthesis segments (see the module docstring)."""

    first_max_chars: int = 80
    max_chars: int = 400
    growth: float = 2.0
    first: FirstSegment = "clause"

    def __post_init__(self) -> None:
        if not 1 <= self.first_max_chars <= self.max_chars:
            raise ValueError("need 1 <= first_max_chars <= max_chars")
        if self.growth <= 0:
            raise ValueError("growth must be positive")
        if self.first not in ("clause", "sentence"):
            raise ValueError("first must be 'clause' or 'sentence'")


def normalize_text(text: str) -> str:
    """NFC, no control or invisible format characters, single spaces, paragraphs joined by one
    newline (a blank line separates paragraphs; a single line break is a space)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(
        ch
        for ch in text
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )
    paragraphs = []
    for para in _PARAGRAPH.split(text):
        para = _SPACES.sub(" ", para.replace("\n", " ")).strip()
        if para:
            paragraphs.append(para)
    return "\n".join(paragraphs)


def is_speakable(text: str) -> bool:
    """True when the text has at least one letter or digit."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def split_sentences(text: str) -> list[str]:
    """Sentences of normalized text (paragraph breaks always end a sentence).

    A period does not end a sentence after a known abbreviation (`Mr.`), a single capital
    (`J. R. R.`), or before a lower-case word. Pieces with nothing speakable are attached to the
    sentence before them.
    """
    sentences: list[str] = []
    for para in normalize_text(text).split("\n"):
        start = 0
        for m in _TERMINATOR.finditer(para):
            end = m.end()
            if not _is_boundary(para, m.start(), end, m.group()):
                continue
            sentences.append(para[start:end].strip())
            start = end
        sentences.append(para[start:].strip())
    return _attach_unspeakable([s for s in sentences if s])


def split_clauses(sentence: str) -> list[str]:
    """Clauses of one sentence, cut after `, ; : — –`, a spaced hyphen, or `、，；：`;
    punctuation stays with the clause before it."""
    parts = [p.strip() for p in _CLAUSE.split(sentence.strip())]
    return _attach_unspeakable([p for p in parts if p])


def split_words(text: str, max_chars: int) -> list[str]:
    """Cut text at spaces into pieces of at most `max_chars` (a longer word is cut hard)."""
    pieces: list[str] = []
    current = ""
    for word in text.split():
        while len(word) > max_chars:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if not word:
            continue
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= max_chars:
            current = f"{current} {word}"
        else:
            pieces.append(current)
            current = word
    if current:
        pieces.append(current)
    return pieces


def segment_text(
    text: str, *, first_segment_fast: bool = True, policy: SegmentPolicy | None = None
) -> list[str]:
    """Synthesis segments for `text` (see the module docstring). Empty when nothing is
    speakable. Without `first_segment_fast` every segment packs sentences up to `max_chars`."""
    policy = policy or SegmentPolicy()
    queue: deque[str] = deque(split_sentences(text))
    segments: list[str] = []
    emitted = 0
    if first_segment_fast and queue:
        if policy.first == "clause":
            primer, rest = primer_cut(queue.popleft(), policy.first_max_chars)
            if rest:
                queue.appendleft(rest)
            segments.append(primer)
            emitted = len(primer)
        elif len(queue[0]) <= policy.max_chars:
            segments.append(queue.popleft())
            emitted = len(segments[0])
    while queue:
        if first_segment_fast:
            budget = int(
                min(policy.max_chars, max(policy.first_max_chars, policy.growth * emitted))
            )
        else:
            budget = policy.max_chars
        current = ""
        while queue:
            unit = queue[0]
            candidate = f"{current} {unit}" if current else unit
            if len(candidate) <= budget:
                current = candidate
                queue.popleft()
                continue
            if current:
                break
            queue.popleft()
            clauses = split_clauses(unit)
            if len(clauses) > 1:
                queue.extendleft(reversed(clauses))
            elif len(unit) > policy.max_chars:
                queue.extendleft(reversed(split_words(unit, policy.max_chars)))
            else:
                current = unit  # one clause over the budget but within max_chars: keep whole
                break
        segments.append(current)
        emitted += len(current)
    return [s for s in segments if s and is_speakable(s)]


def primer_cut(sentence: str, first_chars: int) -> tuple[str, str]:
    """(primer, rest) for the first sentence: its first clause, or the longest run of leading
    words within `first_chars` that does not end on a function word."""
    clauses = split_clauses(sentence)
    first = clauses[0]
    after = " ".join(clauses[1:])
    if len(first) <= first_chars:
        return first, after
    words = first.split()
    take = 0
    length = -1
    while take < len(words) and length + 1 + len(words[take]) <= first_chars:
        length += 1 + len(words[take])
        take += 1
    take = max(take, 1)
    while take > 1 and _bare(words[take - 1]) in FUNCTION_WORDS:
        take -= 1
    primer = " ".join(words[:take])
    rest = " ".join([*words[take:], after] if after else words[take:])
    if not is_speakable(rest):  # only punctuation would be left: keep the clause whole
        return first + (f" {rest}" if rest else ""), ""
    return primer, rest


def _bare(word: str) -> str:
    return word.strip("\"'“”‘’()[],;:").lower()


def _is_boundary(para: str, start: int, end: int, terminator: str) -> bool:
    if _CJK_TERMINATOR.match(terminator):
        return True
    if end < len(para) and not para[end].isspace():
        return False  # "3.14", "e.g.x", "...and"
    if not terminator.startswith("."):
        return True
    rest = para[end:].lstrip()
    if rest and rest[0].islower():
        return False
    before = para[:start].split()
    word = before[-1].lstrip("\"'“‘([") if before else ""
    if word.lower() in ABBREVIATIONS:
        return False
    return not (len(word) == 1 and word.isalpha() and word.isupper())


def _attach_unspeakable(pieces: list[str]) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        if out and not (is_speakable(piece) and is_speakable(out[-1])):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out
