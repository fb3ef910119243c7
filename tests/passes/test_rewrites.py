"""Hot-spot rewrites: each matches what it should, leaves the rest, and keeps the numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from kokoro_opt.errors import UserInputError
from kokoro_opt.graph.edit import op_counts
from kokoro_opt.measure.reference import compare_models
from kokoro_opt.passes import (
    rewrite_conv2d,
    rewrite_instnorm,
    rewrite_snake,
    rewrite_stft,
    rewrites,
)
from kokoro_opt.passes.base import PassContext
from kokoro_opt.passes.verify import reference_feeds
from tests.passes.graphs import adain_snake_model, plain_model, run, stft_model
from tests.synthetic import synthetic_feeds


def test_instnorm_replaces_decomposed_adain() -> None:
    model, feeds = adain_snake_model()
    result = rewrite_instnorm.run(model, rewrite_instnorm.Config(), PassContext())
    counts = op_counts(result.model)
    assert result.details["matched"] == 1
    assert result.details["affine_folded"] == 2  # two AdaINs share one normalization
    assert counts["InstanceNormalization"] == 2
    assert "ReduceMean" not in counts and "Sqrt" not in counts
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=2e-5)


def test_instnorm_without_affine_folding() -> None:
    model, feeds = adain_snake_model()
    result = rewrite_instnorm.run(model, rewrite_instnorm.Config(fold_affine=False), PassContext())
    assert result.details["affine_folded"] == 0
    assert op_counts(result.model)["InstanceNormalization"] == 1
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=2e-5)


def test_instnorm_skips_unknown_layout() -> None:
    model, _ = adain_snake_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"  # batch not 1
    result = rewrite_instnorm.run(model, rewrite_instnorm.Config(), PassContext())
    assert result.details["matched"] == 0
    assert result.details["skipped"] == {"batch is not 1": 1}


def test_snake_fold_into_norm_and_conv() -> None:
    model, feeds = adain_snake_model()
    normed = rewrite_instnorm.run(model, rewrite_instnorm.Config(), PassContext()).model
    result = rewrite_snake.run(normed, rewrite_snake.Config(), PassContext())
    d = result.details
    assert (d["matched"], d["rewritten"], d["in_norm"], d["into_conv"]) == (1, 1, 1, 1)
    counts = op_counts(result.model)
    assert "Pow" not in counts and counts["Sin"] == 1
    # alpha folded into the norm: no Mul by alpha on the big tensor; 1/alpha into the conv
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=5e-5)


@pytest.mark.parametrize("form", ["fold", "square", "cos"])
def test_snake_forms_on_the_synthetic_model(synthetic_fp32: Path, form: str) -> None:
    model = onnx.load(synthetic_fp32)
    result = rewrite_snake.run(model, rewrite_snake.Config(form=form), PassContext())
    assert result.details["matched"] == 2 and result.details["rewritten"] == 2
    counts, before = op_counts(result.model), op_counts(model)
    if form == "square":  # only Pow(s, 2) -> Mul(s, s); the synthetic Snake already squares by Mul
        assert counts == before
    else:  # the two Snake Divs by alpha are gone
        assert counts["Div"] == before["Div"] - 2
    if form == "cos":
        assert counts.get("Cos") == 2 and counts["Sin"] == 1  # the harmonic source keeps Sin
    feeds = synthetic_feeds(24)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-4)


def test_snake_leaves_zero_alpha_alone() -> None:
    model, _ = adain_snake_model()
    for t in model.graph.initializer:
        if t.name == "alpha":
            arr = onnx.numpy_helper.to_array(t).copy()
            arr[0, 1, 0] = 0.0
            t.CopyFrom(onnx.numpy_helper.from_array(arr, "alpha"))
        if t.name == "inv_alpha":
            arr = onnx.numpy_helper.to_array(t).copy()
            arr[0, 1, 0] = 1.0
            t.CopyFrom(onnx.numpy_helper.from_array(arr, "inv_alpha"))
    result = rewrite_snake.run(model, rewrite_snake.Config(), PassContext())
    assert result.details["skipped"] == {"alpha has zeros": 1}
    assert op_counts(result.model)["Pow"] == 1


def test_snake_nothing_to_match() -> None:
    model, feeds = plain_model()
    result = rewrite_snake.run(model, rewrite_snake.Config(), PassContext())
    assert result.details["matched"] == 0
    assert op_counts(result.model) == op_counts(model)


def test_stft_becomes_a_conv_filter_bank() -> None:
    model, feeds = stft_model()
    result = rewrite_stft.run(model, rewrite_stft.Config(), PassContext())
    assert result.details["rewritten"] == 1
    counts = op_counts(result.model)
    assert "STFT" not in counts and counts["Conv"] == 1
    got, want = run(result.model, feeds)[0], run(model, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=5e-5)
    # bins 0 and N/2 have exactly zero imaginary part, as from an FFT
    assert np.all(got[..., 0, :, 1] == 0) and np.all(got[..., 10, :, 1] == 0)


def test_stft_with_unknown_signal_rank_is_skipped() -> None:
    model, _ = stft_model()
    model.graph.input[0].type.tensor_type.ClearField("shape")
    result = rewrite_stft.run(model, rewrite_stft.Config(), PassContext())
    assert result.details["skipped"] == {"signal rank unknown": 1}


def test_conv2d_lifts_every_1d_conv(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    result = rewrite_conv2d.run(model, rewrite_conv2d.Config(), PassContext())
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert result.details["rewritten"] == len(convs) == 4
    inits = {t.name: t for t in result.model.graph.initializer}
    assert all(len(inits[c.input[1]].dims) == 4 for c in convs)
    feeds = synthetic_feeds(24)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-5)


def test_conv2d_nothing_to_rewrite() -> None:
    model, feeds = plain_model()
    result = rewrite_conv2d.run(model, rewrite_conv2d.Config(), PassContext())
    assert (result.details["conv1d_found"], result.details["rewritten"]) == (0, 0)
    assert op_counts(result.model) == op_counts(model)


def test_conv2d_leaves_unsupported_convs_alone() -> None:
    """A 2-D conv (4-D weight) is not a 1-D one, and a conv whose weight is a graph input cannot
    be lifted offline: both stay as they were, with the same numbers."""
    rng = np.random.default_rng(0)
    w2 = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["img", "w2"], ["y2"], name="c2d", kernel_shape=[3, 3]),
        helper.make_node("Conv", ["seq", "wdyn"], ["y1"], name="c1d_dyn", kernel_shape=[3]),
    ]
    graph = helper.make_graph(
        nodes,
        "convs",
        [
            helper.make_tensor_value_info("img", onnx.TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("seq", onnx.TensorProto.FLOAT, [1, 3, 16]),
            helper.make_tensor_value_info("wdyn", onnx.TensorProto.FLOAT, [4, 3, 3]),
        ],
        [
            helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y1", onnx.TensorProto.FLOAT, None),
        ],
        initializer=[onnx.numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    result = rewrite_conv2d.run(model, rewrite_conv2d.Config(), PassContext())
    assert result.details["rewritten"] == 0
    assert result.details["skipped"] == {"weights are not constant": 1}
    assert op_counts(result.model) == {"Conv": 2}
    feeds = {
        "img": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
        "seq": rng.standard_normal((1, 3, 16)).astype(np.float32),
        "wdyn": rng.standard_normal((4, 3, 3)).astype(np.float32),
    }
    for got, want in zip(run(result.model, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_instnorm_nothing_to_match() -> None:
    model, _ = plain_model()
    result = rewrite_instnorm.run(model, rewrite_instnorm.Config(), PassContext())
    assert result.details["matched"] == 0
    assert op_counts(result.model) == op_counts(model)


def test_registry_parsing() -> None:
    assert rewrites.parse("conv2d,snake") == ["snake", "conv2d"]
    assert rewrites.parse("default") == list(rewrites.DEFAULT)
    assert rewrites.parse("all") == list(rewrites.ORDER)
    assert rewrites.parse("none") == [] and rewrites.parse("") == []
    with pytest.raises(UserInputError, match="Unknown rewrite 'gelu'"):
        rewrites.parse("snake,gelu")


def test_default_chain_on_synthetic_is_within_noise(synthetic_fp32: Path, tmp_path: Path) -> None:
    model = onnx.load(synthetic_fp32)
    result = rewrites.apply(model, list(rewrites.DEFAULT), PassContext())
    assert set(result.details) == set(rewrites.DEFAULT)
    out = tmp_path / "rewritten.onnx"
    onnx.save(result.model, out)
    check = compare_models(synthetic_fp32, out, reference_feeds(synthetic_fp32), threads=1)
    assert check["same_lengths"] and check["nonfinite"] == 0
    assert check["max_abs_diff"] < 1e-4
    assert check["max_logmel_distance"] < 1e-3


@pytest.mark.real
def test_real_fp32_default_rewrites(real_models: dict[str, Path], tmp_path: Path) -> None:
    from kokoro_opt.passes.verify import NOISE_FLOOR_LOGMEL, REFERENCE_PHONEMES

    path = real_models["kokoro-fp32"]
    result = rewrites.apply(onnx.load(path), list(rewrites.DEFAULT), PassContext(threads=2))
    d = result.details
    assert (d["instnorm"]["matched"], d["instnorm"]["affine_folded"]) == (64, 68)
    assert (d["snake"]["rewritten"], d["snake"]["in_norm"], d["snake"]["into_conv"]) == (48, 48, 48)
    assert d["conv2d"]["rewritten"] == 88  # every 1-D Conv with constant weights
    counts = op_counts(result.model)
    assert "Pow" not in counts or counts["Pow"] == 2  # only the two non-Snake Pows remain
    out = tmp_path / "rewritten.onnx"
    onnx.save(result.model, out)
    feeds = reference_feeds(path, phonemes=REFERENCE_PHONEMES[:1])
    check = compare_models(path, out, feeds)
    assert check["same_lengths"] and check["max_logmel_distance"] < NOISE_FLOOR_LOGMEL
