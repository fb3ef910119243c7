"""A recipe's output lands in the model cache with its manifest; `kokoro-opt verify RUN_DIR`
catches an edited report, a replaced model file and a failed gate; `gate --model` binds a
report to the file it measured."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from kokoro_opt.errors import IntegrityError, RecipeError
from kokoro_opt.graph.io import sha256_file
from kokoro_opt.recipe import load_recipe
from kokoro_opt.recipe.runner import MANIFEST_FILE, RunResult, run_recipe
from kokoro_opt.recipe.verify import verify_run
from kokoro_opt.store import list_models, resolve_model
from tests.cli_helpers import run_cli
from tests.recipe.test_runner import GATED, RULES
from tests.store.test_verify import flip_byte

OUTPUT = GATED + "outputs:\n  model: kokoro-gated.onnx\n"


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from kokoro_opt.cli import console as console_module

    for c in (console_module.console, console_module.err_console):
        monkeypatch.setattr(c, "width", 400)


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory: pytest.TempPathFactory, synthetic_fp32: Path) -> RunResult:
    """One gated recipe run on the synthetic model (shared: the tests copy it to edit it)."""
    home = tmp_path_factory.mktemp("home")
    folder = tmp_path_factory.mktemp("recipe")
    shutil.copy(synthetic_fp32, folder / "synthetic.onnx")
    (folder / "texts.txt").write_text("Hello there, friend.\nA short one.\n")
    (folder / "rules.yaml").write_text(RULES.format(ratio=1.0))
    (folder / "r.yaml").write_text(OUTPUT.format())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KOKORO_OPT_HOME", str(home))
        result = run_recipe(load_recipe(folder / "r.yaml"), reports_root=folder / "reports")
    result.manifest["home"] = str(home)
    return result


@pytest.fixture
def run_copy(gated_run: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the run folder (real copies, not links to the step cache)."""
    monkeypatch.setenv("KOKORO_OPT_HOME", gated_run.manifest["home"])
    target = tmp_path / gated_run.run_dir.name
    shutil.copytree(gated_run.run_dir, target)
    return target


def _checks(run_dir: Path) -> dict[str, bool | None]:
    return {c.check: c.passed for c in verify_run(run_dir).checks}


def test_the_output_is_registered_with_its_manifest(
    gated_run: RunResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOKORO_OPT_HOME", gated_run.manifest["home"])
    assert gated_run.gate_passed is True and gated_run.registered is not None
    cached = resolve_model("kokoro-gated")
    assert cached == gated_run.registered and cached != gated_run.model
    assert sha256_file(cached) == sha256_file(gated_run.run_dir / "kokoro-gated.onnx")
    sidecar = json.loads(cached.with_suffix(".json").read_text())
    assert sidecar["kind"] == "recipe" and sidecar["recipe"] == "gated"
    assert sidecar["sha256"] == gated_run.manifest["outputs"]["model_sha256"]
    assert sidecar["manifest"]["recipe"]["sha256"] == gated_run.manifest["recipe"]["sha256"]
    assert sidecar["run_dir"] == str(gated_run.run_dir)
    manifest = json.loads((gated_run.run_dir / MANIFEST_FILE).read_text())
    assert manifest["outputs"]["registered"] == str(cached)
    assert {r["name"]: r["verified"] for r in list_models()}["kokoro-gated"] == "verified"


def test_a_damaged_registered_output_is_refused_and_repaired_from_the_run(
    gated_run: RunResult, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KOKORO_OPT_HOME", gated_run.manifest["home"])
    cached = resolve_model("kokoro-gated")
    good = sha256_file(cached)
    flip_byte(cached, "header")
    with pytest.raises(IntegrityError, match=r"run the recipe again \(`kokoro-opt run gated"):
        resolve_model("kokoro-gated")
    result = run_cli(["model", "pull", "--repair"], capsys)
    assert result.exit_code == 0 and "copied again from its run folder" in result.stdout
    assert sha256_file(cached) == good and resolve_model("kokoro-gated") == cached


def test_verify_passes_on_an_intact_run(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _checks(run_copy) == {
        "artifacts": True,
        "final model": True,
        "report": True,
        "report models": True,
        "gate": True,
    }
    result = run_cli(["verify", str(run_copy)], capsys)
    assert result.exit_code == 0 and "intact" in result.stdout


def test_verify_catches_an_edited_report(run_copy: Path, capsys: pytest.CaptureFixture) -> None:
    report = run_copy / "report.json"
    data = json.loads(report.read_text())
    data["models"][1]["quality"]["logmel_distance"] = 0.01  # a better number than measured
    report.write_text(json.dumps(data, indent=2))
    checks = _checks(run_copy)
    assert checks["report"] is False and checks["artifacts"] is True
    result = run_cli(["verify", str(run_copy), "--json"], capsys)
    assert result.exit_code == 1 and json.loads(result.stdout)["passed"] is False


def test_verify_catches_an_edited_step_report(run_copy: Path) -> None:
    step_report = run_copy / "eval" / "report.json"
    step_report.write_text(step_report.read_text().replace('"wer"', '"wer" ', 1))
    checks = _checks(run_copy)
    assert checks["artifacts"] is False and checks["report"] is True


def test_verify_catches_a_replaced_model_file(
    run_copy: Path, synthetic_int8: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(synthetic_int8, run_copy / "kokoro-gated.onnx")
    assert _checks(run_copy)["final model"] is False
    shutil.copy(synthetic_int8, run_copy / "int4" / "model.onnx")
    verification = verify_run(run_copy)
    bad = next(c for c in verification.checks if c.check == "artifacts")
    assert not bad.passed and "int4/model.onnx has sha256" in bad.detail
    assert run_cli(["verify", str(run_copy)], capsys).exit_code == 1


def test_verify_catches_a_report_of_another_model(run_copy: Path, synthetic_int8: Path) -> None:
    from kokoro_opt.report.schema import load_report, save_report

    report = load_report(run_copy / "report.json")
    other = report.models[1].model_copy(update={"sha256": sha256_file(synthetic_int8)})
    save_report(report.model_copy(update={"models": [report.models[0], other]}), run_copy)
    manifest = json.loads((run_copy / MANIFEST_FILE).read_text())
    manifest["outputs"]["report_sha256"] = sha256_file(run_copy / "report.json")  # covered up
    (run_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    verification = verify_run(run_copy)
    check = next(c for c in verification.checks if c.check == "report models")
    assert check.passed is False and "which this run did not make or use" in check.detail


def test_verify_catches_a_gate_that_no_longer_holds(run_copy: Path) -> None:
    gate = run_copy / "gate" / "gate.json"
    data = json.loads(gate.read_text())
    rules = Path(data["rules_file"])
    original = rules.read_text()
    try:
        rules.write_text(original.replace("max_ratio: 1.0", "max_ratio: 0.01"))
        check = next(c for c in verify_run(run_copy).checks if c.check == "gate")
        assert check.passed is False and "now fails" in check.detail
    finally:
        rules.write_text(original)


def test_not_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["verify", str(tmp_path)], capsys)
    assert result.exit_code == 2 and "not a recipe run folder" in result.stderr


def test_gate_model_binds_the_report_to_the_file(
    run_copy: Path, synthetic_int8: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = json.loads((run_copy / "gate" / "gate.json").read_text())["rules_file"]
    args = ["gate", str(run_copy), "--rules", rules]
    result = run_cli([*args, "--model", str(run_copy / "kokoro-gated.onnx")], capsys)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "PASS model" in result.stdout
    result = run_cli([*args, "--model", "kokoro-gated", "--json"], capsys)  # the cached copy
    assert result.exit_code == 0 and json.loads(result.stdout)["model_check"]["matches"] == "gated"

    junit = run_copy / "junit.xml"
    result = run_cli([*args, "--model", str(synthetic_int8), "--junit", str(junit)], capsys)
    assert result.exit_code == 1 and "is not a model this report measured" in result.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("4", "1")
    reference = json.loads((run_copy / MANIFEST_FILE).read_text())["inputs"]["model"]["path"]
    result = run_cli([*args, "--model", reference, "--json"], capsys)
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["passed"] is False and data["rules"] == 3
    assert "the rules judged gated" in data["model_check"]["message"]


def test_a_recipe_output_may_not_replace_a_default_model(
    write_recipe: Callable[..., Path], recipe_dir: Path, tmp_path: Path, kokoro_home: Path
) -> None:
    (recipe_dir / "rules.yaml").write_text(RULES.format(ratio=1.0))
    path = write_recipe(GATED.format() + "outputs:\n  model: kokoro-fp32.onnx\n")
    with pytest.raises(RecipeError, match="would replace the default cached model"):
        run_recipe(load_recipe(path), reports_root=tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_cli_run_registers_the_output_only_when_the_gate_passes(
    gated_run: RunResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kokoro_opt.errors import ModelNotFoundError

    monkeypatch.setenv("KOKORO_OPT_HOME", gated_run.manifest["home"])
    folder = Path(gated_run.manifest["recipe"]["path"]).parent
    for name in ("synthetic.onnx", "texts.txt"):
        shutil.copy(folder / name, tmp_path / name)
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(OUTPUT.format().replace("kokoro-gated", "kokoro-strict"))
    (tmp_path / "rules.yaml").write_text(RULES.format(ratio=0.01))
    failed = run_cli(["run", str(recipe), "-o", str(tmp_path / "run1")], capsys)
    assert failed.exit_code == 1 and "Cached as" not in failed.stdout
    assert (
        json.loads((tmp_path / "run1" / MANIFEST_FILE).read_text())["outputs"]["registered"] is None
    )
    with pytest.raises(ModelNotFoundError):
        resolve_model("kokoro-strict")

    (tmp_path / "rules.yaml").write_text(RULES.format(ratio=1.0))
    passed = run_cli(["run", str(recipe), "-o", str(tmp_path / "run2")], capsys)
    assert passed.exit_code == 0, passed.stderr
    assert "Cached as kokoro-strict" in passed.stdout
    assert "kokoro-opt serve kokoro-strict" in passed.stdout
    assert sha256_file(resolve_model("kokoro-strict")) == sha256_file(
        tmp_path / "run2" / "kokoro-strict.onnx"
    )
