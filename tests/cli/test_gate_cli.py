"""`kokoro-opt gate` and `kokoro-opt report` through the real CLI entry point."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kokoro_opt.report.schema import save_report
from tests.cli_helpers import run_cli
from tests.report_factory import Spec, build_report

FP32 = Spec("kokoro-fp32", rtf=0.20, size_bytes=325_600_000, wer=0.06, rss_mb=1450.0)
GOOD = Spec("kokoro-int8", rtf=0.11, size_bytes=126_000_000, wer=0.06, logmel=0.25, rss_mb=780.0)
SLOW = Spec("kokoro-int8", rtf=0.30, size_bytes=126_000_000, wer=0.06, logmel=0.25, rss_mb=780.0)

RULES = """version: 1
model: kokoro-int8
rules:
  - metric: quality.logmel_distance
    max: 0.35
  - metric: speedup
    min: 1.2
    name: faster than FP32
  - metric: size_bytes
    max_increase_pct: 1
"""


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from kokoro_opt.cli import console as console_module

    for c in (console_module.console, console_module.err_console):
        monkeypatch.setattr(c, "width", 200)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    good = save_report(build_report([FP32, GOOD], seed=1), tmp_path / "good")
    slow = save_report(build_report([FP32, SLOW], seed=2), tmp_path / "slow")
    rules = tmp_path / "gates.yaml"
    rules.write_text(RULES)
    baseline = tmp_path / "baseline" / "report.json"
    baseline.parent.mkdir()
    baseline.write_bytes(good.read_bytes())
    return {"good": good, "slow": slow, "rules": rules, "baseline": baseline, "dir": tmp_path}


def test_pass_exits_0_with_a_table(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    args = ["gate", str(files["good"]), "--rules", str(files["rules"])]
    result = run_cli([*args, "--baseline", str(files["baseline"])], capsys)
    assert result.exit_code == 0, result.stderr
    assert "Gate for kokoro-int8: 3 of 3 rules hold" in result.stdout
    assert "faster than FP32" in result.stdout and "PASS" in result.stdout
    assert "FAIL" not in result.stdout and "All 3 rules hold." in result.stdout


def test_fail_exits_1_and_names_the_rule(
    files: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    args = ["gate", str(files["slow"].parent), "--rules", str(files["rules"])]
    result = run_cli([*args, "--baseline", str(files["baseline"].parent)], capsys)
    assert result.exit_code == 1, result.stderr
    assert "2 of 3 rules hold" in result.stdout
    assert "FAIL faster than FP32: kokoro-int8 speedup = 0." in result.stdout
    assert "< 1.2" in result.stdout


def test_json_output(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    args = ["gate", str(files["slow"]), "--rules", str(files["rules"]), "--json"]
    result = run_cli([*args, "--baseline", str(files["baseline"])], capsys)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["rules"] == 3 and data["failed"] == 1
    speedup = data["outcomes"][1]
    assert speedup["metric"] == "speedup" and speedup["passed"] is False
    assert speedup["limit"] == 1.2 and speedup["bound"] == "min"
    assert 0.5 < speedup["observed"] < 0.8  # 0.20 vs 0.30 RTF
    size = data["outcomes"][2]
    assert size["against"] == "baseline" and size["baseline"] == 126_000_000
    assert data["baseline_updated"] is False


def test_junit_output(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    junit = files["dir"] / "out" / "gate.xml"
    args = ["gate", str(files["slow"]), "--rules", str(files["rules"])]
    result = run_cli([*args, "--baseline", str(files["baseline"]), "--junit", str(junit)], capsys)
    assert result.exit_code == 1
    assert f"JUnit XML written to {junit}" in result.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["faster than FP32"]
    assert not [p for p in junit.parent.iterdir() if p.name != "gate.xml"]  # no temp files


def test_update_baseline_only_when_all_pass(
    files: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    baseline = files["baseline"]
    original = baseline.read_bytes()
    args = ["--rules", str(files["rules"]), "--baseline", str(baseline), "--update-baseline"]

    result = run_cli(["gate", str(files["slow"]), *args], capsys)
    assert result.exit_code == 1
    assert "Baseline not updated: 1 rule(s) failed" in result.stdout
    assert baseline.read_bytes() == original

    better = save_report(build_report([FP32, GOOD], seed=7), files["dir"] / "better")
    assert better.read_bytes() != original
    result = run_cli(["gate", str(better), *args], capsys)
    assert result.exit_code == 0, result.stderr
    assert "Baseline updated:" in result.stdout
    assert baseline.read_bytes() == better.read_bytes()


def test_update_baseline_starts_a_missing_one(
    files: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    new = files["dir"] / "ci" / "baseline.json"
    args = ["gate", str(files["good"]), "--rules", "default", "--baseline", str(new)]
    result = run_cli([*args, "--update-baseline", "--json"], capsys)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["baseline_updated"] is True
    assert new.read_bytes() == files["good"].read_bytes()

    other = files["dir"] / "ci" / "other.json"
    args = ["gate", str(files["good"]), "--rules", "regression", "--baseline", str(other)]
    result = run_cli([*args, "--update-baseline"], capsys)
    assert result.exit_code == 2
    assert "does not exist yet" in result.stderr and f"cp {files['good']} {other}" in result.stderr
    assert not other.exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing report", "does not exist; give a report.json"),
        ("baseline schema 2", "has report schema version 2, but this kokoro-opt reads schema"),
        ("malformed rules", "gates.yaml:4:"),
        ("unknown metric", "unknown metric 'quality.wr' (did you mean 'quality.wer'?)"),
        ("unknown rules name", "neither a file nor a shipped rules name"),
        ("update without baseline", "--update-baseline needs --baseline FILE"),
        ("missing metric", "has no 'quality' group for quality.logmel_distance"),
        ("needs baseline", "compares with a baseline report, but none was given"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    files: dict[str, Path], capsys: pytest.CaptureFixture, case: str, message: str
) -> None:
    d = files["dir"]
    report, rules, extra = str(files["good"]), str(files["rules"]), ["--baseline"]
    extra.append(str(files["baseline"]))
    if case == "missing report":
        report = str(d / "nope" / "report.json")
    elif case == "baseline schema 2":
        data = json.loads(files["baseline"].read_text())
        data["schema_version"] = 2
        files["baseline"].write_text(json.dumps(data))
    elif case == "malformed rules":
        (d / "gates.yaml").write_text("version: 1\nrules:\n  - metric: quality.wer\n   max: 1\n")
    elif case == "unknown metric":
        (d / "gates.yaml").write_text("version: 1\nrules:\n  - metric: quality.wr\n    max: 1\n")
    elif case == "unknown rules name":
        rules = "strictest"
    elif case == "update without baseline":
        extra = ["--update-baseline"]
    elif case == "missing metric":
        no_quality = build_report([FP32, Spec(**{**GOOD.__dict__, "quality": False})])
        report = str(save_report(no_quality, d / "noq"))
    elif case == "needs baseline":
        extra = []
    result = run_cli(["gate", report, "--rules", rules, *extra], capsys)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_report_rerenders_md_and_html(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = build_report(tradeoff=True)
    json_path = save_report(report, tmp_path / "run")
    before = json_path.read_bytes()
    result = run_cli(["report", str(tmp_path / "run")], capsys)
    assert result.exit_code == 0, result.stderr
    assert "report.md" in result.stdout and "report.html" in result.stdout
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    assert (tmp_path / "run" / "report.md").read_text().startswith("# kokoro-opt report: ")
    assert json_path.read_bytes() == before

    result = run_cli(["report", str(json_path), "--json"], capsys)
    assert result.exit_code == 0
    written = json.loads(result.stdout)["written"]
    assert sorted(Path(w["file"]).name for w in written) == ["report.html", "report.md"]


def test_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = run_cli(["report", str(tmp_path / "missing")], capsys)
    assert result.exit_code == 2 and "does not exist" in result.stderr
    (tmp_path / "report.json").write_text('{"schema_version": 1, "models": []}')
    result = run_cli(["report", str(tmp_path)], capsys)
    assert result.exit_code == 2
    assert "does not match report schema version 1: run: missing required key" in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_help_lists_gate_and_report(capsys: pytest.CaptureFixture) -> None:
    result = run_cli(["--help"], capsys)
    assert result.exit_code == 0
    out = " ".join(result.stdout.split())
    assert "gate Check REPORT against RULES" in out
    assert "report Re-render report.md and report.html" in out


def test_docs_workflow_gate_step_uses_real_options(capsys: pytest.CaptureFixture) -> None:
    import shlex

    import yaml

    root = Path(__file__).resolve().parents[2]
    workflow = yaml.safe_load((root / "docs" / "github-actions-example.yml").read_text())
    steps = workflow["jobs"]["gate"]["steps"]
    gate_runs = [s["run"] for s in steps if "kokoro-opt gate" in s.get("run", "")]
    assert len(gate_runs) == 1
    args = shlex.split(gate_runs[0])
    assert args[:2] == ["kokoro-opt", "gate"]
    help_text = run_cli(["gate", "--help"], capsys).stdout
    for option in (a for a in args if a.startswith("--")):
        assert option in help_text, option
    rules = args[args.index("--rules") + 1]
    from kokoro_opt.gates import resolve_rules

    assert resolve_rules(rules).is_file()
    assert any(s.get("if") == "always()" and "upload-artifact" in s.get("uses", "") for s in steps)
