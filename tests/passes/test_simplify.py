"""onnxsim simplification: folds and prunes, never changes outputs, skips gracefully."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from kokoro_opt.errors import UserInputError
from kokoro_opt.passes import simplify
from kokoro_opt.passes.base import PassContext
from tests.passes.graphs import plain_model, run
from tests.synthetic import synthetic_feeds


def test_synthetic_model_keeps_its_outputs(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    before = model.SerializeToString()
    result = simplify.run(model, simplify.Config(), PassContext())
    assert model.SerializeToString() == before  # input untouched
    assert result.details["applied"] is True
    assert result.details["nodes_after"] <= result.details["nodes_before"]
    feeds = synthetic_feeds(20)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-5)


def test_constant_subgraph_is_folded() -> None:
    # Shape(const) -> Cast -> Add: everything left of the Add is constant.
    nodes = [
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Add", ["x", "sf"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.zeros((3, 5), np.float32), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    result = simplify.run(model, simplify.Config(), PassContext())
    assert [n.op_type for n in result.model.graph.node] == ["Add"]
    assert result.details["op_changes"] == {"Cast": -1, "Shape": -1}
    x = np.array([1.0, 2.0], np.float32)
    np.testing.assert_allclose(run(result.model, {"x": x})[0], x + np.array([3, 5]))


def test_nothing_to_simplify() -> None:
    model, feeds = plain_model()
    result = simplify.run(model, simplify.Config(), PassContext())
    assert result.details["applied"] is True
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "Relu"]
    assert result.details["op_changes"] == {}
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0])


def test_node_onnxsim_cannot_fold_is_reported_not_fatal(capfd: pytest.CaptureFixture[str]) -> None:
    # A constant Reshape to an impossible shape: onnxsim's folding fails on it and skips it.
    nodes = [
        helper.make_node("Reshape", ["c", "s"], ["r"]),
        helper.make_node("Add", ["x", "r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
        [
            numpy_helper.from_array(np.arange(6, dtype=np.float32), "c"),
            numpy_helper.from_array(np.array([4], np.int64), "s"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    capfd.readouterr()
    result = simplify.run(model, simplify.Config(), PassContext())
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""  # onnxsim's console output was captured
    assert result.details["nodes_not_folded"] == ["Reshape"]
    assert len(result.model.graph.node) == 2


def test_model_onnxsim_rejects_is_returned_unchanged() -> None:
    # A node reading a tensor nothing produces: onnxsim raises; the pass says why and goes on.
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "missing"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    result = simplify.run(model, simplify.Config(), PassContext())
    assert result.details["applied"] is False
    assert "topologically sorted" in result.details["skipped"]
    assert result.model.SerializeToString() == model.SerializeToString()


def test_input_shapes_bind_and_validate(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    result = simplify.run(model, simplify.Config(input_shapes={"tokens": [1, 12]}), PassContext())
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 12]
    with pytest.raises(UserInputError, match="does not have; its inputs are speed, style"):
        simplify.run(model, simplify.Config(input_shapes={"ids": [1, 12]}), PassContext())
    with pytest.raises(UserInputError, match="whole number >= 1"):
        simplify.run(model, simplify.Config(input_shapes={"tokens": [1, 0]}), PassContext())


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        simplify.Config(fold=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        simplify.Config(check_n=-1)
