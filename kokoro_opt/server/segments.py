"""Segment plans for streaming: a very short first segment, then whole sentences.

Time to first audio is the time to synthesize the first segment, and the model's cost grows with
the audio it makes (about linearly, silences included: Kokoro pads each call with almost a
second of silence), so the first segment is the first clause, cut to `first_chars` at a word
boundary when longer. The default 12 characters is one or two words ("The birch | canoe slid on
the smooth planks."): on 2 cores that is the difference between about 0.3 s and 0.45 s to first
audio for the 20-phoneme "The birch canoe slid". The cut moves back over a trailing function
word ("on", "the", "and", ...), so the primer ends where a speaker could pause.

Later segments hold whole sentences, packed while they fit a budget of `growth` times the
characters already planned (at least `first_chars`, at most `max_chars`): each segment then
brings at most `growth` times the audio already queued, which keeps a stream ahead of playback
while the real-time factor is below 1 / growth, and packing sentences into one call keeps the
model's own pauses between them. A sentence longer than the budget is split at clause
punctuation; only a clause longer than `max_chars` is cut between words.

Built on the runtime's pure text functions (`kokoro_opt.runtime.segment`).
"""

from __future__ import annotations

from kokoro_opt.runtime.segment import (
    is_speakable,
    split_clauses,
    split_sentences,
    split_words,
)

# Words a phrase rarely ends on (English): the primer cut backs off over them.
FUNCTION_WORDS = frozenset(
    {
        "a", "an", "the", "of", "on", "in", "at", "to", "for", "from", "with", "by", "as",
        "and", "or", "but", "nor", "so", "if", "that", "than", "then", "my", "your", "his",
        "her", "its", "our", "their", "this", "these", "those", "is", "are", "was", "were",
        "be", "been", "very", "into", "onto", "over", "under", "about", "not", "no",
    }
)  # fmt: skip


def plan_segments(
    text: str, *, first_chars: int = 12, max_chars: int = 300, growth: float = 3.0
) -> list[str]:
    """Segments of `text` in order (see the module docstring); empty if nothing is speakable."""
    if not 1 <= first_chars <= max_chars:
        raise ValueError("need 1 <= first_chars <= max_chars")
    sentences = split_sentences(text)
    if not sentences:
        return []
    primer, rest = primer_cut(sentences[0], first_chars)
    queue = ([rest] if rest else []) + sentences[1:]
    segments = [primer]
    emitted = len(primer)
    while queue:
        budget = int(min(max_chars, max(first_chars, growth * emitted)))
        current = ""
        while queue:
            unit = queue[0]
            candidate = f"{current} {unit}" if current else unit
            if len(candidate) <= budget:
                current = candidate
                queue.pop(0)
                continue
            if current:
                break
            queue.pop(0)
            clauses = split_clauses(unit)
            if len(clauses) > 1:
                queue[:0] = clauses
            elif len(unit) > max_chars:
                queue[:0] = split_words(unit, max_chars)
            else:
                current = unit  # one clause over the budget but within max_chars: keep whole
                break
        segments.append(current)
        emitted += len(current)
    return [s for s in segments if s and is_speakable(s)]


def primer_cut(sentence: str, first_chars: int) -> tuple[str, str]:
    """(primer, rest) for the first sentence: the whole sentence when it fits `first_chars`,
    else its first clause, or the longest run of leading words within `first_chars` that does
    not end on a function word."""
    if len(sentence) <= first_chars:  # the whole sentence fits: no cut (windowed synthesis)
        return sentence, ""
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
