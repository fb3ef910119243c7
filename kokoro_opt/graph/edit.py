"""Small, dependable tools for editing ONNX graphs in passes.

`GraphIndex` answers "who makes this tensor, who reads it, is it a constant" for one graph;
`finalize` puts an edited graph back into a valid state (topological order, no dead nodes, no
unused initializers). Every pass that rewrites nodes uses these instead of its own loops.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


def op_key(node: onnx.NodeProto) -> str:
    """`Conv` for standard ops, `com.microsoft:FastGelu` for others."""
    return node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}:{node.op_type}"


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes per op type in the main graph, most frequent first."""
    return dict(Counter(op_key(n) for n in model.graph.node).most_common())


def non_standard_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Ops that are not in the ONNX standard: another domain, or not a registered schema."""
    found: Counter[str] = Counter()
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS or not onnx.defs.has(node.op_type, ""):
            found[op_key(node)] += 1
    return dict(found.most_common())


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    """The model's opset for `domain` (0 when the model does not import it)."""
    for imp in model.opset_import:
        if imp.domain in ({domain} | ({"ai.onnx"} if domain == "" else set())):
            return int(imp.version)
    return 0


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as plain Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def clone(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy, so a pass never changes the model it was given."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


class GraphIndex:
    """Producers, consumers and constants of one graph, kept in step with edits made through it."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = {i.name for i in graph.input}
        self._names: set[str] = {n.name for n in graph.node} | set(self.producer)
        self._names |= set(self.initializers) | self.graph_inputs

    # -- questions -------------------------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        """The value of `name` when it is an initializer or a Constant node's output."""
        if name in self.initializers and name not in self.graph_inputs:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
            value = attrs(node).get("value")
            if isinstance(value, onnx.TensorProto):
                return numpy_helper.to_array(value)
        return None

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The single node reading `name`, when exactly one does and it is no graph output."""
        users = self.users(name)
        if len(users) != 1 or name in self.graph_outputs:
            return None
        return users[0]

    def users(self, name: str) -> list[onnx.NodeProto]:
        """The distinct nodes reading `name` (a node reading it twice is listed once)."""
        seen: set[int] = set()
        found = []
        for node in self.consumers.get(name, []):
            if id(node) not in seen:
                seen.add(id(node))
                found.append(node)
        return found

    def is_output(self, name: str) -> bool:
        return name in self.graph_outputs

    # -- edits -----------------------------------------------------------------------------

    def fresh(self, base: str) -> str:
        """A tensor or node name not used anywhere in the graph yet."""
        name = base
        i = 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def add_node(
        self,
        op_type: str,
        inputs: list[str],
        outputs: list[str] | int = 1,
        *,
        name: str,
        domain: str = "",
        **attributes: Any,
    ) -> onnx.NodeProto:
        """Append a node (order is fixed later by `finalize`); outputs may be a count."""
        node_name = self.fresh(name)
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{node_name}_output_{i}") for i in range(outputs)]
        node = helper.make_node(
            op_type, inputs, outputs, name=node_name, domain=domain or None, **attributes
        )
        if not domain:
            node.ClearField("domain")
        self.graph.node.append(node)
        for out in node.output:
            if out:
                self.producer[out] = node
                self._names.add(out)
        for inp in node.input:
            if inp:
                self.consumers[inp].append(node)
        return node

    def set_input(self, node: onnx.NodeProto, index: int, name: str) -> None:
        """Point input `index` of `node` at tensor `name`."""
        while len(node.input) <= index:
            node.input.append("")
        old = node.input[index]
        if old and node in self.consumers.get(old, []):
            self.consumers[old] = [n for n in self.consumers[old] if n is not node]
        node.input[index] = name
        if name:
            self.consumers[name].append(node)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of `old` (nodes and graph outputs) read `new` instead."""
        for node in list(self.consumers.get(old, [])):
            for i, name in enumerate(node.input):
                if name == old:
                    self.set_input(node, i, new)
        if old in self.graph_outputs:
            # Keep the graph's public names: rename the producer of `new` would be unsafe in
            # general, so route through an Identity that produces the old name.
            self.add_node("Identity", [new], [old], name=f"{old}_keep")

    def remove(self, nodes: Iterable[onnx.NodeProto]) -> None:
        doomed = {id(n) for n in nodes}
        keep = [n for n in self.graph.node if id(n) not in doomed]
        del self.graph.node[:]
        self.graph.node.extend(keep)
        self.__init__(self.graph)  # type: ignore[misc]


def finalize(graph: onnx.GraphProto) -> dict[str, int]:
    """Drop dead nodes and unused initializers, then sort nodes topologically.

    Returns counts of what was removed. Raises ValueError when the graph has a cycle or reads
    a tensor nothing produces (a bug in the pass that edited it).
    """
    live = {o.name for o in graph.output}
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for out in node.output:
            if out:
                producers[out] = node
    keep_ids: set[int] = set()
    stack = [producers[n] for n in live if n in producers]
    while stack:
        node = stack.pop()
        if id(node) in keep_ids:
            continue
        keep_ids.add(id(node))
        for name in node.input:
            live.add(name)
            if name in producers and id(producers[name]) not in keep_ids:
                stack.append(producers[name])
    nodes = [n for n in graph.node if id(n) in keep_ids]
    removed_nodes = len(graph.node) - len(nodes)

    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered: list[onnx.NodeProto] = []
    pending = nodes
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted(
                {n for node in rest for n in node.input if n not in available}
                - {o for node in rest for o in node.output}
            )
            raise ValueError(
                f"graph cannot be ordered: {len(rest)} nodes wait on {missing[:5] or 'a cycle'}"
            )
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)

    used = {name for node in ordered for name in node.input} | {o.name for o in graph.output}
    inits = [t for t in graph.initializer if t.name in used]
    removed_inits = len(graph.initializer) - len(inits)
    if removed_inits:
        del graph.initializer[:]
        graph.initializer.extend(inits)
    produced = {out for node in ordered for out in node.output}
    value_info = [v for v in graph.value_info if v.name in produced]
    if len(value_info) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(value_info)
    return {"nodes_removed": removed_nodes, "initializers_removed": removed_inits}


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Serialized size (what `onnx.save` writes for a model under 2 GB)."""
    return model.ByteSize()


Shape = list[int | str | None]


def inferred_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes ONNX shape inference can tell (ints, symbolic names, or None per dimension).

    Inference stops at ops it has no schema for (com.microsoft kernels), so tensors behind them
    may be missing: callers treat a missing entry as "unknown" and skip what needs it.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # a malformed or exotic graph: only what the model itself declares
        inferred = model
    shapes: dict[str, Shape] = {}
    infos = list(inferred.graph.value_info) + list(inferred.graph.input)
    infos += list(inferred.graph.output)
    for vi in infos:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims: Shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shapes[vi.name] = dims
    for t in model.graph.initializer:
        shapes[t.name] = [int(d) for d in t.dims]
    return shapes
