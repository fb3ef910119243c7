"""Small ONNX graphs for the graph-optimization tests, built in code (no files shipped).

- `contrib_model`: FastGelu, SkipLayerNormalization, FusedMatMul (transA, alpha), BiasGelu,
  Gelu and QuickGelu from com.microsoft, as ORT's optimizer writes them;
- `adain_snake_model`: Kokoro's generator block: decomposed AdaIN (style-dependent affine),
  Snake, Conv, a second AdaIN sharing the first one's normalization;
- `qdq_adain_snake_model`: the same block after static INT8 (QDQ): AdaIN + Snake between a
  uint8 input and a quantized Conv, and between a float input and another, in Kokoro's 1-D or
  its conv2d layout (Squeeze/Unsqueeze around the chain);
- `stft_model`: a windowed one-sided STFT followed by Kokoro's transpose;
- `plain_model`: MatMul + Relu, nothing any pass can fuse or rewrite;
- `aligner_model`: a tiny Kokoro-contract TTS (tokens/style/speed -> audio) with a text conv,
  a bidirectional LSTM, self-attention with an all-ones mask, a duration predictor
  (Round -> Clip(min 1)) and the alignment that repeats token features per frame, so static
  shape binding and its length masking can be checked end to end;
- `run`: outputs of a model on feeds with ORT CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N = helper.make_node


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: dict[str, np.ndarray],
    *,
    opset: int = 20,
    ms: bool = False,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "test",
        inputs,
        outputs,
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    imports = [helper.make_opsetid("", opset)]
    if ms:
        imports.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=imports, producer_name="kokoro-opt-tests")
    model.ir_version = 10
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def contrib_model(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    h = 16

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    inits = {
        "bias": w(h),
        "gamma": (1 + w(h)).astype(np.float32),
        "beta": w(h),
        "skip_bias": w(h),
        "wt": w(h, h),
        "bias2": w(h),
    }
    ms = "com.microsoft"
    nodes = [
        N("FastGelu", ["x", "bias"], ["g1"], domain=ms),
        N(
            "SkipLayerNormalization",
            ["g1", "skip", "gamma", "beta", "skip_bias"],
            ["ln", "", "", "sum"],
            domain=ms,
            epsilon=1e-5,
        ),
        # transA on a [1, 8, 16] input: [1, 16, 8] @ wt -> needs wt [8, k]; use transB instead
        N("FusedMatMul", ["ln", "wt"], ["mm"], domain=ms, transB=1, alpha=0.5),
        N("BiasGelu", ["mm", "bias2"], ["bg"], domain=ms),
        N("Gelu", ["bg"], ["ge"], domain=ms),
        N("QuickGelu", ["ge"], ["qg"], domain=ms, alpha=1.5),
        N("Add", ["qg", "sum"], ["y"]),
        N("FusedMatMul", ["x", "x"], ["gram"], domain=ms, transA=1),
    ]
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, h]),
            helper.make_tensor_value_info("skip", TensorProto.FLOAT, [1, 8, h]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, h]),
            helper.make_tensor_value_info("gram", TensorProto.FLOAT, [1, h, h]),
        ],
        inits,
        ms=True,
    )
    feeds = {
        "x": rng.standard_normal((1, 8, h)).astype(np.float32),
        "skip": rng.standard_normal((1, 8, h)).astype(np.float32),
    }
    return model, feeds


def adain_snake_model(
    seed: int = 0, *, channels: int = 12, frames: int = 200
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x -> AdaIN(style) -> Snake -> Conv -> AdaIN(style') sharing the norm with a 3rd branch."""
    rng = np.random.default_rng(seed)
    c = channels
    alpha = rng.uniform(0.2, 1.6, (1, c, 1)).astype(np.float32)
    alpha[0, 0, 0] = 1e-4  # Kokoro has near-zero alphas; the fold must stay exact for them
    inits: dict[str, Any] = {
        "axes": np.array([2], np.int64),
        "eps": np.array(1e-5, np.float32),
        "one": np.array(1.0, np.float32),
        "two": np.array(2.0, np.float32),
        "fc": (rng.standard_normal((8, 2 * c)) * 0.3).astype(np.float32),
        "fc2": (rng.standard_normal((8, 2 * c)) * 0.3).astype(np.float32),
        "split": np.array([c, c], np.int64),
        "ax2": np.array([2], np.int64),
        "alpha": alpha,
        "inv_alpha": (1.0 / alpha).astype(np.float32),
        "w": (rng.standard_normal((c, c, 5)) * 0.2).astype(np.float32),
        "b": (rng.standard_normal(c) * 0.1).astype(np.float32),
    }

    def adain(prefix: str, fc: str, norm: str) -> list[onnx.NodeProto]:
        return [
            N("MatMul", ["style", fc], [f"{prefix}_h"]),
            N("Unsqueeze", [f"{prefix}_h", "ax2"], [f"{prefix}_h3"]),
            N("Split", [f"{prefix}_h3", "split"], [f"{prefix}_g", f"{prefix}_b"], axis=1),
            N("Add", [f"{prefix}_g", "one"], [f"{prefix}_g1"]),
            N("Mul", [f"{prefix}_g1", norm], [f"{prefix}_m"]),
            N("Add", [f"{prefix}_m", f"{prefix}_b"], [f"{prefix}_y"]),
        ]

    nodes = [
        N("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
        N("Sub", ["x", "mean"], ["d"]),
        N("Mul", ["d", "d"], ["d2"]),
        N("ReduceMean", ["d2", "axes"], ["var"], keepdims=1),
        N("Add", ["var", "eps"], ["ve"]),
        N("Sqrt", ["ve"], ["sd"]),
        N("Div", ["d", "sd"], ["n"]),
        *adain("a1", "fc", "n"),
        N("Mul", ["alpha", "a1_y"], ["ax"]),
        N("Sin", ["ax"], ["s"]),
        N("Pow", ["s", "two"], ["s2"]),
        N("Mul", ["inv_alpha", "s2"], ["t"]),
        N("Add", ["a1_y", "t"], ["snake"]),
        N("Conv", ["snake", "w", "b"], ["conv"], kernel_shape=[5], pads=[2, 2]),
        *adain("a2", "fc2", "n"),
        N("Add", ["conv", "a2_y"], ["y"]),
    ]
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, frames]),
            helper.make_tensor_value_info("style", TensorProto.FLOAT, [1, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, frames])],
        inits,
    )
    feeds = {
        "x": (rng.standard_normal((1, c, frames)) * 2 + 0.5).astype(np.float32),
        "style": rng.standard_normal((1, 8)).astype(np.float32),
    }
    return model, feeds


def qdq_adain_snake_model(
    seed: int = 0, *, channels: int = 8, frames: int = 96, conv2d_layout: bool = False
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """u (uint8) -> DQ -> AdaIN -> Snake -> Q -> DQ -> Conv -> y_int8, and
    x (float) -> AdaIN -> Snake -> Q -> DQ -> Conv -> y_float, as ORT's quantizer writes them."""
    rng = np.random.default_rng(seed)
    c = channels
    alpha = rng.uniform(0.2, 1.6, (1, c, 1)).astype(np.float32)
    kernel = [1, 3] if conv2d_layout else [3]
    inits: dict[str, Any] = {
        "flat": np.array([-1], np.int64),
        "one": np.array(1.0, np.float32),
        "two": np.array(2.0, np.float32),
        "ax2": np.array([2], np.int64),
        "alpha": alpha,
        "inv_alpha": (1.0 / alpha).astype(np.float32),
        "s_in": np.array(0.05, np.float32),
        "z_in": np.array(128, np.uint8),
        "s_out": np.array(0.04, np.float32),
        "z_out": np.array(100, np.uint8),
        "w_scale": np.full(c, 0.01, np.float32),
        "w_zero": np.zeros(c, np.int8),
    }
    nodes: list[onnx.NodeProto] = []
    for branch in ("q", "f"):
        for part in ("g", "b"):
            inits[f"{branch}_fc_{part}"] = (rng.standard_normal((8, c)) * 0.3).astype(np.float32)
        w = rng.integers(-100, 100, (c, c, *kernel)).astype(np.int8)
        inits[f"{branch}_w"] = w
        inits[f"{branch}_bias"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
        source = f"{branch}_x3"
        if branch == "q":
            dq_out = "q_x4" if conv2d_layout else source
            nodes.append(N("DequantizeLinear", ["u", "s_in", "z_in"], [dq_out]))
            if conv2d_layout:
                nodes.append(N("Squeeze", [dq_out, "ax2"], [source]))
        else:
            source = "x"
        snake_out = f"{branch}_snake"
        inv_alpha = "inv_alpha"
        if branch == "q":  # the export computes 1/alpha in the graph; one branch does too
            inv_alpha = "q_inv_alpha"
            nodes.append(N("Reciprocal", ["alpha"], [inv_alpha]))
        nodes += [
            N("MatMul", ["style", f"{branch}_fc_g"], [f"{branch}_g0"]),
            N("Reshape", [f"{branch}_g0", "flat"], [f"{branch}_g1"]),
            N("Add", [f"{branch}_g1", "one"], [f"{branch}_g"]),
            N("MatMul", ["style", f"{branch}_fc_b"], [f"{branch}_b0"]),
            N("Reshape", [f"{branch}_b0", "flat"], [f"{branch}_b"]),
            N(
                "InstanceNormalization",
                [source, f"{branch}_g", f"{branch}_b"],
                [f"{branch}_n"],
                epsilon=1e-5,
            ),
            N("Mul", ["alpha", f"{branch}_n"], [f"{branch}_ax"]),
            N("Sin", [f"{branch}_ax"], [f"{branch}_sin"]),
            N("Pow", [f"{branch}_sin", "two"], [f"{branch}_sin2"]),
            N("Mul", [inv_alpha, f"{branch}_sin2"], [f"{branch}_t"]),
            N("Add", [f"{branch}_n", f"{branch}_t"], [snake_out]),
        ]
        if conv2d_layout:
            nodes.append(N("Unsqueeze", [snake_out, "ax2"], [f"{branch}_snake4"]))
            snake_out = f"{branch}_snake4"
        nodes += [
            N("QuantizeLinear", [snake_out, "s_out", "z_out"], [f"{branch}_v"]),
            N("DequantizeLinear", [f"{branch}_v", "s_out", "z_out"], [f"{branch}_vf"]),
            N("DequantizeLinear", [f"{branch}_w", "w_scale", "w_zero"], [f"{branch}_wf"], axis=0),
            N(
                "Conv",
                [f"{branch}_vf", f"{branch}_wf", f"{branch}_bias"],
                [f"y_{branch}"],
                kernel_shape=kernel,
                pads=[0, 1, 0, 1] if conv2d_layout else [1, 1],
            ),
        ]
    u_shape = [1, c, 1, frames] if conv2d_layout else [1, c, frames]
    y_shape = u_shape
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info("u", TensorProto.UINT8, u_shape),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, frames]),
            helper.make_tensor_value_info("style", TensorProto.FLOAT, [1, 8]),
        ],
        [
            helper.make_tensor_value_info("y_q", TensorProto.FLOAT, y_shape),
            helper.make_tensor_value_info("y_f", TensorProto.FLOAT, y_shape),
        ],
        inits,
    )
    codes = np.clip(np.round(rng.normal(120, 30, u_shape)), 0, 255).astype(np.uint8)
    feeds = {
        "u": codes,
        "x": (rng.standard_normal((1, c, frames)) * 2 + 0.5).astype(np.float32),
        "style": rng.standard_normal((1, 8)).astype(np.float32),
    }
    return model, feeds


def stft_model(seed: int = 0, length: int = 400) -> tuple[onnx.ModelProto, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(20) / 20)).astype(np.float32)
    inits = {"step": np.array(5, np.int64), "win": window, "len": np.array(20, np.int64)}
    nodes = [
        N("STFT", ["x", "step", "win", "len"], ["spec"], onesided=1),
        N("Transpose", ["spec"], ["y"], perm=[0, 2, 1, 3]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 11, "frames", 2])],
        inits,
    )
    return model, {"x": rng.standard_normal((1, length)).astype(np.float32)}


def plain_model(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inits = {"w": rng.standard_normal((6, 4)).astype(np.float32)}
    nodes = [N("MatMul", ["x", "w"], ["h"]), N("Relu", ["h"], ["y"])]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        inits,
    )
    return model, {"x": rng.standard_normal((2, 6)).astype(np.float32)}


def aligner_model(
    seed: int = 0,
    *,
    token_dims: tuple[Any, Any] = (1, "T"),
    style_dims: tuple[Any, Any] = (1, 256),
) -> onnx.ModelProto:
    """A tiny Kokoro-contract model whose audio length comes from predicted durations."""
    rng = np.random.default_rng(seed)
    c, hid = 8, 4

    def w(*shape: int, s: float = 0.4) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    inits: dict[str, Any] = {
        "emb": w(178, c, s=0.8),
        "tconv_w": w(c, c, 3),
        "lstm_w": w(2, 4 * hid, c),
        "lstm_r": w(2, 4 * hid, hid),
        "lstm_b": w(2, 8 * hid, s=0.1),
        "att_scale": np.array(0.3, np.float32),
        "dur_w": w(2 * hid, 1),
        "dur_scale": np.array(6.0, np.float32),
        "one": np.array(1.0, np.float32),
        "big_neg": np.array(-1e9, np.float32),
        "i0": np.array(0, np.int64),
        "i1": np.array(1, np.int64),
        "i_last": np.array(-1, np.int64),
        "ax0": np.array([0], np.int64),
        "ax1": np.array([1], np.int64),
        "ax2": np.array([2], np.int64),
        "head1": np.array([1], np.int64),
        "flat": np.array([-1], np.int64),
        "btc": np.array([1, -1, 2 * hid], np.int64),
        "style_w": w(256, 2 * hid, s=0.05),
        "fconv_w": w(1, 2 * hid, 3, s=0.3),
    }
    nodes = [
        # text side: embedding, a masked-fill-free text conv, bidirectional LSTM
        N("Gather", ["emb", "tokens"], ["e"]),
        N("Transpose", ["e"], ["e_t"], perm=[0, 2, 1]),
        N("Conv", ["e_t", "tconv_w"], ["tc"], kernel_shape=[3], pads=[1, 1]),
        N("Transpose", ["tc"], ["tc_t"], perm=[2, 0, 1]),
        N(
            "LSTM",
            ["tc_t", "lstm_w", "lstm_r", "lstm_b"],
            ["ly", "", ""],
            hidden_size=hid,
            direction="bidirectional",
        ),
        N("Transpose", ["ly"], ["ly_t"], perm=[2, 0, 1, 3]),
        N("Reshape", ["ly_t", "btc"], ["h0"]),
        # self-attention with an all-ones mask sized from the tokens' shape (as the export)
        N("Shape", ["tokens"], ["tok_shape"]),
        N("Gather", ["tok_shape", "i1"], ["t_len"]),
        N("Unsqueeze", ["t_len", "ax0"], ["t_len1"]),
        N("Concat", ["head1", "t_len1"], ["mask_shape"], axis=0),
        N(
            "ConstantOfShape",
            ["mask_shape"],
            ["ones"],
            value=numpy_helper.from_array(np.array([1.0], np.float32)),
        ),
        N("Sub", ["one", "ones"], ["inv"]),
        N("Mul", ["inv", "big_neg"], ["ext"]),
        N("Unsqueeze", ["ext", "ax1"], ["ext3"]),
        N("Transpose", ["h0"], ["h0_t"], perm=[0, 2, 1]),
        N("MatMul", ["h0", "h0_t"], ["scores0"]),
        N("Mul", ["scores0", "att_scale"], ["scores1"]),
        N("Add", ["scores1", "ext3"], ["scores"]),
        N("Softmax", ["scores"], ["probs"], axis=-1),
        N("MatMul", ["probs", "h0"], ["att"]),
        N("Add", ["h0", "att"], ["h"]),
        # style conditioning (per utterance)
        N("MatMul", ["style", "style_w"], ["sp"]),
        N("Unsqueeze", ["sp", "ax1"], ["sp3"]),
        N("Add", ["h", "sp3"], ["hs"]),
        # durations: round(sigmoid * scale / speed), at least 1
        N("MatMul", ["hs", "dur_w"], ["dl"]),
        N("Sigmoid", ["dl"], ["ds"]),
        N("Squeeze", ["ds", "ax2"], ["ds2"]),
        N("Mul", ["ds2", "dur_scale"], ["dsc"]),
        N("Div", ["dsc", "speed"], ["dd"]),
        N("Round", ["dd"], ["dr"]),
        N("Clip", ["dr", "one"], ["dur"]),
        N("Cast", ["dur"], ["dur_i"], to=TensorProto.INT64),
        N("Gather", ["dur_i", "i0"], ["d"], axis=0),
        # alignment [T, F]: token t covers frames [cum[t] - d[t], cum[t])
        N("CumSum", ["d", "i0"], ["cum"]),
        N("Gather", ["cum", "i_last"], ["total"]),
        N("Range", ["i0", "total", "i1"], ["frames"]),
        N("Sub", ["cum", "d"], ["start"]),
        N("Unsqueeze", ["frames", "ax0"], ["f_row"]),
        N("Unsqueeze", ["start", "ax1"], ["s_col"]),
        N("Unsqueeze", ["cum", "ax1"], ["e_col"]),
        N("GreaterOrEqual", ["f_row", "s_col"], ["ge"]),
        N("Less", ["f_row", "e_col"], ["lt"]),
        N("And", ["ge", "lt"], ["aln_b"]),
        N("Cast", ["aln_b"], ["aln"], to=TensorProto.FLOAT),
        N("Transpose", ["hs"], ["hs_t"], perm=[0, 2, 1]),
        N("MatMul", ["hs_t", "aln"], ["feat"]),
        # frame side: a conv and tanh, flattened to audio
        N("Conv", ["feat", "fconv_w"], ["fc"], kernel_shape=[3], pads=[1, 1]),
        N("Tanh", ["fc"], ["fct"]),
        N("Reshape", ["fct", "flat"], ["audio"]),
    ]
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.INT64, list(token_dims)),
        helper.make_tensor_value_info("style", TensorProto.FLOAT, list(style_dims)),
        helper.make_tensor_value_info("speed", TensorProto.FLOAT, [1]),
    ]
    outputs = [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N"])]
    model = _model(nodes, inputs, outputs, inits)
    onnx.checker.check_model(model, full_check=True)
    return model


def aligner_feeds(n_phonemes: int, *, pad_to: int | None = None, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 178, size=n_phonemes)
    tokens = np.concatenate([[0], ids, [0]]).astype(np.int64)
    if pad_to is not None:
        tokens = np.concatenate([tokens, np.zeros(pad_to - len(tokens), np.int64)])
    style = (rng.standard_normal((1, 256)) * 0.5).astype(np.float32)
    return {"tokens": tokens[None, :], "style": style, "speed": np.array([1.0], np.float32)}
