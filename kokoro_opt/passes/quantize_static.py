"""Static INT8 quantization (QDQ) calibrated on phonemized text, on ORT's `quantize_static`.

The pass phonemizes a text corpus (`kokoro_opt.calib`), runs the float model on those inputs to
record the range of every activation that feeds or leaves a node to be quantized, then lets
onnxruntime's `quantize_static` insert QuantizeLinear/DequantizeLinear pairs (QDQ format) with
those ranges. ORT's CPU provider fuses `DQ -> Conv -> Q` into QLinearConv (and MatMul alike), so
speed comes from the nodes whose input and output are both quantized.

Node selection: `ops` names the op types to quantize (Conv, ConvTranspose, MatMul, Gemm); ORT's
static quantizer has no LSTM, so LSTMs stay float. When `include` is given only matching nodes
are quantized; `exclude` keeps matching nodes float. A pattern is a shell-style glob matched
against the whole node name (`*/conv_post/*`, `?` and `[abc]` work as in a shell;
case-sensitive), or, prefixed with `re:`, a Python regular expression searched anywhere in the
name (`re:generator/(noise_convs|noise_res)`).

Ranges: `minmax` and `entropy` are ORT's calibrators. `percentile` is ours: after a MinMax pass
it histograms each quantized tensor (8,192 bins over its min..max) and keeps the central
`percentile` of its values (`output_percentile` for the outputs of quantized nodes), cutting
both tails separately; ORT's own percentile method is symmetric around zero, which wastes half
the range on Snake activations that are mostly positive.

The defaults are the settings measured best on Kokoro-82M (docs/int8-static.md): the
generator's residual blocks and noise branch run in INT8, and so do the decoder's frame-rate
convs; the last conv (`convs2.2`) of the three high-rate residual blocks and two convs of
`resblocks.1` stay float; every other weight is stored as int8 but computed in float
(`weight_only_rest`).

Before calibrating, the pass applies the graph rewrites that keep static INT8's quality
(`rewrites`, default `instnorm,conv2d`, the same as `optimize --for-quantization`): the Convs
that stay float then run on ORT's NCHWc kernels and the instance norms fuse, 2-5 % faster than
quantizing the graph as given, with the same quality (docs/int8-static.md). The default node
patterns match the rewritten names (`<conv>/conv2d`).

After quantizing, the AdaIN + Snake chains that feed an INT8 Conv become per-channel lookup
tables (`lookup_tables`, see `rewrite_qlut`): `exact` only where the chain's input is INT8 too
(the model's own uint8 codes), `all` (default) also where it is float, after an 8-bit
rounding of its normalized input. Most of ORT's single-threaded Sin work goes with them.

Calibration runs one sample at a time and reduces each recorded tensor (to its min and max, or
into its histogram, inside the graph) as soon as it exists, so memory stays that of one input
(a 6 GB peak before this, 3.7 GB of it for one long sample); it reports progress per sample.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
from pydantic import Field, field_validator, model_validator

from kokoro_opt.calib.feeds import (
    DEFAULT_SPEEDS,
    DEFAULT_VOICES,
    FeedReader,
    check_sampling,
    corpus_feeds,
)
from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.graph.inspect import detect_quant_style
from kokoro_opt.passes import rewrite_qlut
from kokoro_opt.passes import rewrites as graph_rewrites
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult
from kokoro_opt.runtime.contract import ModelContract

if TYPE_CHECKING:
    from onnxruntime.quantization import TensorsData

logger = logging.getLogger(__name__)

ALLOWED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
"""Op types this pass can quantize (ORT QDQ ops with weights)."""
_NOT_STATIC = {
    "LSTM": "ORT's static (QDQ) quantizer has no LSTM; LSTMs stay float",
    "GRU": "ORT's static (QDQ) quantizer has no GRU",
}

DEFAULT_OPS = ["Conv"]
DEFAULT_INCLUDE = [
    r"re:^/decoder/decoder/generator/(resblocks|noise_convs|noise_res)\.",
    r"re:^/decoder/decoder/(encode/conv2|decode\.\d+/conv(1|2|1x1))/",
]
"""Most of the Conv time and the part that tolerates INT8: the generator's residual blocks and
noise branch, and the decoder's 1024-channel convs at frame rate. conv_post, the text side and
the decoder's encode/conv1 and conv1x1 do not (docs/int8-static.md). The upsampling
ConvTransposes are left out of the default op types: ORT has no fused INT8 kernel for them,
so QDQ there costs quality and gains no time."""
DEFAULT_EXCLUDE = [r"re:/resblocks\.[1345]/convs2\.2/", r"re:/resblocks\.1/convs1\.2/"]
"""Kept float, measured one node at a time: the last conv (`convs2.2`) of the high-rate
residual blocks, which write straight into the sum feeding conv_post, and of `resblocks.1`
(each alone adds more error than all the decoder convs together), and `resblocks.1/convs1.2`,
the conv whose INT8 error is largest among the rest (about 1 % of the time)."""
DEFAULT_METHOD = "percentile"
DEFAULT_SAMPLES = 32
DEFAULT_PERCENTILE = 99.99
DEFAULT_OUTPUT_PERCENTILE = 99.9
HISTOGRAM_BINS = 8192
HELD_OUT_SPLITS = ("heldout", "smoke")

# Op types whose presence means the model is already quantized (see graph.inspect).
_QUANT_STYLES = ("dynamic-int8", "qdq-int8", "int4-matmulnbits", "mixed")


class Config(PassConfig):
    """Settings of the static INT8 pass (strict: unknown keys are errors)."""

    per_channel: bool = True
    method: Literal["minmax", "entropy", "percentile"] = DEFAULT_METHOD
    percentile: float = DEFAULT_PERCENTILE
    output_percentile: float = DEFAULT_OUTPUT_PERCENTILE
    samples: int = Field(default=DEFAULT_SAMPLES, ge=1, le=10_000)
    activations: Literal["uint8", "int8"] = "uint8"
    symmetric_activations: bool = False
    weights: Literal["int8", "uint8"] = "int8"
    ops: list[str] = Field(default_factory=lambda: list(DEFAULT_OPS))
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    weight_only_rest: bool = True
    lookup_tables: Literal["all", "exact", "none"] = "all"
    calib: str = "train"
    text_column: str | None = None
    lang: str = "en-us"
    voices: list[str] = Field(default_factory=lambda: list(DEFAULT_VOICES))
    speeds: list[float] = Field(default_factory=lambda: list(DEFAULT_SPEEDS))
    seed: int = 0
    preprocess: bool = False
    rewrites: list[str] = Field(default_factory=lambda: list(graph_rewrites.FOR_QUANTIZATION))

    @field_validator("ops", mode="before")
    @classmethod
    def _check_ops(cls, value: Any) -> list[str]:
        items = _as_list(value, "ops")
        if not items:
            raise ValueError(f"no op types to quantize; choose from {', '.join(ALLOWED_OPS)}")
        by_lower = {op.lower(): op for op in ALLOWED_OPS}
        out: list[str] = []
        for raw in items:
            name = str(raw).strip()
            if name.lower() in {k.lower() for k in _NOT_STATIC}:
                key = next(k for k in _NOT_STATIC if k.lower() == name.lower())
                raise ValueError(
                    f"op type {name!r} cannot be quantized statically ({_NOT_STATIC[key]}); "
                    f"choose from {', '.join(ALLOWED_OPS)}"
                )
            if name.lower() not in by_lower:
                raise ValueError(f"unknown op type {name!r}; choose from {', '.join(ALLOWED_OPS)}")
            canonical = by_lower[name.lower()]
            if canonical not in out:
                out.append(canonical)
        return out

    @field_validator("rewrites", mode="before")
    @classmethod
    def _check_rewrites(cls, value: Any) -> list[str]:
        items = [str(v).strip().lower() for v in _as_list(value, "rewrites")]
        if items == ["none"]:
            return []
        unknown = [v for v in items if v not in graph_rewrites.REWRITES]
        if unknown:
            raise ValueError(
                f"unknown rewrite(s) {', '.join(unknown)}; choose from "
                f"{', '.join(graph_rewrites.ORDER)} or 'none'"
            )
        return [name for name in graph_rewrites.ORDER if name in items]

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _check_patterns(cls, value: Any, info: Any) -> list[str]:
        items = [str(p) for p in _as_list(value, info.field_name)]
        for pattern in items:
            if not pattern.strip() or pattern.strip() == "re:":
                raise ValueError(
                    f"empty {info.field_name} pattern; give a glob such as '*/conv_post/*'"
                )
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(
                        f"{info.field_name} pattern {pattern!r} is not a valid regular "
                        f"expression ({exc}); fix it or use a glob without the 're:' prefix"
                    ) from None
        return items

    @field_validator("percentile", "output_percentile")
    @classmethod
    def _check_percentile(cls, value: float) -> float:
        if not (90.0 <= value < 100.0):
            raise ValueError(
                f"percentile must be at least 90 and below 100 (such as 99.999), got {value}"
            )
        return value

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
    def _check_types(self) -> Config:
        if self.activations == "int8" and self.weights == "uint8":
            raise ValueError(
                "int8 activations with uint8 weights are not supported by onnxruntime; use "
                "int8 weights (recommended) or uint8 activations"
            )
        return self

    def matches(self, node_name: str) -> list[str]:
        """The exclude patterns that match `node_name`."""
        return [p for p in self.exclude if _match(p, node_name)]

    def included(self, node_name: str) -> bool:
        """True when `include` is empty or one of its patterns matches `node_name`."""
        return not self.include or any(_match(p, node_name) for p in self.include)


def build_config(settings: dict[str, Any]) -> Config:
    """A Config from plain settings; the first problem becomes one UserInputError line."""
    from pydantic import ValidationError

    try:
        return Config(**settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error.get("loc", ())) or "settings"
        message = str(error.get("msg", exc)).removeprefix("Value error, ")
        raise UserInputError(f"Invalid quantize setting {field}: {message}.") from None


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Quantize `model` statically (QDQ) with ranges calibrated on the configured corpus."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    check_float_model(model)
    bytes_before = model.ByteSize()
    rewritten: dict[str, Any] = {}
    if config.rewrites:
        t0 = time.perf_counter()
        rewrite = graph_rewrites.apply(model, list(config.rewrites), ctx)
        model, rewritten = rewrite.model, rewrite.details
        del rewrite
        timings["rewrite_s"] = time.perf_counter() - t0
    contract = ModelContract.from_onnx(model)
    selection = select_nodes(model, config)
    if not selection["quantize"]:
        raise UserInputError(
            f"Nothing to quantize: the model has no {'/'.join(config.ops)} nodes left after "
            f"the include and exclude patterns ({_count_text(selection['candidates'])}). Change "
            "--ops, --include or --exclude."
        )

    t0 = time.perf_counter()
    corpus = load_corpus(config)
    check_sampling(count=config.samples, voices=config.voices, speeds=config.speeds)
    samples, feeds = corpus_feeds(
        corpus["texts"],
        contract,
        count=config.samples,
        voices=config.voices,
        speeds=config.speeds,
        seed=config.seed,
        lang=config.lang,
        source=f"Corpus {corpus['label']}",
        progress=ctx.report,
    )
    timings["phonemize_s"] = time.perf_counter() - t0

    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model_path = work / "float.onnx"
    t0 = time.perf_counter()
    onnx.save_model(model, str(model_path))
    if config.preprocess:
        model_path = preprocess_model(model_path, work / "preprocessed.onnx")
    timings["preprocess_s"] = time.perf_counter() - t0
    del model  # calibration reads float.onnx; one copy of the float weights less in memory

    t0 = time.perf_counter()
    ranges_path = calibrate(model_path, feeds, config, ctx, work_dir=work)
    if config.method == "percentile":
        ranges_path = percentile_ranges(
            model_path, feeds, ranges_path, selection["quantize"], config, ctx, work_dir=work
        )
    timings["calibrate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out_path = work / "quantized.onnx"
    quantize_with_ranges(
        model_path, out_path, ranges_path, config, nodes_to_exclude=selection["excluded"]
    )
    quantized = onnx.load(str(out_path))
    int8_stored: dict[str, int] = {}
    if config.weight_only_rest:
        quantized, int8_stored = int8_weights(quantized)
    tables: dict[str, Any] = {}
    if config.lookup_tables != "none":
        tables_config = rewrite_qlut.Config(float_inputs=config.lookup_tables == "all")
        result = rewrite_qlut.run(quantized, tables_config, ctx)
        quantized, tables = result.model, result.details
    timings["quantize_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    details = {
        "quantized": count_quantized(quantized, config.ops),
        "int8_weights_float_compute": int8_stored,
        "candidates": selection["candidates"],
        "excluded": selection["excluded"],
        "unmatched_patterns": selection["unmatched"],
        "rewrites": rewritten,
        "lookup_tables": tables,
        "bytes_before": bytes_before,
        "bytes_after": quantized.ByteSize(),
        "calibration": {
            "corpus": corpus["label"],
            "corpus_sha256": corpus["sha256"],
            "texts": len(corpus["texts"]),
            "samples": len(samples),
            "phonemes": sum(s.n_phonemes for s in samples),
            "voices": dict(sorted(Counter(s.voice for s in samples).items())),
            "speeds": dict(sorted(Counter(f"{s.speed:g}" for s in samples).items())),
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "settings": config.model_dump(),
    }
    return PassResult(quantized, details)


# -- steps (public so recipes and experiments can run them one by one) ------------------------


def check_float_model(model: onnx.ModelProto) -> None:
    """Raise ModelFormatError unless `model` is a float32 model (not quantized, not FP16)."""
    style, evidence = detect_quant_style(model)
    if style in _QUANT_STYLES:
        found = ", ".join(
            f"{count} {op}" for family in evidence.values() for op, count in family.items()
        )
        raise ModelFormatError(
            f"The model is already quantized ({style}: {found}). Static INT8 needs a float32 "
            "model: quantize the FP32 reference (kokoro-fp32) instead."
        )
    if style == "fp16":
        raise ModelFormatError(
            "The model holds FP16 weights. Static INT8 needs a float32 model: quantize the FP32 "
            "reference (kokoro-fp32) instead."
        )


def select_nodes(model: onnx.ModelProto, config: Config) -> dict[str, Any]:
    """Candidates per op type, names kept float (not included, or excluded), patterns that
    matched no candidate, and the names to quantize."""
    candidates: Counter[str] = Counter()
    excluded: list[str] = []
    keep: list[str] = []
    hits: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type not in config.ops:
            continue
        candidates[node.op_type] += 1
        for pattern in config.include:
            if _match(pattern, node.name):
                hits[pattern] += 1
        matched = config.matches(node.name)
        for pattern in matched:
            hits[pattern] += 1
        (excluded if matched or not config.included(node.name) else keep).append(node.name)
    return {
        "candidates": dict(sorted(candidates.items())),
        "excluded": excluded,
        "unmatched": [p for p in [*config.include, *config.exclude] if hits[p] == 0],
        "quantize": keep,
    }


def load_corpus(config: Config) -> dict[str, Any]:
    """The calibration texts, a label for messages and the sha256 of their content."""
    from kokoro_opt.calib.corpus import load_texts

    texts = load_texts(config.calib, text_column=config.text_column)
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
    label = config.calib if config.calib == "train" else str(Path(config.calib).expanduser())
    return {"texts": texts, "label": label, "sha256": digest}


def preprocess_model(src: Path, dst: Path) -> Path:
    """ORT's `quant_pre_process` (ONNX shape inference and basic graph optimization).

    Symbolic shape inference is skipped: it cannot follow Kokoro's `Min(512, T)` position
    slice and gives up on the whole graph.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def calibrate(
    model_path: Path,
    feeds: Sequence[dict[str, Any]],
    config: Config,
    ctx: PassContext,
    *,
    work_dir: Path,
) -> Path:
    """Record activation ranges over `feeds`, one sample at a time; returns an ORT calibration
    cache (JSON) that `quantize_static` reads instead of calibrating again."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import MinMaxCalibrater, save_tensors_data

    # Our percentile method starts from MinMax ranges (see percentile_ranges).
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.MinMax,
    }[config.method]
    options: dict[str, Any] = {"symmetric": config.symmetric_activations}
    augmented = str(work_dir / "augmented.onnx")
    with _quiet():
        if method == CalibrationMethod.MinMax:
            # Built here rather than by create_calibrator, which would also start a session of
            # its own that ours replaces; the augmented proto is on disk and MinMax never reads
            # it again, so it leaves memory before the session starts.
            calibrator = MinMaxCalibrater(
                model_path, list(config.ops), augmented, symmetric=config.symmetric_activations
            )
            calibrator.augment_graph()
            calibrator.model = None
        else:
            calibrator = create_calibrator(
                model_path,
                list(config.ops),
                augmented_model_path=augmented,
                calibrate_method=method,
                extra_options=options,
            )
            calibrator.infer_session = None
    calibrator.infer_session = _calibration_session(augmented, ctx.threads)
    total = len(feeds)
    ctx.report("Calibrating", 0, total)
    with _quiet():
        for index, feed in enumerate(feeds):
            calibrator.collect_data(FeedReader([feed]))
            ctx.report("Calibrating", index + 1, total)
        ranges: TensorsData = calibrator.compute_data()
    del calibrator
    path = work_dir / f"ranges-{method.name.lower()}.json"
    save_tensors_data(ranges, path)
    return path


def percentile_ranges(
    model_path: Path,
    feeds: Sequence[dict[str, Any]],
    minmax_path: Path,
    nodes: Sequence[str],
    config: Config,
    ctx: PassContext,
    *,
    work_dir: Path,
) -> Path:
    """Narrow the MinMax ranges of the activations of `nodes` to their central percentile.

    One more pass over `feeds` histograms each tensor over its MinMax range; each tail is cut
    at (100 - p) / 2 percent, and the range always keeps zero (so zero stays exact).
    Returns a calibration cache in the same format as `calibrate`.

    The histograms are counted inside the graph (`_histogram_graph`), so the session returns
    counts, not tensors, and frees each tensor as soon as it is counted.
    """
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        load_tensors_data,
        save_tensors_data,
    )

    base = load_tensors_data(str(minmax_path))
    model = onnx.load(str(model_path))
    wanted = set(nodes)
    outputs: set[str] = set()
    tensors: list[str] = []
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        outputs.add(node.output[0])
        for name in (node.input[0], node.output[0]):
            if name in base and name not in tensors:
                tensors.append(name)
    lows = np.array([float(np.ravel(base[t].range_value[0])[0]) for t in tensors])
    highs = np.array([float(np.ravel(base[t].range_value[1])[0]) for t in tensors])
    spans = np.maximum(highs - lows, 1e-12)
    histograms = _histogram_graph(model, tensors, lows, spans)
    # Saved and loaded by path: the proto, its serialized bytes and ORT's copy of the weights
    # never sit in memory together.
    binned_path = work_dir / "histograms.onnx"
    onnx.save_model(model, str(binned_path))
    del model
    session = _calibration_session(str(binned_path), ctx.threads)
    counts = np.zeros((len(tensors), HISTOGRAM_BINS), np.int64)
    total = len(feeds)
    ctx.report("Histograms", 0, total)
    for index, feed in enumerate(feeds):
        counts += np.stack(session.run(histograms, dict(feed)))
        ctx.report("Histograms", index + 1, total)
    ranges = {name: TensorData(lowest=data.range_value[0], highest=data.range_value[1])
              for name, data in base.items()}  # fmt: skip
    for i, name in enumerate(tensors):
        keep = config.output_percentile if name in outputs else config.percentile
        low, high = central_range(counts[i], lows[i], highs[i], keep)
        ranges[name] = TensorData(
            lowest=np.array([low], np.float32), highest=np.array([high], np.float32)
        )
    path = work_dir / "ranges-percentile.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), path)
    return path


def _histogram_graph(
    model: onnx.ModelProto, tensors: Sequence[str], lows: np.ndarray, spans: np.ndarray
) -> list[str]:
    """Add to `model` (in place) one output per tensor: its histogram, int64 [HISTOGRAM_BINS].

    The bin of a value is `clip(int64((x - low) / span * HISTOGRAM_BINS), 0, HISTOGRAM_BINS - 1)`
    in float64, the arithmetic numpy did on the float32 tensor when this ran outside the
    graph, so the counts are the same; a ScatterElements adds one per value into its bin.
    Inside the graph each tensor is freed once counted, where graph outputs had to stay alive to
    the end of the run (2.6 GB more for one long Kokoro sample). Each tensor's counting nodes
    are placed right after the node that makes it: ORT's priority-based order breaks ties by
    node position, so nodes appended at the end waited until the rest of the graph had run and
    their float64 copies piled up (3.53 GB against 1.52 GB for the long sample). Returns the
    output names in the order of `tensors`.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    shared = {
        "hist/bins": np.array(HISTOGRAM_BINS, np.float64),
        "hist/first_bin": np.array(0, np.int64),
        "hist/last_bin": np.array(HISTOGRAM_BINS - 1, np.int64),
        "hist/flat": np.array([-1], np.int64),
        "hist/empty": np.zeros(HISTOGRAM_BINS, np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in shared.items())
    one = numpy_helper.from_array(np.ones(1, np.int64))
    names: list[str] = []
    chains: dict[str, list[onnx.NodeProto]] = {}
    for i, tensor in enumerate(tensors):
        p = f"hist/{i}"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(lows[i], np.float64), f"{p}/low"),
                numpy_helper.from_array(np.array(spans[i], np.float64), f"{p}/span"),
            ]
        )
        chains.setdefault(tensor, []).extend(
            [
                helper.make_node("Reshape", [tensor, "hist/flat"], [f"{p}/flat"]),
                helper.make_node("Cast", [f"{p}/flat"], [f"{p}/x64"], to=TensorProto.DOUBLE),
                helper.make_node("Sub", [f"{p}/x64", f"{p}/low"], [f"{p}/shifted"]),
                helper.make_node("Div", [f"{p}/shifted", f"{p}/span"], [f"{p}/unit"]),
                helper.make_node("Mul", [f"{p}/unit", "hist/bins"], [f"{p}/scaled"]),
                helper.make_node("Cast", [f"{p}/scaled"], [f"{p}/index"], to=TensorProto.INT64),
                helper.make_node(
                    "Clip", [f"{p}/index", "hist/first_bin", "hist/last_bin"], [f"{p}/bin"]
                ),
                helper.make_node("Shape", [f"{p}/bin"], [f"{p}/count"]),
                helper.make_node("ConstantOfShape", [f"{p}/count"], [f"{p}/ones"], value=one),
                helper.make_node(
                    "ScatterElements",
                    ["hist/empty", f"{p}/bin", f"{p}/ones"],
                    [f"{p}/histogram"],
                    axis=0,
                    reduction="add",
                ),
            ]
        )
        graph.output.append(
            helper.make_tensor_value_info(f"{p}/histogram", TensorProto.INT64, [HISTOGRAM_BINS])
        )
        names.append(f"{p}/histogram")
    _place_after_producers(graph, chains)
    return names


def _place_after_producers(graph: onnx.GraphProto, chains: dict[str, list[onnx.NodeProto]]) -> None:
    """Rebuild `graph.node` with each chain (reading tensor `name`) right after the node that
    makes `name`; chains of graph inputs come first (the order stays topological)."""
    ordered: list[onnx.NodeProto] = []
    for name in [x.name for x in graph.input if x.name in chains]:
        ordered.extend(chains.pop(name))
    for node in graph.node:
        ordered.append(node)
        for name in node.output:
            ordered.extend(chains.pop(name, []))
    for rest in chains.values():  # not made by any node (an initializer): at the end, as before
        ordered.extend(rest)
    del graph.node[:]
    graph.node.extend(ordered)


def central_range(counts: np.ndarray, low: float, high: float, keep: float) -> tuple[float, float]:
    """The range holding the central `keep` percent of a histogram over [low, high], each tail
    cut separately, widened to include zero."""
    edges = np.linspace(low, high, len(counts) + 1)
    n = counts.sum()
    if n == 0:
        return min(low, 0.0), max(high, 0.0)
    cdf = np.cumsum(counts) / n
    cut = (1.0 - keep / 100.0) / 2.0
    a = edges[int(np.searchsorted(cdf, cut))]
    b = edges[min(int(np.searchsorted(cdf, 1.0 - cut)) + 1, len(edges) - 1)]
    return min(float(a), 0.0), max(float(b), 0.0)


def quantize_with_ranges(
    model_path: Path,
    out_path: Path,
    ranges_path: Path,
    config: Config,
    *,
    nodes_to_exclude: Sequence[str],
    extra_options: dict[str, Any] | None = None,
) -> Path:
    """Run `quantize_static` (QDQ) on `model_path` with the calibrated ranges in `ranges_path`
    (`extra_options` are passed on to ORT after ours)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # The ranges file is final (percentile ranges are stored as MinMax data).
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.MinMax,
    }[config.method]
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    with _quiet():
        quantize_static(
            str(model_path),
            str(out_path),
            calibration_data_reader=None,
            calibration_cache_path=str(ranges_path),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(config.ops),
            per_channel=config.per_channel,
            reduce_range=False,
            activation_type=qtype[config.activations],
            weight_type=qtype[config.weights],
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=method,
            extra_options={
                "ActivationSymmetric": config.symmetric_activations,
                **(extra_options or {}),
            },
        )
    return out_path


def count_quantized(model: onnx.ModelProto, ops: Sequence[str]) -> dict[str, int]:
    """Nodes of each op type in `ops` that run quantized: both their activation input and their
    weight come from a DequantizeLinear (a QDQ node unit ORT fuses into an integer kernel)."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type not in ops or len(node.input) < 2:
            continue
        if all(producers.get(node.input[i]) == "DequantizeLinear" for i in (0, 1)):
            counts[node.op_type] += 1
    return {op: counts.get(op, 0) for op in ops}


WEIGHT_ONLY_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM")
"""Op types whose float weights `int8_weights` can store as int8 (weight-only quantization)."""
MIN_WEIGHT_ELEMENTS = 1024
"""Smaller weights stay float: their scales would cost about as much as they save."""


def int8_weights(
    model: onnx.ModelProto,
    *,
    skip: Sequence[str] = (),
    min_elements: int = MIN_WEIGHT_ELEMENTS,
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Store the float weights of Conv/ConvTranspose/MatMul/Gemm/LSTM nodes as symmetric
    per-channel int8 (weight-only; compute stays float).

    Each weight becomes `Mul(Cast(int8 weight), scale)`. onnxruntime folds that constant
    expression back into a float weight when it loads the model (graph optimization level
    basic or higher), so the file shrinks at no run-time cost; a DequantizeLinear would instead
    run on every call (ORT never constant-folds DequantizeLinear, to keep QDQ units intact).
    Per-channel means per output channel: axis 0 of a Conv weight, axis 1 of a ConvTranspose
    weight, the last axis of a MatMul weight, the output axis of a Gemm weight, and each
    (direction, gate row) of LSTM W and R. Weights shared with other kinds of inputs, not
    float32, smaller than `min_elements`, or of nodes named in `skip` are left alone.
    Returns a new model and the number of nodes per op type whose weights were converted.
    """
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    skip_set = set(skip)
    weight_uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    other_uses: set[str] = set()
    for node in graph.node:
        slots = _weight_slots(node) if node.name not in skip_set else ()
        for index, name in enumerate(node.input):
            if name not in inits:
                continue
            if index in slots:
                weight_uses.setdefault(name, []).append((node, index))
            else:
                other_uses.add(name)
    converted: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for name, uses in weight_uses.items():
        tensor = inits[name]
        if name in other_uses or tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        if int(np.prod(tensor.dims)) < min_elements:
            continue
        axes = {_channel_axes(node, len(tensor.dims)) for node, _ in uses}
        if len(axes) != 1:
            continue
        keep = axes.pop()
        weight = numpy_helper.to_array(tensor).astype(np.float32)
        reduce = tuple(i for i in range(weight.ndim) if i not in keep)
        scale = np.abs(weight).max(axis=reduce, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
        base = f"{name}_int8"
        graph.initializer.append(numpy_helper.from_array(q, base))
        graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), base + "_scale"))
        new_nodes.append(
            helper.make_node(
                "Cast", [base], [base + "_float"], name=f"{base}/Cast", to=onnx.TensorProto.FLOAT
            )
        )
        new_nodes.append(
            helper.make_node(
                "Mul", [base + "_float", base + "_scale"], [base + "_weight"], name=f"{base}/Mul"
            )
        )
        for node, index in uses:
            node.input[index] = base + "_weight"
            converted[node.name] = node.op_type
        graph.initializer.remove(tensor)
    # The new nodes only read initializers, so they can go first (the graph stays sorted).
    for node in reversed(new_nodes):
        graph.node.insert(0, node)
    return out, dict(sorted(Counter(converted.values()).items()))


def _weight_slots(node: onnx.NodeProto) -> tuple[int, ...]:
    if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
        return (1,)
    if node.op_type == "LSTM":
        return (1, 2)
    return ()


def _channel_axes(node: onnx.NodeProto, ndim: int) -> tuple[int, ...]:
    """The axes of a weight that index output channels (one scale per combination)."""
    if node.op_type == "Conv":
        return (0,)
    if node.op_type == "ConvTranspose":
        return (1,)
    if node.op_type == "MatMul":
        return (ndim - 1,)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return (0,) if trans_b else (1,)
    return (0, 1)  # LSTM W [D, 4H, I] and R [D, 4H, H]: per direction and gate row


# -- helpers ------------------------------------------------------------------------------------


def _as_list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in (part.strip() for part in value.split(",")) if v]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"{field} must be a list of strings, got {type(value).__name__}")


def _match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _count_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in counts.items()) or "none"


def _calibration_session(path: str | bytes, threads: int | None) -> Any:
    """The calibrator's session with basic graph optimizations (the recorded tensors are graph
    outputs, so no fusion can remove them), the context's thread count and an execution order
    that frees each recorded tensor early."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # ORT's default order runs the recording nodes (graph outputs with no readers) only after
    # the rest of the graph, so every recorded tensor stayed alive to the end: 3.7 GB for one
    # 276-token sample, against 0.95 GB when each is reduced as soon as it exists. The order
    # changes no value.
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet() -> Any:
    """onnxruntime.quantization prints to stdout and logs warnings; keep both out of the
    terminal (library code never writes there) and in our debug log."""
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        root.setLevel(level)
        text = buffer.getvalue().strip()
        if text:
            logger.debug("onnxruntime.quantization: %s", text[-2000:])
