"""Interleaved A/B latency of model files on fixed inputs, for graph-level comparisons.

`run_bench` (harness.py) measures the whole runtime from text; this measures only the ONNX
session on prepared feeds, which is what a graph rewrite changes. All sessions live in one
process and every round runs each model once on each feed, alternating the order (A B C, then
C B A) so that load from other processes on a shared machine hits every model alike. We report
the median and the minimum per model, and the median of the per-round ratios to the first
model ("paired ratio"), which is the number to trust on a busy machine; the same for the
process CPU time (all ORT threads, spin-waiting included) as a second opinion.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kokoro_opt.errors import UserInputError

ProgressCallback = Callable[[str, int, int], None]


def ab_latency(
    models: Mapping[str, str | Path | bytes],
    feeds: Sequence[dict[str, np.ndarray]] | Mapping[str, Sequence[dict[str, np.ndarray]]],
    *,
    runs: int = 5,
    warmup: int = 1,
    threads: int | None = 2,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Median/min latency (ms, summed over `feeds`) per model and paired ratios to the first.

    `models` maps a label to a model path (or serialized bytes); `feeds` is one list for all
    models or a mapping label -> list (e.g. a padded input for a static-shape bucket). Raises
    UserInputError for an empty model list, no feeds, or runs < 1.
    """
    import onnxruntime as ort

    from kokoro_opt.runtime.session import session_options

    if not models:
        raise UserInputError("No models to compare: give at least one.")
    per_model = {
        label: list(feeds[label] if isinstance(feeds, Mapping) else feeds) for label in models
    }
    if not all(per_model.values()):
        raise UserInputError("No inputs to time the models on.")
    if runs < 1:
        raise UserInputError(f"runs must be at least 1, got {runs}.")
    labels = list(models)
    sessions = {}
    for label in labels:
        source = models[label]
        sessions[label] = ort.InferenceSession(
            source if isinstance(source, bytes) else str(source),
            sess_options=session_options(threads),
            providers=["CPUExecutionProvider"],
        )
    total = (warmup + runs) * len(labels)
    done = 0
    times: dict[str, list[float]] = {label: [] for label in labels}
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    for round_no in range(warmup + runs):
        order = labels if round_no % 2 == 0 else labels[::-1]
        for label in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            for feed in per_model[label]:
                sessions[label].run(None, feed)
            elapsed = (time.perf_counter() - start) * 1000.0
            if round_no >= warmup:
                times[label].append(elapsed)
                cpu[label].append((time.process_time() - start_cpu) * 1000.0)
            done += 1
            if progress is not None:
                progress("timing models", done, total)
    first, first_cpu = times[labels[0]], cpu[labels[0]]
    result: dict[str, Any] = {"runs": runs, "threads": threads, "models": {}}
    for label in labels:
        ts = times[label]
        result["models"][label] = {
            "median_ms": statistics.median(ts),
            "min_ms": min(ts),
            "paired_ratio": statistics.median(t / f for t, f in zip(ts, first, strict=True)),
            "cpu_median_ms": statistics.median(cpu[label]),
            "cpu_paired_ratio": statistics.median(
                c / f for c, f in zip(cpu[label], first_cpu, strict=True)
            ),
            "runs_ms": ts,
        }
    return result
