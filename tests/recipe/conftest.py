"""Helpers for recipe tests: write a recipe next to a copy of the synthetic model."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def recipe_dir(tmp_path: Path, synthetic_fp32: Path) -> Path:
    """A folder holding `synthetic.onnx` (a copy of the synthetic FP32 model) and `texts.txt`."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    shutil.copy(synthetic_fp32, folder / "synthetic.onnx")
    (folder / "texts.txt").write_text("Hello there, friend.\nA short one.\n")
    return folder


@pytest.fixture
def write_recipe(recipe_dir: Path) -> Callable[..., Path]:
    """write_recipe(text, name="r.yaml") -> path of the recipe file in `recipe_dir`."""

    def write(text: str, name: str = "r.yaml") -> Path:
        path = recipe_dir / name
        path.write_text(text)
        return path

    return write
