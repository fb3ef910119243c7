"""How close one rendering of an utterance is to a reference rendering (numpy only).

Two renderings of the same phonemes by two model variants rarely have the same length
(quantization nudges the duration predictor), so frames are first aligned with dynamic time
warping (DTW) and every measure is taken along the alignment path.

Definitions (all at 24 kHz; other rates are resampled first):
- Log-mel spectrogram: |STFT| with a periodic Hann window of 1024 samples, hop 256 (10.7 ms),
  frames centred on t*256 (zero padding at both ends, so N samples give 1 + N // 256 frames);
  80 Slaney-style triangular mel filters from 0 to 12 kHz (librosa's default design) applied to
  the magnitude; natural log with a floor of 1e-5 (as in HiFi-GAN-style vocoders). For
  comparisons both spectrograms are further floored at 80 dB below the reference's loudest
  mel bin (librosa's `top_db`), so differences nobody can hear (noise far below the speech,
  bands with no energy in either) do not dominate the distances.
- DTW: local cost between frames = RMS difference of their log-mel vectors; steps (1,1), (1,0),
  (0,1) with equal weight; the path runs from the first to the last frame of both signals.
- **Log-mel distance** = the mean of that local cost along the path, in natural-log units
  (nepers): 0 for identical audio; about 0.1 means the mel bands differ by about 10 % on
  average.
- **MCD** (mel-cepstral distortion, dB) = mean along the same path of
  (10 / ln 10) * sqrt(2 * sum_{d=1..24} (c_d - c'_d)^2), where c_d = (1/80) * sum_x L[x] *
  cos(pi * d * (x + 1/2) / 80) is the DCT-II of the log-mel frame L scaled so that
  L[x] = c_0 + 2 * sum_d c_d cos(...), the cepstrum convention the MCD formula assumes (c_0,
  the energy, is left out). An MFCC-style mel cepstrum: comparable between runs of this tool,
  close in scale to but not equal to SPTK mcep-based MCD in papers.
- **Duration ratio** = len(test) / len(reference) in samples.
- **F0 RMSE** (cents) = sqrt(mean(1200 * log2(f0_test / f0_ref))^2) over path pairs where both
  frames are voiced; F0 from YIN (50-500 Hz, threshold 0.15, a frame is voiced when YIN finds a
  dip under the threshold and its level is within 35 dB of the loudest frame). **Voicing
  error** = the share of path pairs whose voiced/unvoiced decisions differ.

DTW is O(N*M) time and memory: the cost matrix is one matrix product, and each row of the
accumulated cost is solved in one vectorized min-scan, so 30 s against 30 s (2,800 frames each)
takes well under a second.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np

from kokoro_opt.errors import UserInputError
from kokoro_opt.quality.signal import as_mono_float32, check_rate, resample
from kokoro_opt.runtime.audio import SAMPLE_RATE

N_FFT = 1024
HOP = 256
N_MELS = 80
N_CEPSTRA = 24
LOG_FLOOR = 1e-5
TOP_DB = 80.0
F0_MIN = 50.0
F0_MAX = 500.0
YIN_THRESHOLD = 0.15
YIN_WINDOW = 512
VOICED_RANGE_DB = 35.0
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


@dataclass(frozen=True)
class AudioDistance:
    """Closeness of a test rendering to a reference rendering (see the module docstring)."""

    logmel_distance: float
    mcd_db: float
    duration_ratio: float
    f0_rmse_cents: float | None
    voicing_error: float
    frames_test: int
    frames_ref: int
    path_length: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def log_mel(audio: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Log-mel spectrogram [frames, 80] (float32) of mono float audio, resampled to 24 kHz."""
    audio = _at_24k(audio, sr, "audio")
    frames = _frames(audio, N_FFT)
    spectrum = np.abs(np.fft.rfft(frames * _hann(N_FFT), axis=1))
    mel = spectrum @ _mel_filters().T
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def mel_cepstrum(logmel: np.ndarray, n: int = N_CEPSTRA) -> np.ndarray:
    """Mel cepstrum c_1..c_n of each log-mel frame ([frames, n], float64; see the module
    docstring for the scaling)."""
    return np.asarray(logmel, dtype=np.float64) @ _cepstrum_matrix(logmel.shape[1], n).T


def dtw_path(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Align feature sequences a [N, D] and b [M, D] (RMS-difference cost).

    Returns (i, j, mean_cost): frame indices of the path, both non-decreasing from (0, 0) to
    (N-1, M-1), and the mean local cost along it.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise UserInputError(
            f"DTW needs two non-empty [frames, features] arrays with the same feature count; "
            f"got {a.shape} and {b.shape}."
        )
    cost = _rms_cost(a, b)
    acc = _accumulate(cost)
    i, j = _backtrack(acc)
    return i, j, float(cost[i, j].mean())


def logmel_distance(test: np.ndarray, ref: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Mean RMS log-mel difference along the DTW path (nepers; 0 for identical audio)."""
    return compare(test, ref, sr, f0=False).logmel_distance


def mcd(test: np.ndarray, ref: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Mel-cepstral distortion in dB along the log-mel DTW path."""
    return compare(test, ref, sr, f0=False).mcd_db


def compare(
    test: np.ndarray, ref: np.ndarray, sr: int = SAMPLE_RATE, *, f0: bool = True
) -> AudioDistance:
    """All distances of `test` to `ref` (same rate `sr`), on one DTW alignment of log-mels."""
    test = _at_24k(test, sr, "test audio")
    ref = _at_24k(ref, sr, "reference audio")
    mel_test, mel_ref = log_mel(test), log_mel(ref)
    floor = float(mel_ref.max()) - TOP_DB / 20.0 * math.log(10.0)
    np.maximum(mel_test, floor, out=mel_test)
    np.maximum(mel_ref, floor, out=mel_ref)
    i, j, distance = dtw_path(mel_test, mel_ref)
    diff = mel_cepstrum(mel_test[i]) - mel_cepstrum(mel_ref[j])
    mcd_db = float(_MCD_SCALE * np.sqrt((diff**2).sum(axis=1)).mean())
    f0_rmse: float | None = None
    voicing_error = 0.0
    if f0:
        f0_test, f0_ref = f0_yin(test), f0_yin(ref)
        voiced_test, voiced_ref = f0_test[i] > 0, f0_ref[j] > 0
        voicing_error = float((voiced_test != voiced_ref).mean())
        both = voiced_test & voiced_ref
        if both.sum() >= 5:
            cents = 1200.0 * np.log2(f0_test[i][both] / f0_ref[j][both])
            f0_rmse = float(np.sqrt(np.mean(cents**2)))
    return AudioDistance(
        logmel_distance=distance,
        mcd_db=mcd_db,
        duration_ratio=len(test) / len(ref),
        f0_rmse_cents=f0_rmse,
        voicing_error=voicing_error,
        frames_test=len(mel_test),
        frames_ref=len(mel_ref),
        path_length=len(i),
    )


def f0_yin(audio: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """F0 in Hz per frame (same frames as `log_mel`), 0 where unvoiced; YIN, 50-500 Hz."""
    audio = _at_24k(audio, sr, "audio")
    tau_min = int(SAMPLE_RATE // F0_MAX)
    tau_max = int(math.ceil(SAMPLE_RATE / F0_MIN))
    span = YIN_WINDOW + tau_max
    frames = _frames(audio, span)
    n_fft = 1 << (span + YIN_WINDOW - 1).bit_length()
    taus = np.arange(1, tau_max + 1)
    f0 = np.zeros(len(frames))
    level = np.sqrt((frames[:, :YIN_WINDOW] ** 2).mean(axis=1))
    loud = level > max(float(level.max()) * 10 ** (-VOICED_RANGE_DB / 20), 1e-4)
    for start in range(0, len(frames), 256):  # chunks bound the FFT memory
        block = frames[start : start + 256]
        head = block[:, :YIN_WINDOW]
        # r(tau) = sum_j x_j x_{j+tau} over the window, for tau = 0..tau_max, by FFT.
        corr = np.fft.irfft(np.conj(np.fft.rfft(head, n_fft)) * np.fft.rfft(block, n_fft), n_fft)[
            :, : tau_max + 1
        ]
        energy = np.concatenate([np.zeros((len(block), 1)), np.cumsum(block**2, axis=1)], axis=1)
        e_tau = energy[:, taus + YIN_WINDOW] - energy[:, taus]
        diff = np.maximum(energy[:, [YIN_WINDOW]] + e_tau - 2.0 * corr[:, 1:], 0.0)
        running = np.cumsum(diff, axis=1)
        cmnd = np.where(running > 0, diff * taus / np.maximum(running, 1e-12), 1.0)
        f0[start : start + len(block)] = _yin_pick(cmnd, tau_min)
    f0[~loud] = 0.0
    return f0


def _yin_pick(cmnd: np.ndarray, tau_min: int) -> np.ndarray:
    """Per row of the cumulative-mean-normalized difference (index k is tau = k + 1): the first
    dip under the threshold (followed down to its local minimum), parabolic interpolation;
    0 when there is no dip."""
    rows, n = cmnd.shape
    search = cmnd.copy()
    search[:, : tau_min - 1] = np.inf
    below = search < YIN_THRESHOLD
    has = below.any(axis=1)
    k = np.argmax(below, axis=1)
    r = np.arange(rows)
    for _ in range(n):
        step = (k + 1 < n) & (cmnd[r, np.minimum(k + 1, n - 1)] < cmnd[r, k])
        if not step.any():
            break
        k = k + step
    left = cmnd[r, np.maximum(k - 1, 0)]
    mid = cmnd[r, k]
    right = cmnd[r, np.minimum(k + 1, n - 1)]
    denom = left - 2 * mid + right
    shift = np.where(
        np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0
    )
    tau = k + 1 + np.clip(shift, -1, 1)
    return np.where(has, SAMPLE_RATE / tau, 0.0)


def _at_24k(audio: np.ndarray, sr: int, what: str) -> np.ndarray:
    audio = as_mono_float32(audio, what)
    if audio.size == 0:
        raise UserInputError(f"The {what} is empty; there is nothing to compare.")
    sr = check_rate(sr)
    return audio if sr == SAMPLE_RATE else resample(audio, sr, SAMPLE_RATE)


def _frames(audio: np.ndarray, length: int) -> np.ndarray:
    """Frames of `length` samples centred on t * HOP (zero padded): 1 + N // HOP of them."""
    padded = np.pad(audio.astype(np.float64), (length // 2, length - length // 2))
    view = np.lib.stride_tricks.sliding_window_view(padded, length)
    return view[::HOP][: 1 + len(audio) // HOP]


def _rms_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS difference between every frame of a and every frame of b, via one matrix product."""
    cost = a @ b.T
    cost *= -2.0
    cost += (a**2).sum(axis=1)[:, None]
    cost += (b**2).sum(axis=1)[None, :]
    np.maximum(cost, 0.0, out=cost)
    cost /= a.shape[1]
    return np.sqrt(cost, out=cost)


def _accumulate(cost: np.ndarray) -> np.ndarray:
    """Accumulated DTW cost. Row i solves D[i,j] = c[i,j] + min(m[j], D[i,j-1]), with
    m[j] = min(D[i-1,j-1], D[i-1,j]), as D[i,j] = S[j] + min_{k<=j}(m[k] - S[k-1]) where S is
    the running sum of row i's costs: one vectorized min-scan per row."""
    n, m = cost.shape
    acc = np.empty_like(cost)
    acc[0] = np.cumsum(cost[0])
    best = np.empty(m)
    running = np.empty(m)
    shifted = np.zeros(m)
    for i in range(1, n):
        prev = acc[i - 1]
        best[0] = prev[0]
        np.minimum(prev[:-1], prev[1:], out=best[1:])
        np.cumsum(cost[i], out=running)
        shifted[1:] = running[:-1]
        best -= shifted
        np.minimum.accumulate(best, out=best)
        np.add(running, best, out=acc[i])
    return acc


def _backtrack(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = acc.shape[0] - 1, acc.shape[1] - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diag, up, left = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if diag <= up and diag <= left:
                i, j = i - 1, j - 1
            elif up <= left:
                i -= 1
            else:
                j -= 1
        path.append((i, j))
    steps = np.array(path[::-1])
    return steps[:, 0], steps[:, 1]


@functools.cache
def _hann(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


@functools.cache
def _mel_filters() -> np.ndarray:
    """[80, 513] Slaney-style mel filterbank (librosa.filters.mel defaults), 0 Hz to 12 kHz."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2)
    hz = _mel_to_hz(mel_points)
    widths = np.diff(hz)
    ramps = hz[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]  # Slaney area normalization
    return weights


def _hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(
        hz >= min_log_hz,
        min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep,
        hz / f_sp,
    )


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(
        mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), mel * f_sp
    )


@functools.cache
def _cepstrum_matrix(bins: int, n: int) -> np.ndarray:
    """[n, bins]: row d-1 gives c_d = (1/bins) * sum_x L[x] cos(pi d (x + 1/2) / bins)."""
    d = np.arange(1, n + 1)[:, None]
    x = np.arange(bins)[None, :]
    return np.cos(np.pi * d * (x + 0.5) / bins) / bins
