"""Find Kokoro's anatomy in an ONNX graph from its structure, not from its node names.

Kokoro (StyleTTS 2 + iSTFTNet) turns tokens into audio in two halves joined at the alignment:

- the front: text encoders, the duration predictor (`Round -> Clip`), the alignment matrix
  built from the durations, the *alignment products* (`MatMul(features, alignment)`: token
  features repeated per frame) and the prosody predictor, which ends in two one-channel
  `Conv`s: the F0 curve and the energy curve (2 values per frame);
- the back: the decoder (AdaIN blocks at the frame rate) and the generator, whose harmonic
  source accumulates the F0 phase with a `CumSum` feeding `Sin`.

`find_anatomy` locates these pieces: the durations are the tensor the alignment's `CumSum`
reads, coming from a `Clip` of a `Round` (`graph.durations.duration_tensors`, the one finder
the `durations` pass uses too); the alignment products are the MatMuls that read a tensor
derived from the durations and a token-derived tensor that is not; the harmonic source is the
`CumSum` after the alignment whose result reaches a `Sin`; the curves are the
one-output-channel Convs after the alignment that no other such Conv feeds. The back half is
what the audio needs, walking back from the graph's output and stopping at the alignment
products and the curves; it must read nothing of the front but those and the `style` input.
Anything else is not a Kokoro graph (`NotKokoroError`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import onnx

from kokoro_opt.errors import UserInputError
from kokoro_opt.graph.durations import duration_tensors
from kokoro_opt.graph.edit import GraphIndex

_SEQUENTIAL = frozenset({"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"})


class NotKokoroError(UserInputError):
    """The graph lacks a piece of Kokoro's anatomy that a split needs."""


@dataclass(frozen=True)
class Anatomy:
    """Tensor names of Kokoro's pieces in one graph."""

    durations: str
    """Per-token durations in frames: the tensor the alignment's `CumSum` reads (the `Clip` of
    the `Round` after shape-only ops), as `graph.durations` finds it."""
    features: tuple[str, ...]
    """The alignment products the back half reads (aligned text features, [1, C, F])."""
    curves: tuple[str, ...]
    """The back half's frame-level curves, F0 first (Conv outputs, [1, 1, 2F])."""
    source_phase_step: str
    """The harmonic source's per-step phase increments (the input of its `CumSum`)."""
    source_phase: str
    """The harmonic source's running phase (the output of its `CumSum`)."""
    back_inputs: tuple[str, ...]
    """Every tensor the back half reads from outside itself: features, curves, graph inputs."""
    back_nodes: int
    """How many nodes the back half has."""

    @property
    def cut(self) -> tuple[str, ...]:
        return self.features + self.curves


def find_anatomy(model: onnx.ModelProto) -> Anatomy:
    """Locate Kokoro's pieces in `model` or raise `NotKokoroError` naming the missing one."""
    graph = model.graph
    index = GraphIndex(graph)
    inputs = {i.name for i in graph.input} - set(index.initializers)

    durations = _durations(model)
    from_durations = descendants(index, [durations])
    token_inputs = [name for name in inputs if name == "tokens" or name == "input_ids"]
    from_tokens = descendants(index, token_inputs or sorted(inputs))
    products = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "FusedMatMul") or len(node.input) < 2:
            continue
        a, b = node.input[0], node.input[1]
        for aln, feat in ((a, b), (b, a)):
            if aln in from_durations and feat not in from_durations and feat in from_tokens:
                products.append(node.output[0])
                break
    if not products:
        raise NotKokoroError(
            "Not a Kokoro graph: no alignment product (a MatMul of token features and an "
            "alignment built from the durations) was found."
        )
    after_alignment = descendants(index, products)

    cumsum = _source_cumsum(graph, index, after_alignment)
    curves = _curves(graph, index, after_alignment)
    source_ancestors = _ancestors(index, [cumsum.input[0]])
    f0 = [c for c in curves if c in source_ancestors]
    if not f0:
        raise NotKokoroError(
            "Not a Kokoro graph: no one-channel Conv after the alignment feeds the harmonic "
            "source (the F0 curve)."
        )
    curves = f0[:1] + [c for c in curves if c != f0[0]]

    stops = set(products) | set(curves)
    back_nodes, reached = _walk_back(index, [o.name for o in graph.output], stops)
    sequential = sorted({n.op_type for n in back_nodes if n.op_type in _SEQUENTIAL})
    if sequential:
        raise NotKokoroError(
            f"Not a Kokoro graph: the part after the alignment runs {', '.join(sequential)} "
            "over frames, so it cannot be cut into windows."
        )
    foreign = sorted(r for r in reached if r in inputs and r != "style")
    if foreign:
        raise NotKokoroError(
            f"Not a Kokoro graph: the audio after the alignment still reads {', '.join(foreign)}."
        )
    features = tuple(p for p in products if p in reached)
    if not features:
        raise NotKokoroError("Not a Kokoro graph: the audio does not read the aligned features.")
    back_inputs = tuple(features) + tuple(c for c in curves if c in reached)
    back_inputs += tuple(sorted(r for r in reached if r in inputs))
    return Anatomy(
        durations=durations,
        features=features,
        curves=tuple(c for c in curves if c in reached),
        source_phase_step=cumsum.input[0],
        source_phase=cumsum.output[0],
        back_inputs=back_inputs,
        back_nodes=len(back_nodes),
    )


def back_node_set(model: onnx.ModelProto, stops: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes the graph's outputs need, walking back and stopping at `stops`."""
    index = GraphIndex(model.graph)
    nodes, _ = _walk_back(index, [o.name for o in model.graph.output], set(stops))
    return nodes


def ancestor_nodes(model: onnx.ModelProto, targets: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes needed to compute `targets` (in graph order)."""
    index = GraphIndex(model.graph)
    nodes, _ = _walk_back(index, list(targets), set())
    return nodes


# -- helpers -------------------------------------------------------------------------------


def _durations(model: onnx.ModelProto) -> str:
    found = duration_tensors(model)
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotKokoroError(
            "Not a Kokoro graph: no duration predictor (a Round followed by a Clip) was found."
        )
    raise NotKokoroError(
        f"Not a Kokoro graph: {len(found)} duration predictors (a Round followed by a Clip "
        "feeding a CumSum) were found; Kokoro has one."
    )


def _source_cumsum(
    graph: onnx.GraphProto, index: GraphIndex, after_alignment: set[str]
) -> onnx.NodeProto:
    found = []
    for node in graph.node:
        if node.op_type != "CumSum" or node.output[0] not in after_alignment:
            continue
        downstream = descendants(index, [node.output[0]], limit=12)
        if any(index.producer[t].op_type == "Sin" for t in downstream if t in index.producer):
            found.append(node)
    if len(found) != 1:
        raise NotKokoroError(
            "Not a Kokoro graph: expected one harmonic source (a CumSum after the alignment "
            f"that feeds a Sin), found {len(found)}."
        )
    return found[0]


def _curves(graph: onnx.GraphProto, index: GraphIndex, after_alignment: set[str]) -> list[str]:
    one_channel = []
    for node in graph.node:
        if node.op_type != "Conv" or node.output[0] not in after_alignment:
            continue
        weight = weight_shape(index, node.input[1])
        if weight is not None and weight[0] == 1:
            one_channel.append(node.output[0])
    first = set(one_channel)
    curves = []
    for name in one_channel:
        upstream = _ancestors(index, [name]) - {name}
        if not upstream & first:
            curves.append(name)
    return curves


def weight_shape(index: GraphIndex, name: str) -> list[int] | None:
    """A Conv weight's shape: an initializer, or a DequantizeLinear of one."""
    if name in index.initializers:
        return [int(d) for d in index.initializers[name].dims]
    producer = index.producer.get(name)
    if producer is not None and producer.op_type == "DequantizeLinear":
        return weight_shape(index, producer.input[0])
    value = index.const(name)
    return list(value.shape) if value is not None else None


def descendants(index: GraphIndex, roots: Iterable[str], limit: int | None = None) -> set[str]:
    seen: set[str] = set(roots)
    queue = deque((r, 0) for r in seen)
    while queue:
        name, depth = queue.popleft()
        if limit is not None and depth >= limit:
            continue
        for node in index.consumers.get(name, []):
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    queue.append((out, depth + 1))
    return seen


def _ancestors(index: GraphIndex, roots: Iterable[str]) -> set[str]:
    seen: set[str] = set(roots)
    queue = deque(seen)
    while queue:
        node = index.producer.get(queue.popleft())
        if node is None:
            continue
        for name in node.input:
            if name and name not in seen:
                seen.add(name)
                queue.append(name)
    return seen


def _walk_back(
    index: GraphIndex, targets: list[str], stops: set[str]
) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes needed for `targets` without passing `stops`, and the outside tensors they read."""
    needed: set[int] = set()
    reached: set[str] = set()
    seen: set[str] = set()
    queue = deque(targets)
    while queue:
        name = queue.popleft()
        if name in seen:
            continue
        seen.add(name)
        if name in stops:
            reached.add(name)
            continue
        node = index.producer.get(name)
        if node is None:
            if name not in index.initializers:
                reached.add(name)
            continue
        if id(node) in needed:
            continue
        needed.add(id(node))
        queue.extend(i for i in node.input if i)
        for attr in node.attribute:  # subgraphs (If/Loop) read outer tensors too
            if attr.type == onnx.AttributeProto.GRAPH:
                queue.extend(_outer_reads(attr.g))
    nodes = [n for n in index.graph.node if id(n) in needed]
    return nodes, reached


def _outer_reads(graph: onnx.GraphProto) -> list[str]:
    local = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    local |= {t.name for t in graph.initializer}
    return [i for n in graph.node for i in n.input if i and i not in local]
