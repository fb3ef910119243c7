"""Turn bench and eval results into `kokoro_opt.report` objects, and merge them into a run folder.

    entry = describe_model("kokoro-fp32", path)              # sha256, size, quant style
    report = eval_report(result, entries, meta, run_dir=run)  # or bench_report(...)
    report = merge_with_existing(report, run)                 # keep what an earlier run wrote

Utterance ids are derived from the text (`utterance_ids`), so an eval and a bench over the same
sentences fill the same rows, and different sentences never collide.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kokoro_opt.report.schema import (
    REPORT_FILE,
    Comparison,
    ConcurrencyStats,
    ModelEntry,
    QualityMetrics,
    Report,
    RunMeta,
    SpeedMetrics,
    UtteranceRow,
)

if TYPE_CHECKING:
    from kokoro_opt.bench.evaluate import EvalResult
    from kokoro_opt.bench.harness import BenchConfig, ModelBench


def utterance_ids(texts: Sequence[str]) -> list[str]:
    """Ids that follow the text, not its position: 't<8 hex of sha1(text)>', with '-2', '-3'
    for repeats of the same text. An eval and a bench over overlapping corpora so share rows."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for text in texts:
        base = "t" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def describe_model(name: str, path: Path) -> ModelEntry:
    """A model entry without metrics: name, path, sha256, size on disk (with external data),
    quantization style. Raises ModelNotFoundError / ModelFormatError for a bad file."""
    import onnx

    from kokoro_opt.graph.inspect import detect_quant_style
    from kokoro_opt.graph.io import load_model, sha256_file

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        load_model(path)  # raises the one-line error for a missing, corrupt or truncated file
        raise
    size = path.stat().st_size
    locations = {
        item.value
        for tensor in proto.graph.initializer
        for item in tensor.external_data
        if item.key == "location"
    }
    for location in sorted(locations):
        data = path.parent / location
        if not data.is_file():
            load_model(path)  # names the missing external-data file
        size += data.stat().st_size
    style, _ = detect_quant_style(proto)
    return ModelEntry(
        name=name,
        path=str(path),
        sha256=sha256_file(path),
        size_bytes=size,
        quant_style=style,
    )


def eval_report(
    result: EvalResult,
    entries: Sequence[ModelEntry],
    meta: RunMeta,
    *,
    run_dir: Path | None = None,
) -> Report:
    """A report of an eval: the reference model first, quality metrics, per-utterance rows."""
    by_name = {e.name: e for e in entries}
    ordered = sorted(result.models, key=lambda m: not m.is_reference)
    ids = utterance_ids(result.texts)
    models: list[ModelEntry] = []
    rows: list[UtteranceRow] = []
    for m in ordered:
        quality = QualityMetrics(**m.summary())
        models.append(by_name[m.name].model_copy(update={"quality": quality}))
        for i, (text, uid) in enumerate(zip(result.texts, ids, strict=True)):
            dist = m.distances[i] if m.distances else None
            utt_errors = m.errors.utterances[i] if m.errors else None
            wav = m.wavs[i] if i < len(m.wavs) else None
            rows.append(
                UtteranceRow(
                    model=m.name,
                    utterance_id=uid,
                    text=text,
                    audio_s=m.audio_s[i],
                    wer=utt_errors.wer if utt_errors else None,
                    cer=utt_errors.cer if utt_errors else None,
                    logmel_distance=dist.logmel_distance if dist else None,
                    mcd_db=dist.mcd_db if dist else None,
                    duration_ratio=dist.duration_ratio if dist else None,
                    transcript=m.transcripts[i] if m.transcripts is not None else None,
                    wav=_relative(wav, run_dir),
                )
            )
    notes = []
    if result.asr is not None:
        a = result.asr
        speed = f"{a.audio_s_per_s:.1f}" if a.audio_s_per_s else "n/a"
        notes.append(
            f"ASR {a.model}: loaded in {a.load_s:.2f} s; transcribed {a.audio_s:.1f} s of audio "
            f"in {a.asr_s:.1f} s ({speed} s of audio per second, {a.threads} threads)."
        )
    for m in ordered:
        if any(m.nonfinite):
            notes.append(f"{m.name} produced {sum(m.nonfinite)} NaN/inf samples (set to 0).")
    return Report(run=meta, models=models, utterances=rows, notes=notes)


def bench_report(
    results: Sequence[ModelBench],
    speedups: Sequence[float | None],
    entries: Sequence[ModelEntry],
    meta: RunMeta,
    config: BenchConfig,
) -> Report:
    """A report of a bench: speed metrics, per-utterance latencies, speedups vs the first."""
    by_name = {e.name: e for e in entries}
    models: list[ModelEntry] = []
    rows: list[UtteranceRow] = []
    comparisons: list[Comparison] = []
    base = results[0].model.name
    for res, ratio in zip(results, speedups, strict=True):
        concurrency = ConcurrencyStats(**res.concurrency) if res.concurrency else None
        speed = SpeedMetrics(
            **res.summary(), runs=config.runs, warmup=config.warmup, concurrency=concurrency
        )
        models.append(by_name[res.model.name].model_copy(update={"speed": speed}))
        ids = utterance_ids([u.text for u in res.utterances])
        for utt, uid in zip(res.utterances, ids, strict=True):
            rows.append(
                UtteranceRow(
                    model=res.model.name,
                    utterance_id=uid,
                    text=utt.text,
                    audio_s=utt.audio_s,
                    latency_ms=list(utt.latency_ms),
                    ttfa_ms=statistics.median(utt.ttfa_ms) if utt.ttfa_ms else None,
                )
            )
        if res.model.name != base and ratio is not None:
            comparisons.append(
                Comparison(
                    model=res.model.name,
                    reference=base,
                    speedup=ratio,
                    interleaved=True,
                    n_texts=len(res.utterances),
                )
            )
    return Report(run=meta, models=models, utterances=rows, comparisons=comparisons)


def existing_report(run_dir: Path) -> Report | None:
    """The report.json already in `run_dir` (validated), or None when there is none."""
    from kokoro_opt.report.schema import load_report

    path = run_dir / REPORT_FILE
    return load_report(path, role="existing report") if path.exists() else None


def check_mergeable(run_dir: Path, entries: Sequence[ModelEntry]) -> None:
    """Fail before any work when `run_dir` holds a report whose same-named models are other
    files (a merge would be refused at the end)."""
    from kokoro_opt.errors import ReportError

    old = existing_report(run_dir)
    if old is None:
        return
    known = {m.name: m.sha256 for m in old.models}
    for entry in entries:
        sha = known.get(entry.name)
        if sha is not None and sha != entry.sha256:
            raise ReportError(
                f"{run_dir / REPORT_FILE} already has a model '{entry.name}' that is another "
                f"file (sha256 {sha[:12]}... vs {entry.sha256[:12]}...); write this run to "
                "another --out folder, or remove the old report."
            )


def merge_with_existing(report: Report, run_dir: Path) -> Report:
    """`report` merged into the report.json in `run_dir` when there is one (newer values win)."""
    from kokoro_opt.report.meta import merge_reports

    old = existing_report(run_dir)
    return report if old is None else merge_reports(old, report)


def _relative(path: Path | None, run_dir: Path | None) -> str | None:
    if path is None:
        return None
    if run_dir is not None:
        try:
            return path.resolve().relative_to(run_dir.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)
