"""Polyphase resampling and audio input checks."""

from __future__ import annotations

import numpy as np
import pytest

from kokoro_opt.errors import UserInputError
from kokoro_opt.quality.signal import as_mono_float32, resample


def _sine(freq: float, sr: int, seconds: float = 1.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


@pytest.mark.parametrize(("sr_in", "sr_out"), [(24000, 16000), (16000, 24000), (22050, 16000)])
def test_tone_survives_and_stays_in_time(sr_in: int, sr_out: int) -> None:
    out = resample(_sine(440.0, sr_in), sr_in, sr_out)
    assert out.dtype == np.float32
    assert len(out) == -(-sr_in * sr_out // sr_in)
    expected = _sine(440.0, sr_out)[: len(out)]
    assert np.abs(out[200:-200] - expected[200:-200]).max() < 5e-3  # no delay, no gain change


def test_content_above_new_nyquist_is_removed() -> None:
    out = resample(_sine(10000.0, 24000), 24000, 16000)  # 10 kHz > 8 kHz Nyquist
    assert np.sqrt(np.mean(out[200:-200] ** 2)) < 0.005  # input RMS is 0.35


def test_same_rate_and_lengths() -> None:
    audio = _sine(100.0, 24000, 0.01)
    assert np.array_equal(resample(audio, 24000, 24000), audio)
    assert len(resample(audio[:7], 24000, 16000)) == 5  # ceil(7 * 2 / 3)
    assert resample(np.zeros(0, np.float32), 24000, 16000).size == 0


def test_mono_checks() -> None:
    assert as_mono_float32(np.zeros((5, 1))).shape == (5,)
    assert as_mono_float32(np.zeros((1, 5), np.float64)).dtype == np.float32
    with pytest.raises(UserInputError, match="must be mono"):
        as_mono_float32(np.zeros((2, 5), np.float32))
    with pytest.raises(UserInputError, match="float samples"):
        as_mono_float32(np.zeros(5, np.int16))
    with pytest.raises(UserInputError, match="NaN"):
        as_mono_float32(np.array([0.0, np.nan], np.float32))
    with pytest.raises(UserInputError, match="positive integer"):
        resample(np.zeros(5, np.float32), 0, 16000)
