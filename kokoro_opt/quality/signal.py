"""Audio helpers shared by the fidelity measures: input checks and polyphase resampling (numpy).

`resample` follows scipy.signal.resample_poly's design (rational up/down factors, a Kaiser
windowed-sinc low-pass of 10 zero crossings per side at the lower Nyquist, beta 5) so the
package needs no scipy: 24 kHz -> 16 kHz is up 2, down 3, a 61-tap filter, and the pass band
keeps everything below about 7.5 kHz with the rest attenuated by about 50 dB.
"""

from __future__ import annotations

import math

import numpy as np

from kokoro_opt.errors import UserInputError

_CHUNK = 1 << 16  # output samples per vectorized block (bounds the gather's memory)


def as_mono_float32(audio: np.ndarray, what: str = "audio") -> np.ndarray:
    """`audio` as 1-D float32 (no copy if it already is), from shape [N], [N, 1] or [1, N]."""
    array = np.asarray(audio)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise UserInputError(
            f"The {what} must be mono, shape [samples]; got shape {tuple(array.shape)}. "
            "Mix it down to one channel first."
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise UserInputError(
            f"The {what} must hold float samples in [-1, 1]; got dtype {array.dtype}. "
            "Convert PCM integers with samples / 32768."
        )
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise UserInputError(f"The {what} contains NaN or infinite samples; it cannot be scored.")
    return array


def check_rate(sr: int) -> int:
    """A positive integer sample rate."""
    if isinstance(sr, bool) or int(sr) != sr or sr <= 0:
        raise UserInputError(f"Sample rate must be a positive integer in Hz; got {sr!r}.")
    return int(sr)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """`audio` (mono float) resampled from `sr_in` to `sr_out` Hz, float32, time-aligned.

    Output length is ceil(len * sr_out / sr_in), like scipy's resample_poly.
    """
    audio = as_mono_float32(audio)
    sr_in, sr_out = check_rate(sr_in), check_rate(sr_out)
    if sr_in == sr_out or audio.size == 0:
        return audio.copy()
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    taps = _lowpass(up, down)
    half = (len(taps) - 1) // 2
    # Polyphase: output n sits at index u = half + n*down of the zero-stuffed, filtered signal,
    # so y[n] = sum_t x[u // up - t] * taps[u % up + t*up]; only those products are computed.
    k = -(-len(taps) // up)
    phases = np.zeros(k * up)
    phases[: len(taps)] = taps
    phases = phases.reshape(k, up).T  # phases[p, t] = taps[p + t*up]
    n_out = -(-audio.size * up // down)  # ceil, like scipy's resample_poly
    padded = np.concatenate([np.zeros(k), audio.astype(np.float64), np.zeros(k + half // up + 2)])
    out = np.empty(n_out, dtype=np.float32)
    back = np.arange(k)
    for start in range(0, n_out, _CHUNK):
        u = half + down * np.arange(start, min(start + _CHUNK, n_out))
        base, phase = u // up, u % up
        window = padded[(base + k)[:, None] - back[None, :]]
        out[start : start + len(u)] = (window * phases[phase]).sum(axis=1)
    return out


def _lowpass(up: int, down: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass for upsampled-by-`up` data, cut at the lower Nyquist,
    with gain `up` (zero stuffing divides the signal's level by `up`)."""
    max_rate = max(up, down)
    half = 10 * max_rate
    n = np.arange(-half, half + 1, dtype=np.float64)
    cutoff = 1.0 / max_rate  # as a fraction of the upsampled Nyquist
    taps = cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half + 1, 5.0)
    taps /= taps.sum()
    return taps * up
