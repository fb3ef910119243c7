"""Contrib ops back to standard ONNX: same numbers, only standard ops, refusal when impossible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from kokoro_opt.errors import UserInputError
from kokoro_opt.graph.edit import non_standard_ops, op_counts
from kokoro_opt.passes import ort_optimize, portable
from kokoro_opt.passes.base import PassContext
from tests.passes.graphs import contrib_model, run
from tests.synthetic import synthetic_feeds


def test_contrib_ops_become_standard_with_the_same_outputs() -> None:
    model, feeds = contrib_model()
    assert set(non_standard_ops(model)) == {
        "com.microsoft:FastGelu",
        "com.microsoft:SkipLayerNormalization",
        "com.microsoft:FusedMatMul",
        "com.microsoft:BiasGelu",
        "com.microsoft:Gelu",
        "com.microsoft:QuickGelu",
    }
    result = portable.run(model, portable.Config(), PassContext())
    assert non_standard_ops(result.model) == {}
    assert all(o.domain in ("", "ai.onnx") for o in result.model.opset_import)
    assert result.details["rewritten"]["com.microsoft:FusedMatMul"] == 2
    assert result.details["numerics_changed"] is False
    for got, want in zip(run(result.model, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_gelu_form_uses_the_standard_gelu_op() -> None:
    model, feeds = contrib_model()
    result = portable.run(model, portable.Config(gelu="onnx"), PassContext())
    assert op_counts(result.model)["Gelu"] == 3  # FastGelu, BiasGelu, Gelu
    for got, want in zip(run(result.model, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_gelu_needs_opset_20() -> None:
    model, _ = contrib_model()
    model.opset_import[0].version = 17
    with pytest.raises(UserInputError, match="opset 20"):
        portable.run(model, portable.Config(gelu="onnx"), PassContext())


def test_dynamic_quantize_lstm_becomes_float_lstm(synthetic_int8: Path) -> None:
    model = onnx.load(synthetic_int8)
    assert "com.microsoft:DynamicQuantizeLSTM" in non_standard_ops(model)
    result = portable.run(model, portable.Config(), PassContext())
    assert non_standard_ops(result.model) == {}
    assert result.details["numerics_changed"] is True
    assert "float LSTM" in result.details["warnings"][0]
    feeds = synthetic_feeds(20)
    got, want = run(result.model, feeds)[0], run(model, feeds)[0]
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) < 0.05 * np.max(np.abs(want)) + 1e-3


def test_ort_extended_int8_output_comes_back(synthetic_int8: Path, tmp_path: Path) -> None:
    optimized = ort_optimize.run(
        onnx.load(synthetic_int8),
        ort_optimize.Config(level="extended"),
        PassContext(work_dir=tmp_path),
    ).model
    fused = non_standard_ops(optimized)
    assert (
        "com.microsoft:MatMulIntegerToFloat" in fused
        or "com.microsoft:DynamicQuantizeMatMul" in fused
    )
    result = portable.run(optimized, portable.Config(dequantize_lstm=True), PassContext())
    assert non_standard_ops(result.model) == {}
    feeds = synthetic_feeds(20)
    reference = portable.run(onnx.load(synthetic_int8), portable.Config(), PassContext()).model
    # Same integer arithmetic as the unfused graph: equal up to float rounding.
    np.testing.assert_allclose(run(result.model, feeds)[0], run(reference, feeds)[0], atol=1e-4)


def test_nothing_to_rewrite(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    result = portable.run(model, portable.Config(), PassContext())
    assert result.details["rewritten"] == {}
    assert op_counts(result.model) == op_counts(model)


def test_unsupported_contrib_op_is_refused_with_the_list() -> None:
    graph = helper.make_graph(
        [helper.make_node("ReorderInput", ["x"], ["y"], domain="com.microsoft.nchwc")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 4, 4, 8])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft.nchwc", 1)],
    )
    with pytest.raises(UserInputError, match=r"com\.microsoft\.nchwc:ReorderInput \(1\)"):
        portable.run(model, portable.Config(), PassContext())


def test_refusing_to_dequantize_lstm(synthetic_int8: Path) -> None:
    with pytest.raises(UserInputError, match="DynamicQuantizeLSTM"):
        portable.run(
            onnx.load(synthetic_int8), portable.Config(dequantize_lstm=False), PassContext()
        )


@pytest.mark.real
def test_real_fp32_portable_is_standard_and_sounds_the_same(
    real_models: dict[str, Path], tmp_path: Path
) -> None:
    from kokoro_opt.measure.reference import compare_models
    from kokoro_opt.passes.verify import NOISE_FLOOR_LOGMEL, REFERENCE_PHONEMES, reference_feeds

    path = real_models["kokoro-fp32"]
    result = portable.run(onnx.load(path), portable.Config(), PassContext())
    assert result.details["rewritten"] == {
        "com.microsoft:FastGelu": 12,
        "com.microsoft:SkipLayerNormalization": 12,
        "com.microsoft:FusedMatMul": 1,
    }
    assert non_standard_ops(result.model) == {}
    out = tmp_path / "portable.onnx"
    onnx.save(result.model, out)
    check = compare_models(path, out, reference_feeds(path, phonemes=REFERENCE_PHONEMES[:1]))
    assert check["same_lengths"] and check["max_logmel_distance"] < NOISE_FLOOR_LOGMEL
