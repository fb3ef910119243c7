"""`kokoro-opt eval` on the synthetic model (and once on the real one): report files, WAVs,
merging, model order, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kokoro_opt.report.schema import load_report
from tests.cli_helpers import CliResult, run_cli


def _one_line_error(result: CliResult, *needles: str) -> None:
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    from kokoro_opt.cli import console

    monkeypatch.setattr(console.console, "width", 200)


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("Hello there, friend.\n\nA short one.\n")
    return path


def test_eval_writes_report_and_wavs_reference_first(
    synthetic_fp32: Path, synthetic_int8: Path, texts: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    args = ["eval", str(synthetic_int8), "--reference", str(synthetic_fp32), "--texts", str(texts)]
    result = run_cli([*args, "--no-asr", "--threads", "1", "--out", str(run), "--json"], capsys)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["reference"] == "kokoro-synthetic-fp32" and data["texts"] == 2
    assert data["asr"] is None
    for name in ("report.json", "report.md", "report.html"):
        assert (run / name).is_file()
    report = load_report(run)
    # The reference was not among MODELs: it is added and listed first.
    assert [m.name for m in report.models] == ["kokoro-synthetic-fp32", "kokoro-synthetic-int8"]
    ref, int8 = report.models
    assert ref.quality.reference is None and int8.quality.reference == ref.name
    assert int8.quality.logmel_distance > 0 and int8.quality.duration_ratio > 0
    assert int8.quality.wer is None and ref.speed is None
    assert int8.quant_style == "dynamic-int8" and ref.quant_style == "float"
    rows = report.rows(int8.name)
    assert [r.text for r in rows] == ["Hello there, friend.", "A short one."]
    for row in report.utterances:
        assert row.wav is not None and (run / row.wav).is_file()
    assert (run / "wav" / "kokoro-synthetic-int8" / "001.wav").is_file()
    assert "wav/kokoro-synthetic-int8/000.wav" in (run / "report.md").read_text()


def test_eval_reference_among_models_keeps_one_entry_and_tables(
    synthetic_fp32: Path, synthetic_int8: Path, texts: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    result = run_cli(
        ["eval", str(synthetic_int8), str(synthetic_fp32), "--reference", str(synthetic_fp32),
         "--texts", str(texts), "--limit", "1", "--no-asr", "--out", str(run)],
        capsys,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "Fidelity over 1 texts (reference: kokoro-synthetic-fp32)" in out
    assert "kokoro-synthetic-fp32 (reference)" in out and "Per utterance" in out
    report = load_report(run)
    assert [m.name for m in report.models] == ["kokoro-synthetic-fp32", "kokoro-synthetic-int8"]
    assert len(report.utterances) == 2


def test_eval_merges_into_an_existing_bench_report(
    synthetic_fp32: Path, synthetic_int8: Path, texts: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    common = ["--texts", str(texts), "--out", str(run), "--threads", "1"]
    bench = run_cli(
        ["bench", str(synthetic_fp32), str(synthetic_int8), "--runs", "2", "--warmup", "0",
         "--no-memory", *common],
        capsys,
    )  # fmt: skip
    assert bench.exit_code == 0, bench.stderr
    evald = run_cli(
        ["eval", str(synthetic_int8), "--reference", str(synthetic_fp32), "--no-asr", *common],
        capsys,
    )
    assert evald.exit_code == 0, evald.stderr
    report = load_report(run)
    assert all(m.speed is not None and m.quality is not None for m in report.models)
    assert len(report.utterances) == 4  # same texts: bench and eval fill the same rows
    assert all(r.latency_ms and r.wav for r in report.utterances)
    assert report.comparison("kokoro-synthetic-int8") is not None
    assert any(n.startswith("Merged from: ") and " eval " in n for n in report.notes)


def test_eval_refuses_to_merge_another_file_of_the_same_name(
    synthetic_fp32: Path, synthetic_int8: Path, texts: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    args = ["--texts", str(texts), "--no-asr", "--out", str(run)]
    ok = run_cli(["eval", str(synthetic_int8), "--reference", str(synthetic_fp32), *args], capsys)
    assert ok.exit_code == 0
    before = (run / "report.json").read_text()
    other = tmp_path / "other" / "kokoro-synthetic-int8.onnx"
    other.parent.mkdir()
    shutil.copy(synthetic_fp32, other)
    result = run_cli(["eval", str(other), "--reference", str(synthetic_fp32), *args], capsys)
    _one_line_error(result, "already has a model 'kokoro-synthetic-int8' that is another file")
    assert (run / "report.json").read_text() == before


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--texts", "heldot"], ["Unknown --texts 'heldot'", "smoke, heldout"]),
        (["--limit", "0"], ["--limit must be at least 1"]),
        (["--voice", "nobody"], ["Unknown voice 'nobody'"]),
        (["--speed", "3"], ["Speed 3.0 is out of range"]),
        (["--provider", "coreml"], ["'coreml' is not available", "available: cpu"]),
        (["--reference", "no-such-model"], ["No model 'no-such-model'"]),
        (["--executor", "processes:0"], ["worker processes must be a whole number"]),
        (["--executor", "cluster"], ["Unknown executor 'cluster'"]),
    ],
)
def test_eval_bad_input_is_one_line_exit_2(
    synthetic_int8: Path, tmp_path: Path, capsys, extra: list[str], needles: list[str]
) -> None:
    run = tmp_path / "run"
    result = run_cli(["eval", str(synthetic_int8), "--no-asr", "--out", str(run), *extra], capsys)
    _one_line_error(result, *needles)
    assert not (run / "report.json").exists()


def test_eval_missing_model_and_empty_text_file(
    synthetic_fp32: Path, tmp_path: Path, capsys
) -> None:
    missing = tmp_path / "missing.onnx"
    result = run_cli(["eval", str(missing), "--reference", str(synthetic_fp32)], capsys)
    _one_line_error(result, "missing.onnx")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = run_cli(
        ["eval", str(synthetic_fp32), "--reference", str(synthetic_fp32), "--texts", str(empty)],
        capsys,
    )
    _one_line_error(result, "has no text")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    result = run_cli(
        ["eval", str(synthetic_fp32), "--reference", str(synthetic_fp32), "--texts", str(blank)],
        capsys,
    )
    _one_line_error(result, "has no text")


@pytest.mark.real
def test_eval_real_models_on_two_smoke_texts(
    real_models: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    result = run_cli(
        ["eval", "kokoro-int8-export", "--reference", "kokoro-fp32", "--texts", "smoke",
         "--limit", "2", "--threads", "2", "--out", str(run), "--json"],
        capsys,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    # The ASR's speed is measured and reported (its value depends on the machine's load, so
    # no threshold here: speed targets live in bench reports, not in unit tests).
    assert data["asr"]["audio_s_per_s"] > 0
    report = load_report(run)
    fp32, int8 = report.model("kokoro-fp32"), report.model("kokoro-int8-export")
    assert report.models[0].name == "kokoro-fp32"
    # The ruler reads clean Kokoro speech: at most one word wrong in these two sentences.
    assert fp32.quality.wer is not None and fp32.quality.wer <= 0.1
    assert int8.quality.wer is not None and int8.quality.wer <= 0.2
    # The INT8 export is close to FP32 but not identical (measured 0.2-0.3 on this toolchain).
    assert 0.02 < int8.quality.logmel_distance < 0.5
    assert 0.85 < int8.quality.duration_ratio < 1.15
    assert int8.quality.f0_rmse_cents is not None and int8.quality.f0_rmse_cents < 200
    for row in report.utterances:
        assert row.transcript and row.wav and (run / row.wav).stat().st_size > 24000
