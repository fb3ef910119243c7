"""The `optimize` chain as one pass: simplify -> transformer fusions -> rewrites -> ORT -> portable.

Order and why:
1. `simplify` (onnxsim) folds constants and merges duplicated weights, so later matchers see
   plain constants;
2. `transformer_fusion` fuses the ALBERT encoder (its fused ops are com.microsoft, so it is
   skipped for `portable` output);
3. the hot-spot `rewrites` (standard ops only), in their fixed order;
4. `ort_optimize` at the chosen level writes what ORT would do at session start (`layout`
   output is tied to this machine);
5. `portable` turns any remaining contrib ops back into standard ONNX.

`portable` with level `extended`/`layout` is refused: those levels write ORT-only kernels
(fused, NCHWc) that have no standard form.
"""

from __future__ import annotations

from typing import Any

import onnx
from pydantic import Field, field_validator, model_validator

from kokoro_opt.graph.edit import model_size_bytes, non_standard_ops, op_counts
from kokoro_opt.graph.inspect import detect_quant_style
from kokoro_opt.passes import (
    ort_optimize,
    portable,
    rewrites,
    simplify,
    transformer_fusion,
)
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult
from kokoro_opt.passes.ort_optimize import Level


class Config(PassConfig):
    level: Level = Level.extended
    """ORT offline optimization level: basic, extended or layout (tied to this machine)."""
    simplify: bool = True
    """Run onnxsim first."""
    fusion: bool = True
    """Run the onnxruntime.transformers fusions for the ALBERT text encoder."""
    portable: bool = False
    """Write only standard ONNX ops (contrib ops rewritten; needs level basic)."""
    rewrites: list[str] = Field(default_factory=lambda: list(rewrites.DEFAULT))
    """Hot-spot rewrites to apply (names from kokoro_opt.passes.rewrites.ORDER)."""

    @field_validator("rewrites")
    @classmethod
    def _known_rewrites(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in rewrites.REWRITES]
        if unknown:
            raise ValueError(
                f"unknown rewrite(s) {', '.join(unknown)}; choose from {', '.join(rewrites.ORDER)}"
            )
        return [name for name in rewrites.ORDER if name in value]

    @model_validator(mode="after")
    def _portable_needs_basic(self) -> Config:
        if self.portable and self.level is not Level.basic:
            raise ValueError(
                f"portable output cannot use level '{self.level.value}': it writes ORT-only ops; "
                "use level 'basic' with portable"
            )
        return self


FOR_QUANTIZATION: dict[str, Any] = {
    "level": "basic",
    "simplify": False,
    "fusion": False,
    "rewrites": list(rewrites.FOR_QUANTIZATION),
}
"""`optimize --for-quantization`: standard ops only (level basic, no onnxsim Gemm fusion, no
transformer fusions), so every Conv and MatMul stays visible to the quantizer, and the
rewrites that keep static INT8's quality (no Snake fold)."""


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Run the chain on a copy of `model`; details hold each stage's details and a summary."""
    stages: dict[str, Any] = {}
    current = model
    if config.simplify:
        result = simplify.run(current, simplify.Config(), ctx)
        stages["simplify"] = result.details
        current = result.model
    if config.fusion and not config.portable:
        result = transformer_fusion.run(current, transformer_fusion.Config(), ctx)
        stages["transformer_fusion"] = result.details
        current = result.model
    elif config.fusion:
        stages["transformer_fusion"] = {"skipped": "portable output: fused ops are ORT-only"}
    if config.rewrites:
        result = rewrites.apply(current, list(config.rewrites), ctx)
        stages["rewrites"] = result.details
        current = result.model
    result = ort_optimize.run(current, ort_optimize.Config(level=config.level), ctx)
    stages["ort_optimize"] = result.details
    current = result.model
    if config.portable:
        result = portable.run(current, portable.Config(), ctx)
        stages["portable"] = result.details
        current = result.model
    before, after = op_counts(model), op_counts(current)
    warnings = list(stages["ort_optimize"].get("warnings", []))
    warnings += list(stages.get("portable", {}).get("warnings", []))
    if detect_quant_style(model)[0] == "dynamic-int8":
        # Measured on the INT8 export: rewritten activations quantize differently at run time,
        # moving the audio as far as the export is from FP32 (log-mel 0.25 vs 0.28).
        warnings.append(
            "the input is dynamic INT8: rewrites change the activations it quantizes at run "
            "time, so its audio changes; optimize the FP32 model and quantize after"
        )
    details: dict[str, Any] = {
        "stages": stages,
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "ops_before": before,
        "ops_after": after,
        "size_before": model_size_bytes(model),
        "size_after": model_size_bytes(current),
        "non_standard_ops": non_standard_ops(current),
        "warnings": warnings,
    }
    return PassResult(current, details)
