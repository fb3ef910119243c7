"""Aligned spectral distances on synthetic speech-like signals with known relationships."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kokoro_opt.errors import UserInputError
from kokoro_opt.quality import distance
from kokoro_opt.quality.distance import compare, dtw_path, f0_yin, log_mel, logmel_distance, mcd

SR = 24000
RNG = np.random.default_rng(1234)

# A toy "utterance": voiced segments (harmonic tones with a formant-like tilt), a fricative
# (high-passed noise) and a pause; (kind, f0 or 0, formant Hz, seconds).
UTTERANCE = [
    ("voiced", 120.0, 700.0, 0.25),
    ("noise", 0.0, 5000.0, 0.12),
    ("voiced", 150.0, 400.0, 0.30),
    ("silence", 0.0, 0.0, 0.10),
    ("voiced", 180.0, 1200.0, 0.22),
    ("voiced", 130.0, 2200.0, 0.28),
]
OTHER = [
    ("noise", 0.0, 3000.0, 0.30),
    ("voiced", 220.0, 2500.0, 0.35),
    ("voiced", 100.0, 300.0, 0.30),
    ("noise", 0.0, 7000.0, 0.32),
]


def _segment(kind: str, f0: float, formant: float, seconds: float, seed: int) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if kind == "silence":
        return np.zeros(n)
    if kind == "noise":
        noise = np.random.default_rng(seed).standard_normal(n)
        spectrum = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(n, 1 / SR)
        spectrum *= np.exp(-(((freqs - formant) / 1500.0) ** 2))
        out = np.fft.irfft(spectrum, n)
        return 0.1 * out / np.abs(out).max()
    harmonics = np.arange(1, int(10000 // f0))
    gains = np.exp(-(((harmonics * f0 - formant) / 600.0) ** 2)) + 0.3 / harmonics
    out = (gains[:, None] * np.sin(2 * np.pi * f0 * harmonics[:, None] * t)).sum(axis=0)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), n - 1 - np.arange(n)) / (0.01 * SR))
    return 0.3 * out / np.abs(out).max() * ramp


def _render(spec: list[tuple[str, float, float, float]], stretch: float = 1.0) -> np.ndarray:
    parts = [_segment(k, f, fm, s * stretch, seed=i) for i, (k, f, fm, s) in enumerate(spec)]
    return np.concatenate(parts).astype(np.float32)


@pytest.fixture(scope="module")
def utterance() -> np.ndarray:
    return _render(UTTERANCE)


def test_log_mel_shape_and_frames(utterance: np.ndarray) -> None:
    mel = log_mel(utterance)
    assert mel.shape == (1 + len(utterance) // 256, 80) and mel.dtype == np.float32
    assert mel.min() >= math.log(1e-5) - 1e-6
    # Slaney scale: 1 kHz is 15 mel and 12 kHz is 15 + ln(12) / (ln(6.4) / 27) = 51.14 mel, so
    # 80 bands centred at k * 51.14 / 81 put a 1 kHz tone in band 23 (0-based)
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)).astype(np.float32)
    top = 15 + math.log(12) / (math.log(6.4) / 27)
    expected = round(15 / (top / 81)) - 1
    assert abs(int(np.argmax(log_mel(tone)[20])) - expected) <= 1
    # resampled input gives (nearly) the same frames
    from kokoro_opt.quality.signal import resample

    mel16 = log_mel(resample(utterance, SR, 16000), 16000)
    assert abs(len(mel16) - len(mel)) <= 1


def test_identical_audio_has_zero_distance(utterance: np.ndarray) -> None:
    result = compare(utterance, utterance.copy())
    assert result.logmel_distance == pytest.approx(0.0, abs=1e-5)
    assert result.mcd_db == pytest.approx(0.0, abs=1e-4)
    assert result.duration_ratio == 1.0
    assert result.f0_rmse_cents == pytest.approx(0.0, abs=1e-6)
    assert result.voicing_error == 0.0
    assert result.path_length == result.frames_test == result.frames_ref


def test_distance_grows_with_noise(utterance: np.ndarray) -> None:
    noise = RNG.standard_normal(len(utterance)).astype(np.float32)
    distances = [
        logmel_distance(utterance + level * noise, utterance) for level in (1e-4, 1e-3, 1e-2, 5e-2)
    ]
    mcds = [mcd(utterance + level * noise, utterance) for level in (1e-4, 1e-3, 1e-2, 5e-2)]
    # noise 70 dB under the peak is still inside the 80 dB range, so it counts a little
    assert distances == sorted(distances) and distances[0] < 0.2 and distances[-1] > 1.0
    assert mcds == sorted(mcds) and mcds[0] < mcds[-1]


def test_time_stretched_copy_aligns_but_different_speech_does_not(utterance: np.ndarray) -> None:
    slow = _render(UTTERANCE, stretch=1.25)
    fast = _render(UTTERANCE, stretch=0.85)
    other = _render(OTHER)
    d_slow, d_fast, d_other = (
        compare(slow, utterance),
        compare(fast, utterance),
        compare(other, utterance),
    )
    assert d_slow.duration_ratio == pytest.approx(1.25, rel=0.02)
    assert d_fast.duration_ratio == pytest.approx(0.85, rel=0.02)
    assert d_slow.logmel_distance < 0.3 * d_other.logmel_distance
    assert d_fast.logmel_distance < 0.3 * d_other.logmel_distance
    assert d_slow.mcd_db < 0.5 * d_other.mcd_db
    # without alignment (frame by frame, cut to the shorter) the stretched copy looks far off
    a, b = log_mel(slow), log_mel(utterance)
    n = min(len(a), len(b))
    unaligned = float(np.sqrt(((a[:n] - b[:n]) ** 2).mean(axis=1)).mean())
    assert d_slow.logmel_distance < 0.5 * unaligned


def test_mcd_ignores_gain_but_log_mel_does_not(utterance: np.ndarray) -> None:
    # A noise bed 30 dB down keeps every bin above the 80 dB floor, so doubling the gain
    # shifts every log-mel bin by ln 2: only c_0 changes, and c_0 is not part of the MCD.
    bed = utterance + 0.01 * RNG.standard_normal(len(utterance)).astype(np.float32)
    result = compare(bed * 2.0, bed)
    assert result.mcd_db < 0.05
    assert result.logmel_distance == pytest.approx(math.log(2.0), rel=0.05)


def test_f0_of_tones_and_a_semitone_shift() -> None:
    for f0 in (80.0, 150.0, 300.0):
        track = f0_yin(_segment("voiced", f0, 800.0, 0.5, seed=0).astype(np.float32))
        voiced = track[track > 0]
        assert len(voiced) > 0.8 * len(track)
        assert np.median(voiced) == pytest.approx(f0, rel=0.01)
    assert (f0_yin(np.zeros(SR // 2, np.float32)) == 0).all()
    noise = (0.1 * RNG.standard_normal(SR // 2)).astype(np.float32)
    assert (f0_yin(noise) > 0).mean() < 0.2
    low = _segment("voiced", 150.0, 800.0, 0.5, 0).astype(np.float32)
    high = _segment("voiced", 150.0 * 2 ** (1 / 12), 800.0, 0.5, 0).astype(np.float32)
    assert compare(high, low).f0_rmse_cents == pytest.approx(100.0, abs=5.0)


def test_dtw_matches_brute_force() -> None:
    def brute(cost: np.ndarray) -> np.ndarray:
        n, m = cost.shape
        acc = np.full((n + 1, m + 1), np.inf)
        acc[0, 0] = 0.0
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                acc[i, j] = cost[i - 1, j - 1] + min(
                    acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
                )
        return acc[1:, 1:]

    for n, m in [(1, 1), (1, 6), (5, 1), (13, 9), (30, 41)]:
        cost = RNG.random((n, m))
        assert np.allclose(distance._accumulate(cost), brute(cost))
    a, b = RNG.random((12, 4)), RNG.random((17, 4))
    i, j, mean_cost = dtw_path(a, b)
    assert (i[0], j[0], i[-1], j[-1]) == (0, 0, 11, 16)
    steps = np.stack([np.diff(i), np.diff(j)], axis=1)
    assert {tuple(s) for s in steps} <= {(1, 1), (1, 0), (0, 1)}
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2))
    assert mean_cost == pytest.approx(brute(cost)[-1, -1] / len(i))


def test_dtw_is_fast_enough_for_30_seconds() -> None:
    import time

    a = RNG.standard_normal((2800, 80))
    b = RNG.standard_normal((2600, 80))
    start = time.perf_counter()
    i, _, _ = dtw_path(a, b)
    assert time.perf_counter() - start < 10.0  # about 0.3 s on 2 idle cores
    assert len(i) >= 2800


def test_bad_input(utterance: np.ndarray) -> None:
    with pytest.raises(UserInputError, match="empty"):
        compare(np.zeros(0, np.float32), utterance)
    with pytest.raises(UserInputError, match="mono"):
        compare(np.stack([utterance, utterance]), utterance)
    with pytest.raises(UserInputError, match="NaN"):
        compare(np.full(100, np.nan, np.float32), utterance)
    with pytest.raises(UserInputError, match="Sample rate"):
        compare(utterance, utterance, sr=-1)
    with pytest.raises(UserInputError, match="same feature count"):
        dtw_path(np.zeros((3, 4)), np.zeros((3, 5)))
