"""FP16 conversion: node islands with casts at the edges, and the full-FP16 pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kokoro_opt.errors import ModelFormatError
from kokoro_opt.graph.fp16 import convert_nodes_fp16
from kokoro_opt.passes import fp16
from kokoro_opt.passes.base import PassContext

GEN = "/decoder/decoder/generator"


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feed() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "tokens": np.array([[0, 7, 3, 50, 12, 9, 60, 0]], np.int64),
        "style": (rng.standard_normal((1, 256)) * 0.1).astype(np.float32),
        "speed": np.array([1.0], np.float32),
    }


def _small_graph() -> onnx.ModelProto:
    """x -> A=MatMul(x, W) -> B=Relu -> C=Add(B, W2) -> Resize(scales) -> y;
    W is also used by the float MatMul D."""
    w = numpy_helper.from_array(np.full((4, 4), 0.5, np.float32), "W")
    w2 = numpy_helper.from_array(np.ones((1, 4), np.float32), "W2")
    scales = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "scales")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="A"),
        helper.make_node("Relu", ["a"], ["b"], name="B"),
        helper.make_node("Add", ["b", "W2"], ["c"], name="C"),
        helper.make_node("Resize", ["c", "", "scales"], ["y"], name="R", mode="nearest"),
        helper.make_node("MatMul", ["b", "W"], ["z"], name="D"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4]),
        ],
        [w, w2, scales],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_island_has_casts_only_at_its_edges() -> None:
    model = _small_graph()
    out, names = convert_nodes_fp16(model, ["A", "B", "C", "R"])
    onnx.checker.check_model(out)
    assert names == ["A", "B", "C", "R"]
    inits = {t.name: t.data_type for t in out.graph.initializer}
    assert inits["W"] == TensorProto.FLOAT  # shared with float node D: an FP16 copy is made
    assert inits["W_fp16"] == TensorProto.FLOAT16
    assert inits["W2"] == TensorProto.FLOAT16  # used only inside the island
    assert inits["scales"] == TensorProto.FLOAT  # Resize scales must stay float
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    # one cast in (x), one out for b (read by float D), one out for y (graph output)
    assert sorted(c.input[0] for c in casts) == ["b_fp16out", "x", "y_fp16out"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    ref = _session(model).run(None, {"x": x})
    got = _session(out).run(None, {"x": x})
    for r, g in zip(ref, got, strict=True):
        assert g.dtype == np.float32 and np.allclose(r, g, atol=1e-2)


def test_full_fp16_keeps_io_and_hazards_float(synthetic_fp32: Path) -> None:
    model = onnx.load(str(synthetic_fp32))
    result = fp16.run(model, fp16.Config(), PassContext(threads=1))
    out = result.model
    onnx.checker.check_model(out)
    for value in [*out.graph.input, *out.graph.output]:
        original = next(
            v for v in [*model.graph.input, *model.graph.output] if v.name == value.name
        )
        assert value.type.tensor_type.elem_type == original.type.tensor_type.elem_type
    by_name = {n.name: n for n in out.graph.node}
    inits = {t.name: t.data_type for t in out.graph.initializer}
    # The harmonic source's phase sum and sine stay FP32 (their tensors keep their names).
    cumsum = by_name[f"{GEN}/m_source/CumSum"]
    assert not cumsum.output[0].endswith("_fp16out")
    assert not by_name[f"{GEN}/m_source/Sin"].output[0].endswith("_fp16out")
    conv = by_name[f"{GEN}/resblocks.0/convs1.0/Conv"]
    assert inits[conv.input[1]] == TensorProto.FLOAT16
    assert result.details["converted_nodes"] > 20 and result.details["blocked_ops"]["CumSum"] == 1
    ref = _session(model).run(None, _feed())[0]
    got = _session(out).run(None, _feed())[0]
    assert got.dtype == np.float32 and got.shape == ref.shape and np.isfinite(got).all()
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max() + 1e-3


def test_fp16_refuses_quantized_and_bad_patterns(synthetic_int8: Path) -> None:
    with pytest.raises(ModelFormatError, match="already quantized"):
        fp16.run(onnx.load(str(synthetic_int8)), fp16.Config(), PassContext(threads=1))
    with pytest.raises(ValueError, match="not a valid regular expression"):
        fp16.Config(keep_fp32=["re:("])
