"""What a recipe step costs: wall time, CPU time and peak memory (RSS), measured while it runs.

    with StepMeter() as meter:
        run_the_step()
    meter.usage.peak_rss_mb      # the step's peak resident memory, its child processes included

The peak is the highest RSS of this process plus its live child processes (bench's memory
probes, eval's worker processes) while the step ran, so a step that starts with memory an
earlier step left behind is charged for it: that is what the machine must hold. Two sources:

- a sampling thread reads this process's RSS (`/proc/self/statm`, through psutil elsewhere)
  every `interval` seconds and its children's RSS (the child list refreshed every few samples);
- on Linux, this process's high-water mark `VmHWM`. It is never reset (resetting it would make
  `/usr/bin/time -v` and `ru_maxrss` report less than the run used), so it is exact for the
  step that set a new record, which is the step that decides the run's peak; a step that
  stays below an earlier step's record gets the sampled value, which can miss a spike shorter
  than the interval.

The run's peak (`run_peak_rss_mb`) is the process's own high-water mark, or the largest step
peak when child processes went higher.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

MB = 1e6
"""Memory is reported in MB of 10**6 bytes (GB = 1000 MB), as `bytes_after` and the docs."""


@dataclass(frozen=True)
class StepUsage:
    """One step's cost. Memory in MB (10**6 bytes)."""

    wall_s: float
    cpu_s: float
    """User + system CPU seconds of this process and of the child processes that ended."""
    peak_rss_mb: float
    """Peak RSS of this process and its live children while the step ran."""
    start_rss_mb: float
    """This process's RSS when the step began (what earlier steps left behind)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "start_rss_mb": round(self.start_rss_mb, 1),
        }


class StepMeter:
    """Measures the block it wraps (see the module doc); `usage` is set on exit."""

    CHILDREN_EVERY = 10
    """Refresh the list of child processes every this many samples (listing scans /proc)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.usage: StepUsage | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0.0
        self._children: list[Any] = []

    def __enter__(self) -> StepMeter:
        self._hwm_start = own_peak_rss_mb()
        self._cpu_start = _cpu_seconds()
        self._start_rss = own_rss_mb()
        self._sampled = self._start_rss
        self._began = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, name="step-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        wall = time.perf_counter() - self._began
        self._take()
        peak = self._sampled
        hwm = own_peak_rss_mb()
        if hwm is not None and (self._hwm_start is None or hwm > self._hwm_start):
            peak = max(peak, hwm)  # a new record for this process: set during this step
        self.usage = StepUsage(
            wall_s=wall,
            cpu_s=_cpu_seconds() - self._cpu_start,
            peak_rss_mb=peak,
            start_rss_mb=self._start_rss,
        )

    def _sample(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            if n % self.CHILDREN_EVERY == 0:
                self._children = _children()
            n += 1
            self._take()

    def _take(self) -> None:
        total = own_rss_mb()
        for child in list(self._children):
            try:
                total += child.memory_info().rss / MB
            except Exception:  # ended (psutil.NoSuchProcess) or not ours to read
                self._children.remove(child)
        self._sampled = max(self._sampled, total)


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the operating system (glibc's `malloc_trim`; a
    no-op elsewhere). glibc keeps memory a process freed resident for reuse: after the
    optimize step on Kokoro FP32, 1.23 GB of the 1.34 GB the process held was free heap (the
    325 MB model proto and its copies), and the next step started with all of it resident.
    The runner calls this after every step."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass


def own_rss_mb() -> float:
    """This process's current RSS in MB."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        import psutil

        return float(psutil.Process().memory_info().rss) / MB


def own_peak_rss_mb() -> float | None:
    """This process's peak RSS so far in MB (Linux VmHWM, else ru_maxrss; None if unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB  # kB
    except (OSError, ValueError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024) / MB  # bytes on macOS


def _children() -> list[Any]:
    import psutil

    try:
        return list(psutil.Process().children(recursive=True))
    except psutil.Error:
        return []


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
