"""A pool of inference sessions shared by all requests, scheduled earliest-deadline-first.

Each member is a runtime `Synthesizer` (one ONNX Runtime session on one provider, so a pool can
mix a CPU session with an accelerator one). Scheduling happens on the event loop thread only:
`acquire` hands the first idle member (in the order the members were given, so put the fastest
first) or queues a waiter; `release` gives the member to the waiter with the earliest deadline.
There is no lock that inference runs under, so nothing can deadlock; every wait has a timeout.

Deadlines make streams fair under load: a request's first segment is due when the request
arrived, and each later segment is due when the audio already produced for that stream would
finish playing. New requests therefore get their first audio quickly, and a stream close to
running dry goes before one with seconds of audio buffered.

Inference runs in a thread of the given executor. The member goes back to the pool when the
model call has really finished (a done-callback), even if the request that started it was
cancelled meanwhile, so a session never runs two calls at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kokoro_opt.runtime.synthesizer import Synthesizer
from kokoro_opt.server.errors import PoolBusy

T = TypeVar("T")


@dataclass
class Member:
    """One session in the pool, with its counters."""

    index: int
    synth: Synthesizer
    provider: str
    busy: bool = False
    runs: int = 0
    busy_s: float = 0.0
    errors: int = 0
    started: float = field(default=0.0, repr=False)


class _Expired(Exception):
    """A waiter's timeout ran out."""


class SessionPool:
    """Earliest-deadline-first pool of inference sessions (see the module docstring)."""

    def __init__(self, synths: list[Synthesizer]) -> None:
        if not synths:
            raise ValueError("a session pool needs at least one session")
        self.members = [
            Member(index=i, synth=s, provider=s.providers[0]) for i, s in enumerate(synths)
        ]
        self._idle: list[int] = [m.index for m in self.members]
        self._waiters: list[tuple[float, int, asyncio.Future[Member]]] = []
        self._order = itertools.count()
        self._stats_lock = threading.Lock()
        self.acquired = 0
        self.timeouts = 0

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, fut in self._waiters if not fut.done())

    async def acquire(self, *, deadline: float, timeout: float) -> Member:
        """An idle member, or the next one freed if this waiter has the earliest deadline.

        Raises PoolBusy after `timeout` seconds without one.
        """
        if self._idle and not self.waiting:
            return self._take(self._idle.pop(0))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Member] = loop.create_future()
        heapq.heappush(self._waiters, (deadline, next(self._order), fut))

        def expire() -> None:
            if not fut.done():
                fut.set_exception(_Expired())

        # Not asyncio.wait_for: before Python 3.12 it can return a result and lose a
        # cancellation that arrives at the same moment, and a cancelled request would then run on.
        timer = loop.call_later(timeout, expire)
        try:
            return await fut
        except _Expired:
            self.timeouts += 1
            raise PoolBusy(
                f"No inference session became free within {timeout:g} s "
                f"({self.size} session(s), {self.waiting} request(s) waiting): retry later or "
                "start the server with more --sessions.",
                retry_after_s=max(1, round(timeout / 4)),
            ) from None
        except BaseException:
            self._abandon(fut)
            raise
        finally:
            timer.cancel()

    def release(self, member: Member) -> None:
        """Give `member` to the earliest-deadline waiter, or back to the idle list."""
        member.busy = False
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(self._take(member.index))
                return
        self._idle.append(member.index)
        self._idle.sort()

    async def run(
        self,
        fn: Callable[[Synthesizer], T],
        *,
        executor: Executor,
        deadline: float,
        timeout: float,
    ) -> T:
        """Run `fn(synth)` on a pooled session in `executor`; the session is released when the
        call ends, whether or not the caller is still waiting for it."""
        member = await self.acquire(deadline=deadline, timeout=timeout)
        loop = asyncio.get_running_loop()
        try:
            cfut = executor.submit(self._call, member, fn)
        except BaseException:
            self.release(member)
            raise

        def done(_: Any) -> None:
            try:
                loop.call_soon_threadsafe(self.release, member)
            except RuntimeError:  # the loop is closed: the server is gone, nobody waits
                member.busy = False

        cfut.add_done_callback(done)
        return await asyncio.wrap_future(cfut)

    def stats(self) -> dict[str, Any]:
        now = time.perf_counter()
        with self._stats_lock:
            sessions = [
                {
                    "index": m.index,
                    "provider": m.provider,
                    "busy": m.busy,
                    "runs": m.runs,
                    "errors": m.errors,
                    "busy_s": round(m.busy_s + ((now - m.started) if m.busy else 0.0), 3),
                }
                for m in self.members
            ]
        return {
            "size": self.size,
            "idle": self.idle,
            "waiting": self.waiting,
            "acquired": self.acquired,
            "timeouts": self.timeouts,
            "sessions": sessions,
        }

    # -- internals -----------------------------------------------------------------------

    def _take(self, index: int) -> Member:
        member = self.members[index]
        member.busy = True
        self.acquired += 1
        return member

    def _abandon(self, fut: asyncio.Future[Member]) -> None:
        """A waiter gave up: if a member was handed to it meanwhile, pass that member on."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self.release(fut.result())
        else:
            fut.cancel()

    def _call(self, member: Member, fn: Callable[[Synthesizer], T]) -> T:
        start = time.perf_counter()
        with self._stats_lock:
            member.started = start
        try:
            return fn(member.synth)
        except BaseException:
            with self._stats_lock:
                member.errors += 1
            raise
        finally:
            with self._stats_lock:
                member.runs += 1
                member.busy_s += time.perf_counter() - start
