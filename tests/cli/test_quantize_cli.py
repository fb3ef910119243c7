"""`kokoro-opt quantize`: model + manifest written atomically, tables, JSON, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kokoro_opt.cli import quantize as quantize_cli
from kokoro_opt.graph.io import sha256_file
from kokoro_opt.passes import quantize_static
from tests.cli_helpers import run_cli


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOKORO_OPT_WIDTH", "160")


def test_quantize_writes_model_and_manifest(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "out" / "int8.onnx"
    res = run_cli(["quantize", str(synthetic_fp32), "-o", str(out), "--samples", "3"], capsys)
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((tmp_path / "out" / "int8.onnx.json").read_text())
    assert manifest["input_sha256"] == sha256_file(synthetic_fp32)
    assert manifest["output_sha256"] == sha256_file(out)
    assert manifest["settings"]["per_channel"] is True
    assert manifest["settings"]["samples"] == 3
    corpus = manifest["details"]["calibration"]
    assert len(corpus["corpus_sha256"]) == 64 and corpus["corpus"] == "train"
    assert manifest["versions"]["onnxruntime"] and manifest["versions"]["misaki"]
    assert manifest["elapsed_s"] > 0
    assert "Conv" in res.stdout and "Size" in res.stdout
    assert manifest["settings"]["rewrites"] == ["instnorm", "conv2d"]
    assert "Rewrites" in res.stdout and "conv2d" in res.stdout
    assert manifest["settings"]["lookup_tables"] == "all"
    assert manifest["details"]["lookup_tables"]["rewritten"] == 0  # no AdaIN in this model
    assert sorted(p.name for p in out.parent.iterdir()) == ["int8.onnx", "int8.onnx.json"]


def test_quantize_json_and_options(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "pt.onnx"
    args = ["quantize", str(synthetic_fp32), "-o", str(out), "--samples", "2", "--per-tensor"]
    args += ["--all-nodes", "--ops", "Conv,MatMul", "--exclude", "*/conv_post/*"]
    args += ["--method", "minmax", "--voices", "jf_alpha", "--speeds", "1.0", "--json"]
    args += ["--rewrites", "none", "--lookup-tables", "none"]
    res = run_cli(args, capsys)
    assert res.exit_code == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert manifest["settings"]["per_channel"] is False
    assert manifest["settings"]["include"] == []
    assert manifest["settings"]["rewrites"] == [] and manifest["details"]["rewrites"] == {}
    assert manifest["details"]["lookup_tables"] == {}
    assert manifest["details"]["quantized"]["MatMul"] >= 1
    assert "/decoder/decoder/generator/conv_post/Conv" in manifest["details"]["excluded"]
    assert manifest["details"]["calibration"]["voices"] == {"jf_alpha": 2}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ops", "LSTM"], "cannot be quantized statically"),
        (["--ops", "Conv,Banana"], "unknown op type"),
        (["--rewrites", "instnorm,gelu"], "unknown rewrite"),
        (["--lookup-tables", "some"], "lookup_tables"),
        (["--calib", "missing-corpus.txt"], "does not exist"),
        (["--calib", "heldout"], "held out"),
        (["--speeds", "fast"], "--speeds"),
        (["--voices", "af_heart"], "af_heart"),
    ],
)
def test_bad_options_are_one_line_exit_2(
    extra: list[str],
    message: str,
    synthetic_fp32: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kokoro_home: Path,
) -> None:
    out = tmp_path / "out" / "q.onnx"
    res = run_cli(
        ["quantize", str(synthetic_fp32), "-o", str(out), "--samples", "2", *extra], capsys
    )
    assert res.exit_code == 2, res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_unwritable_output_and_quantized_input(
    synthetic_fp32: Path,
    synthetic_int8: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kokoro_home: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = run_cli(["quantize", str(synthetic_fp32), "-o", str(blocker / "q.onnx")], capsys)
    assert res.exit_code == 2 and "not a folder" in res.stderr
    res = run_cli(["quantize", str(synthetic_fp32), "-o", str(tmp_path)], capsys)
    assert res.exit_code == 2 and "is a folder" in res.stderr
    out = tmp_path / "again.onnx"
    res = run_cli(["quantize", str(synthetic_int8), "-o", str(out)], capsys)
    assert res.exit_code != 0 and "already quantized" in res.stderr
    assert not out.exists()


def test_cli_defaults_match_the_pass() -> None:
    config = quantize_static.Config()
    assert config.method == quantize_cli.DEFAULT_METHOD
    assert config.samples == quantize_cli.DEFAULT_SAMPLES
    assert quantize_cli.DEFAULT_OPS.split(",") == config.ops
    assert config.percentile == quantize_cli.DEFAULT_PERCENTILE
    assert config.output_percentile == quantize_cli.DEFAULT_OUTPUT_PERCENTILE
    assert quantize_cli.DEFAULT_REWRITES.split(",") == config.rewrites
