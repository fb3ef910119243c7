"""Describe an ONNX model: contract, opsets, ops, parameters, quantization style, big tensors.

`inspect_model` returns a JSON-serialisable dict. The quantization style is one of
`QUANT_STYLES`, decided by these rules (each detected family is listed in `quant_evidence`):

- ``dynamic-int8``: a node of type MatMulInteger, ConvInteger, DynamicQuantizeLinear,
  DynamicQuantizeLSTM, DynamicQuantizeMatMul or MatMulIntegerToFloat (activations quantized at
  run time, as in ORT's `quantize_dynamic`).
- ``qdq-int8``: a QuantizeLinear node, a QLinear*/QGemm/QAttention node, or a DequantizeLinear
  that reads an 8- or 16-bit integer initializer (static quantization, QDQ or operator format).
  A DequantizeLinear behind a Gather of a quantized table (dynamic exports) does not count.
- ``int4-matmulnbits``: a MatMulNBits or GatherBlockQuantized node, or a DequantizeLinear that
  reads a 4-bit initializer (block-/weight-only INT4).
- ``fp16``: float16 or bfloat16 initializers hold at least 1 % of all parameter elements.
- ``float``: none of the above; ``mixed``: more than one of the above.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import onnx

QUANT_STYLES = ("float", "dynamic-int8", "qdq-int8", "int4-matmulnbits", "fp16", "mixed")

_DYNAMIC_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLinear",
        "DynamicQuantizeLSTM",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
_QDQ_OPS = frozenset({"QuantizeLinear", "QGemm", "QAttention", "QOrderedMatMul"})
_INT4_OPS = frozenset({"MatMulNBits", "GatherBlockQuantized"})
_T = onnx.TensorProto
_INT8ISH = frozenset({_T.INT8, _T.UINT8, _T.INT16, _T.UINT16})
_INT4ISH = frozenset({_T.INT4, _T.UINT4})
_HALF = frozenset({_T.FLOAT16, _T.BFLOAT16})
_FP16_SHARE = 0.01

_NAMES = {_T.FLOAT: "float32", _T.DOUBLE: "float64", _T.FLOAT16: "float16"}
_BITS = {
    _T.BOOL: 8,
    _T.INT4: 4,
    _T.UINT4: 4,
    _T.FLOAT4E2M1: 4,
    _T.INT2: 2,
    _T.UINT2: 2,
    _T.FLOAT6E2M3: 6,
    _T.FLOAT6E3M2: 6,
}


def dtype_name(elem_type: int) -> str:
    """Readable dtype name: float32, float16, int8, uint8, int64, int4, ..."""
    if elem_type in _NAMES:
        return _NAMES[elem_type]
    try:
        return _T.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type{elem_type}"


def dtype_bits(elem_type: int) -> int:
    """Bits per element (0 for strings and unknown types)."""
    if elem_type in _BITS:
        return _BITS[elem_type]
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize * 8
    except (KeyError, TypeError, ValueError):
        return 0


def inspect_model(model: onnx.ModelProto, *, top: int = 10) -> dict[str, Any]:
    """A JSON-serialisable description of `model` (see the module docstring for the rules)."""
    graph = model.graph
    tensors = _parameters(graph)
    ops = Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in graph.node
    )
    by_dtype: dict[str, dict[str, int]] = defaultdict(
        lambda: {"tensors": 0, "elements": 0, "bytes": 0}
    )
    for t in tensors:
        row = by_dtype[t["dtype"]]
        row["tensors"] += 1
        row["elements"] += t["elements"]
        row["bytes"] += t["bytes"]
    style, evidence = detect_quant_style(model, tensors)
    consumers: dict[str, set[str]] = defaultdict(set)
    for node in graph.node:
        for name in node.input:
            consumers[name].add(node.op_type)
    largest = sorted(tensors, key=lambda t: (-t["bytes"], t["name"]))[: max(top, 0)]
    return {
        "graph_name": graph.name,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [_value_info(v) for v in graph.input if v.name not in _init_names(graph)],
        "outputs": [_value_info(v) for v in graph.output],
        "node_count": len(graph.node),
        "op_histogram": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": {
            "tensors": len(tensors),
            "elements": sum(t["elements"] for t in tensors),
            "bytes": sum(t["bytes"] for t in tensors),
            "by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"])),
        },
        "quant_style": style,
        "quant_evidence": evidence,
        "largest_tensors": [
            {
                **{k: v for k, v in t.items() if k != "elem_type"},
                "used_by": sorted(consumers.get(t["name"], set())),
            }
            for t in largest
        ],
        "serialized_bytes": model.ByteSize(),
    }


def detect_quant_style(
    model: onnx.ModelProto, tensors: list[dict[str, Any]] | None = None
) -> tuple[str, dict[str, dict[str, int]]]:
    """The quantization style and, per detected family, the evidence counted."""
    graph = model.graph
    tensors = _parameters(graph) if tensors is None else tensors
    init_types = {t.name: t.data_type for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                init_types[node.output[0]] = attr.t.data_type
    evidence: dict[str, Counter[str]] = defaultdict(Counter)
    for node in graph.node:
        op = node.op_type
        if op in _DYNAMIC_OPS:
            evidence["dynamic-int8"][op] += 1
        elif op in _QDQ_OPS or op.startswith("QLinear"):
            evidence["qdq-int8"][op] += 1
        elif op in _INT4_OPS:
            evidence["int4-matmulnbits"][op] += 1
        elif op == "DequantizeLinear" and node.input:
            kind = init_types.get(node.input[0])
            if kind in _INT8ISH:
                evidence["qdq-int8"]["DequantizeLinear(weight)"] += 1
            elif kind in _INT4ISH:
                evidence["int4-matmulnbits"]["DequantizeLinear(int4 weight)"] += 1
    total = sum(t["elements"] for t in tensors)
    half = sum(t["elements"] for t in tensors if t["elem_type"] in _HALF)
    if total and half / total >= _FP16_SHARE:
        evidence["fp16"]["half-precision parameter elements"] = half
    families = [s for s in QUANT_STYLES if s in evidence]
    style = "float" if not families else families[0] if len(families) == 1 else "mixed"
    return style, {k: dict(v) for k, v in sorted(evidence.items())}


def _init_names(graph: onnx.GraphProto) -> set[str]:
    return {t.name for t in graph.initializer}


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "dtype": kind or "unknown", "shape": None}
    tensor = value.type.tensor_type
    shape: list[int | str | None] | None = None
    if tensor.HasField("shape"):
        shape = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim
        ]
    return {"name": value.name, "dtype": dtype_name(tensor.elem_type), "shape": shape}


def _parameters(graph: onnx.GraphProto) -> list[dict[str, Any]]:
    """Initializers and Constant-node tensors of the main graph."""
    found = [_tensor_row(t, t.name) for t in graph.initializer]
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                found.append(_tensor_row(attr.t, node.output[0]))
    return found


def _tensor_row(tensor: onnx.TensorProto, name: str) -> dict[str, Any]:
    elements = 1
    for d in tensor.dims:
        elements *= d
    if tensor.HasField("raw_data") and tensor.raw_data:
        size = len(tensor.raw_data)
    else:
        size = (elements * dtype_bits(tensor.data_type) + 7) // 8
    return {
        "name": name,
        "dtype": dtype_name(tensor.data_type),
        "elem_type": tensor.data_type,
        "shape": list(tensor.dims),
        "elements": elements,
        "bytes": size,
    }
