"""Word timestamps of models checked against Whisper's word timestamps on a corpus.

For every model: a Synthesizer with `timestamps=True` (the durations output is added in memory
when the model has none) speaks each text as `kokoro-opt speak` does (streaming segments,
pauses trimmed), and the offline ASR (`quality.asr.transcribe_words`, Whisper base, beam 5,
`word_timestamps=True`) listens to the same audio. `quality.timestamps.compare_words` matches
the two word lists and measures the boundary differences. Models run interleaved per text.

    result = check_timestamps(models, TimestampConfig(texts=texts))
    result.models[0].summary.median_abs_ms
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kokoro_opt.bench.harness import BenchModel
from kokoro_opt.quality.timestamps import SentenceTimestamps, TimestampSummary, summarize

if TYPE_CHECKING:
    from kokoro_opt.runtime.markup import Lexicon

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TimestampConfig:
    texts: Sequence[str]
    voice: str = "jf_gongitsune"
    speed: float = 1.0
    lang: str = "en-us"
    provider: str = "cpu"
    threads: int | None = None
    asr_threads: int = 2
    lexicon: Lexicon | None = None


@dataclass
class ModelTimestamps:
    name: str
    rows: list[SentenceTimestamps] = field(default_factory=list)
    load_s: float = 0.0

    @property
    def summary(self) -> TimestampSummary:
        return summarize(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "load_s": round(self.load_s, 2),
            "summary": self.summary.to_dict(),
            "sentences": [r.to_dict() for r in self.rows],
        }


@dataclass
class TimestampResult:
    config: TimestampConfig
    models: list[ModelTimestamps]

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "reference": "whisper word timestamps (quality.asr.transcribe_words)",
            "texts": len(c.texts),
            "voice": c.voice,
            "speed": c.speed,
            "lang": c.lang,
            "models": [m.to_dict() for m in self.models],
        }


def check_timestamps(
    models: Sequence[BenchModel],
    config: TimestampConfig,
    *,
    progress: ProgressCallback | None = None,
) -> TimestampResult:
    """Every model's word timestamps against Whisper's on every text (see the docstring)."""
    from kokoro_opt.quality.asr import load_model, transcribe_words
    from kokoro_opt.quality.timestamps import compare_words
    from kokoro_opt.runtime.synthesizer import Synthesizer

    load_model(threads=config.asr_threads)
    synths: list[Synthesizer] = []
    results: list[ModelTimestamps] = []
    for model in models:
        start = time.perf_counter()
        synths.append(
            Synthesizer(
                model.path, provider=config.provider, threads=config.threads, timestamps=True
            )
        )
        results.append(ModelTimestamps(model.name, load_s=time.perf_counter() - start))
    total = len(config.texts) * len(models)
    done = 0
    for text in config.texts:
        for synth, result in zip(synths, results, strict=True):
            audio, rate, words = synth.synthesize_timed(
                text,
                voice=config.voice,
                speed=config.speed,
                lang=config.lang,
                lexicon=config.lexicon,
            )
            heard = transcribe_words(audio, rate, threads=config.asr_threads)
            result.rows.append(compare_words(text, words, heard))
            done += 1
            if progress is not None:
                progress("Timestamps vs Whisper", done, total)
    return TimestampResult(config, results)
