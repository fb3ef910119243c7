"""Static shape binding: fix the batch and token-length dimensions for one bucket.

The token input `[batch, T]` becomes `[1, tokens]`; other contract inputs' leading batch dims
become 1. onnxsim then propagates the shapes and folds what became constant (the Shape ->
Gather -> Concat chains that size the text-side tensors). The audio length still depends on
the predicted durations, so the frame-level half of the graph (decoder, generator) stays
dynamic: static shapes help runtimes that compile the text side (CoreML prefers static shapes),
not ORT CPU, which handles dynamic shapes at no cost.

**Length masking.** A bucket is filled with pad tokens (id 0) after the real sequence, and
Kokoro's export has no attention mask input: every pad would be attended to, fed through the
bidirectional LSTMs and the text CNN, and given a duration of at least one frame (600 samples
each). With `length_mask` on (the default when the structure is found) the pass derives the real
length from the tokens themselves (position of the last non-zero id + 2: the end pad), so the
model's input contract does not change, and applies it where Kokoro's PyTorch code applies its
text mask:

- ALBERT attention: the all-ones attention mask (ConstantOfShape -> ... -> Add before Softmax)
  becomes the real mask, so pads get -inf scores;
- text-side Conv inputs (kernel > 1) are zeroed at pad positions, as `masked_fill` does;
- text-side LSTMs get `sequence_lens`, so the backward direction starts at the real end;
- predicted durations are multiplied by the mask, so pads get zero frames.

The bucketed model then renders the same frames as the dynamic one; what remains is float
noise from different matrix shapes (measured in docs/graph-optimization.md).
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto
from pydantic import Field

from kokoro_opt.errors import UserInputError
from kokoro_opt.graph.edit import GraphIndex, attrs, clone, finalize, inferred_shapes
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult
from kokoro_opt.runtime.buckets import META_MASK, META_PAD, META_TOKENS
from kokoro_opt.runtime.tokenizer import PAD_ID


class LengthMask(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class Config(PassConfig):
    tokens: int = Field(ge=3, le=512)
    """Token length of the bucket, the two pad tokens included (Kokoro: at most 512)."""
    length_mask: LengthMask = LengthMask.auto
    """`auto`: mask padding when the Kokoro structure is found; `on`: require it; `off`: only
    bind shapes (padding then changes the audio: use only with inputs of exactly this length)."""
    simplify: bool = True
    """Run onnxsim after binding to fold what became constant."""


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Bind a copy of `model` to [1, tokens], mask padding, fold constants."""
    from kokoro_opt.runtime.contract import ModelContract

    work = clone(model)
    contract = ModelContract.from_onnx(work)
    ctx.report(f"bind {config.tokens} tokens", 0, 3)
    bound = _bind_inputs(work, contract, config.tokens)
    mask: dict[str, Any] = {"applied": False}
    if config.length_mask is not LengthMask.off:
        mask = _length_mask(work, contract.tokens, contract.tokens_dtype, config.tokens)
        if not mask["applied"] and config.length_mask is LengthMask.on:
            raise UserInputError(
                f"length_mask='on' but {mask['reason']}. Use length_mask='off' only for inputs "
                f"of exactly {config.tokens} tokens."
            )
    ctx.report(f"bind {config.tokens} tokens", 1, 3)
    _set_meta(work, META_TOKENS, str(config.tokens))
    _set_meta(work, META_MASK, "on" if mask["applied"] else "off")
    _set_meta(work, META_PAD, str(PAD_ID))
    onnx.checker.check_model(work)
    details: dict[str, Any] = {
        "tokens": config.tokens,
        "bound_dims": bound,
        "length_mask": mask,
        "nodes_before": len(model.graph.node),
    }
    if config.simplify:
        from kokoro_opt.passes import simplify

        simplified = simplify.run(work, simplify.Config(), ctx)
        details["simplify"] = simplified.details
        work = simplified.model
    ctx.report(f"bind {config.tokens} tokens", 3, 3)
    details["nodes_after"] = len(work.graph.node)
    details["static_tensors"] = _static_share(work)
    return PassResult(work, details)


def bucket_tokens(model: onnx.ModelProto) -> int | None:
    """The bucket length written by this pass (None for a model it did not make)."""
    for prop in model.metadata_props:
        if prop.key == META_TOKENS:
            return int(prop.value)
    return None


# -- binding -----------------------------------------------------------------------------------


def _bind_inputs(model: onnx.ModelProto, contract: Any, tokens: int) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    token_vi = inputs[contract.tokens]
    dims = token_vi.type.tensor_type.shape.dim
    if len(dims) != 2:
        raise UserInputError(
            f"Input {contract.tokens!r} has {len(dims)} dimensions; static binding expects "
            "[batch, tokens]."
        )
    batch_param = dims[0].dim_param if dims[0].HasField("dim_param") else None
    seq_param = dims[1].dim_param if dims[1].HasField("dim_param") else None
    if dims[0].HasField("dim_value") and dims[0].dim_value != 1:
        raise UserInputError(
            f"Input {contract.tokens!r} has a fixed batch of {dims[0].dim_value}; Kokoro buckets "
            "are batch 1. Export the model with batch 1 or a dynamic batch."
        )
    if dims[1].HasField("dim_value") and dims[1].dim_value not in (0, tokens):
        raise UserInputError(
            f"Input {contract.tokens!r} is already static at {dims[1].dim_value} tokens; bind "
            "buckets from the dynamic model."
        )
    bound: list[str] = []
    problems: list[str] = []
    for name, vi in inputs.items():
        role_batch = name in (contract.tokens, contract.style, contract.speed)
        for i, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            param = dim.dim_param if dim.HasField("dim_param") else ""
            if (name == contract.tokens and i == 1) or (param and param == seq_param):
                value = tokens
            elif (i == 0 and role_batch) or (param and param == batch_param):
                value = 1
            else:
                problems.append(f"{name}[{i}] ({param or 'unnamed'})")
                continue
            dim.Clear()
            dim.dim_value = value
            bound.append(f"{name}[{i}]={value}")
    if problems:
        raise UserInputError(
            f"Cannot bind dimension(s) {', '.join(problems)}: only the batch and the token "
            "length can be fixed. Give the model static sizes for the others first."
        )
    return bound


# -- length masking ----------------------------------------------------------------------------


def _length_mask(model: onnx.ModelProto, tokens: str, tokens_dtype: str, t: int) -> dict[str, Any]:
    index = GraphIndex(model.graph)
    durations = [
        n
        for n in model.graph.node
        if n.op_type == "Clip"
        and (p := index.producer.get(n.input[0])) is not None
        and p.op_type == "Round"
    ]
    if len(durations) != 1:
        return {
            "applied": False,
            "reason": (
                "no duration predictor (a single Round -> Clip) was found, so padded tokens "
                "would still get frames of audio"
            ),
        }
    shapes = _shapes_for_masking(model)
    lstms = [
        n
        for n in model.graph.node
        if n.op_type in ("LSTM", "DynamicQuantizeLSTM") and _seq_first_is(shapes, n.input[0], t)
    ]
    convs = [
        n
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvInteger")
        and _kernel(index, n) > 1
        and _last_dim_is(shapes, n.input[0], t)
    ]
    attention = [
        n
        for n in model.graph.node
        if n.op_type == "ConstantOfShape"
        and _is_float_one(n)
        and shapes.get(n.output[0]) == [1, t]
        and _reaches_softmax(index, n)
    ]
    mask_f, mask3, seq_lens = _mask_nodes(index, tokens, tokens_dtype, t)
    # durations: pads get zero frames
    clip = durations[0]
    raw = index.fresh(f"{clip.output[0]}_unmasked")
    out = clip.output[0]
    clip.output[0] = raw
    index.add_node("Mul", [raw, mask_f], [out], name=f"{clip.name}/length_mask")
    for node in attention:
        old = node.output[0]
        node.output[0] = index.fresh(f"{old}_ones")
        value_type = attrs(node)["value"].data_type
        if value_type == TensorProto.FLOAT:
            index.add_node("Identity", [mask_f], [old], name=f"{node.name}/length_mask")
        else:
            index.add_node("Cast", [mask_f], [old], name=f"{node.name}/length_mask", to=value_type)
    lstm_done = 0
    for node in lstms:
        if len(node.input) > 4 and node.input[4]:
            continue
        index.set_input(node, 4, seq_lens)
        lstm_done += 1
    for node in convs:
        data = node.input[0]
        target, slot = node, 0
        producer = index.producer.get(data)
        if node.op_type == "ConvInteger":
            if producer is None or producer.op_type != "DynamicQuantizeLinear":
                continue
            target, data = producer, producer.input[0]
        masked = index.add_node("Mul", [data, mask3], 1, name=f"{node.name}/length_mask")
        index.set_input(target, slot, masked.output[0])
    finalize(model.graph)
    return {
        "applied": True,
        "durations": 1,
        "attention_masks": len(attention),
        "lstms": lstm_done,
        "convs": len(convs),
    }


def _mask_nodes(index: GraphIndex, tokens: str, dtype: str, t: int) -> tuple[str, str, str]:
    """n = min(last non-pad position + 2, T) (the +1 past it is the end pad); mask[1, T] =
    arange < n (float), its [1, 1, T] form, and n as int32 [1] for LSTM sequence_lens."""
    arange = index.add_initializer("length_mask_arange", np.arange(t, dtype=np.int64)[None, :])
    pad = index.add_initializer("length_mask_pad", np.array(PAD_ID, np.int64))
    two = index.add_initializer("length_mask_two", np.array(2, np.int64))
    limit = index.add_initializer("length_mask_t", np.array(t, np.int64))
    axis1 = index.add_initializer("length_mask_axis1", np.array([1], np.int64))
    ids = tokens
    if dtype != "int64":
        ids = index.add_node("Cast", [tokens], 1, name="length_mask/ids", to=TensorProto.INT64)
        ids = ids.output[0]
    is_pad = index.add_node("Equal", [ids, pad], 1, name="length_mask/is_pad").output[0]
    real = index.add_node("Not", [is_pad], 1, name="length_mask/real").output[0]
    real_i = index.add_node("Cast", [real], 1, name="length_mask/real_i", to=TensorProto.INT64)
    pos = index.add_node("Mul", [real_i.output[0], arange], 1, name="length_mask/pos").output[0]
    last = index.add_node("ReduceMax", [pos, axis1], 1, name="length_mask/last", keepdims=0).output[
        0
    ]
    n = index.add_node("Add", [last, two], 1, name="length_mask/n").output[0]
    n = index.add_node("Min", [n, limit], 1, name="length_mask/n_clip").output[0]
    n_col = index.add_node("Unsqueeze", [n, axis1], 1, name="length_mask/n_col").output[0]
    mask_b = index.add_node("Less", [arange, n_col], 1, name="length_mask/mask_b").output[0]
    mask_f = index.add_node(
        "Cast", [mask_b], 1, name="length_mask/mask", to=TensorProto.FLOAT
    ).output[0]
    mask3 = index.add_node("Unsqueeze", [mask_f, axis1], 1, name="length_mask/mask3").output[0]
    seq = index.add_node("Cast", [n], 1, name="length_mask/seq_lens", to=TensorProto.INT32)
    return mask_f, mask3, seq.output[0]


def _shapes_for_masking(model: onnx.ModelProto) -> dict[str, list[Any]]:
    """Static shapes after binding; contrib ops are expanded first (in a throwaway copy) so that
    inference sees through the text encoder."""
    from kokoro_opt.passes import portable
    from kokoro_opt.passes.base import PassContext

    shapes = dict(inferred_shapes(model))
    try:
        expanded = portable.run(model, portable.Config(), PassContext()).model
    except Exception:  # a model portable cannot expand: use what plain inference knows
        return shapes
    for name, dims in inferred_shapes(expanded).items():
        known = sum(isinstance(d, int) for d in dims)
        if name not in shapes or known >= sum(isinstance(d, int) for d in shapes[name]):
            shapes[name] = dims
    return shapes


def _seq_first_is(shapes: dict[str, list[Any]], name: str, t: int) -> bool:
    dims = shapes.get(name)
    return dims is not None and len(dims) == 3 and dims[0] == t


def _last_dim_is(shapes: dict[str, list[Any]], name: str, t: int) -> bool:
    dims = shapes.get(name)
    return dims is not None and len(dims) == 3 and dims[2] == t


def _kernel(index: GraphIndex, node: onnx.NodeProto) -> int:
    ks = attrs(node).get("kernel_shape")
    if ks:
        return int(np.prod(ks))
    w = index.const(node.input[1])
    return int(np.prod(w.shape[2:])) if w is not None else 1


def _is_float_one(node: onnx.NodeProto) -> bool:
    value = attrs(node).get("value")
    if value is None:
        return False
    arr = onnx.numpy_helper.to_array(value)
    return arr.size == 1 and float(arr.reshape(-1)[0]) == 1.0


def _reaches_softmax(index: GraphIndex, start: onnx.NodeProto, hops: int = 8) -> bool:
    queue = deque([(start, 0)])
    seen = {id(start)}
    while queue:
        node, depth = queue.popleft()
        if node.op_type == "Softmax":
            return True
        if depth >= hops:
            continue
        for out in node.output:
            for user in index.users(out):
                if id(user) not in seen:
                    seen.add(id(user))
                    queue.append((user, depth + 1))
    return False


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _static_share(model: onnx.ModelProto) -> dict[str, int]:
    shapes = inferred_shapes(model)
    static = sum(1 for d in shapes.values() if d and all(isinstance(x, int) for x in d))
    return {"tensors_with_shape": len(shapes), "fully_static": static}
