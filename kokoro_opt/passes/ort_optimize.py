"""ONNX Runtime offline graph optimization at a chosen level, saved as a new model.

ORT applies these optimizations every time a session starts; doing them once offline saves that
start-up work and lets us inspect, measure and ship the result. Levels:

- `basic`: constant folding, redundant-node removal, simple fusions; standard ONNX ops only, so
  the output runs on any runtime;
- `extended`: adds ORT's contrib fusions (FusedConv, Gelu/LayerNorm/Attention fusions, FusedMatMul
  ...): com.microsoft ops that only ONNX Runtime executes;
- `layout`: adds the NCHWc layout transformer and other machine-specific kernels. The saved
  model is tied to the CPU that made it (instruction set, block size): re-optimize on the
  machine that will run it.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import onnx
from pydantic import Field

from kokoro_opt.errors import ModelFormatError
from kokoro_opt.graph.edit import model_size_bytes, non_standard_ops, op_counts
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult

LAYOUT_WARNING = (
    "level 'layout' writes NCHWc and CPU-specific kernels: the saved model is tied to the "
    "machine that made it; re-run `optimize` on the machine that will serve it"
)


class Level(str, Enum):
    basic = "basic"
    extended = "extended"
    layout = "layout"


class Config(PassConfig):
    level: Level = Level.extended
    """How far ORT may go: basic (portable), extended (ORT contrib ops) or layout (this CPU)."""
    disabled_optimizers: list[str] = Field(default_factory=list)
    """ORT optimizer names to switch off, e.g. `NchwcTransformer` or `ConvActivationFusion`."""


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Let ORT optimize a copy of `model` on the CPU provider and load what it saved."""
    import onnxruntime as ort

    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    src = ctx.work_dir / "ort_optimize_input.onnx"
    dst = ctx.work_dir / f"ort_optimize_{config.level.value}.onnx"
    # ORT reads the model from a file, so `model` is only serialized (never changed): no copy
    # of its weights (325 MB for Kokoro FP32) is made here.
    onnx.save(model, src)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _ort_level(ort, config.level)
    opts.optimized_model_filepath = str(dst)
    opts.intra_op_num_threads = ctx.threads or 1
    opts.log_severity_level = 3
    ctx.report(f"ORT optimize ({config.level.value})", 0, 1)
    try:
        ort.InferenceSession(
            str(src),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(config.disabled_optimizers) or None,
        )
    except Exception as exc:  # ORT's pybind errors are plain Exceptions
        raise ModelFormatError(
            f"onnxruntime cannot load the model to optimize it: {_first_line(exc)}. "
            "Check that it runs with `kokoro-opt speak` first."
        ) from None
    finally:
        src.unlink(missing_ok=True)
    ctx.report(f"ORT optimize ({config.level.value})", 1, 1)
    optimized = onnx.load(str(dst))
    _cleanup(dst)
    before, after = op_counts(model), op_counts(optimized)
    introduced = {
        op: n for op, n in non_standard_ops(optimized).items() if op not in non_standard_ops(model)
    }
    details: dict[str, Any] = {
        "level": config.level.value,
        "onnxruntime_version": ort.__version__,
        "nodes_before": len(model.graph.node),
        "nodes_after": len(optimized.graph.node),
        "size_before": model_size_bytes(model),
        "size_after": model_size_bytes(optimized),
        "op_changes": {
            op: after.get(op, 0) - before.get(op, 0)
            for op in sorted(set(before) | set(after))
            if after.get(op, 0) != before.get(op, 0)
        },
        "non_standard_ops_introduced": introduced,
        "warnings": [LAYOUT_WARNING] if config.level is Level.layout else [],
    }
    return PassResult(optimized, details)


def _ort_level(ort: Any, level: Level) -> Any:
    levels = ort.GraphOptimizationLevel
    if level is Level.basic:
        return levels.ORT_ENABLE_BASIC
    if level is Level.extended:
        return levels.ORT_ENABLE_EXTENDED
    # ORT >= 1.20 has ORT_ENABLE_LAYOUT; older builds only ORT_ENABLE_ALL, which is the same set.
    return getattr(levels, "ORT_ENABLE_LAYOUT", levels.ORT_ENABLE_ALL)


def _cleanup(path: Path) -> None:
    path.unlink(missing_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
