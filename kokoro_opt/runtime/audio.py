"""Audio helpers shared by the CLI, the server and the benchmarks: PCM16, atomic WAV files, and a
check that a stream does not end in static."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kokoro_opt.errors import UserInputError

SAMPLE_RATE = 24000
"""Kokoro's output rate (Hz): every model this tool handles speaks at 24 kHz."""


@dataclass
class PlaybackClock:
    """Audio handed to a listener against the wall time since the first of it: how far the
    stream is ahead of a player that starts at its first sample."""

    started: float | None = None
    audio_s: float = 0.0

    def add(self, samples: int, sample_rate: int = SAMPLE_RATE) -> None:
        if self.started is None:
            self.started = time.perf_counter()
        self.audio_s += samples / sample_rate

    def slack_s(self) -> float:
        """Seconds of audio still to play (0 before the first audio)."""
        if self.started is None:
            return 0.0
        return self.audio_s - (time.perf_counter() - self.started)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16 (clipped; NaN becomes 0)."""
    audio = np.nan_to_num(np.asarray(samples, dtype=np.float32).reshape(-1), nan=0.0)
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write a mono PCM16 WAV atomically (temp file in the same folder, then rename).

    Raises UserInputError when the folder does not exist or the path is a folder; a failure
    never leaves a partial file at `path`.
    """
    import soundfile as sf

    path = Path(path).expanduser()
    if path.is_dir():
        raise UserInputError(f"Output {path} is a folder: give a file name such as out.wav.")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserInputError(
            f"Output folder {folder} does not exist: create it or choose another path."
        )
    tmp = folder / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as f:
            sf.write(f, to_pcm16(samples), sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def trim_silence(
    samples: np.ndarray,
    sample_rate: int,
    *,
    max_lead_s: float = 0.05,
    max_tail_s: float = 0.3,
    threshold: float = 1e-3,
    frame_s: float = 0.01,
) -> np.ndarray:
    """Shorten leading silence to at most `max_lead_s` and trailing silence to `max_tail_s`.

    Silence is a frame (10 ms) whose RMS is below `threshold` (1e-3 is -60 dBFS, far below soft
    consonants and breaths; Kokoro's padding silence is near 1e-8). Only silence is removed;
    audio with no frame above the threshold is returned unchanged.
    """
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    start, end = silence_bounds(
        audio,
        sample_rate,
        max_lead_s=max_lead_s,
        max_tail_s=max_tail_s,
        threshold=threshold,
        frame_s=frame_s,
    )
    return audio[start:end]


def silence_bounds(
    samples: np.ndarray,
    sample_rate: int,
    *,
    max_lead_s: float = 0.05,
    max_tail_s: float = 0.3,
    threshold: float = 1e-3,
    frame_s: float = 0.01,
) -> tuple[int, int]:
    """The [start, end) sample range `trim_silence` keeps (the whole audio when it is silent)."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    frame = max(1, int(frame_s * sample_rate))
    n_frames = len(audio) // frame
    if n_frames == 0:
        return 0, len(audio)
    frames = audio[: n_frames * frame].astype(np.float64).reshape(n_frames, frame)
    loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) >= threshold)
    if loud.size == 0:
        return 0, len(audio)
    start = max(0, int(loud[0]) * frame - int(max_lead_s * sample_rate))
    end = min(len(audio), (int(loud[-1]) + 1) * frame + int(max_tail_s * sample_rate))
    return start, end


def speech_span(samples: np.ndarray, *, threshold: float = 1e-3) -> tuple[int, int] | None:
    """[first, last + 1) of the samples whose magnitude reaches `threshold` (-60 dBFS), or None
    when there are none. Pauses are measured and cut with this, sample-exact."""
    audio = np.asarray(samples).reshape(-1)
    loud = np.flatnonzero(np.abs(np.nan_to_num(audio)) >= threshold)
    if loud.size == 0:
        return None
    return int(loud[0]), int(loud[-1]) + 1


def tail_report(samples: np.ndarray, sample_rate: int, window_s: float = 0.1) -> dict[str, float]:
    """Measures of the last `window_s` of audio: `rms`, `peak`, `zcr` (zero crossings per
    sample) and `nonfinite` (count). Speech ends in near-silence; static is loud and noise-like
    (high RMS with a zero-crossing rate near 0.5)."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    tail = audio[-max(1, int(window_s * sample_rate)) :]
    finite = tail[np.isfinite(tail)]
    report = {"rms": 0.0, "peak": 0.0, "zcr": 0.0, "nonfinite": float(tail.size - finite.size)}
    if finite.size:
        signs = np.signbit(finite)
        report["rms"] = float(np.sqrt(np.mean(finite.astype(np.float64) ** 2)))
        report["peak"] = float(np.max(np.abs(finite)))
        report["zcr"] = float(np.mean(signs[1:] != signs[:-1])) if finite.size > 1 else 0.0
    return report


def ends_clean(samples: np.ndarray, sample_rate: int, *, max_rms: float = 0.02) -> bool:
    """True when the last 100 ms are quiet (RMS below `max_rms`, about -34 dBFS) and finite."""
    report = tail_report(samples, sample_rate)
    return report["nonfinite"] == 0 and report["rms"] < max_rms
