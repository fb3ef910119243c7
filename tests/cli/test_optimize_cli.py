"""`kokoro-opt optimize`: table, manifest, portable output, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from kokoro_opt.graph.edit import non_standard_ops
from tests.cli_helpers import run_cli


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOKORO_OPT_WIDTH", "160")


def test_optimize_writes_model_manifest_and_table(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "opt" / "model.onnx"
    res = run_cli(["optimize", str(synthetic_fp32), "-o", str(out), "--runs", "2"], capsys)
    assert res.exit_code == 0, res.stderr
    assert out.is_file()
    manifest = json.loads(out.with_name("model.onnx.json").read_text())
    assert manifest["command"] == "optimize"
    assert manifest["settings"]["level"] == "extended"
    assert manifest["settings"]["rewrites"] == ["instnorm", "snake", "conv2d"]
    assert len(manifest["input_sha256"]) == 64 and manifest["versions"]["onnxruntime"]
    assert manifest["audio_check"]["within_noise"] is True
    assert set(manifest["latency"]["models"]) == {"before", "after"}
    stages = manifest["details"]["stages"]
    assert stages["rewrites"]["snake"]["rewritten"] == 2
    assert stages["rewrites"]["conv2d"]["rewritten"] == 4
    # the table: changed op types, totals, latency and audio verdict
    assert "all nodes" in res.stdout and "Squeeze" in res.stdout
    assert "within float noise" in res.stdout and "paired ratio" in res.stdout


def test_portable_output_is_standard_onnx(
    synthetic_int8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "portable.onnx"
    res = run_cli(
        ["optimize", str(synthetic_int8), "-o", str(out), "--portable", "--no-measure", "--json"],
        capsys,
    )
    assert res.exit_code == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert manifest["settings"]["level"] == "basic" and manifest["settings"]["portable"]
    assert manifest["details"]["non_standard_ops"] == {}
    assert non_standard_ops(onnx.load(out)) == {}
    assert manifest["latency"] is None
    assert "float LSTM" in res.stderr  # the numerics warning for DynamicQuantizeLSTM


def test_layout_level_warns(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "layout.onnx"
    res = run_cli(
        [
            "optimize",
            str(synthetic_fp32),
            "-o",
            str(out),
            "--level",
            "layout",
            "--no-measure",
            "--no-check",
            "--rewrite",
            "none",
        ],
        capsys,
    )
    assert res.exit_code == 0, res.stderr
    assert "tied to the machine" in res.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--portable", "--level", "extended"], "--portable cannot be combined with --level"),
        (["--level", "fast"], "--level must be one of basic, extended, layout"),
        (["--rewrite", "snake,magic"], "Unknown rewrite 'magic'"),
        (["--runs", "0"], "--runs must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(
    synthetic_fp32: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kokoro_home: Path,
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "x.onnx"
    res = run_cli(["optimize", str(synthetic_fp32), "-o", str(out), *extra], capsys)
    assert res.exit_code == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_paths(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    res = run_cli(
        ["optimize", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")], capsys
    )
    assert res.exit_code == 2 and "missing.onnx" in res.stderr
    res = run_cli(["optimize", str(synthetic_fp32), "-o", str(tmp_path)], capsys)
    assert res.exit_code == 2 and "is a folder" in res.stderr
    res = run_cli(["optimize", str(synthetic_fp32), "-o", str(synthetic_fp32)], capsys)
    assert res.exit_code == 2
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    res = run_cli(["optimize", str(corrupt), "-o", str(tmp_path / "c.onnx")], capsys)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.real
def test_real_int8_export_optimizes(
    real_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a dynamic-INT8 model the rewrites change the activations that get quantized at run
    time, so durations and audio move by about as much as the export differs from FP32 (0.25
    vs 0.28 log-mel): real speech, not float noise, and the command says so."""
    out = tmp_path / "int8-opt.onnx"
    res = run_cli(
        [
            "optimize",
            str(real_models["kokoro-int8-export"]),
            "-o",
            str(out),
            "--no-measure",
            "--json",
        ],
        capsys,
    )
    assert res.exit_code == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert manifest["details"]["nodes_after"] < manifest["details"]["nodes_before"]
    assert manifest["details"]["stages"]["rewrites"]["instnorm"]["matched"] > 0
    check = manifest["audio_check"]
    assert check["nonfinite"] == 0
    assert check["max_logmel_distance"] < 0.4
    assert check["within_noise"] is False
    assert any("dynamic INT8" in w for w in manifest["details"]["warnings"])


def test_for_quantization_keeps_standard_ops_and_matmuls(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "pre.onnx"
    res = run_cli(
        [
            "optimize",
            str(synthetic_fp32),
            "-o",
            str(out),
            "--for-quantization",
            "--no-measure",
            "--json",
        ],
        capsys,
    )
    assert res.exit_code == 0, res.stderr
    manifest = json.loads(res.stdout)
    settings = manifest["settings"]
    assert (settings["level"], settings["simplify"], settings["fusion"]) == ("basic", False, False)
    assert settings["rewrites"] == ["instnorm", "conv2d"]  # no Snake fold before INT8
    model = onnx.load(out)
    assert non_standard_ops(model) == {}
    assert sum(n.op_type == "MatMul" for n in model.graph.node) == 4  # no Gemm fusion
    res = run_cli(
        [
            "optimize",
            str(synthetic_fp32),
            "-o",
            str(out),
            "--for-quantization",
            "--level",
            "extended",
        ],
        capsys,
    )
    assert res.exit_code == 2 and "--for-quantization cannot be combined" in res.stderr
