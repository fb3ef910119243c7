"""One pass, one manifest: `kokoro-opt quantize` and a recipe's quantize step write the same
keys and record the same settings (and versions) for the same pass and options."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kokoro_opt.recipe import load_recipe
from kokoro_opt.recipe.runner import run_recipe
from tests.cli_helpers import run_cli

RECIPE = """\
name: parity
model: synthetic.onnx
threads: 1
steps:
  - quantize:
      samples: 3
      seed: 7
outputs:
  model: final.onnx
"""


def test_quantize_command_and_recipe_step_write_the_same_manifest(
    write_recipe: Callable[..., Path],
    recipe_dir: Path,
    tmp_path: Path,
    kokoro_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = run_recipe(load_recipe(write_recipe(RECIPE)), reports_root=tmp_path / "reports")
    assert run.status == "succeeded"
    step = json.loads((run.run_dir / "quantize" / "model.onnx.json").read_text())

    out = tmp_path / "cli" / "int8.onnx"
    model = recipe_dir / "synthetic.onnx"
    res = run_cli(
        ["quantize", str(model), "-o", str(out), "--samples", "3", "--seed", "7", "--threads", "1"],
        capsys,
    )
    assert res.exit_code == 0, res.stderr
    cli = json.loads(out.with_name(out.name + ".json").read_text())

    assert sorted(cli) == sorted(step)
    assert cli["settings"] == step["settings"]
    assert sorted(cli["details"]) == sorted(step["details"])
    assert cli["versions"] == step["versions"] and "spacy" in cli["versions"]
    assert cli["input_sha256"] == step["input_sha256"]
    assert cli["output_sha256"] == step["output_sha256"]  # the same pass gives the same model
    assert (cli["command"], step["command"]) == ("quantize", "run parity (quantize)")
