"""`kokoro-opt speak`: WAV output, summary, and one clear line for every kind of bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kokoro_opt.runtime.audio import ends_clean
from tests.cli_helpers import run_cli

BIRCH = "The birch canoe slid on the smooth planks."


def _speak(args: list[str], capsys: pytest.CaptureFixture[str]):
    return run_cli(["speak", *args], capsys)


def test_default_voice_matches_the_runtime() -> None:
    from kokoro_opt.cli import speak
    from kokoro_opt.runtime import voices

    assert speak.DEFAULT_VOICE == voices.DEFAULT_VOICE


def test_speak_writes_24k_mono_pcm16(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.wav"
    result = _speak([BIRCH, "-o", str(out), "--model", str(synthetic_fp32)], capsys)
    assert result.exit_code == 0, result.stderr
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert info.frames > 0
    assert "RTF" in result.stdout and "a.wav" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


def test_speak_json_and_options(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.wav"
    args = [BIRCH, "-o", str(out), "--model", str(synthetic_fp32), "--json"]
    args += ["--voice", "jf_alpha*0.7+jm_kumo*0.3", "--speed", "1.5", "--lang", "en"]
    args += ["--provider", "auto", "--threads", "1"]
    result = _speak(args, capsys)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["lang"] == "en-us" and summary["speed"] == 1.5
    assert summary["sample_rate"] == 24000 and summary["segments"] >= 1
    assert summary["duration_s"] == pytest.approx(sf.info(out).frames / 24000, abs=1e-3)
    assert summary["rtf"] > 0


def test_speak_reads_stdin(
    synthetic_fp32: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello from standard input.\n"))
    out = tmp_path / "c.wav"
    result = _speak(["-", "-o", str(out), "--model", str(synthetic_fp32)], capsys)
    assert result.exit_code == 0, result.stderr
    assert sf.info(out).frames > 0


def test_speak_with_own_voice_pack(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "af_mine.npy", np.full((510, 1, 256), 0.1, np.float32))
    out = tmp_path / "d.wav"
    args = ["Hi.", "-o", str(out), "--model", str(synthetic_fp32)]
    result = _speak(
        [*args, "--voices", str(tmp_path / "af_mine.npy"), "--voice", "af_mine"], capsys
    )
    assert result.exit_code == 0, result.stderr
    result = _speak([*args, "--voices", str(tmp_path / "af_mine.npy")], capsys)
    assert result.exit_code == 2 and "Unknown voice 'jf_gongitsune'. Available: af_mine" in (
        result.stderr
    )


def _bad_cases(tmp_path: Path, synthetic_fp32: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(synthetic_fp32.read_bytes()[:5000])
    model = ["--model", str(synthetic_fp32)]
    return {
        "empty text": (["", *model], "empty"),
        "only punctuation": (["?!... —", *model], "Nothing speakable"),
        "20,000 characters": (["word " * 4000, *model], "20,000 characters"),
        "unknown voice": ([BIRCH, *model, "--voice", "af_nobody"], "Unknown voice 'af_nobody'"),
        "bad blend": ([BIRCH, *model, "--voice", "jf_alpha*x"], "Bad weight"),
        "unknown language": ([BIRCH, *model, "--lang", "xx"], "Unsupported language 'xx'"),
        "missing model path": ([BIRCH, "--model", str(tmp_path / "nope.onnx")], "nope.onnx"),
        "corrupt model": ([BIRCH, "--model", str(corrupt)], "Cannot load model"),
        "speed 0": ([BIRCH, *model, "--speed", "0"], "out of range"),
        "speed 10": ([BIRCH, *model, "--speed", "10"], "out of range"),
        "unknown provider": ([BIRCH, *model, "--provider", "tpu"], "Unknown provider 'tpu'"),
        "missing voice pack": ([BIRCH, *model, "--voices", str(tmp_path / "v.bin")], "v.bin"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty text",
        "only punctuation",
        "20,000 characters",
        "unknown voice",
        "bad blend",
        "unknown language",
        "missing model path",
        "corrupt model",
        "speed 0",
        "speed 10",
        "unknown provider",
        "missing voice pack",
    ],
)
def test_bad_input_is_one_clear_line(
    case: str, synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args, fragment = _bad_cases(tmp_path, synthetic_fp32)[case]
    out = work / "out.wav"
    result = _speak([args[0], "-o", str(out), *args[1:]], capsys)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert list(work.iterdir()) == []  # no output, no temp file


def test_provider_this_build_lacks(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kokoro_opt.runtime.session import available_providers

    missing = next(p for p in ("coreml", "cuda") if p not in available_providers())
    out = tmp_path / "x.wav"
    result = _speak(
        [BIRCH, "-o", str(out), "--model", str(synthetic_fp32), "--provider", missing], capsys
    )
    assert result.exit_code == 2
    assert f"Provider '{missing}' is not available in this onnxruntime build" in result.stderr
    assert not out.exists()


def test_output_folder_missing(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no" / "such" / "a.wav"
    result = _speak([BIRCH, "-o", str(out), "--model", str(synthetic_fp32)], capsys)
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.real
@pytest.mark.parametrize("model", ["kokoro-fp32", "kokoro-int8-export"])
def test_speak_real_model(
    model: str,
    real_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert real_models[model].is_file()  # pulled into the default cache; speak resolves the name
    out = tmp_path / "a.wav"
    result = _speak([BIRCH, "-o", str(out), "--model", model, "--threads", "2"], capsys)
    assert result.exit_code == 0, result.stderr
    audio, sr = sf.read(out, dtype="float32")
    assert sr == 24000 and audio.ndim == 1
    assert 1.5 <= len(audio) / sr <= 5.0
    assert float(np.sqrt(np.mean(audio**2))) > 0.01  # not silent
    assert ends_clean(audio, sr)
