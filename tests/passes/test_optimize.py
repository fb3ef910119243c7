"""The `optimize` chain pass: stages, numbers, nothing to fuse, unsupported dims, INT8 input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.graph.edit import non_standard_ops, op_counts
from kokoro_opt.passes import optimize, quantize_static, rewrites
from kokoro_opt.passes.base import PassContext
from tests.passes.graphs import adain_snake_model, plain_model, run
from tests.synthetic import synthetic_feeds


@pytest.fixture
def ctx(tmp_path: Path) -> PassContext:
    return PassContext(work_dir=tmp_path / "work", threads=1)


def test_default_chain_on_the_synthetic_model(synthetic_fp32: Path, ctx: PassContext) -> None:
    model = onnx.load(synthetic_fp32)
    result = optimize.run(model, optimize.Config(), ctx)
    d = result.details
    assert list(d["stages"]) == ["simplify", "transformer_fusion", "rewrites", "ort_optimize"]
    assert set(d["stages"]["rewrites"]) == set(rewrites.DEFAULT)
    assert d["stages"]["rewrites"]["snake"]["rewritten"] == 2
    assert d["nodes_before"] == len(model.graph.node)
    assert d["nodes_after"] == len(result.model.graph.node)
    # the lifted convs add an Unsqueeze/Squeeze pair each; the Snake divisions are gone
    assert d["stages"]["rewrites"]["conv2d"]["rewritten"] == 4
    assert d["ops_after"]["Div"] == d["ops_before"]["Div"] - 2
    assert d["warnings"] == []
    for feeds in (synthetic_feeds(8), synthetic_feeds(24, speed=0.8)):
        got, want = run(result.model, feeds)[0], run(model, feeds)[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_portable_chain_writes_only_standard_ops(synthetic_fp32: Path, ctx: PassContext) -> None:
    model = onnx.load(synthetic_fp32)
    result = optimize.run(model, optimize.Config(level="basic", portable=True), ctx)
    assert non_standard_ops(result.model) == {}
    assert result.details["non_standard_ops"] == {}
    assert "skipped" in result.details["stages"]["transformer_fusion"]
    feeds = synthetic_feeds(16)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-4)


def test_nothing_to_fuse_or_rewrite(ctx: PassContext) -> None:
    model, feeds = plain_model()
    result = optimize.run(model, optimize.Config(), ctx)
    stages = result.details["stages"]
    assert stages["transformer_fusion"]["fused_total"] == 0
    assert stages["rewrites"]["instnorm"]["matched"] == 0
    assert stages["rewrites"]["snake"]["matched"] == 0
    assert stages["rewrites"]["conv2d"]["rewritten"] == 0
    assert op_counts(result.model) == op_counts(model) == {"MatMul": 1, "Relu": 1}
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-6)


def test_unsupported_dims_are_skipped_not_broken(ctx: PassContext) -> None:
    """A symbolic batch: the instance-norm rewrite needs batch 1 and leaves the norm alone; the
    Snake and conv rewrites, which do not depend on it, still apply; the numbers stay."""
    model, feeds = adain_snake_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    result = optimize.run(model, optimize.Config(rewrites=list(rewrites.DEFAULT)), ctx)
    rw = result.details["stages"]["rewrites"]
    assert rw["instnorm"]["matched"] == 0
    assert rw["instnorm"]["skipped"] == {"batch is not 1": 1}
    assert (rw["snake"]["rewritten"], rw["snake"]["in_norm"], rw["snake"]["into_conv"]) == (1, 0, 1)
    assert rw["conv2d"]["rewritten"] == 1
    assert "InstanceNormalization" not in op_counts(result.model)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=5e-5)


def test_dynamic_int8_input_warns(synthetic_int8: Path, ctx: PassContext) -> None:
    result = optimize.run(onnx.load(synthetic_int8), optimize.Config(), ctx)
    assert any("dynamic INT8" in w for w in result.details["warnings"])


def test_for_quantization_output_keeps_the_quantize_selection(
    synthetic_fp32: Path, ctx: PassContext
) -> None:
    """`optimize --for-quantization` renames lifted convs '<old>/conv2d'; the quantize defaults
    (regexes searched in names) must still pick the same convs."""
    model = onnx.load(synthetic_fp32)
    config = optimize.Config(level="basic", simplify=False, fusion=False)
    prepared = optimize.run(model, config, ctx).model
    qconfig = quantize_static.Config()
    before = quantize_static.select_nodes(model, qconfig)["quantize"]
    after = quantize_static.select_nodes(prepared, qconfig)["quantize"]
    assert before, "the synthetic model should have convs the quantize defaults select"
    assert sorted(n.removesuffix("/conv2d") for n in after) == sorted(before)
    assert all(n.endswith("/conv2d") for n in after)


def test_for_quantization_rewrites_are_idempotent(synthetic_fp32: Path, ctx: PassContext) -> None:
    """`quantize` applies these rewrites itself; after `optimize --for-quantization` (the
    cpu-int8 recipe) applying them again must change nothing."""
    names = list(rewrites.FOR_QUANTIZATION)
    once = rewrites.apply(onnx.load(synthetic_fp32), names, ctx)
    assert once.details["conv2d"]["rewritten"] > 0
    twice = rewrites.apply(once.model, names, ctx)
    assert twice.details["instnorm"]["matched"] == 0 and twice.details["conv2d"]["rewritten"] == 0
    assert twice.model.graph.SerializeToString() == once.model.graph.SerializeToString()


def test_input_model_is_not_mutated(synthetic_fp32: Path, ctx: PassContext) -> None:
    model = onnx.load(synthetic_fp32)
    before = model.SerializeToString()
    optimize.run(model, optimize.Config(), ctx)
    assert model.SerializeToString() == before


def test_config_rules() -> None:
    with pytest.raises(ValueError, match="portable output cannot use level 'extended'"):
        optimize.Config(portable=True)
    with pytest.raises(ValueError, match="unknown rewrite"):
        optimize.Config(rewrites=["gelu"])
    assert optimize.Config(rewrites=["conv2d", "instnorm"]).rewrites == ["instnorm", "conv2d"]
    with pytest.raises(ValueError, match="extra"):
        optimize.Config(fold=True)  # type: ignore[call-arg]
