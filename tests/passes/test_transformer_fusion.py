"""Transformer fusions: what fuses, a model with nothing to fuse, unknown dims, quiet output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kokoro_opt.graph.edit import op_counts
from kokoro_opt.passes import transformer_fusion
from kokoro_opt.passes.base import PassContext
from tests.passes.graphs import N, _model, contrib_model, plain_model, run
from tests.synthetic import synthetic_feeds


def _gelu_block(dims: list[Any] | None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """MatMul + bias -> erf Gelu -> residual Add -> LayerNormalization (an ALBERT FFN tail)."""
    rng = np.random.default_rng(0)
    h = 16
    inits = {
        "sqrt2": np.array(1.4142135381698608, np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
        "w": (rng.standard_normal((h, h)) * 0.3).astype(np.float32),
        "b": (rng.standard_normal(h) * 0.1).astype(np.float32),
        "gamma": (1 + rng.standard_normal(h) * 0.1).astype(np.float32),
        "beta": (rng.standard_normal(h) * 0.1).astype(np.float32),
    }
    nodes = [
        N("MatMul", ["x", "w"], ["mm"]),
        N("Add", ["mm", "b"], ["mb"]),
        N("Div", ["mb", "sqrt2"], ["d"]),
        N("Erf", ["d"], ["e"]),
        N("Add", ["e", "one"], ["e1"]),
        N("Mul", ["mb", "e1"], ["m"]),
        N("Mul", ["m", "half"], ["g"]),
        N("Add", ["g", "x"], ["s"]),
        N("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        inits,
    )
    return model, {"x": rng.standard_normal((1, 5, h)).astype(np.float32)}


def test_gelu_and_skip_layer_norm_fuse_with_the_same_outputs() -> None:
    model, feeds = _gelu_block([1, "T", 16])
    result = transformer_fusion.run(model, transformer_fusion.Config(), PassContext())
    fused = {k: v for k, v in result.details["fused"].items() if v}
    assert fused == {"BiasGelu": 1, "SkipLayerNormalization": 1, "LayerNormalization": -1}
    assert result.details["fused_total"] == 2
    assert op_counts(result.model) == {
        "MatMul": 1,
        "com.microsoft:BiasGelu": 1,
        "com.microsoft:SkipLayerNormalization": 1,
    }
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-5)


def test_switched_off_fusions_leave_the_graph_alone() -> None:
    model, _ = _gelu_block([1, "T", 16])
    config = transformer_fusion.Config(gelu=False, skip_layer_norm=False)
    result = transformer_fusion.run(model, config, PassContext())
    assert result.details["fused_total"] == 0
    assert op_counts(result.model) == op_counts(model)


def test_unknown_dims_still_fuse_what_needs_no_shapes(capfd: pytest.CaptureFixture[str]) -> None:
    """Without a known hidden size SkipLayerNormalization cannot be fused; Gelu still is, the
    numbers stay, and onnxruntime.transformers' own prints stay out of the terminal."""
    model, feeds = _gelu_block(None)
    result = transformer_fusion.run(model, transformer_fusion.Config(), PassContext())
    fused = {k: v for k, v in result.details["fused"].items() if v}
    assert fused == {"BiasGelu": 1}
    assert op_counts(result.model)["LayerNormalization"] == 1
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-5)
    assert capfd.readouterr().out == ""


def test_nothing_to_fuse() -> None:
    model, feeds = plain_model()
    result = transformer_fusion.run(model, transformer_fusion.Config(), PassContext())
    assert result.details["applied"] is True
    assert result.details["fused_total"] == 0
    assert set(result.details["fused"].values()) == {0}
    assert op_counts(result.model) == op_counts(model)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-6)


def test_already_fused_ops_are_kept() -> None:
    model, feeds = contrib_model()
    result = transformer_fusion.run(model, transformer_fusion.Config(), PassContext())
    assert result.details["fused_total"] == 0
    assert op_counts(result.model) == op_counts(model)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-5)


def test_synthetic_model_keeps_its_numbers(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    result = transformer_fusion.run(model, transformer_fusion.Config(), PassContext())
    assert result.details["applied"] is True
    assert result.details["nodes_after"] <= result.details["nodes_before"]
    feeds = synthetic_feeds(16)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-5)
    assert model.graph.node[0].name == onnx.load(synthetic_fp32).graph.node[0].name  # not mutated


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        transformer_fusion.Config(heads=12)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        transformer_fusion.Config(num_heads=-1)
