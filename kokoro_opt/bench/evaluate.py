"""Fidelity of models against a reference model: the same phonemes through every model, then
an offline ASR's WER/CER and DTW-aligned spectral distances to the reference.

    models = [BenchModel("kokoro-fp32", fp32), BenchModel("kokoro-int8-export", int8)]
    result = evaluate(models, EvalConfig(texts=texts, reference="kokoro-fp32", wav_dir=run/"wav"))
    result.model("kokoro-int8-export").summary()     # fills report.schema.QualityMetrics

How it is measured (the same way every time):
- every text is phonemized once (the runtime's G2P, sentence segments up to 400 characters,
  no short first segment since no one waits on it here); every model gets identical token ids,
  the same voice style row, speed and language, through `Synthesizer.infer`, and its output is
  finished exactly as the streaming runtime finishes a chunk (padding silence shortened,
  NaN/inf -> 0, clipped, edge ramps); segments are concatenated;
- models run interleaved per text (reference first), so a noisy machine slows all alike;
- the ASR (`kokoro_opt.quality.asr`, Whisper base, beam search 5) transcribes every rendering;
  WER/CER are pooled over the corpus after `normalize_for_wer` (`quality.wer.error_rates`);
- every non-reference rendering is compared with the reference's rendering of the same text
  (`quality.distance.compare`: log-mel distance, MCD, duration ratio, F0 RMSE, voicing error
  along one DTW path); aggregates are means over utterances, except the duration ratio, which
  is total seconds over the reference's total seconds;
- WAVs (24 kHz mono PCM16) are kept under `wav_dir/<model>/NNN.wav` for listening.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kokoro_opt.bench.harness import BenchModel
from kokoro_opt.errors import TextError, UserInputError
from kokoro_opt.runtime.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from kokoro_opt.measure.executors import Executor, FileRef
    from kokoro_opt.measure.score import Rendering
    from kokoro_opt.quality.distance import AudioDistance
    from kokoro_opt.quality.wer import CorpusErrors
    from kokoro_opt.runtime.markup import Lexicon

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]

DEFAULT_VOICE = "jf_gongitsune"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class EvalConfig:
    """What to say and how; `reference` is the name of one of the models evaluated."""

    texts: Sequence[str]
    reference: str
    voice: str = DEFAULT_VOICE
    speed: float = 1.0
    lang: str = "en-us"
    provider: str = "cpu"
    threads: int | None = None
    asr: bool = True
    asr_threads: int = 2
    f0: bool = True
    wav_dir: Path | None = None
    lexicon: Lexicon | None = None  # pronunciations applied to every text (runtime.markup)

    def __post_init__(self) -> None:
        if not self.texts:
            raise UserInputError("No texts to evaluate: give at least one sentence.")
        if isinstance(self.asr_threads, bool) or self.asr_threads < 1:
            raise UserInputError(f"ASR threads must be at least 1, got {self.asr_threads}.")


@dataclass
class ModelEval:
    """One model's renderings of the texts and how they score."""

    model: BenchModel
    is_reference: bool
    audio_s: list[float] = field(default_factory=list)
    synth_s: list[float] = field(default_factory=list)
    nonfinite: list[int] = field(default_factory=list)
    wavs: list[Path | None] = field(default_factory=list)
    transcripts: list[str] | None = None
    asr_s: list[float] = field(default_factory=list)
    errors: CorpusErrors | None = None
    distances: list[AudioDistance] | None = None
    reference: str | None = None
    reference_audio_s: float | None = None

    @property
    def name(self) -> str:
        return self.model.name

    def summary(self) -> dict[str, Any]:
        """Aggregates with the field names of `report.schema.QualityMetrics`."""
        out: dict[str, Any] = {
            "n_utterances": len(self.audio_s),
            "reference": self.reference,
            "wer": self.errors.wer if self.errors else None,
            "cer": self.errors.cer if self.errors else None,
            "asr_seconds": sum(self.asr_s) if self.transcripts is not None else None,
        }
        dists = self.distances
        if dists:
            f0 = [d.f0_rmse_cents for d in dists if d.f0_rmse_cents is not None]
            out.update(
                logmel_distance=statistics.fmean(d.logmel_distance for d in dists),
                mcd_db=statistics.fmean(d.mcd_db for d in dists),
                duration_ratio=sum(self.audio_s) / self.reference_audio_s
                if self.reference_audio_s
                else None,
                f0_rmse_cents=statistics.fmean(f0) if f0 else None,
                voicing_error=statistics.fmean(d.voicing_error for d in dists),
            )
        return out


@dataclass(frozen=True)
class AsrSpeed:
    """The ruler's own speed: load time and seconds of audio transcribed per second."""

    model: str
    load_s: float
    audio_s: float
    asr_s: float
    threads: int

    @property
    def audio_s_per_s(self) -> float | None:
        return self.audio_s / self.asr_s if self.asr_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "load_s": self.load_s,
            "audio_s": self.audio_s,
            "asr_s": self.asr_s,
            "audio_s_per_s": self.audio_s_per_s,
            "threads": self.threads,
        }


@dataclass
class EvalResult:
    """Everything `evaluate` measured; models in the order given (the reference among them)."""

    texts: list[str]
    phonemes: list[list[str]]
    reference: str
    models: list[ModelEval]
    asr: AsrSpeed | None

    def model(self, name: str) -> ModelEval:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def evaluate(
    models: Sequence[BenchModel],
    config: EvalConfig,
    *,
    executor: Executor | None = None,
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """Synthesize every text with every model, transcribe and compare (see the module doc).

    One task per text (`measure.score.render_phonemes`) on `executor` (default: this process);
    the results do not depend on where the tasks ran."""
    from kokoro_opt.measure.executors import Executor
    from kokoro_opt.measure.score import PhonemeTask, render_phonemes
    from kokoro_opt.runtime.g2p import normalize_lang
    from kokoro_opt.runtime.synthesizer import check_speed
    from kokoro_opt.runtime.voices import VoiceLibrary

    check_models(models, config.reference)
    speed = check_speed(config.speed)
    lang = normalize_lang(config.lang)
    pack = VoiceLibrary.default().get(config.voice)
    texts = [str(t) for t in config.texts]
    order = sorted(range(len(models)), key=lambda k: models[k].name != config.reference)
    run = executor or Executor()
    try:
        asr_speed = _load_asr(config, run)
        refs = tuple(run.share(models[k].path) for k in order)
        threads = run.task_threads(config.threads)
        phonemes = _phonemize_all(refs[0], texts, lang, config.provider, threads, config.lexicon)
        asr_threads = run.task_threads(config.asr_threads) if config.asr else None
        tasks = [
            PhonemeTask(i, tuple(p), refs, pack, speed, config.provider, threads, asr_threads,
                        config.f0)
            for i, p in enumerate(phonemes)
        ]  # fmt: skip
        label = f"Synthesizing and scoring {len(models)} model(s) on {run.describe()}"
        rendered = run.map(render_phonemes, tasks, progress=progress, label=label)
    finally:
        if executor is None:
            run.close()
    evals = [_model_eval(models[k], j, rendered, config) for j, k in enumerate(order)]
    _write_wavs(config.wav_dir, evals, rendered)
    by_name = {e.name: e for e in evals}
    ordered = [by_name[m.name] for m in models]
    if asr_speed is not None:
        asr_audio = sum(r.audio_s for row in rendered for r in row)
        asr_time = sum(r.asr_s for row in rendered for r in row)
        asr_speed = AsrSpeed(
            asr_speed.model, asr_speed.load_s, asr_audio, asr_time, asr_speed.threads
        )
    return EvalResult(texts, phonemes, config.reference, ordered, asr_speed)


def _load_asr(config: EvalConfig, executor: Executor) -> AsrSpeed | None:
    """Fail early when the ASR is missing; in this process it is loaded (and timed) here."""
    if not config.asr:
        return None
    from kokoro_opt.quality.asr import MODEL_NAME, load_model, model_files

    threads = executor.task_threads(config.asr_threads) or config.asr_threads
    if executor.kind != "local":
        model_files()
        return AsrSpeed(MODEL_NAME, 0.0, 0.0, 0.0, threads)
    start = time.perf_counter()
    load_model(threads=threads)
    return AsrSpeed(MODEL_NAME, time.perf_counter() - start, 0.0, 0.0, threads)


def _phonemize_all(
    model: FileRef,
    texts: list[str],
    lang: str,
    provider: str,
    threads: int | None,
    lexicon: Lexicon | None = None,
) -> list[list[str]]:
    """Each text's phoneme pieces, once, with the runtime's G2P (every model gets these).

    The reference's synthesizer is made with the tasks' thread count, so in this process the
    tasks reuse it (another thread count would make a second session of the same model)."""
    from kokoro_opt.measure import workers
    from kokoro_opt.runtime.g2p import get_g2p

    get_g2p(lang)
    synth = workers.synthesizer(model, provider=provider, threads=threads)
    return [_phonemize(synth, text, lang, i, lexicon) for i, text in enumerate(texts)]


def _model_eval(
    model: BenchModel, column: int, rendered: list[list[Rendering]], config: EvalConfig
) -> ModelEval:
    """One model's column of the per-text results, with its pooled WER/CER."""
    rows = [row[column] for row in rendered]
    is_ref = column == 0
    res = ModelEval(
        model,
        is_ref,
        audio_s=[r.audio_s for r in rows],
        synth_s=[r.synth_s for r in rows],
        nonfinite=[r.nonfinite for r in rows],
        transcripts=[r.transcript or "" for r in rows] if config.asr else None,
        asr_s=[r.asr_s for r in rows] if config.asr else [],
        distances=None if is_ref else [r.distance for r in rows if r.distance is not None],
        reference=None if is_ref else config.reference,
        reference_audio_s=None if is_ref else sum(row[0].audio_s for row in rendered),
    )
    if res.transcripts is not None:
        from kokoro_opt.quality.wer import error_rates

        res.errors = error_rates([str(t) for t in config.texts], res.transcripts)
    if any(res.nonfinite):
        logger.warning("%s produced %d NaN/inf samples", res.name, sum(res.nonfinite))
    return res


def _write_wavs(
    wav_dir: Path | None, evals: list[ModelEval], rendered: list[list[Rendering]]
) -> None:
    """WAVs under wav_dir/<model>/NNN.wav (none without `wav_dir`)."""
    for column, res in enumerate(evals):
        res.wavs = [
            _write_wav(wav_dir, res.name, i, row[column].audio, SAMPLE_RATE)
            for i, row in enumerate(rendered)
        ]


def check_models(models: Sequence[BenchModel], reference: str) -> None:
    """At least one model, unique names and files, and the reference among them."""
    if not models:
        raise UserInputError("No models to evaluate: name at least one MODEL.")
    names = [m.name for m in models]
    for name in names:
        if names.count(name) > 1:
            raise UserInputError(
                f"Two models are called {name!r}; each MODEL must be a different file with a "
                "different name (copy or rename one)."
            )
    paths = [m.path.resolve() for m in models]
    for i, path in enumerate(paths):
        if paths.index(path) != i:
            raise UserInputError(
                f"Model {path} is given twice ({names[paths.index(path)]} and {names[i]}); "
                "name each model once."
            )
    if reference not in names:
        raise UserInputError(
            f"The reference {reference!r} is not among the models ({', '.join(names)}); "
            "add it to the models evaluated."
        )


def safe_name(name: str) -> str:
    """A model name made safe for a folder name."""
    return _UNSAFE.sub("-", name).strip("-.") or "model"


def wav_path(wav_dir: Path, model: str, index: int) -> Path:
    """Where the WAV of text `index` (0-based) of `model` goes: wav_dir/<model>/NNN.wav."""
    return wav_dir / safe_name(model) / f"{index:03d}.wav"


def _phonemize(
    synth: Any, text: str, lang: str, index: int, lexicon: Lexicon | None = None
) -> list[str]:
    try:
        pieces = synth.phonemize(text, lang, first_segment_fast=False, lexicon=lexicon)
    except TextError as exc:
        raise TextError(f"Text #{index + 1} ({_clip(text)!r}) cannot be spoken: {exc}") from None
    if not pieces:
        raise TextError(
            f"Text #{index + 1} ({_clip(text)!r}) has no phonemes; remove it or give words."
        )
    return pieces


def _write_wav(
    wav_dir: Path | None, model: str, index: int, audio: np.ndarray, sr: int
) -> Path | None:
    if wav_dir is None:
        return None
    from kokoro_opt.runtime.audio import write_wav

    path = wav_path(wav_dir, model, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_wav(path, audio, sr)


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
