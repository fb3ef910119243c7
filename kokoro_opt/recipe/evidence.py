"""The evidence steps: `eval` and `bench` of the current model against the reference.

Both call the library functions `kokoro-opt eval` and `kokoro-opt bench` call
(`kokoro_opt.bench.evaluate.evaluate`, `kokoro_opt.bench.harness.run_bench`, and
`kokoro_opt.bench.reports` to turn results into a report), and write `report.json` into the
step's folder (eval also its WAVs under `wav/`). The runner merges every evidence report of a
run into the run folder's report, which the gate step checks. The reference is always the first
model (the one `speedup` and `against: reference` rules compare with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kokoro_opt.recipe.steps import StepInput, StepOutput

TEXT_SPLITS = ("smoke", "heldout", "train")


class _TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    texts: str = "heldout"
    """A built-in split (smoke: 6 sentences, heldout: 80, train) or a text/table file."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N sentences."""
    voice: str = "jf_gongitsune"
    speed: float = Field(default=1.0, ge=0.5, le=2.0)
    lang: str = "en-us"
    provider: Literal["cpu", "cuda", "coreml"] = "cpu"

    @field_validator("speed", mode="before")
    @classmethod
    def _int_speed(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("voice")
    @classmethod
    def _known_voice(cls, value: str) -> str:
        from kokoro_opt.errors import VoiceError
        from kokoro_opt.runtime.voices import VoiceLibrary

        try:
            VoiceLibrary.default().validate(value)
        except VoiceError as exc:
            raise ValueError(str(exc).rstrip(".")) from None
        return value

    def missing_file(self) -> tuple[str, str] | None:
        if self.texts in TEXT_SPLITS or Path(self.texts).expanduser().is_file():
            return None
        return "texts", (
            f"{self.texts!r} is neither a built-in split ({', '.join(TEXT_SPLITS)}) nor an "
            "existing file; give one of those or a .txt file with one sentence per line "
            "(relative to the recipe)"
        )

    def load_texts(self) -> list[str]:
        from kokoro_opt.calib.corpus import load_texts

        texts = load_texts(self.texts)
        return texts[: self.limit] if self.limit else texts

    def texts_label(self) -> str:
        return self.texts if self.limit is None else f"{self.texts} (first {self.limit})"


class EvalOptions(_TextOptions):
    """`eval` options (as `kokoro-opt eval`)."""

    asr: bool = True
    """Transcribe with the offline ASR for WER/CER."""
    f0: bool = True
    """Also measure pitch error (YIN)."""
    keep_wavs: bool = True
    """Keep every rendering as a WAV in the step folder."""


class BenchOptions(_TextOptions):
    """`bench` options (as `kokoro-opt bench`)."""

    texts: str = "smoke"
    runs: int = Field(default=5, ge=1)
    warmup: int = Field(default=1, ge=0)
    concurrency: int = Field(default=1, ge=1)
    memory: bool = True
    """Measure each model's peak RSS in a fresh child process."""


def run_eval(inp: StepInput) -> StepOutput:
    """Fidelity of the current model against the reference (same phonemes, voice, speed)."""
    from kokoro_opt.bench.evaluate import EvalConfig, evaluate
    from kokoro_opt.bench.reports import eval_report
    from kokoro_opt.quality.asr import MODEL_NAME
    from kokoro_opt.report.meta import collect_run_meta
    from kokoro_opt.report.schema import save_report

    options: EvalOptions = inp.step.config  # type: ignore[assignment]
    models, entries = _models(inp)
    texts = options.load_texts()
    wav_dir = inp.staging / "wav" if options.keep_wavs else None
    config = EvalConfig(
        texts=texts,
        reference=models[0].name,
        voice=options.voice,
        speed=options.speed,
        lang=options.lang,
        provider=options.provider,
        threads=inp.ctx.threads,
        asr=options.asr,
        asr_threads=inp.ctx.threads or 2,
        f0=options.f0,
        wav_dir=wav_dir,
    )
    from kokoro_opt.measure.executors import parse_executor

    with parse_executor(inp.recipe.executor) as executor:
        where = executor.describe()
        result = evaluate(models, config, executor=executor, progress=inp.ctx.progress)
    meta = collect_run_meta(
        provider=options.provider,
        threads=inp.ctx.threads,
        command=["kokoro-opt", "run", str(inp.recipe.path), f"({inp.step.id})"],
        title=f"eval: {models[-1].name} vs {models[0].name}",
        voice=options.voice,
        lang=options.lang,
        speed=options.speed,
        texts=options.texts_label(),
        asr_model=MODEL_NAME if options.asr else None,
        settings={
            "recipe": inp.recipe.name,
            "step": inp.step.id,
            "f0": options.f0,
            "executor": where,
        },
    )
    report = eval_report(result, entries, meta, run_dir=inp.staging)
    save_report(report, inp.staging)
    cand = report.model(models[-1].name).quality
    summary: dict[str, Any] = {"texts": len(texts)}
    if cand is not None:
        summary.update(
            wer=cand.wer,
            logmel_distance=cand.logmel_distance,
            duration_ratio=cand.duration_ratio,
        )
    ref_q = report.model(models[0].name).quality
    if ref_q is not None:
        summary["reference_wer"] = ref_q.wer
    summary["text"] = _eval_text(summary)
    return StepOutput(report="report.json", summary=summary)


def run_bench(inp: StepInput) -> StepOutput:
    """Speed of the current model against the reference, interleaved A B A B."""
    from kokoro_opt.bench.harness import BenchConfig, speedups
    from kokoro_opt.bench.harness import run_bench as measure
    from kokoro_opt.bench.reports import bench_report
    from kokoro_opt.report.meta import collect_run_meta
    from kokoro_opt.report.schema import save_report

    options: BenchOptions = inp.step.config  # type: ignore[assignment]
    models, entries = _models(inp)
    texts = options.load_texts()
    config = BenchConfig(
        texts=texts,
        voice=options.voice,
        speed=options.speed,
        lang=options.lang,
        provider=options.provider,
        threads=inp.ctx.threads,
        runs=options.runs,
        warmup=options.warmup,
        concurrency=options.concurrency,
        measure_memory=options.memory,
    )
    results = measure(models, config, progress=inp.ctx.progress)
    ratios = speedups(results)
    meta = collect_run_meta(
        provider=options.provider,
        threads=inp.ctx.threads,
        command=["kokoro-opt", "run", str(inp.recipe.path), f"({inp.step.id})"],
        title=f"bench: {models[-1].name} vs {models[0].name}",
        voice=options.voice,
        lang=options.lang,
        speed=options.speed,
        texts=options.texts_label(),
        settings={"recipe": inp.recipe.name, "step": inp.step.id, "runs": options.runs},
    )
    report = bench_report(results, ratios, entries, meta, config)
    save_report(report, inp.staging)
    summary: dict[str, Any] = {"texts": len(texts), "runs": options.runs}
    comparison = report.comparison(models[-1].name, models[0].name)
    if comparison is not None:
        summary["speedup"] = comparison.speedup
    speed = report.model(models[-1].name).speed
    if speed is not None:
        summary["rtf_median"] = speed.rtf.median
    parts = [f"{len(texts)} texts x {options.runs} runs"]
    if "speedup" in summary:
        parts.append(f"speedup {summary['speedup']:.2f}x vs {models[0].name}")
    if "rtf_median" in summary:
        parts.append(f"RTF {summary['rtf_median']:.3f}")
    summary["text"] = ", ".join(parts)
    return StepOutput(report="report.json", summary=summary)


# --------------------------------------------------------------------------- helpers


def _models(inp: StepInput) -> tuple[list[Any], list[Any]]:
    """[reference, candidate] as bench models and report entries (one when they are the same)."""
    from kokoro_opt.bench.harness import BenchModel
    from kokoro_opt.bench.reports import describe_model

    if inp.model is None or inp.reference is None:
        raise RuntimeError("an evidence step ran without its models")
    ref = BenchModel(inp.names["reference"], inp.reference.path)
    models = [ref]
    if inp.model.sha256 != inp.reference.sha256:
        models.append(BenchModel(inp.names["candidate"], inp.model.path))
    entries = [describe_model(m.name, m.path) for m in models]
    return models, entries


def _eval_text(summary: dict[str, Any]) -> str:
    parts = [f"{summary['texts']} texts"]
    if summary.get("wer") is not None:
        ref = summary.get("reference_wer")
        parts.append(
            f"WER {summary['wer'] * 100:.1f} %"
            + (f" (reference {ref * 100:.1f} %)" if ref is not None else "")
        )
    if summary.get("logmel_distance") is not None:
        parts.append(f"log-mel {summary['logmel_distance']:.3f}")
    return ", ".join(parts)
