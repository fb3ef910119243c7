"""Per-sentence fidelity: the tasks an executor runs, and the pure scoring helpers.

Two kinds of task, each one sentence, each returning plain data:
- `PhonemeTask` -> `render_phonemes`: one text's phoneme pieces through several models
  (reference first, interleaved), finished as the streaming runtime finishes a chunk, each
  rendering transcribed by the ASR and compared with the reference's (`eval`);
- `FeedTask` -> `score_feed`: one prepared model input through one model, its log-mel distance
  (or full `compare`) to a given reference rendering and the ASR's transcript (`pin`, `int4`).

Tasks name models by `FileRef` and carry the threads they may use; the worker keeps sessions
and the ASR between tasks (`measure.workers`). Scores do not depend on where a task ran: the
graph is deterministic and the same for any thread count (checked: 1 and 2 threads give
bit-identical audio), and the ASR decodes at temperature 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kokoro_opt.runtime.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from kokoro_opt.measure.executors import FileRef
    from kokoro_opt.quality.distance import AudioDistance


@dataclass(frozen=True)
class Rendering:
    """One model's rendering of one sentence and how it scores."""

    audio: np.ndarray
    synth_s: float
    nonfinite: int
    transcript: str | None = None
    asr_s: float = 0.0
    distance: AudioDistance | None = None  # to the reference's rendering (None for it)

    @property
    def audio_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class PhonemeTask:
    """One text as phoneme pieces, spoken by `models` (the reference first)."""

    index: int
    pieces: tuple[str, ...]
    models: tuple[FileRef, ...]
    style: np.ndarray  # the voice pack [510, 1, 256]
    speed: float
    provider: str
    threads: int | None
    asr_threads: int | None  # None: no transcript
    f0: bool = True


def render_phonemes(task: PhonemeTask) -> list[Rendering]:
    """Every model's rendering of the text, the reference's first (see the module doc)."""
    from kokoro_opt.measure import workers

    out: list[Rendering] = []
    for k, model in enumerate(task.models):
        synth = workers.synthesizer(model, provider=task.provider, threads=task.threads)
        start = time.perf_counter()
        audio, nonfinite = _render(synth, task.pieces, task.style, task.speed)
        synth_s = time.perf_counter() - start
        transcript, asr_s = _transcribe(audio, task.asr_threads)
        distance = None
        if k > 0:
            from kokoro_opt.quality.distance import compare

            distance = compare(audio, out[0].audio, SAMPLE_RATE, f0=task.f0)
        out.append(Rendering(audio, synth_s, nonfinite, transcript, asr_s, distance))
    return out


@dataclass(frozen=True)
class FeedTask:
    """One model input through one model; scored against `reference` audio when given."""

    model: FileRef
    feed: dict[str, np.ndarray]
    threads: int | None
    reference: np.ndarray | None = None
    asr: bool = False
    full: bool = False  # `compare` (log-mel, MCD, duration) instead of the log-mel distance
    keep_audio: bool = False
    session_config: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FeedScore:
    """What `score_feed` measured for one sentence."""

    audio_s: float
    nonfinite: int
    logmel: float | None = None  # infinity when the audio is empty or not finite
    mcd: float | None = None
    transcript: str | None = None
    asr_s: float = 0.0
    audio: np.ndarray | None = None


def score_feed(task: FeedTask) -> FeedScore:
    """Speak the feed, then score (see `FeedTask`)."""
    from kokoro_opt.measure import workers

    session, contract = workers.session(
        task.model, threads=task.threads, config=task.session_config
    )
    (raw,) = session.run([contract.audio], task.feed)
    audio = np.asarray(raw, dtype=np.float32).reshape(-1)
    logmel = mcd = None
    if task.reference is not None:
        if audio.size == 0 or not np.isfinite(audio).all():
            logmel = math.inf
        elif task.full:
            from kokoro_opt.quality.distance import compare

            d = compare(audio, task.reference, SAMPLE_RATE, f0=False)
            logmel, mcd = d.logmel_distance, d.mcd_db
        else:
            from kokoro_opt.quality.distance import logmel_distance

            logmel = float(logmel_distance(audio, task.reference, SAMPLE_RATE))
    asr_threads = (task.threads or 2) if task.asr else None
    transcript, asr_s = _transcribe(np.nan_to_num(audio), asr_threads)
    return FeedScore(
        audio_s=len(audio) / SAMPLE_RATE,
        nonfinite=int((~np.isfinite(audio)).sum()),
        logmel=logmel,
        mcd=mcd,
        transcript=transcript,
        asr_s=asr_s,
        audio=audio if task.keep_audio else None,
    )


def transcribe_task(item: tuple[np.ndarray, int | None]) -> str:
    """The ASR's transcript of one rendering (NaN/inf read as silence); item = (audio, threads)."""
    audio, threads = item
    text, _ = _transcribe(np.nan_to_num(audio), threads or 2)
    return text or ""


def mean(values: Sequence[float]) -> float:
    """The mean, 0.0 for no values (infinity stays infinity)."""
    return float(np.mean(values)) if len(values) else 0.0


def word_error_rate(texts: Sequence[str], transcripts: Sequence[str]) -> float:
    """Pooled WER of the transcripts against the texts (`quality.wer`)."""
    from kokoro_opt.quality.wer import error_rates

    return float(error_rates(list(texts), list(transcripts)).wer)


def _transcribe(audio: np.ndarray, threads: int | None) -> tuple[str | None, float]:
    if threads is None:
        return None, 0.0
    from kokoro_opt.quality.asr import transcribe_timed

    heard = transcribe_timed(audio, SAMPLE_RATE, threads=threads)
    return heard.text, heard.asr_s


def _render(
    synth: Any, pieces: Sequence[str], pack: np.ndarray, speed: float
) -> tuple[np.ndarray, int]:
    """Audio for the phoneme pieces of one text, finished as the streaming runtime does."""
    from kokoro_opt.runtime.synthesizer import finish_audio
    from kokoro_opt.runtime.tokenizer import tokenize
    from kokoro_opt.runtime.voices import style_for

    parts = []
    nonfinite = 0
    for piece in pieces:
        tokens = tokenize(piece)
        raw = synth.infer(tokens, style_for(pack, len(tokens)), speed)
        samples, bad = finish_audio(raw, trim=True)
        parts.append(samples)
        nonfinite += bad
    return np.concatenate(parts).astype(np.float32, copy=False), nonfinite
