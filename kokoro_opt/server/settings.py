"""Server settings: limits, streaming and segmentation knobs, checked once at start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kokoro_opt.errors import UserInputError
from kokoro_opt.runtime.markup import Lexicon, check_ssml_mode
from kokoro_opt.runtime.voices import DEFAULT_VOICE

# Model names OpenAI clients send; they are answered by the one loaded model.
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


@dataclass(frozen=True)
class ServerSettings:
    """What `create_app` needs beyond the engine.

    - `api_key`: when set, every endpoint but /health requires `Authorization: Bearer <key>`.
    - `max_chars`: the longest `input` accepted (OpenAI's limit is 4096).
    - `max_concurrent`: speech requests running at once; one more gets 429 with Retry-After.
      None: 4 per inference session (on 2 cores one session keeps about 4 streams ahead of
      real time; more would all fall behind, so they are better told to come back).
    - `load_shedding`: also refuse (429) a new request when the recent real-time factor says the
      sessions cannot keep one more stream ahead of playback (other load on the machine
      included), so the streams already running stay real-time instead of all falling behind.
    - `timeout_s`: the longest a request waits for its next audio chunk (waiting for an inference
      session included); past it the request fails with 504 (a stream is cut).
    - `primer_ms`: milliseconds of silence sent right after the WAV header (0: none).
    - `trim_silence`: cut the model's long silences where segments meet to natural pauses
      (see `joins.py`); off sends the model's audio untouched.
    - `self_bench_interval_s`: run a small synthesis benchmark this often while idle (0: never).
    - `first_segment_chars`, `max_segment_chars`, `growth`: segmentation (see `segments.py`).
    - `queue_size`: capacity of each queue between pipeline stages (backpressure).
    - `cache_entries`: first segments kept in the LRU primer cache (0: no cache).
    - `lexicon`: pronunciations applied to every request (`runtime.markup.Lexicon`).
    - `ssml`: `strict` refuses SSML tags other than <break>/<speak> (400), `lenient` strips them.
    """

    api_key: str | None = None
    max_chars: int = 4096
    max_concurrent: int | None = None
    load_shedding: bool = True
    timeout_s: float = 30.0
    primer_ms: int = 0
    trim_silence: bool = True
    self_bench_interval_s: float = 0.0
    first_segment_chars: int = 12
    first_segment: str | None = None
    """'clause' (the early primer, cut to first_segment_chars) or 'sentence' (the whole first
    sentence); None: 'sentence' when synthesis is windowed, else 'clause'."""
    max_segment_chars: int = 300
    growth: float = 3.0
    queue_size: int = 2
    cache_entries: int = 64
    default_voice: str = DEFAULT_VOICE
    default_lang: str = "en-us"
    warmup: bool = True
    model_aliases: tuple[str, ...] = field(default=("kokoro", *OPENAI_MODEL_ALIASES))
    lexicon: Lexicon | None = field(default=None, hash=False, compare=False)
    ssml: str = "strict"

    def __post_init__(self) -> None:
        _at_least("max_chars", self.max_chars, 1)
        if self.max_concurrent is not None:
            _at_least("max_concurrent", self.max_concurrent, 1)
        _at_least("queue_size", self.queue_size, 1)
        _at_least("cache_entries", self.cache_entries, 0)
        _at_least("first_segment_chars", self.first_segment_chars, 4)
        if self.first_segment not in (None, "clause", "sentence"):
            raise UserInputError(
                f"first-segment must be clause or sentence, got {self.first_segment!r}."
            )
        _at_least("max_segment_chars", self.max_segment_chars, self.first_segment_chars)
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise UserInputError(
                f"timeout must be a positive number of seconds, got {self.timeout_s}."
            )
        if not 0 <= self.primer_ms <= 1000:
            raise UserInputError(f"primer-ms must be from 0 to 1000, got {self.primer_ms}.")
        if not (math.isfinite(self.self_bench_interval_s) and self.self_bench_interval_s >= 0):
            raise UserInputError(
                "self-bench-interval must be 0 (off) or a positive number of seconds, got "
                f"{self.self_bench_interval_s}."
            )
        if not (math.isfinite(self.growth) and self.growth >= 1.0):
            raise UserInputError(f"growth must be at least 1.0, got {self.growth}.")
        check_ssml_mode(self.ssml)
        if self.api_key is not None and not self.api_key.strip():
            raise UserInputError("The API key is empty: give a non-empty key or none at all.")


STREAMS_PER_SESSION = 4


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        option = name.replace("_", "-")
        raise UserInputError(f"{option} must be a whole number of at least {low}, got {value!r}.")
