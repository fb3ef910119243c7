"""A tiny Kokoro-shaped ONNX model for fast tests.

It keeps the real model's contract (inputs `tokens` int64 [1, T], `style` float [1, 256],
`speed` float [1]; output `audio` float [N] with N growing with T and 1 / speed) and the op
kinds the passes care about, with node names that follow Kokoro's module paths:

- text side: an embedding `Gather`, two ALBERT-style `MatMul` layers sharing one weight (ALBERT
  shares layers, and the real export shares initializers), a bidirectional `LSTM`;
- length regulation: `Resize` to ceil(T * FRAMES_PER_TOKEN / speed) frames;
- the generator: `Conv` (conv_pre, resblocks, noise_convs, conv_post), a `ConvTranspose`
  upsampler, Snake activations `x + sin(a*x)^2 / a` and a harmonic source `Sin(CumSum(...))`.

`build_dynamic_int8_model` quantizes it with ORT's dynamic quantizer, which yields the same four
patterns as the real kokoro-onnx INT8 export (MatMulInteger, ConvInteger, DynamicQuantizeLSTM,
Gather -> DequantizeLinear).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB_SIZE = 178
HIDDEN = 32
LSTM_HIDDEN = 16
GEN_CHANNELS = 24
FRAMES_PER_TOKEN = 4
UPSAMPLE = 8
OPSET = 20

_GEN = "/decoder/decoder/generator"


class _Graph:
    """Accumulates nodes and initializers with Kokoro-style names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        std = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        arr = (self.rng.standard_normal(shape) * std).astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> list[str]:
        outputs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs

    def one(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        return self.node(op, inputs, name, **attrs)[0]

    def conv(
        self, x: str, c_in: int, c_out: int, k: int, name: str, scale: float | None = None
    ) -> str:
        w = self.weight(f"{name}.weight", (c_out, c_in, k), scale)
        b = self.weight(f"{name}.bias", (c_out,), scale=0.05)
        return self.one("Conv", [x, w, b], f"{name}/Conv", pads=[k // 2, k // 2])

    def snake(self, x: str, channels: int, name: str) -> str:
        """Snake activation x + sin(a*x)^2 / a with a learned per-channel alpha."""
        alpha = self.rng.uniform(0.5, 1.5, size=(1, channels, 1)).astype(np.float32)
        a = self.const(f"{name}.alpha", alpha)
        ax = self.one("Mul", [x, a], f"{name}/Mul")
        s = self.one("Sin", [ax], f"{name}/Sin")
        s2 = self.one("Mul", [s, s], f"{name}/Mul_1")
        d = self.one("Div", [s2, a], f"{name}/Div")
        return self.one("Add", [x, d], f"{name}/Add")


def build_fp32_model(path: Path, *, seed: int = 0) -> Path:
    """Write the synthetic FP32 model to `path` and return it."""
    g = _Graph(seed)
    # Text side: embedding, two ALBERT layers sharing one weight, style conditioning.
    emb = g.weight("encoder.bert.embeddings.word_embeddings.weight", (VOCAB_SIZE, HIDDEN), 0.5)
    x = g.one("Gather", [emb, "tokens"], "/encoder/bert/embeddings/word_embeddings/Gather")
    shared_w = g.weight("encoder.bert.encoder.albert_layer.dense.weight", (HIDDEN, HIDDEN))
    for i in range(2):
        layer = f"/encoder/bert/encoder/albert_layer_groups.0/albert_layers.{i}"
        h = g.one("MatMul", [x, shared_w], f"{layer}/attention/dense/MatMul")
        h = g.one("Tanh", [h], f"{layer}/activation/Tanh")
        x = g.one("Add", [x, h], f"{layer}/Add")
    s_text = g.one(
        "Slice",
        [
            "style",
            g.const("style_lo_start", np.array([0])),
            g.const("style_lo_end", np.array([128])),
            g.const("style_axis", np.array([1])),
        ],
        "/predictor/Slice",
    )
    s_proj = g.one(
        "MatMul",
        [s_text, g.weight("predictor.style_proj.weight", (128, HIDDEN))],
        "/predictor/style_proj/MatMul",
    )
    s_proj = g.one("Unsqueeze", [s_proj, g.const("axis1", np.array([1]))], "/predictor/Unsqueeze")
    x = g.one("Add", [x, s_proj], "/predictor/Add")

    # Bidirectional LSTM over time: [1, T, H] -> [T, 1, H] -> Y [T, 2, 1, LH] -> [1, T, 2*LH].
    xt = g.one("Transpose", [x], "/predictor/lstm/Transpose", perm=[1, 0, 2])
    w = g.weight("predictor.lstm.W", (2, 4 * LSTM_HIDDEN, HIDDEN))
    r = g.weight("predictor.lstm.R", (2, 4 * LSTM_HIDDEN, LSTM_HIDDEN))
    b = g.weight("predictor.lstm.B", (2, 8 * LSTM_HIDDEN), 0.05)
    y = g.node(
        "LSTM",
        [xt, w, r, b],
        "/predictor/lstm/LSTM",
        n_out=3,
        hidden_size=LSTM_HIDDEN,
        direction="bidirectional",
    )[0]
    y = g.one("Transpose", [y], "/predictor/lstm/Transpose_1", perm=[2, 0, 1, 3])
    y = g.one(
        "Reshape",
        [y, g.const("shape_btc", np.array([1, -1, 2 * LSTM_HIDDEN]))],
        "/predictor/lstm/Reshape",
    )
    y = g.one("Transpose", [y], "/predictor/Transpose", perm=[0, 2, 1])  # [1, C, T]

    # Length regulation: frames = ceil(T * FRAMES_PER_TOKEN / speed).
    shape = g.one("Shape", [y], "/predictor/Shape")
    t_len = g.one("Gather", [shape, g.const("idx2", np.array(2))], "/predictor/Gather")
    t_f = g.one("Cast", [t_len], "/predictor/Cast", to=TensorProto.FLOAT)
    frames = g.one(
        "Mul",
        [t_f, g.const("fpt", np.array(float(FRAMES_PER_TOKEN), np.float32))],
        "/predictor/Mul",
    )
    frames = g.one("Div", [frames, "speed"], "/predictor/Div")
    frames = g.one("Ceil", [frames], "/predictor/Ceil")
    frames = g.one("Cast", [frames], "/predictor/Cast_1", to=TensorProto.INT64)
    sizes = g.one(
        "Concat",
        [g.const("sizes_head", np.array([1, 2 * LSTM_HIDDEN])), frames],
        "/predictor/Concat",
        axis=0,
    )
    y = g.one("Resize", [y, "", "", sizes], "/predictor/Resize", mode="nearest")

    # Generator: conv_pre + style, Snake, ConvTranspose upsampler, harmonic source, resblock,
    # conv_post, tanh.
    h = g.conv(y, 2 * LSTM_HIDDEN, GEN_CHANNELS, 7, f"{_GEN}/conv_pre")
    s_dec = g.one(
        "Slice",
        [
            "style",
            g.const("style_hi_start", np.array([128])),
            g.const("style_hi_end", np.array([256])),
            "style_axis",
        ],
        f"{_GEN}/Slice",
    )
    s_dec = g.one(
        "MatMul",
        [s_dec, g.weight("decoder.style_fc.weight", (128, GEN_CHANNELS))],
        f"{_GEN}/style_fc/MatMul",
    )
    s_dec = g.one("Unsqueeze", [s_dec, g.const("axis2", np.array([2]))], f"{_GEN}/Unsqueeze")
    h = g.one("Add", [h, s_dec], f"{_GEN}/Add")
    h = g.snake(h, GEN_CHANNELS, f"{_GEN}/resblocks.0/adain1.0")
    up_w = g.weight(f"{_GEN}/ups.0.weight", (GEN_CHANNELS, GEN_CHANNELS // 2, 2 * UPSAMPLE))
    up_b = g.weight(f"{_GEN}/ups.0.bias", (GEN_CHANNELS // 2,), 0.05)
    h = g.one(
        "ConvTranspose",
        [h, up_w, up_b],
        f"{_GEN}/ups.0/ConvTranspose",
        strides=[UPSAMPLE],
        pads=[UPSAMPLE // 2, UPSAMPLE // 2],
    )
    c = GEN_CHANNELS // 2
    # Harmonic source: a running phase sum fed to Sin, then a 1x1 noise conv.
    ones = g.one("Mul", [h, g.const("zero", np.array(0.0, np.float32))], f"{_GEN}/m_source/Mul")
    step = g.one(
        "Add", [ones, g.const("f0_step", np.array(0.07, np.float32))], f"{_GEN}/m_source/Add"
    )
    phase = g.one("CumSum", [step, g.const("time_axis", np.array(2))], f"{_GEN}/m_source/CumSum")
    src = g.one("Sin", [phase], f"{_GEN}/m_source/Sin")
    h = g.one("Add", [h, g.conv(src, c, c, 1, f"{_GEN}/noise_convs.0")], f"{_GEN}/Add_1")
    r = g.snake(h, c, f"{_GEN}/resblocks.0/alpha1.0")
    r = g.conv(r, c, c, 3, f"{_GEN}/resblocks.0/convs1.0")
    h = g.one("Add", [h, r], f"{_GEN}/resblocks.0/Add")
    h = g.conv(h, c, 1, 7, f"{_GEN}/conv_post", scale=0.02)
    h = g.one("Tanh", [h], f"{_GEN}/Tanh")
    audio = g.one("Reshape", [h, g.const("flat", np.array([-1]))], "/decoder/Reshape")
    g.nodes.append(helper.make_node("Identity", [audio], ["audio"], name="/Identity"))

    graph = helper.make_graph(
        g.nodes,
        "kokoro_synthetic",
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, "T"]),
            helper.make_tensor_value_info("style", TensorProto.FLOAT, [1, 256]),
            helper.make_tensor_value_info("speed", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N"])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kokoro-opt-tests"
    )
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, path)
    return path


def build_dynamic_int8_model(fp32_path: Path, path: Path) -> Path:
    """Dynamic-quantize the synthetic model the way kokoro-onnx made its INT8 export.

    ORT's CPU ConvInteger wants uint8 weights, so Conv is quantized in a second pass with
    QUInt8 weights while MatMul, LSTM and Gather use int8 (as in the real export).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    stage = path.with_suffix(".stage.onnx")
    quantize_dynamic(
        fp32_path,
        stage,
        op_types_to_quantize=["MatMul", "LSTM", "Gather"],
        weight_type=QuantType.QInt8,
    )
    quantize_dynamic(stage, path, op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8)
    stage.unlink()
    return path


def synthetic_feeds(n_tokens: int = 24, *, speed: float = 1.0, seed: int = 0) -> dict:
    """Inputs for one run of the synthetic model (pad id 0 at both ends, as Kokoro wants)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB_SIZE, size=n_tokens)
    tokens = np.concatenate([[0], ids, [0]]).astype(np.int64)[None, :]
    style = (rng.standard_normal((1, 256)) * 0.2).astype(np.float32)
    return {"tokens": tokens, "style": style, "speed": np.array([speed], np.float32)}
