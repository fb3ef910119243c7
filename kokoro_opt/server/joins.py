"""Natural pauses where segments meet.

Kokoro pads every call with about 0.42 s of digital silence before the speech and 0.5 s after
it. Played back to back, segments would be separated by almost a second of silence, also in the
middle of a sentence where the early-primer cut it, and the first word would come 0.4 s after
the first audio. So each chunk is trimmed to the pause its position calls for: 50 ms before the
first speech of a stream, 40 ms before later segments; after a segment, 250 ms at a sentence
end (and at the end of the stream), 150 ms after clause punctuation, 60 ms after a cut between
words. Silence is found on 10 ms windows at -60 dBFS, far below any speech sound, so soft
onsets are kept; a chunk with no sound at all is left as it is.
"""

from __future__ import annotations

import numpy as np

from kokoro_opt.runtime.synthesizer import guard_audio

WINDOW_S = 0.010
SILENCE = 0.001  # -60 dBFS RMS
LEAD_FIRST_S = 0.050
LEAD_S = 0.040
TRAIL_SENTENCE_S = 0.250
TRAIL_CLAUSE_S = 0.150
TRAIL_WORD_S = 0.060

_SENTENCE_END = tuple(".!?…。！？")
_CLAUSE_END = tuple(",;:—–、，；：")
_CLOSERS = "\"'”’»)]"


def pause_after(segment: str, *, last: bool) -> float:
    """Seconds of silence to keep after a segment, from how its text ends."""
    if last:
        return TRAIL_SENTENCE_S
    end = segment.rstrip().rstrip(_CLOSERS)
    if end.endswith(_SENTENCE_END):
        return TRAIL_SENTENCE_S
    if end.endswith(_CLAUSE_END):
        return TRAIL_CLAUSE_S
    return TRAIL_WORD_S


def trim_to_pauses(
    samples: np.ndarray, sample_rate: int, *, lead_s: float, trail_s: float
) -> np.ndarray:
    """`samples` with leading silence cut to `lead_s` and trailing silence to `trail_s` (never
    longer than they were), edges ramped again so the cut cannot click."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    start, end = trim_bounds(audio, sample_rate, lead_s=lead_s, trail_s=trail_s)
    if start == 0 and end == len(audio):
        return audio
    trimmed, _ = guard_audio(audio[start:end], sample_rate)
    return trimmed


def trim_bounds(
    samples: np.ndarray, sample_rate: int, *, lead_s: float, trail_s: float
) -> tuple[int, int]:
    """The [start, end) range `trim_to_pauses` keeps (all of it for silent audio)."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    window = max(1, int(WINDOW_S * sample_rate))
    n = len(audio) // window
    if n == 0:
        return 0, len(audio)
    frames = audio[: n * window].reshape(n, window).astype(np.float64)
    loud = np.nonzero(np.sqrt(np.mean(frames**2, axis=1)) > SILENCE)[0]
    if loud.size == 0:
        return 0, len(audio)
    start = max(0, int(loud[0]) * window - int(lead_s * sample_rate))
    end = min(len(audio), (int(loud[-1]) + 1) * window + int(trail_s * sample_rate))
    return start, end
