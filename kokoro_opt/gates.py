"""CI gates: pure threshold logic over an evidence report and an optional baseline report.

A rules file (YAML, `version: 1`) names the model entry the rules apply to and a list of rules.
Each rule names one metric and exactly one kind:

- absolute: ``max``, ``min`` (the observed value itself);
- relative, against the baseline report (default) or, with ``against: reference``, against the
  reference model of the same report: ``max_increase`` / ``max_decrease`` (absolute units),
  ``max_increase_pct`` / ``max_decrease_pct`` (percent of the compared value), ``min_ratio`` /
  ``max_ratio`` (observed / compared value).

Every relative rule becomes an absolute bound (e.g. ``max_increase: 0.01`` over a baseline WER
of 0.062 is ``max 0.072``), so each outcome reports the observed value, the effective limit and
the value it was derived from. A metric is a dotted path into a model entry of the report
(`kokoro_opt.report.schema.metric_fields`, e.g. ``quality.wer``, ``speed.ttfa_ms.p95``) or a
computed one (`COMPUTED_METRICS`: ``speedup``, ``size_mb``).

Bad input is an error, never a failed or passed rule: an unknown metric or kind, malformed YAML
(with its line), a report or baseline missing the metric (`ReportError`).
"""

from __future__ import annotations

import difflib
import math
import xml.etree.ElementTree as ET
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kokoro_opt.errors import GateRulesError, ReportError
from kokoro_opt.report.schema import ModelEntry, Report, metric_fields

GATES_VERSION = 1

COMPUTED_METRICS: dict[str, str] = {
    "speedup": "Speedup of the model vs the reference model of the same report (interleaved "
    "bench runs; > 1 is faster).",
    "size_mb": "Model size in MB (size_bytes / 1e6).",
}

ABSOLUTE_KINDS = ("max", "min")
RELATIVE_KINDS = (
    "max_increase",
    "max_decrease",
    "max_increase_pct",
    "max_decrease_pct",
    "min_ratio",
    "max_ratio",
)
RULE_KINDS = ABSOLUTE_KINDS + RELATIVE_KINDS

Against = Literal["baseline", "reference"]
Bound = Literal["max", "min"]


def known_metrics() -> dict[str, str]:
    """Every metric a rule can name -> what it means."""
    return {**COMPUTED_METRICS, **metric_fields()}


# --------------------------------------------------------------------------- rules file


class Rule(BaseModel):
    """One rule: a metric and exactly one kind with its threshold."""

    model_config = ConfigDict(extra="forbid", strict=True)

    metric: str
    name: str | None = Field(default=None, description="A label for tables and JUnit.")
    model: str | None = Field(default=None, description="Overrides the file's `model`.")
    against: Against | None = None
    max: float | None = None
    min: float | None = None
    max_increase: float | None = Field(default=None, ge=0)
    max_decrease: float | None = Field(default=None, ge=0)
    max_increase_pct: float | None = Field(default=None, ge=0)
    max_decrease_pct: float | None = Field(default=None, ge=0, le=100)
    min_ratio: float | None = Field(default=None, gt=0)
    max_ratio: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        metrics = known_metrics()
        if self.metric not in metrics:
            close = difflib.get_close_matches(self.metric, list(metrics), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"unknown metric '{self.metric}'{hint}; known metrics: {', '.join(metrics)}"
            )
        given = [k for k in RULE_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            what = "no rule kind" if not given else f"{len(given)} rule kinds ({', '.join(given)})"
            raise ValueError(
                f"rule for '{self.metric}' has {what}; give exactly one of "
                f"{', '.join(RULE_KINDS)} (write two rules for two limits)"
            )
        for kind in given:
            if not math.isfinite(getattr(self, kind)):
                raise ValueError(f"{kind} must be a finite number")
        if self.against is not None and given[0] in ABSOLUTE_KINDS:
            raise ValueError(
                f"'against' only applies to relative kinds ({', '.join(RELATIVE_KINDS)}); "
                f"'{given[0]}' is absolute, so remove 'against'"
            )
        if self.metric == "speedup" and self.against == "reference":
            raise ValueError(
                "speedup is already measured against the reference model; use min/max, or "
                "compare with the baseline"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in RULE_KINDS if getattr(self, k) is not None)

    @property
    def threshold(self) -> float:
        return float(getattr(self, self.kind))

    @property
    def compared_with(self) -> Against | None:
        """What a relative rule compares with (None for absolute rules)."""
        if self.kind in ABSOLUTE_KINDS:
            return None
        return self.against or "baseline"

    def describe(self) -> str:
        """'max_increase 0.01 vs baseline', 'max 0.15' ..."""
        text = f"{self.kind} {format_value(self.threshold)}"
        return text + (f" vs {self.compared_with}" if self.compared_with else "")


class GateRules(BaseModel):
    """A whole rules file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal[1]
    model: str | None = Field(
        default=None, description="The report's model entry the rules apply to; default: last."
    )
    reference: str | None = Field(
        default=None,
        description="The reference model (speedup, against: reference); default: "
        "the report's first model.",
    )
    baseline_model: str | None = Field(
        default=None,
        description="The baseline's model entry to compare with; default: the "
        "same name as `model`.",
    )
    rules: list[Rule] = Field(min_length=1)

    @property
    def needs_baseline(self) -> bool:
        return any(r.compared_with == "baseline" for r in self.rules)


def shipped_rules() -> dict[str, Path]:
    """Rules files shipped with kokoro-opt (package data), by name: default, regression ..."""
    from importlib.resources import files

    folder = Path(str(files("kokoro_opt") / "data" / "gates"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_rules(name_or_path: str | Path) -> Path:
    """A rules file path: an existing file, or the name of a shipped rules file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_rules()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise GateRulesError(
        f"Gate rules '{name_or_path}' is neither a file nor a shipped rules name; give a YAML "
        f"file or one of: {', '.join(shipped) or 'none'}."
    )


def load_rules(path: str | Path) -> GateRules:
    """Read and validate a gates.yaml (errors name the file, line and key)."""
    path = Path(path)
    if not path.is_file():
        raise GateRulesError(
            f"Gate rules file '{path}' does not exist; give a YAML file such as "
            "recipes/gates/default.yaml."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GateRulesError(f"Cannot read gate rules file '{path}': {exc}.") from None
    return parse_rules(text, source=str(path))


def parse_rules(text: str, *, source: str = "gates.yaml") -> GateRules:
    """Validate rules from YAML text; `source` names it in errors."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(str(exc.problem or exc.context or "malformed YAML").split())
        raise GateRulesError(
            f"{where}: malformed YAML ({problem}); fix the syntax (indentation, colons, quotes)."
        ) from None
    except yaml.YAMLError as exc:
        raise GateRulesError(f"{source}: malformed YAML ({exc}).") from None
    if root is not None:
        _reject_duplicate_keys(root, source)
    if not isinstance(data, dict):
        raise GateRulesError(
            f"{source}: a gate rules file must be a mapping with 'version: {GATES_VERSION}' and "
            "'rules:'; see docs/ci-gate.md."
        )
    if "version" not in data:
        raise GateRulesError(f"{source}: missing 'version'; add 'version: {GATES_VERSION}'.")
    if data["version"] != GATES_VERSION:
        raise GateRulesError(
            f"{source}: gate rules version {data['version']!r} is not supported; this "
            f"kokoro-opt reads version {GATES_VERSION}."
        )
    try:
        return GateRules.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # report the problem that comes first in the file
        err = min(errors, key=lambda e: _line_of(root, tuple(e["loc"])) or 0)
        loc = tuple(err["loc"])
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
        key = _dotted(loc)
        if err["type"] == "extra_forbidden":
            allowed = Rule.model_fields if loc[:1] == ("rules",) else GateRules.model_fields
            msg = f"unknown key; allowed keys: {', '.join(allowed)}"
        elif err["type"] == "missing":
            msg = "missing required key"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            if isinstance(err.get("input"), str) and _is_number(err["input"]):
                msg += (
                    f" (YAML read {err['input']!r} as text: write numbers with a dot, e.g. "
                    "0.01 or 1.0e-2)"
                )
        more = len(errors) - 1
        tail = f" (and {more} more problems)" if more > 0 else ""
        text = f"{where}: {key}: {msg}{tail}" if key else f"{where}: {msg}{tail}"
        raise GateRulesError(text) from None


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class RuleOutcome:
    """One rule checked against the report."""

    label: str
    metric: str
    rule: str
    model: str
    observed: float
    limit: float
    bound: Bound
    baseline: float | None
    against: Against | None
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    """Every rule's outcome; the gate passes when all rules pass."""

    outcomes: tuple[RuleOutcome, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def failures(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if not o.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rules": len(self.outcomes),
            "failed": len(self.failures),
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


def evaluate(report: Report, rules: GateRules, *, baseline: Report | None = None) -> GateResult:
    """Check every rule. Raises `GateRulesError` when a rule needs a baseline and none is given,
    and `ReportError` (listing every problem) when the report or baseline lacks a metric."""
    if rules.needs_baseline and baseline is None:
        _no_baseline(next(r for r in rules.rules if r.compared_with == "baseline"))
    outcomes: list[RuleOutcome] = []
    problems: list[str] = []
    for n, rule in enumerate(rules.rules, start=1):
        try:
            outcomes.append(_check(rule, rules, report, baseline))
        except ReportError as exc:
            problems.append(f"rule {n} ({rule.metric} {rule.describe()}): {exc}")
    if problems:
        count = f"{len(problems)} rule{'s' if len(problems) > 1 else ''}"
        raise ReportError(f"Cannot check {count}: " + " | ".join(problems))
    return GateResult(tuple(outcomes))


@dataclass(frozen=True)
class ModelBinding:
    """Whether a model file is one the report's rules judged (`kokoro-opt gate --model`)."""

    file: str
    sha256: str
    matches: str | None
    """The judged model entry with this sha256, if any."""
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bind_model(report: Report, file: str, sha256: str, *, judged: Collection[str]) -> ModelBinding:
    """Check that the model file `file` (with `sha256`) is a model the rules judged in `report`
    (by the sha256 every report records for each model it measured)."""
    same = [m.name for m in report.models if m.sha256 == sha256]
    hit = next((name for name in same if name in judged), None)
    names = ", ".join(sorted(judged)) or "no model"
    if hit is not None:
        message = f"{file} is the model '{hit}' the report measured (sha256 {sha256[:12]})."
    elif same:
        message = (
            f"{file} is the report's model '{same[0]}', but the rules judged {names}: the gate "
            "says nothing about this file."
        )
    else:
        measured = ", ".join(f"{m.name} {m.sha256[:12]}" for m in report.models)
        message = (
            f"{file} (sha256 {sha256[:12]}) is not a model this report measured ({measured}); "
            "measure this file (kokoro-opt eval/bench) and gate that report."
        )
    return ModelBinding(file, sha256, hit, hit is not None, message)


def _check(rule: Rule, rules: GateRules, report: Report, baseline: Report | None) -> RuleOutcome:
    model = rule.model or rules.model or report.models[-1].name
    reference = rules.reference or report.reference
    report.model(model)  # clear error naming the report's models
    report.model(reference)
    observed = metric_value(report, model, rule.metric, reference=reference, role="report")
    compared: float | None = None
    against = rule.compared_with
    if against == "reference":
        compared = metric_value(report, reference, rule.metric, reference=reference, role="report")
    elif against == "baseline":
        if baseline is None:
            _no_baseline(rule)
        base_model = rules.baseline_model or model
        base_ref = rules.reference if rules.reference else baseline.reference
        compared = metric_value(
            baseline, base_model, rule.metric, reference=base_ref, role="baseline"
        )
    limit, bound, derivation = _limit(rule, compared)
    tol = 1e-9 * max(1.0, abs(limit))
    passed = observed <= limit + tol if bound == "max" else observed >= limit - tol
    op = ("<=" if passed else ">") if bound == "max" else (">=" if passed else "<")
    message = f"{model} {rule.metric} = {format_value(observed)} {op} {format_value(limit)}"
    if derivation:
        message += f" ({derivation})"
    return RuleOutcome(
        label=rule.name or f"{rule.metric} {rule.describe()}",
        metric=rule.metric,
        rule=rule.describe(),
        model=model,
        observed=observed,
        limit=limit,
        bound=bound,
        baseline=compared,
        against=against,
        passed=passed,
        message=message,
    )


def _limit(rule: Rule, compared: float | None) -> tuple[float, Bound, str]:
    """The rule as an absolute bound: (limit, 'max'|'min', how it was derived)."""
    kind, v = rule.kind, rule.threshold
    if kind in ABSOLUTE_KINDS:
        return v, kind, ""  # type: ignore[return-value]
    if compared is None:
        raise GateRulesError(f"Rule '{rule.metric} {rule.describe()}' has nothing to compare with.")
    what = f"{rule.compared_with} {format_value(compared)}"
    table: dict[str, tuple[float, Bound, str]] = {
        "max_increase": (compared + v, "max", f"{what} + {format_value(v)}"),
        "max_decrease": (compared - v, "min", f"{what} - {format_value(v)}"),
        "max_increase_pct": (compared * (1 + v / 100), "max", f"{what} + {format_value(v)} %"),
        "max_decrease_pct": (compared * (1 - v / 100), "min", f"{what} - {format_value(v)} %"),
        "min_ratio": (compared * v, "min", f"{what} x {format_value(v)}"),
        "max_ratio": (compared * v, "max", f"{what} x {format_value(v)}"),
    }
    return table[kind]


def metric_value(report: Report, model: str, metric: str, *, reference: str, role: str) -> float:
    """The value of `metric` for `model` in `report`; ReportError saying what is missing."""
    entry = report.model(model, role=role)
    if metric == "speedup":
        if model == reference:
            return 1.0
        comp = report.comparison(model, reference)
        if comp is None:
            raise ReportError(
                f"the {role} has no speedup of '{model}' vs '{reference}' (comparisons come from "
                f"kokoro-opt bench run with both models, the reference first)"
            )
        return comp.speedup
    if metric == "size_mb":
        return entry.size_bytes / 1e6
    return _dotted_value(entry, metric, role=role)


def _dotted_value(entry: ModelEntry, metric: str, *, role: str) -> float:
    value: Any = entry
    walked: list[str] = []
    for part in metric.split("."):
        walked.append(part)
        value = getattr(value, part, None)
        if value is None:
            path = ".".join(walked)
            group = walked[0]
            hint = {
                "speed": "run kokoro-opt bench",
                "quality": "run kokoro-opt eval",
            }.get(group, "measure it")
            what = f"no '{path}' group" if len(walked) < len(metric.split(".")) else "no value"
            raise ReportError(
                f"the {role}'s model '{entry.name}' has {what} for {metric} ({hint} to add it)"
            )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"the {role}'s {metric} of '{entry.name}' is not a number")
    return float(value)


def _no_baseline(rule: Rule) -> NoReturn:
    raise GateRulesError(
        f"Rule '{rule.metric} {rule.describe()}' compares with a baseline report, but none was "
        "given; pass --baseline BASELINE, or use 'against: reference' or an absolute max/min."
    )


# --------------------------------------------------------------------------- JUnit


def junit_xml(
    result: GateResult, *, suite: str = "kokoro-opt gate", binding: ModelBinding | None = None
) -> str:
    """The outcomes as JUnit XML (one testcase per rule, and one for `binding` when given;
    failures carry the message)."""
    suites = ET.Element("testsuites", name=suite)
    failed = len(result.failures) + (binding is not None and not binding.passed)
    node = ET.SubElement(
        suites,
        "testsuite",
        name=suite,
        tests=str(len(result.outcomes) + (binding is not None)),
        failures=str(failed),
        errors="0",
        skipped="0",
    )
    for o in result.outcomes:
        case = ET.SubElement(node, "testcase", classname=f"gate.{o.model}", name=o.label)
        if not o.passed:
            failure = ET.SubElement(case, "failure", message=o.message, type="GateFailed")
            failure.text = o.message
        out = ET.SubElement(case, "system-out")
        out.text = o.message
    if binding is not None:
        case = ET.SubElement(node, "testcase", classname="gate.model", name="model file")
        if not binding.passed:
            failure = ET.SubElement(case, "failure", message=binding.message, type="GateFailed")
            failure.text = binding.message
        ET.SubElement(case, "system-out").text = binding.message
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


# --------------------------------------------------------------------------- helpers


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_value(value: float) -> str:
    if abs(value) >= 1e5 and float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-"):
            out += f".{part}" if out else part
    return out


def _line_of(root: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (the deepest one that exists)."""
    import yaml

    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if getattr(key, "value", None) == part:
                    nxt = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def _reject_duplicate_keys(node: Any, source: str) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = getattr(key, "value", None)
            if isinstance(name, str):
                if name in seen:
                    raise GateRulesError(
                        f"{source}:{key.start_mark.line + 1}: key '{name}' appears twice in one "
                        "mapping; keep one (write a second rule for a second limit)."
                    )
                seen.add(name)
            _reject_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, source)
