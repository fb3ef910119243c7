"""Convert a chosen set of nodes of a float32 ONNX graph to FP16, with Casts at the edges.

onnxruntime's own converter (`onnxruntime.transformers.float16.convert_float_to_float16`)
treats every float tensor as FP16 and wraps *blocked* nodes in Cast pairs: on a QDQ model that
puts Casts between DequantizeLinear and the Conv it feeds (the QDQ unit no longer fuses into
an integer kernel) and, with `keep_io_types`, it leaves graph-input Casts after their
consumers (the graph is no longer sorted). This module works the other way round: only the
named nodes change, everything else is left byte for byte as it was.

For each converted node:
- a float32 input produced outside the set (or a graph input) goes through one
  `Cast(to=FLOAT16)` shared by all converted consumers; an initializer used only by converted
  nodes is stored as FP16 (values clipped to the FP16 range), one shared with float32 nodes
  gets an FP16 copy;
- each float32 output becomes FP16; where float32 nodes or the graph outputs read it, a
  `Cast(to=FLOAT)` restores the original tensor name, so inputs and outputs keep their types;
- `Cast(to=FLOAT)` inside the set becomes `Cast(to=FLOAT16)`, float `Constant` and
  `ConstantOfShape` values become FP16;
- inputs that must stay float32 by the ONNX spec (`FLOAT_ONLY_INPUTS`: Resize's roi and
  scales ...) are left alone.
Node order is kept (Casts go right before their first consumer or right after their
producer), so the graph stays topologically sorted. Element types come from ONNX shape
inference; a node with a float input or output of unknown type is not converted.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = 65504.0
FLOAT_ONLY_INPUTS: dict[str, tuple[int, ...]] = {
    "Resize": (1, 2),
    "Upsample": (1,),
    "RoiAlign": (1,),
}
_FLOAT = TensorProto.FLOAT
_HALF = TensorProto.FLOAT16


def convert_nodes_fp16(
    model: onnx.ModelProto, nodes: Iterable[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` with the named nodes computing in FP16 (see the module docstring).

    Returns the new model and the names of the nodes actually converted (nodes without float
    tensors, or with float tensors of unknown type, are skipped)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    types = _elem_types(out)
    wanted = set(nodes)
    inits = {t.name: t for t in graph.initializer}
    init_users: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            if name in inits:
                init_users.setdefault(name, set()).add(node.name)

    converted: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in wanted:
            continue
        io = [
            t
            for i, t in enumerate(node.input)
            if t and i not in FLOAT_ONLY_INPUTS.get(node.op_type, ())
        ] + [t for t in node.output if t]
        if any(types.get(t) is None for t in io if t not in inits):
            continue  # unknown types: leave this node in float32
        has_float = any(types.get(t) == _FLOAT for t in io) or _float_attr(node)
        if has_float:
            converted.append(node)
    names = {n.name for n in converted}
    outside_users = {o.name for o in graph.output}
    for node in graph.node:
        if node.name not in names:
            outside_users.update(t for t in node.input if t)

    input_casts: dict[str, str] = {}
    fp16_inits: dict[str, str] = {}
    renamed: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in names:
            new_nodes.append(node)
            continue
        for i, tensor in enumerate(node.input):
            if not tensor or i in FLOAT_ONLY_INPUTS.get(node.op_type, ()):
                continue
            if tensor in renamed:
                node.input[i] = renamed[tensor]
                continue
            if tensor in inits:
                if inits[tensor].data_type != _FLOAT:
                    continue
                if tensor not in fp16_inits:
                    fp16_inits[tensor] = _half_initializer(
                        graph, inits[tensor], shared=not init_users[tensor] <= names
                    )
                node.input[i] = fp16_inits[tensor]
                continue
            if types.get(tensor) != _FLOAT:
                continue
            if tensor not in input_casts:
                cast_out = f"{tensor}_fp16"
                new_nodes.append(
                    helper.make_node(
                        "Cast", [tensor], [cast_out], name=f"{tensor}_to_fp16", to=_HALF
                    )
                )
                input_casts[tensor] = cast_out
            node.input[i] = input_casts[tensor]
        _convert_attrs(node)
        new_nodes.append(node)
        for j, tensor in enumerate(node.output):
            if not tensor or types.get(tensor) != _FLOAT:
                continue
            half = f"{tensor}_fp16out"
            node.output[j] = half
            renamed[tensor] = half
            if tensor in outside_users:
                new_nodes.append(
                    helper.make_node("Cast", [half], [tensor], name=f"{tensor}_to_fp32", to=_FLOAT)
                )
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Value infos of retyped tensors would now be wrong; onnxruntime does not need them.
    stale = set(renamed) | set(renamed.values())
    keep = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return out, sorted(names)


def _elem_types(model: onnx.ModelProto) -> dict[str, int | None]:
    """Element type of every tensor name (None when shape inference could not tell)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is best effort; unknown types stay unknown
        inferred = model
    types: dict[str, int | None] = {}
    graph = inferred.graph
    for v in [*graph.input, *graph.output, *graph.value_info]:
        elem = v.type.tensor_type.elem_type
        types[v.name] = elem or None
    for t in graph.initializer:
        types[t.name] = t.data_type
    for node in graph.node:
        for name in node.output:
            types.setdefault(name, None)
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _float_attr(node: onnx.NodeProto) -> bool:
    if node.op_type == "Cast":
        return any(a.name == "to" and a.i == _FLOAT for a in node.attribute)
    return any(a.type == onnx.AttributeProto.TENSOR and a.t.data_type == _FLOAT
               for a in node.attribute)  # fmt: skip


def _convert_attrs(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT:
            attr.i = _HALF
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _FLOAT:
            attr.t.CopyFrom(_to_half(attr.t, attr.t.name))


def _half_initializer(graph: onnx.GraphProto, tensor: onnx.TensorProto, *, shared: bool) -> str:
    if not shared:
        tensor.CopyFrom(_to_half(tensor, tensor.name))
        return tensor.name
    name = f"{tensor.name}_fp16"
    graph.initializer.append(_to_half(tensor, name))
    return name


def _to_half(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float32)
    half = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(half, name)
