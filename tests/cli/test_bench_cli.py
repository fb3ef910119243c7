"""`kokoro-opt bench` on the synthetic model (and once on the real one): the provider check,
option validation, report files, speedups against the first model, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kokoro_opt.report.schema import load_report
from tests.cli_helpers import CliResult, run_cli


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    from kokoro_opt.cli import console

    monkeypatch.setattr(console.console, "width", 200)


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("Hello there, friend.\nA short one.\n")
    return path


def _one_line_error(result: CliResult, *needles: str) -> None:
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bench_coreml_on_this_build_is_one_line_exit_2(tmp_path: Path) -> None:
    """Exactly `kokoro-opt bench --provider coreml`: no model is loaded, nothing written."""
    import onnxruntime as ort

    if "CoreMLExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CoreML (macOS)")
    proc = subprocess.run(
        [sys.executable, "-m", "kokoro_opt", "bench", "--provider", "coreml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={"KOKORO_OPT_HOME": str(tmp_path / "empty-cache"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert (
        "Provider 'coreml' is not available in this onnxruntime build (available: cpu" in lines[0]
    )
    assert proc.stdout == ""
    assert not (tmp_path / "reports").exists() and not (tmp_path / "empty-cache").exists()


def test_bench_writes_report_with_speedups_against_the_first(
    synthetic_fp32: Path, synthetic_int8: Path, texts: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    result = run_cli(
        ["bench", str(synthetic_int8), str(synthetic_fp32), "--texts", str(texts),
         "--runs", "3", "--warmup", "1", "--threads", "1", "--concurrency", "2",
         "--no-memory", "--out", str(run), "--json"],
        capsys,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["baseline"] == "kokoro-synthetic-int8"
    assert [m["name"] for m in data["models"]] == ["kokoro-synthetic-int8", "kokoro-synthetic-fp32"]
    assert data["models"][0]["speedup"] == pytest.approx(1.0)
    for name in ("report.json", "report.md", "report.html"):
        assert (run / name).is_file()
    report = load_report(run)
    # Order as given: the first model is the baseline of the speedups.
    assert [m.name for m in report.models] == ["kokoro-synthetic-int8", "kokoro-synthetic-fp32"]
    (comparison,) = report.comparisons
    assert comparison.model == "kokoro-synthetic-fp32"
    assert comparison.reference == "kokoro-synthetic-int8" and comparison.n_texts == 2
    assert comparison.speedup == pytest.approx(data["models"][1]["speedup"])
    for m in report.models:
        s = m.speed
        assert s is not None and m.quality is None
        assert s.runs == 3 and s.warmup == 1 and s.peak_rss_mb is None
        assert s.latency_ms.median > 0 and s.rtf.p90 >= s.rtf.median
        assert s.ttfa_ms.p50 <= s.latency_ms.p90 + 1e-6 and s.cpu_time_s is not None
        assert s.concurrency is not None and s.concurrency.streams == 2
        assert s.concurrency.errors == []
    assert len(report.utterances) == 4
    assert all(len(r.latency_ms) == 3 and r.ttfa_ms and r.audio_s for r in report.utterances)
    assert report.run.host.provider == "cpu" and report.run.host.threads == 1


def test_bench_table_and_peak_memory(
    synthetic_fp32: Path, texts: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    result = run_cli(
        ["bench", str(synthetic_fp32), "--texts", str(texts), "--limit", "1", "--runs", "1",
         "--warmup", "0", "--out", str(run)],
        capsys,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "Speed over 1 texts x 1 runs, interleaved (speedup vs kokoro-synthetic-fp32)" in out
    assert "1.00x" in out and "report.html" in out
    speed = load_report(run).models[0].speed
    assert speed is not None and speed.peak_rss_mb is not None and speed.peak_rss_mb > 50


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--runs", "0"], ["--runs must be at least 1, got 0"]),
        (["--warmup", "-1"], ["--warmup must be at least 0, got -1"]),
        (["--concurrency", "0"], ["--concurrency must be at least 1"]),
        (["--threads", "0"], ["--threads must be at least 1"]),
        (["--texts", "smok"], ["Unknown --texts 'smok'"]),
        (["--limit", "0"], ["--limit must be at least 1"]),
        (["--voice", "af_heart"], ["Unknown voice 'af_heart'"]),
        (["--speed", "0.1"], ["Speed 0.1 is out of range"]),
        (["--provider", "tpu"], ["Unknown provider 'tpu'", "cpu, cuda, coreml, auto"]),
        (["--provider", "cuda"], ["'cuda' is not available", "available: cpu"]),
    ],
)
def test_bench_bad_options_are_one_line_exit_2(
    synthetic_fp32: Path, tmp_path: Path, capsys, extra: list[str], needles: list[str]
) -> None:
    run = tmp_path / "run"
    result = run_cli(["bench", str(synthetic_fp32), "--out", str(run), *extra], capsys)
    _one_line_error(result, *needles)
    assert not (run / "report.json").exists()


def test_bench_bad_models_and_texts(
    synthetic_fp32: Path, tmp_path: Path, capsys, kokoro_home: Path
) -> None:
    result = run_cli(["bench", str(tmp_path / "nope.onnx"), "--no-memory"], capsys)
    _one_line_error(result, "nope.onnx")
    result = run_cli(["bench", "kokoro-fp32"], capsys)  # an empty cache
    _one_line_error(result, "No model 'kokoro-fp32'", "kokoro-opt model pull")
    result = run_cli(["bench", str(synthetic_fp32), str(synthetic_fp32)], capsys)
    _one_line_error(result, "is given twice")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    result = run_cli(["bench", str(corrupt), "--out", str(tmp_path / "run")], capsys)
    _one_line_error(result, "corrupt.onnx")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = run_cli(["bench", str(synthetic_fp32), "--texts", str(empty)], capsys)
    _one_line_error(result, "has no text")


def test_bench_server_mode_rejects_models_and_bad_urls(synthetic_fp32: Path, capsys) -> None:
    result = run_cli(["bench", str(synthetic_fp32), "--server", "http://127.0.0.1:9"], capsys)
    _one_line_error(result, "--server measures the model the server has loaded")
    result = run_cli(["bench", "--server", "127.0.0.1:8880"], capsys)
    _one_line_error(result, "--server must be an http(s) URL")
    result = run_cli(["bench", "--server", "http://127.0.0.1:9", "--duration", "0"], capsys)
    _one_line_error(result, "duration must be a positive number")


@pytest.mark.real
def test_bench_real_models_on_two_smoke_texts(
    real_models: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    result = run_cli(
        ["bench", "kokoro-fp32", "kokoro-int8-export", "--texts", "smoke", "--limit", "2",
         "--runs", "1", "--warmup", "0", "--threads", "2", "--out", str(run), "--json"],
        capsys,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = load_report(run)
    fp32, int8 = report.models
    assert (fp32.name, int8.name) == ("kokoro-fp32", "kokoro-int8-export")
    assert fp32.quant_style == "float" and int8.quant_style == "dynamic-int8"
    assert 300e6 < fp32.size_bytes < 350e6 and 85e6 < int8.size_bytes < 100e6
    for m in report.models:
        s = m.speed
        # No absolute speed bound: the shared CI machine can be many times slower than idle.
        assert s is not None and s.rtf.median > 0 and s.runs == 1
        assert 0 < s.ttfa_ms.p50 <= s.latency_ms.p90 + 1e-6
        assert s.peak_rss_mb is not None and s.peak_rss_mb > 200
    (comparison,) = report.comparisons
    # Interleaved on a shared machine: the two stay within a factor of three of each other.
    assert 1 / 3 < comparison.speedup < 3.0
    assert fp32.speed.peak_rss_mb > int8.speed.peak_rss_mb
