"""A tiny model with Kokoro's whole anatomy, for the split pass and the windowed runtime.

tokens/style/speed -> embedding -> durations (`Round -> Clip`) -> alignment -> two alignment
products (the decoder's features, the predictor's frame features) -> a frame-level LSTM ->
F0 and energy curves (one-channel Convs, 2 per frame) -> decoder (strided curve Convs, a Conv,
AdaIN-style instance norm, a depthwise ConvTranspose to 2 per frame) -> generator (an
ungrouped ConvTranspose, a harmonic source whose phase is a CumSum at 2 per frame upsampled
and fed to Sin, a second instance norm, Snake, conv_post) -> audio, SAMPLES_PER_FRAME per frame.

`norm=False` leaves the instance norms out: then the back half is purely convolutional and a
windowed render with enough context must equal the whole render.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.passes.graphs import N, _model

SAMPLES_PER_FRAME = 16
HARMONICS = 3


def kokoro_anatomy_model(seed: int = 0, *, norm: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    c, hid, d, g = 8, 4, 12, 6

    def w(*shape: int, s: float = 0.4) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    def f32(v: Any) -> np.ndarray:
        return np.array(v, np.float32)

    def i64(v: Any) -> np.ndarray:
        return np.array(v, np.int64)

    inits: dict[str, Any] = {
        "emb": w(178, c, s=0.8),
        "style_w": w(256, c, s=0.05),
        "dur_w": w(c, 1),
        "dur_scale": f32(8.0),
        "one": f32(1.0),
        "i0": i64(0),
        "i1": i64(1),
        "i_last": i64(-1),
        "ax0": i64([0]),
        "ax1": i64([1]),
        "ax2": i64([2]),
        "ax_t": i64([2]),
        "flat": i64([-1]),
        "pred_w": w(c, c),
        "lstm_w": w(1, 4 * hid, c),
        "lstm_r": w(1, 4 * hid, hid),
        "lstm_b": w(1, 8 * hid, s=0.1),
        "btc": i64([1, -1, hid]),
        "up2": f32([1.0, 1.0, 2.0]),
        "f0_w": w(1, hid, 1, s=0.5),
        "f0_b": f32([2.0]),
        "n_w": w(1, hid, 1, s=0.5),
        "f0c_w": w(1, 1, 3),
        "nc_w": w(1, 1, 3),
        "dec_w": w(d, c + 2, 3, s=0.3),
        "dec_b": w(d, s=0.1),
        "eps": f32(1e-5),
        "two": f32(2.0),
        "sty_fc": w(256, 2 * d, s=0.05),
        "dw_w": w(d, 1, 3, s=0.5),
        "ups_w": w(d, g, 8, s=0.3),
        "ups_b": w(g, s=0.1),
        "up_src": f32([1.0, 1.0, SAMPLES_PER_FRAME / 2]),
        "harm": f32(np.arange(1, HARMONICS + 1).reshape(1, 1, HARMONICS)),
        "sr": f32(40.0),
        "down": f32([1.0, 2.0 / SAMPLES_PER_FRAME, 1.0]),
        "up": f32([1.0, SAMPLES_PER_FRAME / 2, 1.0]),
        "two_pi_up": f32(2 * np.pi * SAMPLES_PER_FRAME / 2),
        "lin_w": w(HARMONICS, 1, s=0.5),
        "noise_w": w(g, 1, 4, s=0.5),
        "gen_fc": w(256, 2 * g, s=0.05),
        "alpha": f32(rng.uniform(0.5, 1.5, size=(1, g, 1))),
        "post_w": w(2, g, 7, s=0.2),
        "post_b": w(2, s=0.05),
    }
    nodes = [
        N("Gather", ["emb", "tokens"], ["e"]),
        N("MatMul", ["style", "style_w"], ["sp"]),
        N("Unsqueeze", ["sp", "ax1"], ["sp3"]),
        N("Add", ["e", "sp3"], ["hs"]),
        # durations
        N("MatMul", ["hs", "dur_w"], ["dl"]),
        N("Sigmoid", ["dl"], ["ds"]),
        N("Squeeze", ["ds", "ax2"], ["ds2"]),
        N("Mul", ["ds2", "dur_scale"], ["dsc"]),
        N("Div", ["dsc", "speed"], ["dd"]),
        N("Round", ["dd"], ["dr"]),
        N("Clip", ["dr", "one"], ["dur"]),
        N("Cast", ["dur"], ["dur_i"], to=TensorProto.INT64),
        N("Gather", ["dur_i", "i0"], ["dvec"], axis=0),
        N("CumSum", ["dvec", "i0"], ["cum"]),
        N("Gather", ["cum", "i_last"], ["total"]),
        N("Range", ["i0", "total", "i1"], ["frames"]),
        N("Sub", ["cum", "dvec"], ["start"]),
        N("Unsqueeze", ["frames", "ax0"], ["f_row"]),
        N("Unsqueeze", ["start", "ax1"], ["s_col"]),
        N("Unsqueeze", ["cum", "ax1"], ["e_col"]),
        N("GreaterOrEqual", ["f_row", "s_col"], ["ge"]),
        N("Less", ["f_row", "e_col"], ["lt"]),
        N("And", ["ge", "lt"], ["aln_b"]),
        N("Cast", ["aln_b"], ["aln"], to=TensorProto.FLOAT),
        # alignment products: decoder features and predictor frame features
        N("Transpose", ["hs"], ["hs_t"], perm=[0, 2, 1]),
        N("MatMul", ["hs_t", "aln"], ["asr"]),
        N("MatMul", ["hs", "pred_w"], ["pd"]),
        N("Transpose", ["pd"], ["pd_t"], perm=[0, 2, 1]),
        N("MatMul", ["pd_t", "aln"], ["en"]),
        # frame-level LSTM, then F0 and energy curves at 2 per frame
        N("Transpose", ["en"], ["en_t"], perm=[2, 0, 1]),
        N("LSTM", ["en_t", "lstm_w", "lstm_r", "lstm_b"], ["ly", "", ""], hidden_size=hid),
        N("Transpose", ["ly"], ["ly_t"], perm=[2, 0, 1, 3]),
        N("Reshape", ["ly_t", "btc"], ["lyr"]),
        N("Transpose", ["lyr"], ["lyc"], perm=[0, 2, 1]),
        N("Resize", ["lyc", "", "up2"], ["ly2"], mode="nearest"),
        N("Conv", ["ly2", "f0_w", "f0_b"], ["f0_raw"], kernel_shape=[1]),
        N("Conv", ["ly2", "n_w"], ["n_curve"], kernel_shape=[1]),
        N("Relu", ["f0_raw"], ["f0_pos"]),
        # decoder
        N("Conv", ["f0_pos", "f0c_w"], ["f0c"], kernel_shape=[3], pads=[1, 1], strides=[2]),
        N("Conv", ["n_curve", "nc_w"], ["nc"], kernel_shape=[3], pads=[1, 1], strides=[2]),
        N("Concat", ["asr", "f0c", "nc"], ["dec_in"], axis=1),
        N("Conv", ["dec_in", "dec_w", "dec_b"], ["dec0"], kernel_shape=[3], pads=[1, 1]),
    ]
    nodes += _adain("dec", "dec0", "sty_fc", d, norm)
    nodes += [
        N("LeakyRelu", ["dec_adain"], ["dec_act"], alpha=0.2),
        N(
            "ConvTranspose",
            ["dec_act", "dw_w"],
            ["hidden0"],
            group=d,
            kernel_shape=[3],
            strides=[2],
            pads=[1, 1],
            output_padding=[1],
        ),
        N("LeakyRelu", ["hidden0"], ["hidden"], alpha=0.1),
        # generator: upsampler to 8 per frame
        N(
            "ConvTranspose",
            ["hidden", "ups_w", "ups_b"],
            ["gx"],
            kernel_shape=[8],
            strides=[4],
            pads=[2, 2],
        ),
        # harmonic source
        N("Resize", ["f0_pos", "", "up_src"], ["f0_up"], mode="nearest"),
        N("Transpose", ["f0_up"], ["f0_ut"], perm=[0, 2, 1]),
        N("Mul", ["f0_ut", "harm"], ["fh"]),
        N("Div", ["fh", "sr"], ["rad_all"]),
        N("Floor", ["rad_all"], ["rad_floor"]),
        N("Sub", ["rad_all", "rad_floor"], ["rad"]),
        N("Resize", ["rad", "", "down"], ["rad_down"], mode="linear"),
        N("CumSum", ["rad_down", "i1"], ["phase_sum"]),
        N("Mul", ["phase_sum", "two_pi_up"], ["phase"]),
        N("Resize", ["phase", "", "up"], ["phase_up"], mode="linear"),
        N("Sin", ["phase_up"], ["sines"]),
        N("MatMul", ["sines", "lin_w"], ["src0"]),
        N("Tanh", ["src0"], ["src1"]),
        N("Transpose", ["src1"], ["src"], perm=[0, 2, 1]),
        N("Conv", ["src", "noise_w"], ["noise"], kernel_shape=[4], strides=[2], pads=[1, 1]),
        N("Add", ["gx", "noise"], ["gsum"]),
    ]
    nodes += _adain("gen", "gsum", "gen_fc", g, norm)
    nodes += [
        N("Mul", ["gen_adain", "alpha"], ["ax"]),
        N("Sin", ["ax"], ["sx"]),
        N("Mul", ["sx", "sx"], ["sx2"]),
        N("Div", ["sx2", "alpha"], ["sxa"]),
        N("Add", ["gen_adain", "sxa"], ["snake"]),
        N("Conv", ["snake", "post_w", "post_b"], ["post"], kernel_shape=[7], pads=[3, 3]),
        N("Tanh", ["post"], ["post_t"]),
        N("Transpose", ["post_t"], ["post_tt"], perm=[0, 2, 1]),
        N("Reshape", ["post_tt", "flat"], ["audio"]),
    ]
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, "T"]),
        helper.make_tensor_value_info("style", TensorProto.FLOAT, [1, 256]),
        helper.make_tensor_value_info("speed", TensorProto.FLOAT, [1]),
    ]
    outputs = [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N"])]
    model = _model(nodes, inputs, outputs, inits)
    onnx.checker.check_model(model, full_check=True)
    return model


def _adain(prefix: str, x: str, fc: str, channels: int, norm: bool) -> list[onnx.NodeProto]:
    """AdaIN as the export decomposes it: (1 + gamma) * (x - mean) / sqrt(var + eps) + beta."""
    p = prefix
    nodes = [
        N("MatMul", ["style", fc], [f"{p}_h"]),
        N("Unsqueeze", [f"{p}_h", "ax2"], [f"{p}_h3"]),
        N("Split", [f"{p}_h3"], [f"{p}_gamma", f"{p}_beta"], axis=1, num_outputs=2),
    ]
    if norm:
        nodes += [
            N("ReduceMean", [x, "ax_t"], [f"{p}_mean"], keepdims=1),
            N("Sub", [x, f"{p}_mean"], [f"{p}_xc"]),
            N("Pow", [f"{p}_xc", "two"], [f"{p}_sq"]),
            N("ReduceMean", [f"{p}_sq", "ax_t"], [f"{p}_var"], keepdims=1),
            N("Add", [f"{p}_var", "eps"], [f"{p}_ve"]),
            N("Sqrt", [f"{p}_ve"], [f"{p}_std"]),
            N("Div", [f"{p}_xc", f"{p}_std"], [f"{p}_xn"]),
        ]
    else:
        nodes.append(N("Identity", [x], [f"{p}_xn"]))
    nodes += [
        N("Add", [f"{p}_gamma", "one"], [f"{p}_g1"]),
        N("Mul", [f"{p}_xn", f"{p}_g1"], [f"{p}_xs"]),
        N("Add", [f"{p}_xs", f"{p}_beta"], [f"{p}_adain"]),
    ]
    return nodes


def anatomy_feeds(n_phonemes: int = 30, *, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 178, size=n_phonemes)
    tokens = np.concatenate([[0], ids, [0]]).astype(np.int64)[None, :]
    style = (rng.standard_normal((1, 256)) * 0.5).astype(np.float32)
    return {"tokens": tokens, "style": style, "speed": np.array([1.0], np.float32)}


SPEECH_SAMPLES_PER_FRAME = 600


def timed_anatomy_model(seed: int = 0) -> onnx.ModelProto:
    """`kokoro_anatomy_model` at Kokoro's 600 samples per frame with silent pads, for word
    timestamps and silence trimming as on the real model.

    The pad token's embedding is far below every other in channel 0 and lasts long (its
    duration weight makes it predict 7-8 frames). A per-frame gain `Sigmoid(2 * features[0] +
    8)` (about 1 on the text's frames, 1e-7 on the pads') rides along the decoder's output as
    one more channel (the generator's upsampler gives it zero weight); the generator's audio,
    resampled from 16 to 600 samples per frame (nearest), is multiplied by it. Everything added
    is per frame, so the back stays windowable and the split cuts it as before.
    """
    model = kokoro_anatomy_model(seed)
    graph = model.graph
    arrays = {t.name: onnx.numpy_helper.to_array(t).copy() for t in graph.initializer}
    arrays["emb"][0, 0] = -12.0
    arrays["dur_w"][0, 0] = -0.3
    ups = arrays["ups_w"]
    arrays["ups_w"] = np.concatenate([ups, np.zeros((1, *ups.shape[1:]), np.float32)])
    arrays.update(
        row=np.array([1, 1, -1], np.int64),
        ch0=np.array([0], np.int64),
        ch1=np.array([1], np.int64),
        ch_gain=np.array([ups.shape[0]], np.int64),
        ch_end=np.array([ups.shape[0] + 1], np.int64),
        gain_k=np.array(2.0, np.float32),
        gain_b=np.array(8.0, np.float32),
        up_audio=np.array([1.0, 1.0, SPEECH_SAMPLES_PER_FRAME / SAMPLES_PER_FRAME], np.float32),
        up_gain=np.array([1.0, 1.0, SPEECH_SAMPLES_PER_FRAME / 2], np.float32),
    )
    del graph.initializer[:]
    graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in arrays.items())
    voiced = next(k for k, n in enumerate(graph.node) if n.output[0] == "hidden")
    graph.node[voiced].output[0] = "hidden_v"  # "hidden" becomes the voice plus the gain
    gain = [
        N("Slice", ["asr", "ch0", "ch1", "ax1"], ["gain_in"]),
        N("Mul", ["gain_in", "gain_k"], ["gain_s"]),
        N("Add", ["gain_s", "gain_b"], ["gain_l"]),
        N("Sigmoid", ["gain_l"], ["gain"]),
        N("Resize", ["gain", "", "up2"], ["gain2"], mode="nearest"),
        N("Concat", ["hidden_v", "gain2"], ["hidden"], axis=1),
    ]
    for k, node in enumerate(gain):
        graph.node.insert(voiced + 1 + k, node)
    last = graph.node[-1]
    assert last.output[0] == "audio"
    last.output[0] = "audio16"
    graph.node.extend(
        [
            N("Slice", ["hidden", "ch_gain", "ch_end", "ax1"], ["gain_h"]),
            N("Resize", ["gain_h", "", "up_gain"], ["gain_up"], mode="nearest"),
            N("Reshape", ["audio16", "row"], ["audio_row"]),
            N("Resize", ["audio_row", "", "up_audio"], ["audio_up"], mode="nearest"),
            N("Mul", ["audio_up", "gain_up"], ["audio_gained"]),
            N("Reshape", ["audio_gained", "flat"], ["audio"]),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    return model
