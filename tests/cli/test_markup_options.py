"""`serve --lexicon/--ssml` and `eval --lexicon`: bad values are one line, exit 2, before any
model loads or any file is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import run_cli


def test_bad_markup_options_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("hello\th€lO\n", encoding="utf-8")
    cases = [
        (["--ssml", "loose"], "Unknown SSML mode 'loose'"),
        (["--lexicon", str(tmp_path / "none.tsv")], "none.tsv does not exist"),
        (["--lexicon", str(bad)], "bad.tsv:1, entry 1 (hello): '€'"),
    ]
    for args, words in cases:
        result = run_cli(["serve", "no-such-model", *args], capsys)
        assert result.exit_code == 2, result.stderr
        assert words in " ".join(result.stderr.split())
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_eval_bad_lexicon_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("two words\tabc\n", encoding="utf-8")
    out = tmp_path / "run"
    for path, words in ((bad, "is not a single word"), (tmp_path / "no.tsv", "does not exist")):
        args = ["eval", "--texts", "smoke", "--lexicon", str(path), "--out", str(out)]
        result = run_cli(args, capsys)
        assert result.exit_code == 2, result.stderr
        assert words in " ".join(result.stderr.split())
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not out.exists() or not any(out.iterdir())
