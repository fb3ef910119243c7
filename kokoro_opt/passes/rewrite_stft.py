"""Hot-spot rewrite: the forward STFT of the harmonic source -> one strided Conv.

Kokoro's generator takes an STFT (n_fft 20, hop 5, Hann window) of the ~10^5-sample harmonic
source; ORT's STFT kernel computes one small DFT per frame and was 3.4 % of the FP32 run time.
A windowed DFT with a fixed frame is a convolution with 2K fixed filters (K = n_fft/2 + 1
one-sided bins):

    real_k[f] = sum_n x[f*hop + n] * w[n] * cos(2 pi k n / N)
    imag_k[f] = -sum_n x[f*hop + n] * w[n] * sin(2 pi k n / N)

so `STFT(x)` becomes `Conv(x[B, 1, L], W[2K, 1, N], stride=hop)` followed by a Reshape and a
Transpose back to STFT's [B, frames, K, 2] layout. Matched when frame step, window and frame
length are constants and the signal is real ([B, L] or [B, L, 1]).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from kokoro_opt.graph.edit import GraphIndex, attrs, clone, finalize
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult
from kokoro_opt.passes.verify import known_shapes


class Config(PassConfig):
    max_frame_length: int = 4096
    """Leave STFTs with longer frames alone (their filter bank would be large)."""


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Replace every matched STFT of a copy of `model` with a Conv filter bank."""
    work = clone(model)
    index = GraphIndex(work.graph)
    stfts = [n for n in work.graph.node if n.op_type == "STFT" and n.domain in ("", "ai.onnx")]
    shapes = known_shapes(work, [n.input[0] for n in stfts], threads=ctx.threads) if stfts else {}
    rewritten = 0
    skipped: dict[str, int] = {}
    for i, node in enumerate(stfts):
        ctx.report("rewrite stft", i + 1, len(stfts))
        why = _rewrite(index, node, shapes.get(node.input[0]), config)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
        else:
            rewritten += 1
    finalize(work.graph)
    details: dict[str, Any] = {
        "matched": len(stfts),
        "rewritten": rewritten,
        "skipped": skipped,
        "nodes_before": len(model.graph.node),
        "nodes_after": len(work.graph.node),
    }
    return PassResult(work, details)


def _rewrite(
    index: GraphIndex, node: onnx.NodeProto, signal_shape: list[Any] | None, config: Config
) -> str | None:
    ins = list(node.input) + [""] * (4 - len(node.input))
    signal, step_name, window_name, length_name = ins[:4]
    step = index.const(step_name) if step_name else None
    if step is None:
        return "frame step is not a constant"
    window = index.const(window_name) if window_name else None
    length = index.const(length_name) if length_name else None
    if window is None and length is None:
        return "neither window nor frame length is a constant"
    n = int(length.reshape(-1)[0]) if length is not None else int(window.shape[0])
    if window is None:
        window = np.ones(n, np.float32)
    if window.shape != (n,) or n > config.max_frame_length or n < 1:
        return "window and frame length disagree"
    if signal_shape is None or len(signal_shape) not in (2, 3):
        return "signal rank unknown"
    if len(signal_shape) == 3 and signal_shape[2] != 1:
        return "complex signal"
    onesided = int(attrs(node).get("onesided", 1))
    bins = n // 2 + 1 if onesided else n
    k = np.arange(bins)[:, None]
    t = np.arange(n)[None, :]
    angle = 2.0 * np.pi * k * t / n
    w64 = window.astype(np.float64)[None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    # Exact zeros where the DFT has them (sin at bins 0 and N/2, cos at quarter turns): an FFT
    # gives exactly 0 there, and Kokoro's phase (atan2 as Div + Where) flips by pi on the sign
    # of a 1e-16 residue.
    cos[np.abs(cos) < 1e-9] = 0.0
    sin[np.abs(sin) < 1e-9] = 0.0
    filters = np.empty((bins, 2, n), np.float64)
    filters[:, 0, :] = w64 * cos
    filters[:, 1, :] = -w64 * sin
    weight = index.add_initializer(
        f"{node.name}_dft_filters", filters.reshape(2 * bins, 1, n).astype(np.float32)
    )
    name = node.name
    if len(signal_shape) == 2:
        axis = index.add_initializer(f"{name}_axis1", np.array([1], np.int64))
        x = index.add_node("Unsqueeze", [signal, axis], 1, name=f"{name}/to_ncl").output[0]
    else:
        x = index.add_node("Transpose", [signal], 1, name=f"{name}/to_ncl", perm=[0, 2, 1]).output[
            0
        ]
    conv = index.add_node(
        "Conv",
        [x, weight],
        1,
        name=f"{name}/dft_conv",
        kernel_shape=[n],
        strides=[int(step.reshape(-1)[0])],
    ).output[0]
    shape = index.add_initializer(f"{name}_bkcf", np.array([0, bins, 2, -1], np.int64))
    split = index.add_node("Reshape", [conv, shape], 1, name=f"{name}/bins").output[0]
    index.add_node(
        "Transpose", [split], [node.output[0]], name=f"{name}/to_stft", perm=[0, 3, 1, 2]
    )
    _retire(index, node)
    return None


def _retire(index: GraphIndex, node: onnx.NodeProto) -> None:
    out = node.output[0]
    node.output[0] = index.fresh(f"{out}_retired")
