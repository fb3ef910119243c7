"""Gate rules: parsing with file/line errors, every rule kind at its boundary, missing data."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kokoro_opt.errors import GateRulesError, ReportError, SchemaVersionError
from kokoro_opt.gates import (
    RULE_KINDS,
    GateResult,
    evaluate,
    junit_xml,
    known_metrics,
    load_rules,
    metric_value,
    parse_rules,
    resolve_rules,
    shipped_rules,
)
from kokoro_opt.report.schema import Report, load_report, save_report
from tests.report_factory import Spec, build_report

FP32 = Spec("kokoro-fp32", rtf=0.20, size_bytes=325_600_000, wer=0.06, rss_mb=1450.0)
GOOD = Spec(
    "kokoro-int8",
    rtf=0.11,
    size_bytes=126_000_000,
    quant_style="qdq-int8",
    wer=0.06,
    logmel=0.25,
    rss_mb=780.0,
    ttfa_share=0.3,
)
# The same candidate after a regression: slower, bigger, worse sounding, hungrier.
BAD = Spec(
    "kokoro-int8",
    rtf=0.16,
    size_bytes=190_000_000,
    quant_style="qdq-int8",
    wer=0.30,
    logmel=0.60,
    rss_mb=1200.0,
    ttfa_share=0.6,
)


@pytest.fixture(scope="module")
def good() -> Report:
    return build_report([FP32, GOOD], seed=1, n_texts=8)


@pytest.fixture(scope="module")
def bad() -> Report:
    return build_report([FP32, BAD], seed=2, n_texts=8)


def rules(body: str, *, header: str = "version: 1\nmodel: kokoro-int8\n") -> str:
    return header + "rules:\n" + body


def value(report: Report, metric: str, model: str = "kokoro-int8") -> float:
    return metric_value(report, model, metric, reference=report.reference, role="report")


# --------------------------------------------------------------------------- parsing


def test_example_rules_parse_with_defaults() -> None:
    parsed = parse_rules(
        rules(
            "  - metric: quality.wer\n    max_increase: 0.01\n"
            "  - metric: speed.rtf.median\n    max: 0.15\n"
            "  - metric: speedup\n    min: 1.5\n    name: fast enough\n"
        )
    )
    assert parsed.model == "kokoro-int8" and parsed.reference is None
    kinds = [(r.metric, r.kind, r.threshold, r.compared_with) for r in parsed.rules]
    assert kinds == [
        ("quality.wer", "max_increase", 0.01, "baseline"),
        ("speed.rtf.median", "max", 0.15, None),
        ("speedup", "min", 1.5, None),
    ]
    assert parsed.needs_baseline
    assert parsed.rules[0].describe() == "max_increase 0.01 vs baseline"


def test_shipped_rules_parse_and_resolve_by_name(tmp_path: Path) -> None:
    shipped = shipped_rules()
    assert {"default", "regression"} <= set(shipped)
    for path in shipped.values():
        assert load_rules(path).rules
    assert not load_rules(shipped["default"]).needs_baseline
    assert load_rules(shipped["regression"]).needs_baseline
    assert resolve_rules("default") == shipped["default"]
    own = tmp_path / "gates.yaml"
    own.write_text(rules("  - metric: size_mb\n    max: 100\n"))
    assert resolve_rules(str(own)) == own
    with pytest.raises(GateRulesError, match="neither a file nor a shipped rules name.*default"):
        resolve_rules("strict")


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("  - metric: quality.wr\n    max: 0.1\n", 4, "unknown metric 'quality.wr' (did you mean "),
        ("  - metric: quality.wer\n    maximum: 0.1\n", 5, "unknown key; allowed keys: metric"),
        ("  - metric: quality.wer\n", 4, "has no rule kind; give exactly one of max, min"),
        ("  - metric: quality.wer\n    max: 0.1\n    min: 0.0\n", 4, "2 rule kinds (max, min)"),
        ("  - metric: speedup\n    min_ratio: 1\n    against: reference\n", 4, "already measured"),
        ("  - metric: quality.wer\n    max: 0.1\n    against: baseline\n", 4, "'max' is absolute"),
        ("  - metric: quality.wer\n    max_increase: -0.01\n", 5, "greater than or equal to 0"),
        ("  - metric: quality.wer\n    max_ratio: 0\n", 5, "greater than 0"),
        ("  - metric: quality.wer\n    max: 1e-2\n", 5, "write numbers with a dot"),
        ("  - metric: quality.wer\n    max: .inf\n", 4, "finite"),
        ("  - metric: quality.wer\n    against: yesterday\n    max_increase: 0.1\n", 5, "'base"),
    ],
)
def test_rule_errors_name_file_line_and_key(body: str, line: int, message: str) -> None:
    with pytest.raises(GateRulesError) as info:
        parse_rules(rules(body), source="ci/gates.yaml")
    msg = str(info.value)
    assert msg.startswith(f"ci/gates.yaml:{line}: rules[0]"), msg
    assert message in msg
    assert "\n" not in msg


def test_unknown_top_level_key_and_empty_rules() -> None:
    with pytest.raises(GateRulesError, match=r"^g.yaml:2: models: unknown key; allowed keys: ver"):
        parse_rules("version: 1\nmodels: x\nrules: []\n", source="g.yaml")
    with pytest.raises(GateRulesError, match=r"^g.yaml:2: rules: List should have at least 1"):
        parse_rules("version: 1\nrules: []\n", source="g.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nrules:\n  - metric: quality.wer\n   max: 0.1\n", "g.yaml:4:"),
        ("version: 1\nrules:\n\t- metric: x\n", "g.yaml:3:1: malformed YAML"),
        ("version: 1\nrules: [\n", "g.yaml:3:1: malformed YAML"),
        ("version: 1\nrules:\n  - metric: a\n    max: 1\n    max: 2\n", "g.yaml:5: key 'max'"),
        ("- just\n- a list\n", "must be a mapping with 'version: 1'"),
        ("rules:\n  - metric: quality.wer\n    max: 1\n", "missing 'version'"),
        ("version: 2\nrules: []\n", "gate rules version 2 is not supported; this kokoro-opt rea"),
        ("", "must be a mapping"),
    ],
)
def test_malformed_yaml_and_versions(text: str, message: str) -> None:
    with pytest.raises(GateRulesError) as info:
        parse_rules(text, source="g.yaml")
    assert message in str(info.value)


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(GateRulesError, match="does not exist"):
        load_rules(tmp_path / "gates.yaml")


def test_every_metric_is_known_and_documented() -> None:
    metrics = known_metrics()
    assert {"speedup", "size_mb", "quality.wer", "speed.ttfa_ms.p95"} <= set(metrics)
    readme = (Path(__file__).resolve().parents[1] / "reports" / "README.md").read_text()
    missing = [m for m in metrics if f"`{m}`" not in readme]
    assert not missing, f"reports/README.md does not explain: {missing}"


# --------------------------------------------------------------------------- outcomes


def test_all_rules_hold_on_a_good_build(good: Report) -> None:
    parsed = parse_rules(
        rules(
            "  - metric: quality.wer\n    max_increase: 0.05\n    against: reference\n"
            "  - metric: quality.logmel_distance\n    max: 0.35\n"
            "  - metric: speedup\n    min: 1.5\n"
            "  - metric: size_mb\n    max: 150\n"
            "  - metric: speed.ttfa_ms.p95\n    max_increase_pct: 10\n"
            "  - metric: speed.peak_rss_mb\n    max: 1000\n"
        )
    )
    result = evaluate(good, parsed, baseline=good)
    assert result.passed and not result.failures
    assert [o.passed for o in result.outcomes] == [True] * 6
    wer = result.outcomes[0]
    assert wer.against == "reference" and wer.bound == "max"
    assert wer.baseline == pytest.approx(value(good, "quality.wer", "kokoro-fp32"))
    assert wer.limit == pytest.approx(wer.baseline + 0.05)
    assert wer.observed == pytest.approx(value(good, "quality.wer"))
    ttfa = result.outcomes[4]
    assert ttfa.observed == ttfa.baseline  # the same report as its own baseline
    assert "(baseline " in ttfa.message and " + 10 %" in ttfa.message


# The issue's six rules, each absolute and relative: the good build passes, the regressed fails.
ISSUE_RULES = [
    ("quality.wer", "max: 0.15", "max_increase: 0.02"),
    ("quality.logmel_distance", "max: 0.35", "max_increase_pct: 20"),
    ("speedup", "min: 1.5", "min_ratio: 0.9"),
    ("size_bytes", "max: 150000000", "max_increase_pct: 1"),
    ("speed.ttfa_ms.p95", "max: 300", "max_increase_pct: 10"),
    ("speed.peak_rss_mb", "max: 1000", "max_increase: 100"),
]


@pytest.mark.parametrize(("metric", "absolute", "relative"), ISSUE_RULES)
def test_issue_rules_pass_good_and_fail_regressed(
    good: Report, bad: Report, metric: str, absolute: str, relative: str
) -> None:
    for kind in (absolute, relative):
        parsed = parse_rules(rules(f"  - metric: {metric}\n    {kind}\n"))
        assert evaluate(good, parsed, baseline=good).passed, kind
        result = evaluate(bad, parsed, baseline=good)
        assert not result.passed, kind
        (outcome,) = result.failures
        assert outcome.metric == metric and outcome.model == "kokoro-int8"
        assert outcome.observed == pytest.approx(value(bad, metric))
        sign = ">" if outcome.bound == "max" else "<"
        assert f" {sign} " in outcome.message


# kind -> (metric, threshold that makes the limit equal the observed value)
def _exact(kind: str, observed: float, base: float) -> float:
    return {
        "max": observed,
        "min": observed,
        "max_increase": observed - base,
        "max_decrease": base - observed,
        "max_increase_pct": (observed / base - 1) * 100,
        "max_decrease_pct": (1 - observed / base) * 100,
        "min_ratio": observed / base,
        "max_ratio": observed / base,
    }[kind]


@pytest.mark.parametrize("kind", RULE_KINDS)
def test_each_kind_at_its_boundary(good: Report, bad: Report, kind: str) -> None:
    # The regressed build is slower: RTF went up (max-type kinds), speedup went down (min-type).
    upper = kind.startswith("max") and "decrease" not in kind
    metric = "speed.rtf.median" if upper else "speedup"
    observed, base = value(bad, metric), value(good, metric)
    assert (observed > base) if upper else (observed < base)
    exact = _exact(kind, observed, base)
    nudge = 1e-3 * abs(exact)
    # a max-type limit grows with the threshold, except decreases, whose limit shrinks with it
    looser = exact + nudge if kind != "min" and kind != "min_ratio" else exact - nudge
    stricter = exact - nudge if looser > exact else exact + nudge
    outcomes = {}
    for label, threshold in (("exact", exact), ("looser", looser), ("stricter", stricter)):
        parsed = parse_rules(rules(f"  - metric: {metric}\n    {kind}: {threshold!r}\n"))
        result = evaluate(bad, parsed, baseline=good)
        outcomes[label] = result.outcomes[0].passed
        assert result.outcomes[0].baseline == (None if kind in ("max", "min") else base)
    assert outcomes == {"exact": True, "looser": True, "stricter": False}


def test_float_rounding_does_not_fail_an_equal_limit() -> None:
    report = build_report([FP32, GOOD], seed=5)
    observed = value(report, "quality.logmel_distance")
    # 0.1 + 0.2 style rounding: the limit comes out a hair below the observed value
    parsed = parse_rules(
        rules(f"  - metric: quality.logmel_distance\n    max_increase: {observed - 0.1!r}\n")
    )
    baseline = report.model_copy(deep=True)
    baseline.models[1].quality.logmel_distance = 0.1  # type: ignore[union-attr]
    assert evaluate(report, parsed, baseline=baseline).passed


def test_against_reference_needs_no_baseline(bad: Report) -> None:
    parsed = parse_rules(
        rules("  - metric: speed.peak_rss_mb\n    max_ratio: 0.5\n    against: reference\n")
    )
    assert not parsed.needs_baseline
    (outcome,) = evaluate(bad, parsed).outcomes
    assert outcome.baseline == 1450.0 and outcome.limit == 725.0
    assert outcome.observed == 1200.0 and not outcome.passed
    assert outcome.message == ("kokoro-int8 speed.peak_rss_mb = 1200 > 725 (reference 1450 x 0.5)")


def test_default_model_is_the_last_and_rules_can_name_others(good: Report) -> None:
    parsed = parse_rules(
        rules(
            "  - metric: size_mb\n    max: 200\n"
            "  - metric: size_mb\n    max: 200\n    model: kokoro-fp32\n",
            header="version: 1\n",
        )
    )
    result = evaluate(good, parsed)
    assert [(o.model, o.passed) for o in result.outcomes] == [
        ("kokoro-int8", True),
        ("kokoro-fp32", False),
    ]


def test_baseline_model_name_can_differ(good: Report, bad: Report) -> None:
    renamed = build_report([FP32, Spec(**{**GOOD.__dict__, "name": "int8-v1"})], seed=1, n_texts=8)
    parsed = parse_rules(
        rules("  - metric: size_bytes\n    max_increase_pct: 1\n") + "baseline_model: int8-v1\n"
    )
    assert not evaluate(bad, parsed, baseline=renamed).passed
    parsed = parse_rules(rules("  - metric: size_bytes\n    max_increase_pct: 1\n"))
    with pytest.raises(ReportError, match="The baseline has no model named 'kokoro-int8'"):
        evaluate(bad, parsed, baseline=renamed)


# --------------------------------------------------------------------------- bad input


def test_missing_groups_and_values_are_errors_not_failures(good: Report) -> None:
    no_quality = build_report(
        [
            Spec("kokoro-fp32", rtf=0.2, size_bytes=3, quality=False),
            Spec("kokoro-int8", rtf=0.1, size_bytes=1, quality=False),
        ]
    )
    parsed = parse_rules(
        rules(
            "  - metric: quality.wer\n    max: 0.1\n"
            "  - metric: size_mb\n    max: 1\n"
            "  - metric: speed.concurrency.rtf_max\n    max: 1\n"
        )
    )
    with pytest.raises(ReportError) as info:
        evaluate(no_quality, parsed)
    msg = str(info.value)
    assert msg.startswith("Cannot check 2 rules: rule 1 (quality.wer max 0.1)")
    assert "has no 'quality' group for quality.wer (run kokoro-opt eval to add it)" in msg
    assert "rule 3 (speed.concurrency.rtf_max max 1)" in msg
    assert "rule 2" not in msg

    no_f0 = parse_rules(rules("  - metric: quality.f0_rmse_cents\n    max: 50\n"))
    with pytest.raises(ReportError, match="has no value for quality.f0_rmse_cents"):
        evaluate(good, no_f0)


def test_speedup_needs_a_comparison() -> None:
    report = build_report(
        [
            Spec("kokoro-fp32", rtf=0.2, size_bytes=3, speed=False),
            Spec("kokoro-int8", rtf=0.1, size_bytes=1),
        ]
    )
    assert report.comparisons == []
    parsed = parse_rules(rules("  - metric: speedup\n    min: 1.5\n"))
    with pytest.raises(ReportError, match="no speedup of 'kokoro-int8' vs 'kokoro-fp32'"):
        evaluate(report, parsed)


def test_baseline_missing_the_metric_says_baseline(good: Report) -> None:
    no_quality = build_report([FP32, Spec(**{**GOOD.__dict__, "quality": False})], seed=1)
    parsed = parse_rules(rules("  - metric: quality.wer\n    max_increase: 0.01\n"))
    with pytest.raises(ReportError, match="the baseline's model 'kokoro-int8' has no 'quality'"):
        evaluate(good, parsed, baseline=no_quality)


def test_relative_rule_without_baseline(good: Report) -> None:
    parsed = parse_rules(rules("  - metric: quality.wer\n    max_increase: 0.01\n"))
    with pytest.raises(GateRulesError, match="none was given; pass --baseline BASELINE"):
        evaluate(good, parsed)


def test_unknown_model_in_rules(good: Report) -> None:
    parsed = parse_rules(
        rules("  - metric: size_mb\n    max: 1\n", header="version: 1\nmodel: kokoro-q4\n")
    )
    with pytest.raises(ReportError, match="no model named 'kokoro-q4'; it has kokoro-fp32, kok"):
        evaluate(good, parsed)


def test_baseline_from_another_schema_version(tmp_path: Path, good: Report) -> None:
    save_report(good, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    data["schema_version"] = 2
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(SchemaVersionError) as info:
        load_report(tmp_path, role="baseline")
    assert "The baseline" in str(info.value)
    assert "schema version 2" in str(info.value) and "reads schema version 1" in str(info.value)


# --------------------------------------------------------------------------- JUnit


def test_junit_xml_lists_every_rule(good: Report, bad: Report) -> None:
    parsed = parse_rules(
        rules(
            "  - metric: quality.wer\n    max: 0.15\n    name: intelligible\n"
            "  - metric: size_mb\n    max: 500\n"
            "  - metric: speedup\n    min_ratio: 0.9\n"
        )
    )
    result: GateResult = evaluate(bad, parsed, baseline=good)
    root = ET.fromstring(junit_xml(result))
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "3" and suite.get("failures") == str(len(result.failures)) == "2"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "intelligible",
        "size_mb max 500",
        "speedup min_ratio 0.9 vs baseline",
    ]
    assert all(c.get("classname") == "gate.kokoro-int8" for c in cases)
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 2
    failure = failed[0].find("failure")
    assert failure is not None and failure.get("message") == result.failures[0].message
