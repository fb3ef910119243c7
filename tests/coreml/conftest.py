"""Fixtures: small CoreML ML programs built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.coreml.programs import build_mlpackage


@pytest.fixture(scope="session")
def mlpackage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An iOS18 ML program (every compression mode applies)."""
    return build_mlpackage(tmp_path_factory.mktemp("coreml") / "small.mlpackage")


@pytest.fixture(scope="session")
def mlpackage_ios16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An iOS16 ML program (no int4 or grouped palettes)."""
    return build_mlpackage(
        tmp_path_factory.mktemp("coreml16") / "small16.mlpackage", target="iOS16"
    )
