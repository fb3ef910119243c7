"""Static shape binding: fixed dims, folding, and length masking that keeps the audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.errors import UserInputError
from kokoro_opt.passes import static_shapes
from kokoro_opt.passes.base import PassContext
from kokoro_opt.runtime.buckets import META_MASK, META_TOKENS
from tests.passes.graphs import aligner_feeds, aligner_model, run


def _dims(model: onnx.ModelProto, name: str) -> list[int | str]:
    vi = next(v for v in model.graph.input if v.name == name)
    return [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize("n_phonemes", [1, 9, 30])
def test_padded_bucket_renders_the_dynamic_audio(n_phonemes: int) -> None:
    model = aligner_model()
    result = static_shapes.run(model, static_shapes.Config(tokens=32), PassContext())
    mask = result.details["length_mask"]
    assert mask == {
        "applied": True,
        "durations": 1,
        "attention_masks": 1,
        "lstms": 1,
        "convs": 1,  # the text conv; the frame-level conv is left alone
    }
    assert _dims(result.model, "tokens") == [1, 32]
    assert _meta(result.model)[META_TOKENS] == "32" and _meta(result.model)[META_MASK] == "on"
    want = run(model, aligner_feeds(n_phonemes))[0]
    got = run(result.model, aligner_feeds(n_phonemes, pad_to=32))[0]
    assert got.shape == want.shape  # pads add no frames
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_without_masking_padding_changes_the_audio() -> None:
    model = aligner_model()
    result = static_shapes.run(
        model, static_shapes.Config(tokens=32, length_mask="off"), PassContext()
    )
    assert result.details["length_mask"] == {"applied": False}
    assert _meta(result.model)[META_MASK] == "off"
    want = run(model, aligner_feeds(5))[0]
    got = run(result.model, aligner_feeds(5, pad_to=32))[0]
    assert got.shape[0] > want.shape[0]  # every pad token got at least one frame


def test_shape_chains_are_folded() -> None:
    model = aligner_model()
    result = static_shapes.run(model, static_shapes.Config(tokens=16), PassContext())
    ops = [n.op_type for n in result.model.graph.node]
    assert "Shape" not in ops and "ConstantOfShape" not in ops
    assert result.details["simplify"]["applied"] is True


def test_model_without_duration_predictor(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    result = static_shapes.run(model, static_shapes.Config(tokens=24), PassContext())
    assert result.details["length_mask"]["applied"] is False
    assert "no duration predictor" in result.details["length_mask"]["reason"]
    assert _dims(result.model, "tokens") == [1, 24]
    with pytest.raises(UserInputError, match="length_mask='on' but no duration predictor"):
        static_shapes.run(model, static_shapes.Config(tokens=24, length_mask="on"), PassContext())


def test_dynamic_batch_is_bound_to_one() -> None:
    model = aligner_model(token_dims=("batch", "T"))
    result = static_shapes.run(model, static_shapes.Config(tokens=20), PassContext())
    assert _dims(result.model, "tokens") == [1, 20]
    assert "tokens[0]=1" in result.details["bound_dims"]


def test_symbolic_dim_that_cannot_be_bound_is_refused() -> None:
    model = aligner_model(style_dims=(1, "D"))  # a style width that is neither batch nor tokens
    with pytest.raises(UserInputError, match=r"Cannot bind dimension\(s\) style\[1\] \(D\)"):
        static_shapes.run(model, static_shapes.Config(tokens=20), PassContext())


def test_fixed_batch_other_than_one_is_refused() -> None:
    model = aligner_model(token_dims=(2, "T"))
    with pytest.raises(UserInputError, match="fixed batch of 2"):
        static_shapes.run(model, static_shapes.Config(tokens=20), PassContext())


def test_already_static_model_is_refused() -> None:
    model = aligner_model(token_dims=(1, 40))
    with pytest.raises(UserInputError, match="already static at 40 tokens"):
        static_shapes.run(model, static_shapes.Config(tokens=20), PassContext())


@pytest.mark.parametrize("tokens", [2, 513])
def test_bucket_length_range(tokens: int) -> None:
    with pytest.raises(ValueError):
        static_shapes.Config(tokens=tokens)


def test_bucket_tokens_reads_back(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    assert static_shapes.bucket_tokens(model) is None
    bound = static_shapes.run(
        model, static_shapes.Config(tokens=24, simplify=False), PassContext()
    ).model
    assert static_shapes.bucket_tokens(bound) == 24


@pytest.mark.real
def test_real_fp32_bucket_matches_dynamic(real_models: dict[str, Path], tmp_path: Path) -> None:
    from kokoro_opt.measure.reference import compare_models
    from kokoro_opt.passes.verify import NOISE_FLOOR_LOGMEL, REFERENCE_PHONEMES, reference_feeds

    path = real_models["kokoro-fp32"]
    model = onnx.load(path)
    result = static_shapes.run(model, static_shapes.Config(tokens=32), PassContext(threads=2))
    assert result.details["length_mask"] == {
        "applied": True,
        "durations": 1,
        "attention_masks": 1,
        "lstms": 5,
        "convs": 3,
    }
    phonemes = REFERENCE_PHONEMES[:1]
    out = tmp_path / "bucket.onnx"
    onnx.save(result.model, out)
    check = compare_models(
        path,
        out,
        reference_feeds(path, phonemes=phonemes),
        test_feeds=reference_feeds(out, phonemes=phonemes),
    )
    assert check["same_lengths"]
    assert check["max_logmel_distance"] < NOISE_FLOOR_LOGMEL
