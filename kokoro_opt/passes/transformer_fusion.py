"""The BERT-family fusions of `onnxruntime.transformers` for Kokoro's ALBERT text encoder.

`onnxruntime.transformers.optimizer.optimize_model(model_type="bert")` pattern-matches
attention, (Skip)LayerNorm, Gelu and embedding subgraphs and replaces them with com.microsoft
fused ops. Only its Python fusions run here (`opt_level=0`); ONNX Runtime's own graph
optimizations are the separate `ort_optimize` pass. `details["fused"]` says what each fusion
produced (counts after minus before), so a model with nothing left to fuse reports zeros.

Layer-norm fusion is off by default: the Kokoro export already carries LayerNormalization and
SkipLayerNormalization, and in onnxruntime 1.32 the simplified-layer-norm fusion crashes on the
generator's instance-norm subgraphs (`Mul(x, x) -> ReduceMean`). If a fusion raises anyway the
pass returns its input unchanged and says why in `details["skipped"]`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import onnx
from pydantic import Field

from kokoro_opt.graph.edit import clone, non_standard_ops, op_counts
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult

logger = logging.getLogger(__name__)

FUSED_OPS = (
    "EmbedLayerNormalization",
    "Attention",
    "MultiHeadAttention",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "GemmFastGelu",
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
)


_NOISY_LOGGERS = ("onnxruntime.transformers", "onnx_model", "fusion_base", "fusion_skiplayernorm")


class Config(PassConfig):
    num_heads: int = Field(default=12, ge=0, le=256)
    """Attention heads of the text encoder (Kokoro's PL-BERT: 12; 0: let ORT detect)."""
    hidden_size: int = Field(default=768, ge=0, le=65536)
    """Hidden size of the text encoder (Kokoro's PL-BERT: 768; 0: let ORT detect)."""
    attention: bool = True
    """Fuse self-attention subgraphs into com.microsoft Attention."""
    gelu: bool = True
    """Fuse Gelu subgraphs (erf and tanh forms) and their bias Add."""
    skip_layer_norm: bool = True
    """Fuse residual Add + LayerNormalization into SkipLayerNormalization (with bias)."""
    embed_layer_norm: bool = True
    """Fuse the embedding lookups + LayerNormalization into EmbedLayerNormalization."""
    layer_norm: bool = False
    """Fuse decomposed LayerNorm subgraphs (off: see the module notes)."""
    gelu_approximation: bool = False
    """Replace exact Gelu with the tanh approximation (changes numbers slightly)."""


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Apply the transformer fusions to a copy of `model`; report what fused."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    work = clone(model)
    before = op_counts(work)
    details: dict[str, Any] = {"applied": False, "nodes_before": len(work.graph.node)}
    options = FusionOptions("bert")
    options.enable_attention = config.attention
    options.enable_gelu = config.gelu
    options.enable_bias_gelu = config.gelu
    options.enable_skip_layer_norm = config.skip_layer_norm
    options.enable_bias_skip_layer_norm = config.skip_layer_norm
    options.enable_embed_layer_norm = config.embed_layer_norm
    options.enable_layer_norm = config.layer_norm
    options.enable_gelu_approximation = config.gelu_approximation
    ctx.report("transformer fusions", 0, 1)
    # The optimizer logs at WARNING about producer names and shape inference; those are not
    # actionable for our users, so quiet it for the duration of the call.
    noisy = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    printed = io.StringIO()  # it also prints (e.g. "failed in shape inference") to stdout
    try:
        with contextlib.redirect_stdout(printed):
            optimized = optimize_model(
                work,
                model_type="bert",
                num_heads=config.num_heads,
                hidden_size=config.hidden_size,
                optimization_options=options,
                opt_level=0,
                only_onnxruntime=False,
            ).model
    except Exception as exc:  # fusion code raises assorted errors on graphs it does not expect
        reason = _first_line(exc)
        logger.info("transformer fusion skipped: %s", reason)
        details["skipped"] = f"onnxruntime.transformers could not fuse this model: {reason}"
        details["nodes_after"] = details["nodes_before"]
        return PassResult(clone(model), details)
    finally:
        if printed.getvalue().strip():
            logger.debug("onnxruntime.transformers: %s", printed.getvalue().strip()[-2000:])
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)
        ctx.report("transformer fusions", 1, 1)
    after = op_counts(optimized)
    fused = {}
    for op in FUSED_OPS:
        key = op if op == "LayerNormalization" else f"com.microsoft:{op}"
        delta = after.get(key, 0) - before.get(key, 0)
        if op == "LayerNormalization":
            delta += after.get(f"com.microsoft:{op}", 0) - before.get(f"com.microsoft:{op}", 0)
        fused[op] = delta
    details.update(
        applied=True,
        nodes_after=len(optimized.graph.node),
        fused=fused,
        fused_total=sum(v for v in fused.values() if v > 0),
        non_standard_ops=non_standard_ops(optimized),
    )
    return PassResult(optimized, details)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
