"""The step kinds a recipe can use, each backed by the library function its CLI command calls.

A `StepKind` names its options model (the pass's `Config`, or a small wrapper where the CLI
command takes more than one config, like shapes' bucket list) and the function that runs it.
Both are imported lazily by dotted name, so validating a recipe never imports onnxruntime, and
a kind whose module is not in this kokoro-opt yet fails validation with a clear line.

Roles: `pull` (fetch the default models), `transform` (model in, model out: optimize, quantize,
pin, int4, fp16), `buckets` (model in, folder of models out: shapes, split), `evidence`
(measure the current model against the reference: eval, bench) and `gate` (check the evidence).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.recipe.schema import Recipe, Step

Role = Literal["pull", "transform", "buckets", "evidence", "gate"]


@dataclass(frozen=True)
class Artifact:
    """A file (or bucket folder) the run has: where it is, its content hash, a display name."""

    path: Path
    sha256: str
    label: str


@dataclass
class StepInput:
    """What the runner hands a step."""

    step: Step
    recipe: Recipe
    model: Artifact | None
    reference: Artifact | None
    evidence: Path | None
    staging: Path
    ctx: PassContext
    names: dict[str, str] = field(default_factory=dict)
    """Report names: 'reference' and 'candidate' model entry names."""
    split: Artifact | None = None
    """The split folder of the run's `split` step, once it ran."""


@dataclass
class StepOutput:
    """What a step leaves in its staging folder (paths relative to it) and a JSON summary."""

    model: str | None = None
    buckets: str | None = None
    report: str | None = None
    passed: bool | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepKind:
    """One kind of step: how its options are validated and which function runs it."""

    name: str
    role: Role
    summary: str
    cli: str
    options: str | type[BaseModel]
    """Dotted 'module:attr' of the options model (or the class itself)."""
    execute: str | Callable[[StepInput], StepOutput]
    """Dotted 'module:function' that runs the step (or the function itself)."""
    code: tuple[str, ...] = ()
    """What goes into the cache key's code fingerprint: modules (with every kokoro_opt module
    they import) and data paths under kokoro_opt/ (see `cache.code_fingerprint`)."""
    cached: bool = True
    needs_float: bool = False
    quantizes: bool = False
    requires: tuple[str, ...] = ()
    """Modules the step's implementation needs (checked by `unavailable`)."""

    def unavailable(self) -> str | None:
        """Why this kind cannot run in this installation, or None."""
        modules = [t.split(":")[0] for t in (self.options, self.execute) if isinstance(t, str)]
        for module in (*modules, *self.requires):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        return None

    def options_model(self) -> type[BaseModel]:
        return _resolve(self.options)  # type: ignore[no-any-return]

    def validate(self, options: dict[str, Any]) -> BaseModel:
        return self.options_model().model_validate(options)

    def check_files(self, config: BaseModel) -> tuple[str, str] | None:
        """(key, message) for an option naming a file that is not there."""
        check = getattr(config, "missing_file", None)
        return check() if callable(check) else None

    def run(self, inp: StepInput) -> StepOutput:
        return _resolve(self.execute)(inp)  # type: ignore[no-any-return]


def _resolve(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


# --------------------------------------------------------------------------- options wrappers


class PullOptions(BaseModel):
    """`pull` takes no options: it builds kokoro-fp32 and kokoro-int8-export offline."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ShapesOptions(BaseModel):
    """`shapes`: the buckets of `kokoro-opt shapes bind`; the rest is static_shapes.Config.
    With `window_frames` it binds the back graphs of the run's split folder to one window size
    instead (`kokoro-opt shapes bind SPLIT_DIR --window-frames N`)."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[int] = Field(default_factory=lambda: [32, 64, 128, 256, 512], min_length=1)
    length_mask: Literal["auto", "on", "off"] = "auto"
    simplify: bool = True
    window_frames: int | None = None
    overlap: int = Field(default=1, ge=0, le=64)

    @field_validator("tokens")
    @classmethod
    def _each_bucket(cls, value: list[int]) -> list[int]:
        for t in value:
            cls.bucket_config_for(t, "auto", True)
        return sorted(set(value))

    @field_validator("window_frames")
    @classmethod
    def _window(cls, value: int | None) -> int | None:
        from kokoro_opt.passes.static_window import MAX_FRAMES

        if value is not None and not 1 <= value <= MAX_FRAMES:
            raise ValueError(f"a window holds 1 to {MAX_FRAMES} frames, got {value}")
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> ShapesOptions:
        if self.window_frames is not None and self.model_fields_set & {"tokens", "length_mask"}:
            raise ValueError(
                "window_frames binds the split folder's back graphs; tokens and length_mask "
                "bind a whole model: use two shapes steps"
            )
        return self

    @staticmethod
    def bucket_config_for(tokens: int, length_mask: str, simplify: bool) -> BaseModel:
        from kokoro_opt.passes import static_shapes

        try:
            return static_shapes.Config(tokens=tokens, length_mask=length_mask, simplify=simplify)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise ValueError(f"bucket {tokens}: {first['msg']} (tokens go from 3 to 512)") from None

    def bucket_configs(self) -> list[BaseModel]:
        return [self.bucket_config_for(t, self.length_mask, self.simplify) for t in self.tokens]


class GateOptions(BaseModel):
    """`gate`: rules (a shipped name or a YAML file) and an optional baseline report."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rules: str = Field(default="default", min_length=1)
    baseline: str | None = None
    junit: bool = True

    def missing_file(self) -> tuple[str, str] | None:
        from kokoro_opt.errors import GateRulesError
        from kokoro_opt.gates import resolve_rules

        try:
            resolve_rules(self.rules)
        except GateRulesError as exc:
            return "rules", str(exc).rstrip(".")
        if self.baseline is not None and not Path(self.baseline).exists():
            return "baseline", (
                f"baseline report '{self.baseline}' does not exist; give an earlier report.json "
                "or run folder (relative to the recipe)"
            )
        return None


# --------------------------------------------------------------------------- step functions


def run_pull(inp: StepInput) -> StepOutput:
    """Build kokoro-fp32 and kokoro-int8-export in the cache (offline; quick when present)."""
    from kokoro_opt.store import ensure_default_models

    paths = ensure_default_models(progress=inp.ctx.progress)
    return StepOutput(summary={"models": {name: str(path) for name, path in paths.items()}})


def run_transform(
    module_name: str, *, run_options: dict[str, Any] | None = None
) -> Callable[[StepInput], StepOutput]:
    """A model step: the pass module's `run` through `apply_pass` (as its CLI command)."""

    def execute(inp: StepInput) -> StepOutput:
        from kokoro_opt.recipe.artifacts import apply_pass

        if inp.model is None:
            raise RuntimeError("a model step ran without an input model")
        module = importlib.import_module(module_name)
        out = inp.staging / "model.onnx"
        manifest = apply_pass(
            module,
            inp.step.config,
            inp.model.path,
            out,
            ctx=inp.ctx,
            command=f"run {inp.recipe.name} ({inp.step.id})",
            source_sha256=inp.model.sha256,
            run_options=run_options,
        )
        details = manifest["details"]
        summary: dict[str, Any] = {
            "bytes_before": manifest["input_bytes"],
            "bytes_after": manifest["output_bytes"],
        }
        for key in ("nodes_before", "nodes_after", "quantized", "warnings", "unmatched_patterns"):
            if key in details:
                summary[key] = details[key]
        return StepOutput(model="model.onnx", summary=summary)

    return execute


def run_optimize(inp: StepInput) -> StepOutput:
    return run_transform("kokoro_opt.passes.optimize")(inp)


def run_quantize(inp: StepInput) -> StepOutput:
    return run_transform("kokoro_opt.passes.quantize_static")(inp)


def run_int4(inp: StepInput) -> StepOutput:
    return run_transform("kokoro_opt.passes.int4")(inp)


def run_shapes(inp: StepInput) -> StepOutput:
    """One static model per bucket plus the buckets.json index (as `kokoro-opt shapes bind`)."""
    from kokoro_opt.passes import static_shapes
    from kokoro_opt.recipe.artifacts import apply_pass
    from kokoro_opt.runtime.buckets import Bucket, write_index

    options: ShapesOptions = inp.step.config  # type: ignore[assignment]
    if options.window_frames is not None:
        return _bind_window(inp, options, options.window_frames)
    if inp.model is None:
        raise RuntimeError("shapes ran without an input model")
    folder = inp.staging / "buckets"
    folder.mkdir(parents=True, exist_ok=True)
    made: list[Bucket] = []
    rows = []
    configs = options.bucket_configs()
    for i, config in enumerate(configs):
        inp.ctx.report("binding buckets", i, len(configs))
        out = folder / f"model.t{config.tokens}.onnx"  # type: ignore[attr-defined]
        manifest = apply_pass(
            static_shapes,
            config,
            inp.model.path,
            out,
            ctx=inp.ctx,
            command=f"run {inp.recipe.name} ({inp.step.id})",
            source_sha256=inp.model.sha256,
        )
        masked = bool(manifest["details"]["length_mask"]["applied"])
        made.append(Bucket(config.tokens, out, masked))  # type: ignore[attr-defined]
        rows.append({"tokens": config.tokens, "bytes": manifest["output_bytes"], "mask": masked})  # type: ignore[attr-defined]
    inp.ctx.report("binding buckets", len(configs), len(configs))
    write_index(folder, made, source=inp.model.label, source_sha256=inp.model.sha256)
    return StepOutput(buckets="buckets", summary={"buckets": rows})


def _bind_window(inp: StepInput, options: ShapesOptions, frames: int) -> StepOutput:
    """The run's split folder with its back graphs bound to `frames`-frame windows."""
    from kokoro_opt.passes import static_window

    if inp.split is None:
        raise RuntimeError("shapes with window_frames ran before a split step")
    result = static_window.bind_split(
        inp.split.path,
        inp.staging / "split",
        frames=frames,
        overlap=options.overlap,
        simplify=options.simplify,
        ctx=inp.ctx,
    )
    graphs = {
        name: {
            "span": d["span"],
            "static_tensors": d["static_tensors"],
            "tensors": d["tensors"],
            "identical": (d.get("check") or {}).get("identical"),
            "max_abs_diff": (d.get("check") or {}).get("max_abs_diff"),
        }
        for name, d in result.graphs.items()
    }
    return StepOutput(buckets="split", summary={"window": result.window, "graphs": graphs})


def run_split(inp: StepInput) -> StepOutput:
    """The split folder (front, back, decoder, generator, split.json), as `kokoro-opt split`."""
    from kokoro_opt.graph.io import load_model
    from kokoro_opt.passes import split

    if inp.model is None:
        raise RuntimeError("split ran without an input model")
    config: split.Config = inp.step.config  # type: ignore[assignment]
    models = split.split(load_model(inp.model.path), config, inp.ctx)
    models.meta["source"] = {"path": inp.model.label, "sha256": inp.model.sha256}
    split.save(models, inp.staging / "split")
    summary = {k: models.meta[k] for k in ("samples_per_frame", "receptive_field_frames")}
    return StepOutput(buckets="split", summary={**summary, "files": sorted(models.files())})


def run_gate(inp: StepInput) -> StepOutput:
    """`kokoro-opt gate` on the run's evidence report."""
    from kokoro_opt.gates import evaluate, junit_xml, load_rules, resolve_rules
    from kokoro_opt.recipe.artifacts import write_json_atomic
    from kokoro_opt.report.files import write_text_atomic
    from kokoro_opt.report.schema import REPORT_FILE, load_report

    options: GateOptions = inp.step.config  # type: ignore[assignment]
    if inp.evidence is None:
        raise RuntimeError("gate ran before any evidence was written")
    rules_path = resolve_rules(options.rules)
    rules = load_rules(rules_path)
    report = load_report(inp.evidence, role="report")
    baseline = None
    if options.baseline is not None:
        path = Path(options.baseline)
        baseline = load_report(path / REPORT_FILE if path.is_dir() else path, role="baseline")
    result = evaluate(report, rules, baseline=baseline)
    data = {"rules_file": str(rules_path), "baseline": options.baseline, **result.to_dict()}
    write_json_atomic(inp.staging / "gate.json", data)
    if options.junit:
        write_text_atomic(inp.staging / "gate-junit.xml", junit_xml(result))
    summary = {"passed": result.passed, "rules": len(result.outcomes), "failed": []}
    summary["failed"] = [
        {"rule": o.label, "observed": o.observed, "limit": o.limit} for o in result.failures
    ]
    return StepOutput(passed=result.passed, summary=summary)


# --------------------------------------------------------------------------- the registry

_ARTIFACTS = "kokoro_opt.recipe.artifacts"
_RUNTIME_DATA = ("data/calibration", "data/vocab.json")


def _code(*modules: str, data: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What a step's cache key fingerprints: its modules (with their imports) and data."""
    return (*modules, _ARTIFACTS, *data)


STEP_KINDS: dict[str, StepKind] = {
    kind.name: kind
    for kind in (
        StepKind(
            "pull",
            "pull",
            "Build kokoro-fp32 and kokoro-int8-export in the model cache, offline.",
            "kokoro-opt model pull",
            PullOptions,
            run_pull,
            cached=False,
        ),
        StepKind(
            "optimize",
            "transform",
            "Graph optimization chain (simplify, fusions, rewrites, ORT level, portable).",
            "kokoro-opt optimize",
            "kokoro_opt.passes.optimize:Config",
            run_optimize,
            code=_code("kokoro_opt.passes.optimize"),
        ),
        StepKind(
            "quantize",
            "transform",
            "Static INT8 (QDQ), per-channel by default, calibrated on phonemized text.",
            "kokoro-opt quantize",
            "kokoro_opt.passes.quantize_static:Config",
            run_quantize,
            code=_code("kokoro_opt.passes.quantize_static", data=_RUNTIME_DATA),
            needs_float=True,
            quantizes=True,
        ),
        StepKind(
            "pin",
            "transform",
            "Hybrid INT8 with the most sensitive layer groups kept in float.",
            "kokoro-opt pin",
            "kokoro_opt.passes.pin:Config",
            "kokoro_opt.recipe.steps:run_pin",
            code=_code("kokoro_opt.passes.pin", data=_RUNTIME_DATA),
            needs_float=True,
            quantizes=True,
        ),
        StepKind(
            "int4",
            "transform",
            "4-bit weights (MatMulNBits; int4 DequantizeLinear for Conv and LSTM).",
            "kokoro-opt int4",
            "kokoro_opt.passes.int4:Config",
            run_int4,
            code=_code("kokoro_opt.passes.int4", data=_RUNTIME_DATA),
            needs_float=True,
            quantizes=True,
        ),
        StepKind(
            "fp16",
            "transform",
            "FP16 weights and activations, with the ops that must stay FP32 blocked.",
            "kokoro-opt fp16",
            "kokoro_opt.passes.fp16:Config",
            "kokoro_opt.recipe.steps:run_fp16",
            code=_code("kokoro_opt.passes.fp16"),
            needs_float=True,
            quantizes=True,
        ),
        StepKind(
            "shapes",
            "buckets",
            "One static-shape model per token bucket, plus buckets.json for the runtime.",
            "kokoro-opt shapes bind",
            ShapesOptions,
            run_shapes,
            code=_code(
                "kokoro_opt.passes.static_shapes",
                "kokoro_opt.passes.static_window",
                "kokoro_opt.runtime.buckets",
            ),
        ),
        StepKind(
            "split",
            "buckets",
            "Cut the model at the alignment into a front and a windowable back (split.json).",
            "kokoro-opt split",
            "kokoro_opt.passes.split:Config",
            run_split,
            code=_code("kokoro_opt.passes.split"),
        ),
        StepKind(
            "eval",
            "evidence",
            "Fidelity against the reference: ASR WER/CER, log-mel, MCD, duration, F0.",
            "kokoro-opt eval",
            "kokoro_opt.recipe.evidence:EvalOptions",
            "kokoro_opt.recipe.evidence:run_eval",
            code=_code("kokoro_opt.recipe.evidence", data=_RUNTIME_DATA),
            requires=("kokoro_opt.bench.evaluate", "kokoro_opt.bench.reports"),
        ),
        StepKind(
            "bench",
            "evidence",
            "Speed against the reference, interleaved: latency, RTF, TTFA, RSS, CPU time.",
            "kokoro-opt bench",
            "kokoro_opt.recipe.evidence:BenchOptions",
            "kokoro_opt.recipe.evidence:run_bench",
            code=_code("kokoro_opt.recipe.evidence", data=_RUNTIME_DATA),
            requires=("kokoro_opt.bench.reports",),
        ),
        StepKind(
            "gate",
            "gate",
            "Check the evidence report against rules (exit 1 when a rule fails).",
            "kokoro-opt gate",
            GateOptions,
            run_gate,
            cached=False,
        ),
    )
}


def run_pin(inp: StepInput) -> StepOutput:
    """The pin pass on the calibration cache `kokoro-opt pin apply` uses (calibrated once)."""
    from kokoro_opt.recipe.artifacts import pin_ranges

    if inp.model is None:
        raise RuntimeError("pin ran without an input model")
    ranges, _ = pin_ranges(inp.model.path, inp.step.config, inp.ctx, source_sha256=inp.model.sha256)
    return run_transform("kokoro_opt.passes.pin", run_options={"ranges_path": ranges})(inp)


def run_fp16(inp: StepInput) -> StepOutput:
    return run_transform("kokoro_opt.passes.fp16")(inp)
