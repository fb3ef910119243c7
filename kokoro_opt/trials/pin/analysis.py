"""Sensitivity analysis: which layer groups INT8 damages, and what each costs in time.

For each layer group, the log-mel distance to the FP32 audio (after DTW alignment, on held-out
sentences) when that group ALONE is quantized (everything else float); optionally also the
distance when every group BUT it is quantized (how much keeping it float removes); the
per-tensor float-vs-QDQ error of onnxruntime's `qdq_loss_debug` (weight SQNR, and activation
SQNR of the QDQ pairs on one sentence) in the fully quantized model; and each group's share of
the FP32 run time from ORT's profiler. Variants are built here; their sentences are measured
on the executor given (`kokoro_opt.measure.executors`).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kokoro_opt.measure.reference import reference_set
from kokoro_opt.measure.score import mean
from kokoro_opt.trials.pin.prepare import (
    Prepared,
    ProgressCallback,
    build_variant,
    measure_variant,
    no_progress,
)

if TYPE_CHECKING:
    from kokoro_opt.measure.executors import Executor

EPS_SHARE = 1e-4


@dataclass
class GroupSensitivity:
    """What one group costs in fidelity when quantized and in time when kept float."""

    group: str
    nodes: int
    ops: dict[str, int]
    time_share: float
    logmel_alone: float
    logmel_all_but: float | None = None
    weight_sqnr_db: float | None = None
    activation_sqnr_db: float | None = None
    per_sentence: list[float] = field(default_factory=list)

    @property
    def sensitivity_per_time(self) -> float:
        return self.logmel_alone / max(self.time_share, EPS_SHARE)


def analyze(
    prepared: Prepared,
    *,
    sentences: int = 4,
    voice: str = "jf_gongitsune",
    lang: str = "en-us",
    all_but: bool = False,
    qdq_debug: bool = True,
    groups: Sequence[str] | None = None,
    executor: Executor | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Per-group sensitivity, per-tensor QDQ error and time share, ranked (most sensitive
    first). See the module docstring."""
    report = progress or no_progress
    start = time.perf_counter()
    names = list(groups) if groups else list(prepared.groups)
    held = reference_set(
        prepared, sentences, voice=voice, lang=lang, executor=executor, progress=report
    )
    shares, op_shares = time_shares(prepared, held.feeds[:1], report)

    def logmel(quantized: list[str], path: Path) -> list[float]:
        build_variant(prepared, quantized, path)
        dists, _ = measure_variant(prepared, path, held, executor=executor)
        path.unlink(missing_ok=True)
        return dists

    rows: list[GroupSensitivity] = []
    full_logmel = None
    with tempfile.TemporaryDirectory(prefix="kokoro-opt-pin-") as tmp:
        work = Path(tmp)
        for done, group in enumerate(names):
            report("Quantizing one group at a time", done, len(names))
            dists = logmel([group], work / f"alone-{done}.onnx")
            row = GroupSensitivity(
                group=group,
                nodes=len(prepared.groups[group]),
                ops=prepared.group_ops[group],
                time_share=shares.get(group, 0.0),
                logmel_alone=mean(dists),
                per_sentence=[round(d, 4) for d in dists],
            )
            if all_but:
                others = [g for g in prepared.groups if g != group]
                row.logmel_all_but = mean(logmel(others, work / f"all-but-{done}.onnx"))
            rows.append(row)
        report("Quantizing one group at a time", len(names), len(names))
        if qdq_debug:
            full_logmel = _qdq_columns(prepared, held, rows, work, executor, report)
    rows.sort(key=lambda r: (-r.logmel_alone, r.group))
    return {
        "model": str(prepared.model_path),
        "model_sha256": prepared.sha256,
        "sentences": len(held.texts),
        "texts": held.texts,
        "voice": voice,
        "calibration": {
            "ranges": str(prepared.ranges_path),
            "ranges_sha256": prepared.ranges_sha256(),
            "reused": prepared.ranges_reused,
            "method": prepared.config.method,
            "samples": prepared.config.samples,
            "corpus": prepared.config.calib,
        },
        "all_quantized_logmel": full_logmel,
        "time_share_by_op": op_shares,
        "groups": [
            {**asdict(r), "sensitivity_per_time": round(r.sensitivity_per_time, 4)} for r in rows
        ],
        "elapsed_s": round(time.perf_counter() - start, 1),
    }


def _qdq_columns(
    prepared: Prepared,
    held: Any,
    rows: list[GroupSensitivity],
    work: Path,
    executor: Executor | None,
    report: ProgressCallback,
) -> float:
    """Fill each row's weight and activation SQNR from the fully quantized model; return that
    model's mean log-mel distance to FP32."""
    full_path = build_variant(prepared, list(prepared.groups), work / "all.onnx")
    dists, _ = measure_variant(prepared, full_path, held, executor=executor)
    report("Per-tensor QDQ error", 0, 1)
    weight, act = qdq_errors(prepared, full_path, held.feeds[:1], work)
    report("Per-tensor QDQ error", 1, 1)
    for row in rows:
        row.weight_sqnr_db = weight.get(row.group)
        row.activation_sqnr_db = act.get(row.group)
    return mean(dists)


def time_shares(
    prepared: Prepared, feeds: Sequence[dict[str, Any]], progress: ProgressCallback
) -> tuple[dict[str, float], dict[str, float]]:
    """Each group's share of the FP32 model's node time (its quantizable nodes, ORT profiler,
    after one warm-up run), and the share of each op type."""
    import onnxruntime as ort

    from kokoro_opt.runtime.session import session_options

    progress("Profiling FP32", 0, 1)
    with tempfile.TemporaryDirectory(prefix="kokoro-opt-prof-") as tmp:
        opts = session_options(prepared.threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "pin")
        session = ort.InferenceSession(
            str(prepared.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        for feed in feeds:
            session.run(None, feed)
        for feed in feeds:
            session.run(None, feed)
        profile = Path(session.end_profiling())
        events = json.loads(profile.read_text())
    by_node: dict[str, float] = {}
    by_op: dict[str, float] = {}
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start_us = runs[len(feeds)]["ts"] if len(runs) > len(feeds) else 0
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if e.get("ts", 0) < start_us:
            continue
        name = e["name"][: -len("_kernel_time")]
        by_node[name] = by_node.get(name, 0.0) + float(e.get("dur", 0))
        op = str(e.get("args", {}).get("op_name", "?"))
        by_op[op] = by_op.get(op, 0.0) + float(e.get("dur", 0))
    total = sum(by_node.values()) or 1.0
    shares = {
        g: sum(by_node.get(n, 0.0) for n in names) / total for g, names in prepared.groups.items()
    }
    progress("Profiling FP32", 1, 1)
    top = dict(sorted(((k, v / total) for k, v in by_op.items()), key=lambda kv: -kv[1])[:12])
    return shares, {k: round(v, 4) for k, v in top.items()}


def qdq_errors(
    prepared: Prepared, qdq_path: Path, feeds: Sequence[dict[str, Any]], work: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Worst weight SQNR (dB) and worst activation QDQ SQNR (dB) per group, from
    onnxruntime.quantization.qdq_loss_debug on the fully quantized model."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    from kokoro_opt.calib.feeds import FeedReader
    from kokoro_opt.passes.quantize_static import _quiet

    with _quiet():
        weights = dbg.compute_weight_error(
            dbg.create_weight_matching(str(prepared.model_path), str(qdq_path))
        )
    model = onnx.load(str(qdq_path), load_external_data=False)
    groups_of_node = {n: g for g, names in prepared.groups.items() for n in names}
    by_weight: dict[str, set[str]] = {}
    by_act: dict[str, set[str]] = {}
    dq_source: dict[str, str] = {}
    q_source: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            dq_source[node.output[0]] = node.input[0]
        if node.op_type == "QuantizeLinear":
            q_source[node.output[0]] = node.input[0]
    for node in model.graph.node:
        group = groups_of_node.get(node.name)
        if group is None:
            continue
        for index, tensor in enumerate(node.input[:2]):
            source = dq_source.get(tensor)
            if source is None:
                continue
            if index == 1:  # a weight: its initializer is the float name + "_quantized"
                by_weight.setdefault(source.removesuffix("_quantized"), set()).add(group)
            else:
                by_act.setdefault(q_source.get(source, source), set()).add(group)
        for out in node.output:
            by_act.setdefault(out, set()).add(group)
    weight_worst: dict[str, float] = {}
    for name, sqnr in weights.items():
        for g in by_weight.get(name, ()):
            weight_worst[g] = min(weight_worst.get(g, math.inf), float(sqnr))
    aug = work / "qdq-augmented.onnx"
    with _quiet():
        dbg.modify_model_output_intermediate_tensors(
            str(qdq_path), str(aug), op_types_for_saving=["QuantizeLinear", "DequantizeLinear"]
        )
        acts = dbg.collect_activations(str(aug), FeedReader(list(feeds)))
        matched = dbg.create_activation_matching(acts)
    aug.unlink(missing_ok=True)
    act_worst: dict[str, float] = {}
    for tensor, pair in matched.items():
        pre, post = pair.get("pre_qdq"), pair.get("post_qdq")
        if pre is None or post is None:
            continue
        # The float model's activations have other shapes once durations change, so only
        # the QDQ error of each pair (qdq_loss_debug's "qdq_err") is computed.
        value = float(dbg.compute_signal_to_quantization_noice_ratio(pre, post))
        if not math.isfinite(value):
            continue
        for g in by_act.get(tensor, ()):
            act_worst[g] = min(act_worst.get(g, math.inf), float(value))
    return (
        {g: round(v, 2) for g, v in weight_worst.items()},
        {g: round(v, 2) for g, v in act_worst.items()},
    )
