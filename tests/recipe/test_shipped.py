"""The shipped recipes validate and say what their comments say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kokoro_opt.errors import RecipeError
from kokoro_opt.recipe import load_recipe, shipped_recipes
from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
MUST_RUN_HERE = ("cpu-int8", "cpu-int8-quick", "int4-trial")
"""Recipes whose every step exists in this kokoro-opt; the others may wait for a pass."""


def test_shipped_recipes_are_the_checkout_recipes_folder() -> None:
    shipped = shipped_recipes()
    assert set(shipped) >= {
        "cpu-int8",
        "cpu-int8-quick",
        "gpu-fp16-hybrid",
        "coreml-static-fp16",
        "int4-trial",
    }
    for name, path in shipped.items():
        assert (ROOT / "recipes" / f"{name}.yaml").resolve() == path.resolve()


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_validates(name: str) -> None:
    path = shipped_recipes()[name]
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        # only a step whose pass is not in this kokoro-opt yet may stop a shipped recipe
        assert name not in MUST_RUN_HERE, str(exc)
        assert "is not available in this kokoro-opt yet" in str(exc), str(exc)
        return
    assert recipe.name == name
    assert recipe.steps[0].kind == "pull"
    assert recipe.outputs.model is not None


def test_cpu_int8_optimize_is_the_for_quantization_preset(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "opt.onnx"
    result = run_cli(
        [
            "optimize",
            str(synthetic_fp32),
            "-o",
            str(out),
            "--for-quantization",
            "--no-check",
            "--no-measure",
            "--json",
        ],
        capsys,
    )
    assert result.exit_code == 0, result.stderr
    cli_settings = json.loads(result.stdout)["settings"]
    for name in ("cpu-int8", "cpu-int8-quick"):
        recipe = load_recipe(shipped_recipes()[name])
        (step,) = [s for s in recipe.steps if s.kind == "optimize"]
        assert step.config.model_dump(mode="json") == cli_settings


def test_cpu_int8_quantizes_with_the_pass_defaults() -> None:
    from kokoro_opt.passes import quantize_static

    recipe = load_recipe(shipped_recipes()["cpu-int8"])
    (step,) = [s for s in recipe.steps if s.kind == "quantize"]
    assert step.config == quantize_static.Config()
    assert step.config.per_channel is True  # type: ignore[attr-defined]
    kinds = [s.kind for s in recipe.steps]
    assert kinds[-1] == "gate" and kinds.index("quantize") < kinds.index("eval")


def test_quick_gate_rules_are_valid(tmp_path: Path) -> None:
    from kokoro_opt.gates import load_rules

    recipe = load_recipe(shipped_recipes()["cpu-int8-quick"])
    (gate,) = [s for s in recipe.steps if s.kind == "gate"]
    rules_path = Path(gate.config.rules)  # type: ignore[attr-defined]
    assert rules_path.is_absolute() and rules_path.is_file()
    rules = load_rules(rules_path)
    assert any(r.metric == "speedup" for r in rules.rules)
    # the recipe still finds its rules when copied elsewhere with its gates/ folder
    shutil.copytree(shipped_recipes()["cpu-int8-quick"].parent, tmp_path / "copy")
    copied = load_recipe(tmp_path / "copy" / "cpu-int8-quick.yaml")
    (gate,) = [s for s in copied.steps if s.kind == "gate"]
    assert Path(gate.config.rules).parent == tmp_path / "copy" / "gates"  # type: ignore[attr-defined]
