"""inspect_model: contract, opsets, ops, parameters, quantization style, largest tensors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kokoro_opt.graph.inspect import QUANT_STYLES, inspect_model


def test_synthetic_fp32(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    info = inspect_model(model, top=3)
    json.dumps(info)  # JSON-serialisable as it is
    assert info["inputs"] == [
        {"name": "tokens", "dtype": "int64", "shape": [1, "T"]},
        {"name": "style", "dtype": "float32", "shape": [1, 256]},
        {"name": "speed", "dtype": "float32", "shape": [1]},
    ]
    assert info["outputs"] == [{"name": "audio", "dtype": "float32", "shape": ["N"]}]
    assert info["opsets"] == {"ai.onnx": 20}
    assert info["node_count"] == len(model.graph.node)
    assert info["op_histogram"] == dict(Counter(n.op_type for n in model.graph.node))
    assert sum(info["op_histogram"].values()) == info["node_count"]
    counts = list(info["op_histogram"].values())
    assert counts == sorted(counts, reverse=True)
    arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
    floats = [a for a in arrays if a.dtype == np.float32]
    f32 = info["parameters"]["by_dtype"]["float32"]
    assert f32["elements"] == sum(a.size for a in floats)
    assert f32["bytes"] == 4 * f32["elements"]
    assert f32["tensors"] == len(floats)
    assert info["parameters"]["elements"] == sum(a.size for a in arrays)
    assert info["quant_style"] == "float" and info["quant_evidence"] == {}
    largest = info["largest_tensors"]
    assert len(largest) == 3
    assert [t["bytes"] for t in largest] == sorted((a.nbytes for a in arrays), reverse=True)[:3]
    assert largest[0]["name"] == "encoder.bert.embeddings.word_embeddings.weight"
    assert largest[0]["shape"] == [178, 32] and largest[0]["used_by"] == ["Gather"]


def test_synthetic_dynamic_int8(synthetic_int8: Path) -> None:
    info = inspect_model(onnx.load(synthetic_int8))
    assert info["quant_style"] == "dynamic-int8"
    evidence = info["quant_evidence"]["dynamic-int8"]
    assert evidence["MatMulInteger"] == 4 and evidence["ConvInteger"] == 4
    assert evidence["DynamicQuantizeLSTM"] == 1
    assert "qdq-int8" not in info["quant_evidence"]  # Gather -> DequantizeLinear is not QDQ
    assert info["opsets"]["com.microsoft"] == 1
    assert {"int8", "uint8"} <= set(info["parameters"]["by_dtype"])


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_type: int = TensorProto.FLOAT
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", x_type, [2, 8])],
        [helper.make_tensor_value_info("y", x_type, None)],
        initializer=inits,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
    )


A = numpy_helper.from_array
W8 = A(np.ones((8, 4), np.int8), "w_q")
SCALE = A(np.array(0.1, np.float32), "w_s")
ZP = A(np.array(0, np.int8), "w_zp")


def _qdq() -> onnx.ModelProto:
    return _model(
        [
            helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"]),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        [W8, SCALE, ZP],
    )


def _int4() -> onnx.ModelProto:
    packed = A(np.zeros((4, 1, 4), np.uint8), "b_q")
    scales = A(np.ones(4, np.float32), "b_s")
    node = helper.make_node(
        "MatMulNBits",
        ["x", "b_q", "b_s"],
        ["y"],
        domain="com.microsoft",
        K=8,
        N=4,
        bits=4,
        block_size=16,
    )
    return _model([node], [packed, scales])


def _fp16() -> onnx.ModelProto:
    w = A(np.ones((8, 4), np.float16), "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [w], TensorProto.FLOAT16)


@pytest.mark.parametrize(
    ("build", "style", "evidence"),
    [
        (_qdq, "qdq-int8", "DequantizeLinear(weight)"),
        (_int4, "int4-matmulnbits", "MatMulNBits"),
        (_fp16, "fp16", "half-precision parameter elements"),
    ],
    ids=["qdq", "int4", "fp16"],
)
def test_quant_styles(build, style: str, evidence: str) -> None:
    info = inspect_model(build())
    assert info["quant_style"] == style
    assert evidence in info["quant_evidence"][style]


def test_static_activations_are_qdq() -> None:
    model = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "w_s", "w_zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "w_s", "w_zp"], ["y"]),
        ],
        [SCALE, ZP],
    )
    info = inspect_model(model)
    assert info["quant_style"] == "qdq-int8"
    assert info["quant_evidence"]["qdq-int8"] == {"QuantizeLinear": 1}


def test_two_families_are_mixed(synthetic_int8: Path) -> None:
    model = onnx.load(synthetic_int8)
    # Pin one float weight to fp16 the way a hybrid INT8/FP16 model would hold it.
    big = max(
        (t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT),
        key=lambda t: np.prod(t.dims),
    )
    half = A(numpy_helper.to_array(big).astype(np.float16), big.name)
    big.CopyFrom(half)
    info = inspect_model(model)
    assert info["quant_style"] == "mixed"
    assert set(info["quant_evidence"]) == {"dynamic-int8", "fp16"}
    assert info["quant_style"] in QUANT_STYLES


def test_top_zero_and_constant_nodes() -> None:
    value = helper.make_tensor("c", TensorProto.FLOAT, [8], np.arange(8, dtype=np.float32))
    model = _model(
        [
            helper.make_node("Constant", [], ["c"], value=value),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        [],
    )
    info = inspect_model(model, top=0)
    assert info["largest_tensors"] == []
    assert info["parameters"]["elements"] == 8
    assert info["op_histogram"] == {"Add": 1, "Constant": 1}


@pytest.mark.real
def test_real_models(real_models: dict[str, Path]) -> None:
    from kokoro_opt.graph.io import load_model

    fp32 = inspect_model(load_model(real_models["kokoro-fp32"]), top=5)
    int8 = inspect_model(load_model(real_models["kokoro-int8-export"]), top=5)
    assert fp32["quant_style"] == "float"
    assert int8["quant_style"] == "dynamic-int8"
    assert int8["quant_evidence"]["dynamic-int8"]["MatMulInteger"] == 148
    assert int8["node_count"] == 3614 and fp32["node_count"] == 2366
    # Kokoro-82M: about 81 M parameters either way.
    assert 80e6 < fp32["parameters"]["elements"] < 83e6
    assert abs(fp32["parameters"]["elements"] - int8["parameters"]["elements"]) < 1e6
    assert [i["name"] for i in fp32["inputs"]] == ["tokens", "style", "speed"]
    assert fp32["outputs"][0]["name"] == "audio"
    assert fp32["largest_tensors"][0]["used_by"] == ["Conv"]
