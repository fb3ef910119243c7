"""Post-quantization rewrite: a quantized Conv -> AdaIN -> Snake -> quantized Conv chain becomes
a per-channel lookup table.

In Kokoro's resblocks the first Conv of each pair is INT8 and so is the second, and between
them run AdaIN and Snake in float:

    u = QLinearConv(...)                      uint8 [1, C, T]
    x = DequantizeLinear(u); n = InstanceNormalization(x, g(style), b(style))
    y = n + sin(a * n)^2 / a;  v = QuantizeLinear(y)   ->  QLinearConv(v, ...)

For one utterance every step after the norm's statistics is a fixed function of channel and
value, and u has only 256 values. So `v[c, t] = table[c, u[c, t]]` with a [C, 256] table that
the same ops compute from the 256 levels of u, after the per-channel mean and variance of x.
Per element that is a Cast and a GatherElements instead of the norm, the Snake's five passes
(one of them ORT's single-threaded Sin) and a QuantizeLinear. The statistics are computed so
that float32 cannot drift (an exact integer sum; squares around the rounded mean), so the
codes match a float64 computation, which ORT's own InstanceNormalization does not on silent
channels of long inputs.

With `float_inputs`, chains whose norm reads a float tensor (the first AdaIN + Snake of each
resblock pair, fed by the residual sum) get a table too: the plain norm of x is quantized to
8 bits over +-`normalized_range` standard deviations (a fixed per-tensor scale suits it: every
channel of a norm's output has unit variance), and the table maps those codes. That adds one
rounding where the model had none, so it is approximate: on Kokoro it moved the log-mel
distance to FP32 by +0.005 at a range of 12 (6: +0.013, 8: +0.006, 16: +0.008, 24: +0.011).

Matched only when it is certain: per-tensor uint8 quantization at the chain's end (and at its
start, for the exact form), a rank-3 InstanceNormalization reading the dequantized u (directly
or through a Squeeze that the chain undoes with the same Unsqueeze), and a chain of element-wise
ops whose other inputs are constants with no time extent. Everything else is left alone and
counted in `skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto
from pydantic import Field

from kokoro_opt.graph.edit import GraphIndex, attrs, clone, finalize, opset_version
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult
from kokoro_opt.passes.verify import known_shapes

ELEMENTWISE = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Sin", "Cos", "Reciprocal", "Neg", "Abs", "Exp", "Tanh"}
    | {"Sigmoid", "Relu", "LeakyRelu", "Sqrt"}
)
LEVELS = 256


class Config(PassConfig):
    float_inputs: bool = False
    """Also chains whose norm reads a float tensor: the normalized input is first quantized to
    8 bits over +-`normalized_range` standard deviations (approximate, unlike the rest)."""
    normalized_range: float = Field(default=12.0, gt=0.0)


@dataclass
class _Chain:
    """One matched site: u (uint8) -> DQ -> [Squeeze] -> norm -> body -> [Unsqueeze] -> Q."""

    u: str | None
    u_rank: int
    dq: onnx.NodeProto | None
    norm: onnx.NodeProto
    body: list[onnx.NodeProto]
    unsqueeze: onnx.NodeProto | None
    quant: onnx.NodeProto


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Replace every matched chain of a copy of `model` with a lookup table."""
    work = clone(model)
    index = GraphIndex(work.graph)
    opset = opset_version(work)
    norms = [n for n in work.graph.node if n.op_type == "InstanceNormalization"]
    skipped: dict[str, int] = {}
    rewritten = {"int8": 0, "float": 0}
    if opset < 15:  # Shape's start/end (the time length) arrived in opset 15
        skipped["opset below 15"] = len(norms)
        norms = []
    # Shapes of the norm inputs and of what feeds them up to two nodes back (Squeeze, then the
    # DequantizeLinear's codes); a probe run fills in what ONNX shape inference cannot see.
    probe: list[str] = []
    for norm in norms:
        name = norm.input[0]
        for _ in range(3):
            probe.append(name)
            producer = index.producer.get(name)
            if producer is None or not producer.input:
                break
            name = producer.input[0]
    shapes = known_shapes(work, probe, threads=ctx.threads) if norms else {}
    for i, norm in enumerate(norms):
        ctx.report("Lookup tables", i + 1, len(norms))
        chain = _match(index, norm, shapes, config)
        if isinstance(chain, str):
            skipped[chain] = skipped.get(chain, 0) + 1
            continue
        _replace(index, chain, config)
        rewritten["float" if chain.dq is None else "int8"] += 1
    removed = finalize(work.graph) if any(rewritten.values()) else {"nodes_removed": 0}
    details: dict[str, Any] = {
        "rewritten": sum(rewritten.values()),
        "from_int8": rewritten["int8"],
        "from_float": rewritten["float"],
        "skipped": skipped,
        "nodes_before": len(model.graph.node),
        "nodes_after": len(work.graph.node),
        "dead_nodes_removed": removed["nodes_removed"],
    }
    return PassResult(work, details)


def _match(
    index: GraphIndex, norm: onnx.NodeProto, shapes: dict[str, list[Any]], config: Config
) -> _Chain | str:
    """The chain around `norm`, or why it does not qualify."""
    x = norm.input[0]
    shape = shapes.get(x) or []
    if len(shape) != 3 or shape[0] != 1:  # the table is per channel of one sample
        return "norm input is not [1, C, T]"
    producer = index.producer.get(x)
    squeeze = None
    if producer is not None and producer.op_type == "Squeeze":
        squeeze = producer
        producer = index.producer.get(producer.input[0])
    dq = producer if producer is not None and producer.op_type == "DequantizeLinear" else None
    if dq is None and not config.float_inputs:
        return "norm input is not dequantized"
    if dq is not None and not _uint8_per_tensor(index, dq):
        return "not per-tensor uint8"
    u_rank: int | None = 3
    if dq is not None:
        u_rank = len(shapes.get(dq.input[0]) or []) or None
    if dq is None:
        squeeze = None  # the float path quantizes the [1, C, T] norm input itself
    elif squeeze is not None:
        axes = _axes(index, squeeze)
        if axes is None or u_rank is None or len(axes) != u_rank - 3:
            return "squeeze axes unknown"
        if not all(1 < a % u_rank < u_rank - 1 for a in axes):
            return "squeeze moves the time axis"

    # Walk the element-wise body from the norm's output to exactly one QuantizeLinear.
    inside = {norm.output[0]}
    body: list[onnx.NodeProto] = []
    unsqueeze = quant = None
    frontier = [norm.output[0]]
    while frontier:
        name = frontier.pop()
        if index.is_output(name):
            return "chain tensor is a graph output"
        for user in index.users(name):
            if user in body or user is unsqueeze or user is quant:
                continue
            if user.op_type in ELEMENTWISE and user.domain in ("", "ai.onnx"):
                body.append(user)
                inside.update(user.output)
                frontier.extend(user.output)
            elif user.op_type == "Unsqueeze" and unsqueeze is None and (squeeze or dq is None):
                unsqueeze = user
                frontier.extend(user.output)
            elif user.op_type == "QuantizeLinear" and quant is None:
                quant = user
            else:
                return f"chain reaches {user.op_type}"
    if quant is None:
        return "chain ends in no QuantizeLinear"
    if not _uint8_per_tensor(index, quant):
        return "not per-tensor uint8"
    if dq is not None and (squeeze is None) != (unsqueeze is None):
        return "squeeze is not undone"
    if unsqueeze is not None and quant.input[0] != unsqueeze.output[0]:
        return "unsqueeze does not feed the quantizer"
    if squeeze is not None and _axes(index, unsqueeze) != _axes(index, squeeze):  # type: ignore[arg-type]
        return "unsqueeze does not undo the squeeze"
    end = unsqueeze.input[0] if unsqueeze is not None else quant.input[0]
    if end not in inside:
        return "chain does not reach the quantizer"
    for node in body:
        for name in node.input:
            if name and name not in inside and not _per_channel_constant(index, name):
                return "chain reads a non-constant tensor"
    ordered = _ordered(body, inside, norm.output[0])
    if ordered is None:
        return "chain has a cycle"
    u = dq.input[0] if dq is not None else None
    return _Chain(u, u_rank or 3, dq, norm, ordered, unsqueeze, quant)


def _replace(index: GraphIndex, chain: _Chain, config: Config) -> None:
    """The norm's output for the 256 codes, the chain on that [1, C, 256] table, a gather."""
    norm, base = chain.norm, chain.norm.name
    per_channel = index.add_initializer(f"{base}/per_channel", np.array([1, -1, 1], np.int64))
    u = str(chain.u)
    if chain.dq is None:
        normed, u = _float_codes(index, chain, config.normalized_range)
    codes_i = index.add_node("Cast", [u], 1, name=f"{base}/index", to=TensorProto.INT32).output[0]
    if chain.dq is not None:
        normed = _dequantized_codes(index, chain, per_channel, codes_i)
    gamma = index.add_node("Reshape", [norm.input[1], per_channel], 1, name=f"{base}/gamma")
    beta = index.add_node("Reshape", [norm.input[2], per_channel], 1, name=f"{base}/beta")
    scaled = index.add_node("Mul", [normed, gamma.output[0]], 1, name=f"{base}/scaled")
    table_in = index.add_node("Add", [scaled.output[0], beta.output[0]], 1, name=f"{base}/affine")

    # The chain itself, cloned onto the table. On the float path the gather runs in the norm's
    # [1, C, T] layout and the chain's Unsqueeze (if any) follows it.
    renamed = {norm.output[0]: table_in.output[0]}
    after_gather = [chain.unsqueeze] if chain.unsqueeze is not None and chain.dq is None else []
    on_table = [n for n in [*chain.body, chain.unsqueeze, chain.quant] if n is not None]
    for node in [n for n in on_table if n not in after_gather]:
        inputs = [renamed.get(name, name) for name in node.input]
        copy = index.add_node(
            node.op_type, inputs, len(node.output), name=f"{node.name}/table", **attrs(node)
        )
        renamed.update(zip(node.output, copy.output, strict=True))
    table = renamed[after_gather[0].input[0] if after_gather else chain.quant.output[0]]
    if after_gather:  # Unsqueeze's input is the last body node; quantize the table there
        q = chain.quant
        table = index.add_node(
            "QuantizeLinear", [table, *q.input[1:]], 1, name=f"{q.name}/table", **attrs(q)
        ).output[0]

    out = index.add_node(
        "GatherElements",
        [table, codes_i],
        1,
        name=f"{base}/lookup",
        axis=chain.u_rank - 1,
    ).output[0]
    for node in after_gather:
        out = index.add_node(
            node.op_type, [out, *node.input[1:]], 1, name=f"{node.name}/codes", **attrs(node)
        ).output[0]
    index.replace_uses(chain.quant.output[0], out)


def _dequantized_codes(index: GraphIndex, chain: _Chain, per_channel: str, codes_i: str) -> str:
    """[1, C, 256]: the norm's output (before its affine) for each code of the uint8 input."""
    base, u = chain.norm.name, str(chain.u)
    eps = float(attrs(chain.norm).get("epsilon", 1e-5))
    scale = float(index.const(chain.dq.input[1]).reshape(-1)[0])  # type: ignore[union-attr]

    # Statistics of the codes. The mean from an exact integer sum; the variance from squares
    # around that mean rounded to a code (a DequantizeLinear with a per-channel zero point does
    # the subtraction in the same pass). E[u^2] - E[u]^2 in float32 lost ~0.1 code^2 over 40k
    # frames and wrecked near-silent channels. The zero point cancels in (u - mean); with
    # x = scale * (u - zero), var_x + eps = scale^2 * (var_u + eps / scale^2).
    total = _sum_last(index, codes_i, f"{base}/total")
    total_f = index.add_node("Cast", [total], 1, name=f"{base}/total_f", to=TensorProto.FLOAT)
    length = index.add_node("Shape", [u], 1, name=f"{base}/length", start=-1)
    length_f = index.add_node(
        "Cast", [length.output[0]], 1, name=f"{base}/length_f", to=TensorProto.FLOAT
    )
    mean_u = index.add_node(
        "Div", [total_f.output[0], length_f.output[0]], 1, name=f"{base}/mean_u"
    ).output[0]
    lowest = index.add_initializer(f"{base}/lowest", np.array(0.0, np.float32))
    highest = index.add_initializer(f"{base}/highest", np.array(LEVELS - 1, np.float32))
    nearest = index.add_node("Round", [mean_u], 1, name=f"{base}/nearest")
    nearest = index.add_node(
        "Clip", [nearest.output[0], lowest, highest], 1, name=f"{base}/nearest_code"
    )
    flat = index.add_initializer(f"{base}/flat", np.array([-1], np.int64))
    nearest_c = index.add_node("Reshape", [nearest.output[0], flat], 1, name=f"{base}/nearest_c")
    zero_point = index.add_node(
        "Cast", [nearest_c.output[0]], 1, name=f"{base}/zero_point", to=TensorProto.UINT8
    )
    ones = _filled_like(index, zero_point.output[0], 1.0, f"{base}/ones")
    around = index.add_node(
        "DequantizeLinear",
        [u, ones, zero_point.output[0]],
        1,
        name=f"{base}/around_mean",
        axis=1,
    )
    # Mul + ReduceSum, not ReduceSumSquare: ORT's ReduceSumSquare accumulates one float at a
    # time (relative error 3e-4 over 40k frames), its ReduceSum in vector lanes (1e-7), and
    # the two cost the same.
    square = index.add_node("Mul", [around.output[0], around.output[0]], 1, name=f"{base}/square")
    sum_sq = _sum_last(index, square.output[0], f"{base}/sum_sq")
    mean_sq = index.add_node("Div", [sum_sq, length_f.output[0]], 1, name=f"{base}/mean_sq")
    offset = index.add_node("Sub", [mean_u, nearest.output[0]], 1, name=f"{base}/offset")
    offset_sq = index.add_node(
        "Mul", [offset.output[0], offset.output[0]], 1, name=f"{base}/offset_sq"
    )
    diff = index.add_node("Sub", [mean_sq.output[0], offset_sq.output[0]], 1, name=f"{base}/diff")
    var_u = index.add_node("Relu", [diff.output[0]], 1, name=f"{base}/var_u")  # rounding guard
    eps_u = index.add_initializer(f"{base}/eps_u", np.array(eps / scale**2, np.float32))
    var_eps = index.add_node("Add", [var_u.output[0], eps_u], 1, name=f"{base}/var_eps")
    std_u = index.add_node("Sqrt", [var_eps.output[0]], 1, name=f"{base}/std_u")
    mean_c = index.add_node("Reshape", [mean_u, per_channel], 1, name=f"{base}/mean_c")
    std_c = index.add_node("Reshape", [std_u.output[0], per_channel], 1, name=f"{base}/std_c")

    codes = index.add_initializer(
        f"{base}/codes", np.arange(LEVELS, dtype=np.float32).reshape(1, 1, LEVELS)
    )
    centred = index.add_node("Sub", [codes, mean_c.output[0]], 1, name=f"{base}/centred")
    return index.add_node(
        "Div", [centred.output[0], std_c.output[0]], 1, name=f"{base}/normed"
    ).output[0]


def _float_codes(index: GraphIndex, chain: _Chain, normalized_range: float) -> tuple[str, str]:
    """Quantize the plain norm of the float input (8 bits over +-range std); returns the
    [1, 1, 256] normalized value of each code and the codes."""
    base, norm = chain.norm.name, chain.norm
    step = normalized_range / (LEVELS / 2)
    x = norm.input[0]
    ones = _filled_like(index, norm.input[1], 1.0, f"{base}/ones")
    zeros = _filled_like(index, norm.input[1], 0.0, f"{base}/zeros")
    plain = index.add_node(
        "InstanceNormalization",
        [x, ones, zeros],
        1,
        name=f"{base}/plain",
        epsilon=float(attrs(norm).get("epsilon", 1e-5)),
    )
    step_name = index.add_initializer(f"{base}/step", np.array(step, np.float32))
    middle = index.add_initializer(f"{base}/middle", np.array(LEVELS // 2, np.uint8))
    codes = index.add_node(
        "QuantizeLinear", [plain.output[0], step_name, middle], 1, name=f"{base}/codes"
    )
    values = step * (np.arange(LEVELS, dtype=np.float32) - LEVELS // 2)
    normed = index.add_initializer(f"{base}/normed", values.reshape(1, 1, LEVELS))
    return normed, codes.output[0]


def _filled_like(index: GraphIndex, like: str, value: float, name: str) -> str:
    """A float tensor of `like`'s shape (a per-channel vector here) filled with `value`."""
    shape = index.add_node("Shape", [like], 1, name=f"{name}/shape")
    return index.add_node(
        "ConstantOfShape",
        [shape.output[0]],
        1,
        name=name,
        value=onnx.numpy_helper.from_array(np.full(1, value, np.float32)),
    ).output[0]


def _sum_last(index: GraphIndex, x: str, name: str) -> str:
    """ReduceSum over the last axis, keeping dims (axes an input: opset 13 and later)."""
    axes = index.add_initializer(f"{name}/axes", np.array([-1], np.int64))
    return index.add_node("ReduceSum", [x, axes], 1, name=name, keepdims=1).output[0]


def _uint8_per_tensor(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """Scalar scale and a uint8 zero point (the 256 levels index the table directly)."""
    if len(node.input) < 3:
        return False
    scale, zero = index.const(node.input[1]), index.const(node.input[2])
    if scale is None or zero is None:
        return False
    return scale.size == 1 and zero.size == 1 and zero.dtype == np.uint8


def _axes(index: GraphIndex, node: onnx.NodeProto) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        value = index.const(node.input[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    found = attrs(node).get("axes")
    return None if found is None else [int(v) for v in found]


def _per_channel_constant(index: GraphIndex, name: str) -> bool:
    """A constant (possibly computed from constants) with no extent along time (last axis)."""
    shape = _constant_shape(index, name, depth=0)
    return shape is not None and len(shape) <= 3 and (not shape or shape[-1] == 1)


def _constant_shape(index: GraphIndex, name: str, depth: int) -> tuple[int, ...] | None:
    """The shape of `name` when it is a constant or element-wise ops of constants (such as the
    export's `Reciprocal(alpha)`), else None."""
    value = index.const(name)
    if value is not None:
        return value.shape
    node = index.producer.get(name)
    if node is None or node.op_type not in ELEMENTWISE or depth > 4:
        return None
    shapes = [_constant_shape(index, i, depth + 1) for i in node.input if i]
    if any(shape is None for shape in shapes):
        return None
    return tuple(np.broadcast_shapes(*shapes))  # type: ignore[arg-type]


def _ordered(
    body: list[onnx.NodeProto], inside: set[str], start: str
) -> list[onnx.NodeProto] | None:
    """`body` in an order where each node comes after the body nodes it reads."""
    ready = {start}
    pending, ordered = list(body), []
    while pending:
        node = next(
            (n for n in pending if all(i in ready or i not in inside for i in n.input)), None
        )
        if node is None:
            return None
        ordered.append(node)
        ready.update(node.output)
        pending.remove(node)
    return ordered
