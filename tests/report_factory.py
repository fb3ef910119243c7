"""Build realistic `Report` objects for tests of reports, renderers and gates.

The numbers are simulated measurements, not canned results: each model gets a per-text
latency drawn around `rtf * audio_s` with seeded noise over several runs, and every aggregate
(median, p90, TTFA percentiles, speedup as the geometric mean of per-text ratios, pooled WER)
is computed from those rows the way bench and eval define them. Change a knob (say the INT8
model's RTF or WER) and every derived number moves with it.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kokoro_opt.report.schema import (
    Comparison,
    ConcurrencyStats,
    Host,
    LatencyStats,
    ModelEntry,
    QualityMetrics,
    Report,
    RtfStats,
    RunMeta,
    SpeedMetrics,
    Tradeoff,
    TradeoffStep,
    TtfaStats,
    UtteranceRow,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "It was the best of times, it was the worst of times.",
    "The rain in Spain stays mainly in the plain.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese.",
    "We also need a small plastic snake and a big toy frog for the kids.",
]


@dataclass
class Spec:
    """How one simulated model behaves."""

    name: str
    rtf: float
    size_bytes: int
    quant_style: str = "float"
    wer: float | None = 0.06
    logmel: float | None = None  # None for the reference itself
    rss_mb: float = 900.0
    ttfa_share: float = 0.35  # first segment's share of the latency
    speed: bool = True
    quality: bool = True
    extra: dict = field(default_factory=dict)


DEFAULT_SPECS = (
    Spec("kokoro-fp32", rtf=0.20, size_bytes=325_600_000, wer=0.062, rss_mb=1450.0),
    Spec(
        "kokoro-int8",
        rtf=0.11,
        size_bytes=126_000_000,
        quant_style="qdq-int8",
        wer=0.067,
        logmel=0.41,
        rss_mb=780.0,
    ),
)


def percentile(values: list[float], q: float) -> float:
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def build_report(
    specs: tuple[Spec, ...] | list[Spec] = DEFAULT_SPECS,
    *,
    seed: int = 0,
    n_texts: int = 6,
    runs: int = 3,
    tradeoff: bool = False,
    concurrency: int | None = None,
    title: str | None = None,
) -> Report:
    rng = random.Random(seed)
    texts = TEXTS[:n_texts]
    audio = [0.065 * len(t) + rng.uniform(0.2, 0.4) for t in texts]
    ref = specs[0].name
    models: list[ModelEntry] = []
    rows: list[UtteranceRow] = []
    medians: dict[str, list[float]] = {}
    for spec in specs:
        lat_all: list[float] = []
        rtf_all: list[float] = []
        ttfa_all: list[float] = []
        per_text_median: list[float] = []
        words = edits = 0
        spec_rows = []
        for i, (text, secs) in enumerate(zip(texts, audio, strict=True)):
            lats = [spec.rtf * secs * 1e3 * rng.lognormvariate(0, 0.05) for _ in range(runs)]
            ttfas = [lat * spec.ttfa_share for lat in lats]
            lat_all += lats
            rtf_all += [lat / 1e3 / secs for lat in lats]
            ttfa_all += ttfas
            per_text_median.append(statistics.median(lats))
            n_words = len(text.split())
            errs = 0
            if spec.wer is not None:
                errs = sum(rng.random() < spec.wer for _ in range(n_words))
            words += n_words
            edits += errs
            spec_rows.append(
                UtteranceRow(
                    model=spec.name,
                    utterance_id=str(i),
                    text=text,
                    audio_s=round(secs * (1.0 if spec.logmel is None else 1.01), 3),
                    latency_ms=lats if spec.speed else [],
                    ttfa_ms=statistics.median(ttfas) if spec.speed else None,
                    wer=errs / n_words if spec.quality and spec.wer is not None else None,
                    logmel_distance=(
                        spec.logmel * rng.uniform(0.8, 1.2)
                        if spec.quality and spec.logmel is not None
                        else None
                    ),
                    transcript=text.lower().rstrip(".") if spec.quality else None,
                    wav=f"wav/{spec.name}/{i:03d}.wav" if spec.quality else None,
                )
            )
        rows += spec_rows
        medians[spec.name] = per_text_median
        speed = None
        if spec.speed:
            speed = SpeedMetrics(
                load_s=0.4 + spec.size_bytes / 1e9,
                latency_ms=LatencyStats(
                    median=statistics.median(lat_all),
                    p90=percentile(lat_all, 90),
                    mean=statistics.fmean(lat_all),
                ),
                rtf=RtfStats(
                    median=statistics.median(rtf_all),
                    p90=percentile(rtf_all, 90),
                    mean=statistics.fmean(rtf_all),
                ),
                ttfa_ms=TtfaStats(p50=percentile(ttfa_all, 50), p95=percentile(ttfa_all, 95)),
                cpu_time_s=statistics.median(lat_all) / 1e3 * 1.9,
                peak_rss_mb=spec.rss_mb,
                audio_s=sum(audio),
                runs=runs,
                warmup=1,
                concurrency=(
                    ConcurrencyStats(
                        streams=concurrency,
                        wall_s=sum(audio) * spec.rtf * concurrency / 1.6,
                        throughput_audio_s_per_s=1.6 / spec.rtf,
                        rtf_median=spec.rtf * concurrency / 1.6,
                        rtf_max=spec.rtf * concurrency / 1.5,
                    )
                    if concurrency
                    else None
                ),
            )
        quality = None
        if spec.quality:
            dists = [r.logmel_distance for r in spec_rows if r.logmel_distance is not None]
            quality = QualityMetrics(
                n_utterances=len(texts),
                reference=None if spec.name == ref else ref,
                wer=edits / words if spec.wer is not None else None,
                cer=edits / words / 2.5 if spec.wer is not None else None,
                logmel_distance=statistics.fmean(dists) if dists else None,
                mcd_db=statistics.fmean(dists) * 9.0 if dists else None,
                duration_ratio=None if spec.name == ref else 1.01,
                asr_seconds=sum(audio) * 0.06,
            )
        models.append(
            ModelEntry(
                name=spec.name,
                path=f"/cache/models/{spec.name}.onnx",
                sha256=hashlib.sha256(spec.name.encode()).hexdigest(),
                size_bytes=spec.size_bytes,
                quant_style=spec.quant_style,
                speed=speed,
                quality=quality,
                **spec.extra,
            )
        )
    comparisons = [
        Comparison(
            model=s.name,
            reference=ref,
            speedup=math.exp(
                statistics.fmean(
                    math.log(b / m) for b, m in zip(medians[ref], medians[s.name], strict=True)
                )
            ),
            n_texts=len(texts),
        )
        for s in specs
        if s.speed and specs[0].speed
    ]
    return Report(
        run=RunMeta(
            created=datetime(2025, 5, 1, 12, 0, 0, tzinfo=timezone.utc),
            kokoro_opt_version="0.1.0",
            command=["kokoro-opt", "bench", *(s.name for s in specs)],
            host=Host(
                cpu_model="Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
                cores=2,
                platform="Linux-6.1-x86_64",
                python="3.11.2",
                onnxruntime_version="1.32.0",
                provider="cpu",
                threads=2,
            ),
            title=title,
            voice="jf_gongitsune",
            lang="en-us",
            speed=1.0,
            texts="heldout",
            asr_model="whisper-base",
            settings={"runs": runs, "warmup": 1},
        ),
        models=models,
        utterances=rows,
        comparisons=comparisons,
        tradeoff=_tradeoff(rng) if tradeoff else None,
        notes=["Simulated report built by tests/report_factory.py."],
    )


def _tradeoff(rng: random.Random) -> Tradeoff:
    groups = ["conv_post", "noise_convs", "resblocks.0", "resblocks.3", "predictor.lstm"]
    steps = []
    speed, dist = 2.1, 0.62
    for n in range(len(groups) + 1):
        steps.append(
            TradeoffStep(
                name="all-int8" if n == 0 else f"+{groups[n - 1]}",
                speed=speed,
                fidelity=dist,
                wer=0.06 + dist / 20,
                logmel_distance=dist,
                size_bytes=int(126e6 + n * 8e6),
                pinned=groups[:n],
                accepted=dist <= 0.42,
            )
        )
        speed *= rng.uniform(0.9, 0.97)
        dist *= rng.uniform(0.7, 0.85)
    chosen = next((s.name for s in steps if s.accepted), None)
    return Tradeoff(
        title="pin search", budget="WER +0.5 pt, log-mel <= 0.42", chosen=chosen, steps=steps
    )
