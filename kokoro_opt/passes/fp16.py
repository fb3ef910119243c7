"""Full FP16: convert a float32 model's weights and compute to float16, for GPU and CoreML
targets, keeping the nodes that break in FP16 in float32.

`kokoro_opt.graph.fp16.convert_nodes_fp16` converts every node except the blocked ones, with
Cast nodes at the boundaries; the model's inputs and outputs stay float32, so callers feed and
read the same types as before. (onnxruntime's `convert_float_to_float16` with a node block
list wraps blocked nodes in Cast pairs and, with `keep_io_types`, leaves the graph unsorted on
this model; see graph/fp16.py.)

Blocked by default (`DEFAULT_KEEP_FP32`, see /work/shared/NOTES.md "FP16 hazards"):
- the harmonic source (`generator/m_source`): the running phase sum (CumSum -> Sin) drifts in
  FP16 and becomes audible noise;
- the STFT of the source and the phase arithmetic around it (nodes directly under the
  generator: Atan, Div, Where, Sqrt ...), where a 0/0 on a silent bin gives NaN;
- the inverse STFT (`generator/istft`) that writes the waveform;
plus every op in `kokoro_opt.passes.pin.FP16_HAZARD_OPS` (CumSum, STFT, Range ...) wherever it
is. On CPU, onnxruntime runs most FP16 ops through inserted casts, so an FP16 model is slower
than FP32 there; it is for GPU and CoreML users.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx
from pydantic import Field, field_validator

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.passes import pin
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult

DEFAULT_KEEP_FP32 = [
    "*/generator/m_source/*",
    "re:^/decoder/decoder/generator/[^/]+$",
    "*/generator/istft/*",
]


class Config(PassConfig):
    """Settings of the FP16 pass (strict: unknown keys are errors)."""

    keep_fp32: list[str] = Field(default_factory=lambda: list(DEFAULT_KEEP_FP32))
    keep_fp32_ops: list[str] = Field(default_factory=list)

    @field_validator("keep_fp32", "keep_fp32_ops", mode="before")
    @classmethod
    def _check(cls, value: Any, info: Any) -> list[str]:
        import re

        items = [str(v).strip() for v in (value or [])]
        for item in items:
            if not item or item == "re:":
                raise ValueError(f"empty {info.field_name} entry; give a node-name pattern")
            if item.startswith("re:"):
                try:
                    re.compile(item[3:])
                except re.error as exc:
                    raise ValueError(
                        f"{item!r} is not a valid regular expression ({exc}); fix it or use a "
                        "glob without the 're:' prefix"
                    ) from None
        return items


def build_config(settings: dict[str, Any]) -> Config:
    """A Config from plain settings; the first problem becomes one UserInputError line."""
    from pydantic import ValidationError

    try:
        return Config(**settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error.get("loc", ())) or "settings"
        message = str(error.get("msg", exc)).removeprefix("Value error, ")
        raise UserInputError(f"Invalid fp16 setting {field}: {message}.") from None


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Convert `model` to FP16 except the blocked nodes (see the module docstring)."""
    from kokoro_opt.passes.quantize_static import check_float_model

    check_float_model(model)
    if any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input):
        raise ModelFormatError("The model already takes FP16 inputs; give a float32 model.")
    ctx.report("Converting to FP16", 0, 1)
    blocked = {
        n.name
        for n in model.graph.node
        if any(pin.match_pattern(p, n.name) for p in config.keep_fp32)
        or n.op_type in config.keep_fp32_ops
        or n.op_type in pin.FP16_HAZARD_OPS
    }
    unmatched = [
        p
        for p in config.keep_fp32
        if not any(pin.match_pattern(p, n.name) for n in model.graph.node)
    ]
    from kokoro_opt.graph.fp16 import convert_nodes_fp16

    targets = [n.name for n in model.graph.node if n.name and n.name not in blocked]
    converted, names = convert_nodes_fp16(model, targets)
    ctx.report("Converting to FP16", 1, 1)
    fp16_weights = sum(
        1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16
    )
    details = {
        "converted_nodes": len(names),
        "blocked_nodes": len(blocked),
        "blocked_ops": dict(
            sorted(Counter(n.op_type for n in model.graph.node if n.name in blocked).items())
        ),
        "unmatched_patterns": unmatched,
        "casts_added": sum(1 for n in converted.graph.node if n.op_type == "Cast")
        - sum(1 for n in model.graph.node if n.op_type == "Cast"),
        "fp16_initializers": fp16_weights,
        "bytes_before": model.ByteSize(),
        "bytes_after": converted.ByteSize(),
        "settings": config.model_dump(),
    }
    return PassResult(converted, details)
