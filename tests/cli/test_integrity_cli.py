"""A cached model with one byte flipped is refused by every command that loads it (one line,
exit 1); `model verify` exits 1; `model pull --repair` restores it and the commands work again."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from kokoro_opt.store import register_model
from tests.cli_helpers import CliResult, run_cli
from tests.store.test_verify import flip_byte


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from kokoro_opt.cli import console as console_module

    for c in (console_module.console, console_module.err_console):
        monkeypatch.setattr(c, "width", 400)


@pytest.fixture
def damaged(kokoro_home: Path, synthetic_fp32: Path, tmp_path: Path) -> Path:
    source = tmp_path / "source" / "tiny.onnx"
    source.parent.mkdir()
    shutil.copy(synthetic_fp32, source)
    path = register_model(str(source), "tiny")
    flip_byte(path, "weights")
    return path


def _commands(tmp_path: Path, reference: Path) -> dict[str, list[str]]:
    texts = tmp_path / "texts.txt"
    texts.write_text("Hello there.\n")
    return {
        "speak": ["speak", "Hello.", "-o", str(tmp_path / "a.wav"), "--model", "tiny"],
        "serve": ["serve", "tiny", "--port", "18931"],
        "quantize": ["quantize", "tiny", "-o", str(tmp_path / "q.onnx"), "--samples", "2"],
        "eval": ["eval", "tiny", "--reference", str(reference), "--texts", str(texts), "--no-asr"]
        + ["--threads", "1", "--out", str(tmp_path / "eval")],
        "bench": ["bench", "tiny", "--texts", str(texts), "--runs", "1", "--warmup", "0"]
        + ["--no-memory", "--threads", "1", "--out", str(tmp_path / "bench")],
    }


def _refused(result: CliResult, path: Path) -> None:
    assert result.exit_code == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: Cached model") and str(path) in lines[0]
    assert "kokoro-opt model pull --repair" in lines[0]


@pytest.mark.parametrize("command", ["speak", "serve", "quantize", "eval", "bench"])
def test_commands_refuse_a_damaged_cached_model(
    damaged: Path,
    synthetic_int8: Path,
    tmp_path: Path,
    command: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    def started(self: object) -> None:  # were the model accepted, fail instead of serving
        raise RuntimeError("the server started on a damaged model")

    monkeypatch.setattr(uvicorn.Server, "run", started)
    args = _commands(tmp_path, synthetic_int8)[command]
    _refused(run_cli(args, capsys), damaged)
    assert not (tmp_path / "a.wav").exists() and not (tmp_path / "q.onnx").exists()


def test_verify_then_repair_then_everything_works(
    damaged: Path, synthetic_int8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli(["model", "verify"], capsys)
    assert result.exit_code == 1 and "DAMAGED" in result.stdout
    assert "is damaged" in result.stderr
    listed = json.loads(run_cli(["model", "list", "--json"], capsys).stdout)
    assert [r["verified"] for r in listed] == ["changed"]

    result = run_cli(["model", "pull", "--repair"], capsys)
    assert result.exit_code == 0, result.stderr
    assert "registered again from its source" in result.stdout
    result = run_cli(["model", "verify", "tiny", "--json"], capsys)
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["ok"] is True
    assert json.loads(run_cli(["model", "list", "--json"], capsys).stdout)[0]["verified"] == (
        "verified"
    )

    commands = _commands(tmp_path, synthetic_int8)
    for name in ("speak", "quantize", "eval", "bench"):
        result = run_cli(commands[name], capsys)
        assert result.exit_code == 0, f"{name}: {result.stderr}"
    assert (tmp_path / "a.wav").is_file() and (tmp_path / "q.onnx").is_file()


def test_verify_names_and_unknown_names(
    damaged: Path, synthetic_int8: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_model(str(synthetic_int8), "fine")
    assert run_cli(["model", "verify", "fine"], capsys).exit_code == 0
    assert run_cli(["model", "verify", "tiny"], capsys).exit_code == 1
    result = run_cli(["model", "verify", "nope"], capsys)
    assert result.exit_code == 2 and "No cached model 'nope'" in result.stderr
    result = run_cli(["model", "pull", "x.onnx", "--repair"], capsys)
    assert result.exit_code == 2 and "--repair" in result.stderr


@pytest.mark.real
def test_real_export_flipped_refused_and_repaired(
    real_models: dict[str, Path],
    kokoro_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The issue's case on the real INT8 export, in a private cache (copied, never linked)."""
    models = kokoro_home / "models"
    models.mkdir()
    source = real_models["kokoro-int8-export"]
    shutil.copyfile(source, models / source.name)
    shutil.copyfile(source.with_suffix(".json"), models / source.with_suffix(".json").name)
    path = models / source.name
    flip_byte(path, "weights")
    speak = ["speak", "Hello there.", "-o", str(tmp_path / "a.wav")]
    speak += ["--model", "kokoro-int8-export", "--threads", "2"]
    _refused(run_cli(speak, capsys), path)
    assert run_cli(["model", "verify"], capsys).exit_code == 1

    result = run_cli(["model", "pull", "--repair"], capsys)
    assert result.exit_code == 0 and "rebuilt" in result.stdout, result.stderr
    from kokoro_opt.store.pull import INT8_SHA256

    assert hashlib.sha256(path.read_bytes()).hexdigest() == INT8_SHA256
    assert not (models / "kokoro-fp32.onnx").exists()  # only the damaged model was rebuilt
    result = run_cli(speak, capsys)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "a.wav").stat().st_size > 1000
