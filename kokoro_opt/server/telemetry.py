"""Counters and latency windows for /status and /metrics (Prometheus text format, by hand).

Windows keep the last `window` observations, so percentiles describe recent traffic. All
methods are thread-safe (one short lock, never held while waiting for anything).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)
RECENT_SEGMENTS = 24


class Window:
    """The last `size` values of one measure."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self._values.append(float(value))
        self.count += 1
        self.total += float(value)

    def summary(self, digits: int = 1) -> dict[str, Any]:
        if not self._values:
            return {"count": self.count}
        arr = np.fromiter(self._values, dtype=np.float64)
        out: dict[str, Any] = {"count": self.count}
        for p in PERCENTILES:
            out[f"p{p}"] = round(float(np.percentile(arr, p)), digits)
        out["max"] = round(float(arr.max()), digits)
        out["mean"] = round(float(arr.mean()), digits)
        return out

    def quantiles(self) -> dict[float, float]:
        if not self._values:
            return {}
        arr = np.fromiter(self._values, dtype=np.float64)
        return {q: float(np.quantile(arr, q)) for q in (0.5, 0.9, 0.95, 0.99)}


class Telemetry:
    """Request counters and windows: time to first audio, RTF, inference, queueing, gaps."""

    def __init__(self, window: int = 2048) -> None:
        self.started_wall = time.time()
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self.responses: Counter[str] = Counter()  # by HTTP status
        self.errors: Counter[str] = Counter()  # by error code
        self.requests = 0
        self.active = 0
        self.disconnects = 0
        self.completed = 0
        self.audio_s = 0.0
        self.chars = 0
        self.segments = 0
        self.nonfinite = 0
        self.ttfa_ms = Window(window)
        self.rtf = Window(window)
        self.infer_ms = Window(window)
        self.queue_wait_ms = Window(window)
        self.request_s = Window(window)
        self._recent: deque[tuple[float, float]] = deque(maxlen=RECENT_SEGMENTS)

    def uptime_s(self) -> float:
        return time.perf_counter() - self.started

    def request_started(self, chars: int) -> None:
        with self._lock:
            self.requests += 1
            self.active += 1
            self.chars += chars

    def request_finished(
        self,
        *,
        status: int,
        duration_s: float,
        audio_s: float,
        compute_s: float,
        disconnected: bool = False,
        error_code: str | None = None,
    ) -> None:
        with self._lock:
            self.active -= 1
            self.responses[str(status)] += 1
            self.audio_s += audio_s
            self.request_s.add(duration_s)
            if disconnected:
                self.disconnects += 1
            elif error_code:
                self.errors[error_code] += 1
            else:
                self.completed += 1
                if audio_s > 0:
                    self.rtf.add(compute_s / audio_s)

    def rejected(self, status: int, code: str | None) -> None:
        """A request answered with an error before any synthesis began."""
        with self._lock:
            self.responses[str(status)] += 1
            if code:
                self.errors[code] += 1

    def first_audio(self, ms: float) -> None:
        with self._lock:
            self.ttfa_ms.add(ms)

    def segment(self, *, infer_ms: float, wait_ms: float, nonfinite: int, audio_s: float) -> None:
        with self._lock:
            self.segments += 1
            self.infer_ms.add(infer_ms)
            self.queue_wait_ms.add(wait_ms)
            self.nonfinite += nonfinite
            self._recent.append((infer_ms / 1e3, audio_s))

    def seed_speed(self, *, infer_s: float, audio_s: float) -> None:
        """Start the recent-speed window with a measurement made outside requests (the warm-up),
        so load shedding knows the speed before the first request; real segments replace it."""
        with self._lock:
            if audio_s > 0:
                self._recent.append((infer_s, audio_s))

    def recent_rtf(self) -> float | None:
        """Model seconds per second of audio sent over the last `RECENT_SEGMENTS` model calls
        (None before there are any): how fast the sessions are right now, other load included."""
        with self._lock:
            infer = sum(i for i, _ in self._recent)
            audio = sum(a for _, a in self._recent)
        return infer / audio if audio > 0 else None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_s": round(self.uptime_s(), 1),
                "started_at": self.started_wall,
                "requests": self.requests,
                "active": self.active,
                "completed": self.completed,
                "disconnects": self.disconnects,
                "responses": dict(self.responses),
                "errors": dict(self.errors),
                "audio_s": round(self.audio_s, 2),
                "chars": self.chars,
                "segments": self.segments,
                "nonfinite_samples": self.nonfinite,
                "recent_rtf": _rounded(self._recent),
                "ttfa_ms": self.ttfa_ms.summary(),
                "rtf": self.rtf.summary(digits=4),
                "infer_ms": self.infer_ms.summary(),
                "queue_wait_ms": self.queue_wait_ms.summary(),
                "request_s": self.request_s.summary(digits=3),
            }

    def prometheus(self, gauges: dict[str, tuple[str, float | dict[str, float]]]) -> str:
        """Metrics in the Prometheus text format; `gauges` adds name -> (help, value or
        {label value: value}) for state the app owns (pool, queues, cache)."""
        lines: list[str] = []
        with self._lock:
            counters = [
                ("kokoro_uptime_seconds", "gauge", "Seconds since the server started.",
                 [("", self.uptime_s())]),
                ("kokoro_requests_total", "counter", "Speech requests received.",
                 [("", self.requests)]),
                ("kokoro_responses_total", "counter", "Speech responses by HTTP status.",
                 [(f'{{code="{k}"}}', v) for k, v in sorted(self.responses.items())]),
                ("kokoro_errors_total", "counter", "Failed requests by error code.",
                 [(f'{{code="{k}"}}', v) for k, v in sorted(self.errors.items())]),
                ("kokoro_disconnects_total", "counter",
                 "Streams the client closed before the end.", [("", self.disconnects)]),
                ("kokoro_active_requests", "gauge", "Speech requests in progress.",
                 [("", self.active)]),
                ("kokoro_audio_seconds_total", "counter", "Seconds of audio produced.",
                 [("", self.audio_s)]),
                ("kokoro_segments_total", "counter", "Segments synthesized.",
                 [("", self.segments)]),
            ]  # fmt: skip
            for name, kind, help_text, samples in counters:
                _metric(lines, name, kind, help_text, samples)
            summaries = [
                ("kokoro_time_to_first_audio_seconds",
                 "Request arrival to first non-silent audio chunk ready to send.",
                 self.ttfa_ms, 1e-3),
                ("kokoro_inference_seconds", "One model call.", self.infer_ms, 1e-3),
                ("kokoro_session_wait_seconds", "Waiting for an inference session.",
                 self.queue_wait_ms, 1e-3),
                ("kokoro_real_time_factor", "Inference seconds per second of audio, per request.",
                 self.rtf, 1.0),
            ]  # fmt: skip
            for name, help_text, window, scale in summaries:
                _summary(lines, name, help_text, window, scale=scale)
        for name, (help_text, value) in gauges.items():
            samples = (
                [(f"{{{k}}}", v) for k, v in value.items()]
                if isinstance(value, dict)
                else [("", value)]
            )
            _metric(lines, name, "gauge", help_text, samples)
        return "\n".join(lines) + "\n"


def _rounded(recent: deque[tuple[float, float]]) -> float | None:
    audio = sum(a for _, a in recent)
    return round(sum(i for i, _ in recent) / audio, 4) if audio > 0 else None


def _metric(
    lines: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]
) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{labels} {_num(value)}")


def _summary(
    lines: list[str], name: str, help_text: str, window: Window, *, scale: float = 1.0
) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} summary")
    for q, v in window.quantiles().items():
        lines.append(f'{name}{{quantile="{q}"}} {_num(v * scale)}')
    lines.append(f"{name}_sum {_num(window.total * scale)}")
    lines.append(f"{name}_count {window.count}")


def _num(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(round(value, 6)) if not value.is_integer() else str(int(value))
