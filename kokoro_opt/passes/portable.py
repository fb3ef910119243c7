"""Turn ONNX Runtime contrib ops back into standard ONNX, for runtimes that lack them.

The Kokoro export was ORT-optimized before quantization, so it carries com.microsoft ops
(FastGelu, SkipLayerNormalization, FusedMatMul, and DynamicQuantizeLSTM in the INT8 export);
`ort_optimize --level extended` adds more (FusedConv, MatMulIntegerToFloat,
DynamicQuantizeMatMul ...). The CoreML provider and other engines reject them. Each supported
op is rewritten into standard ops with the same math:

- FastGelu, Gelu, BiasGelu, QuickGelu -> Mul/Add/Tanh/Erf/Sigmoid (or ONNX `Gelu` at opset 20+
  when `gelu="onnx"`);
- SkipLayerNormalization -> Add + LayerNormalization; (Skip)SimplifiedLayerNormalization -> RMS
  norm from ReduceMean/Sqrt/Div/Mul;
- FusedMatMul -> Transpose + MatMul (+ Mul by alpha);
- FusedConv -> Conv (+ Add) + activation;
- MatMulIntegerToFloat, DynamicQuantizeMatMul -> DynamicQuantizeLinear + MatMulInteger + Cast +
  Mul (+ Add): the same integer arithmetic;
- DynamicQuantizeLSTM -> LSTM with the dequantized weights (the one rewrite that changes numbers:
  the float LSTM skips the dynamic quantization of its input).

Anything else outside the standard domain (NCHWc layout ops, attention kernels ...) has no
faithful standard form here: the pass refuses with the list, rather than writing a model that
still is not portable.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.graph.edit import (
    GraphIndex,
    attrs,
    clone,
    finalize,
    non_standard_ops,
    op_counts,
    op_key,
    opset_version,
)
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult


class GeluForm(str, Enum):
    decompose = "decompose"
    onnx = "onnx"


class Config(PassConfig):
    gelu: GeluForm = GeluForm.decompose
    """`decompose`: Gelu variants as Mul/Add/Tanh/Erf (any opset, any runtime); `onnx`: the
    standard `Gelu` op (needs opset >= 20 and a runtime that implements it)."""
    dequantize_lstm: bool = True
    """Rewrite DynamicQuantizeLSTM as a float LSTM (changes numbers slightly); when False such a
    model is refused."""


_Rewriter = Callable[["_Ctx", onnx.NodeProto], None]


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Rewrite every supported contrib op of a copy of `model`; refuse unsupported ones."""
    work = clone(model)
    before = op_counts(work)
    todo = non_standard_ops(work)
    supported = set(_REWRITERS)
    if not config.dequantize_lstm:
        supported.discard("com.microsoft:DynamicQuantizeLSTM")
    if config.gelu is GeluForm.onnx and opset_version(work) < 20:
        raise UserInputError(
            f"gelu='onnx' needs opset 20 or newer; this model is opset {opset_version(work)}. "
            "Use gelu='decompose'."
        )
    lowered_ln = opset_version(work) < 17
    unsupported = {
        op: n
        for op, n in todo.items()
        if op not in supported and not (op == "LayerNormalization" and lowered_ln)
    }
    if unsupported:
        listed = ", ".join(f"{op} ({n})" for op, n in unsupported.items())
        raise UserInputError(
            f"Cannot make this model portable: no standard-ONNX rewrite for {listed}. "
            f"Supported: {', '.join(sorted(supported))}. Optimize without --level "
            "extended/layout (or before quantizing) and try again."
        )
    index = GraphIndex(work.graph)
    state = _Ctx(index=index, config=config, model=work)
    targets = [n for n in work.graph.node if op_key(n) in _REWRITERS]
    if lowered_ln:
        targets += [n for n in work.graph.node if n.op_type == "LayerNormalization"]
    for i, node in enumerate(targets):
        key = "LayerNormalization" if node.op_type == "LayerNormalization" else op_key(node)
        rewrite = _REWRITERS.get(key, _layer_norm)
        rewrite(state, node)
        ctx.report("portable rewrites", i + 1, len(targets))
    index.remove(targets)
    finalize(work.graph)
    _drop_unused_domains(work)
    left = non_standard_ops(work)
    if left:  # a rewrite emitted a non-standard op: a bug here, not the user's fault
        raise ModelFormatError(f"portable rewrite left non-standard ops {left}; please report.")
    onnx.checker.check_model(work)
    after = op_counts(work)
    details: dict[str, Any] = {
        "rewritten": dict(Counter(op_key(n) for n in targets)),
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "non_standard_ops": {},
        "numerics_changed": any(n.op_type == "DynamicQuantizeLSTM" for n in targets),
    }
    if details["numerics_changed"]:
        details["warnings"] = [
            "DynamicQuantizeLSTM became a float LSTM: its input is no longer quantized at run "
            "time, so audio differs slightly from the INT8 original"
        ]
    return PassResult(work, details)


class _Ctx:
    """The index being edited plus the pass config, shared by the rewriters."""

    def __init__(self, *, index: GraphIndex, config: Config, model: onnx.ModelProto) -> None:
        self.index = index
        self.config = config
        self.opset = opset_version(model)
        self._consts: dict[tuple[str, bytes], str] = {}
        self._ranks = _known_ranks(model)

    def rank(self, name: str) -> int | None:
        """The rank of tensor `name` when shape inference or a constant tells it."""
        value = self.index.const(name)
        if value is not None:
            return value.ndim
        return self._ranks.get(name)

    def const(self, base: str, value: Any, dtype: Any = np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (str(arr.dtype) + str(arr.shape), arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.index.add_initializer(f"portable_{base}", arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, **kw: Any) -> str:
        node = self.index.add_node(op_type, inputs, n_out, name=name, **kw)
        return node.output[0]

    def op_to(self, op_type: str, inputs: list[str], outputs: list[str], name: str, **kw: Any):
        return self.index.add_node(op_type, inputs, outputs, name=name, **kw)


# -- Gelu family -------------------------------------------------------------------------------


def _gelu_tanh(c: _Ctx, x: str, out: str, name: str) -> None:
    if c.config.gelu is GeluForm.onnx:
        c.op_to("Gelu", [x], [out], f"{name}/Gelu", approximate="tanh")
        return
    x3 = c.op("Mul", [c.op("Mul", [x, x], f"{name}/sq"), x], f"{name}/cube")
    inner = c.op("Add", [x, c.op("Mul", [x3, c.const("gelu_k", 0.044715)], f"{name}/k")], name)
    scaled = c.op("Mul", [inner, c.const("sqrt_2_pi", math.sqrt(2 / math.pi))], name)
    th = c.op("Tanh", [scaled], name)
    half_x = c.op("Mul", [x, c.const("half", 0.5)], f"{name}/half")
    c.op_to("Mul", [half_x, c.op("Add", [th, c.const("one", 1.0)], name)], [out], f"{name}/out")


def _gelu_erf(c: _Ctx, x: str, out: str, name: str) -> None:
    if c.config.gelu is GeluForm.onnx:
        c.op_to("Gelu", [x], [out], f"{name}/Gelu")
        return
    erf = c.op("Erf", [c.op("Mul", [x, c.const("inv_sqrt2", 1 / math.sqrt(2))], name)], name)
    half_x = c.op("Mul", [x, c.const("half", 0.5)], f"{name}/half")
    c.op_to("Mul", [half_x, c.op("Add", [erf, c.const("one", 1.0)], name)], [out], f"{name}/out")


def _with_bias(c: _Ctx, node: onnx.NodeProto) -> str:
    x = node.input[0]
    if len(node.input) > 1 and node.input[1]:
        x = c.op("Add", [x, node.input[1]], f"{node.name}/bias")
    return x


def _fast_gelu(c: _Ctx, node: onnx.NodeProto) -> None:
    _gelu_tanh(c, _with_bias(c, node), node.output[0], node.name)


def _gelu(c: _Ctx, node: onnx.NodeProto) -> None:
    _gelu_erf(c, node.input[0], node.output[0], node.name)


def _bias_gelu(c: _Ctx, node: onnx.NodeProto) -> None:
    _gelu_erf(c, _with_bias(c, node), node.output[0], node.name)


def _quick_gelu(c: _Ctx, node: onnx.NodeProto) -> None:
    alpha = float(attrs(node).get("alpha", 1.702))
    x = node.input[0]
    sig = c.op("Sigmoid", [c.op("Mul", [x, c.const("quick_alpha", alpha)], node.name)], node.name)
    c.op_to("Mul", [x, sig], [node.output[0]], f"{node.name}/out")


# -- normalization -----------------------------------------------------------------------------


def _skip_sum(c: _Ctx, node: onnx.NodeProto, bias_index: int) -> str:
    s = c.op("Add", [node.input[0], node.input[1]], f"{node.name}/skip")
    if len(node.input) > bias_index and node.input[bias_index]:
        s = c.op("Add", [s, node.input[bias_index]], f"{node.name}/bias")
    return s


def _skip_layer_norm(c: _Ctx, node: onnx.NodeProto) -> None:
    eps = float(attrs(node).get("epsilon", 1e-12))
    s = _skip_sum(c, node, bias_index=4)
    gamma = node.input[2]
    beta = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    outs = list(node.output) + [""] * (4 - len(node.output))
    ln_outs = [outs[0], outs[1], outs[2]]
    while ln_outs and not ln_outs[-1]:
        ln_outs.pop()
    ln_inputs = [s, gamma] + ([beta] if beta else [])
    if c.opset >= 17:
        c.op_to("LayerNormalization", ln_inputs, ln_outs, f"{node.name}/LN", axis=-1, epsilon=eps)
    else:
        _layer_norm_math(c, s, gamma, beta, outs[0], eps, -1, node.name)
    if outs[3]:
        c.op_to("Identity", [s], [outs[3]], f"{node.name}/sum")


def _layer_norm(c: _Ctx, node: onnx.NodeProto) -> None:
    a = attrs(node)
    beta = node.input[2] if len(node.input) > 2 else ""
    _layer_norm_math(
        c,
        node.input[0],
        node.input[1],
        beta,
        node.output[0],
        float(a.get("epsilon", 1e-5)),
        int(a.get("axis", -1)),
        node.name,
    )


def _layer_norm_math(
    c: _Ctx, x: str, gamma: str, beta: str, out: str, eps: float, axis: int, name: str
) -> None:
    if axis != -1:
        raise UserInputError(
            f"{name}: LayerNormalization over axis {axis} cannot be lowered here (only -1)."
        )
    axes = c.const("axes_last", [-1], np.int64)
    mean = c.op("ReduceMean", [x, axes], f"{name}/mean", keepdims=1)
    d = c.op("Sub", [x, mean], f"{name}/centre")
    var = c.op("ReduceMean", [c.op("Mul", [d, d], f"{name}/sq"), axes], f"{name}/var", keepdims=1)
    std = c.op("Sqrt", [c.op("Add", [var, c.const("ln_eps", eps)], f"{name}/eps")], name)
    y = c.op("Mul", [c.op("Div", [d, std], f"{name}/norm"), gamma], f"{name}/scale")
    if beta:
        c.op_to("Add", [y, beta], [out], f"{name}/shift")
    else:
        c.op_to("Identity", [y], [out], f"{name}/out")


def _rms_norm(c: _Ctx, x: str, gamma: str, out: str, eps: float, name: str) -> None:
    axes = c.const("axes_last", [-1], np.int64)
    ms = c.op("ReduceMean", [c.op("Mul", [x, x], f"{name}/sq"), axes], f"{name}/ms", keepdims=1)
    rms = c.op("Sqrt", [c.op("Add", [ms, c.const("rms_eps", eps)], f"{name}/eps")], name)
    c.op_to("Mul", [c.op("Div", [x, rms], f"{name}/norm"), gamma], [out], f"{name}/scale")


def _simplified_layer_norm(c: _Ctx, node: onnx.NodeProto) -> None:
    a = attrs(node)
    if int(a.get("axis", -1)) != -1:
        raise UserInputError(f"{node.name}: SimplifiedLayerNormalization over axis != -1.")
    eps = float(a.get("epsilon", 1e-5))
    _rms_norm(c, node.input[0], node.input[1], node.output[0], eps, node.name)


def _skip_simplified_layer_norm(c: _Ctx, node: onnx.NodeProto) -> None:
    eps = float(attrs(node).get("epsilon", 1e-12))
    s = _skip_sum(c, node, bias_index=3)
    _rms_norm(c, s, node.input[2], node.output[0], eps, node.name)
    outs = list(node.output)
    if len(outs) > 3 and outs[3]:
        c.op_to("Identity", [s], [outs[3]], f"{node.name}/sum")
    if any(outs[1:3]):
        raise UserInputError(
            f"{node.name}: SkipSimplifiedLayerNormalization's mean/inv-std outputs are used; "
            "no standard form is available."
        )


# -- MatMul / Conv -----------------------------------------------------------------------------


def _fused_matmul(c: _Ctx, node: onnx.NodeProto) -> None:
    a = attrs(node)
    if int(a.get("transBatchA", 0)) or int(a.get("transBatchB", 0)):
        raise UserInputError(
            f"{node.name}: FusedMatMul with transBatchA/transBatchB has no simple standard form."
        )
    ranks = [c.rank(node.input[0]), c.rank(node.input[1])]
    trans = [int(a.get("transA", 0)), int(a.get("transB", 0))]
    alpha = float(a.get("alpha", 1.0))
    if any(t and r is None for t, r in zip(trans, ranks, strict=True)):
        # Rank unknown: Einsum's ellipsis transposes the last two axes whatever the rank.
        lhs = "...ji" if trans[0] else "...ij"
        rhs = "...kj" if trans[1] else "...jk"
        equation = f"{lhs},{rhs}->...ik"
        y = c.op("Einsum", list(node.input[:2]), f"{node.name}/Einsum", equation=equation)
        out = c.op("Mul", [y, c.const("alpha", alpha)], f"{node.name}/alpha") if alpha != 1.0 else y
        c.op_to("Identity", [out], [node.output[0]], f"{node.name}/out")
        return
    inputs = []
    for which, value, rank, t in zip("AB", node.input[:2], ranks, trans, strict=True):
        if t:
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            value = c.op("Transpose", [value], f"{node.name}/T{which}", perm=perm)
        inputs.append(value)
    if alpha == 1.0:
        c.op_to("MatMul", inputs, [node.output[0]], f"{node.name}/MatMul")
    else:
        y = c.op("MatMul", inputs, f"{node.name}/MatMul")
        c.op_to("Mul", [y, c.const("alpha", alpha)], [node.output[0]], f"{node.name}/alpha")


_ACTIVATIONS = {"Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid"}


def _fused_conv(c: _Ctx, node: onnx.NodeProto) -> None:
    a = attrs(node)
    act = a.pop("activation", "")
    params = list(a.pop("activation_params", []))
    conv_attrs = {k: v for k, v in a.items() if k in _CONV_ATTRS}
    if act and act not in _ACTIVATIONS:
        raise UserInputError(f"{node.name}: FusedConv activation {act!r} has no standard form.")
    y = c.op("Conv", list(node.input[:3]), f"{node.name}/Conv", **conv_attrs)
    if len(node.input) > 3 and node.input[3]:
        y = c.op("Add", [y, node.input[3]], f"{node.name}/sum")
    if not act:
        c.op_to("Identity", [y], [node.output[0]], f"{node.name}/out")
    elif act == "LeakyRelu":
        alpha = params[0] if params else 0.01
        c.op_to("LeakyRelu", [y], [node.output[0]], f"{node.name}/act", alpha=float(alpha))
    elif act == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5])[:2]
        c.op_to("HardSigmoid", [y], [node.output[0]], f"{node.name}/act", alpha=alpha, beta=beta)
    elif act == "Clip":
        lo, hi = (params + [-3.4e38, 3.4e38])[:2]
        c.op_to(
            "Clip",
            [y, c.const("clip_lo", lo), c.const("clip_hi", hi)],
            [node.output[0]],
            f"{node.name}/act",
        )
    else:
        c.op_to(act, [y], [node.output[0]], f"{node.name}/act")


_CONV_ATTRS = {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}


def _matmul_integer_to_float(c: _Ctx, node: onnx.NodeProto) -> None:
    ins = list(node.input) + [""] * (7 - len(node.input))
    a, b, a_scale, b_scale, a_zp, b_zp, bias = ins[:7]
    q = c.op("MatMulInteger", [a, b, a_zp, b_zp], f"{node.name}/MatMulInteger")
    y = c.op("Cast", [q], f"{node.name}/Cast", to=TensorProto.FLOAT)
    scale = c.op("Mul", [a_scale, b_scale], f"{node.name}/scales")
    _finish_scale_bias(c, node, y, scale, bias)


def _dynamic_quantize_matmul(c: _Ctx, node: onnx.NodeProto) -> None:
    ins = list(node.input) + [""] * (5 - len(node.input))
    a, b, b_scale, b_zp, bias = ins[:5]
    dq = c.index.add_node("DynamicQuantizeLinear", [a], 3, name=f"{node.name}/DQL")
    aq, a_scale, a_zp = dq.output
    q = c.op("MatMulInteger", [aq, b, a_zp, b_zp], f"{node.name}/MatMulInteger")
    y = c.op("Cast", [q], f"{node.name}/Cast", to=TensorProto.FLOAT)
    scale = c.op("Mul", [a_scale, b_scale], f"{node.name}/scales")
    _finish_scale_bias(c, node, y, scale, bias)


def _finish_scale_bias(c: _Ctx, node: onnx.NodeProto, y: str, scale: str, bias: str) -> None:
    if bias:
        y = c.op("Mul", [y, scale], f"{node.name}/scale")
        c.op_to("Add", [y, bias], [node.output[0]], f"{node.name}/bias")
    else:
        c.op_to("Mul", [y, scale], [node.output[0]], f"{node.name}/scale")


def _dynamic_quantize_lstm(c: _Ctx, node: onnx.NodeProto) -> None:
    ins = list(node.input) + [""] * (12 - len(node.input))
    w = _dequantize_lstm_weight(c, node, ins[1], ins[8], ins[9], "W")
    r = _dequantize_lstm_weight(c, node, ins[2], ins[10], ins[11], "R")
    inputs = [ins[0], w, r, *ins[3:8]]
    while inputs and not inputs[-1]:
        inputs.pop()
    c.op_to("LSTM", inputs, list(node.output), f"{node.name}/LSTM", **attrs(node))


def _dequantize_lstm_weight(
    c: _Ctx, node: onnx.NodeProto, wq: str, scale: str, zp: str, what: str
) -> str:
    values = [c.index.const(n) for n in (wq, scale, zp)]
    if any(v is None for v in values):
        raise UserInputError(
            f"{node.name}: DynamicQuantizeLSTM {what} weights are not constants; cannot dequantize."
        )
    q, s, z = values
    dirs = q.shape[0]
    s = np.asarray(s, np.float32).reshape(dirs, -1)
    z = np.asarray(z).astype(np.float32).reshape(dirs, -1)
    # ORT stores W as [D, I, 4H] with per-direction (or per-column) scale; ONNX wants [D, 4H, I].
    deq = (q.astype(np.float32) - z[:, None, :]) * s[:, None, :]
    return c.index.add_initializer(f"{node.name}_{what}_fp32", deq.transpose(0, 2, 1).copy())


# -- helpers -----------------------------------------------------------------------------------


def _known_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Ranks of the tensors ONNX shape inference can type (it stops at contrib ops)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference can fail on exotic graphs; ranks then come from constants only
        inferred = model
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def _drop_unused_domains(model: onnx.ModelProto) -> None:
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


_REWRITERS: dict[str, _Rewriter] = {
    "com.microsoft:FastGelu": _fast_gelu,
    "com.microsoft:Gelu": _gelu,
    "com.microsoft:BiasGelu": _bias_gelu,
    "com.microsoft:QuickGelu": _quick_gelu,
    "com.microsoft:SkipLayerNormalization": _skip_layer_norm,
    "com.microsoft:SkipSimplifiedLayerNormalization": _skip_simplified_layer_norm,
    "SimplifiedLayerNormalization": _simplified_layer_norm,
    "com.microsoft:FusedMatMul": _fused_matmul,
    "com.microsoft:FusedConv": _fused_conv,
    "com.microsoft:MatMulIntegerToFloat": _matmul_integer_to_float,
    "com.microsoft:DynamicQuantizeMatMul": _dynamic_quantize_matmul,
    "com.microsoft:DynamicQuantizeLSTM": _dynamic_quantize_lstm,
}
