"""Pinning pass on the synthetic Kokoro-shaped model: groups, kept groups float, FP16 islands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.passes import pin
from kokoro_opt.passes.base import PassContext

GEN = "/decoder/decoder/generator"
QUANTIZABLE = {"Conv", "ConvTranspose", "MatMul"}


@pytest.fixture(scope="module")
def fp32(synthetic_fp32: Path) -> onnx.ModelProto:
    return onnx.load(str(synthetic_fp32))


@pytest.fixture(scope="module")
def ranges(synthetic_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pin-ranges")
    path, reused = pin.calibrated_ranges(
        synthetic_fp32,
        pin.build_config({"samples": 4}),
        PassContext(threads=1),
        cache_folder=folder,
    )
    assert not reused and path.is_file()
    again, reused = pin.calibrated_ranges(
        synthetic_fp32,
        pin.build_config({"samples": 4}),
        PassContext(threads=1),
        cache_folder=folder,
    )
    assert reused and again == path
    return path


def _feed() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "tokens": np.array([[0, 5, 10, 20, 30, 40, 0]], np.int64),
        "style": (rng.standard_normal((1, 256)) * 0.1).astype(np.float32),
        "speed": np.array([1.0], np.float32),
    }


def _run_model(model: onnx.ModelProto) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, _feed())[0]


def _weight_from_dq(model: onnx.ModelProto) -> dict[str, bool]:
    """Quantizable node name -> whether its weight comes from a DequantizeLinear."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return {
        n.name: producers.get(n.input[1]) == "DequantizeLinear"
        for n in model.graph.node
        if n.op_type in QUANTIZABLE
    }


def test_default_groups_follow_kokoro_module_paths(fp32: onnx.ModelProto) -> None:
    groups = pin.group_nodes(fp32)
    assert list(groups) == [
        "bert",
        "predictor/style_proj",
        "generator/conv_pre",
        "generator/style_fc",
        "generator/ups.0",
        "generator/noise_convs.0",
        "generator/resblocks.0",
        "generator/conv_post",
    ]
    assert len(groups["bert"]) == 2  # both ALBERT layers (shared weights) in one group
    # Real Kokoro names (as exported) land in the groups the issue names.
    cases = {
        f"{GEN}/resblocks.3/convs1.0/Conv": "generator/resblocks.3",
        f"{GEN}/conv_post/Conv": "generator/conv_post",
        f"{GEN}/noise_res.1/convs2.2/Conv": "generator/noise_res.1",
        "/decoder/decoder/decode.2/conv1/Conv": "decoder/decode.2",
        "/encoder/bert/encoder/albert_layer_groups.0/albert_layers.0/ffn/MatMul": "bert",
        "/encoder/predictor/text_encoder/lstms.1/fc/MatMul": "predictor/text_encoder",
        "/encoder/F0.1/conv1/Conv": "predictor/F0",
        "/encoder/N_proj/Conv": "predictor/N",
        "/encoder/text_encoder/cnn.0/cnn.0.0/Conv": "text_encoder",
        "/encoder/MatMul_1": "encoder",
    }
    for name, group in cases.items():
        assert pin.group_of(name) == group, name


def test_depth_grouping(fp32: onnx.ModelProto) -> None:
    assert pin.group_of(f"{GEN}/resblocks.3/convs1.0/Conv", depth=2) == "decoder/generator"
    assert pin.group_of(f"{GEN}/resblocks.3/convs1.0/Conv", depth=4) == (
        "decoder/generator/resblocks.3/convs1.0"
    )
    groups = pin.group_nodes(fp32, depth=1)
    assert set(groups) == {"encoder", "predictor", "decoder"}
    assert sum(map(len, groups.values())) == sum(
        1 for n in fp32.graph.node if n.op_type in QUANTIZABLE
    )


def test_resolve_groups_names_globs_and_unknown(fp32: onnx.ModelProto) -> None:
    groups = pin.group_nodes(fp32)
    assert pin.resolve_groups(["generator/conv_post", "generator/res*"], groups) == [
        "generator/resblocks.0",
        "generator/conv_post",
    ]
    with pytest.raises(UserInputError, match=r"Unknown group 'generator/nope'.*Groups: bert"):
        pin.resolve_groups(["generator/nope"], groups)


def test_apply_keeps_exactly_the_named_groups_float(
    fp32: onnx.ModelProto, ranges: Path, tmp_path: Path
) -> None:
    keep = ["generator/conv_post", "generator/resblocks.*"]
    config = pin.build_config({"keep": keep, "samples": 4})
    result = pin.run(fp32, config, PassContext(work_dir=tmp_path, threads=1), ranges_path=ranges)
    kept = {f"{GEN}/conv_post/Conv", f"{GEN}/resblocks.0/convs1.0/Conv"}
    for name, quantized in _weight_from_dq(result.model).items():
        assert quantized == (name not in kept), name
    assert result.details["kept"] == ["generator/resblocks.0", "generator/conv_post"]
    assert result.details["quantized"] == {"Conv": 2, "ConvTranspose": 1, "MatMul": 4}
    onnx.checker.check_model(result.model)
    ref, out = _run_model(fp32), _run_model(result.model)
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert not any(n.op_type == "QuantizeLinear" for n in fp32.graph.node)  # input untouched


def test_apply_fp16_converts_only_the_kept_groups(
    fp32: onnx.ModelProto, ranges: Path, tmp_path: Path
) -> None:
    config = pin.build_config({"keep": ["generator/resblocks.0"], "precision": "fp16"})
    result = pin.run(fp32, config, PassContext(work_dir=tmp_path, threads=1), ranges_path=ranges)
    model = result.model
    onnx.checker.check_model(model)
    inits = {t.name: t.data_type for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    conv = by_name[f"{GEN}/resblocks.0/convs1.0/Conv"]
    assert inits[conv.input[1]] == onnx.TensorProto.FLOAT16
    assert result.details["fp16_nodes"] >= 5  # the Conv, the Snake activation, the residual
    # Every other quantizable node is still a QDQ unit (no Cast between DQ and the node).
    for name, quantized in _weight_from_dq(model).items():
        assert quantized == (name != conv.name), name
    half = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert all("resblocks.0" in n for n in half), half
    # I/O types are unchanged, the graph is sorted and runs.
    types = {
        i.name: i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]
    }
    assert types["style"] == types["audio"] == onnx.TensorProto.FLOAT
    out = _run_model(model)
    assert out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"precision": "bf16"}, "precision"),
        ({"keep": [""]}, "empty keep"),
        ({"ops": ["LSTM"]}, "cannot be quantized statically"),
        ({"depth": 0}, "depth"),
        ({"typo": 1}, "typo"),
    ],
)
def test_bad_settings_are_one_line_errors(settings: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message) as info:
        pin.build_config(settings)
    assert "\n" not in str(info.value)


def test_refuses_an_already_quantized_model(synthetic_int8: Path, tmp_path: Path) -> None:
    model = onnx.load(str(synthetic_int8))
    with pytest.raises(ModelFormatError, match="already quantized"):
        pin.run(model, pin.build_config({}), PassContext(work_dir=tmp_path, threads=1))
