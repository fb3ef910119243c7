"""Hot-spot rewrite: the Snake activation `y = x + b * sin(a * x)^2` (b = 1 / a).

Kokoro's generator applies Snake 48 times to [1, C, T] tensors with T up to ~130k; the export
spells it `Mul(a, x) -> Sin -> Pow(2) -> Mul(b) -> Add(x)`: five passes over the tensor, and
ORT's Sin is scalar code (about 9x the cost of a Mul here). Forms:

- `fold` (default): with u = a * x, y = (u + sin(u)^2) / a.
  * When x comes from an InstanceNormalization (see `rewrite_instnorm`) that only feeds this
    Snake, a is folded into its scale and bias (two tiny [C] multiplies), so u costs nothing;
  * `sin^2` is `Mul(s, s)` instead of `Pow(s, 2)`;
  * the final `/ a` is per input channel, so it is folded into the weights of the Conv(s) that
    read y (`W[:, c, :] /= a[c]`, exact with zero padding); if anything else reads y, an
    explicit Mul is kept.
  One Sin plus two cheap passes instead of one Sin plus four (plus the AdaIN affine).
- `cos`: y = x + c - c * cos(2 a x), c = b / 2 (one Cos instead of Sin + Pow). Same pass count;
  it cancels catastrophically when |a x| is small (Kokoro has |a| down to 1e-4), so it is kept
  only as a measured alternative.
- `square`: only `Pow(s, 2)` -> `Mul(s, s)`.

A Snake is matched only with per-channel constant a and b of the same shape; a = 0 is left
alone (1/a). `details` counts what was rewritten and how (`in_norm`: a folded into the norm;
`into_conv`: 1/a folded into Conv weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import onnx

from kokoro_opt.graph.edit import GraphIndex, attrs, clone, finalize
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult


class Form(str, Enum):
    fold = "fold"
    cos = "cos"
    square = "square"


class Config(PassConfig):
    form: Form = Form.fold
    """`fold` (fastest measured), `cos` (one Cos, numerically weaker), `square` (Pow -> Mul)."""
    fold_into_norm: bool = True
    """`fold` only: absorb a into a preceding InstanceNormalization's scale and bias."""
    fold_into_conv: bool = True
    """`fold` only: absorb 1/a into the weights of the Convs that read the Snake's output."""


@dataclass
class _Snake:
    x: str
    a: np.ndarray
    b: np.ndarray
    mul_a: onnx.NodeProto
    sin: onnx.NodeProto
    square: onnx.NodeProto
    mul_b: onnx.NodeProto
    add: onnx.NodeProto

    @property
    def out(self) -> str:
        return self.add.output[0]


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Rewrite every matched Snake of a copy of `model` into the chosen form."""
    work = clone(model)
    index = GraphIndex(work.graph)
    snakes = [s for s in (_match(index, n) for n in list(work.graph.node)) if s is not None]
    counts = {"matched": len(snakes), "rewritten": 0, "in_norm": 0, "into_conv": 0}
    skipped: dict[str, int] = {}
    scaled_weights: dict[tuple[str, bytes], str] = {}
    for i, snake in enumerate(snakes):
        ctx.report(f"rewrite snake ({config.form.value})", i + 1, len(snakes))
        if config.form is Form.square:
            _square(index, snake)
        elif config.form is Form.cos:
            _cos(index, snake)
        else:
            why = _fold(index, snake, config, counts, scaled_weights)
            if why:
                skipped[why] = skipped.get(why, 0) + 1
                continue
        counts["rewritten"] += 1
    removed = finalize(work.graph)
    details: dict[str, Any] = {
        "form": config.form.value,
        **counts,
        "skipped": skipped,
        "nodes_before": len(model.graph.node),
        "nodes_after": len(work.graph.node),
        "dead_nodes_removed": removed["nodes_removed"],
    }
    return PassResult(work, details)


# -- matching ----------------------------------------------------------------------------------


def _match(index: GraphIndex, add: onnx.NodeProto) -> _Snake | None:
    """Match `Add(x, Mul(b, Pow(Sin(Mul(a, x)), 2)))` (operand order free; Div(., a) = Mul(b))."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    for x, term in (add.input, add.input[::-1]):
        mul_b = index.producer.get(term)
        if mul_b is None or mul_b.op_type not in ("Mul", "Div") or index.is_output(term):
            continue
        if index.only_consumer(term) is not add:
            continue
        for sq_name, b_name in _operand_pairs(mul_b):
            b = index.const(b_name)
            square = index.producer.get(sq_name)
            if b is None or square is None or index.only_consumer(sq_name) is not mul_b:
                continue
            sin_name = _squared(index, square)
            sin = index.producer.get(sin_name) if sin_name else None
            if sin is None or sin.op_type != "Sin" or len(index.users(sin_name)) != 1:
                continue
            mul_a = index.producer.get(sin.input[0])
            if mul_a is None or mul_a.op_type != "Mul" or x not in mul_a.input:
                continue
            if index.only_consumer(mul_a.output[0]) is not sin:
                continue
            a_name = mul_a.input[1] if mul_a.input[0] == x else mul_a.input[0]
            a = index.const(a_name)
            if a is None:
                continue
            b = 1.0 / b if mul_b.op_type == "Div" else b
            if not _per_channel_pair(a, b):
                continue
            return _Snake(
                x, a.astype(np.float32), b.astype(np.float32), mul_a, sin, square, mul_b, add
            )
    return None


def _operand_pairs(node: onnx.NodeProto) -> list[tuple[str, str]]:
    if node.op_type == "Div":
        return [(node.input[0], node.input[1])]
    return [(node.input[0], node.input[1]), (node.input[1], node.input[0])]


def _squared(index: GraphIndex, node: onnx.NodeProto) -> str | None:
    if node.op_type == "Mul" and node.input[0] == node.input[1]:
        return node.input[0]
    if node.op_type == "Pow":
        power = index.const(node.input[1])
        if power is not None and power.size == 1 and float(power.reshape(-1)[0]) == 2.0:
            return node.input[0]
    return None


def _per_channel_pair(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b: the same per-channel shape [1, C, 1] (or [C, 1]), finite."""
    if a.shape != b.shape or a.ndim < 2 or a.shape[-1] != 1:
        return False
    if any(d != 1 for d in a.shape[:-2]):
        return False
    return bool(np.all(np.isfinite(a)) and np.all(np.isfinite(b)))


# -- forms -------------------------------------------------------------------------------------


def _square(index: GraphIndex, s: _Snake) -> None:
    sin_out = s.sin.output[0]
    node = index.add_node(
        "Mul",
        [sin_out, sin_out],
        [index.fresh(f"{s.square.name}_mul")],
        name=f"{s.square.name}/square",
    )
    index.replace_uses(s.square.output[0], node.output[0])


def _cos(index: GraphIndex, s: _Snake) -> None:
    two_a = index.add_initializer(f"{s.mul_a.name}_2a", 2.0 * s.a)
    c = (s.b / 2.0).astype(np.float32)
    neg_c = index.add_initializer(f"{s.mul_b.name}_neg_c", -c)
    pos_c = index.add_initializer(f"{s.mul_b.name}_c", c)
    name = s.add.name
    u = index.add_node("Mul", [s.x, two_a], 1, name=f"{name}/2ax").output[0]
    cos = index.add_node("Cos", [u], 1, name=f"{name}/cos").output[0]
    t = index.add_node("Mul", [cos, neg_c], 1, name=f"{name}/neg_c_cos").output[0]
    v = index.add_node("Add", [s.x, t], 1, name=f"{name}/x_plus").output[0]
    y = index.add_node("Add", [v, pos_c], 1, name=f"{name}/plus_c").output[0]
    index.replace_uses(s.out, y)


def _fold(
    index: GraphIndex,
    s: _Snake,
    config: Config,
    counts: dict[str, int],
    scaled: dict[tuple[str, bytes], str],
) -> str | None:
    a = s.a
    if np.any(a == 0):
        return "alpha has zeros"
    k = a * s.b  # 1 when b is exactly 1/a; float rounding of the export makes it 1 +- 1e-7
    exact = bool(np.all(np.abs(k - 1.0) < 1e-5))
    name = s.add.name
    flat_a = a.reshape(-1)
    norm = index.producer.get(s.x)
    users_of_x = index.users(s.x)
    can_fold_norm = (
        config.fold_into_norm
        and norm is not None
        and norm.op_type == "InstanceNormalization"
        and not index.is_output(s.x)
        and {id(n) for n in users_of_x} == {id(s.mul_a), id(s.add)}
        and a.shape[-2] > 1
    )
    if can_fold_norm:
        a_c = index.add_initializer(f"{name}/alpha_c", flat_a)
        scale = index.add_node("Mul", [norm.input[1], a_c], 1, name=f"{name}/scale_a").output[0]
        bias = index.add_node("Mul", [norm.input[2], a_c], 1, name=f"{name}/bias_a").output[0]
        u = index.add_node(
            "InstanceNormalization",
            [norm.input[0], scale, bias],
            1,
            name=f"{name}/InstanceNormalization",
            **attrs(norm),
        ).output[0]
        counts["in_norm"] += 1
    else:
        a_name = index.add_initializer(f"{name}/alpha", a)
        u = index.add_node("Mul", [s.x, a_name], 1, name=f"{name}/ax").output[0]
    sin = index.add_node("Sin", [u], 1, name=f"{name}/Sin").output[0]
    sq = index.add_node("Mul", [sin, sin], 1, name=f"{name}/sin2").output[0]
    if not exact:
        k_name = index.add_initializer(f"{name}/ab", k.astype(np.float32))
        sq = index.add_node("Mul", [sq, k_name], 1, name=f"{name}/ab_sin2").output[0]
    v = index.add_node("Add", [u, sq], 1, name=f"{name}/u_plus").output[0]
    inv_a = (1.0 / flat_a).astype(np.float32)
    readers = index.users(s.out)
    if (
        config.fold_into_conv
        and readers
        and not index.is_output(s.out)
        and all(_conv_reads_scalable(index, r, s.out, len(inv_a)) for r in readers)
    ):
        for conv in readers:
            weight = conv.input[1]
            key = (weight, inv_a.tobytes())
            if key not in scaled:
                w = index.const(weight)
                assert w is not None  # checked by _conv_reads_scalable
                shape = [1, len(inv_a)] + [1] * (w.ndim - 2)
                scaled[key] = index.add_initializer(
                    f"{weight}_snake_scaled", (w * inv_a.reshape(shape)).astype(w.dtype)
                )
            index.set_input(conv, 1, scaled[key])
            index.set_input(conv, 0, v)
        counts["into_conv"] += 1
    else:
        inv = index.add_initializer(f"{name}/inv_alpha", (1.0 / a).astype(np.float32))
        y = index.add_node("Mul", [v, inv], 1, name=f"{name}/div_a").output[0]
        index.replace_uses(s.out, y)
    return None


def _conv_reads_scalable(index: GraphIndex, node: onnx.NodeProto, name: str, channels: int) -> bool:
    """A plain Conv (group 1) that reads `name` as its data input, with constant weights whose
    input-channel axis has `channels` entries."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return False
    if node.input[0] != name or name in node.input[1:]:
        return False
    if int(attrs(node).get("group", 1)) != 1:
        return False
    w = index.const(node.input[1])
    return w is not None and w.ndim >= 3 and w.shape[1] == channels and w.dtype == np.float32
