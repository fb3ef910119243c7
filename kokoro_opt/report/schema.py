"""The evidence report: a versioned, strict JSON schema shared by bench, eval, pin, int4 and gate.

One `Report` holds one run: who made it and where (`run`), the models measured (`models`, each
with optional `speed` and `quality` metric groups), one row per (model, utterance)
(`utterances`), speed ratios against a reference measured interleaved (`comparisons`), an
optional speed-vs-fidelity curve (`tradeoff`) and free `notes`.

Rules every writer follows (reports/README.md explains them to readers):
- Times are milliseconds (`*_ms`) or seconds (`*_s`); sizes are bytes; RSS is MB (2**20 bytes).
- WER and CER are fractions (0.062 is 6.2 %), pooled over the corpus (total edits / total
  reference words or characters); per-utterance rows carry each utterance's own rates.
- Distances to the reference (`logmel_distance`, `mcd_db`, `f0_rmse_cents`) are means over
  utterances, each computed after DTW alignment; `duration_ratio` is this model's total audio
  seconds over the reference's.
- Latency and RTF statistics pool every measured (run, text) pair; `speedup` is the geometric
  mean over texts of (reference median latency / model median latency), runs interleaved.

Values are checked strictly: numbers must be numbers (not strings), counts must be Python ints
(write `int(n)` for a numpy integer; numpy floats are accepted and stored as floats), NaN and
infinity are refused. Unknown keys are rejected everywhere, so a typo in a writer fails at once
instead of silently dropping a number. A report with another `schema_version` is refused by
`load_report` with a `SchemaVersionError` that names both versions. Bump `SCHEMA_VERSION` on any
change that an old reader could misread (renamed or removed field, changed unit or meaning);
adding an optional field is also a bump, because old readers reject unknown keys.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from kokoro_opt.errors import ReportError, SchemaVersionError
from kokoro_opt.report.files import write_text_atomic

SCHEMA_VERSION = 1
REPORT_FILE = "report.json"

# Same values as kokoro_opt.graph.inspect.QUANT_STYLES (a test keeps them equal); repeated here
# so that reading a report does not import onnx.
QuantStyle = Literal["float", "dynamic-int8", "qdq-int8", "int4-matmulnbits", "fp16", "mixed"]
Provider = Literal["cpu", "cuda", "coreml"]

NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


# --------------------------------------------------------------------------- run metadata


class Host(_Strict):
    """The machine and runtime a run measured on."""

    cpu_model: str = Field(description="CPU model name, e.g. from /proc/cpuinfo.")
    cores: int = Field(ge=1, description="Logical CPUs visible to the process.")
    platform: str = Field(description="OS and architecture, e.g. Linux-6.1-x86_64.")
    python: str = Field(description="Python version.")
    onnxruntime_version: str | None = Field(description="onnxruntime version; None if absent.")
    provider: Provider = Field(description="Execution provider the models ran on.")
    threads: int | None = Field(
        default=None, ge=1, description="ORT intra-op threads; None means ORT's default."
    )


class RunMeta(_Strict):
    """Who made the report, when, how, and on what."""

    created: AwareDatetime = Field(description="When the run started (timezone-aware).")
    kokoro_opt_version: str
    command: list[str] = Field(description="The command line (argv) that produced the run.")
    host: Host
    title: str | None = Field(default=None, description="A short human title for the run.")
    voice: str | None = None
    lang: str | None = None
    speed: PosFloat | None = Field(default=None, description="Speaking rate used.")
    texts: str | None = Field(default=None, description="The texts file or corpus split used.")
    asr_model: str | None = Field(default=None, description="The ASR used for WER/CER.")
    settings: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict,
        description="Other settings recorded for provenance (never read by gates).",
    )


# --------------------------------------------------------------------------- metric groups


class LatencyStats(_Strict):
    """Synthesis latency of one whole utterance, in ms, pooled over every (run, text)."""

    median: NonNegFloat = Field(description="Median latency per utterance (ms).")
    p90: NonNegFloat = Field(description="90th percentile latency per utterance (ms).")
    mean: NonNegFloat = Field(description="Mean latency per utterance (ms).")

    @model_validator(mode="after")
    def _ordered(self) -> LatencyStats:
        _check_order(self.median, self.p90, "latency_ms.median", "latency_ms.p90")
        return self


class RtfStats(_Strict):
    """Real-time factor = synthesis seconds / audio seconds (lower is faster; < 1 is faster
    than real time), pooled over every (run, text)."""

    median: NonNegFloat = Field(description="Median real-time factor.")
    p90: NonNegFloat = Field(description="90th percentile real-time factor.")
    mean: NonNegFloat | None = Field(default=None, description="Mean real-time factor.")

    @model_validator(mode="after")
    def _ordered(self) -> RtfStats:
        _check_order(self.median, self.p90, "rtf.median", "rtf.p90")
        return self


class TtfaStats(_Strict):
    """Time to first audio: from the call to the first chunk of the streaming generator (ms)."""

    p50: NonNegFloat = Field(description="Median time to first audio (ms).")
    p95: NonNegFloat = Field(description="95th percentile time to first audio (ms).")

    @model_validator(mode="after")
    def _ordered(self) -> TtfaStats:
        _check_order(self.p50, self.p95, "ttfa_ms.p50", "ttfa_ms.p95")
        return self


class ConcurrencyStats(_Strict):
    """N parallel streams on one session, each speaking every text once."""

    streams: int = Field(ge=1, description="Number of parallel streams.")
    wall_s: NonNegFloat = Field(description="Wall time until every stream finished (s).")
    throughput_audio_s_per_s: NonNegFloat | None = Field(
        default=None, description="Seconds of audio produced per wall second, all streams."
    )
    rtf_median: NonNegFloat | None = Field(
        default=None, description="Median over streams of stream wall time / its audio time."
    )
    rtf_max: NonNegFloat | None = Field(
        default=None, description="Slowest stream's wall time / its audio time."
    )
    errors: list[str] = Field(default_factory=list, description="Failed streams' errors.")


class SpeedMetrics(_Strict):
    """What `kokoro-opt bench` measures for one model."""

    load_s: NonNegFloat = Field(description="Seconds to create the inference session.")
    latency_ms: LatencyStats
    rtf: RtfStats
    ttfa_ms: TtfaStats
    cpu_time_s: NonNegFloat | None = Field(
        default=None, description="Median process CPU seconds per utterance (all threads)."
    )
    peak_rss_mb: NonNegFloat | None = Field(
        default=None,
        description="Peak resident memory (MB) of a fresh process that loads the model and "
        "speaks one text.",
    )
    audio_s: NonNegFloat | None = Field(
        default=None, description="Seconds of audio in one pass over the texts."
    )
    runs: int = Field(ge=1, description="Measured runs over the texts.")
    warmup: int = Field(ge=0, description="Unmeasured warm-up runs before them.")
    concurrency: ConcurrencyStats | None = None


class QualityMetrics(_Strict):
    """What `kokoro-opt eval` measures for one model."""

    n_utterances: int = Field(ge=1, description="Utterances evaluated.")
    reference: str | None = Field(
        default=None,
        description="The model the distances are measured against; None for that model itself.",
    )
    wer: NonNegFloat | None = Field(
        default=None, description="Word error rate of the ASR on this audio (fraction, pooled)."
    )
    cer: NonNegFloat | None = Field(
        default=None, description="Character error rate (fraction, pooled)."
    )
    logmel_distance: NonNegFloat | None = Field(
        default=None,
        description="Mean RMS log-mel difference to the reference after DTW (nepers; 0 = same).",
    )
    mcd_db: NonNegFloat | None = Field(
        default=None, description="Mel-cepstral distortion to the reference after DTW (dB)."
    )
    duration_ratio: PosFloat | None = Field(
        default=None, description="Total audio seconds / the reference's total audio seconds."
    )
    f0_rmse_cents: NonNegFloat | None = Field(
        default=None, description="RMS pitch error on frames voiced in both (cents)."
    )
    voicing_error: Fraction | None = Field(
        default=None, description="Fraction of aligned frames whose voicing differs."
    )
    asr_seconds: NonNegFloat | None = Field(
        default=None, description="Seconds the ASR took for this model's audio (its own speed)."
    )


class ModelEntry(_Strict):
    """One model measured in the run."""

    name: Name = Field(description="Unique name in the report, e.g. kokoro-int8.")
    path: str = Field(description="Where the model file was (as given).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the model file.")
    size_bytes: int = Field(ge=0, description="Size on disk in bytes (with external data).")
    quant_style: QuantStyle = Field(description="As detected by `kokoro-opt model inspect`.")
    speed: SpeedMetrics | None = None
    quality: QualityMetrics | None = None


# --------------------------------------------------------------------------- rows and sections


class UtteranceRow(_Strict):
    """One utterance on one model: its timings (bench) and/or its fidelity (eval)."""

    model: str = Field(description="The name of a model entry.")
    utterance_id: str = Field(min_length=1, description="Stable id, e.g. the line index.")
    text: str
    audio_s: NonNegFloat | None = Field(default=None, description="Seconds of audio produced.")
    latency_ms: list[NonNegFloat] = Field(
        default_factory=list, description="Latency of every measured run (ms)."
    )
    ttfa_ms: NonNegFloat | None = Field(
        default=None, description="Median time to first audio over runs (ms)."
    )
    wer: NonNegFloat | None = None
    cer: NonNegFloat | None = None
    logmel_distance: NonNegFloat | None = None
    mcd_db: NonNegFloat | None = None
    duration_ratio: PosFloat | None = None
    transcript: str | None = Field(default=None, description="What the ASR heard.")
    wav: str | None = Field(default=None, description="The WAV file, relative to the run folder.")


class Comparison(_Strict):
    """Speed of a model relative to a reference model, from interleaved runs."""

    model: str
    reference: str
    speedup: PosFloat = Field(
        description="Geometric mean over texts of reference median latency / model median "
        "latency (> 1 means faster than the reference)."
    )
    interleaved: bool = Field(default=True, description="Runs were interleaved A B A B.")
    n_texts: int = Field(ge=1, description="Texts the ratio is taken over.")


class TradeoffStep(_Strict):
    """One point of a speed-vs-fidelity search (a pinning step, an INT4 config ...)."""

    name: Name
    speed: PosFloat = Field(description="Speedup vs the reference (higher is faster).")
    fidelity: NonNegFloat = Field(
        description="Distance to the reference in the section's fidelity unit (lower is closer)."
    )
    wer: NonNegFloat | None = None
    logmel_distance: NonNegFloat | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    pinned: list[str] = Field(default_factory=list, description="Groups kept in float.")
    accepted: bool | None = Field(default=None, description="Whether it met the budget.")


class Tradeoff(_Strict):
    """A speed-vs-fidelity curve, steps in the order they were tried."""

    title: str
    speed_label: str = "speedup vs reference (x)"
    fidelity_label: str = "log-mel distance to reference"
    budget: str | None = Field(default=None, description="The quality budget, in words.")
    chosen: str | None = Field(default=None, description="The name of the step chosen.")
    steps: list[TradeoffStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> Tradeoff:
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tradeoff step names must be unique; repeated: {', '.join(dupes)}")
        if self.chosen is not None and self.chosen not in names:
            raise ValueError(f"tradeoff.chosen '{self.chosen}' is not a step name ({_list(names)})")
        return self


class Report(_Strict):
    """The whole report (see the module docstring)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    run: RunMeta
    models: list[ModelEntry] = Field(min_length=1)
    utterances: list[UtteranceRow] = Field(default_factory=list)
    comparisons: list[Comparison] = Field(default_factory=list)
    tradeoff: Tradeoff | None = None
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_references(self) -> Report:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        known = set(names)
        for m in self.models:
            if m.quality and m.quality.reference is not None and m.quality.reference not in known:
                raise ValueError(
                    f"model '{m.name}': quality.reference '{m.quality.reference}' is not a model "
                    f"in this report ({_list(names)})"
                )
        seen: set[tuple[str, str]] = set()
        for row in self.utterances:
            if row.model not in known:
                raise ValueError(
                    f"utterance '{row.utterance_id}' names model '{row.model}', which is not in "
                    f"models ({_list(names)})"
                )
            key = (row.model, row.utterance_id)
            if key in seen:
                raise ValueError(f"utterance '{row.utterance_id}' of '{row.model}' appears twice")
            seen.add(key)
        pairs: set[tuple[str, str]] = set()
        for c in self.comparisons:
            for role, name in (("model", c.model), ("reference", c.reference)):
                if name not in known:
                    raise ValueError(
                        f"comparison {role} '{name}' is not a model in this report ({_list(names)})"
                    )
            if (c.model, c.reference) in pairs:
                raise ValueError(f"comparison of '{c.model}' vs '{c.reference}' appears twice")
            pairs.add((c.model, c.reference))
        return self

    # ---- lookups used by renderers and gates

    @property
    def reference(self) -> str:
        """The reference model: the first model entry."""
        return self.models[0].name

    def model(self, name: str, *, role: str = "report") -> ModelEntry:
        """The model entry called `name`; ReportError listing the names when absent."""
        for m in self.models:
            if m.name == name:
                return m
        names = _list([m.name for m in self.models])
        raise ReportError(
            f"The {role} has no model named '{name}'; it has {names}. Use one of those names."
        )

    def comparison(self, model: str, reference: str | None = None) -> Comparison | None:
        """The comparison of `model` against `reference` (or against any model when None)."""
        for c in self.comparisons:
            if c.model == model and (reference is None or c.reference == reference):
                return c
        return None

    def rows(self, model: str) -> list[UtteranceRow]:
        """Per-utterance rows of one model, in report order."""
        return [r for r in self.utterances if r.model == model]


# --------------------------------------------------------------------------- gateable metrics


def metric_fields() -> dict[str, str]:
    """Every numeric leaf of `ModelEntry` as a dotted path -> its description.

    These are the metrics a gate rule can name (besides the computed ones in `kokoro_opt.gates`).
    """
    out: dict[str, str] = {}
    _walk_numeric(ModelEntry, "", out)
    return out


def _walk_numeric(model: type[BaseModel], prefix: str, out: dict[str, str]) -> None:
    for name, info in model.model_fields.items():
        kinds = _leaf_types(info.annotation)
        path = f"{prefix}{name}"
        sub = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if sub:
            _walk_numeric(sub[0], f"{path}.", out)
        elif kinds and all(k in (int, float, type(None)) for k in kinds) and bool not in kinds:
            desc = info.description or (model.__doc__ or "").strip().splitlines()[0]
            out[path] = desc


def _leaf_types(annotation: Any) -> list[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _leaf_types(get_args(annotation)[0])
    if origin is None:
        return [annotation]
    if origin is Literal or origin is list or origin is dict:
        return [origin]
    out: list[Any] = []
    for arg in get_args(annotation):
        out.extend(_leaf_types(arg))
    return out


# --------------------------------------------------------------------------- load and save


def load_report(path: str | Path, *, role: str = "report") -> Report:
    """Read and validate a report.json (or a run folder holding one).

    `role` ("report", "baseline") names the file in error messages. Raises `ReportError` for a
    missing, non-JSON or invalid file and `SchemaVersionError` for another schema version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILE
    if not path.is_file():
        raise ReportError(
            f"The {role} '{path}' does not exist; give a report.json or a run folder that holds "
            "one (bench and eval write them under reports/<run>/)."
        )
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ReportError(f"The {role} '{path}' is not UTF-8 text ({exc.reason}).") from None
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"The {role} '{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); re-create it with kokoro-opt bench/eval."
        ) from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise ReportError(
            f"The {role} '{path}' is not a kokoro-opt report: it has no 'schema_version' key. "
            "Give the report.json written by kokoro-opt bench, eval or run."
        )
    version = data["schema_version"]
    if version != SCHEMA_VERSION:
        hint = (
            "upgrade kokoro-opt to read it"
            if isinstance(version, int) and version > SCHEMA_VERSION
            else "re-create it with this kokoro-opt (kokoro-opt bench/eval)"
        )
        raise SchemaVersionError(
            f"The {role} '{path}' has report schema version {version!r}, but this kokoro-opt "
            f"reads schema version {SCHEMA_VERSION}; {hint}."
        )
    try:
        return Report.model_validate_json(text)
    except ValidationError as exc:
        raise ReportError(
            f"The {role} '{path}' does not match report schema version {SCHEMA_VERSION}: "
            f"{describe_validation_error(exc)}"
        ) from None


def save_report(report: Report, directory: str | Path) -> Path:
    """Write `report` to `directory`/report.json atomically and return that path."""
    return write_text_atomic(Path(directory) / REPORT_FILE, report_json(report))


def report_json(report: Report) -> str:
    """The report as the JSON text that `save_report` writes."""
    return report.model_dump_json(indent=2) + "\n"


def describe_validation_error(exc: ValidationError, *, limit: int = 3) -> str:
    """A pydantic error as one line: 'where: what; where: what (and N more problems)'."""
    parts: list[str] = []
    errors = exc.errors(include_url=False)
    for err in errors[:limit]:
        where = _loc(err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key (not in the schema; remove or rename it)")
        elif err["type"] == "missing":
            parts.append(f"{where}: missing required key")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
    more = len(errors) - limit
    return "; ".join(parts) + (f" (and {more} more problems)" if more > 0 else "")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-"):
            out += f".{part}" if out else part
    return out


def _check_order(low: float, high: float, low_name: str, high_name: str) -> None:
    if high < low and not math.isclose(high, low, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(f"{high_name} ({high}) is below {low_name} ({low})")


def _list(names: list[str]) -> str:
    return ", ".join(names) if names else "none"
