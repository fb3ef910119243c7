"""Block-wise 4-bit math and its ONNX carriers (MatMulNBits, int4 DequantizeLinear) in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from kokoro_opt.graph.int4 import (
    dequantize_weight,
    gptq_blocks,
    matmul_nbits,
    pack_4bit,
    quantize_hqq,
    quantize_rtn,
)

RNG = np.random.default_rng(0)
W = RNG.standard_normal((200, 48)).astype(np.float32)  # K = 200: the last block of 32 is short


def _run(graph: onnx.GraphProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_error_is_within_a_step(symmetric: bool) -> None:
    quant = quantize_rtn(W, axis=0, block_size=32, symmetric=symmetric)
    assert quant.q.shape == W.shape and quant.scale.shape == (7, 48)
    if symmetric:
        assert quant.zero_point is None and quant.q.min() >= -8 and quant.q.max() <= 7
        # the largest magnitude of each block maps to -8 exactly (MLAS's convention: the scale
        # takes the sign of that value, so all 16 levels are used)
        assert np.all(quant.q.reshape(-1)[np.abs(W).argmax(axis=0) * 48 + np.arange(48)] == -8)
    else:
        assert quant.zero_point.dtype == np.uint8 and quant.q.max() <= 15
    step = np.abs(np.repeat(quant.scale, 32, axis=0)[:200])
    err = np.abs(quant.dequantize() - W)
    # symmetric: values of the opposite sign near the extreme clip at +7 (up to one step off)
    assert np.all(err <= (step if symmetric else step / 2) + 1e-6)
    assert np.mean(err <= step / 2 + 1e-6) > 0.99


def test_rtn_blocks_along_any_axis() -> None:
    conv = RNG.standard_normal((16, 50, 3)).astype(np.float32)
    quant = quantize_rtn(conv, axis=1, block_size=32, symmetric=False)
    assert quant.scale.shape == (16, 2, 3)
    # each block of 32 input channels (per output channel and tap) has its own range
    first = conv[:, :32, :]
    span = first.max(axis=1) - np.minimum(first.min(axis=1), 0)
    assert np.all(quant.scale[:, 0, :] <= np.maximum(span, first.max(axis=1)) / 15 + 1e-6)
    assert np.abs(quant.dequantize() - conv).max() < 0.5


def test_hqq_float_zero_beats_rtn_on_mean_absolute_error() -> None:
    rtn = quantize_rtn(W, axis=0, block_size=32, symmetric=False)
    hqq = quantize_hqq(W, axis=0, block_size=32)
    assert hqq.zero_point.dtype == np.float32
    assert np.abs(hqq.dequantize() - W).mean() < 0.95 * np.abs(rtn.dequantize() - W).mean()
    rounded = quantize_hqq(W, axis=0, block_size=32, integer_zero=True)
    assert rounded.zero_point.dtype == np.uint8 and rounded.zero_point.max() <= 15


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_beats_rtn_on_the_output_error(symmetric: bool) -> None:
    x = RNG.standard_normal((3000, 200)).astype(np.float32) @ (
        RNG.standard_normal((200, 200)).astype(np.float32) * 0.1
    )
    hessian = 2 / len(x) * x.T @ x
    rtn = quantize_rtn(W, axis=0, block_size=32, symmetric=symmetric).dequantize()
    gptq = gptq_blocks(W, hessian, block_size=32, symmetric=symmetric)
    assert gptq.q.shape == W.shape and gptq.scale.shape == (7, 48)

    def err(approx: np.ndarray) -> float:
        return float(np.linalg.norm(x @ approx - x @ W) / np.linalg.norm(x @ W))

    assert err(gptq.dequantize()) < 0.8 * err(rtn)


def test_gptq_with_an_identity_hessian_is_rtn() -> None:
    gptq = gptq_blocks(W, np.eye(200), block_size=32, symmetric=False, damp=1e-9)
    rtn = quantize_rtn(W, axis=0, block_size=32, symmetric=False)
    np.testing.assert_allclose(gptq.dequantize(), rtn.dequantize(), atol=1e-5)


def test_pack_4bit_low_nibble_first() -> None:
    assert pack_4bit(np.array([1, 2, 15, -8, 3], dtype=np.int8)) == bytes([0x21, 0x8F, 0x03])


@pytest.mark.parametrize("kind", ["rtn-sym", "rtn-asym", "hqq"])
@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_matmul_nbits_computes_with_the_dequantized_weight(kind: str, accuracy_level: int) -> None:
    quant = {
        "rtn-sym": lambda: quantize_rtn(W, axis=0, block_size=32, symmetric=True),
        "rtn-asym": lambda: quantize_rtn(W, axis=0, block_size=32, symmetric=False),
        "hqq": lambda: quantize_hqq(W, axis=0, block_size=32),
    }[kind]()
    attrs, inits, inputs = matmul_nbits(quant, weight_name="W", accuracy_level=accuracy_level)
    node = helper.make_node("MatMulNBits", ["A", *inputs], ["Y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [5, 200])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [5, 48])],
        inits,
    )
    a = RNG.standard_normal((5, 200)).astype(np.float32)
    expected = a @ quant.dequantize()
    got = _run(graph, {"A": a})
    # accuracy level 4 quantizes the activations to int8 per block
    tol = 1e-4 if accuracy_level == 0 or kind == "hqq" else 0.05
    assert np.abs(got - expected).max() <= tol * np.abs(expected).max()


@pytest.mark.parametrize("symmetric", [True, False])
def test_dequantize_linear_int4_blocks_in_onnxruntime(symmetric: bool) -> None:
    conv = RNG.standard_normal((16, 50, 3)).astype(np.float32)
    quant = quantize_rtn(conv, axis=1, block_size=32, symmetric=symmetric)
    node, inits, out = dequantize_weight(quant, "conv.weight")
    assert node.op_type == "DequantizeLinear"
    assert {a.name: a.i for a in node.attribute} == {"axis": 1, "block_size": 32}
    dtype = TensorProto.INT4 if symmetric else TensorProto.UINT4
    assert inits[0].data_type == dtype and len(inits) == (2 if symmetric else 3)
    graph = helper.make_graph(
        [node], "g", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [16, 50, 3])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(_run(graph, {}), quant.dequantize())
