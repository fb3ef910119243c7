"""`kokoro-opt serve`: option errors in-process, and a real start/stop as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cli_helpers import run_cli


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "0"], "Port 0 is out of range"),
        (["--provider", "nope"], "Unknown provider 'nope'"),
        (["--max-concurrent", "0"], "max-concurrent must be a whole number of at least 1"),
        (["--log-level", "loud"], "Unknown log level"),
        (["--lang", "xx"], "Unsupported language"),
        (["no-such-model"], "no-such-model"),
    ],
)
def test_bad_options_exit_2(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli(["serve", *args], capsys)
    assert result.exit_code == 2, result.stderr
    assert words in " ".join(result.stderr.split())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_starts_warm_answers_and_stops(synthetic_fp32: Path) -> None:
    port = _free_port()
    env = {**os.environ, "KOKORO_OPT_API_KEY": "from-env", "KOKORO_OPT_WIDTH": "200"}
    options = [
        "--sessions",
        "2",
        "--provider",
        "cpu,cpu",
        "--threads",
        "1",
        "--log-level",
        "warning",
        "--cache-entries",
        "0",
        "--no-trim-silence",
    ]
    cmd = [sys.executable, "-m", "kokoro_opt", "serve", str(synthetic_fp32), "--port", str(port)]
    cmd += options
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)
        auth = {"Authorization": "Bearer from-env"}
        assert httpx.get(f"http://127.0.0.1:{port}/status").status_code == 401
        status = httpx.get(f"http://127.0.0.1:{port}/status", headers=auth).json()
        assert status["warmup"]["total_s"] > 0  # it was warm before the port answered
        assert status["pool"]["size"] == 2 and status["model"]["threads_per_session"] == 1
        assert status["cache"]["max_entries"] == 0 and status["streaming"]["trim_silence"] is False
        assert status["limits"]["max_concurrent"] == 8
        body = {"model": "tts-1", "input": "Hello from the command line.", "voice": "jf_alpha"}
        speech = httpx.post(f"http://127.0.0.1:{port}/v1/audio/speech", json=body, headers=auth)
        assert speech.status_code == 200 and speech.content[:4] == b"RIFF"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    # uvicorn shuts down gracefully, then re-raises the Ctrl+C: exit 130 like any interrupted
    # command, with no traceback.
    assert proc.returncode in (0, 130), err.decode()
    assert "Traceback" not in err.decode()
    assert f"http://127.0.0.1:{port}" in " ".join(err.decode().split())
