"""`kokoro-opt run` and `kokoro-opt recipes list|show`, in-process on the synthetic model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli

RECIPE = """\
name: cli-demo
model: synthetic.onnx
threads: 1
steps:
  - optimize:
      level: basic
      simplify: false
      fusion: false
  - int4: {min_elements: 64}
outputs:
  model: demo.onnx
"""


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    from kokoro_opt.cli import console as consoles

    monkeypatch.setattr(consoles.console, "width", 200)
    monkeypatch.setattr(consoles.err_console, "width", 200)


@pytest.fixture
def recipe(tmp_path: Path, synthetic_fp32: Path) -> Path:
    shutil.copy(synthetic_fp32, tmp_path / "synthetic.onnx")
    path = tmp_path / "demo.yaml"
    path.write_text(RECIPE)
    return path


def test_run_then_cached_then_forced(
    recipe: Path,
    tmp_path: Path,
    kokoro_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    first = run_cli(["run", str(recipe)], capsys)
    assert first.exit_code == 0, first.stderr
    assert "Recipe cli-demo: succeeded" in first.stdout
    runs = sorted((tmp_path / "reports").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("cli-demo-")
    assert (runs[0] / "demo.onnx").is_file() and (runs[0] / "manifest.json").is_file()
    assert "ran optimize" in first.stderr and "ran int4" in first.stderr

    out = tmp_path / "again"
    second = run_cli(["run", str(recipe), "-o", str(out), "--json"], capsys)
    assert second.exit_code == 0, second.stderr
    manifest = json.loads(second.stdout)
    assert [s["status"] for s in manifest["steps"]] == ["cached", "cached"]
    assert manifest["outputs"]["model"] == str(out / "demo.onnx")

    forced = run_cli(["run", str(recipe), "-o", str(out), "--force"], capsys)
    assert forced.exit_code == 0, forced.stderr
    table = [line for line in forced.stdout.splitlines() if "optimize" in line or "int4" in line]
    assert len(table) == 2 and all(" ran " in line for line in table)


def test_bad_recipe_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nmodel: kokoro-fp32\nsteps:\n  - optimize:\n      levl: basic\n")
    result = run_cli(["run", str(path)], capsys)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{path}:5: steps[0] (optimize): levl: unknown key" in lines[0]
    assert not (tmp_path / "reports").exists()


def test_unknown_recipe_name(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["run", "cpu-int9"], capsys)
    assert result.exit_code == 2
    assert "No recipe 'cpu-int9'" in result.stderr and "Did you mean 'cpu-int8'" in result.stderr


def test_gate_failure_exits_1(
    recipe: Path, tmp_path: Path, kokoro_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "texts.txt").write_text("A short one.\n")
    (tmp_path / "rules.yaml").write_text(
        "version: 1\nrules:\n  - metric: size_bytes\n    max_ratio: 0.01\n    against: reference\n"
    )
    recipe.write_text(
        RECIPE.replace(
            "outputs:",
            "  - bench: {texts: texts.txt, runs: 1, warmup: 0, memory: false}\n"
            "  - gate: {rules: rules.yaml}\noutputs:",
        )
    )
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "run")], capsys)
    assert result.exit_code == 1, result.stderr
    assert "1 of 1 rules failed" in result.stdout and "Gate failed" in result.stdout
    gate = json.loads((tmp_path / "run" / "gate" / "gate.json").read_text())
    assert gate["passed"] is False


def test_recipes_list(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["recipes", "list", "--json"], capsys)
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"cpu-int8", "cpu-int8-quick", "gpu-fp16-hybrid", "coreml-static-fp16"} <= set(rows)
    assert {"int4-trial"} <= set(rows)
    assert rows["cpu-int8"]["valid"] is True
    assert rows["cpu-int8"]["steps"] == ["pull", "optimize", "quantize", "eval", "bench", "gate"]
    table = run_cli(["recipes", "list"], capsys)
    assert table.exit_code == 0 and "cpu-int8-quick" in table.stdout


def test_recipes_show(capsys: pytest.CaptureFixture[str]) -> None:
    from kokoro_opt.recipe import shipped_recipes

    shown = run_cli(["recipes", "show", "cpu-int8"], capsys)
    assert shown.exit_code == 0
    assert shipped_recipes()["cpu-int8"].read_text().strip() in shown.stdout
    resolved = run_cli(["recipes", "show", "cpu-int8", "--resolved"], capsys)
    assert resolved.exit_code == 0
    assert "per_channel: true" in resolved.stdout and "method:" in resolved.stdout
    missing = run_cli(["recipes", "show", "nope"], capsys)
    assert missing.exit_code == 2 and "No recipe 'nope'" in missing.stderr


def test_run_help_is_instant_and_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import kokoro_opt.cli.run, sys; print('onnxruntime' in "
            "sys.modules, 'onnx' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["False", "False"]
    result = run_cli(["run", "--help"], capsys)
    assert result.exit_code == 0
    assert "--force" in result.stdout and "--output" in result.stdout


def test_recipes_list_says_why_a_recipe_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import kokoro_opt.recipe as recipe_pkg

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nmodel: kokoro-fp32\nsteps:\n  - optimise: {}\n")
    monkeypatch.setattr(recipe_pkg, "shipped_recipes", lambda: {"broken": broken})
    result = run_cli(["recipes", "list", "--json"], capsys)
    assert result.exit_code == 0
    (row,) = json.loads(result.stdout)
    assert row["valid"] is False
    assert row["problem"].startswith("line 4: steps[0]: unknown step 'optimise'")
    table = run_cli(["recipes", "list"], capsys)
    assert "cannot run here" in table.stdout
