"""`kokoro-opt serve --wyoming`: option errors in-process, and HTTP + Wyoming as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe
from wyoming.tts import Synthesize

from tests.cli_helpers import run_cli


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--wyoming", "http://127.0.0.1:10200"], "Bad Wyoming URI 'http://127.0.0.1:10200'"),
        (["--wyoming", "tcp://127.0.0.1"], "give host and port"),
        (["--no-http"], "Nothing to serve: --no-http needs --wyoming URI"),
    ],
)
def test_bad_wyoming_options_exit_2(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str], synthetic_fp32: Path
) -> None:
    result = run_cli(["serve", str(synthetic_fp32), *args], capsys)
    assert result.exit_code == 2, result.stderr
    assert words in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and "Loading" not in result.stderr  # before the model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wyoming_speak(port: int, deadline: float) -> tuple[str, int]:
    """Describe, then synthesize once: (the info event's type, bytes of PCM)."""
    while True:
        try:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(Describe().event())
                info = await asyncio.wait_for(client.read_event(), 60)
                await client.write_event(Synthesize(text="Hello from Wyoming.").event())
                pcm = 0
                while True:
                    event = await asyncio.wait_for(client.read_event(), 60)
                    assert event is not None and event.type != "error", event
                    if event.type == "audio-chunk":
                        pcm += len(event.payload or b"")
                    if event.type == "audio-stop":
                        return (info.type if info else "none"), pcm
        except OSError:
            assert time.monotonic() < deadline, "the Wyoming server did not come up"
            await asyncio.sleep(0.1)


def test_serve_http_and_wyoming_share_one_engine(synthetic_fp32: Path) -> None:
    http_port, wyoming_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "kokoro_opt", "serve", str(synthetic_fp32)]
    cmd += ["--port", str(http_port), "--wyoming", f"tcp://127.0.0.1:{wyoming_port}"]
    cmd += ["--threads", "1", "--log-level", "warning", "--cache-entries", "0"]
    env = {**os.environ, "KOKORO_OPT_WIDTH": "200"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        kind, pcm = asyncio.run(_wyoming_speak(wyoming_port, time.monotonic() + 120))
        assert kind == "info" and pcm > 0 and pcm % 2 == 0
        status = httpx.get(f"http://127.0.0.1:{http_port}/status").json()
        # The Wyoming request went through the HTTP server's telemetry: one state, one engine.
        assert status["requests"]["requests"] == 1 and status["requests"]["completed"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    text = " ".join(err.decode().split())
    assert proc.returncode in (0, 130), text
    assert "Traceback" not in text
    assert f"http://127.0.0.1:{http_port} and tcp://127.0.0.1:{wyoming_port}" in text


def test_serve_wyoming_alone_stops_on_sigterm(synthetic_fp32: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "kokoro_opt", "serve", str(synthetic_fp32), "--no-http"]
    cmd += ["--wyoming", f"tcp://127.0.0.1:{port}", "--threads", "1", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        kind, pcm = asyncio.run(_wyoming_speak(port, time.monotonic() + 120))
        assert kind == "info" and pcm > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
