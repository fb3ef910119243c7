"""Recipe validation: every error names the file, the line and the key, before anything runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from kokoro_opt.errors import RecipeError, UserInputError
from kokoro_opt.recipe import load_recipe, parse_recipe, resolve_recipe, shipped_recipes
from kokoro_opt.recipe import steps as registry
from kokoro_opt.recipe.steps import ShapesOptions, StepKind

HEAD = "name: t\nmodel: kokoro-fp32\nsteps:\n"


def _error(text: str, source: str = "r.yaml") -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, source=source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_recipe_fills_defaults_and_ids(write_recipe: Callable[..., Path]) -> None:
    path = write_recipe(
        "version: 1\nname: demo\nmodel: synthetic.onnx\nsteps:\n"
        "  - optimize: {level: basic}\n"
        "  - optimize:\n      level: basic\n      portable: true\n"
        "  - shapes: {tokens: [64, 32, 64]}\n"
        "outputs:\n  model: final.onnx\n"
    )
    recipe = load_recipe(path)
    assert [s.id for s in recipe.steps] == ["optimize", "optimize-2", "shapes"]
    assert [s.line for s in recipe.steps] == [5, 6, 9]
    assert recipe.steps[1].config.portable is True  # type: ignore[attr-defined]
    assert isinstance(recipe.steps[2].config, ShapesOptions)
    assert recipe.steps[2].config.tokens == [32, 64]
    resolved = recipe.resolved()
    assert resolved["reference"] == "synthetic.onnx" and resolved["threads"] == 2
    assert resolved["steps"][0]["options"]["simplify"] is True  # the pass's default
    assert len(recipe.sha256) == 64 and recipe.path == path.absolute()


def test_unknown_step_names_line_and_suggests() -> None:
    message = _error(HEAD + "  - pull\n  - optimise: {}\n")
    assert message.startswith("r.yaml:5: steps[1]: unknown step 'optimise'")
    assert "did you mean 'optimize'" in message and "allowed steps: pull, optimize" in message


def test_unknown_option_names_step_key_and_line() -> None:
    message = _error(HEAD + "  - optimize:\n      level: basic\n      simplfy: false\n")
    assert message.startswith("r.yaml:6: steps[0] (optimize): simplfy: unknown key")
    assert "did you mean 'simplify'" in message and "allowed keys: level, simplify" in message


def test_wrong_type_names_step_key_and_line() -> None:
    message = _error(
        HEAD + "  - pull\n  - quantize:\n      per_channel: true\n      samples: many\n"
    )
    assert message.startswith("r.yaml:7: steps[1] (quantize): samples: Input should be a valid")
    assert "'many'" in message


def test_bad_enum_and_pass_rule_are_the_pass_config_messages() -> None:
    message = _error(HEAD + "  - optimize:\n      level: turbo\n")
    assert message.startswith("r.yaml:5: steps[0] (optimize): level:")
    assert "'basic', 'extended' or 'layout'" in message
    # a cross-field rule of the optimize Config itself
    message = _error(HEAD + "  - optimize:\n      level: extended\n      portable: true\n")
    assert message.startswith("r.yaml:4: steps[0] (optimize):")
    assert "portable output cannot use level 'extended'" in message
    # a rule of the quantize Config: the held-out split never calibrates
    message = _error(HEAD + "  - quantize:\n      calib: heldout\n")
    assert message.startswith("r.yaml:5: steps[0] (quantize): calib:")
    assert "held out" in message


def test_yaml_booleans_get_a_quoting_hint() -> None:
    message = _error(HEAD + "  - shapes:\n      length_mask: on\n")
    assert message.startswith("r.yaml:5: steps[0] (shapes): length_mask: Input should be")
    assert "YAML read the value as true: quote words such as 'on'" in message


def test_wrong_type_at_top_level() -> None:
    message = _error("name: t\nmodel: kokoro-fp32\nthreads: '2'\nsteps:\n  - pull\n")
    assert message.startswith("r.yaml:3: threads: Input should be a valid integer")


def test_executor_is_a_recipe_setting_checked_at_load() -> None:
    text = "name: t\nmodel: kokoro-fp32\nexecutor: processes:2\nsteps:\n  - pull\n"
    recipe = parse_recipe(text, source="r.yaml")
    assert recipe.executor == "processes:2" and recipe.resolved()["executor"] == "processes:2"
    assert parse_recipe(HEAD + "  - pull\n", source="r.yaml").executor == "local"
    message = _error("name: t\nmodel: kokoro-fp32\nexecutor: cluster\nsteps:\n  - pull\n")
    assert message.startswith("r.yaml:3: executor: Unknown executor 'cluster'"), message


def test_missing_required_and_unknown_top_level_keys() -> None:
    assert _error("name: t\nsteps:\n  - pull\n") == "r.yaml:1: model: missing required key."
    message = _error("name: t\nmodel: kokoro-fp32\nstep:\n  - pull\n")
    assert message.startswith("r.yaml:3: step: unknown key (did you mean 'steps'?)")


def test_missing_model_file(write_recipe: Callable[..., Path], recipe_dir: Path) -> None:
    path = write_recipe("name: t\nmodel: models/none.onnx\nsteps:\n  - optimize: {}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: model: model file 'models/none.onnx' does not exist")
    assert str(recipe_dir / "models/none.onnx") in message


def test_missing_file_in_an_option(write_recipe: Callable[..., Path]) -> None:
    path = write_recipe(
        "name: t\nmodel: synthetic.onnx\nsteps:\n  - eval:\n      asr: false\n"
        "      texts: missing.txt\n"
    )
    with pytest.raises(
        RecipeError,
        match=rf"^{re.escape(str(path))}:6: steps\[0\] \(eval\): "
        r"texts: 'missing.txt' is neither a built-in split",
    ):
        load_recipe(path)
    path = write_recipe(HEAD + "  - bench: {}\n  - gate:\n      rules: nope.yaml\n")
    with pytest.raises(RecipeError, match=r":6: steps\[1\] \(gate\): rules: Gate rules 'nope"):
        load_recipe(path)


def test_relative_option_paths_are_read_from_the_recipe_folder(
    write_recipe: Callable[..., Path], recipe_dir: Path
) -> None:
    path = write_recipe(
        "name: t\nmodel: synthetic.onnx\nsteps:\n  - eval: {texts: texts.txt, asr: false}\n"
    )
    recipe = load_recipe(path)
    assert recipe.steps[0].config.texts == str(recipe_dir / "texts.txt")  # type: ignore[attr-defined]


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="is a folder"):
        load_recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"Recipe file '.*nope.yaml' does not exist"):
        resolve_recipe(tmp_path / "nope.yaml")


def test_malformed_yaml_names_line_and_column() -> None:
    message = _error(HEAD + "  - optimize: {level: basic\n  - pull\n")
    assert re.match(r"r\.yaml:6:\d+: malformed YAML \(", message)
    message = _error("name: t\nmodel: [kokoro-fp32\nsteps: []\n")
    assert re.match(r"r\.yaml:3:\d+: malformed YAML", message)
    assert _error("").startswith("r.yaml:1: a recipe must be a mapping")


def test_duplicate_key() -> None:
    message = _error("name: t\nmodel: kokoro-fp32\nmodel: x.onnx\nsteps:\n  - pull\n")
    assert message == "r.yaml:3: key 'model' appears twice in one mapping; keep one."


def test_step_shape_errors() -> None:
    assert "options must be a mapping" in _error(HEAD + "  - optimize: [1]\n")
    message = _error(HEAD + "  - optimize: {}\n    quantize: {}\n")
    assert message.startswith("r.yaml:4: steps[0]: a step is one key")
    assert "2 keys (optimize, quantize)" in message
    assert _error("name: t\nmodel: kokoro-fp32\nsteps: []\n").startswith("r.yaml:3: steps:")


def test_unsupported_version() -> None:
    message = _error("version: 2\n" + HEAD + "  - pull\n")
    assert message.startswith("r.yaml:1: version: recipe version 2 is not supported")


def test_output_model_must_be_a_file_name() -> None:
    message = _error(HEAD + "  - pull\noutputs:\n  model: ../x.onnx\n")
    assert message.startswith("r.yaml:6: outputs.model: '../x.onnx' is not a plain .onnx file")


@pytest.mark.parametrize(
    ("steps", "line", "words"),
    [
        ("  - optimize: {}\n  - pull\n", 5, "pull must come before every other step"),
        ("  - gate: {}\n", 4, "gate checks the evidence report"),
        ("  - quantize: {}\n  - int4: {}\n", 5, "int4 needs a float model"),
        ("  - shapes: {}\n  - optimize: {}\n", 5, "a model step cannot follow steps[0] (shapes)"),
        ("  - shapes: {}\n  - shapes: {}\n", 5, "only one shapes step"),
        ("  - shapes:\n      window_frames: 24\n", 4, "put a split step before it"),
        (
            "  - split: {}\n  - shapes: {window_frames: 8}\n  - shapes: {window_frames: 9}\n",
            6,
            "only one shapes step with window_frames",
        ),
        ("  - split: {}\n  - split: {}\n", 5, "only one split step"),
    ],
)
def test_step_order(steps: str, line: int, words: str) -> None:
    message = _error(HEAD + steps)
    assert message.startswith(f"r.yaml:{line}: steps[")
    assert words in message


def test_bad_bucket_is_the_static_shapes_config_message() -> None:
    message = _error(HEAD + "  - shapes:\n      tokens: [32, 900]\n")
    assert message.startswith("r.yaml:5: steps[0] (shapes): tokens: bucket 900:")
    assert "less than or equal to 512" in message


def test_step_whose_module_is_missing_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = StepKind(
        "future",
        "transform",
        "A pass this kokoro-opt does not have.",
        "kokoro-opt future",
        "kokoro_opt.passes.not_written_yet:Config",
        "kokoro_opt.passes.not_written_yet:run",
    )
    monkeypatch.setitem(registry.STEP_KINDS, "future", kind)
    message = _error(HEAD + "  - pull\n  - future: {}\n")
    assert message == (
        "r.yaml:5: steps[1] (future): this step is not available in this kokoro-opt yet "
        "(kokoro_opt.passes.not_written_yet is not installed); remove it from the recipe or "
        "update kokoro-opt."
    )


def test_resolve_recipe_by_shipped_name() -> None:
    shipped = shipped_recipes()
    assert resolve_recipe("cpu-int8") == shipped["cpu-int8"]
    assert resolve_recipe("cpu-int8.yaml") == shipped["cpu-int8"]
    with pytest.raises(RecipeError, match="Did you mean 'cpu-int8'"):
        resolve_recipe("cpu-int9")
    assert issubclass(RecipeError, UserInputError)  # exit code 2 at the CLI


def test_window_frames_bind_a_split_not_token_buckets() -> None:
    message = _error(
        HEAD + "  - split: {}\n  - shapes:\n      window_frames: 24\n      tokens: [32]\n"
    )
    assert message.startswith("r.yaml:5: steps[1] (shapes): ")
    assert "window_frames binds the split folder's back graphs" in message
    message = _error(HEAD + "  - split: {}\n  - shapes:\n      window_frames: 0\n")
    assert "a window holds 1 to 2048 frames, got 0" in message
