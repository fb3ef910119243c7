"""Latency, RTF, time to first audio, CPU time and peak memory of models on the runtime.

Models are measured interleaved (for each run, for each text: A, B, A, B ...) in one process so
that a noisy machine slows every model alike and the ratios between them hold. Peak RSS is a
per-process number, so each model's memory is measured in a fresh child process that loads it
and speaks one text.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kokoro_opt.errors import UserInputError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: Path


@dataclass(frozen=True)
class BenchConfig:
    texts: Sequence[str]
    voice: str = "jf_gongitsune"
    speed: float = 1.0
    lang: str = "en-us"
    provider: str = "cpu"
    threads: int | None = None
    runs: int = 5
    warmup: int = 1
    concurrency: int = 1
    measure_memory: bool = True

    def __post_init__(self) -> None:
        if not self.texts:
            raise UserInputError("No texts to benchmark: give at least one sentence.")
        if self.runs < 1:
            raise UserInputError(f"--runs must be at least 1, got {self.runs}.")
        if self.warmup < 0:
            raise UserInputError(f"--warmup must be 0 or more, got {self.warmup}.")
        if self.concurrency < 1:
            raise UserInputError(f"--concurrency must be at least 1, got {self.concurrency}.")


@dataclass
class Utterance:
    """Timings of one text on one model across runs."""

    text_id: int
    text: str
    audio_s: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    ttfa_ms: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)


@dataclass
class ModelBench:
    model: BenchModel
    load_s: float
    utterances: list[Utterance]
    peak_rss_mb: float | None = None
    concurrency: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """Aggregate numbers: medians and p90 over every (run, text) measurement."""
        latencies = [x for u in self.utterances for x in u.latency_ms]
        ttfas = [x for u in self.utterances for x in u.ttfa_ms]
        rtfs = [lat / 1e3 / u.audio_s for u in self.utterances for lat in u.latency_ms]
        cpu = [x for u in self.utterances for x in u.cpu_s]
        return {
            "load_s": self.load_s,
            "latency_ms": _stats(latencies),
            "rtf": _stats(rtfs),
            "ttfa_ms": {"p50": percentile(ttfas, 50), "p95": percentile(ttfas, 95)},
            "cpu_time_s": statistics.median(cpu) if cpu else None,
            "peak_rss_mb": self.peak_rss_mb,
            "audio_s": sum(u.audio_s for u in self.utterances),
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "median": statistics.median(values) if values else None,
        "p90": percentile(values, 90),
        "mean": statistics.fmean(values) if values else None,
    }


def speedups(results: Sequence[ModelBench]) -> list[float | None]:
    """Speed of each model relative to the first: the geometric mean over texts of
    (first model's median latency / this model's median latency) for the same text."""
    if not results:
        return []
    base = results[0]
    out: list[float | None] = []
    for res in results:
        ratios = [
            statistics.median(b.latency_ms) / statistics.median(u.latency_ms)
            for b, u in zip(base.utterances, res.utterances, strict=True)
            if b.latency_ms and u.latency_ms
        ]
        out.append(math.exp(statistics.fmean(math.log(r) for r in ratios)) if ratios else None)
    return out


def run_bench(
    models: Sequence[BenchModel],
    config: BenchConfig,
    *,
    progress: ProgressCallback | None = None,
) -> list[ModelBench]:
    """Measure every model on every text, interleaved; see the module docstring."""
    from kokoro_opt.runtime.g2p import get_g2p, normalize_lang
    from kokoro_opt.runtime.synthesizer import Synthesizer

    if not models:
        raise UserInputError("No models to benchmark: name at least one MODEL.")
    lang = normalize_lang(config.lang)
    get_g2p(lang)  # G2P start-up is a per-process cost, not a model's
    synths: list[Synthesizer] = []
    results: list[ModelBench] = []
    for model in models:
        start = time.perf_counter()
        synth = Synthesizer(model.path, provider=config.provider, threads=config.threads)
        load_s = time.perf_counter() - start
        synth.voices.validate(config.voice)
        synths.append(synth)
        utterances = [Utterance(i, text) for i, text in enumerate(config.texts)]
        results.append(ModelBench(model, load_s, utterances))

    total = (config.warmup + config.runs) * len(config.texts) * len(models)
    done = 0
    for run in range(config.warmup + config.runs):
        measured = run >= config.warmup
        for text_id, text in enumerate(config.texts):
            for synth, res in zip(synths, results, strict=True):
                latency, ttfa, cpu, audio_s = _time_one(synth, text, config, lang)
                utt = res.utterances[text_id]
                utt.audio_s = audio_s
                if measured:
                    utt.latency_ms.append(latency * 1e3)
                    utt.ttfa_ms.append(ttfa * 1e3)
                    utt.cpu_s.append(cpu)
                done += 1
                if progress:
                    phase = "Measuring" if measured else "Warming up"
                    progress(f"{phase} {res.model.name}", done, total)

    if config.concurrency > 1:
        for synth, res in zip(synths, results, strict=True):
            res.concurrency = _concurrent(synth, config, lang)
    del synths
    if config.measure_memory:
        for res in results:
            res.peak_rss_mb = peak_rss_mb(res.model.path, config)
    return results


def _time_one(
    synth: Any, text: str, config: BenchConfig, lang: str
) -> tuple[float, float, float, float]:
    """(latency s, time to first chunk s, process CPU s, audio s) for one streamed utterance."""
    cpu0 = time.process_time()
    start = time.perf_counter()
    first = None
    samples = 0
    for chunk in synth.stream(text, voice=config.voice, speed=config.speed, lang=lang):
        if first is None:
            first = time.perf_counter() - start
        samples += len(chunk.samples)
    latency = time.perf_counter() - start
    return latency, first or latency, time.process_time() - cpu0, samples / chunk.sample_rate


def _concurrent(synth: Any, config: BenchConfig, lang: str) -> dict[str, Any]:
    """N threads stream every text once on one shared session; per-stream RTF and throughput."""
    per_stream: list[dict[str, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            start = time.perf_counter()
            audio = 0.0
            for text in config.texts:
                audio += _time_one(synth, text, config, lang)[3]
            wall = time.perf_counter() - start
            with lock:
                per_stream.append({"wall_s": wall, "audio_s": audio, "rtf": wall / audio})
        except Exception as exc:  # a failed stream is a result to report, not a crash
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(config.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    audio_total = sum(s["audio_s"] for s in per_stream)
    return {
        "streams": config.concurrency,
        "wall_s": wall,
        "throughput_audio_s_per_s": audio_total / wall if wall else None,
        "rtf_max": max((s["rtf"] for s in per_stream), default=None),
        "rtf_median": statistics.median([s["rtf"] for s in per_stream]) if per_stream else None,
        "errors": errors,
    }


def peak_rss_mb(model_path: Path, config: BenchConfig) -> float | None:
    """Peak resident memory (MB) of a fresh process that loads the model and speaks one text."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(
        target=_rss_child,
        args=(
            str(model_path),
            config.texts[0],
            config.voice,
            config.lang,
            config.provider,
            config.threads,
            queue,
        ),
    )
    proc.start()
    proc.join(timeout=300)
    if proc.is_alive():
        proc.kill()
        return None
    return queue.get() if not queue.empty() else None


def _rss_child(
    model: str, text: str, voice: str, lang: str, provider: str, threads: int | None, queue: Any
) -> None:
    from kokoro_opt.runtime.synthesizer import Synthesizer

    synth = Synthesizer(model, provider=provider, threads=threads)
    synth.synthesize(text, voice=voice, lang=lang)
    queue.put(_own_peak_rss_mb())


def _own_peak_rss_mb() -> float:
    """This process's peak RSS in MB. Linux: VmHWM of its own address space. Not ru_maxrss:
    Linux keeps that across execve, so a spawned child would report its parent's RSS at the
    fork when that is larger (the forked copy shares the parent's resident pages)."""
    import resource
    import sys

    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS
