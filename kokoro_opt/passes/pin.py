"""Hybrid INT8/FP16 pinning: quantize a model to static per-channel INT8 except named layer
groups, which stay FP32 or run in FP16.

Layer groups. Every node belongs to one group named after its module path: by default
`generator/resblocks.3`, `generator/conv_post`, `generator/noise_convs.0`, `decoder/decode.1`,
`bert`, `predictor/text_encoder`, `predictor/F0` ... (rules in `GROUP_RULES`, first match wins;
see `group_of`). With `depth=N` a group is instead the first N components of the module path
(repeated components such as `decoder/decoder` counted once, the node's own name left out).
A group is *quantizable* when it holds nodes of the op types the static quantizer handles
(`ops`); LSTMs never are (ORT's static quantizer has no LSTM).

Pinning. `run` calibrates activation ranges once with `kokoro_opt.passes.quantize_static`
(or reuses a ranges file) and quantizes every quantizable node except those of the `keep`
groups. With `precision="fp16"` the kept groups' nodes (all of them, not only the quantizable
ones) are then converted to FP16 by onnxruntime's float16 converter, with Cast nodes at the
group boundaries and the model's inputs and outputs left float32. Ops that must stay FP32
(`FP16_HAZARD_OPS`: the running phase sum CumSum, STFT, ...) are never converted.

Calibration is the expensive step; `calibrated_ranges` caches its result by the model's
sha256 and the calibration settings, so analysis and search build every variant from one
calibration with `quantize_with_ranges`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
from pydantic import Field, field_validator

from kokoro_opt.errors import UserInputError
from kokoro_opt.passes import quantize_static as qs
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult

DEFAULT_OPS = ["Conv", "ConvTranspose", "MatMul"]
"""Op types quantized outside the kept groups (static QDQ ops with weights in Kokoro)."""

GROUP_RULES: tuple[tuple[str, str], ...] = (
    (r"^/decoder(?:/decoder)?/generator/([^/]+)/", r"generator/\1"),
    (r"^/decoder(?:/decoder)?/generator/[^/]+$", "generator"),
    (r"^/decoder(?:/decoder)?/([^/]+)/", r"decoder/\1"),
    (r"^/encoder/bert/", "bert"),
    (r"^/encoder/(?:predictor/)?(F0|N)(?:\.\d+|_proj)/", r"predictor/\1"),
    (r"^/(?:encoder/)?predictor/([^/]+)/", r"predictor/\1"),
    (r"^/encoder/text_encoder/", "text_encoder"),
    (r"^/encoder/([^/]+)/", r"encoder/\1"),
)
"""(regular expression searched in the node name, group name template), first match wins.

Kokoro's export names nodes after PyTorch modules: the iSTFTNet generator's residual blocks,
noise branch, upsamplers and output conv; the decoder's AdaIN blocks; the ALBERT text encoder
(one group: ALBERT shares its layers' weights); the prosody predictor's text encoder, duration
LSTM and F0/N branches (exported under /encoder/)."""

FP16_HAZARD_OPS = ("CumSum", "STFT", "Range", "Atan", "NonZero", "ScatterND")
"""Ops never converted to FP16: a running sum (phase, alignment positions) loses its integer
part above 2,048 in FP16, and the phase arithmetic around STFT divides near zero."""


class Config(PassConfig):
    """Settings of the pinning pass (strict: unknown keys are errors)."""

    keep: list[str] = Field(default_factory=list)
    precision: Literal["fp32", "fp16"] = "fp32"
    depth: int | None = Field(default=None, ge=1, le=12)
    ops: list[str] = Field(default_factory=lambda: list(DEFAULT_OPS))
    method: Literal["minmax", "entropy", "percentile"] = qs.DEFAULT_METHOD
    samples: int = Field(default=qs.DEFAULT_SAMPLES, ge=1, le=10_000)
    per_channel: bool = True
    calib: str = "train"
    seed: int = 0
    keep_fp32: list[str] = Field(default_factory=list)

    @field_validator("keep", "keep_fp32", mode="before")
    @classmethod
    def _check_names(cls, value: Any, info: Any) -> list[str]:
        items = [str(v).strip() for v in (value or [])]
        if any(not v for v in items):
            raise ValueError(f"empty {info.field_name} entry; give a group name or pattern")
        return items

    @field_validator("ops", mode="before")
    @classmethod
    def _check_ops(cls, value: Any) -> list[str]:
        return qs.Config(ops=value).ops

    def quant_config(self) -> qs.Config:
        """The static INT8 settings (every node of `ops` selected; exclusion is ours)."""
        return qs.Config(
            ops=self.ops,
            method=self.method,
            samples=self.samples,
            per_channel=self.per_channel,
            calib=self.calib,
            seed=self.seed,
            include=[],
            exclude=[],
            weight_only_rest=False,
        )


def build_config(settings: dict[str, Any]) -> Config:
    """A Config from plain settings; the first problem becomes one UserInputError line."""
    from pydantic import ValidationError

    try:
        return Config(**settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error.get("loc", ())) or "settings"
        message = str(error.get("msg", exc)).removeprefix("Value error, ")
        raise UserInputError(f"Invalid pin setting {field}: {message}.") from None


def run(
    model: onnx.ModelProto,
    config: Config,
    ctx: PassContext,
    *,
    ranges_path: Path | None = None,
) -> PassResult:
    """Quantize every quantizable node of `model` except the `keep` groups' (see module doc).

    `ranges_path` is a calibration cache from `calibrated_ranges`; without it the pass
    calibrates (slow on the real model)."""
    qs.check_float_model(model)
    groups = group_nodes(model, ops=config.ops, depth=config.depth)
    kept = resolve_groups(config.keep, groups)
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    float_path = work / "pin-float.onnx"
    onnx.save_model(model, str(float_path))
    quant = config.quant_config()
    if ranges_path is None:
        ranges_path = calibrate_ranges(float_path, quant, ctx, work_dir=work)
    excluded = [name for g in kept for name in groups[g]]
    out_path = work / "pin-int8.onnx"
    if len(excluded) == sum(len(v) for v in groups.values()):
        shutil.copyfile(float_path, out_path)
    else:
        ctx.report("Quantizing", 0, 1)
        qs.quantize_with_ranges(float_path, out_path, ranges_path, quant, nodes_to_exclude=excluded)
        ctx.report("Quantizing", 1, 1)
    result = onnx.load(str(out_path))
    fp16_nodes: list[str] = []
    if config.precision == "fp16" and kept:
        ctx.report("Converting to FP16", 0, 1)
        result, fp16_nodes = convert_groups_fp16(
            result, kept, depth=config.depth, keep_fp32=config.keep_fp32
        )
        ctx.report("Converting to FP16", 1, 1)
    details = {
        "groups": {g: len(v) for g, v in groups.items()},
        "kept": kept,
        "kept_nodes": len(excluded),
        "precision": config.precision,
        "fp16_nodes": len(fp16_nodes),
        "quantized": qs.count_quantized(result, config.ops),
        "bytes_before": model.ByteSize(),
        "bytes_after": result.ByteSize(),
        "settings": config.model_dump(),
    }
    return PassResult(result, details)


# -- grouping -----------------------------------------------------------------------------------


def group_of(name: str, *, depth: int | None = None) -> str:
    """The layer group of a node name (see the module docstring)."""
    if depth is None:
        for pattern, template in _compiled_rules():
            match = pattern.search(name)
            if match:
                return match.expand(template)
        depth = 1
    parts = [p for p in name.strip("/").split("/") if p]
    module = parts[:-1] if len(parts) > 1 else parts
    collapsed: list[str] = []
    for part in module:
        if not collapsed or collapsed[-1] != part:
            collapsed.append(part)
    return "/".join(collapsed[:depth]) or "other"


def group_nodes(
    model: onnx.ModelProto, *, ops: Sequence[str] = DEFAULT_OPS, depth: int | None = None
) -> dict[str, list[str]]:
    """Quantizable node names (op type in `ops`) by group, groups in graph order."""
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in ops:
            groups.setdefault(group_of(node.name, depth=depth), []).append(node.name)
    return groups


def group_ops(model: onnx.ModelProto, groups: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Op types of each group's quantizable nodes, counted."""
    by_name = {n.name: n.op_type for n in model.graph.node}
    return {
        g: dict(sorted(Counter(by_name[n] for n in names).items())) for g, names in groups.items()
    }


def resolve_groups(requested: Iterable[str], groups: dict[str, list[str]]) -> list[str]:
    """Group names for `requested` names or shell-style globs (`generator/resblocks.*`), in
    graph order; an entry that names no quantizable group raises UserInputError."""
    chosen: set[str] = set()
    for entry in requested:
        hits = [g for g in groups if g == entry or fnmatch.fnmatchcase(g, entry)]
        if not hits:
            known = ", ".join(groups) or "none"
            raise UserInputError(
                f"Unknown group {entry!r}: it names no quantizable layer group of this model. "
                f"Groups: {known}. Run `kokoro-opt pin analyze MODEL` to see them."
            )
        chosen.update(hits)
    return [g for g in groups if g in chosen]


# -- FP16 ---------------------------------------------------------------------------------------


def convert_groups_fp16(
    model: onnx.ModelProto,
    kept: Sequence[str],
    *,
    depth: int | None = None,
    keep_fp32: Sequence[str] = (),
) -> tuple[onnx.ModelProto, list[str]]:
    """Convert every node of the `kept` groups to FP16 (Casts at the boundaries, I/O float32);
    QDQ nodes, `FP16_HAZARD_OPS` and nodes matching a `keep_fp32` pattern stay float32.

    Returns the new model and the names of the converted nodes."""
    wanted = set(kept)
    convert = [
        n.name
        for n in model.graph.node
        if group_of(n.name, depth=depth) in wanted
        and n.op_type not in ("QuantizeLinear", "DequantizeLinear", *FP16_HAZARD_OPS)
        and not any(match_pattern(p, n.name) for p in keep_fp32)
    ]
    from kokoro_opt.graph.fp16 import convert_nodes_fp16

    return convert_nodes_fp16(model, convert)


# -- calibration, once --------------------------------------------------------------------------


def calibrate_ranges(
    float_path: Path, quant: qs.Config, ctx: PassContext, *, work_dir: Path
) -> Path:
    """Activation ranges of every `quant.ops` node of the model at `float_path` (ORT
    calibration cache JSON), with the pass's percentile narrowing when asked for."""
    from kokoro_opt.calib.feeds import check_sampling, corpus_feeds
    from kokoro_opt.runtime.contract import ModelContract

    model = onnx.load(str(float_path), load_external_data=False)
    contract = ModelContract.from_onnx(model)
    nodes = [n.name for n in model.graph.node if n.op_type in quant.ops]
    del model
    corpus = qs.load_corpus(quant)
    check_sampling(count=quant.samples, voices=quant.voices, speeds=quant.speeds)
    _, feeds = corpus_feeds(
        corpus["texts"],
        contract,
        count=quant.samples,
        voices=quant.voices,
        speeds=quant.speeds,
        seed=quant.seed,
        lang=quant.lang,
        source=f"Corpus {corpus['label']}",
        progress=ctx.report,
    )
    path = qs.calibrate(float_path, feeds, quant, ctx, work_dir=work_dir)
    if quant.method == "percentile":
        path = qs.percentile_ranges(float_path, feeds, path, nodes, quant, ctx, work_dir=work_dir)
    return path


def calibration_key(model_sha256: str, config: Config) -> str:
    """What a cached calibration depends on: the model and the calibration settings."""
    quant = config.quant_config()
    fields = ("ops", "method", "samples", "percentile", "output_percentile", "calib", "lang",
              "voices", "speeds", "seed", "symmetric_activations")  # fmt: skip
    picked = {k: getattr(quant, k) for k in fields}
    text = json.dumps({"model": model_sha256, **picked}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def calibrated_ranges(
    model_path: Path,
    config: Config,
    ctx: PassContext,
    *,
    cache_folder: Path,
    model_sha256: str | None = None,
) -> tuple[Path, bool]:
    """The ranges file for `model_path` under `config`'s calibration settings, from
    `cache_folder` when an earlier run made it, else calibrated now and stored there.
    Returns (path, reused)."""
    from kokoro_opt.graph.io import sha256_file

    sha = model_sha256 or sha256_file(model_path)
    target = Path(cache_folder) / f"ranges-{calibration_key(sha, config)}.json"
    if target.is_file():
        return target, True
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kokoro-opt-calib-") as tmp:
        path = calibrate_ranges(Path(model_path), config.quant_config(), ctx, work_dir=Path(tmp))
        fd, tmp_name = tempfile.mkstemp(prefix=".ranges.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp_name)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return target, False


def check_ranges_file(path: Path) -> Path:
    """`path` if it is an ORT calibration cache (JSON of activation ranges), else a
    UserInputError."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    path = Path(path).expanduser()
    try:
        data = load_tensors_data(str(path))
        if not len(data.data):
            raise ValueError("no tensors")
    except Exception:  # missing, not JSON, not a TensorsData cache
        raise UserInputError(
            f"--ranges {path} is not a calibration cache (the JSON of activation ranges "
            "written by a pin or quantize run); leave --ranges out to calibrate."
        ) from None
    return path


# -- helpers ------------------------------------------------------------------------------------


def _compiled_rules() -> list[tuple[re.Pattern[str], str]]:
    global _RULES
    if _RULES is None:
        _RULES = [(re.compile(p), t) for p, t in GROUP_RULES]
    return _RULES


_RULES: list[tuple[re.Pattern[str], str]] | None = None


def match_pattern(pattern: str, name: str) -> bool:
    """A glob on the whole name, or a regular expression after 're:' searched in it."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)
