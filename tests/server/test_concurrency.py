"""Concurrency: the session pool's scheduling and timeouts, clients that disconnect mid-stream
(their work stops, nothing hangs, no thread is left behind), and a short soak."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from kokoro_opt.errors import UserInputError
from kokoro_opt.runtime.synthesizer import Synthesizer
from kokoro_opt.server import Engine, ServerSettings
from kokoro_opt.server.errors import PoolBusy
from kokoro_opt.server.pool import SessionPool
from kokoro_opt.server.segments import plan_segments
from tests.server.conftest import running_server

LONG = " ".join(
    f"Sentence number {i} is here, and it keeps the stream busy for a while." for i in range(40)
)


# -- the pool ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synths(synthetic_fp32: Path) -> list[Synthesizer]:
    return [Synthesizer(synthetic_fp32, threads=1) for _ in range(2)]


def test_pool_hands_sessions_by_earliest_deadline(synths: list[Synthesizer]) -> None:
    async def scenario() -> list[str]:
        pool = SessionPool(synths[:1])
        held = await pool.acquire(deadline=0.0, timeout=1)
        order: list[str] = []

        async def wait(name: str, deadline: float) -> None:
            member = await pool.acquire(deadline=deadline, timeout=5)
            order.append(name)
            pool.release(member)

        tasks = [
            asyncio.create_task(wait("late", 30.0)),
            asyncio.create_task(wait("early", 10.0)),
            asyncio.create_task(wait("middle", 20.0)),
        ]
        await asyncio.sleep(0.01)
        assert pool.waiting == 3 and pool.idle == 0
        pool.release(held)
        await asyncio.gather(*tasks)
        assert pool.idle == 1 and pool.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["early", "middle", "late"]


def test_pool_acquire_times_out_and_cancelled_waiters_do_not_leak(
    synths: list[Synthesizer],
) -> None:
    async def scenario() -> None:
        pool = SessionPool(synths[:1])
        held = await pool.acquire(deadline=0.0, timeout=1)
        start = time.perf_counter()
        with pytest.raises(PoolBusy, match="No inference session became free within 0.05 s"):
            await pool.acquire(deadline=1.0, timeout=0.05)
        assert time.perf_counter() - start < 1.0
        waiter = asyncio.create_task(pool.acquire(deadline=2.0, timeout=5))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        pool.release(held)  # nobody is waiting any more: back to idle, not to a dead waiter
        assert pool.idle == 1 and pool.waiting == 0 and pool.timeouts == 1

    asyncio.run(scenario())


def test_pool_cancellation_arriving_with_a_session_is_not_lost(synths: list[Synthesizer]) -> None:
    """A request cancelled in the same instant a session is handed to it must stop, and the
    session must go back to the pool (asyncio.wait_for before 3.12 would lose the cancel)."""

    async def scenario() -> None:
        pool = SessionPool(synths[:1])
        held = await pool.acquire(deadline=0.0, timeout=1)
        waiter = asyncio.create_task(pool.acquire(deadline=1.0, timeout=5))
        await asyncio.sleep(0.01)
        pool.release(held)  # the waiter's future now holds the session ...
        waiter.cancel()  # ... and the cancellation arrives before the waiter runs again
        (outcome,) = await asyncio.gather(waiter, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError)
        assert pool.idle == 1 and pool.waiting == 0

    asyncio.run(scenario())


def test_pool_run_releases_after_the_call_even_if_the_caller_left(
    synths: list[Synthesizer],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    started = threading.Event()
    finish = threading.Event()

    def slow(synth: Synthesizer) -> int:
        started.set()
        finish.wait(5)
        return 7

    async def scenario() -> None:
        pool = SessionPool(synths)
        with ThreadPoolExecutor(2) as executor:
            task = asyncio.create_task(pool.run(slow, executor=executor, deadline=0, timeout=1))
            while not started.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # The model call is still running: its session must not be handed out yet.
            assert pool.idle == 1
            finish.set()
            for _ in range(500):
                if pool.idle == 2:
                    break
                await asyncio.sleep(0.01)
            assert pool.idle == 2
            assert await pool.run(lambda s: 3, executor=executor, deadline=0, timeout=1) == 3
        stats = pool.stats()
        assert sum(s["runs"] for s in stats["sessions"]) == 2

    asyncio.run(scenario())


def test_engine_mixes_providers_in_turn(synthetic_fp32: Path) -> None:
    engine = Engine.load(synthetic_fp32, sessions=3, providers=["cpu", "auto"], threads=1)
    assert engine.providers == ["CPUExecutionProvider"] * 3  # auto is CPU on this build
    with pytest.raises(UserInputError, match="sessions must be"):
        Engine.load(synthetic_fp32, sessions=0)


# -- disconnects and threads ---------------------------------------------------------------


def _client(url: str, text: str, *, disconnect: bool, results: list[str]) -> None:
    body = {"model": "kokoro", "input": text, "voice": "jf_alpha", "response_format": "pcm"}
    try:
        with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=60) as response:
            got = 0
            for piece in response.iter_raw():
                got += len(piece)
                if disconnect and got > 0:
                    results.append("disconnected")
                    return  # leaving the block closes the connection mid-stream
            results.append("complete" if response.status_code == 200 and got else "bad")
    except httpx.HTTPError as exc:
        results.append(f"error {exc!r}")


def _run_clients(url: str, texts: list[str], disconnect: list[bool]) -> list[str]:
    results: list[str] = []
    threads = [
        threading.Thread(
            target=_client, args=(url, t), kwargs={"disconnect": d, "results": results}
        )
        for t, d in zip(texts, disconnect, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a client hung"
    return results


def _wait_idle(url: str, timeout_s: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = httpx.get(f"{url}/status").json()
        queues = status["queues"]
        idle = (
            status["active_requests"] == 0
            and status["pool"]["idle"] == status["pool"]["size"]
            and not any(queues.values())
        )
        if idle:
            return status
        assert time.monotonic() < deadline, f"server did not go idle: {status}"
        time.sleep(0.05)


def test_disconnects_cancel_pending_work_without_leaking_threads(engine: Engine) -> None:
    baseline = threading.active_count()
    settings = ServerSettings(max_concurrent=16, warmup=False)
    full_segments = len(
        plan_segments(
            LONG,
            first_chars=settings.first_segment_chars,
            max_chars=settings.max_segment_chars,
            growth=settings.growth,
        )
    )
    with running_server(engine, settings) as url:
        # Grow every worker pool to its size first, so later counts compare like with like.
        assert _run_clients(url, [LONG[:400]] * 6, [False] * 6) == ["complete"] * 6
        _wait_idle(url)
        grown = threading.active_count()
        before = httpx.get(f"{url}/status").json()["requests"]
        texts = [f"Client {i} says: {LONG}" for i in range(8)]
        results = _run_clients(url, texts, [i % 2 == 0 for i in range(8)])
        assert sorted(results) == ["complete"] * 4 + ["disconnected"] * 4, results
        status = _wait_idle(url)
        after = status["requests"]
        assert after["disconnects"] - before["disconnects"] == 4
        assert after["completed"] - before["completed"] == 4
        # The disconnected requests stopped early: far fewer segments than 8 full requests.
        done = after["segments"] - before["segments"]
        assert done < 8 * full_segments - 4 * (full_segments // 2), (done, full_segments)
        assert threading.active_count() <= grown, [t.name for t in threading.enumerate()]
    # Server stopped: its worker threads are gone too.
    deadline = time.monotonic() + 10
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= baseline, [t.name for t in threading.enumerate()]


def test_short_soak_with_the_load_driver(engine: Engine) -> None:
    """Ten clients for a few seconds, a third of them disconnecting: no errors, no hangs, every
    request accounted for, the server idle afterwards and no thread left behind."""
    import psutil

    from kokoro_opt.bench.server_load import drive

    texts = [LONG[:300], LONG[:900], "Short one. Then another sentence follows it."]
    baseline = threading.active_count()
    with running_server(engine, ServerSettings(max_concurrent=16, warmup=False)) as url:
        drive(url, concurrency=10, duration_s=1.5, texts=texts)  # warm-up
        rss_before = psutil.Process().memory_info().rss
        report = drive(url, concurrency=10, duration_s=4.0, texts=texts, disconnect_fraction=0.3)
        rss_after = psutil.Process().memory_info().rss
        status = _wait_idle(url)
    assert report["errors"] == 0 and report["hangs"] == 0, report["error_samples"]
    assert report["completed"] > 10 and report["disconnected"] > 0
    assert report["completed"] + report["disconnected"] == report["requests"]
    assert report["ttfa_ms"]["p50"] > 0
    assert status["requests"]["disconnects"] >= report["disconnected"]
    # One process holds server and clients here; the bench script measures the server alone.
    assert rss_after < rss_before * 1.10, (rss_before, rss_after)
    deadline = time.monotonic() + 10
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= baseline, [t.name for t in threading.enumerate()]
