"""ORT offline optimization: levels, what each introduces, the layout warning, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from kokoro_opt.errors import ModelFormatError
from kokoro_opt.graph.edit import non_standard_ops
from kokoro_opt.passes import ort_optimize
from kokoro_opt.passes.base import PassContext
from tests.passes.graphs import plain_model, run
from tests.synthetic import synthetic_feeds


@pytest.fixture
def ctx(tmp_path: Path) -> PassContext:
    return PassContext(work_dir=tmp_path / "work")


def test_basic_level_stays_standard(synthetic_fp32: Path, ctx: PassContext) -> None:
    model = onnx.load(synthetic_fp32)
    result = ort_optimize.run(model, ort_optimize.Config(level="basic"), ctx)
    assert non_standard_ops(result.model) == {}
    assert result.details["warnings"] == []
    feeds = synthetic_feeds(16)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-5)
    assert not list(ctx.work_dir.iterdir())  # temporary files are cleaned up


def test_extended_level_fuses_conv_and_activation(synthetic_fp32: Path, ctx: PassContext) -> None:
    model = onnx.load(synthetic_fp32)
    result = ort_optimize.run(model, ort_optimize.Config(level="extended"), ctx)
    # conv_post -> Tanh becomes one com.microsoft FusedConv
    assert result.details["non_standard_ops_introduced"] == {"com.microsoft:FusedConv": 1}
    assert result.details["op_changes"]["Tanh"] == -1
    feeds = synthetic_feeds(16)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-5)


def test_layout_level_warns_that_output_is_machine_specific(
    synthetic_fp32: Path, ctx: PassContext
) -> None:
    result = ort_optimize.run(onnx.load(synthetic_fp32), ort_optimize.Config(level="layout"), ctx)
    assert result.details["warnings"] == [ort_optimize.LAYOUT_WARNING]
    assert "tied to the machine" in result.details["warnings"][0]


def test_nothing_to_optimize(ctx: PassContext) -> None:
    model, feeds = plain_model()
    result = ort_optimize.run(model, ort_optimize.Config(level="extended"), ctx)
    assert sorted(n.op_type for n in result.model.graph.node) == ["MatMul", "Relu"]
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-6)


def test_disabled_optimizer_is_respected(synthetic_fp32: Path, ctx: PassContext) -> None:
    config = ort_optimize.Config(level="extended", disabled_optimizers=["ConvActivationFusion"])
    result = ort_optimize.run(onnx.load(synthetic_fp32), config, ctx)
    assert result.details["non_standard_ops_introduced"] == {}


def test_model_ort_cannot_load_is_a_format_error(ctx: PassContext) -> None:
    # Conv weights of the wrong rank: ORT refuses the model at session creation.
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((3, 2), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    with pytest.raises(ModelFormatError, match="onnxruntime cannot load the model"):
        ort_optimize.run(model, ort_optimize.Config(), ctx)


def test_level_is_an_enum() -> None:
    with pytest.raises(ValueError):
        ort_optimize.Config(level="aggressive")  # type: ignore[arg-type]


def test_input_model_is_left_as_it_was(synthetic_fp32: Path, ctx: PassContext) -> None:
    # The pass serializes its input for ORT without copying it first (one copy of the weights
    # less in memory); the input must still come back unchanged.
    model = onnx.load(str(synthetic_fp32))
    before = model.SerializeToString()
    result = ort_optimize.run(model, ort_optimize.Config(level="extended"), ctx)
    assert model.SerializeToString() == before
    assert result.details["nodes_before"] == len(model.graph.node)
    assert result.details["nodes_after"] < result.details["nodes_before"]
