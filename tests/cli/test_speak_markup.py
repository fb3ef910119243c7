"""`kokoro-opt speak` with word timestamps (.json/.srt/.vtt), pauses, SSML and a lexicon."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.cli_helpers import run_cli
from tests.runtime.timed_models import build_timed_model

TEXT = "Hello world. [pause:0.5s] The birch canoe slid on 5 planks."


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_timed_model(tmp_path_factory.mktemp("timed") / "timed.onnx")


def _speak(args: list[str], capsys: pytest.CaptureFixture[str]):
    return run_cli(["speak", *args], capsys)


def test_timestamps_in_three_formats(
    timed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "a.wav"
    outputs = {}
    for suffix in (".json", ".srt", ".vtt"):
        words = tmp_path / f"words{suffix}"
        args = [TEXT, "-o", str(wav), "--model", str(timed), "--timestamps", str(words)]
        result = _speak([*args, "--json", "--threads", "1"], capsys)
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["timestamps"] == str(words) and summary["words"] == 9
        outputs[suffix] = words.read_text(encoding="utf-8")
    records = json.loads(outputs[".json"])["words"]
    expected = "Hello world The birch canoe slid on 5 planks"
    assert [w["word"] for w in records] == expected.split(" ")
    duration = sf.info(wav).frames / 24000
    assert all(0 <= w["start"] <= w["end"] <= duration + 1e-3 for w in records)
    assert outputs[".srt"].startswith("1\n00:00:00,") and "\n\n9\n" in outputs[".srt"]
    assert outputs[".vtt"].startswith("WEBVTT\n\n00:00:00.") and outputs[".vtt"].count(" --> ") == 9
    # the pause is exact silence between "world" and "The": the longest quiet run in the WAV
    audio, _ = sf.read(wav, dtype="float32")
    assert abs(_longest_silence(audio) / 24000 - 0.5) <= 0.010
    assert records[1]["end"] <= records[2]["start"] - 0.4


def _longest_silence(audio: np.ndarray, threshold: float = 1e-3) -> int:
    """Samples in the longest run below `threshold` between the first and last loud sample."""
    loud = np.flatnonzero(np.abs(audio) >= threshold)
    return int(np.max(np.diff(loud))) - 1


def test_lexicon_file_changes_the_audio(
    timed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lexicon = tmp_path / "words.tsv"
    lexicon.write_text("# test\nplanks\tplˈæŋks plˈæŋks plˈæŋks\n", encoding="utf-8")
    lengths = []
    for extra in ([], ["--lexicon", str(lexicon)]):
        out = tmp_path / f"l{len(extra)}.wav"
        result = _speak(["Smooth planks.", "-o", str(out), "--model", str(timed), *extra], capsys)
        assert result.exit_code == 0, result.stderr
        lengths.append(sf.info(out).frames)
    assert lengths[1] > lengths[0]


def test_lenient_ssml(timed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.wav"
    text = 'Hi <emphasis level="strong">there</emphasis> <break time="300ms"/> you.'
    result = _speak([text, "-o", str(out), "--model", str(timed), "--ssml", "lenient"], capsys)
    assert result.exit_code == 0, result.stderr
    assert np.any(sf.read(out)[0])


@pytest.mark.parametrize(
    ("extra", "text", "fragment"),
    [
        (["--timestamps", "{tmp}/w.txt"], TEXT, "must end in .json, .srt or .vtt"),
        (["--timestamps", "{tmp}/nope/w.json"], TEXT, "does not exist"),
        (["-o", "{work}/w.json", "--timestamps", "{work}/w.json"], TEXT, "same file"),
        ([], "Hi <emphasis>you</emphasis>.", "Unsupported SSML tag <emphasis>"),
        ([], "Wait [pause:a while] here.", "Bad pause"),
        ([], "Say [it](/ɪ#t/).", "'#' (U+0023) is not a Kokoro phoneme symbol"),
        (["--ssml", "loose"], TEXT, "Unknown SSML mode 'loose'"),
        (["--lexicon", "{tmp}/missing.tsv"], TEXT, "missing.tsv does not exist"),
        (["--lexicon", "{tmp}/bad.tsv"], TEXT, "bad.tsv:1, entry 1 (kokoro): '%'"),
        (["--timestamps", "{work}/w.json", "--model", "{synthetic}"], TEXT, "duration predictor"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    extra: list[str],
    text: str,
    fragment: str,
    timed: Path,
    synthetic_fp32: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "bad.tsv").write_text("kokoro\tkˈO%kəɹO\n", encoding="utf-8")
    names = {"tmp": str(tmp_path), "work": str(work), "synthetic": str(synthetic_fp32)}
    args = [a.format(**names) for a in extra]
    if "--model" not in args:
        args += ["--model", str(timed)]
    result = _speak([text, "-o", str(work / "out.wav"), *args], capsys)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert list(work.iterdir()) == []  # no WAV, no timestamps, no temp file
