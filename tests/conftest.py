"""Shared fixtures: the synthetic Kokoro-shaped models, a private cache, the real models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import build_dynamic_int8_model, build_fp32_model


@pytest.fixture(scope="session")
def synthetic_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the tiny FP32 Kokoro-shaped model (built once per test session)."""
    return build_fp32_model(tmp_path_factory.mktemp("synthetic") / "kokoro-synthetic-fp32.onnx")


@pytest.fixture(scope="session")
def synthetic_int8(synthetic_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the synthetic model dynamic-quantized like the real kokoro-onnx INT8 export."""
    out = tmp_path_factory.mktemp("synthetic-int8") / "kokoro-synthetic-int8.onnx"
    return build_dynamic_int8_model(synthetic_fp32, out)


@pytest.fixture
def kokoro_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty private model cache (KOKORO_OPT_HOME) for tests that write to the cache."""
    home = tmp_path / "kokoro-home"
    home.mkdir()
    monkeypatch.setenv("KOKORO_OPT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """The real Kokoro-82M models (INT8 export and restored FP32), pulled offline on demand."""
    from kokoro_opt.store import ensure_default_models

    return ensure_default_models()
