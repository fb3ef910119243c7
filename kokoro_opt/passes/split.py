"""Split a Kokoro model at the alignment into a front and a windowable back half.

`front.onnx` (tokens, style, speed -> durations, aligned features, F0 and energy curves, and
the harmonic source's phase increments) runs once per segment; `back.onnx` (those frame-level
inputs for any run of frames, the style and `phase0` -> the audio of those frames) can run on
windows. The boundary is found from the graph's structure (`graph.anatomy`).

The harmonic source accumulates its phase with a `CumSum` over the frames it is given. The back
adds `phase0` (shape [1, 1, harmonics]) to that sum, so a window that starts at step `s` gets
the phase the whole segment would have there: `phase0 = cumsum(phase_step)[s - 1]`, computed
by the runtime from the front's `phase_step` output. With one window covering the segment and
`phase0 = 0` the split model computes exactly what the original computes.

With `generator=True` the back is also cut at the generator's input (the first ungrouped
`ConvTranspose` after the alignment) into `decoder.onnx` (the frame-rate AdaIN blocks) and
`generator.onnx`, so a runtime can run the decoder over the whole segment and window only the
generator.

`split.json` beside the graphs records the input and output names, the time axis and rate
(values per frame) of every frame-level tensor, the samples per frame and the receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from kokoro_opt.graph.anatomy import (
    Anatomy,
    NotKokoroError,
    ancestor_nodes,
    back_node_set,
    descendants,
    find_anatomy,
    weight_shape,
)
from kokoro_opt.graph.edit import GraphIndex, attrs, finalize
from kokoro_opt.passes.base import PassConfig, PassContext

FORMAT = 1
FRONT, BACK, DECODER, GENERATOR = "front.onnx", "back.onnx", "decoder.onnx", "generator.onnx"
META = "split.json"

FEATURES, F0, ENERGY, STYLE = "features", "f0", "energy", "style"
PHASE_STEP, PHASE0, DURATIONS, HIDDEN = "phase_step", "phase0", "durations", "hidden"


class Config(PassConfig):
    generator: bool = True
    """Also cut the back at the generator's input (decoder.onnx + generator.onnx)."""
    probe_tokens: tuple[int, int] = (12, 24)
    """Token counts of the two probe runs that find each tensor's time axis and rate."""


@dataclass
class SplitModels:
    front: onnx.ModelProto
    back: onnx.ModelProto
    decoder: onnx.ModelProto | None
    generator: onnx.ModelProto | None
    meta: dict[str, Any] = field(default_factory=dict)

    def files(self) -> dict[str, onnx.ModelProto]:
        out = {FRONT: self.front, BACK: self.back}
        if self.decoder is not None and self.generator is not None:
            out[DECODER] = self.decoder
            out[GENERATOR] = self.generator
        return out


def split(model: onnx.ModelProto, config: Config, ctx: PassContext) -> SplitModels:
    """Cut `model` at the alignment (and optionally at the generator) without changing it."""
    anatomy = find_anatomy(model)
    ctx.report("split", 1, 4)
    types = _elem_types(model)
    out_name = model.graph.output[0].name
    renames = {anatomy.features[0]: FEATURES, anatomy.curves[0]: F0}
    if len(anatomy.curves) > 1:
        renames[anatomy.curves[1]] = ENERGY
    if len(anatomy.features) > 1 or len(anatomy.curves) > 2:
        raise NotKokoroError(
            "Not a Kokoro graph: the back half reads "
            f"{len(anatomy.features)} aligned feature tensors and {len(anatomy.curves)} curves "
            "(Kokoro has 1 and 2)."
        )

    front_outputs = {
        DURATIONS: anatomy.durations,
        **{new: old for old, new in renames.items()},
        PHASE_STEP: anatomy.source_phase_step,
    }
    front = _subgraph(
        model,
        name="kokoro_front",
        inputs=[i.name for i in model.graph.input if i.name not in _inits(model)],
        outputs=front_outputs,
        types=types,
    )
    ctx.report("split", 2, 4)
    back_inputs = {**renames, "style": STYLE} if "style" in anatomy.back_inputs else renames
    back = _subgraph(
        model,
        name="kokoro_back",
        inputs=list(back_inputs),
        outputs={"audio": out_name},
        types=types,
        renames=back_inputs,
    )
    _add_phase0(back, anatomy)
    decoder = generator = None
    hidden = None
    if config.generator:
        hidden = _generator_input(model, anatomy)
        decoder = _subgraph(
            model,
            name="kokoro_decoder",
            inputs=list(back_inputs),
            outputs={HIDDEN: hidden},
            types=types,
            renames=back_inputs,
        )
        gen_inputs = {hidden: HIDDEN, anatomy.curves[0]: F0}
        if "style" in back_inputs:
            gen_inputs["style"] = STYLE
        generator = _subgraph(
            model,
            name="kokoro_generator",
            inputs=list(gen_inputs),
            outputs={"audio": out_name},
            types=types,
            renames=gen_inputs,
        )
        _add_phase0(generator, anatomy)
    ctx.report("split", 3, 4)
    models = SplitModels(front, back, decoder, generator)
    models.meta = _probe(models, anatomy, config, ctx)
    ctx.report("split", 4, 4)
    return models


# -- graph surgery -------------------------------------------------------------------------


def _inits(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # exotic ops: fall back to what the model declares
        inferred = model
    types: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        types[vi.name] = vi.type.tensor_type.elem_type
    for vi in inferred.graph.output:
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _subgraph(
    model: onnx.ModelProto,
    *,
    name: str,
    inputs: list[str],
    outputs: dict[str, str],
    types: dict[str, int],
    renames: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """The nodes that compute `outputs` (public name -> tensor) from `inputs`, as a model.

    Inputs are renamed by `renames` (tensor -> public name); outputs get their public names
    through Identity nodes when they differ.
    """
    renames = renames or {}
    stops = set(inputs)
    probe = onnx.ModelProto()
    probe.graph.CopyFrom(model.graph)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, 0, None) for t in outputs.values())
    nodes = back_node_set(probe, stops) if stops else ancestor_nodes(model, outputs.values())
    sub_nodes = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, inp in enumerate(copy.input):
            if inp in renames:
                copy.input[i] = renames[inp]
        sub_nodes.append(copy)
    graph_outputs = []
    for public, tensor in outputs.items():
        source = renames.get(tensor, tensor)
        if source != public:
            sub_nodes.append(helper.make_node("Identity", [source], [public], name=f"/{public}"))
        graph_outputs.append(
            helper.make_tensor_value_info(public, types.get(tensor) or TensorProto.FLOAT, None)
        )
    declared = {i.name: i for i in model.graph.input}
    graph_inputs = []
    for tensor in inputs:
        public = renames.get(tensor, tensor)
        if tensor in declared:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(declared[tensor])
            vi.name = public
            graph_inputs.append(vi)
        else:
            graph_inputs.append(
                helper.make_tensor_value_info(
                    public, types.get(tensor) or TensorProto.FLOAT, _dynamic_rank(model, tensor)
                )
            )
    used = {i for n in sub_nodes for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    graph = helper.make_graph(sub_nodes, name, graph_inputs, graph_outputs, initializer=inits)
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    sub.producer_name = "kokoro-opt split"
    finalize(sub.graph)
    return sub


def _dynamic_rank(model: onnx.ModelProto, tensor: str) -> list[str] | None:
    """Symbolic dims of the right rank for a cut tensor, when inference knows its rank."""
    for vi in model.graph.value_info:
        if vi.name == tensor and vi.type.tensor_type.HasField("shape"):
            return [
                f"{tensor.strip('/').replace('/', '_')}_{i}"
                for i in range(len(vi.type.tensor_type.shape.dim))
            ]
    return None


def _add_phase0(model: onnx.ModelProto, anatomy: Anatomy) -> None:
    """Add input `phase0` to the harmonic source's running phase sum."""
    index = GraphIndex(model.graph)
    node = index.producer.get(anatomy.source_phase)
    if node is None:
        raise NotKokoroError("The harmonic source's CumSum is not in the back half.")
    if int(attrs(node).get("reverse", 0)) or int(attrs(node).get("exclusive", 0)):
        raise NotKokoroError("The harmonic source's CumSum is reversed or exclusive.")
    summed = node.output[0]
    add = index.add_node("Add", [summed, PHASE0], 1, name=f"{node.name or 'source'}_phase0")
    for user in list(index.users(summed)):
        if user is add:
            continue
        for i, name in enumerate(user.input):
            if name == summed:
                index.set_input(user, i, add.output[0])
    model.graph.input.append(
        helper.make_tensor_value_info(PHASE0, TensorProto.FLOAT, [1, 1, "harmonics"])
    )
    finalize(model.graph)


def _generator_input(model: onnx.ModelProto, anatomy: Anatomy) -> str:
    """The generator's input: the data input of the first ungrouped ConvTranspose after the
    alignment (the decoder's own upsampling ConvTranspose is depthwise)."""
    index = GraphIndex(model.graph)

    after = descendants(index, anatomy.features)
    for node in model.graph.node:
        ungrouped = int(attrs(node).get("group", 1)) == 1
        if node.op_type == "ConvTranspose" and node.output[0] in after and ungrouped:
            return node.input[0]
    raise NotKokoroError("Not a Kokoro graph: no generator upsampler (ConvTranspose) was found.")


# -- probe ---------------------------------------------------------------------------------


def _probe(
    models: SplitModels, anatomy: Anatomy, config: Config, ctx: PassContext
) -> dict[str, Any]:
    """Run the front on two lengths: each output's time axis and values per frame, and the
    back's samples per frame; the receptive field from the back's convolutions."""
    import onnxruntime as ort

    from kokoro_opt.runtime.session import session_options

    def session(m: onnx.ModelProto) -> Any:
        return ort.InferenceSession(
            m.SerializeToString(),
            sess_options=session_options(ctx.threads or 1),
            providers=["CPUExecutionProvider"],
        )

    front = session(models.front)
    names = [o.name for o in front.get_outputs()]
    runs = []
    rng = np.random.default_rng(0)
    style = (rng.standard_normal((1, 256)) * 0.1).astype(np.float32)
    for n in config.probe_tokens:
        feeds = _front_feeds(front, n, style, rng)
        runs.append(dict(zip(names, front.run(None, feeds), strict=True)))
    frames = [r[FEATURES].shape[-1] for r in runs]
    if frames[0] == frames[1]:
        raise NotKokoroError("The probe runs gave the same number of frames; cannot find rates.")
    tensors: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == DURATIONS:
            continue
        a, b = runs[0][name].shape, runs[1][name].shape
        axes = [i for i in range(len(a)) if a[i] != b[i]]
        if len(axes) != 1:
            raise NotKokoroError(f"The front's output {name!r} has no single time axis.")
        axis = axes[0]
        rate = (b[axis] - a[axis]) / (frames[1] - frames[0])
        if rate != int(rate) or a[axis] != int(rate) * frames[0]:
            raise NotKokoroError(f"The front's output {name!r} is not a whole rate per frame.")
        tensors[name] = {"axis": axis, "rate": int(rate)}
    if models.decoder is not None:
        decoder = session(models.decoder)
        hidden = []
        for run in runs:
            feeds = {i.name: run[i.name] for i in decoder.get_inputs() if i.name in run}
            if STYLE in {i.name for i in decoder.get_inputs()}:
                feeds[STYLE] = style
            hidden.append(decoder.run(None, feeds)[0].shape)
        axes = [i for i in range(len(hidden[0])) if hidden[0][i] != hidden[1][i]]
        if len(axes) != 1:
            raise NotKokoroError("The decoder's output has no single time axis.")
        rate = (hidden[1][axes[0]] - hidden[0][axes[0]]) // (frames[1] - frames[0])
        tensors[HIDDEN] = {"axis": axes[0], "rate": int(rate)}
    back = session(models.back)
    out = runs[1]
    feeds = {i.name: out[i.name] for i in back.get_inputs() if i.name in out}
    if STYLE in {i.name for i in back.get_inputs()}:
        feeds[STYLE] = style
    harmonics = out[PHASE_STEP].shape[-1 if tensors[PHASE_STEP]["axis"] != 2 else 1]
    phase_shape = [1] * out[PHASE_STEP].ndim
    phase_shape[
        [i for i in range(out[PHASE_STEP].ndim) if i != tensors[PHASE_STEP]["axis"]][-1]
    ] = harmonics
    feeds[PHASE0] = np.zeros(phase_shape, np.float32)
    audio = back.run(None, feeds)[0]
    per_frame = audio.size / frames[1]
    if per_frame != int(per_frame):
        raise NotKokoroError("The back half's audio is not a whole number of samples per frame.")
    return {
        "format": FORMAT,
        "samples_per_frame": int(per_frame),
        "tensors": tensors,
        "phase0_shape": phase_shape,
        "generator": models.generator is not None,
        "receptive_field_frames": receptive_field(models.back, tensors, frames=frames[1]),
        "generator_receptive_field_frames": (
            receptive_field(models.generator, tensors, frames=frames[1])
            if models.generator is not None
            else None
        ),
        "anatomy": {
            "durations": anatomy.durations,
            "features": list(anatomy.features),
            "curves": list(anatomy.curves),
            "source_phase": anatomy.source_phase,
            "back_nodes": anatomy.back_nodes,
        },
    }


def _front_feeds(front: Any, n_tokens: int, style: np.ndarray, rng: Any) -> dict[str, Any]:
    feeds: dict[str, Any] = {}
    for inp in front.get_inputs():
        if inp.name in ("tokens", "input_ids"):
            ids = rng.integers(1, 178, size=n_tokens)
            feeds[inp.name] = np.concatenate([[0], ids, [0]]).astype(np.int64)[None, :]
        elif inp.name == "style":
            feeds[inp.name] = style
        elif inp.name == "speed":
            dtype = np.int32 if "int32" in inp.type else np.float32
            feeds[inp.name] = np.array([1], dtype)
        else:
            raise NotKokoroError(f"Unknown front input {inp.name!r}.")
    return feeds


def receptive_field(
    back: onnx.ModelProto, tensors: dict[str, dict[str, Any]], *, frames: int
) -> float:
    """How many frames each side one output frame depends on through the back's convolutions.

    Walks the back in graph order tracking, per tensor, its rate in values per frame (from the
    front's outputs and each op's stride or scale) and the reach in frames accumulated along
    the longest path: a Conv adds (k - 1) * d / 2 input values, a ConvTranspose (k - 1) / 2 / s
    of its input values, an STFT half its frame, a linear Resize one input value. Statistics
    over time (ReduceMean, the AdaIN instance norm) and the phase sum are not counted: the
    runtime's statistics policy and `phase0` handle those.
    """
    index = GraphIndex(back.graph)
    rate: dict[str, float] = {}
    reach: dict[str, float] = {}
    public = {FEATURES, F0, ENERGY, HIDDEN}
    for name, info in tensors.items():
        if name in public:
            rate[name] = float(info["rate"])
            reach[name] = 0.0
    for node in back.graph.node:
        data = [i for i in node.input if i in rate]
        if not data:
            continue
        r_in = max(rate[i] for i in data)
        base = max(reach[i] for i in data)
        r_out, extra = r_in, 0.0
        a = attrs(node)
        if node.op_type == "Conv":
            k = _kernel(index, node)
            d = (a.get("dilations") or [1])[-1]
            s = (a.get("strides") or [1])[-1]
            extra = (k - 1) * d / 2 / r_in
            r_out = r_in / s
        elif node.op_type == "ConvTranspose":
            k = _kernel(index, node)
            s = (a.get("strides") or [1])[-1]
            extra = (k - 1) / 2 / s / r_in
            r_out = r_in * s
        elif node.op_type == "STFT":
            step = index.const(node.input[1])
            n = node.input[3] and index.const(node.input[3])
            hop = float(np.asarray(step).reshape(-1)[0]) if step is not None else 1.0
            length = (
                float(np.asarray(n).reshape(-1)[0]) if n is not None and n is not False else hop
            )
            extra = length / 2 / r_in
            r_out = r_in / hop
        elif node.op_type == "Resize":
            scales = index.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if scales is not None and scales.size:
                r_out = r_in * float(np.asarray(scales).reshape(-1)[-1])
            if a.get("mode", b"nearest") in (b"linear", "linear"):
                extra = 1.0 / min(r_in, r_out)
        elif node.op_type in ("ReduceMean", "ReduceSum", "CumSum"):
            continue
        for out in node.output:
            if out:
                rate[out] = r_out
                reach[out] = base + extra
    out = back.graph.output[0].name
    return round(reach.get(out, 0.0), 2)


def _kernel(index: GraphIndex, node: onnx.NodeProto) -> int:
    ks = attrs(node).get("kernel_shape")
    if ks:
        return int(ks[-1])

    shape = weight_shape(index, node.input[1])
    return int(shape[-1]) if shape else 1


def save(models: SplitModels, folder: str | Path) -> Path:
    """Write the split graphs and split.json into `folder` (staged, then renamed into place)."""
    import json

    from kokoro_opt.graph.io import save_model_atomic, staged_folder

    folder = Path(folder)
    with staged_folder(folder) as stage:
        for name, model in models.files().items():
            save_model_atomic(model, stage / name)
        (stage / META).write_text(json.dumps(models.meta, indent=2) + "\n")
    return folder
