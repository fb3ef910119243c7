"""Lookup tables for AdaIN + Snake between quantized tensors: exact where the input is INT8,
close where it is float, and nothing touched that does not qualify."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kokoro_opt.graph.edit import op_counts
from kokoro_opt.passes import rewrite_qlut
from kokoro_opt.passes.base import PassContext
from tests.passes.graphs import plain_model, qdq_adain_snake_model, run


def _codes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The uint8 input of the INT8 branch's Conv (the table's output after the rewrite)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    dequantize = next(n for n in probe.graph.node if n.output[0] == "q_vf")
    codes = helper.make_tensor_value_info(dequantize.input[0], TensorProto.UINT8, None)
    probe.graph.output.append(codes)
    return run(probe, feeds)[2].astype(np.int32)


def _reference_codes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The INT8 branch's Conv input computed in float64 with numpy: dequantize, instance norm
    (two-pass variance), style affine, Snake, quantize (round half to even, as ONNX)."""
    w = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    codes = feeds["u"].astype(np.float64).reshape(feeds["u"].shape[1], -1)
    style = feeds["style"].astype(np.float64)
    gamma = (style @ w["q_fc_g"]).reshape(-1, 1) + 1
    beta = (style @ w["q_fc_b"]).reshape(-1, 1)
    x = w["s_in"] * (codes - w["z_in"])
    centred = x - x.mean(-1, keepdims=True)
    normed = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5) * gamma + beta
    alpha = w["alpha"].reshape(-1, 1)
    snake = normed + np.sin(alpha * normed) ** 2 / alpha
    out = np.clip(np.round(snake / w["s_out"]) + w["z_out"], 0, 255)
    return out.reshape(feeds["u"].shape).astype(np.int32)


def _sins_over_time(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Sin nodes other than those computing a [1, C, 256] table."""
    return [n for n in model.graph.node if n.op_type == "Sin" and "/table" not in n.name]


@pytest.mark.parametrize("conv2d_layout", [False, True])
def test_exact_tables_between_int8_tensors(conv2d_layout: bool) -> None:
    model, feeds = qdq_adain_snake_model(conv2d_layout=conv2d_layout)
    result = rewrite_qlut.run(model, rewrite_qlut.Config(), PassContext())
    d = result.details
    assert (d["rewritten"], d["from_int8"], d["from_float"]) == (1, 1, 0)
    assert d["skipped"] == {"norm input is not dequantized": 1}
    counts = op_counts(result.model)
    assert counts["GatherElements"] == 1 and counts["InstanceNormalization"] == 1
    assert len(_sins_over_time(result.model)) == 1  # the float branch keeps its own
    onnx.checker.check_model(result.model, full_check=True)

    np.testing.assert_array_equal(run(result.model, feeds)[1], run(model, feeds)[1])
    np.testing.assert_array_equal(_codes(result.model, feeds), _codes(model, feeds))
    np.testing.assert_array_equal(_codes(result.model, feeds), _reference_codes(model, feeds))


def test_long_inputs_and_silent_channels_match_float64() -> None:
    # 40k frames: float32 E[u^2] - E[u]^2 or ORT's ReduceSumSquare drift by 3e-4 of the
    # variance there, and silent channels (variance 0) turn any such drift into wrong codes.
    model, feeds = qdq_adain_snake_model(frames=40_000)
    feeds["u"][0, :3] = 251
    result = rewrite_qlut.run(model, rewrite_qlut.Config(), PassContext())
    assert np.isfinite(run(result.model, feeds)[0]).all()
    np.testing.assert_array_equal(_codes(result.model, feeds), _reference_codes(model, feeds))


def test_float_inputs_are_rounded_once_then_looked_up() -> None:
    model, feeds = qdq_adain_snake_model(conv2d_layout=True)
    result = rewrite_qlut.run(model, rewrite_qlut.Config(float_inputs=True), PassContext())
    d = result.details
    assert (d["rewritten"], d["from_int8"], d["from_float"]) == (2, 1, 1)
    assert op_counts(result.model)["GatherElements"] == 2
    assert _sins_over_time(result.model) == []
    before, after = run(model, feeds)[1], run(result.model, feeds)[1]
    # One extra 8-bit rounding of the normalized input (+-12 std): a few codes of error.
    error = np.sqrt(np.mean((after - before) ** 2)) / np.sqrt(np.mean(before**2))
    assert 0 < error < 0.05


def test_narrow_range_clips_and_hurts() -> None:
    model, feeds = qdq_adain_snake_model()
    before = run(model, feeds)[1]
    errors = []
    for width in (12.0, 0.5):
        config = rewrite_qlut.Config(float_inputs=True, normalized_range=width)
        after = run(rewrite_qlut.run(model, config, PassContext()).model, feeds)[1]
        errors.append(np.abs(after - before).mean())
    assert errors[1] > 3 * errors[0]  # +-0.5 std clips most of the signal


def test_chain_into_a_float_conv_is_left_alone() -> None:
    model, _ = qdq_adain_snake_model()
    graph = model.graph
    # Drop the int8 branch's quantizer: the Snake feeds the Conv in float.
    quant = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.output[0] == "q_v")
    dequant = next(n for n in graph.node if n.input and n.input[0] == "q_v")
    dequant.op_type, dequant.input[:] = "Identity", ["q_snake"]
    graph.node.remove(quant)
    result = rewrite_qlut.run(model, rewrite_qlut.Config(), PassContext())
    assert result.details["rewritten"] == 0
    assert result.details["skipped"] == {
        "chain reaches Identity": 1,
        "norm input is not dequantized": 1,
    }
    assert len(result.model.graph.node) == len(model.graph.node)


def test_time_varying_operand_is_not_a_table() -> None:
    model, _ = qdq_adain_snake_model()
    for node in model.graph.node:
        if node.op_type == "Mul" and node.input[0] == "alpha" and node.input[1] == "q_n":
            node.input[0] = "x"  # [1, C, T]: no longer a per-channel constant
    result = rewrite_qlut.run(model, rewrite_qlut.Config(), PassContext())
    assert result.details["rewritten"] == 0
    assert result.details["skipped"]["chain reads a non-constant tensor"] == 1


def test_batch_not_one_is_left_alone() -> None:
    model, _ = qdq_adain_snake_model()
    for graph_input in model.graph.input:
        graph_input.type.tensor_type.shape.dim[0].dim_param = "batch"
    result = rewrite_qlut.run(model, rewrite_qlut.Config(float_inputs=True), PassContext())
    assert result.details["rewritten"] == 0
    assert result.details["skipped"] == {"norm input is not [1, C, T]": 2}


def test_old_opset_is_left_alone() -> None:
    model, _ = qdq_adain_snake_model()
    model.opset_import[0].version = 14  # no Shape(start, end) for the time length
    result = rewrite_qlut.run(model, rewrite_qlut.Config(float_inputs=True), PassContext())
    assert result.details["rewritten"] == 0
    assert result.details["skipped"] == {"opset below 15": 2}


def test_nothing_to_match_keeps_the_model() -> None:
    model, _ = plain_model()
    result = rewrite_qlut.run(model, rewrite_qlut.Config(float_inputs=True), PassContext())
    assert result.details["rewritten"] == 0 and result.details["skipped"] == {}
    assert result.model.SerializeToString() == model.SerializeToString()
