"""Load driver for a running `kokoro-opt serve`: concurrent streaming clients, measured the way
a listener would experience them.

    report = drive("http://127.0.0.1:8880", concurrency=4, duration_s=30, texts=[...])

Each of `concurrency` clients sends streaming WAV requests back to back until `duration_s` has
passed (requests in flight then finish). Per request it records:

- time to first audio: request sent -> arrival of the first PCM sample above `AUDIBLE` (0.01,
  -40 dBFS), so silence primers and header bytes do not count;
- gaps between arrivals of audio bytes, and underruns: a player that starts at the first audio
  byte runs dry when the wall time since then exceeds the audio received before an arrival
  (`min_buffer_ms` is the smallest margin); the simpler check "a gap longer than the audio
  already delivered" is reported too;
- speed: seconds of audio per wall second of the request (above 1: faster than real time);
- rejections (429: the client waits `Retry-After`, capped by the time left, and goes on),
  errors (other HTTP statuses, cut or malformed streams), hangs (no end within `hang_s`), clients
  that disconnected on purpose (`disconnect_fraction` of requests, chosen at random with
  `seed`, close the connection right after their first audio).

The server's /status (RSS, threads, active requests) is read before and after, when reachable.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kokoro_opt.errors import UserInputError
from kokoro_opt.runtime.audio import SAMPLE_RATE

AUDIBLE = 0.01
WAV_HEADER_BYTES = 44


@dataclass
class RequestResult:
    """What one request measured."""

    outcome: str  # complete, disconnected, rejected (429), error, hang
    ttfb_ms: float | None = None
    ttfa_ms: float | None = None
    audio_s: float = 0.0
    wall_s: float = 0.0
    gaps_ms: list[float] = field(default_factory=list)
    min_buffer_ms: float | None = None
    underrun: bool = False
    gap_over_delivered: bool = False
    error: str | None = None
    retry_after_s: float = 0.0

    @property
    def x_realtime(self) -> float | None:
        return self.audio_s / self.wall_s if self.wall_s > 0 and self.audio_s > 0 else None


def drive(
    url: str,
    *,
    concurrency: int,
    duration_s: float,
    texts: Sequence[str],
    disconnect_fraction: float = 0.0,
    api_key: str | None = None,
    voice: str = "jf_gongitsune",
    model: str = "kokoro",
    speed: float = 1.0,
    hang_s: float = 60.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Drive the server at `url` and return a report (see the module docstring)."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise UserInputError(
            f"concurrency must be a whole number of at least 1, got {concurrency}."
        )
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise UserInputError(f"duration must be a positive number of seconds, got {duration_s}.")
    if not 0.0 <= disconnect_fraction <= 1.0:
        raise UserInputError(f"disconnect fraction must be from 0 to 1, got {disconnect_fraction}.")
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise UserInputError("Give at least one non-empty text to speak.")
    return asyncio.run(
        _drive(
            url.rstrip("/"),
            concurrency=concurrency,
            duration_s=float(duration_s),
            texts=list(texts),
            disconnect_fraction=disconnect_fraction,
            api_key=api_key,
            voice=voice,
            model=model,
            speed=speed,
            hang_s=hang_s,
            seed=seed,
        )
    )


async def _drive(
    url: str,
    *,
    concurrency: int,
    duration_s: float,
    texts: list[str],
    disconnect_fraction: float,
    api_key: str | None,
    voice: str,
    model: str,
    speed: float,
    hang_s: float,
    seed: int,
) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # A new connection per request: a kept-alive one that the server closed while a client
    # waited (uvicorn closes idle connections after 5 s) would fail the next request for a
    # reason that has nothing to do with the server under test.
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=0)
    rng = random.Random(seed)
    counter = itertools.count()
    results: list[RequestResult] = []
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=hang_s) as client:
        before = await _server_status(client, url)
        start = time.perf_counter()
        end = start + duration_s

        async def worker() -> None:
            while time.perf_counter() < end:
                n = next(counter)
                body = {
                    "model": model,
                    "input": texts[n % len(texts)],
                    "voice": voice,
                    "speed": speed,
                    "response_format": "wav",
                    "stream": True,
                }
                disconnect = rng.random() < disconnect_fraction
                try:
                    result = await asyncio.wait_for(
                        _one(client, url, body, disconnect=disconnect), hang_s
                    )
                except asyncio.TimeoutError:
                    result = RequestResult("hang", error=f"no end within {hang_s:g} s")
                results.append(result)
                if result.outcome == "rejected":  # back off as the server asks
                    await asyncio.sleep(
                        min(result.retry_after_s, max(0.0, end - time.perf_counter()))
                    )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        after = await _server_status(client, url)
    return _report(
        results,
        url=url,
        concurrency=concurrency,
        duration_s=duration_s,
        wall_s=wall,
        disconnect_fraction=disconnect_fraction,
        before=before,
        after=after,
    )


async def _one(client: Any, url: str, body: dict[str, Any], *, disconnect: bool) -> RequestResult:
    import httpx

    sent = time.perf_counter()
    buffer = bytearray()
    header_done = False
    samples = 0
    first_audio_byte: float | None = None
    last_arrival: float | None = None
    result = RequestResult("complete")
    try:
        async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            if response.status_code == 429:
                await response.aread()
                retry = response.headers.get("retry-after", "1")
                return RequestResult(
                    "rejected",
                    error=f"HTTP 429, Retry-After {retry}",
                    retry_after_s=float(retry) if retry.replace(".", "", 1).isdigit() else 1.0,
                )
            if response.status_code != 200:
                await response.aread()
                return RequestResult(
                    "error", error=f"HTTP {response.status_code}: {response.text[:160]}"
                )
            async for piece in response.aiter_raw():
                now = time.perf_counter()
                if result.ttfb_ms is None:
                    result.ttfb_ms = (now - sent) * 1e3
                buffer += piece
                if not header_done:
                    if len(buffer) < WAV_HEADER_BYTES:
                        continue
                    problem = _check_header(bytes(buffer[:WAV_HEADER_BYTES]))
                    if problem:
                        return RequestResult("error", error=problem)
                    del buffer[:WAV_HEADER_BYTES]
                    header_done = True
                usable = len(buffer) - len(buffer) % 2
                if not usable:
                    continue
                pcm = np.frombuffer(bytes(buffer[:usable]), dtype="<i2")
                del buffer[:usable]
                delivered_s = samples / SAMPLE_RATE
                if first_audio_byte is None:
                    first_audio_byte = now
                else:
                    gap = now - (last_arrival or now)
                    result.gaps_ms.append(gap * 1e3)
                    margin = delivered_s - (now - first_audio_byte)
                    if result.min_buffer_ms is None or margin * 1e3 < result.min_buffer_ms:
                        result.min_buffer_ms = margin * 1e3
                    if margin < 0:
                        result.underrun = True
                    if gap > delivered_s:
                        result.gap_over_delivered = True
                last_arrival = now
                samples += len(pcm)
                if result.ttfa_ms is None and np.any(np.abs(pcm) > AUDIBLE * 32767):
                    result.ttfa_ms = (now - sent) * 1e3
                    if disconnect:
                        result.outcome = "disconnected"
                        break  # leaving the block closes the connection mid-stream
    except httpx.HTTPError as exc:
        return RequestResult("error", error=f"{type(exc).__name__}: {exc}")
    result.wall_s = time.perf_counter() - sent
    result.audio_s = samples / SAMPLE_RATE
    if result.outcome == "complete":
        if not header_done:
            return RequestResult("error", error="the stream ended before its WAV header")
        if buffer:
            return RequestResult("error", error="the stream ended in the middle of a sample")
        if result.ttfa_ms is None:
            return RequestResult("error", error="the stream held no audible sample")
    return result


def _check_header(header: bytes) -> str | None:
    if header[:4] != b"RIFF" or header[8:16] != b"WAVEfmt " or header[36:40] != b"data":
        return "not a WAV stream (bad header)"
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", header[20:36])
    if (tag, channels, bits) != (1, 1, 16) or rate != SAMPLE_RATE:
        return f"unexpected WAV format (tag {tag}, {channels} ch, {rate} Hz, {bits} bit)"
    return None


async def _server_status(client: Any, url: str) -> dict[str, Any] | None:
    import httpx

    try:
        response = await client.get(f"{url}/status", timeout=10)
        if response.status_code != 200:
            return None
        status = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    process = status.get("process", {})
    return {
        "rss_mb": process.get("rss_mb"),
        "threads": process.get("threads"),
        "os_threads": process.get("os_threads"),
        "active_requests": status.get("active_requests"),
        "pool_idle": (status.get("pool") or {}).get("idle"),
        "pool_size": (status.get("pool") or {}).get("size"),
        "model": (status.get("model") or {}).get("id"),
    }


def _percentiles(values: Sequence[float], digits: int = 1) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "count": len(values),
        "p50": round(float(np.percentile(arr, 50)), digits),
        "p95": round(float(np.percentile(arr, 95)), digits),
        "max": round(float(arr.max()), digits),
        "min": round(float(arr.min()), digits),
    }


def _report(
    results: list[RequestResult],
    *,
    url: str,
    concurrency: int,
    duration_s: float,
    wall_s: float,
    disconnect_fraction: float,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> dict[str, Any]:
    by = {k: [r for r in results if r.outcome == k] for k in ("complete", "disconnected")}
    errors = [r for r in results if r.outcome == "error"]
    hangs = [r for r in results if r.outcome == "hang"]
    complete = by["complete"]
    speeds = [x for r in complete if (x := r.x_realtime) is not None]
    audio_total = sum(r.audio_s for r in results)
    buffers = [r.min_buffer_ms for r in complete if r.min_buffer_ms is not None]
    return {
        "url": url,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "wall_s": round(wall_s, 3),
        "disconnect_fraction": disconnect_fraction,
        "requests": len(results),
        "completed": len(complete),
        "disconnected": len(by["disconnected"]),
        "rejected": sum(1 for r in results if r.outcome == "rejected"),
        "errors": len(errors),
        "hangs": len(hangs),
        "error_samples": sorted({r.error or "" for r in errors + hangs})[:5],
        "ttfa_ms": _percentiles([r.ttfa_ms for r in results if r.ttfa_ms is not None]),
        "ttfb_ms": _percentiles([r.ttfb_ms for r in results if r.ttfb_ms is not None]),
        "gap_ms": _percentiles([g for r in complete for g in r.gaps_ms]),
        "underruns": sum(r.underrun for r in complete),
        "gaps_over_delivered": sum(r.gap_over_delivered for r in complete),
        "min_buffer_ms": round(min(buffers), 1) if buffers else None,
        "x_realtime": _percentiles(speeds, digits=3),
        "slower_than_realtime": sum(1 for x in speeds if x < 1.0),
        "audio_s": round(audio_total, 2),
        "audio_s_per_wall_s": round(audio_total / wall_s, 3) if wall_s else None,
        "server_before": before,
        "server_after": after,
    }
