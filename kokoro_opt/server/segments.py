"""Segment plans for streaming: the runtime's segmenter with the server's policy.

Time to first audio is the time to synthesize the first segment, and the model's cost grows with
the audio it makes, so without windowed synthesis the first segment is the first clause, cut to
`first_chars` at a word boundary when longer (default 12 characters: one or two words, "The
birch | canoe slid on the smooth planks."; on 2 cores about 0.3 s instead of 0.45 s to first
audio), backing off over a trailing function word. With windowed synthesis (`first=
"sentence"`) the first segment is the whole first sentence. Later segments hold whole
sentences packed within `growth` times the characters already planned (see
`kokoro_opt.runtime.segment`, the one segmenter the runtime and the server share).
"""

from __future__ import annotations

from kokoro_opt.runtime.segment import (
    FUNCTION_WORDS,
    FirstSegment,
    SegmentPolicy,
    primer_cut,
    segment_text,
)

__all__ = ["FUNCTION_WORDS", "plan_segments", "primer_cut"]


def plan_segments(
    text: str,
    *,
    first_chars: int = 12,
    max_chars: int = 300,
    growth: float = 3.0,
    first: FirstSegment = "clause",
) -> list[str]:
    """Segments of `text` in order (see the module docstring); empty if nothing is speakable."""
    if not 1 <= first_chars <= max_chars:
        raise ValueError("need 1 <= first_chars <= max_chars")
    policy = SegmentPolicy(
        first_max_chars=first_chars, max_chars=max_chars, growth=growth, first=first
    )
    return segment_text(text, policy=policy)
