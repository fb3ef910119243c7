"""Static window binding: fix a split model's back graph to one window size.

A split folder's back graphs (`back.onnx`, `generator.onnx`; `kokoro-opt split`) render any run
of frames. Bound to a window of `frames` frames, every frame-level input gets the fixed length
the windowed runtime feeds: (frames + overlap + 2 * context) frames times the tensor's rate in
values per frame (split.json); the style and `phase0` get their fixed sizes. onnxsim then folds
what became constant (the Shape -> Gather -> Concat chains that size the per-window tensors)
and shape inference makes every tensor's shape static, which is what CoreML and NPU compilers
want. The arithmetic is unchanged: on the same window the bound graph computes what the dynamic
one computes (checked by `check_window`).

`bind_split` writes a new split folder: the bound back.onnx and generator.onnx, the front and
the decoder as they were (the decoder runs over the whole segment under the `generator`
policy, so it keeps its dynamic length), and split.json with `window` (frames, overlap, context
per bound graph), which `runtime.windowed.SplitModel` reads to render every window at that size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydantic import Field

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.graph.edit import clone, inferred_shapes
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult

MAX_FRAMES = 2048
"""Largest window: 51 s of audio at 25 ms per frame (a segment is at most 510 phonemes)."""
META_FRAMES = "kokoro_opt.window_frames"
META_SPAN = "kokoro_opt.window_span"
BOUND_GRAPHS = ("back.onnx", "generator.onnx")
FIELD_KEYS = {
    "back.onnx": "receptive_field_frames",
    "generator.onnx": "generator_receptive_field_frames",
}


class BoundInput(PassConfig):
    """One graph input's fixed shape: `shape` as it is on any window, with the value on `axis`
    (a time axis at `rate` values per frame) replaced by the window's length."""

    shape: list[int] = Field(min_length=1)
    axis: int | None = None
    rate: int = Field(default=1, ge=1)


class Config(PassConfig):
    frames: int = Field(ge=1, le=MAX_FRAMES)
    """Frames (600 samples each for Kokoro) of audio each window renders."""
    context: int = Field(ge=0, le=256)
    """Input frames on each side of the window (the graph's receptive field, rounded up)."""
    overlap: int = Field(default=1, ge=0, le=64)
    """Frames rendered twice at each join (the runtime cross-fades them)."""
    inputs: dict[str, BoundInput]
    """Every graph input's shape (time axes at any length)."""
    simplify: bool = True
    """Run onnxsim after binding to fold what became constant."""

    @property
    def span(self) -> int:
        """Input frames of every call: the window, the overlap and the context on both sides."""
        return self.frames + self.overlap + 2 * self.context


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Bind a copy of `model`'s inputs to the window span, fold constants, infer shapes."""
    work = clone(model)
    task = f"bind {config.frames}-frame windows"
    ctx.report(task, 0, 3)
    bound = _bind_inputs(work, config)
    _set_meta(work, META_FRAMES, str(config.frames))
    _set_meta(work, META_SPAN, str(config.span))
    details: dict[str, Any] = {
        "frames": config.frames,
        "span": config.span,
        "bound_inputs": bound,
        "nodes_before": len(model.graph.node),
    }
    ctx.report(task, 1, 3)
    if config.simplify:
        work, details["simplify"] = _fold(work, ctx)
    ctx.report(task, 3, 3)
    details["nodes_after"] = len(work.graph.node)
    details.update(static_report(work))
    return PassResult(work, details)


def static_report(model: onnx.ModelProto) -> dict[str, Any]:
    """How many of the graph's tensors shape inference sees fully static, and a few that not."""
    shapes = inferred_shapes(model)
    produced = [o for n in model.graph.node for o in n.output if o]
    dynamic = [
        name
        for name in produced
        if not (shapes.get(name) and all(isinstance(d, int) for d in shapes[name]))
    ]
    return {
        "tensors": len(produced),
        "static_tensors": len(produced) - len(dynamic),
        "dynamic_examples": dynamic[:5],
    }


# -- binding -----------------------------------------------------------------------------------


def _bind_inputs(model: onnx.ModelProto, config: Config) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in inits]
    missing = [vi.name for vi in graph_inputs if vi.name not in config.inputs]
    if missing:
        raise UserInputError(
            f"No shape given for input(s) {', '.join(missing)}: binding a window needs every "
            "input of the back graph (features, curves, style, phase0)."
        )
    bound = []
    for vi in graph_inputs:
        spec = config.inputs[vi.name]
        shape = list(spec.shape)
        if spec.axis is not None:
            if not 0 <= spec.axis < len(shape):
                raise UserInputError(
                    f"Input {vi.name!r}: time axis {spec.axis} is outside its {len(shape)} "
                    "dimensions."
                )
            shape[spec.axis] = config.span * spec.rate
        tt = vi.type.tensor_type
        declared = tt.shape.dim if tt.HasField("shape") else []
        if declared and len(declared) != len(shape):
            raise UserInputError(
                f"Input {vi.name!r} has {len(declared)} dimensions; the shape given has "
                f"{len(shape)}."
            )
        for dim, value in zip(declared, shape, strict=False):
            if dim.HasField("dim_value") and dim.dim_value not in (0, value):
                raise UserInputError(
                    f"Input {vi.name!r} is already fixed at {[d.dim_value for d in declared]}; "
                    f"it cannot take {shape}. Bind the dynamic split folder."
                )
        tt.ClearField("shape")
        for value in shape:
            tt.shape.dim.add().dim_value = value
        bound.append(f"{vi.name}{shape}")
    # Shapes the cut recorded for intermediate tensors are now stale: let inference redo them,
    # and give the outputs theirs (onnxsim wants every output typed with a shape).
    del model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # exotic ops: outputs keep what they declare
        return bound
    shapes = {vi.name: vi for vi in inferred.graph.output}
    for out in model.graph.output:
        found = shapes.get(out.name)
        known = found is not None and found.type.tensor_type.HasField("shape")
        if known and not out.type.tensor_type.HasField("shape"):
            out.type.tensor_type.shape.CopyFrom(found.type.tensor_type.shape)
    return bound


def _fold(model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """onnxsim's constant folding and shape inference, without its fusions and without
    folding integer weights.

    Fusions (MatMul + Add -> Gemm and the like) change float rounding, which an INT8 graph's
    quantizers turn into sample differences of 0.1; folding alone keeps the arithmetic
    identical. Integer weight tensors (int8 codes dequantized by Cast -> Mul or
    DequantizeLinear) are hidden from onnxsim as graph inputs while it runs, so they stay
    stored as integers instead of becoming float tensors four times their size.
    """
    from kokoro_opt.passes import simplify

    integer = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4)
    hidden = [t for t in model.graph.initializer if t.data_type in integer and _numel(t) > 256]
    names = {t.name for t in hidden}
    kept = [t for t in model.graph.initializer if t.name not in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for t in hidden:
        model.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    result = simplify.run(model, simplify.Config(optimizations=False), ctx)
    out = result.model
    inputs = [vi for vi in out.graph.input if vi.name not in names]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    used = {i for n in out.graph.node for i in n.input}
    out.graph.initializer.extend(t for t in hidden if t.name in used)
    details = {k: v for k, v in result.details.items() if k not in ("messages", "size_after")}
    details["integer_weights_kept"] = len(hidden)
    return out, details


def _numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


# -- split folders -----------------------------------------------------------------------------


@dataclass
class BoundSplit:
    """What `bind_split` wrote: the folder and, per bound graph, the pass's details and check."""

    folder: Path
    window: dict[str, Any]
    configs: dict[str, Config]
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)


def check_frames(frames: int) -> None:
    """A one-line error for a window size the pass does not take."""
    if not 1 <= frames <= MAX_FRAMES:
        raise UserInputError(
            f"A window holds 1 to {MAX_FRAMES} frames (25 ms each); got {frames}. Try 24 (0.6 s) "
            "or 96 (2.4 s)."
        )


def read_split(folder: Path) -> dict[str, Any]:
    """split.json of a split folder, or a one-line error."""
    meta_path = folder / "split.json"
    if not meta_path.is_file():
        raise UserInputError(
            f"{folder} is not a split folder (no split.json); make one with "
            "`kokoro-opt split MODEL -o DIR`."
        )
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    if meta.get("window"):
        raise UserInputError(
            f"{folder} is already bound to {meta['window']['frames']}-frame windows; bind the "
            "dynamic split folder it came from."
        )
    return meta


def window_configs(
    folder: Path, meta: dict[str, Any], *, frames: int, overlap: int, simplify: bool = True
) -> dict[str, Config]:
    """The pass's config for each back graph of the folder: the context is the graph's
    receptive field rounded up (as the runtime's default); input shapes come from one run of
    the front (and decoder) on a reference utterance."""
    configs: dict[str, Config] = {}
    probe = _probe_tensors(folder, meta)
    for graph in BOUND_GRAPHS:
        path = folder / graph
        if not path.is_file() or meta.get(FIELD_KEYS[graph]) is None:
            continue
        proto = onnx.load(str(path), load_external_data=False)
        inits = {t.name for t in proto.graph.initializer}
        inputs: dict[str, BoundInput] = {}
        for vi in proto.graph.input:
            if vi.name in inits:
                continue
            if vi.name not in probe:
                raise ModelFormatError(f"{path}: unknown input {vi.name!r} for a back graph.")
            info = meta["tensors"].get(vi.name)
            inputs[vi.name] = BoundInput(
                shape=list(probe[vi.name]),
                axis=None if info is None else int(info["axis"]),
                rate=1 if info is None else int(info["rate"]),
            )
        configs[graph] = Config(
            frames=frames,
            context=math.ceil(float(meta[FIELD_KEYS[graph]])),
            overlap=overlap,
            inputs=inputs,
            simplify=simplify,
        )
    if BOUND_GRAPHS[0] not in configs:
        raise UserInputError(f"{folder} has no back.onnx to bind.")
    return configs


def bind_split(
    source: Path,
    output: Path,
    *,
    frames: int,
    overlap: int = 1,
    simplify: bool = True,
    check: bool = True,
    ctx: PassContext,
) -> BoundSplit:
    """Write `output`: `source`'s split folder with its back graphs bound to `frames`-frame
    windows (staged beside it, then renamed into place)."""
    from kokoro_opt.graph.io import load_model, save_model_atomic, staged_folder

    check_frames(frames)
    meta = read_split(source)
    configs = window_configs(source, meta, frames=frames, overlap=overlap, simplify=simplify)
    window = {
        "frames": frames,
        "overlap": overlap,
        "context": {graph: c.context for graph, c in configs.items()},
        "span": {graph: c.span for graph, c in configs.items()},
    }
    result = BoundSplit(output, window, configs)
    with staged_folder(output) as stage:
        for name in sorted(p.name for p in source.glob("*.onnx")):
            if name in configs:
                bound = run(load_model(source / name), configs[name], ctx)
                save_model_atomic(bound.model, stage / name)
                result.graphs[name] = {"context": configs[name].context, **bound.details}
                del bound
            else:
                _link_or_copy(source / name, stage / name)
        if check:
            for name in configs:
                result.graphs[name]["check"] = check_window(
                    source, stage, name, configs[name], threads=ctx.threads
                )
        meta = {**meta, "window": window, "bound_from": str(source)}
        (stage / "split.json").write_text(json.dumps(meta, indent=2) + "\n")
    return result


def window_feeds(
    folder: Path, graph: str, config: Config, *, count: int = 3, threads: int | None = 1
) -> list[dict[str, np.ndarray]]:
    """The inputs of `count` windows of `graph` spread over a reference utterance (its start,
    middle and end for 3), placed as the runtime places them; a segment shorter than the span
    is edge-padded."""
    from kokoro_opt.runtime.windowed import BACK, StaticWindow

    split, front, style = _front_run(folder, threads)
    source: dict[str, np.ndarray] = front.tensors
    session = split.back
    if graph != BACK:
        if split.decoder is None or split.generator is None:
            raise ModelFormatError(f"{folder} has no decoder.onnx for {graph}.")
        decoder_feeds = {
            i.name: style if i.name == "style" else front.tensors[i.name]
            for i in split.decoder.get_inputs()
        }
        (hidden,) = split.decoder.run(None, decoder_feeds)
        source = {"hidden": hidden, "f0": front.tensors["f0"]}
        session = split.generator
    static = StaticWindow(config.frames, config.overlap, {graph: config.context})
    last = max(0, front.frames - config.frames)
    starts = sorted({round(last * k / max(1, count - 1)) for k in range(count)})
    feeds = []
    for start in starts:
        lo, hi = static.place(start, graph, front.frames)
        feeds.append(split.window_feeds(session, source, style, front, lo, hi))
    return feeds


def check_window(
    dynamic: Path,
    bound: Path,
    graph: str,
    config: Config,
    *,
    threads: int | None = 1,
) -> dict[str, Any]:
    """The bound graph's audio against the dynamic graph's on the same windows (3 spread
    over a reference utterance)."""
    from kokoro_opt.runtime.session import create_session

    feeds = window_feeds(dynamic, graph, config, threads=threads)
    outs = []
    for folder in (dynamic, bound):
        session = create_session(folder / graph, threads=threads)
        audio = [np.asarray(session.run(None, f)[0], np.float32).reshape(-1) for f in feeds]
        outs.append(np.concatenate(audio))
    ref, got = outs
    if ref.shape != got.shape:
        return {"same_length": False, "samples": [int(ref.size), int(got.size)]}
    err = float(np.abs(ref - got).max()) if ref.size else 0.0
    noise = float(np.sum((ref - got).astype(np.float64) ** 2))
    snr = 10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise) if noise else None
    return {
        "same_length": True,
        "windows": len(feeds),
        "samples": int(ref.size),
        "max_abs_diff": err,
        "snr_db": None if snr is None else round(snr, 1),
        "identical": err == 0.0,
    }


def _front_run(folder: Path, threads: int | None) -> tuple[Any, Any, np.ndarray]:
    """The folder's SplitModel and its front on a fixed reference utterance."""
    from kokoro_opt.passes.verify import DEFAULT_VOICE, REFERENCE_PHONEMES
    from kokoro_opt.runtime.tokenizer import PAD_ID, tokenize
    from kokoro_opt.runtime.voices import VoiceLibrary, style_for
    from kokoro_opt.runtime.windowed import SplitModel

    split = SplitModel(folder, threads=threads)
    ids = tokenize(REFERENCE_PHONEMES[1])
    style = np.asarray(style_for(VoiceLibrary.default().get(DEFAULT_VOICE), len(ids)), np.float32)
    style = style.reshape(1, -1)
    front = split.run_front(np.array([PAD_ID, *ids, PAD_ID], np.int64), style, 1.0)
    return split, front, style


def _probe_tensors(folder: Path, meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes of every back-graph input on one utterance (time axes at its length)."""
    split, front, style = _front_run(folder, 1)
    shapes = {name: tuple(v.shape) for name, v in front.tensors.items()}
    shapes["style"] = tuple(style.shape)
    shapes["phase0"] = tuple(meta.get("phase0_shape") or (1, 1, front.phase_sum.shape[1]))
    if split.decoder is not None:
        feeds = {
            i.name: style if i.name == "style" else front.tensors[i.name]
            for i in split.decoder.get_inputs()
        }
        (hidden,) = split.decoder.run(None, feeds)
        shapes["hidden"] = tuple(hidden.shape)
    return shapes


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
