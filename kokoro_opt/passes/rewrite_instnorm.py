"""Hot-spot rewrite: decomposed (adaptive) instance norm -> one InstanceNormalization op.

Kokoro's decoder and generator normalize with AdaIN, `(1 + gamma(style)) * IN(x) + beta(style)`,
and the export spells the instance norm out element by element:

    m = ReduceMean(x, time); d = x - m; v = ReduceMean(d * d, time)
    n = d / Sqrt(v + eps);   y = n * s + b        (s, b: per-channel [1, C, 1], from the style)

That is seven passes over a [1, C, T] tensor (T up to ~130k samples in the generator). ONNX's
`InstanceNormalization(x, scale[C], bias[C], epsilon)` does the same in one kernel, and ORT
accepts run-time scale and bias, so the style-dependent affine folds in too:
`y = InstanceNormalization(x, Reshape(s, [-1]), Reshape(b, [-1]))`.

Where the export shares one normalized `n` between several AdaINs with different styles
(Kokoro's multi-receptive-field resblocks 3-5), each gets its own InstanceNormalization: one
cheap op each instead of one shared decomposition plus two passes each.

Matched only when the layout is certain: a rank-3 input reduced over its last axis, batch 1
(InstanceNormalization's scale is per channel, not per sample), a scalar epsilon. Anything else
is left as it was and counted in `details["skipped"]`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from kokoro_opt.graph.edit import GraphIndex, clone, finalize
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult
from kokoro_opt.passes.verify import known_shapes


class Config(PassConfig):
    fold_affine: bool = True
    """Fold the per-channel `* s + b` that follows the norm into InstanceNormalization."""


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Replace every matched decomposed instance norm of a copy of `model`."""
    work = clone(model)
    index = GraphIndex(work.graph)
    found_all = [(d, _match_norm(index, d)) for d in work.graph.node if d.op_type == "Div"]
    found_all = [(d, f) for d, f in found_all if f is not None]
    # Shape inference over the whole graph costs seconds; skip it when nothing matched (such as
    # on a graph these rewrites already ran on).
    shapes = (
        known_shapes(work, [f[0] for _, f in found_all], threads=ctx.threads) if found_all else {}
    )
    matched = 0
    affine = 0
    skipped: dict[str, int] = {}
    flat = index.add_initializer("instnorm_flat", np.array([-1], np.int64))
    for i, (div, found) in enumerate(found_all):
        ctx.report("rewrite instnorm", i + 1, len(found_all))
        x, eps = found
        why = _layout_problem(shapes.get(x))
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        channels = shapes[x][1]
        users = index.users(div.output[0])
        plain_users = []
        for user in users:
            fold = _match_affine(index, shapes, user, div.output[0]) if config.fold_affine else None
            if fold is None:
                plain_users.append(user)
                continue
            scale, bias, out = fold
            scale_c = index.add_node("Reshape", [scale, flat], 1, name=f"{user.name}/scale_c")
            bias_c = index.add_node("Reshape", [bias, flat], 1, name=f"{user.name}/bias_c")
            index.add_node(
                "InstanceNormalization",
                [x, scale_c.output[0], bias_c.output[0]],
                [out],
                name=f"{user.name}/InstanceNormalization",
                epsilon=eps,
            )
            _retire(index, out)
            affine += 1
        if plain_users or index.is_output(div.output[0]):
            if not isinstance(channels, int):
                skipped["channel count unknown"] = skipped.get("channel count unknown", 0) + 1
                continue
            ones = index.add_initializer(f"{div.name}/ones", np.ones(channels, np.float32))
            zeros = index.add_initializer(f"{div.name}/zeros", np.zeros(channels, np.float32))
            n_out = index.fresh(f"{div.name}/in_out")
            index.add_node(
                "InstanceNormalization",
                [x, ones, zeros],
                [n_out],
                name=f"{div.name}/InstanceNormalization",
                epsilon=eps,
            )
            index.replace_uses(div.output[0], n_out)
        matched += 1
    removed = finalize(work.graph)
    details: dict[str, Any] = {
        "matched": matched,
        "rewritten": matched,  # the count every rewrite reports under this key
        "affine_folded": affine,
        "skipped": skipped,
        "nodes_before": len(model.graph.node),
        "nodes_after": len(work.graph.node),
        "dead_nodes_removed": removed["nodes_removed"],
    }
    return PassResult(work, details)


def _match_norm(index: GraphIndex, div: onnx.NodeProto) -> tuple[str, float] | None:
    """Match `Div(Sub(x, ReduceMean(x)), Sqrt(Add(ReduceMean(sq(Sub)), eps)))`."""
    sub = index.producer.get(div.input[0])
    sqrt = index.producer.get(div.input[1])
    if sub is None or sqrt is None or sub.op_type != "Sub" or sqrt.op_type != "Sqrt":
        return None
    x, mean_name = sub.input[0], sub.input[1]
    mean = index.producer.get(mean_name)
    if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != x:
        return None
    add = index.producer.get(sqrt.input[0])
    if add is None or add.op_type != "Add":
        return None
    var_name, eps_name = add.input[0], add.input[1]
    eps = index.const(eps_name)
    if eps is None:
        var_name, eps_name = add.input[1], add.input[0]
        eps = index.const(eps_name)
    if eps is None or eps.size != 1:
        return None
    var = index.producer.get(var_name)
    if var is None or var.op_type != "ReduceMean":
        return None
    sq = index.producer.get(var.input[0])
    if sq is None or not _is_square_of(index, sq, sub.output[0]):
        return None
    if not (_last_axis_mean(index, mean) and _last_axis_mean(index, var)):
        return None
    return x, float(eps.reshape(-1)[0])


def _is_square_of(index: GraphIndex, node: onnx.NodeProto, name: str) -> bool:
    if node.op_type == "Mul":
        return list(node.input) == [name, name]
    if node.op_type == "Pow" and node.input[0] == name:
        power = index.const(node.input[1])
        return power is not None and power.size == 1 and float(power.reshape(-1)[0]) == 2.0
    return False


def _last_axis_mean(index: GraphIndex, node: onnx.NodeProto) -> bool:
    keepdims = 1
    axes = None
    for a in node.attribute:
        if a.name == "keepdims":
            keepdims = a.i
        if a.name == "axes":
            axes = list(a.ints)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = index.const(node.input[1])
        axes = None if value is None else [int(v) for v in value.reshape(-1)]
    return keepdims == 1 and axes is not None and len(axes) == 1 and axes[0] in (2, -1)


def _layout_problem(shape: list[Any] | None) -> str | None:
    if shape is None:
        return "input shape unknown"
    if len(shape) != 3:
        return "input is not [N, C, T]"
    if shape[0] != 1:
        return "batch is not 1"
    return None


def _match_affine(
    index: GraphIndex, shapes: dict[str, list[Any]], mul: onnx.NodeProto, norm: str
) -> tuple[str, str, str] | None:
    """Match `Add(Mul(norm, s), b)` with s and b per-channel [1, C, 1]; return (s, b, out)."""
    if mul.op_type != "Mul" or norm not in mul.input or index.is_output(mul.output[0]):
        return None
    scale = mul.input[1] if mul.input[0] == norm else mul.input[0]
    add = index.only_consumer(mul.output[0])
    if add is None or add.op_type != "Add":
        return None
    bias = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
    if not (_per_channel(shapes.get(scale)) and _per_channel(shapes.get(bias))):
        return None
    if shapes.get(scale) != shapes.get(bias):
        return None
    return scale, bias, add.output[0]


def _per_channel(shape: list[Any] | None) -> bool:
    return shape is not None and len(shape) == 3 and shape[0] == 1 and shape[2] == 1


def _retire(index: GraphIndex, out: str) -> None:
    """The old Add producing `out` is now dead: drop it so `out` has one producer."""
    old = [n for n in index.graph.node if out in n.output and n.op_type == "Add"]
    for node in old:
        node.output[list(node.output).index(out)] = index.fresh(f"{out}_retired")
