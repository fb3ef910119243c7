"""The INT4 trial: build a matrix of `kokoro_opt.passes.int4` configs from the FP32 model,
measure each against FP32, and recommend the smallest one that still speaks as well.

For every variant (and the FP32 reference, plus any extra models given for context):
- size on disk;
- speed: latency on a few held-out sentences, interleaved with FP32 in one process (FP32, model,
  model, FP32, ... so a busy machine slows both alike), as a speedup = geometric mean over texts
  of FP32 median / model median; models with weight DequantizeLinear nodes are timed twice,
  dequantizing on every call (onnxruntime's default) and folded at load
  (`FOLD_SESSION_CONFIG`);
- fidelity on held-out sentences (never used for calibration): log-mel distance and MCD to the
  FP32 audio after DTW (`kokoro_opt.quality.distance`), and the WER/CER of an offline ASR
  (`kokoro_opt.quality.asr`, Whisper base, beam search) against the text.

The recommendation is the smallest variant whose WER is within `wer_margin` (absolute, default
2 points) of FP32's; sizes within `SIZE_TIE` (1 %) of the smallest count as a tie (the same
block size with another rounding algorithm differs by a few kilobytes), broken by the lower
log-mel distance. Results are cached per model under the output folder (by its sha256, the
reference's and the settings), so an interrupted trial resumes where it stopped and a finished
one re-renders its report without running a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kokoro_opt.errors import UserInputError
from kokoro_opt.measure.reference import read_json, write_json
from kokoro_opt.measure.score import mean
from kokoro_opt.runtime.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from kokoro_opt.measure.executors import Executor

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
MB = 1_000_000
REFERENCE = "fp32"
SIZE_TIE = 0.01
FOLDED = "+fold"


@dataclass(frozen=True)
class Variant:
    """One configuration of the int4 pass, by name."""

    name: str
    settings: dict[str, Any]

    def config(self) -> Any:
        from kokoro_opt.passes.int4 import Config

        return Config(**self.settings)


_ALL = {"conv": True, "lstm": True, "gather": True}
DEFAULT_MATRIX: tuple[Variant, ...] = (
    # MatMul (+ nothing else): what onnxruntime's n-bit quantizer alone can do
    Variant("mm-rtn-b32", {"algo": "rtn", "block_size": 32}),
    Variant("mm-rtn-b128", {"algo": "rtn", "block_size": 128}),
    Variant("mm-gptq-b32", {"algo": "gptq", "block_size": 32}),
    Variant("mm-gptq-b128", {"algo": "gptq", "block_size": 128}),
    # every weight: MatMul, Conv, ConvTranspose, LSTM, embeddings
    Variant("all-rtn-b32", {"algo": "rtn", "block_size": 32, **_ALL}),
    Variant("all-rtn-b64", {"algo": "rtn", "block_size": 64, **_ALL}),
    Variant("all-rtn-b128", {"algo": "rtn", "block_size": 128, **_ALL}),
    Variant("all-hqq-b64", {"algo": "hqq", "block_size": 64, **_ALL}),
    Variant("all-gptq-b32", {"algo": "gptq", "block_size": 32, **_ALL}),
    Variant("all-gptq-b64", {"algo": "gptq", "block_size": 64, **_ALL}),
    Variant("all-gptq-b128", {"algo": "gptq", "block_size": 128, **_ALL}),
)


@dataclass
class TrialSettings:
    """How the trial measures (the same for every model)."""

    sentences: int = 40
    voice: str = "jf_gongitsune"
    lang: str = "en-us"
    timing_texts: int = 3
    timing_rounds: int = 3
    threads: int = 2
    wer: bool = True
    wer_margin: float = 0.02
    size_goal_bytes: int = 50 * MB
    compare: dict[str, Path] = field(default_factory=dict)

    def check(self) -> None:
        if not 1 <= self.sentences <= 80:
            raise UserInputError(
                f"sentences must be 1 to 80 (the held-out split has 80), got {self.sentences}."
            )
        if not 1 <= self.timing_texts <= self.sentences:
            raise UserInputError(
                f"timing_texts must be 1 to sentences ({self.sentences}), got {self.timing_texts}."
            )
        if self.timing_rounds < 1:
            raise UserInputError(f"timing_rounds must be at least 1, got {self.timing_rounds}.")
        if self.threads < 1:
            raise UserInputError(f"threads must be at least 1, got {self.threads}.")
        if not 0 <= self.wer_margin < 1:
            raise UserInputError(
                f"wer_margin is a fraction (0.02 = 2 points), got {self.wer_margin}."
            )

    def key(self) -> dict[str, Any]:
        """What cached measurements depend on."""
        return {
            "sentences": self.sentences,
            "voice": self.voice,
            "lang": self.lang,
            "timing_texts": self.timing_texts,
            "timing_rounds": self.timing_rounds,
            "threads": self.threads,
            "wer": self.wer,
            "asr": _asr_model() if self.wer else None,
        }


def parse_variants(names: Sequence[str] | None) -> tuple[Variant, ...]:
    """Variants of the default matrix by name (all when `names` is empty)."""
    if not names:
        return DEFAULT_MATRIX
    known = {v.name: v for v in DEFAULT_MATRIX}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserInputError(
            f"Unknown trial variant(s): {', '.join(unknown)}. Known: {', '.join(known)}."
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserInputError(
            f"Trial variant(s) listed more than once: {', '.join(twice)}. Name each variant once."
        )
    return tuple(known[n] for n in names)


def check_plan(variants: Sequence[Variant], settings: TrialSettings) -> None:
    """Raise UserInputError for bad settings, repeated variant names, or extra models
    (`settings.compare`) named like the reference or a variant (they would replace it)."""
    settings.check()
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or REFERENCE in names:
        raise UserInputError(f"Trial variant names must be unique and not '{REFERENCE}'.")
    clash = sorted(set(settings.compare) & {REFERENCE, *names})
    if clash:
        raise UserInputError(
            f"--compare name(s) {', '.join(clash)} clash with the reference or a variant; "
            f"choose other names (the reference is '{REFERENCE}'), such as int8=kokoro-int8-export."
        )


def run_trial(
    reference: Path,
    out_dir: Path,
    *,
    variants: Sequence[Variant] = DEFAULT_MATRIX,
    settings: TrialSettings | None = None,
    progress: ProgressCallback | None = None,
    command: list[str] | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Build, measure and compare; writes models/, cache/ and the report into `out_dir`.
    Fidelity runs on `executor` (default: this process); timing always here.

    Returns {"report": Report, "recommendation": dict, "paths": {...}}."""
    settings = settings or TrialSettings()
    check_plan(variants, settings)
    report_progress = progress or (lambda task, done, total: None)
    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "cache").mkdir(parents=True, exist_ok=True)

    built = build_variants(reference, out_dir / "models", variants, settings, report_progress)
    models: dict[str, Path] = {REFERENCE: Path(reference)}
    models.update({name: info["path"] for name, info in built.items()})
    models.update({name: Path(p) for name, p in settings.compare.items()})
    evaluation = evaluate_models(
        models, out_dir / "cache", settings, report_progress, executor=executor
    )
    recommendation = recommend(evaluation, built, settings)
    report = build_report(evaluation, built, recommendation, settings, command)
    from kokoro_opt.report.render import write_report_dir

    paths = write_report_dir(report, out_dir)
    return {"report": report, "recommendation": recommendation, "paths": paths, "built": built}


# -- building ---------------------------------------------------------------------------------


def build_variants(
    reference: Path,
    models_dir: Path,
    variants: Sequence[Variant],
    settings: TrialSettings,
    progress: ProgressCallback,
) -> dict[str, dict[str, Any]]:
    """Each variant's model (reused when an earlier trial built it from the same input with the
    same settings) and its pass details."""
    import onnx

    from kokoro_opt.graph.io import save_model_atomic, sha256_file
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.passes.int4 import Calibration, calibrate, run
    from kokoro_opt.report.files import write_text_atomic

    source_sha = sha256_file(reference)
    model = None
    calibrations: dict[str, Calibration] = {}
    built: dict[str, dict[str, Any]] = {}
    for index, variant in enumerate(variants):
        progress(f"Building {variant.name}", index, len(variants))
        config = variant.config()
        path = models_dir / f"{variant.name}.onnx"
        manifest_path = path.with_suffix(".json")
        settings_json = config.model_dump(mode="json")
        manifest = read_json(manifest_path)
        if (
            path.is_file()
            and manifest
            and manifest.get("input_sha256") == source_sha
            and manifest.get("settings") == settings_json
        ):
            built[variant.name] = {"path": path, "details": manifest["details"], "reused": True}
            continue
        if model is None:
            model = onnx.load(str(reference))
        ctx = PassContext(
            work_dir=models_dir / ".work",
            threads=settings.threads,
            progress=lambda task, done, total, name=variant.name: progress(
                f"{name}: {task}", done, total
            ),
        )
        calibration = None
        if config.algo.value == "gptq":
            key = _calib_key(settings_json)
            if key not in calibrations:
                t0 = time.perf_counter()
                calibrations[key] = calibrate(model, config, ctx)
                calibrations[key].info["calibrate_s"] = round(time.perf_counter() - t0, 1)
            calibration = calibrations[key]
        start = time.perf_counter()
        result = run(model, config, ctx, calibration=calibration)
        save_model_atomic(result.model, path)
        details = result.details
        details["build_s"] = round(time.perf_counter() - start, 1)
        write_text_atomic(
            manifest_path,
            json.dumps(
                {
                    "input": str(reference),
                    "input_sha256": source_sha,
                    "settings": settings_json,
                    "details": details,
                },
                indent=2,
                default=str,
            ),
        )
        built[variant.name] = {"path": path, "details": details, "reused": False}
    progress("Building", len(variants), len(variants))
    return built


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Measured:
    """Everything measured for one model (cached as JSON)."""

    name: str
    path: str
    sha256: str
    size_bytes: int
    quant_style: str
    has_weight_dq: bool
    audio_s: list[float]
    logmel: list[float]
    mcd: list[float]
    duration_ratio: float
    transcripts: list[str]
    wer: float | None
    cer: float | None
    utterance_wer: list[float]
    asr_s: float
    latency_ms: dict[str, list[list[float]]]  # mode -> per timing text -> runs
    reference_latency_ms: dict[str, list[list[float]]]  # FP32, interleaved with each mode
    speedup: dict[str, float]
    nonfinite: int


def evaluate_models(
    models: dict[str, Path],
    cache_dir: Path,
    settings: TrialSettings,
    progress: ProgressCallback,
    *,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Measure every model against the first (the FP32 reference): fidelity on `executor`
    (one task per sentence), speed serially here, interleaved with FP32."""
    import onnx

    from kokoro_opt.graph.io import sha256_file
    from kokoro_opt.measure.executors import Executor
    from kokoro_opt.measure.reference import ReferenceSet, heldout_feeds, speak_model
    from kokoro_opt.runtime.contract import ModelContract

    ref_name, ref_path = next(iter(models.items()))
    contract = ModelContract.from_onnx(onnx.load(str(ref_path), load_external_data=False))
    samples, feeds = heldout_feeds(
        contract, settings.sentences, voice=settings.voice, lang=settings.lang, progress=progress
    )
    order = sorted(range(len(samples)), key=lambda i: samples[i].n_phonemes)
    picks = np.linspace(0, len(order) - 1, settings.timing_texts).round().astype(int)
    timing = [order[i] for i in sorted(set(picks.tolist()))]
    key = json.dumps(settings.key(), sort_keys=True)
    ref_sha = sha256_file(ref_path)
    run = executor or Executor()
    held: list[ReferenceSet] = []  # made the first time a model needs measuring

    def reference() -> ReferenceSet:
        if not held:
            audio = speak_model(ref_path, feeds, threads=settings.threads, executor=run)
            texts = [s.text for s in samples]
            held.append(ReferenceSet(texts, feeds, [s.n_phonemes for s in samples], audio))
        return held[0]

    results: dict[str, Measured] = {}
    try:
        for index, (name, path) in enumerate(models.items()):
            progress(f"Measuring {name}", index, len(models))
            sha = sha256_file(path)
            cache = cache_dir / f"{name}.json"
            cached = read_json(cache)
            record = {"sha256": sha, "reference_sha256": ref_sha, "key": key}
            if cached and all(cached.get(k) == v for k, v in record.items()):
                results[name] = Measured(**cached["measured"])
                continue
            measured = _measure_one(name, path, sha, reference(), settings, run, progress)
            if name != ref_name:
                _time_one(measured, path, ref_path, contract, feeds, timing, settings)
            write_json(cache, {**record, "measured": asdict(measured)})
            results[name] = measured
    finally:
        if executor is None:
            run.close()
    progress("Measuring", len(models), len(models))
    return {
        "reference": ref_name,
        "models": results,
        "texts": [s.text for s in samples],
        "phonemes": [s.n_phonemes for s in samples],
        "timing": timing,
        "timing_host": socket.gethostname(),
    }


def recommend(
    evaluation: dict[str, Any], built: dict[str, dict[str, Any]], settings: TrialSettings
) -> dict[str, Any]:
    """The smallest variant within the WER margin of FP32 (sizes within `SIZE_TIE` of the
    smallest tie; ties go to the lower log-mel distance)."""
    models: dict[str, Measured] = evaluation["models"]
    ref = models[evaluation["reference"]]
    rows = []
    for name in built:
        m = models[name]
        ok = (
            m.wer is not None
            and ref.wer is not None
            and m.wer <= ref.wer + settings.wer_margin + 1e-12
            and m.nonfinite == 0
        )
        rows.append((not ok, m.size_bytes, float(np.mean(m.logmel)), name, ok))
    accepted = [r for r in rows if r[4]]
    chosen = None
    if accepted:
        floor = min(r[1] for r in accepted) * (1 + SIZE_TIE)
        chosen = min((r[2], r[1], r[3]) for r in accepted if r[1] <= floor)[2]
    if not settings.wer:
        chosen = None
    smallest = min(rows, key=lambda r: r[1])[3] if rows else None
    out: dict[str, Any] = {
        "chosen": chosen,
        "accepted": sorted(r[3] for r in accepted),
        "fp32_wer": ref.wer,
        "wer_margin": settings.wer_margin,
        "size_goal_bytes": settings.size_goal_bytes,
        "smallest": smallest,
    }
    if chosen is not None:
        m = models[chosen]
        out.update(
            size_bytes=m.size_bytes,
            wer=m.wer,
            logmel_distance=float(np.mean(m.logmel)),
            meets_size_goal=m.size_bytes < settings.size_goal_bytes,
            speedup=m.speedup,
        )
    return out


# -- the report -------------------------------------------------------------------------------


def build_report(
    evaluation: dict[str, Any],
    built: dict[str, dict[str, Any]],
    recommendation: dict[str, Any],
    settings: TrialSettings,
    command: list[str] | None,
) -> Any:
    """A `kokoro_opt.report` Report: models with quality, per-utterance rows, interleaved speed
    comparisons (runtime and folded), the size/speed/fidelity trade-off and the verdict."""
    from kokoro_opt.quality.asr import MODEL_NAME
    from kokoro_opt.report.meta import collect_run_meta
    from kokoro_opt.report.schema import (
        Comparison,
        QualityMetrics,
        Report,
    )

    models: dict[str, Measured] = evaluation["models"]
    ref_name = evaluation["reference"]
    texts = evaluation["texts"]
    entries, rows, comparisons, steps = [], [], [], []
    for name, m in models.items():
        is_ref = name == ref_name
        quality = QualityMetrics(
            n_utterances=len(texts),
            reference=None if is_ref else ref_name,
            wer=m.wer,
            cer=m.cer,
            logmel_distance=None if is_ref else mean(m.logmel),
            mcd_db=None if is_ref else mean(m.mcd),
            duration_ratio=None if is_ref else m.duration_ratio,
            asr_seconds=m.asr_s if settings.wer else None,
        )
        entries.append(_entry(name, m, quality))
        rows.extend(_utterance_rows(name, m, texts, is_ref))
        for mode, speedup in m.speedup.items():
            entry_name = name if mode == "runtime" else f"{name}{FOLDED}"
            if mode != "runtime":
                entries.append(_entry(entry_name, m))
            comparisons.append(
                Comparison(
                    model=entry_name,
                    reference=ref_name,
                    speedup=speedup,
                    n_texts=len(evaluation["timing"]),
                )
            )
        if name in built:
            accepted = name in recommendation["accepted"] if settings.wer else None
            steps.append(_step(name, m, built[name]["details"], accepted))
    tradeoff = _tradeoff(steps, recommendation, settings)
    run = collect_run_meta(
        provider="cpu",
        threads=settings.threads,
        command=command,
        title="INT4 trial",
        voice=settings.voice,
        lang=settings.lang,
        speed=1.0,
        texts=f"heldout (first {settings.sentences})",
        asr_model=MODEL_NAME if settings.wer else None,
        settings={
            **{k: v for k, v in settings.key().items() if not isinstance(v, dict)},
            "timing_host": evaluation.get("timing_host"),
        },
    )
    return Report(
        run=run,
        models=entries,
        utterances=rows,
        comparisons=comparisons,
        tradeoff=tradeoff,
        notes=verdict_notes(evaluation, recommendation, settings),
    )


def _entry(name: str, m: Measured, quality: Any = None) -> Any:
    from kokoro_opt.report.schema import ModelEntry

    return ModelEntry(
        name=name,
        path=m.path,
        sha256=m.sha256,
        size_bytes=m.size_bytes,
        quant_style=m.quant_style,
        quality=quality,
    )


def _utterance_rows(name: str, m: Measured, texts: list[str], is_ref: bool) -> list[Any]:
    from kokoro_opt.report.schema import UtteranceRow

    return [
        UtteranceRow(
            model=name,
            utterance_id=f"h{i:02d}",
            text=text,
            audio_s=m.audio_s[i],
            wer=m.utterance_wer[i] if m.utterance_wer else None,
            logmel_distance=None if is_ref else m.logmel[i],
            mcd_db=None if is_ref else m.mcd[i],
            transcript=m.transcripts[i] if m.transcripts else None,
        )
        for i, text in enumerate(texts)
    ]


def _step(name: str, m: Measured, details: dict[str, Any], accepted: bool | None) -> Any:
    from kokoro_opt.report.schema import TradeoffStep

    return TradeoffStep(
        name=name,
        speed=max(m.speedup.values()) if m.speedup else 1.0,
        fidelity=mean(m.logmel),
        wer=m.wer,
        logmel_distance=mean(m.logmel),
        size_bytes=m.size_bytes,
        pinned=_kept_families(details),
        accepted=accepted,
    )


def _tradeoff(steps: list[Any], recommendation: dict[str, Any], settings: TrialSettings) -> Any:
    from kokoro_opt.report.schema import Tradeoff

    budget = (
        f"WER within {settings.wer_margin * 100:.0f} points of FP32 "
        f"({_pct(recommendation['fp32_wer'])}); smallest size wins (within "
        f"{SIZE_TIE:.0%}: lower log-mel); goal under "
        f"{settings.size_goal_bytes / MB:.0f} MB"
    )
    return (
        Tradeoff(
            title="INT4 trial: size, speed and fidelity of each config",
            speed_label="speedup vs FP32 (x), best session mode",
            fidelity_label="log-mel distance to FP32 (nepers)",
            budget=budget,
            chosen=recommendation["chosen"],
            steps=steps,
        )
        if steps
        else None
    )


def verdict_notes(
    evaluation: dict[str, Any], recommendation: dict[str, Any], settings: TrialSettings
) -> list[str]:
    """The recommendation and the caveats, in plain words."""
    models: dict[str, Measured] = evaluation["models"]
    ref = models[evaluation["reference"]]
    words = sum(len(t.split()) for t in evaluation["texts"])
    notes = []
    chosen = recommendation["chosen"]
    if not settings.wer:
        notes.append("WER was not measured (--no-wer), so no variant is recommended.")
    elif chosen is None:
        notes.append(
            f"No variant kept WER within {settings.wer_margin * 100:.0f} points of FP32 "
            f"({_pct(ref.wer)}); none is recommended."
        )
    else:
        m = models[chosen]
        goal = "meets" if m.size_bytes < settings.size_goal_bytes else "misses"
        notes.append(
            f"Recommended: {chosen}, {m.size_bytes / MB:.1f} MB ({goal} the "
            f"{settings.size_goal_bytes / MB:.0f} MB goal; FP32 is {ref.size_bytes / MB:.1f} "
            f"MB), WER {_pct(m.wer)} vs FP32 {_pct(ref.wer)}, log-mel distance "
            f"{mean(m.logmel):.3f}. Speed vs FP32: "
            + ", ".join(f"{mode} {v:.2f}x" for mode, v in m.speedup.items())
            + "."
        )
    notes.append(
        f"WER is over {len(evaluation['texts'])} held-out sentences ({words} words); one "
        f"word is {100 / max(words, 1):.2f} points, so differences of a point or two are "
        "within the noise of this ruler."
    )
    dq = [m for name, m in models.items() if m.has_weight_dq and "runtime" in m.speedup]
    if dq:
        runtime = statistics.median(m.speedup["runtime"] for m in dq)
        folded = statistics.median(m.speedup.get("folded", m.speedup["runtime"]) for m in dq)
        notes.append(
            "Conv/LSTM weights stored as int4 DequantizeLinear shrink the file, not the work: "
            "onnxruntime's CPU provider has no 4-bit Conv or LSTM kernel. By default it "
            f"dequantizes on every call ('runtime', median speed {runtime:.2f}x FP32 here); "
            "with session config session.disable_quant_qdq=1 it folds them once at load "
            f"('folded', median {folded:.2f}x, FP32-size weights in memory)."
        )
    return notes


# -- helpers ----------------------------------------------------------------------------------


def _measure_one(
    name: str,
    path: Path,
    sha: str,
    held: Any,
    settings: TrialSettings,
    executor: Executor,
    progress: ProgressCallback,
) -> Measured:
    """Size, style and per-sentence fidelity of one model (speed is filled in by `_time_one`)."""
    import onnx

    from kokoro_opt.graph.inspect import detect_quant_style
    from kokoro_opt.measure.reference import score_model

    proto = onnx.load(str(path), load_external_data=False)
    style, _ = detect_quant_style(proto)
    has_dq = _has_weight_dq(proto)
    del proto
    scores = score_model(
        path, held, threads=settings.threads, asr=settings.wer, full=True, executor=executor,
        progress=progress, label=f"Measuring {name} on {executor.describe()}",
    )  # fmt: skip
    wer = cer = None
    utterance_wer: list[float] = []
    transcripts = [s.transcript or "" for s in scores] if settings.wer else []
    if settings.wer:
        from kokoro_opt.quality.wer import error_rates

        rates = error_rates(held.texts, transcripts)
        wer, cer = rates.wer, rates.cer
        utterance_wer = [u.wer for u in rates.utterances]
    total = sum(s.audio_s for s in scores)
    ref_total = sum(len(a) for a in held.ref_audio) / SAMPLE_RATE
    return Measured(
        name=name,
        path=str(path),
        sha256=sha,
        size_bytes=Path(path).stat().st_size,
        quant_style=style,
        has_weight_dq=has_dq,
        audio_s=[s.audio_s for s in scores],
        logmel=[float(s.logmel if s.logmel is not None else math.inf) for s in scores],
        mcd=[float(s.mcd if s.mcd is not None else math.inf) for s in scores],
        duration_ratio=total / ref_total if ref_total else 1.0,
        transcripts=transcripts,
        wer=wer,
        cer=cer,
        utterance_wer=utterance_wer,
        asr_s=round(sum(s.asr_s for s in scores), 3),
        latency_ms={},
        reference_latency_ms={},
        speedup={},
        nonfinite=sum(s.nonfinite for s in scores),
    )


def _time_one(
    measured: Measured,
    path: Path,
    ref_path: Path,
    contract: Any,
    feeds: Sequence[dict[str, Any]],
    timing: Sequence[int],
    settings: TrialSettings,
) -> None:
    """Speed against FP32, serially in this process: the runtime session, and the folded one
    when the model has int4 weight DequantizeLinear nodes."""
    ref_session = _session(ref_path, settings.threads)
    modes = {"runtime": _session(path, settings.threads)}
    if measured.has_weight_dq:
        from kokoro_opt.passes.int4 import FOLD_SESSION_CONFIG

        modes["folded"] = _session(path, settings.threads, FOLD_SESSION_CONFIG)
    for mode, sess in modes.items():
        lat, ref_lat = _interleaved(sess, ref_session, contract, feeds, timing, settings)
        measured.latency_ms[mode] = lat
        measured.reference_latency_ms[mode] = ref_lat
        measured.speedup[mode] = _speedup(ref_lat, lat)


def _interleaved(
    session: Any,
    ref_session: Any,
    contract: Any,
    feeds: Sequence[dict[str, Any]],
    timing: Sequence[int],
    settings: TrialSettings,
) -> tuple[list[list[float]], list[list[float]]]:
    """Latencies (ms) of the model and FP32 per timing text, runs interleaved A B B A."""
    model_ms: list[list[float]] = [[] for _ in timing]
    ref_ms: list[list[float]] = [[] for _ in timing]
    for i in timing:  # warm-up, not measured
        _infer(session, contract, feeds[i])
        _infer(ref_session, contract, feeds[i])
    for r in range(settings.timing_rounds):
        order = (ref_session, session) if r % 2 == 0 else (session, ref_session)
        for j, i in enumerate(timing):
            for sess in order:
                start = time.perf_counter()
                _infer(sess, contract, feeds[i])
                ms = (time.perf_counter() - start) * 1e3
                (ref_ms if sess is ref_session else model_ms)[j].append(round(ms, 2))
    return model_ms, ref_ms


def _speedup(ref_ms: list[list[float]], model_ms: list[list[float]]) -> float:
    ratios = [
        statistics.median(r) / statistics.median(m)
        for r, m in zip(ref_ms, model_ms, strict=True)
        if r and m
    ]
    return float(math.exp(np.mean(np.log(ratios)))) if ratios else 1.0


def _session(path: Path, threads: int, config: dict[str, str] | None = None) -> Any:
    import onnxruntime as ort

    from kokoro_opt.runtime.session import session_options

    opts = session_options(threads)
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _infer(session: Any, contract: Any, feed: dict[str, Any]) -> np.ndarray:
    (audio,) = session.run([contract.audio], feed)
    return np.asarray(audio, dtype=np.float32).reshape(-1)


def _has_weight_dq(model: Any) -> bool:
    import onnx

    int4 = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    kinds = {t.name: t.data_type for t in model.graph.initializer}
    return any(
        n.op_type == "DequantizeLinear" and kinds.get(n.input[0]) in int4 for n in model.graph.node
    )


def _kept_families(details: dict[str, Any]) -> list[str]:
    settings = details.get("settings", {})
    return [
        family
        for family, key in (("Conv", "conv"), ("LSTM", "lstm"), ("Gather", "gather"))
        if not settings.get(key)
    ]


def _calib_key(settings: dict[str, Any]) -> str:
    fields = (
        "calib",
        "samples",
        "voices",
        "speeds",
        "lang",
        "seed",
        "max_positions",
        "min_elements",
    )
    picked = {k: settings.get(k) for k in fields}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def _asr_model() -> str:
    """The ASR that measured cached WERs: a new ruler invalidates them."""
    from kokoro_opt.quality.asr import MODEL_NAME

    return MODEL_NAME


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"
