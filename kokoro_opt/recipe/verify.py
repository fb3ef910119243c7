"""Check a recipe's run folder before trusting or shipping it (`kokoro-opt verify RUN_DIR`).

    result = verify_run(Path("reports/cpu-int8-20261207-2210"))
    result.passed          # False when any check failed

Checks, each a `RunCheck` (passed, failed, or skipped with the reason):
- every step artifact listed in `manifest.json` is there with its recorded size and sha256;
- the final model (`outputs.model`) and the merged report (`outputs.report`) have the sha256
  the manifest recorded for them;
- every model the report measured is a model of this run (its input, reference or a step's
  output, by sha256), and the final model is among them;
- the gate: `gate/gate.json` passed, the manifest says the same, and the rules, evaluated again
  on the report as it is now, still pass (skipped when the rules file is gone).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kokoro_opt.errors import UserInputError
from kokoro_opt.recipe.runner import MANIFEST_FILE


@dataclass(frozen=True)
class RunCheck:
    """One check of a run folder; `passed` is None when it could not be made (and why)."""

    check: str
    passed: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunVerification:
    run_dir: Path
    checks: list[RunCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "passed": self.passed,
            "checks": [c.to_dict() for c in self.checks],
        }


def verify_run(run_dir: Path) -> RunVerification:
    """Check the run folder `run_dir` (see the module docstring). `UserInputError` when it is
    not a recipe run folder (no readable manifest.json)."""
    run_dir = run_dir.absolute()
    manifest = _manifest(run_dir)
    result = RunVerification(run_dir)
    checks = result.checks
    known: dict[str, str] = {}
    artifacts = {rel: info for step in manifest.get("steps") or [] for rel, info in _outputs(step)}
    bad = []
    for rel, info in artifacts.items():
        problem = _file_problem(run_dir / rel, info.get("sha256"), info.get("bytes"))
        if problem:
            bad.append(f"{rel} {problem}")
        elif rel.endswith(".onnx"):
            known[info["sha256"]] = rel
    detail = f"{len(artifacts) - len(bad)} of {len(artifacts)} step artifacts match manifest.json"
    checks.append(RunCheck("artifacts", not bad, "; ".join([detail, *bad])))

    outputs = manifest.get("outputs") or {}
    for role in ("model", "reference"):
        entry = (manifest.get("inputs") or {}).get(role)
        if isinstance(entry, dict) and entry.get("sha256"):
            known.setdefault(entry["sha256"], f"input {role} {entry.get('name')}")
    final_sha = outputs.get("model_sha256")
    checks.append(_recorded_file("final model", outputs.get("model"), final_sha, run_dir))
    report_path = _in_run(outputs.get("report"), run_dir)
    checks.append(
        _recorded_file("report", outputs.get("report"), outputs.get("report_sha256"), run_dir)
    )
    if report_path is None or not report_path.is_file():
        return result
    from kokoro_opt.errors import ReportError
    from kokoro_opt.report.schema import load_report

    try:
        report = load_report(report_path)
    except ReportError as exc:
        checks.append(RunCheck("report models", False, str(exc)))
        return result
    checks.append(_report_models(report, known, final_sha))
    checks.append(_gate(run_dir, manifest, report))
    return result


# --------------------------------------------------------------------------- checks


def _manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(
            f"{run_dir} is not a recipe run folder: it has no {MANIFEST_FILE}. Give the folder "
            "`kokoro-opt run` wrote (reports/<recipe>-<time>)."
        ) from None
    except (OSError, ValueError) as exc:
        raise UserInputError(f"Cannot read {path}: {exc}.") from None
    if not isinstance(data, dict) or "steps" not in data:
        raise UserInputError(f"{path} is not a recipe run manifest (it has no 'steps').")
    return data


def _outputs(step: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    outputs = step.get("outputs") if isinstance(step, dict) else None
    return list(outputs.items()) if isinstance(outputs, dict) else []


def _in_run(recorded: str | None, run_dir: Path) -> Path | None:
    """A path the manifest recorded, found in `run_dir` even when the folder was moved."""
    if not recorded:
        return None
    path = Path(recorded)
    if path.is_relative_to(run_dir):
        return path
    parts = path.parts
    if run_dir.name in parts:
        at = len(parts) - 1 - parts[::-1].index(run_dir.name)
        return run_dir.joinpath(*parts[at + 1 :])
    return run_dir / path.name


def _file_problem(path: Path, sha256: str | None, size: int | None) -> str | None:
    from kokoro_opt.graph.io import sha256_file

    if not path.is_file():
        return "is missing"
    actual, actual_size = sha256_file(path), path.stat().st_size
    if (sha256 is not None and actual != sha256) or (size is not None and actual_size != size):
        wrong_size = size is not None and size != actual_size
        sizes = f" ({actual_size:,} bytes, recorded {size:,})" if wrong_size else ""
        return f"has sha256 {actual[:12]}, recorded {(sha256 or '-')[:12]}{sizes}"
    return None


def _recorded_file(label: str, recorded: str | None, sha256: str | None, run_dir: Path) -> RunCheck:
    path = _in_run(recorded, run_dir)
    if path is None:
        return RunCheck(label, None, "the run has none")
    if sha256 is None:
        return RunCheck(label, None, f"{path.name}: the manifest records no sha256 (older run)")
    problem = _file_problem(path, sha256, None)
    if problem:
        return RunCheck(label, False, f"{path.name} {problem}")
    return RunCheck(label, True, f"{path.name} sha256 {sha256[:12]} as recorded")


def _report_models(report: Any, known: dict[str, str], final_sha: str | None) -> RunCheck:
    strangers = [f"{m.name} ({m.sha256[:12]})" for m in report.models if m.sha256 not in known]
    if strangers:
        return RunCheck(
            "report models",
            False,
            f"the report measured {', '.join(strangers)}, which this run did not make or use",
        )
    measured = {m.sha256 for m in report.models}
    if final_sha is not None and final_sha not in measured:
        return RunCheck(
            "report models", False, f"the report never measured the final model ({final_sha[:12]})"
        )
    names = ", ".join(f"{m.name} = {known[m.sha256]}" for m in report.models)
    return RunCheck("report models", True, names)


def _gate(run_dir: Path, manifest: dict[str, Any], report: Any) -> RunCheck:
    from kokoro_opt.errors import KokoroOptError
    from kokoro_opt.gates import evaluate, load_rules
    from kokoro_opt.report.schema import load_report

    gates = [s for s in manifest.get("steps") or [] if s.get("kind") == "gate"]
    if not gates:
        return RunCheck("gate", None, "the recipe has no gate step")
    gate_file = run_dir / gates[-1]["id"] / "gate.json"
    try:
        recorded = json.loads(gate_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return RunCheck("gate", False, f"{gate_file.relative_to(run_dir)} is missing or unreadable")
    passed = recorded.get("passed")
    if passed is not manifest.get("gate_passed"):
        return RunCheck(
            "gate",
            False,
            f"gate.json says passed={passed} but manifest.json says {manifest.get('gate_passed')}",
        )
    if not passed:
        return RunCheck("gate", False, f"the gate failed ({recorded.get('failed')} rule(s))")
    rules = Path(str(recorded.get("rules_file") or ""))
    baseline = Path(str(recorded["baseline"])) if recorded.get("baseline") else None
    if not rules.is_file() or (baseline is not None and not baseline.exists()):
        gone = "rules file" if not rules.is_file() else "baseline"
        return RunCheck("gate", True, f"passed as recorded (not re-checked: the {gone} is gone)")
    try:
        previous = load_report(baseline, role="baseline") if baseline is not None else None
        again = evaluate(report, load_rules(rules), baseline=previous)
    except KokoroOptError as exc:
        return RunCheck("gate", False, f"the rules no longer apply to the report: {exc}")
    if not again.passed:
        failed = "; ".join(f"{o.label}: {o.message}" for o in again.failures)
        return RunCheck("gate", False, f"recorded as passed, but the report now fails: {failed}")
    return RunCheck("gate", True, f"{again.to_dict()['rules']} rules hold on the report as it is")
