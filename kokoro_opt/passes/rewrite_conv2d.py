"""Hot-spot rewrite: run 1-D convolutions as 2-D ones so ORT uses its NCHWc kernels.

ONNX Runtime's CPU provider has fast blocked-layout (NCHWc) convolution kernels, but its layout
transformer only takes 2-D convolutions. Kokoro's generator is all 1-D Conv ([1, C, T] with
kernels 3-11 and dilations 1-5), which run through the generic im2col + GEMM path. This rewrite
expresses each `Conv(x[N, C, T], W[O, C/g, k])` as

    Squeeze(Conv2D(Unsqueeze(x, 2), W[O, C/g, 1, k], pads [0, p0, 0, p1], dilations [1, d]), 2)

which computes the same numbers; ORT then picks NCHWc at session start (ORT_ENABLE_ALL, the
runtime's default) and inserts layout reorders around each conv. The saved model stays
standard ONNX and portable (any runtime runs a 2-D Conv); only ORT CPU gets faster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from kokoro_opt.graph.edit import GraphIndex, attrs, clone, finalize
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult


class Config(PassConfig):
    min_output_channels: int = 1
    """Leave convolutions with fewer output channels alone (tiny convs gain nothing)."""


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Lift every 1-D Conv with constant weights of a copy of `model` to 2-D."""
    work = clone(model)
    index = GraphIndex(work.graph)
    convs = [n for n in work.graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]
    lifted: dict[str, str] = {}
    rewritten = 0
    skipped: dict[str, int] = {}
    axis = index.add_initializer("conv2d_axis2", np.array([2], np.int64))
    for i, node in enumerate(convs):
        ctx.report("rewrite conv2d", i + 1, len(convs))
        w = index.const(node.input[1])
        if w is None:
            skipped["weights are not constant"] = skipped.get("weights are not constant", 0) + 1
            continue
        if w.ndim != 3:
            continue
        if w.shape[0] < config.min_output_channels:
            skipped["few output channels"] = skipped.get("few output channels", 0) + 1
            continue
        a = attrs(node)
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            skipped["auto_pad"] = skipped.get("auto_pad", 0) + 1
            continue
        if node.input[1] not in lifted:
            lifted[node.input[1]] = index.add_initializer(f"{node.input[1]}_2d", w[:, :, None, :])
        pads = list(a.get("pads", [0, 0]))
        new_attrs: dict[str, Any] = {
            "kernel_shape": [1, int(a.get("kernel_shape", [w.shape[2]])[0])],
            "pads": [0, int(pads[0]), 0, int(pads[1])],
            "strides": [1, int(a.get("strides", [1])[0])],
            "dilations": [1, int(a.get("dilations", [1])[0])],
            "group": int(a.get("group", 1)),
        }
        x4 = index.add_node("Unsqueeze", [node.input[0], axis], 1, name=f"{node.name}/to_2d")
        inputs = [x4.output[0], lifted[node.input[1]], *node.input[2:]]
        y4 = index.add_node("Conv", inputs, 1, name=f"{node.name}/conv2d", **new_attrs)
        out = node.output[0]
        node.output[0] = index.fresh(f"{out}_retired")
        index.add_node("Squeeze", [y4.output[0], axis], [out], name=f"{node.name}/to_1d")
        rewritten += 1
    finalize(work.graph)
    details: dict[str, Any] = {
        "conv1d_found": rewritten + sum(skipped.values()),
        "rewritten": rewritten,
        "skipped": skipped,
        "nodes_before": len(model.graph.node),
        "nodes_after": len(work.graph.node),
    }
    return PassResult(work, details)
