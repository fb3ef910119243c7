"""Expose Kokoro's predicted per-token durations as a graph output named `durations`.

Kokoro predicts how many frames each token lasts, rounds the prediction and clips it to at least
one frame (`Round -> Clip`), and expands the token features with the cumulative sum of those
durations (`CumSum`), which is the alignment between tokens and audio frames. The pass finds that
chain structurally (no node names), whatever was done to the rest of the graph (FP32, static
INT8 with lookup tables, pinned static shapes with length masking, INT4): the tensor that goes
into the `CumSum`, reached from a `Clip` fed by a `Round` through shape-only ops (`Cast`,
`Gather`, `Squeeze`, `Reshape`, `Mul` by a length mask), becomes the output `durations` (int64,
one entry per token, the two pads included). Word timestamps are read from it: each frame is
`len(audio) / sum(durations)` samples (600 for Kokoro v1.0).

A model that already has a duration output (`durations`, `duration`, `pred_dur`) is returned
unchanged; a graph without a unique duration chain is a one-line ModelFormatError.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from kokoro_opt.errors import ModelFormatError

DURATION_OUTPUT = "durations"
DURATION_NAMES = ("durations", "duration", "pred_dur")
# Ops between the Clip and the CumSum that only change dtype or shape (or mask pads).
_PASS_THROUGH = frozenset({"Cast", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Mul", "Flatten"})
_MAX_HOPS = 6


def add_durations_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """(model with a `durations` output, the tensor it reads) or (model, None) when the model
    already has a duration output; the input is not modified."""
    if duration_output(model) is not None:
        return model, None
    source = find_duration_tensor(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    cast = helper.make_node(
        "Cast", [source], [DURATION_OUTPUT], name="durations/Cast", to=TensorProto.INT64
    )
    out.graph.node.append(cast)
    out.graph.output.append(helper.make_tensor_value_info(DURATION_OUTPUT, TensorProto.INT64, None))
    return out, source


def duration_output(model: onnx.ModelProto) -> str | None:
    """The name of the model's duration output, if it has one."""
    names = [o.name for o in model.graph.output]
    return next((n for n in DURATION_NAMES if n in names), None)


def find_duration_tensor(model: onnx.ModelProto) -> str:
    """The tensor of per-token durations that feeds the alignment's CumSum.

    Raises ModelFormatError when there is no such chain or more than one.
    """
    hits = duration_tensors(model)
    if len(hits) != 1:
        problem = "no" if not hits else f"{len(hits)}"
        raise ModelFormatError(
            f"Cannot find Kokoro's duration predictor in this graph: {problem} CumSum fed by "
            "Round -> Clip (expected exactly one), so word timestamps are not available for it."
        )
    return hits[0]


def duration_tensors(model: onnx.ModelProto) -> list[str]:
    """Every tensor that feeds a CumSum and comes from Clip(Round(...)) through shape-only ops
    (sorted; Kokoro has exactly one: its per-token durations, read by the alignment).

    The one structural finder of the duration predictor: the `durations` pass exposes the
    tensor, `graph.anatomy` (the split's front) exposes the same tensor. A `Clip` of a `Round`
    alone is not enough: static INT8 graphs round and clip elsewhere too (the cpu-int8 recipe's
    model has 27 such pairs, one of them the durations).
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    hits: set[str] = set()
    for node in graph.node:
        if node.op_type != "CumSum" or not node.input:
            continue
        if _reaches_round_clip(node.input[0], producer):
            hits.add(node.input[0])
    return sorted(hits)


def _reaches_round_clip(tensor: str, producer: dict[str, onnx.NodeProto]) -> bool:
    """True when `tensor` comes from Clip(Round(...)) through at most _MAX_HOPS pass-through
    ops (following each op's first input)."""
    name = tensor
    for _ in range(_MAX_HOPS + 1):
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type == "Clip":
            first = producer.get(node.input[0])
            return first is not None and first.op_type == "Round"
        if node.op_type not in _PASS_THROUGH:
            return False
        if node.op_type == "Mul":
            # a length mask multiplies the clipped durations; follow whichever side is the chain
            return any(_reaches_round_clip(i, producer) for i in node.input)
        name = node.input[0]
    return False
