"""The pinning search's report: report.json/md/html with the FP32 and chosen models, the
interleaved speed comparison and the trade-off curve (one point per verified step)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kokoro_opt.trials.pin.prepare import Prepared
from kokoro_opt.trials.pin.search import SearchResult, Step


def write_search_report(
    result: SearchResult, prepared: Prepared, out_dir: Path, *, command: list[str] | None
) -> dict[str, Path]:
    """Write the report files into `out_dir`; returns their paths by name."""
    from kokoro_opt.quality.asr import MODEL_NAME
    from kokoro_opt.report.meta import collect_run_meta
    from kokoro_opt.report.render import write_report_dir
    from kokoro_opt.report.schema import Comparison, Report, Tradeoff, TradeoffStep

    entries = _entries(result, prepared)
    comparisons = []
    if result.chosen is not None:
        comparisons.append(
            Comparison(
                model="pinned",
                reference="fp32",
                speedup=result.final_speed["speedup"],
                n_texts=result.final_speed["texts"],
            )
        )
    tradeoff = Tradeoff(
        title="Pinning search: speed and fidelity of each verified step",
        speed_label="speedup vs FP32 (x), interleaved",
        fidelity_label="log-mel distance to FP32 (nepers)",
        budget=result.budget_text,
        chosen=_label(result.chosen) if result.chosen else None,
        steps=[
            TradeoffStep(
                name=_label(step),
                speed=max(step.speedup, 1e-6),
                fidelity=_finite(step.logmel),
                wer=step.wer,
                logmel_distance=_finite(step.logmel),
                pinned=step.pinned,
                accepted=step.meets,
            )
            for step in result.steps
        ],
    )
    run = collect_run_meta(
        provider="cpu",
        threads=prepared.threads,
        command=command,
        title="Pinning search",
        voice=result.voice,
        lang="en-us",
        speed=1.0,
        texts=f"heldout (first {result.sentences})",
        asr_model=MODEL_NAME if result.fp32_wer is not None else None,
    )
    report = Report(
        run=run, models=entries, comparisons=comparisons, tradeoff=tradeoff, notes=_notes(result)
    )
    return write_report_dir(report, out_dir)


def _entries(result: SearchResult, prepared: Prepared) -> list[Any]:
    """The FP32 model and (when one met the budget) the chosen one, with their quality on the
    largest set the chosen one was checked on."""
    import onnx

    from kokoro_opt.graph.inspect import detect_quant_style
    from kokoro_opt.graph.io import sha256_file
    from kokoro_opt.report.schema import ModelEntry, QualityMetrics

    n = result.sentences
    fp32 = ModelEntry(
        name="fp32",
        path=str(prepared.model_path),
        sha256=prepared.sha256,
        size_bytes=prepared.model_path.stat().st_size,
        quant_style="float",
        quality=QualityMetrics(n_utterances=n, wer=result.fp32_wer),
    )
    step = result.chosen
    if step is None or result.output is None:
        return [fp32]
    path = Path(result.output)
    style, _ = detect_quant_style(onnx.load(str(path), load_external_data=False))
    checked = step.confirmation or {"sentences": n, "wer": step.wer, "logmel": step.logmel}
    if checked["sentences"] != n and result.confirm is not None:
        fp32.quality = QualityMetrics(
            n_utterances=checked["sentences"], wer=result.confirm["fp32_wer"]
        )
    pinned = ModelEntry(
        name="pinned",
        path=str(path),
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        quant_style=style,
        quality=QualityMetrics(
            n_utterances=checked["sentences"],
            reference="fp32",
            wer=checked["wer"],
            logmel_distance=checked["logmel"],
        ),
    )
    return [fp32, pinned]


def _notes(result: SearchResult) -> list[str]:
    notes = []
    chosen = result.chosen
    if chosen is None:
        notes.append(f"No step met the budget ({result.budget_text}).")
    else:
        final = result.final_speed
        notes.append(
            f"Chosen: pin {', '.join(chosen.pinned) or 'nothing'}; "
            f"{final['speedup']:.2f}x FP32 ({final['pinned_median_ms']:.0f} vs "
            f"{final['fp32_median_ms']:.0f} ms, interleaved, {final['runs']} runs, "
            f"{final['texts']} text, timed on {final.get('host', 'this machine')})."
        )
    notes.append(
        "Order tried: groups by log-mel distance when quantized alone per unit of FP32 time "
        "share; every step built from one calibration and verified end to end."
    )
    if result.confirm is not None:
        checked = "; ".join(
            f"{s.name} log-mel {s.confirmation['logmel']:.3f}"
            + (
                ""
                if s.confirmation["wer"] is None
                else f", WER {s.confirmation['wer'] * 100:.1f} %"
            )
            + (" holds" if s.confirmation["meets"] else " fails")
            for s in result.steps
            if s.confirmation
        )
        notes.append(
            f"The curve is measured on the first {result.sentences} held-out sentences; a step "
            f"that met the budget there was checked again on {result.confirm['sentences']} "
            f"({result.confirm['budget_text']}): {checked}."
        )
    return notes


def _label(step: Step) -> str:
    return f"{step.name}: {step.action}"


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e3
