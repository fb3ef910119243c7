"""Measure `kokoro-opt serve` on a real model: time to first audio, concurrent streams, soak.

Starts the server as a subprocess (so its RSS is the server's alone) on a free loopback port,
waits until it is warm, runs the scenarios with `kokoro_opt.bench.server_load.drive`, stops the
server and writes one JSON report.

    python scripts/server_bench.py kokoro-fp32 --scenario all --out /tmp/bench-fp32.json
    python scripts/server_bench.py kokoro-int8-export --scenario soak --soak-s 120

Extra `kokoro-opt serve` options go after `--` (for example `-- --sessions 2 --threads 1`).
The server runs with its primer cache off (`--cache-entries 0`) unless `--cache` is given, so
time to first audio is the model's, not a cache hit's; the ttfa scenario measures hits apart.

Scenarios:
- ttfa: sequential three-sentence requests, each text different (no primer-cache hits), then
  the same text again (a cache hit); time to first audible sample p50/p95.
- concurrent: 4 clients streaming three-sentence texts back to back; every stream must be
  faster than real time with no underrun.
- soak: 10 clients, 30 % disconnecting after their first audio, for --soak-s seconds after a
  warm-up round (--soak-warmup-s); clients told 429 wait Retry-After; no errors or hangs,
  server idle afterwards, thread count unchanged, RSS growth after warm-up under 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from kokoro_opt.bench.server_load import drive

# Harvard sentences (IEEE 1969), public domain, grouped in threes.
HARVARD = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
]
THREES = [" ".join(HARVARD[i : i + 3]) for i in range(0, len(HARVARD), 3)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "kokoro_opt", "serve", model, "--port", str(port)]
    cmd += ["--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server did not become ready within 600 s")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def status(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/status", timeout=10).json()


def wait_idle(url: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        s = status(url)
        if s["active_requests"] == 0 and s["pool"]["idle"] == s["pool"]["size"]:
            return s
        if time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def scenario_ttfa(url: str, rounds: int) -> dict[str, Any]:
    fresh = []
    for i in range(rounds):
        text = THREES[i % len(THREES)]
        if i >= len(THREES):  # keep every text new so the primer cache cannot answer
            text = f"Round {i}. {text}"
        fresh.append(drive(url, concurrency=1, duration_s=1e-3, texts=[text]))
    cached = [drive(url, concurrency=1, duration_s=1e-3, texts=[THREES[0]]) for _ in range(3)]
    cache = status(url)["cache"]
    values = [r["ttfa_ms"]["p50"] for r in fresh if r["ttfa_ms"]["count"]]
    firsts = sorted(r["ttfb_ms"]["p50"] for r in fresh if r["ttfb_ms"]["count"])
    speeds = [r["x_realtime"]["p50"] for r in fresh if r["x_realtime"]["count"]]
    values.sort()
    return {
        "requests": len(fresh),
        "errors": sum(r["errors"] for r in fresh),
        "ttfa_ms_each": [round(v, 1) for v in values],
        "ttfa_ms_p50": values[len(values) // 2] if values else None,
        "ttfa_ms_p95": values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
        if values
        else None,
        "ttfb_ms_p50": firsts[len(firsts) // 2] if firsts else None,
        "x_realtime_p50": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "repeated_text_ttfa_ms": [r["ttfa_ms"]["p50"] for r in cached],
        "cache": {k: cache[k] for k in ("max_entries", "hits", "misses")},
        "underruns": sum(r["underruns"] for r in fresh),
    }


def scenario_concurrent(url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    return drive(url, concurrency=concurrency, duration_s=seconds, texts=THREES, seed=1)


def scenario_soak(url: str, pid: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    proc = psutil.Process(pid)
    # Warm-up: long enough for every text to complete, so every segment shape has been through
    # the model (ONNX Runtime's arena grows to the largest one it has seen, then stays).
    warm = drive(url, concurrency=10, duration_s=warmup_s, texts=THREES,
                 disconnect_fraction=0.3, seed=2, hang_s=300)  # fmt: skip
    idle_before = wait_idle(url)
    rss_before = proc.memory_info().rss
    threads_before = proc.num_threads()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample_rss() -> None:
        start = time.perf_counter()
        while not stop.wait(5.0):
            samples.append((round(time.perf_counter() - start, 1),
                            round(proc.memory_info().rss / 2**20, 1)))  # fmt: skip

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    report = drive(url, concurrency=10, duration_s=seconds, texts=THREES,
                   disconnect_fraction=0.3, seed=3, hang_s=300)  # fmt: skip
    idle_after = wait_idle(url)
    stop.set()
    sampler.join()
    rss_after = proc.memory_info().rss
    threads_after = proc.num_threads()
    return {
        "warmup_round": {k: warm[k] for k in ("requests", "completed", "rejected", "errors")},
        "load": report,
        "rss_mb_after_warmup": round(rss_before / 2**20, 1),
        "rss_mb_after_soak": round(rss_after / 2**20, 1),
        "rss_growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
        "rss_mb_every_5s": samples,
        "os_threads_before": threads_before,
        "os_threads_after": threads_after,
        "idle_after": idle_after["active_requests"] == 0
        and idle_after["pool"]["idle"] == idle_after["pool"]["size"],
        "server_errors": idle_after["requests"]["errors"],
        "server_disconnects": idle_after["requests"]["disconnects"],
        "idle_before_ok": idle_before["active_requests"] == 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model cache name or .onnx path")
    parser.add_argument("--scenario", choices=["ttfa", "concurrent", "soak", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=10, help="ttfa requests")
    parser.add_argument("--concurrent-s", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--soak-s", type=float, default=120.0)
    parser.add_argument("--soak-warmup-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--cache", action="store_true", help="keep the primer cache on")
    argv = sys.argv[1:]
    server_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = list(server_args)
    if not args.cache:
        extra += ["--cache-entries", "0"]
    started = time.perf_counter()
    proc = start_server(args.model, port, extra)
    report: dict[str, Any] = {
        "model": args.model,
        "server_args": extra,
        "start_to_ready_s": round(time.perf_counter() - started, 2),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
    }
    try:
        report["server"] = {k: status(url)[k] for k in ("model", "warmup", "pool")}
        if args.scenario in ("ttfa", "all"):
            report["ttfa"] = scenario_ttfa(url, args.rounds)
        if args.scenario in ("concurrent", "all"):
            report["concurrent"] = scenario_concurrent(url, args.concurrent_s, args.concurrency)
        if args.scenario in ("soak", "all"):
            report["soak"] = scenario_soak(url, proc.pid, args.soak_s, args.soak_warmup_s)
        report["status_at_end"] = {k: status(url)[k] for k in ("requests", "cache", "pool")}
        report["machine"]["loadavg_at_end"] = os.getloadavg()
    finally:
        stop_server(proc)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
