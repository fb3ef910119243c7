"""Run the real CLI entry point in-process, the way a user's shell would."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> CliResult:
    """Call `kokoro_opt.cli.main` with `args` and capture exit code and output."""
    from kokoro_opt.cli import main

    capsys.readouterr()
    old_argv = sys.argv
    sys.argv = ["kokoro-opt", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    out = capsys.readouterr()
    return CliResult(code, out.out, out.err)
