"""Rewrite ONNX Runtime's dynamic-quantization patterns back to float.

The kokoro-onnx INT8 export (and anything made by `onnxruntime.quantization.quantize_dynamic`)
holds four patterns; each becomes the float op it came from, with weights dequantized exactly:

(a) `DynamicQuantizeLinear(x) -> MatMulInteger(xq, Wq, xzp, wzp) -> Cast -> Mul(s)`, where
    `s = Mul(x_scale, w_scale)`, becomes `MatMul(x, (Wq - wzp) * w_scale)` (per column).
(b) `DynamicQuantizeLinear(x) -> ConvInteger(xq, Wq, xzp, wzp) [-> Add(qbias)] -> Cast ->
    Mul(s)` becomes `Conv(x, (Wq - wzp) * w_scale, bias)` with the same attributes. The bias is
    the float tensor behind the quantized-bias subgraph `Reshape(Cast(Floor(Div(b, s))))`
    (older ORT), or the `Add(Reshape(b))` that follows the Mul (newer ORT).
(c) `DynamicQuantizeLSTM` (com.microsoft) becomes ONNX `LSTM`: W [D, I, 4H] -> [D, 4H, I] and
    R [D, H, 4H] -> [D, 4H, H], dequantized per direction (or per channel).
(d) `Gather(Tq, idx) -> DequantizeLinear` becomes `Gather(T, idx)` on the float table; a
    `MatMulInteger` that reads the quantized Gather output directly reads the float one.

The activation side needs no data: the float input of each `DynamicQuantizeLinear` is still in
the graph. Node names are kept (the `_quant` suffix ORT adds is dropped), dead nodes,
initializers and value_info are removed, and opset imports no node uses are dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kokoro_opt.errors import ModelFormatError

INTEGER_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLinear",
        "DynamicQuantizeLSTM",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
"""Op types that must not survive a restore."""

_INT_TYPES = (np.int8, np.uint8)
_LSTM_ATTRS = (
    "activation_alpha",
    "activation_beta",
    "activations",
    "clip",
    "direction",
    "hidden_size",
    "input_forget",
    "layout",
)


def restore_fp32(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Return a float copy of a dynamic-quantized model and a report of what was rewritten.

    The input model is not modified. Raises `ModelFormatError` when integer ops remain that do
    not match a known pattern (the result would not be a float model).
    """
    restorer = _Restorer(model)
    restorer.run()
    out = restorer.build()
    leftover = [
        n
        for n in out.graph.node
        if n.op_type in INTEGER_OPS
        or (n.op_type == "DequantizeLinear" and restorer.is_quantized_gather(n.input[0]))
    ]
    if leftover:
        # Name the compute op first: its activation quantizers only stay because it does.
        leftover.sort(key=lambda n: n.op_type == "DynamicQuantizeLinear")
        counts = Counter(n.op_type for n in leftover)
        kinds = ", ".join(f"{op} x{k}" for op, k in counts.items())
        raise ModelFormatError(
            f"Cannot restore {len(leftover)} quantized node(s) to float ({kinds}; first: "
            f"{leftover[0].op_type} {leftover[0].name!r}): only onnxruntime dynamic-quantization "
            "patterns (MatMulInteger, ConvInteger, DynamicQuantizeLSTM, Gather -> "
            "DequantizeLinear) are supported. Use an FP32 export."
        )
    return out, restorer.report


@dataclass
class _FloatSource:
    """The float tensor behind a quantized activation, and the name of its scale tensor."""

    name: str
    scale: str


@dataclass
class _Restorer:
    model: onnx.ModelProto
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        graph = self.model.graph
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.const_nodes: dict[str, onnx.NodeProto] = {
            n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output
        }
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.used_names: set[str] = set(self.inits) | set(self.producer)
        self.used_names |= {i.name for i in graph.input}
        self.node_names: set[str] = {n.name for n in graph.node if n.name}
        self.replacements: dict[int, onnx.NodeProto] = {}  # id(old node) -> new node
        self.removed: set[int] = set()
        self.new_inits: list[onnx.TensorProto] = []
        self.float_weights: dict[tuple[str, bytes, bytes, str], str] = {}
        self.gather_sources: dict[str, _FloatSource] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self.report = {
            "matmul_integer": 0,
            "conv_integer": 0,
            "conv_bias_folded": 0,
            "dynamic_quantize_lstm": 0,
            "gather_dequantize": 0,
            "nodes_before": len(graph.node),
        }

    # ---------------------------------------------------------------- driver

    def run(self) -> None:
        nodes = list(self.model.graph.node)
        for node in nodes:
            if node.op_type == "Gather" and node.domain in ("", "ai.onnx"):
                self._gather(node)
        for node in nodes:
            if node.op_type == "MatMulInteger":
                self._matmul(node)
            elif node.op_type == "ConvInteger":
                self._conv(node)
            elif node.op_type == "DynamicQuantizeLSTM":
                self._lstm(node)

    def is_quantized_gather(self, name: str) -> bool:
        """Whether `name` is the output of a Gather on an 8-bit table (pattern d's input)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "Gather":
            return False
        table = self._const(node.input[0])
        return table is not None and table.dtype.type in _INT_TYPES

    def build(self) -> onnx.ModelProto:
        src = self.model
        out = _shell(src)
        graph = out.graph
        nodes: list[onnx.NodeProto] = []
        for node in src.graph.node:
            if id(node) in self.replacements:
                nodes.append(self.replacements[id(node)])
            elif id(node) not in self.removed:
                nodes.append(node)
        live_nodes, live_names = _live(nodes, self.graph_outputs)
        graph.node.extend(live_nodes)
        inits = [t for t in src.graph.initializer if t.name in live_names]
        inits += [t for t in self.new_inits if t.name in live_names]
        graph.initializer.extend(inits)
        graph.sparse_initializer.extend(
            t for t in src.graph.sparse_initializer if t.values.name in live_names
        )
        produced = {o for n in live_nodes for o in n.output}
        graph.value_info.extend(v for v in src.graph.value_info if v.name in produced)
        domains = _used_domains(out)
        kept = [o for o in src.opset_import if o.domain in ("", "ai.onnx") or o.domain in domains]
        del out.opset_import[:]
        out.opset_import.extend(kept)
        self.report["nodes_after"] = len(live_nodes)
        self.report["nodes_removed"] = len(src.graph.node) - len(live_nodes)
        self.report["initializers_before"] = len(src.graph.initializer)
        self.report["initializers_after"] = len(inits)
        self.report["opset_domains_dropped"] = sorted(
            o.domain for o in src.opset_import if o not in kept
        )
        return out

    # ---------------------------------------------------------------- patterns

    def _gather(self, node: onnx.NodeProto) -> None:
        """(d) Gather on an 8-bit table whose output is dequantized per tensor."""
        table = self._const(node.input[0])
        if table is None or table.dtype.type not in _INT_TYPES or len(node.input) != 2:
            return
        out = node.output[0]
        users = self.consumers.get(out, [])
        dequant = [u for u in users if u.op_type == "DequantizeLinear" and u.input[0] == out]
        if not dequant or out in self.graph_outputs:
            return
        others = [u for u in users if u.op_type not in ("DequantizeLinear", "MatMulInteger")]
        if others:
            return
        first = dequant[0]
        scale = self._const(first.input[1])
        zero = self._const(first.input[2]) if len(first.input) > 2 and first.input[2] else None
        if scale is None or scale.size != 1 or (zero is not None and zero.size != 1):
            return
        for other in dequant[1:]:
            if other.input[1:] != first.input[1:]:
                return
        zp = 0.0 if zero is None else float(zero.reshape(()))
        values = (table.astype(np.float32) - np.float32(zp)) * np.float32(scale.reshape(()))
        table_name = self._float_init(node.input[0], values.astype(np.float32), key=("gather",))
        gather = helper.make_node(
            "Gather",
            [table_name, node.input[1]],
            [first.output[0]],
            name=self._node_name(node.name),
        )
        gather.attribute.extend(node.attribute)
        self.replacements[id(node)] = gather
        self.removed.add(id(first))
        for other in dequant[1:]:
            # Rare: several DequantizeLinear on one Gather; alias them with Identity.
            self.replacements[id(other)] = helper.make_node(
                "Identity", [first.output[0]], [other.output[0]], name=other.name
            )
        self.gather_sources[out] = _FloatSource(first.output[0], first.input[1])
        self.report["gather_dequantize"] += 1

    def _matmul(self, node: onnx.NodeProto) -> None:
        """(a) MatMulInteger -> Cast -> Mul(x_scale * w_scale) becomes MatMul."""
        source = self._float_source(node.input[0])
        weight = self._const(node.input[1])
        if source is None or weight is None or weight.dtype.type not in _INT_TYPES:
            return
        if weight.ndim != 2:
            return
        tail = self._scaled_tail(node.output[0])
        if tail is None:
            return
        cast, mul, scale_name = tail
        w_scale = self._weight_scale(scale_name, source.scale)
        if w_scale is None:
            return
        w_zero = self._optional_const(node, 3)
        if w_zero is False:
            return
        n_cols = weight.shape[1]
        if w_scale.size not in (1, n_cols) or (
            w_zero is not None and w_zero.size not in (1, n_cols)
        ):
            return
        zp = np.zeros((), np.float32) if w_zero is None else w_zero.reshape(-1).astype(np.float32)
        values = (weight.astype(np.float32) - zp) * w_scale.reshape(-1).astype(np.float32)
        w_name = self._float_init(
            node.input[1], values, key=(_bytes(w_zero), w_scale.tobytes(), "matmul")
        )
        matmul = helper.make_node(
            "MatMul", [source.name, w_name], [mul.output[0]], name=self._node_name(node.name)
        )
        self.replacements[id(node)] = matmul
        self.removed.update({id(cast), id(mul)})
        self.report["matmul_integer"] += 1

    def _conv(self, node: onnx.NodeProto) -> None:
        """(b) ConvInteger [-> Add(quantized bias)] -> Cast -> Mul becomes Conv (+ bias)."""
        source = self._float_source(node.input[0])
        weight = self._const(node.input[1])
        if source is None or weight is None or weight.dtype.type not in _INT_TYPES:
            return
        out = node.output[0]
        users = self.consumers.get(out, [])
        if len(users) != 1 or out in self.graph_outputs:
            return
        bias_name: str | None = None
        removed: list[onnx.NodeProto] = []
        after = users[0]
        if after.op_type == "Add":
            other = after.input[1] if after.input[0] == out else after.input[0]
            bias_name = self._quantized_bias_source(other)
            if bias_name is None:
                return
            removed.append(after)
            tail = self._scaled_tail(after.output[0])
        else:
            tail = self._scaled_tail(out)
        if tail is None:
            return
        cast, mul, scale_name = tail
        removed += [cast, mul]
        w_scale = self._weight_scale(scale_name, source.scale)
        w_zero = self._optional_const(node, 3)
        if w_scale is None or w_zero is False:
            return
        n_out = weight.shape[0]
        if w_scale.size not in (1, n_out) or (w_zero is not None and w_zero.size not in (1, n_out)):
            return
        bshape = (-1,) + (1,) * (weight.ndim - 1)
        zp = np.zeros((), np.float32) if w_zero is None else w_zero.reshape(bshape)
        values = (weight.astype(np.float32) - zp.astype(np.float32)) * w_scale.reshape(
            bshape
        ).astype(np.float32)
        w_name = self._float_init(
            node.input[1], values, key=(_bytes(w_zero), w_scale.tobytes(), "conv")
        )
        output = mul.output[0]
        if bias_name is None:
            folded = self._float_bias_after(mul.output[0], n_out)
            if folded is not None:
                add, bias_name = folded
                removed.append(add)
                output = add.output[0]
        inputs = [source.name, w_name] + ([bias_name] if bias_name else [])
        conv = helper.make_node("Conv", inputs, [output], name=self._node_name(node.name))
        conv.attribute.extend(node.attribute)
        self.replacements[id(node)] = conv
        self.removed.update(id(n) for n in removed)
        self.report["conv_integer"] += 1
        if bias_name is not None:
            self.report["conv_bias_folded"] += 1

    def _lstm(self, node: onnx.NodeProto) -> None:
        """(c) DynamicQuantizeLSTM becomes LSTM with W and R dequantized and transposed."""
        if len(node.input) < 12:
            return
        w, r = self._const(node.input[1]), self._const(node.input[2])
        w_scale, w_zero = self._const(node.input[8]), self._const(node.input[9])
        r_scale, r_zero = self._const(node.input[10]), self._const(node.input[11])
        arrays = (w, r, w_scale, w_zero, r_scale, r_zero)
        if any(a is None for a in arrays) or w.ndim != 3 or r.ndim != 3:  # type: ignore[union-attr]
            return
        w_float = _dequant_lstm(w, w_scale, w_zero)  # type: ignore[arg-type]
        r_float = _dequant_lstm(r, r_scale, r_zero)  # type: ignore[arg-type]
        if w_float is None or r_float is None:
            return
        w_name = self._float_init(node.input[1], w_float, key=(node.input[8], "lstm"))
        r_name = self._float_init(node.input[2], r_float, key=(node.input[10], "lstm"))
        inputs = [node.input[0], w_name, r_name, *node.input[3:8]]
        while inputs and not inputs[-1]:
            inputs.pop()
        lstm = helper.make_node("LSTM", inputs, list(node.output), name=self._node_name(node.name))
        lstm.attribute.extend(a for a in node.attribute if a.name in _LSTM_ATTRS)
        self.replacements[id(node)] = lstm
        self.report["dynamic_quantize_lstm"] += 1

    # ---------------------------------------------------------------- matching helpers

    def _float_source(self, name: str) -> _FloatSource | None:
        """Float tensor and scale name behind a quantized activation."""
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "DynamicQuantizeLinear" and node.output[0] == name:
            return _FloatSource(node.input[0], node.output[1])
        return self.gather_sources.get(name)

    def _scaled_tail(self, name: str) -> tuple[onnx.NodeProto, onnx.NodeProto, str] | None:
        """`name -> Cast(float) -> Mul(., scale)`: the two nodes and the scale tensor's name."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        cast = users[0]
        to = next((a.i for a in cast.attribute if a.name == "to"), None)
        if cast.op_type != "Cast" or to != onnx.TensorProto.FLOAT:
            return None
        users = self.consumers.get(cast.output[0], [])
        if len(users) != 1 or cast.output[0] in self.graph_outputs:
            return None
        mul = users[0]
        if mul.op_type != "Mul" or cast.output[0] not in mul.input:
            return None
        scale = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
        return cast, mul, scale

    def _weight_scale(self, scale_name: str, x_scale: str) -> np.ndarray | None:
        """w_scale from `scale = Mul(x_scale, w_scale)` (matched by name, else by value)."""
        node = self.producer.get(scale_name)
        if node is None or node.op_type != "Mul":
            return None
        a, b = node.input[0], node.input[1]
        if a == x_scale:
            return self._const(b)
        if b == x_scale:
            return self._const(a)
        x_value = self._const(x_scale)
        if x_value is None or x_value.size != 1:
            return None
        va, vb = self._const(a), self._const(b)
        if va is not None and vb is not None:
            if va.size == 1 and np.array_equal(va.reshape(()), x_value.reshape(())):
                return vb
            if vb.size == 1 and np.array_equal(vb.reshape(()), x_value.reshape(())):
                return va
        return None

    def _quantized_bias_source(self, name: str) -> str | None:
        """Float bias behind `Reshape(Cast(Floor|Round(Div(bias, scale))), shape)`."""
        chain = ["Reshape", "Cast", ("Floor", "Round"), "Div"]
        current = name
        node: onnx.NodeProto | None = None
        for expected in chain:
            node = self.producer.get(current)
            ops = expected if isinstance(expected, tuple) else (expected,)
            if node is None or node.op_type not in ops:
                return None
            current = node.input[0]
        bias = self._const(current)
        if bias is None or bias.dtype != np.float32 or bias.ndim != 1:
            return None
        return current

    def _float_bias_after(self, name: str, channels: int) -> tuple[onnx.NodeProto, str] | None:
        """`name -> Add(., Reshape(bias[C], [1, C, 1...]))` as written by newer ORT."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs or users[0].op_type != "Add":
            return None
        add = users[0]
        other = add.input[1] if add.input[0] == name else add.input[0]
        reshape = self.producer.get(other)
        if reshape is None or reshape.op_type != "Reshape":
            return None
        bias, shape = self._const(reshape.input[0]), self._const(reshape.input[1])
        if bias is None or shape is None or bias.dtype != np.float32 or bias.size != channels:
            return None
        dims = [int(d) for d in shape.reshape(-1)]
        if (
            len(dims) < 2
            or dims[1] not in (channels, -1)
            or any(d != 1 for i, d in enumerate(dims) if i != 1)
        ):
            return None
        if bias.ndim != 1:
            return None
        return add, reshape.input[0]

    # ---------------------------------------------------------------- values and names

    def _const(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self._arrays:
            return self._arrays[name]
        if name in self.inits:
            array = numpy_helper.to_array(self.inits[name])
        elif name in self.const_nodes:
            attr = next((a for a in self.const_nodes[name].attribute if a.name == "value"), None)
            if attr is None:
                return None
            array = numpy_helper.to_array(attr.t)
        else:
            return None
        self._arrays[name] = array
        return array

    def _optional_const(self, node: onnx.NodeProto, index: int) -> np.ndarray | None | bool:
        """An optional constant input: None if absent, False if present but not constant."""
        if len(node.input) <= index or not node.input[index]:
            return None
        value = self._const(node.input[index])
        return False if value is None else value

    def _float_init(self, quant_name: str, values: np.ndarray, *, key: tuple) -> str:
        """Add (once per quantized tensor and scale) a float initializer; return its name."""
        cache_key = (quant_name, *key)
        if cache_key in self.float_weights:
            return self.float_weights[cache_key]
        base = quant_name.removesuffix("_quantized") or quant_name
        name = self._unique(base)
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(values), name))
        self.float_weights[cache_key] = name
        return name

    def _unique(self, base: str) -> str:
        name, i = base, 0
        while name in self.used_names:
            i += 1
            name = f"{base}_fp32" if i == 1 else f"{base}_fp32_{i}"
        self.used_names.add(name)
        return name

    def _node_name(self, name: str) -> str:
        base = name.removesuffix("_quant")
        if base and base != name and base not in self.node_names:
            self.node_names.add(base)
            return base
        return name


# -------------------------------------------------------------------- module helpers


def _bytes(value: np.ndarray | None) -> bytes:
    return b"" if value is None else value.tobytes()


def _dequant_lstm(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray | None:
    """[D, K, 4H] int8 with per-direction (or per-channel) scale -> float [D, 4H, K]."""
    d, _, n = q.shape
    shapes = {d: (d, 1, 1), d * n: (d, 1, n)}
    if scale.size not in shapes or zero.size not in shapes:
        return None
    s = scale.astype(np.float32).reshape(shapes[scale.size])
    z = zero.astype(np.float32).reshape(shapes[zero.size])
    values = (q.astype(np.float32) - z) * s
    return np.ascontiguousarray(values.transpose(0, 2, 1))


def _shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without nodes, initializers and value_info."""
    shell = onnx.ModelProto()
    shell.CopyFrom(model)
    for name in ("node", "initializer", "sparse_initializer", "value_info"):
        shell.graph.ClearField(name)
    return shell


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every name read inside a node's subgraphs (over-approximates outer-scope reads)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            for inner in g.node:
                names.update(inner.input)
                names |= _subgraph_inputs(inner)
    return names


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes needed for the graph outputs (in their order) and every name they read."""
    needed = set(outputs)
    keep: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed |= _subgraph_inputs(node)
    keep.reverse()
    return keep, needed


def _used_domains(model: onnx.ModelProto) -> set[str]:
    domains: set[str] = set()

    def visit(nodes: Any) -> None:
        for node in nodes:
            domains.add(node.domain)
            for attr in node.attribute:
                for g in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                    visit(g.node)

    visit(model.graph.node)
    for function in model.functions:
        domains.add(function.domain)
        visit(function.node)
    return domains
