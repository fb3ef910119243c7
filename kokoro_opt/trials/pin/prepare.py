"""What every pinning job starts from: the float model's groups and its one calibration, a
variant builder, and the held-out reference set.

Variants are built from ONE calibration (`kokoro_opt.passes.pin.calibrated_ranges`, cached by
model sha256 and settings) with `quantize_with_ranges` and a different set of excluded nodes, so
a variant costs one quantizer run, not a calibration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kokoro_opt.errors import UserInputError
from kokoro_opt.passes import pin

if TYPE_CHECKING:
    from kokoro_opt.measure.executors import Executor
    from kokoro_opt.measure.reference import ReferenceSet

ProgressCallback = Callable[[str, int, int], None]


def no_progress(task: str, done: int, total: int) -> None:
    return None


@dataclass
class Prepared:
    """A float model ready for variant building: its groups and its one calibration."""

    model_path: Path
    sha256: str
    config: pin.Config
    groups: dict[str, list[str]]
    group_ops: dict[str, dict[str, int]]
    ranges_path: Path
    ranges_reused: bool
    contract: Any
    cache_folder: Path
    threads: int

    def nodes_outside(self, quantized: Sequence[str]) -> list[str]:
        """Node names of every group not in `quantized` (what quantize_with_ranges excludes)."""
        chosen = set(quantized)
        return [n for g, names in self.groups.items() if g not in chosen for n in names]

    def ranges_sha256(self) -> str:
        return hashlib.sha256(Path(self.ranges_path).read_bytes()).hexdigest()


def prepare(
    model_path: Path,
    config: pin.Config,
    *,
    cache_folder: Path,
    threads: int = 2,
    ranges_path: Path | None = None,
    progress: ProgressCallback | None = None,
) -> Prepared:
    """Check the model is float32, group its quantizable nodes and calibrate once (cached),
    or use `ranges_path`, an ORT calibration cache made earlier for this model."""
    from kokoro_opt.graph.io import load_model, sha256_file
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.passes.quantize_static import check_float_model
    from kokoro_opt.runtime.contract import ModelContract

    report = progress or no_progress
    model = load_model(model_path)
    check_float_model(model)
    contract = ModelContract.from_onnx(model)
    groups = pin.group_nodes(model, ops=config.ops, depth=config.depth)
    if not groups:
        raise UserInputError(
            f"{model_path.name} has no {'/'.join(config.ops)} nodes to quantize; pinning needs "
            "a float32 Kokoro model such as kokoro-fp32."
        )
    ops = pin.group_ops(model, groups)
    del model
    sha = sha256_file(model_path)
    if ranges_path is not None:
        ranges, reused = pin.check_ranges_file(ranges_path), True
    else:
        ctx = PassContext(progress=report, threads=threads)
        ranges, reused = pin.calibrated_ranges(
            model_path, config, ctx, cache_folder=cache_folder / "ranges", model_sha256=sha
        )
    return Prepared(
        model_path=Path(model_path),
        sha256=sha,
        config=config,
        groups=groups,
        group_ops=ops,
        ranges_path=ranges,
        ranges_reused=reused,
        contract=contract,
        cache_folder=cache_folder,
        threads=threads,
    )


def build_variant(prepared: Prepared, quantized: Sequence[str], out_path: Path) -> Path:
    """The model with exactly the `quantized` groups in INT8 (the rest float32)."""
    import shutil

    from kokoro_opt.passes.quantize_static import quantize_with_ranges

    if not quantized:
        shutil.copyfile(prepared.model_path, out_path)
        return out_path
    return quantize_with_ranges(
        prepared.model_path,
        out_path,
        prepared.ranges_path,
        prepared.config.quant_config(),
        nodes_to_exclude=prepared.nodes_outside(quantized),
    )


def measure_variant(
    prepared: Prepared,
    path: Path,
    held: ReferenceSet,
    *,
    executor: Executor | None = None,
    progress: ProgressCallback | None = None,
    label: str = "Speaking",
) -> tuple[list[float], float | None]:
    """Per-sentence log-mel distances of `path` to FP32 on `held`, and its WER when `held`
    carries FP32 transcripts."""
    from kokoro_opt.measure.reference import score_model
    from kokoro_opt.measure.score import word_error_rate

    asr = held.ref_transcripts is not None
    scores = score_model(
        path,
        held,
        threads=prepared.threads,
        asr=asr,
        executor=executor,
        progress=progress,
        label=label,
    )
    dists = [float(s.logmel if s.logmel is not None else float("inf")) for s in scores]
    wer = word_error_rate(held.texts, [s.transcript or "" for s in scores]) if asr else None
    return dists, wer


def speed_against_fp32(
    prepared: Prepared,
    path: Path,
    feeds: Sequence[dict[str, Any]],
    *,
    runs: int,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Interleaved latency of `path` against the FP32 model (`bench.ab`), serially on this
    machine whatever executor measured fidelity; says where it ran."""
    import socket

    from kokoro_opt.bench.ab import ab_latency

    result = ab_latency(
        {"fp32": prepared.model_path, "variant": path},
        list(feeds),
        runs=runs,
        warmup=1,
        threads=prepared.threads,
        progress=progress,
    )
    m = result["models"]
    return {
        "runs": runs,
        "texts": len(feeds),
        "fp32_median_ms": round(m["fp32"]["median_ms"], 1),
        "pinned_median_ms": round(m["variant"]["median_ms"], 1),
        "speedup": round(1.0 / m["variant"]["paired_ratio"], 3),
        "cpu_speedup": round(1.0 / m["variant"]["cpu_paired_ratio"], 3),
        "host": socket.gethostname(),
    }
