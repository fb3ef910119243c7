"""`kokoro-opt pin apply|analyze|search` and `kokoro-opt fp16`: outputs, JSON, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.cli_helpers import run_cli


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOKORO_OPT_WIDTH", "160")


def _one_line_error(res, code: int = 2) -> str:  # noqa: ANN001
    assert res.exit_code == code, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_apply_writes_model_and_manifest(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "pinned.onnx"
    args = ["pin", "apply", str(synthetic_fp32), "-o", str(out), "--samples", "3"]
    res = run_cli([*args, "--keep", "generator/conv_post", "--keep", "bert"], capsys)
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((tmp_path / "pinned.onnx.json").read_text())
    assert manifest["details"]["kept"] == ["bert", "generator/conv_post"]
    assert manifest["calibration"]["reused"] is False
    assert "FP32" in res.stdout and "INT8" in res.stdout
    model = onnx.load(str(out))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    post = next(n for n in model.graph.node if n.name.endswith("conv_post/Conv"))
    assert producers.get(post.input[1]) != "DequantizeLinear"
    # A second build reuses the cached calibration.
    res = run_cli([*args, "--keep", "generator/*", "--json"], capsys)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["calibration"]["reused"] is True


def test_apply_fp16_says_cpu_is_slow_and_measures(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "fp16-pinned.onnx"
    res = run_cli(
        ["pin", "apply", str(synthetic_fp32), "-o", str(out), "--samples", "3",
         "--keep", "generator/resblocks.0", "--precision", "fp16"],
        capsys,
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "FP16" in res.stderr and "slower" in res.stderr
    timing = json.loads((tmp_path / "fp16-pinned.onnx.json").read_text())["fp16_cpu_timing"]
    assert timing["latency_ratio"] > 0 and "ratio" in res.stdout


def test_fp16_command(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "fp16.onnx"
    res = run_cli(["fp16", str(synthetic_fp32), "-o", str(out), "--sentences", "1"], capsys)
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((tmp_path / "fp16.onnx.json").read_text())
    assert manifest["checker"] == "passed"
    assert manifest["audio_check"]["nonfinite_sentences"] == 0
    assert manifest["audio_check"]["logmel_distance"] < 0.5
    assert "onnx.checker passed" in res.stdout
    onnx.checker.check_model(str(out))


def test_analyze_json_and_file(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    target = tmp_path / "analysis.json"
    res = run_cli(
        ["pin", "analyze", str(synthetic_fp32), "--samples", "3", "--sentences", "1",
         "--group", "generator/*", "--no-qdq-debug", "--json", "-o", str(target)],
        capsys,
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    printed = json.loads(res.stdout)
    assert printed["groups"] == json.loads(target.read_text())["groups"]
    assert {r["group"] for r in printed["groups"]} == {
        "generator/conv_pre", "generator/style_fc", "generator/ups.0",
        "generator/noise_convs.0", "generator/resblocks.0", "generator/conv_post",
    }  # fmt: skip
    # The same analysis measured in two worker processes gives the same distances.
    res = run_cli(
        ["pin", "analyze", str(synthetic_fp32), "--samples", "3", "--sentences", "1",
         "--group", "generator/*", "--no-qdq-debug", "--json", "--executor", "processes:2"],
        capsys,
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    elsewhere = json.loads(res.stdout)
    assert elsewhere["executor"] == "processes:2" and printed["executor"] == "local"
    alone = {r["group"]: r["logmel_alone"] for r in printed["groups"]}
    assert {r["group"]: r["logmel_alone"] for r in elsewhere["groups"]} == pytest.approx(
        alone, abs=1e-6
    )
    # The search takes its order from that file.
    res = run_cli(
        ["pin", "search", str(synthetic_fp32), "--samples", "3", "--sentences", "1",
         "--max-logmel", "50", "--timing-runs", "1", "--analysis", str(target),
         "--confirm-sentences", "3", "-o", str(tmp_path / "search")],
        capsys,
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "checked on 3" in res.stdout
    result = json.loads((tmp_path / "search" / "search.json").read_text())
    assert result["confirm"]["sentences"] == 3
    assert result["steps"][0]["confirmation"]["sentences"] == 3
    assert result["order"][:6] == [
        r["group"] for r in sorted(printed["groups"], key=lambda r: -r["sensitivity_per_time"])
    ]
    assert (tmp_path / "search" / "report.html").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pin", "apply", "{fp32}", "-o", "{out}", "--keep", "generator/nope"], "Unknown group"),
        (["pin", "apply", "{fp32}", "-o", "{out}", "--precision", "bf16"], "Unknown precision"),
        (["pin", "apply", "{fp32}", "-o", "{out}", "--keep-fp32", "x"], "--keep-fp32 only"),
        (["pin", "apply", "{missing}", "-o", "{out}"], "No model"),
        (["pin", "apply", "{int8}", "-o", "{out}"], "already quantized"),
        (["pin", "analyze", "{int8}"], "already quantized"),
        (["pin", "analyze", "{fp32}", "--executor", "grid"], "Unknown executor 'grid'"),
        (["pin", "search", "{fp32}", "-o", "{dir}", "--max-logmel", "1", "--executor",
          "processes:0"], "worker processes must be a whole number"),
        (["pin", "analyze", "{fp32}", "--ranges", "{missing}"], "not a calibration cache"),
        (["pin", "search", "{fp32}", "-o", "{dir}"], "No quality budget"),
        (["pin", "search", "{fp32}", "-o", "{dir}", "--budget", "wer=abc"], "Cannot read budget"),
        (["pin", "search", "{fp32}", "-o", "{dir}", "--max-logmel", "-2"], "positive"),
        (["pin", "search", "{fp32}", "-o", "{dir}", "--budget", "wer=1", "--max-logmel", "1"],
         "not both"),
        (["pin", "search", "{fp32}", "-o", "{dir}", "--max-logmel", "1", "--analysis",
          "{missing}"], "not a `kokoro-opt pin analyze"),
        (["pin", "search", "{fp32}", "-o", "{dir}", "--max-logmel", "1", "--max-logmel-of",
          "{fp32}"], "not both"),
        (["pin", "search", "{fp32}", "-o", "{dir}", "--max-logmel-of", "{missing}"], "No model"),
        (["pin", "search", "{fp32}", "-o", "{dir}", "--max-logmel", "1", "--confirm-sentences",
          "5"], "more than --sentences (12)"),
        (["pin", "search", "{fp32}", "-o", "{dir}", "--max-logmel", "1", "--confirm-sentences",
          "999"], "at most 80"),
        (["fp16", "{missing}", "-o", "{out}"], "No model"),
        (["fp16", "{int8}", "-o", "{out}"], "already quantized"),
        (["fp16", "{fp32}", "-o", "{out}", "--keep-fp32", "re:("], "regular expression"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2(
    args: list[str],
    message: str,
    synthetic_fp32: Path,
    synthetic_int8: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kokoro_home: Path,
) -> None:
    values = {
        "fp32": str(synthetic_fp32),
        "int8": str(synthetic_int8),
        "missing": str(tmp_path / "missing.onnx"),
        "out": str(tmp_path / "out.onnx"),
        "dir": str(tmp_path / "search"),
    }
    res = run_cli([a.format(**values) for a in args], capsys)
    assert message in _one_line_error(res)
    assert not (tmp_path / "out.onnx").exists()
