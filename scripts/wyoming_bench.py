"""Measure `kokoro-opt serve --wyoming` on a real model: time to first audio over Wyoming, with
the same server's HTTP endpoint measured interleaved on the same texts for comparison.

Starts `kokoro-opt serve MODEL --wyoming tcp://127.0.0.1:PORT` (HTTP beside it, primer cache
off so every request runs the model) on free loopback ports, waits until it is warm, then for
each round and each text, in turn:
- `wyoming`: one `synthesize` event; time to the first `audio-chunk` and to the first audible
  sample (|x| > 0.01), and to `audio-stop`;
- `wyoming-stream`: `synthesize-start`, then the text as word-sized `synthesize-chunk`s every
  `--word-ms` (an LLM writing about 1/word-ms words per second), then `synthesize-stop`; time
  from the first chunk sent to the first audible sample, and whether it came before the text
  ended;
- `http`: POST /v1/audio/speech (streamed PCM); time to the first audible sample.
Medians over rounds and texts are printed and written as JSON.

    python scripts/wyoming_bench.py kokoro-int8-export --rounds 5 --out /tmp/wyoming.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

TEXTS = [
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish. Rice is often served in round bowls. The juice "
    "of lemons makes fine punch.",
    "The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage. "
    "Four hours of steady work faced us.",
]
AUDIBLE = 0.01 * 32767


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read_audio(client: AsyncTcpClient, t0: float, last: str) -> dict[str, Any]:
    first = audible = None
    samples = 0
    while True:
        event = await asyncio.wait_for(client.read_event(), 120)
        if event is None or event.type == "error":
            raise RuntimeError(f"Wyoming answered {event}")
        now = time.perf_counter() - t0
        if event.type == "audio-chunk":
            pcm = np.frombuffer(event.payload or b"", dtype="<i2")
            samples += len(pcm)
            first = now if first is None else first
            if audible is None and pcm.size and np.abs(pcm).max() > AUDIBLE:
                audible = now
        if event.type == last:
            return {"first_chunk_s": first, "first_audible_s": audible, "done_s": now,
                    "audio_s": samples / 24000}  # fmt: skip


async def wyoming_once(port: int, text: str) -> dict[str, Any]:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        t0 = time.perf_counter()
        await client.write_event(Synthesize(text=text).event())
        return await _read_audio(client, t0, "audio-stop")


async def wyoming_stream_once(port: int, text: str, word_s: float) -> dict[str, Any]:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(SynthesizeStart().event())
        words = text.split(" ")
        t0 = time.perf_counter()
        sent: dict[str, float] = {}

        async def write() -> None:
            for i, word in enumerate(words):
                await client.write_event(SynthesizeChunk(text=word + " ").event())
                if i < len(words) - 1:
                    await asyncio.sleep(word_s)
            sent["text_end_s"] = time.perf_counter() - t0
            await client.write_event(SynthesizeStop().event())

        writer = asyncio.create_task(write())
        result = await _read_audio(client, t0, "synthesize-stopped")
        await writer
        result.update(sent)
        result["before_text_end"] = result["first_audible_s"] < sent["text_end_s"]
        return result


def http_once(port: int, text: str) -> dict[str, Any]:
    body = {"model": "tts-1", "input": text, "voice": "jf_gongitsune", "response_format": "pcm"}
    t0 = time.perf_counter()
    audible = None
    samples = 0
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/audio/speech", json=body,
                      timeout=120) as response:  # fmt: skip
        response.raise_for_status()
        for data in response.iter_bytes():
            pcm = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
            samples += len(pcm)
            if audible is None and pcm.size and np.abs(pcm).max() > AUDIBLE:
                audible = time.perf_counter() - t0
    return {"first_audible_s": audible, "done_s": time.perf_counter() - t0,
            "audio_s": samples / 24000}  # fmt: skip


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values) * 1e3, 1) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--word-ms", type=float, default=60.0)
    parser.add_argument("--out", type=Path)
    args, extra = parser.parse_known_args()
    http_port, wyoming_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "kokoro_opt", "serve", args.model, "--port", str(http_port),
           "--wyoming", f"tcp://127.0.0.1:{wyoming_port}", "--cache-entries", "0",
           "--log-level", "warning", *[a for a in extra if a != "--"]]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    rows: dict[str, list[dict[str, Any]]] = {"wyoming": [], "wyoming-stream": [], "http": []}
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health").status_code == 200:

                    async def describe() -> None:
                        async with AsyncTcpClient("127.0.0.1", wyoming_port) as client:
                            await client.write_event(Describe().event())
                            await client.read_event()

                    asyncio.run(describe())
                    break
            except (httpx.HTTPError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        for _ in range(args.rounds):
            for text in TEXTS:
                rows["wyoming"].append(asyncio.run(wyoming_once(wyoming_port, text)))
                rows["wyoming-stream"].append(
                    asyncio.run(wyoming_stream_once(wyoming_port, text, args.word_ms / 1e3))
                )
                rows["http"].append(http_once(http_port, text))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    summary = {
        kind: {
            "n": len(r),
            "first_chunk_ms_p50": _median(r, "first_chunk_s"),
            "first_audible_ms_p50": _median(r, "first_audible_s"),
            "done_ms_p50": _median(r, "done_s"),
            "audio_s_p50": round(statistics.median(x["audio_s"] for x in r), 3),
        }
        for kind, r in rows.items()
    }
    stream = rows["wyoming-stream"]
    summary["wyoming-stream"]["text_end_ms_p50"] = _median(stream, "text_end_s")
    summary["wyoming-stream"]["first_audio_before_text_end"] = sum(
        bool(r["before_text_end"]) for r in stream
    )
    report = {"model": args.model, "rounds": args.rounds, "word_ms": args.word_ms,
              "load_avg": os.getloadavg(), "summary": summary, "rows": rows}  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
