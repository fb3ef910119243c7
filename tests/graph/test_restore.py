"""restore_fp32 turns every dynamic-quantized pattern back into the float op it came from."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kokoro_opt.errors import ModelFormatError
from kokoro_opt.graph.restore import INTEGER_OPS, restore_fp32
from tests.synthetic import synthetic_feeds

QUANT_OPS = INTEGER_OPS | {"DequantizeLinear"}


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _run(model: onnx.ModelProto | Path, feeds: dict) -> list[np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.fixture(scope="module")
def restored(synthetic_int8: Path) -> tuple[onnx.ModelProto, dict]:
    return restore_fp32(onnx.load(synthetic_int8))


def test_synthetic_restore_is_a_float_graph(restored: tuple[onnx.ModelProto, dict]) -> None:
    model, _ = restored
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert not (set(ops) & QUANT_OPS), ops
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)  # com.microsoft dropped
    assert all(
        t.data_type not in (TensorProto.INT8, TensorProto.UINT8) for t in model.graph.initializer
    )


def test_synthetic_restore_matches_the_original_structure(
    restored: tuple[onnx.ModelProto, dict], synthetic_fp32: Path, synthetic_int8: Path
) -> None:
    model, report = restored
    original = onnx.load(synthetic_fp32)
    assert Counter(n.op_type for n in model.graph.node) == Counter(
        n.op_type for n in original.graph.node
    )
    # Node names are the module paths again (ORT's `_quant` suffixes are gone).
    assert {n.name for n in model.graph.node} == {n.name for n in original.graph.node}
    int8_ops = Counter(n.op_type for n in onnx.load(synthetic_int8).graph.node)
    assert report["matmul_integer"] == int8_ops["MatMulInteger"] == 4
    assert report["conv_integer"] == int8_ops["ConvInteger"] == 4
    assert report["conv_bias_folded"] == 4
    assert report["dynamic_quantize_lstm"] == int8_ops["DynamicQuantizeLSTM"] == 1
    assert report["gather_dequantize"] == 1
    assert report["nodes_after"] == len(model.graph.node) < report["nodes_before"]


def test_restored_weights_are_the_dequantized_ones(
    restored: tuple[onnx.ModelProto, dict], synthetic_int8: Path, synthetic_fp32: Path
) -> None:
    model, _ = restored
    q = _inits(onnx.load(synthetic_int8))
    f = _inits(model)
    ref = _inits(onnx.load(synthetic_fp32))
    checked = 0
    for base in ref:
        if f"{base}_quantized" not in q:
            continue
        wq = q[f"{base}_quantized"].astype(np.float32)
        scale, zero = q[f"{base}_scale"], q[f"{base}_zero_point"].astype(np.float32)
        if wq.ndim == 3 and base.startswith("predictor.lstm"):  # [D, I, 4H] -> [D, 4H, I]
            expected = ((wq - zero[:, None, None]) * scale[:, None, None]).transpose(0, 2, 1)
        else:
            expected = (wq - zero) * scale
        np.testing.assert_allclose(f[base], expected, rtol=0, atol=1e-7)
        # ... and within half a quantization step of the original float weights.
        step = np.max(scale)
        assert np.abs(f[base] - ref[base]).max() <= step / 2 + 1e-6, base
        checked += 1
    assert checked == 10  # embedding, 3 MatMul weights, LSTM W and R, 4 Conv weights
    # Conv biases are the float originals, not re-quantized.
    for name, value in ref.items():
        if name.endswith(".bias") and name in f:
            np.testing.assert_array_equal(f[name], value)


def test_shared_weight_stays_shared(restored: tuple[onnx.ModelProto, dict]) -> None:
    model, _ = restored
    users = Counter(
        n.input[1] for n in model.graph.node if n.op_type == "MatMul" and "albert_layers" in n.name
    )
    assert users == {"encoder.bert.encoder.albert_layer.dense.weight": 2}


def test_restored_audio_is_close_to_the_fp32_original(
    restored: tuple[onnx.ModelProto, dict], synthetic_fp32: Path, synthetic_int8: Path
) -> None:
    model, _ = restored
    for seed in range(3):
        feeds = synthetic_feeds(n_tokens=18 + 7 * seed, seed=seed)
        ref = _run(synthetic_fp32, feeds)[0]
        q = _run(synthetic_int8, feeds)[0]
        out = _run(model, feeds)[0]
        assert out.shape == ref.shape == q.shape
        err = float(np.abs(out - ref).max())
        # Only weight rounding is left (activations are float again): small and below the
        # error of the INT8 model, which also rounds every activation.
        assert err < 0.02 * float(np.abs(ref).max()) + 1e-4, err
        assert err < float(np.abs(q - ref).max())


def test_input_model_is_not_modified(synthetic_int8: Path) -> None:
    model = onnx.load(synthetic_int8)
    before = model.SerializeToString()
    restore_fp32(model)
    assert model.SerializeToString() == before


def test_float_model_passes_through(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    out, report = restore_fp32(model)
    assert len(out.graph.node) == len(model.graph.node)
    assert report["matmul_integer"] == report["conv_integer"] == 0
    feeds = synthetic_feeds()
    np.testing.assert_array_equal(_run(out, feeds)[0], _run(model, feeds)[0])


# ---------------------------------------------------------------------------------------------
# The older ORT patterns in the real kokoro-onnx export: per-column MatMul scales with int8 zero
# points, and a quantized Conv bias Reshape(Cast(Floor(Div(bias, x_scale * w_scale)))).


def _legacy_pattern_models(seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(quantized model in the real export's style, float model with the dequantized weights)."""
    rng = np.random.default_rng(seed)
    k, n, c_in, c_out, ksize = 16, 12, 6, 5, 3
    w_mm = rng.standard_normal((k, n)).astype(np.float32)
    w_scale = (np.abs(w_mm).max(axis=0) / 127).astype(np.float32)  # per column
    w_q = np.clip(np.round(w_mm / w_scale), -127, 127).astype(np.int8)
    w_zp = np.zeros(n, np.int8)
    w_conv = rng.standard_normal((c_out, c_in, ksize)).astype(np.float32)
    c_scale = np.float32((w_conv.max() - w_conv.min()) / 255)
    c_zp = np.uint8(np.clip(np.round(-w_conv.min() / c_scale), 0, 255))
    c_q = np.clip(np.round(w_conv / c_scale) + c_zp, 0, 255).astype(np.uint8)
    bias = (rng.standard_normal(c_out) * 0.1).astype(np.float32)

    A = numpy_helper.from_array
    inits = [
        A(w_q, "fc.weight_quantized"),
        A(w_scale, "fc.weight_scale"),
        A(w_zp, "fc.weight_zero_point"),
        A(c_q, "conv.weight_quantized"),
        A(np.array(c_scale), "conv.weight_scale"),
        A(np.array(c_zp), "conv.weight_zero_point"),
        A(bias, "conv.bias"),
        A(np.array([1, -1, 1], np.int64), "conv.bias_shape"),
    ]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="/x_Quantize"),
        helper.make_node(
            "MatMulInteger",
            ["xq", "fc.weight_quantized", "xz", "fc.weight_zero_point"],
            ["mm_i"],
            name="/fc/MatMul_quant",
        ),
        helper.make_node("Cast", ["mm_i"], ["mm_f"], to=TensorProto.FLOAT, name="/fc/cast"),
        helper.make_node("Mul", ["xs", "fc.weight_scale"], ["mm_s"], name="/fc/scales_mul"),
        helper.make_node("Mul", ["mm_f", "mm_s"], ["y"], name="/fc/output_scale_mul"),
        helper.make_node("DynamicQuantizeLinear", ["u"], ["uq", "us", "uz"], name="/u_Quantize"),
        helper.make_node(
            "ConvInteger",
            ["uq", "conv.weight_quantized", "uz", "conv.weight_zero_point"],
            ["cv_i"],
            name="/conv/Conv_quant",
            pads=[1, 1],
            kernel_shape=[ksize],
        ),
        helper.make_node("Mul", ["us", "conv.weight_scale"], ["cv_s"], name="/conv/bias_scale"),
        helper.make_node("Div", ["conv.bias", "cv_s"], ["b_div"], name="/conv/bias_div"),
        helper.make_node("Floor", ["b_div"], ["b_floor"], name="/conv/bias_floor"),
        helper.make_node("Cast", ["b_floor"], ["b_int"], to=TensorProto.INT32, name="/conv/b_i"),
        helper.make_node("Reshape", ["b_int", "conv.bias_shape"], ["b_r"], name="/conv/b_r"),
        helper.make_node("Add", ["cv_i", "b_r"], ["cv_b"], name="/conv/bias_add"),
        helper.make_node("Cast", ["cv_b"], ["cv_f"], to=TensorProto.FLOAT, name="/conv/cast"),
        helper.make_node("Mul", ["cv_f", "cv_s"], ["v"], name="/conv/output_scale_mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "legacy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k]),
            helper.make_tensor_value_info("u", TensorProto.FLOAT, [1, c_in, 10]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, c_out, 10]),
        ],
        initializer=inits,
    )
    quant = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    quant.ir_version = 10

    w_conv_dq = (c_q.astype(np.float32) - np.float32(c_zp)) * c_scale
    ref_graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"]),
            helper.make_node("Conv", ["u", "C", "B"], ["v"], pads=[1, 1], kernel_shape=[ksize]),
        ],
        "reference",
        list(graph.input),
        list(graph.output),
        initializer=[
            A(w_q.astype(np.float32) * w_scale, "W"),
            A(w_conv_dq, "C"),
            A(bias, "B"),
        ],
    )
    reference = helper.make_model(ref_graph, opset_imports=[helper.make_opsetid("", 20)])
    reference.ir_version = 10
    return quant, reference


def test_legacy_patterns_per_column_scales_and_quantized_bias() -> None:
    quant, reference = _legacy_pattern_models()
    onnx.checker.check_model(quant, full_check=True)
    out, report = restore_fp32(quant)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Conv"]
    assert [n.name for n in out.graph.node] == ["/fc/MatMul", "/conv/Conv"]
    assert report["matmul_integer"] == report["conv_integer"] == report["conv_bias_folded"] == 1
    rng = np.random.default_rng(1)
    feeds = {
        "x": rng.standard_normal((3, 16)).astype(np.float32),
        "u": rng.standard_normal((1, 6, 10)).astype(np.float32),
    }
    for got, want, q in zip(
        _run(out, feeds), _run(reference, feeds), _run(quant, feeds), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert float(np.abs(q - want).max()) < 0.2  # the quantized graph was the same function


def test_unknown_quantized_pattern_is_refused() -> None:
    quant, _ = _legacy_pattern_models()
    # Feed the integer MatMul result straight to a graph output: no Cast -> Mul to undo.
    quant.graph.output.append(helper.make_tensor_value_info("mm_i", TensorProto.INT32, [3, 12]))
    with pytest.raises(ModelFormatError, match="Cannot restore 2 quantized node") as info:
        restore_fp32(quant)
    assert "first: MatMulInteger '/fc/MatMul_quant'" in str(info.value)
    assert "\n" not in str(info.value)


def test_unrestorable_gather_dequantize_is_refused() -> None:
    table = np.arange(12, dtype=np.int8).reshape(4, 3)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["g"], name="/emb/Gather_quant"),
            # Per-axis scales on the gathered tensor: not a pattern the restore knows.
            helper.make_node("DequantizeLinear", ["g", "s"], ["y"], axis=1, name="/emb/dq"),
        ],
        "gather",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([0.1, 0.2, 0.3], np.float32), "s"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    with pytest.raises(ModelFormatError, match="DequantizeLinear x1"):
        restore_fp32(model)


# ---------------------------------------------------------------------------------------------
# The real kokoro-onnx INT8 export.


@pytest.fixture(scope="module")
def real_restore(real_models: dict[str, Path]) -> tuple[onnx.ModelProto, dict]:
    from kokoro_opt.graph.io import load_model

    return restore_fp32(load_model(real_models["kokoro-int8-export"]))


@pytest.mark.real
def test_real_restore_is_a_checked_float_graph(real_restore: tuple[onnx.ModelProto, dict]) -> None:
    model, report = real_restore
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert not (set(ops) & QUANT_OPS), ops
    assert report["matmul_integer"] == 148
    assert report["conv_integer"] == 87
    assert report["conv_bias_folded"] == 80
    assert report["dynamic_quantize_lstm"] == 6 == ops["LSTM"]
    assert report["gather_dequantize"] == 4
    assert report["nodes_before"] == 3614
    assert len(model.graph.node) == report["nodes_after"] == 2366
    assert ops["MatMul"] == 174 and ops["Conv"] == 88
    # FastGelu / SkipLayerNormalization / FusedMatMul stay, so com.microsoft stays.
    assert {o.domain for o in model.opset_import} == {"", "com.microsoft"}
    size = model.ByteSize()
    assert 320e6 < size < 330e6, size
    names = {n.name for n in model.graph.node}
    assert "/encoder/text_encoder/lstm/LSTM" in names
    assert "/encoder/text_encoder/cnn.0/cnn.0.0/Conv" in names
    assert not any(name.endswith("_quant") for name in names)


@pytest.mark.real
def test_real_fp32_speaks_like_the_int8_export(real_models: dict[str, Path]) -> None:
    from kokoro_opt.runtime.tokenizer import tokenize
    from kokoro_opt.runtime.voices import VoiceLibrary, style_for

    phonemes = "ðə bˈɜːʧ kənˈuː slˈɪd ˌɔn ðə smˈuːð plˈæŋks."
    ids = tokenize(phonemes)
    pack = VoiceLibrary.default().get("jf_gongitsune")
    feeds = {
        "tokens": np.array([[0, *ids, 0]], np.int64),
        "style": style_for(pack, len(ids)).astype(np.float32),
        "speed": np.array([1.0], np.float32),
    }
    fp32 = _run(real_models["kokoro-fp32"], feeds)[0]
    int8 = _run(real_models["kokoro-int8-export"], feeds)[0]
    assert np.isfinite(fp32).all()
    seconds = len(fp32) / 24000
    assert 1.5 < seconds < 5.0, seconds
    assert float(np.sqrt(np.mean(fp32**2))) > 0.01  # speech, not silence
    assert abs(len(fp32) - len(int8)) <= 0.05 * len(int8), (len(fp32), len(int8))
