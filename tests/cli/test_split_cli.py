"""`kokoro-opt split`: the folder it writes and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.cli_helpers import run_cli
from tests.passes.graphs import plain_model
from tests.passes.split_graphs import kokoro_anatomy_model, timed_anatomy_model


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOKORO_OPT_WIDTH", "160")


def test_split_writes_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    model = tmp_path / "k.onnx"
    onnx.save(kokoro_anatomy_model(), model)
    out = tmp_path / "k.split"
    result = run_cli(["split", str(model), "-o", str(out), "--threads", "1"], capsys)
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["back.onnx", "decoder.onnx", "front.onnx", "generator.onnx", "split.json"]
    meta = json.loads((out / "split.json").read_text())
    assert meta["samples_per_frame"] == 16 and meta["source"]["path"] == str(model)
    assert "receptive field" in result.stdout

    result = run_cli(["split", str(model), "-o", str(out), "--no-generator", "--json"], capsys)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["back.onnx", "front.onnx", "split.json"]
    assert json.loads(result.stdout)["generator"] is False


def test_split_refuses_a_graph_that_is_not_kokoro(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    model = tmp_path / "plain.onnx"
    onnx.save(plain_model()[0], model)
    result = run_cli(["split", str(model), "-o", str(tmp_path / "out")], capsys)
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == [
        "error: Not a Kokoro graph: no duration predictor (a Round followed by a Clip) was found."
    ]
    assert not (tmp_path / "out").exists()


def test_split_will_not_replace_a_folder_of_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    model = tmp_path / "k.onnx"
    onnx.save(kokoro_anatomy_model(), model)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = run_cli(["split", str(model), "-o", str(tmp_path / "mine")], capsys)
    assert result.exit_code != 0 and "with other files in it" in result.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_speak_with_a_split_folder_renders_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    model = tmp_path / "k.onnx"
    onnx.save(kokoro_anatomy_model(), model)
    out = tmp_path / "k.split"
    assert run_cli(["split", str(model), "-o", str(out), "--threads", "1"], capsys).exit_code == 0
    text = "The birch canoe slid on the smooth planks."
    args = ["speak", text, "-o", str(tmp_path / "a.wav"), "--model", str(model), "--json"]
    result = run_cli([*args, "--split", str(out), "--first-window", "4", "--threads", "1"], capsys)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["segments"] == 1 and summary["chunks"] > 1
    result = run_cli([*args, "--split", str(out), "--window", "nope"], capsys)
    assert result.exit_code != 0 and "Unknown statistics policy 'nope'" in result.stderr


def test_speak_with_a_split_folder_writes_word_timestamps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    """`speak --split DIR --timestamps words.json`: the windows' words, as `speak` without the
    split gives them (within a frame)."""
    model = tmp_path / "k.onnx"
    onnx.save(timed_anatomy_model(), model)
    out = tmp_path / "k.split"
    assert run_cli(["split", str(model), "-o", str(out), "--threads", "1"], capsys).exit_code == 0
    text = "The birch canoe slid on the smooth planks."
    records = {}
    for name, extra in (("whole", []), ("split", ["--split", str(out), "--first-window", "6"])):
        words = tmp_path / f"{name}.json"
        args = [text, "-o", str(tmp_path / f"{name}.wav"), "--model", str(model), "--json"]
        result = run_cli(["speak", *args, *extra, "--timestamps", str(words), "--threads", "1"],
                         capsys)  # fmt: skip
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["words"] == 8 and summary["chunks"] == (1 if name == "whole" else 2)
        records[name] = json.loads(words.read_text(encoding="utf-8"))["words"]
    assert [w["word"] for w in records["split"]] == text.rstrip(".").split(" ")
    for got, ref in zip(records["split"], records["whole"], strict=True):
        assert abs(got["start"] - ref["start"]) <= 0.025 and abs(got["end"] - ref["end"]) <= 0.025
