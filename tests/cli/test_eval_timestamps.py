"""`kokoro-opt eval --timestamps` on the real model: Whisper agreement written and printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli

pytestmark = pytest.mark.real


def test_eval_timestamps_json(
    real_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["eval", "kokoro-int8-export", "--reference", "kokoro-int8-export", "--texts"]
    args += ["heldout", "--limit", "1", "--timestamps", "--threads", "2", "--out", str(out)]
    result = run_cli([*args, "--json"], capsys)
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    written = json.loads((out / "timestamps.json").read_text())
    assert printed["file"] == str(out / "timestamps.json")
    (model,) = written["models"]
    assert model["model"] == "kokoro-int8-export" and written["texts"] == 1
    summary = model["summary"]
    assert summary == printed["models"]["kokoro-int8-export"]
    assert summary["all_complete"] and summary["boundaries"] >= 10
    assert summary["median_abs_ms"] <= 80.0
    (sentence,) = model["sentences"]
    assert sentence["words"] == len(sentence["text"].split())
