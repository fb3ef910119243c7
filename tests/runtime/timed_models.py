"""A tiny Kokoro-contract model with a real duration predictor and 600 samples per frame.

`tests.passes.graphs.aligner_model` predicts durations (Round -> Clip -> CumSum, as Kokoro
does) and renders one sample per frame; this wraps it so each frame becomes `hop` samples of a
tone whose loudness follows the frame's value, so trimming, pauses and word timings work on it
as on the real model (600 samples = 25 ms per frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.passes.graphs import aligner_model

HOP = 600


def build_timed_model(path: Path, *, hop: int = HOP, seed: int = 0) -> Path:
    model = aligner_model(seed)
    graph = model.graph
    last = graph.node[-1]
    assert last.output[0] == "audio"
    last.output[0] = "frames_flat"
    tone = (0.2 + 0.1 * np.sin(np.arange(hop) * 0.3)).astype(np.float32).reshape(1, hop)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1, 1], np.int64), "col"),
            numpy_helper.from_array(tone, "tone"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Reshape", ["frames_flat", "col"], ["frames_col"]),
            helper.make_node("Abs", ["frames_col"], ["frames_abs"]),
            helper.make_node("Mul", ["frames_abs", "tone"], ["frames_tone"]),
            helper.make_node("Reshape", ["frames_tone", "flat"], ["audio"]),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path
