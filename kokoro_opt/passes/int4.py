"""INT4 weight-only quantization: MatMulNBits for MatMul, 4-bit DequantizeLinear for the rest.

Kokoro keeps 67 % of its parameters in Conv (54.7 M of 81.2 M), 15 % in MatMul, 13 % in LSTM
and 4 % in ConvTranspose. onnxruntime's n-bit quantizer only rewrites MatMul (to the
com.microsoft `MatMulNBits` op) and Gather (to `GatherBlockQuantized`), which is why public q4
exports of Kokoro stay near 300 MB. This pass does both halves:

- `matmul`: each MatMul with a constant 2-D weight becomes a MatMulNBits node (4-bit blocks of
  `block_size` along K, one scale per block, `accuracy_level` picks its compute type: 4 runs the
  dot products in int8 on CPUs with VNNI). For `algo=rtn` this is onnxruntime's own
  `MatMulNBitsQuantizer`; for `hqq` and `gptq` the weights come from `kokoro_opt.graph.int4`.
- `gather`: embedding tables become GatherBlockQuantized (onnxruntime, RTN; tiny here: 0.2 M).
- `conv` (Conv and ConvTranspose) and `lstm` (LSTM W and R): the weight becomes an int4/uint4
  initializer with block-wise scales and an ONNX `DequantizeLinear` (opset 21, `block_size`)
  that feeds the unchanged float op. The model's default opset is raised to 21 (and the IR to
  10). onnxruntime runs the DequantizeLinear on every call unless the session constant-folds it
  (`session.disable_quant_qdq = 1`, see `FOLD_SESSION_CONFIG`), which turns the small file back
  into float weights at load time, so speed equals FP32.

Algorithms (`algo`):
- `rtn`: round to nearest per block (symmetric int4 or asymmetric uint4 with zero points).
- `hqq`: Half-Quadratic Quantization, data-free zero-point refinement (asymmetric only). Its
  zero points are floats, which MatMulNBits takes; DequantizeLinear needs integer zero points,
  so for `conv`/`lstm` they are rounded, which makes HQQ equal RTN there.
- `gptq`: data-aware; the Hessian of each weight's inputs is gathered from the FP32 model on
  phonemized calibration sentences (`calib`), then GPTQ quantizes one input row at a time and
  pushes the error onto the rows still float. It covers MatMul, Conv (inputs unfolded into
  patches), ConvTranspose and LSTM (W from the sequence input, R from the hidden states).
  onnxruntime's own GPTQ (`GPTQWeightOnlyQuantConfig`, 1.32) returns exactly the RTN weights
  (its error feedback indexes the wrong side of the Cholesky factor), and it runs the whole
  model once per distinct MatMul input and sample; this pass runs the model once per sample.

Node selection: `exclude` keeps weights float when any node that reads them matches a pattern
(shell glob on the whole node name, or `re:` + a regular expression searched in it); weights
with fewer than `min_elements` values stay float; so do Conv weights without an input-channel
axis to block (depthwise).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import io
import logging
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import Field, field_validator, model_validator

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.graph.int4 import (
    BlockQuant,
    dequantize_weight,
    gptq_blocks,
    matmul_nbits,
    quantize_hqq,
    quantize_rtn,
)
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult

logger = logging.getLogger(__name__)

BLOCK_SIZES = (32, 64, 128)
DEFAULT_MIN_ELEMENTS = 4096
HELD_OUT_SPLITS = ("heldout", "smoke")
FOLD_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}
"""Session config that makes onnxruntime fold the weight DequantizeLinear nodes at load time
(float weights in memory, FP32 speed). It also turns off QDQ fusion, so use it only for models
whose DequantizeLinear nodes all feed float ops (weight-only), like the ones this pass writes."""
_OPSET = 21
_IR_VERSION = 10
_QUANTIZED_OPS = frozenset(
    {"MatMulNBits", "GatherBlockQuantized", "MatMulInteger", "ConvInteger", "QLinearConv"}
)


class Algo(str, Enum):
    rtn = "rtn"
    hqq = "hqq"
    gptq = "gptq"


class Config(PassConfig):
    """Settings of the INT4 pass (strict: unknown keys are errors)."""

    algo: Algo = Algo.rtn
    block_size: Literal[32, 64, 128] = 32
    symmetric: bool = False
    accuracy_level: Literal[0, 1, 2, 3, 4] = 0
    matmul: bool = True
    gather: bool = False
    conv: bool = False
    lstm: bool = False
    min_elements: int = Field(default=DEFAULT_MIN_ELEMENTS, ge=1)
    exclude: list[str] = Field(default_factory=list)
    # GPTQ only
    calib: str = "train"
    samples: int = Field(default=32, ge=1, le=1000)
    voices: list[str] = Field(default_factory=lambda: ["jf_alpha", "jf_gongitsune", "jm_kumo"])
    speeds: list[float] = Field(default_factory=lambda: [0.9, 1.0, 1.1])
    lang: str = "en-us"
    seed: int = 0
    damp: float = Field(default=0.01, gt=0.0, le=1.0)
    max_positions: int = Field(default=1024, ge=64)

    @field_validator("block_size", mode="before")
    @classmethod
    def _check_block(cls, value: Any) -> Any:
        if isinstance(value, bool) or value not in BLOCK_SIZES:
            raise ValueError(
                f"block_size {value!r} is not supported; use one of "
                f"{', '.join(map(str, BLOCK_SIZES))} (weights per scale)"
            )
        return value

    @field_validator("exclude", mode="before")
    @classmethod
    def _check_exclude(cls, value: Any) -> list[str]:
        items = [value] if isinstance(value, str) else list(value or [])
        for pattern in items:
            if not str(pattern).strip() or str(pattern).strip() == "re:":
                raise ValueError("empty exclude pattern; give a glob such as '*/conv_post/*'")
            if str(pattern).startswith("re:"):
                try:
                    re.compile(str(pattern)[3:])
                except re.error as exc:
                    raise ValueError(
                        f"exclude pattern {pattern!r} is not a valid regular expression ({exc})"
                    ) from None
        return [str(p) for p in items]

    @field_validator("calib")
    @classmethod
    def _check_calib(cls, value: str) -> str:
        if value.strip() in HELD_OUT_SPLITS:
            raise ValueError(
                f"the {value.strip()!r} split is held out for evaluation and must never be used "
                "for calibration; use 'train' or a corpus file of your own"
            )
        if not value.strip():
            raise ValueError("empty calibration corpus; give 'train' or a corpus file")
        return value.strip()

    @model_validator(mode="after")
    def _check_combination(self) -> Config:
        if not (self.matmul or self.gather or self.conv or self.lstm):
            raise ValueError(
                "nothing to quantize: enable at least one of matmul, gather, conv, lstm"
            )
        if self.algo is Algo.hqq and self.symmetric:
            raise ValueError(
                "hqq fits a zero point per block, so it is asymmetric by design; drop "
                "--symmetric or use rtn/gptq"
            )
        return self

    def excluded_by(self, node_name: str) -> list[str]:
        """The exclude patterns that match `node_name`."""
        return [p for p in self.exclude if _match(p, node_name)]


@dataclass
class Target:
    """One weight initializer to quantize and the nodes (and input slots) that read it."""

    weight: str
    kind: str  # matmul | conv | conv_transpose | lstm_w | lstm_r
    axis: int  # block axis in the stored weight
    consumers: list[tuple[str, int]] = field(default_factory=list)
    shape: tuple[int, ...] = ()


@dataclass
class Calibration:
    """GPTQ's Hessians per weight (and LSTM direction) and a description of the data."""

    hessians: dict[str, Any]
    info: dict[str, Any]


def run(
    model: onnx.ModelProto,
    config: Config,
    ctx: PassContext,
    *,
    calibration: Calibration | None = None,
) -> PassResult:
    """Quantize the weights of `model` to 4 bits as configured; the input is not changed.

    For `algo=gptq`, `calibration` (from `calibrate` on the same model) skips the calibration
    runs, so several block sizes can share one; weights it does not cover fall back to RTN and
    are listed in `details["gptq_rtn_fallback"]`."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    check_float_model(model)
    out = copy.deepcopy(model)
    plan = plan_targets(out, config)
    if not plan["targets"] and not (config.gather and plan["gathers"]):
        raise UserInputError(
            "Nothing to quantize: no MatMul/Conv/ConvTranspose/LSTM weight with at least "
            f"{config.min_elements} values is left after the exclude patterns "
            f"({_count_text(plan['candidates'])}). Enable more op families or change --exclude."
        )
    bytes_before = _weight_bytes(out)

    hessians: dict[str, Any] = {}
    calib_info: dict[str, Any] | None = None
    if config.algo is Algo.gptq:
        t0 = time.perf_counter()
        if calibration is None:
            calibration = calibrate(model, config, ctx, targets=plan["targets"])
        calib_info = calibration.info
        hessians = {
            t.weight: calibration.hessians.get(
                t.weight, {"fallback": ["no calibration data for this weight"]}
            )
            for t in plan["targets"]
        }
        timings["calibrate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    counts: Counter[str] = Counter()
    matmuls = [t for t in plan["targets"] if t.kind == "matmul"]
    if config.algo is Algo.rtn and (matmuls or (config.gather and plan["gathers"])):
        counts.update(ort_nbits(out, config, plan))
    elif config.gather and plan["gathers"]:
        counts.update(ort_nbits(out, config, plan, gather_only=True))
    inits = {t.name: t for t in out.graph.initializer}
    errors: dict[str, float] = {}
    others = [t for t in plan["targets"] if t.kind != "matmul" or config.algo is not Algo.rtn]
    for index, target in enumerate(others):
        ctx.report("Quantizing weights", index, len(others))
        weight = numpy_helper.to_array(inits[target.weight]).astype(np.float32)
        quant = quantize_target(weight, target, config, hessians.get(target.weight))
        errors[target.weight] = _relative_error(weight, quant.dequantize())
        if target.kind == "matmul":
            replace_matmuls(out, target, quant, config)
            counts["MatMulNBits"] += len(target.consumers)
        else:
            insert_dequantize(out, target, quant)
            counts[f"DequantizeLinear->{_OP_OF_KIND[target.kind]}"] += len(target.consumers)
    ctx.report("Quantizing weights", len(others), len(others))
    _drop_unused_initializers(out)
    if config.conv or config.lstm or config.gather:
        raise_opset(out)
    if counts.get("MatMulNBits") or counts.get("GatherBlockQuantized"):
        _ensure_domain(out, "com.microsoft", 1)
    timings["quantize_s"] = time.perf_counter() - t0
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise ModelFormatError(
            f"The INT4 model does not validate at opset {_OPSET}: {str(exc).splitlines()[0]}"
        ) from None
    timings["total_s"] = time.perf_counter() - start
    bytes_after = _weight_bytes(out)
    details = {
        "quantized": dict(sorted(counts.items())),
        "weights": {
            kind: sum(1 for t in plan["targets"] if t.kind == kind)
            for kind in ("matmul", "conv", "conv_transpose", "lstm_w", "lstm_r")
        },
        "parameters_quantized": int(sum(int(np.prod(t.shape)) for t in plan["targets"])),
        "parameters_total": int(
            sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == 1)
        ),
        "kept_float": plan["kept"],
        "unmatched_patterns": plan["unmatched"],
        "weight_error": _error_summary(errors),
        "gptq_rtn_fallback": {
            name: parts["fallback"] for name, parts in hessians.items() if "fallback" in parts
        },
        "weight_bytes_before": bytes_before,
        "weight_bytes_after": bytes_after,
        "opset": _default_opset(out),
        "session_config": FOLD_SESSION_CONFIG if (config.conv or config.lstm) else {},
        "calibration": calib_info,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "settings": config.model_dump(mode="json"),
    }
    return PassResult(out, details)


# -- steps (public so experiments and recipes can run them one by one) ------------------------


def check_float_model(model: onnx.ModelProto) -> None:
    """Raise ModelFormatError unless `model` is float (weights not already quantized)."""
    found = Counter(n.op_type for n in model.graph.node if n.op_type in _QUANTIZED_OPS)
    if found:
        what = ", ".join(f"{n} {op}" for op, n in sorted(found.items()))
        raise ModelFormatError(
            f"The model is already quantized ({what}). INT4 needs a float32 model: start from "
            "the FP32 reference (kokoro-fp32)."
        )
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        raise ModelFormatError(
            "The model holds FP16 weights. INT4 needs a float32 model: start from the FP32 "
            "reference (kokoro-fp32)."
        )


def plan_targets(model: onnx.ModelProto, config: Config) -> dict[str, Any]:
    """Which weights to quantize (one Target per initializer, with every consumer), which
    Gather tables, and which weights stay float and why."""
    inits = {t.name: t for t in model.graph.initializer}
    targets: dict[str, Target] = {}
    candidates: Counter[str] = Counter()
    blocked: dict[str, str] = {}
    hits: Counter[str] = Counter()
    gathers: list[str] = []
    for node in model.graph.node:
        slots = _weight_slots(node, config)
        if node.op_type == "Gather" and config.gather and node.input[0] in inits:
            if len(inits[node.input[0]].dims) == 2 and inits[node.input[0]].data_type == 1:
                gathers.append(node.name)
            continue
        for slot, kind, axis in slots:
            name = node.input[slot] if len(node.input) > slot else ""
            tensor = inits.get(name)
            if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
                continue
            candidates[node.op_type] += 1
            shape = tuple(int(d) for d in tensor.dims)
            matched = config.excluded_by(node.name)
            for pattern in matched:
                hits[pattern] += 1
            reason = None
            if matched:
                reason = f"excluded by {matched[0]!r}"
            elif int(np.prod(shape)) < config.min_elements:
                reason = f"fewer than {config.min_elements} values"
            elif kind == "matmul" and len(shape) != 2:
                reason = "MatMul weight is not 2-D"
            elif kind == "conv" and (len(shape) < 3 or shape[1] == 1):
                reason = "no input-channel axis to block (depthwise or 1-D)"
            if reason:
                blocked.setdefault(name, reason)
                continue
            target = targets.setdefault(name, Target(name, kind, axis, shape=shape))
            if target.kind != kind:
                blocked.setdefault(name, f"shared by {target.kind} and {kind}")
                continue
            target.consumers.append((node.name, slot))
    kept = {}
    for name, reason in blocked.items():
        if name in targets:
            del targets[name]  # a weight read by any excluded node stays float everywhere
        kept[name] = reason
    return {
        "targets": list(targets.values()),
        "gathers": gathers,
        "candidates": dict(sorted(candidates.items())),
        "kept": dict(sorted(kept.items())),
        "unmatched": [p for p in config.exclude if hits[p] == 0],
    }


def calibrate(
    model: onnx.ModelProto,
    config: Config,
    ctx: PassContext,
    *,
    targets: Sequence[Target] | None = None,
) -> Calibration:
    """Hessians for GPTQ from the calibration corpus: for `targets`, or for every MatMul,
    Conv, ConvTranspose and LSTM weight the config could select (so one calibration serves
    runs with and without conv/lstm and at any block size)."""
    if targets is None:
        wide = config.model_copy(update={"matmul": True, "conv": True, "lstm": True})
        targets = plan_targets(model, wide)["targets"]
    feeds, info = calibration_feeds(model, config, ctx)
    return Calibration(collect_hessians(model, targets, feeds, config, ctx), info)


def calibration_feeds(
    model: onnx.ModelProto, config: Config, ctx: PassContext
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Phonemized calibration inputs for GPTQ (the `train` split by default, never held out)."""
    import hashlib

    from kokoro_opt.calib.corpus import load_texts
    from kokoro_opt.calib.feeds import corpus_feeds
    from kokoro_opt.runtime.contract import ModelContract

    texts = load_texts(config.calib)
    contract = ModelContract.from_onnx(model)
    samples, feeds = corpus_feeds(
        texts,
        contract,
        count=config.samples,
        voices=config.voices,
        speeds=config.speeds,
        seed=config.seed,
        lang=config.lang,
        source=f"Corpus {config.calib}",
        progress=ctx.report,
    )
    info = {
        "corpus": config.calib,
        "corpus_sha256": hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest(),
        "samples": len(samples),
        "phonemes": sum(s.n_phonemes for s in samples),
        "voices": dict(sorted(Counter(s.voice for s in samples).items())),
        "speeds": dict(sorted(Counter(f"{s.speed:g}" for s in samples).items())),
    }
    return feeds, info


def collect_hessians(
    model: onnx.ModelProto,
    targets: Sequence[Target],
    feeds: Sequence[dict[str, Any]],
    config: Config,
    ctx: PassContext,
) -> dict[str, Any]:
    """H = mean(x x^T) of the inputs each weight multiplies, in the row order `quantize_target`
    uses, from one run of the float model per feed (every needed tensor is a graph output)."""
    import onnxruntime as ort

    nodes = {n.name: n for n in model.graph.node}
    wanted: dict[str, None] = {}
    for target in targets:
        for node_name, _ in target.consumers:
            node = nodes[node_name]
            wanted[node.input[0]] = None
            if target.kind == "lstm_r" and node.output and node.output[0]:
                wanted[node.output[0]] = None
    augmented = copy.deepcopy(model)
    existing = {o.name for o in augmented.graph.output}
    for name in wanted:
        if name not in existing:
            augmented.graph.output.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    if ctx.threads:
        opts.intra_op_num_threads = int(ctx.threads)
    session = ort.InferenceSession(
        augmented.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    del augmented
    names = list(wanted)
    sums: dict[str, np.ndarray] = {}
    counts: Counter[str] = Counter()
    rng = np.random.default_rng(config.seed)
    ctx.report("Collecting Hessians", 0, len(feeds))
    for index, feed in enumerate(feeds):
        values = dict(zip(names, session.run(names, feed), strict=True))
        for target in targets:
            for node_name, _ in target.consumers:
                for key, rows in _hessian_rows(nodes[node_name], target, values, config, rng):
                    gram = rows @ rows.T
                    if key in sums:
                        sums[key] += gram
                    else:
                        sums[key] = gram.astype(np.float64)
                    counts[key] += rows.shape[1]
        ctx.report("Collecting Hessians", index + 1, len(feeds))
    hessians: dict[str, Any] = defaultdict(dict)
    for key, total in sums.items():
        weight, part = key
        # Fewer input vectors than rows gives a singular Hessian: GPTQ would then fit the
        # calibration inputs' subspace and can hurt every other input (style projections see
        # one vector per sample). Those weights (or LSTM directions) fall back to RTN.
        if counts[key] >= total.shape[0]:
            hessians[weight][part] = total / counts[key]
        else:
            hessians[weight].setdefault("fallback", []).append(
                f"part {part}: {counts[key]} input vectors for {total.shape[0]} rows"
            )
    return dict(hessians)


def quantize_target(
    weight: np.ndarray, target: Target, config: Config, hessian: dict[int, np.ndarray] | None
) -> BlockQuant:
    """4-bit quantization of one weight with the configured algorithm, blocked along
    `target.axis` (the input-channel axis)."""
    bs = config.block_size
    if config.algo is Algo.gptq and hessian and any(k != "fallback" for k in hessian):
        return _gptq_target(weight, target, config, hessian)
    if config.algo is Algo.hqq:
        return quantize_hqq(
            weight, axis=target.axis, block_size=bs, integer_zero=target.kind != "matmul"
        )
    return quantize_rtn(weight, axis=target.axis, block_size=bs, symmetric=config.symmetric)


def replace_matmuls(
    model: onnx.ModelProto, target: Target, quant: BlockQuant, config: Config
) -> None:
    """Swap every MatMul reading `target.weight` for a MatMulNBits sharing one set of
    quantized initializers."""
    attrs, inits, weight_inputs = matmul_nbits(
        quant, weight_name=target.weight, accuracy_level=config.accuracy_level
    )
    model.graph.initializer.extend(inits)
    consumers = {name for name, _ in target.consumers}
    for i, node in enumerate(model.graph.node):
        if node.name in consumers:
            replacement = helper.make_node(
                "MatMulNBits",
                [node.input[0], *weight_inputs],
                list(node.output),
                name=f"{node.name}_Q4",
                domain="com.microsoft",
                **attrs,
            )
            model.graph.node[i].CopyFrom(replacement)


def insert_dequantize(model: onnx.ModelProto, target: Target, quant: BlockQuant) -> None:
    """Store `target.weight` as 4-bit data + DequantizeLinear feeding its consumers."""
    node, inits, out = dequantize_weight(quant, target.weight)
    model.graph.initializer.extend(inits)
    consumers = set(target.consumers)
    for n in model.graph.node:
        for slot, name in enumerate(n.input):
            if name == target.weight and (n.name, slot) in consumers:
                n.input[slot] = out
    model.graph.node.insert(0, node)


def ort_nbits(
    model: onnx.ModelProto, config: Config, plan: dict[str, Any], *, gather_only: bool = False
) -> Counter[str]:
    """onnxruntime's MatMulNBitsQuantizer (RTN) on the planned MatMuls (unless `gather_only`)
    and, with `config.gather`, the embedding Gathers; edits `model` in place."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )
    from onnxruntime.quantization.quant_utils import QuantFormat

    include = set(plan["gathers"]) if config.gather else set()
    if not gather_only:
        include |= {name for t in plan["targets"] if t.kind == "matmul" for name, _ in t.consumers}
    ops = tuple(op for op, on in (("MatMul", not gather_only), ("Gather", config.gather)) if on)
    excluded = [n.name for n in model.graph.node if n.op_type in ops and n.name not in include]
    algo = DefaultWeightOnlyQuantConfig(
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level or None,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    with _quiet_ort():
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=excluded, algo_config=algo)
        quantizer.process()
    result = quantizer.model.model
    if result is not model:
        model.CopyFrom(result)
    return Counter(
        n.op_type for n in model.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")
    )


def raise_opset(model: onnx.ModelProto) -> None:
    """Default-domain opset to 21 (int4/uint4 DequantizeLinear with block_size) and IR >= 10.
    The ops Kokoro uses have the same meaning at 21 (the changes from 20 add types only)."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < _OPSET:
            opset.version = _OPSET
    model.ir_version = max(model.ir_version, _IR_VERSION)


# -- helpers ------------------------------------------------------------------------------------

_OP_OF_KIND = {
    "conv": "Conv",
    "conv_transpose": "ConvTranspose",
    "lstm_w": "LSTM",
    "lstm_r": "LSTM",
}


def _weight_slots(node: onnx.NodeProto, config: Config) -> list[tuple[int, str, int]]:
    """(input slot, kind, block axis) of the weights of `node` this config quantizes."""
    if node.op_type == "MatMul" and config.matmul:
        return [(1, "matmul", 0)]
    if node.op_type == "Conv" and config.conv:
        return [(1, "conv", 1)]
    if node.op_type == "ConvTranspose" and config.conv:
        return [(1, "conv_transpose", 0)]
    if node.op_type == "LSTM" and config.lstm:
        return [(1, "lstm_w", 2), (2, "lstm_r", 2)]
    return []


def _hessian_rows(
    node: onnx.NodeProto,
    target: Target,
    values: dict[str, np.ndarray],
    config: Config,
    rng: np.random.Generator,
) -> Iterator[tuple[tuple[str, int], np.ndarray]]:
    """((weight, part), rows [K, n]) samples of the inputs one consumer multiplies with the
    weight, K in `_gptq_target`'s row order; part is the LSTM direction (0 otherwise)."""
    x = values.get(node.input[0])
    if x is None:
        return
    x = np.asarray(x, dtype=np.float32)
    if target.kind == "matmul":
        rows = x.reshape(-1, x.shape[-1]).T
        yield (target.weight, 0), _subsample(rows, config.max_positions, rng)
    elif target.kind == "conv":
        patches = _conv_patches(node, x, target.shape)
        if patches is not None:
            yield (target.weight, 0), _subsample(patches, config.max_positions, rng)
    elif target.kind == "conv_transpose":
        if _attr(node, "group", 1) == 1 and x.ndim == 3:
            rows = x[0]
            yield (target.weight, 0), _subsample(rows, config.max_positions, rng)
    elif target.kind == "lstm_w":
        rows = x.reshape(-1, x.shape[-1]).T  # [I, T*B], the same for every direction
        for d in range(target.shape[0]):
            yield (target.weight, d), _subsample(rows, config.max_positions, rng)
    elif target.kind == "lstm_r" and node.output and node.output[0] in values:
        y = np.asarray(values[node.output[0]], dtype=np.float32)  # [T, D, B, H]
        for d in range(target.shape[0]):
            h = y[:, d].reshape(-1, y.shape[-1])
            # R multiplies the previous hidden state: h_{t-1}, with h_{-1} = 0 (initial_h).
            prev = h[:-1] if d == 0 else h[1:]
            yield (target.weight, d), _subsample(prev.T, config.max_positions, rng)


def _conv_patches(node: onnx.NodeProto, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Unfolded inputs of a 1-D Conv: rows (tap, input channel), columns output positions.
    None when the conv is not a plain 1-D, group-1 conv."""
    if x.ndim != 3 or len(shape) != 3 or _attr(node, "group", 1) != 1:
        return None
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    _, c, k = shape
    pads = list(_attr(node, "pads", [0, 0]))
    stride = list(_attr(node, "strides", [1]))[0]
    dilation = list(_attr(node, "dilations", [1]))[0]
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[1])))
    t_out = (xp.shape[1] - dilation * (k - 1) - 1) // stride + 1
    if t_out <= 0:
        return None
    out = np.empty((k, c, t_out), dtype=np.float32)
    for j in range(k):
        start = j * dilation
        out[j] = xp[:, start : start + stride * (t_out - 1) + 1 : stride]
    return out.reshape(k * c, t_out)


def _gptq_target(
    weight: np.ndarray, target: Target, config: Config, hessian: dict[int, np.ndarray]
) -> BlockQuant:
    """GPTQ for any weight kind: view it as [K inputs, N outputs] matrices, run GPTQ, and put
    the result back in the stored layout (blocks along `target.axis`)."""
    bs, sym, damp = config.block_size, config.symmetric, config.damp
    if target.kind == "matmul":
        return gptq_blocks(weight, hessian[0], block_size=bs, symmetric=sym, damp=damp)
    if target.kind == "conv":
        m, c, k = weight.shape
        cp = -(-c // bs) * bs
        w2 = np.zeros((k, cp, m), dtype=np.float32)
        w2[:, :c] = weight.transpose(2, 1, 0)
        # Rows are (tap, input channel); pad each tap's channels to whole blocks so GPTQ's
        # blocks of rows are DequantizeLinear's blocks (zero rows are dead and stay zero).
        rows = (np.arange(k)[:, None] * cp + np.arange(c)[None, :]).reshape(-1)
        h = np.zeros((k * cp, k * cp), dtype=np.float64)
        h[np.ix_(rows, rows)] = hessian[0]
        quant = gptq_blocks(w2.reshape(k * cp, m), h, block_size=bs, symmetric=sym, damp=damp)
        nb = cp // bs
        q = quant.q.reshape(k, cp, m)[:, :c].transpose(2, 1, 0)
        scale = quant.scale.reshape(k, nb, m).transpose(2, 1, 0)
        zero = None
        if quant.zero_point is not None:
            zero = quant.zero_point.reshape(k, nb, m).transpose(2, 1, 0)
        return BlockQuant(np.ascontiguousarray(q), np.ascontiguousarray(scale), zero, 1, bs)
    if target.kind == "conv_transpose":
        c_in = weight.shape[0]
        rest = weight.shape[1:]
        quant = gptq_blocks(
            weight.reshape(c_in, -1), hessian[0], block_size=bs, symmetric=sym, damp=damp
        )
        nb = quant.scale.shape[0]
        zero = None if quant.zero_point is None else quant.zero_point.reshape(nb, *rest)
        return BlockQuant(
            quant.q.reshape(weight.shape), quant.scale.reshape(nb, *rest), zero, 0, bs
        )
    # LSTM W [D, 4H, I] / R [D, 4H, H]: one GPTQ per direction on the transposed matrix.
    parts = []
    for d in range(weight.shape[0]):
        h = hessian.get(d)
        if h is None:
            parts.append(quantize_rtn(weight[d].T, axis=0, block_size=bs, symmetric=sym))
        else:
            parts.append(gptq_blocks(weight[d].T, h, block_size=bs, symmetric=sym, damp=damp))
    q = np.stack([p.q.T for p in parts])
    scale = np.stack([p.scale.T for p in parts])
    zero = None if sym else np.stack([p.zero_point.T for p in parts])  # type: ignore[union-attr]
    return BlockQuant(q, scale, zero, 2, bs)


def _subsample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if rows.shape[1] <= limit:
        return rows
    keep = np.sort(rng.choice(rows.shape[1], size=limit, replace=False))
    return rows[:, keep]


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _relative_error(weight: np.ndarray, approx: np.ndarray) -> float:
    norm = float(np.linalg.norm(weight))
    return float(np.linalg.norm(approx - weight)) / norm if norm else 0.0


def _error_summary(errors: dict[str, float]) -> dict[str, Any]:
    if not errors:
        return {"weights": 0}
    worst = max(errors, key=errors.__getitem__)
    return {
        "weights": len(errors),
        "mean_relative_rms": round(float(np.mean(list(errors.values()))), 5),
        "max_relative_rms": round(errors[worst], 5),
        "worst": worst,
    }


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for n in model.graph.node for name in n.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def _ensure_domain(model: onnx.ModelProto, domain: str, version: int) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers as stored (4-bit tensors count half a byte per value)."""
    total = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(t.data_type)
        if bits:
            total += (n + 1) // 2
        else:
            total += n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def _match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _count_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in counts.items()) or "none"


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """onnxruntime's n-bit quantizer logs every node at INFO, may print and warns about
    numpy divisions; keep it quiet."""
    names = [
        "onnxruntime.quantization.matmul_nbits_quantizer",
        "onnxruntime.quantization",
        "",
    ]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buffer = io.StringIO()
    try:
        # Its RTN divides by the scale of all-zero blocks before masking them (harmless).
        with contextlib.redirect_stdout(buffer), np.errstate(divide="ignore", invalid="ignore"):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if buffer.getvalue().strip():
            logger.debug("onnxruntime.quantization: %s", buffer.getvalue()[-2000:])
