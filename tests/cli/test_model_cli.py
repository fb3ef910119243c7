"""`kokoro-opt model pull | list | inspect` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from kokoro_opt.cli import console as console_module

    for c in (console_module.console, console_module.err_console):
        monkeypatch.setattr(c, "width", 200)


def test_list_empty_cache(kokoro_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["model", "list"], capsys)
    assert result.exit_code == 0
    assert "No models in" in result.stdout and "kokoro-opt model pull" in result.stdout
    result = run_cli(["model", "list", "--json"], capsys)
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_pull_path_list_and_inspect(
    kokoro_home: Path, synthetic_int8: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli(["model", "pull", str(synthetic_int8), "--name", "tiny-int8"], capsys)
    assert result.exit_code == 0, result.stderr
    assert "tiny-int8" in result.stdout and "user" in result.stdout

    result = run_cli(["model", "list", "--json"], capsys)
    rows = json.loads(result.stdout)
    assert [(r["name"], r["kind"]) for r in rows] == [("tiny-int8", "user")]

    result = run_cli(["model", "list"], capsys)
    assert "tiny-int8" in result.stdout and "Cached models" in result.stdout

    result = run_cli(["model", "inspect", "tiny-int8", "--json", "--top", "2"], capsys)
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["quant_style"] == "dynamic-int8"
    assert info["path"] == rows[0]["path"]
    assert len(info["largest_tensors"]) == 2
    assert [i["name"] for i in info["inputs"]] == ["tokens", "style", "speed"]

    result = run_cli(["model", "inspect", "tiny-int8"], capsys)
    assert result.exit_code == 0, result.stderr
    for heading in ("Inputs and outputs", "Parameters by dtype", "Op histogram", "MatMulInteger"):
        assert heading in result.stdout
    assert "dynamic-int8" in result.stdout


def test_inspect_a_path(synthetic_fp32: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["model", "inspect", str(synthetic_fp32), "--json"], capsys)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["quant_style"] == "float"


def test_pull_json(
    kokoro_home: Path, synthetic_fp32: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli(["model", "pull", str(synthetic_fp32), "--json"], capsys)
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["kokoro-synthetic-fp32"]


def _one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_inspect_missing_model(kokoro_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["model", "inspect", "no-such-model"], capsys)
    _one_line_error(result, 2, "No model 'no-such-model'", "kokoro-opt model pull")


@pytest.mark.parametrize("cut", [0.0, 0.5])
def test_inspect_corrupt_or_truncated(
    tmp_path: Path, synthetic_fp32: Path, capsys: pytest.CaptureFixture[str], cut: float
) -> None:
    data = synthetic_fp32.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: int(len(data) * cut)] if cut else b"\x00garbage" * 50)
    result = run_cli(["model", "inspect", str(bad)], capsys)
    _one_line_error(result, 2, "is not a valid ONNX model")


def test_pull_checksum_mismatch(
    kokoro_home: Path, synthetic_fp32: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli(["model", "pull", str(synthetic_fp32), "--sha256", "1" * 64], capsys)
    _one_line_error(result, 1, "Checksum mismatch")
    assert not list((kokoro_home / "models").glob("*.onnx"))


def test_pull_options_need_a_path(kokoro_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["model", "pull", "--name", "x"], capsys)
    _one_line_error(result, 2, "--name and --sha256 apply to PATH_OR_URL")


def test_pull_missing_path(kokoro_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["model", "pull", "/no/such/file.onnx"], capsys)
    _one_line_error(result, 2, "Model file not found")


@pytest.mark.real
def test_inspect_the_real_fp32(real_models: dict[str, Path], capsys) -> None:
    result = run_cli(["model", "inspect", str(real_models["kokoro-fp32"]), "--json"], capsys)
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["quant_style"] == "float" and info["node_count"] == 2366
