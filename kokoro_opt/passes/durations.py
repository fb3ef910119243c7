"""The `durations` pass: give a Kokoro graph a `durations` output for word timestamps.

The graph work (finding the duration predictor's Round -> Clip -> CumSum chain structurally) is
`kokoro_opt.graph.durations`; a model that already has a duration output is left as it is, a
graph without the chain is a one-line ModelFormatError.
"""

from __future__ import annotations

from typing import Literal

import onnx

from kokoro_opt.graph.durations import add_durations_output, duration_output
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult


class Config(PassConfig):
    """No options: the chain is found from the graph's structure."""

    name: Literal["durations"] = "durations"


def run(
    model: onnx.ModelProto, config: Config | None = None, ctx: PassContext | None = None
) -> PassResult:
    """The model with a `durations` output (int64, one entry per token, pads included)."""
    out, source = add_durations_output(model)
    return PassResult(
        out, {"durations": duration_output(out), "source": source, "added": source is not None}
    )
