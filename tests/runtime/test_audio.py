"""PCM16 conversion and atomic WAV writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kokoro_opt.errors import UserInputError
from kokoro_opt.runtime.audio import ends_clean, to_pcm16, trim_silence, write_wav


def test_to_pcm16() -> None:
    pcm = to_pcm16(np.array([0.0, 1.0, -1.0, 2.0, -2.0, np.nan, 0.5], np.float32))
    assert pcm.dtype == np.int16
    assert pcm.tolist() == [0, 32767, -32767, 32767, -32767, 0, 16384]


def test_write_wav_is_24k_mono_pcm16(tmp_path: Path) -> None:
    audio = (np.sin(np.arange(24000) / 20) * 0.5).astype(np.float32)
    out = write_wav(tmp_path / "a.wav", audio, 24000)
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (
        24000,
        1,
        "PCM_16",
        24000,
    )
    back, _ = sf.read(out, dtype="float32")
    np.testing.assert_allclose(back, audio, atol=1 / 32767)
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]  # no temp file left


def test_write_wav_replaces_atomically_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "a.wav"
    write_wav(out, np.zeros(100, np.float32), 24000)
    before = out.read_bytes()
    with pytest.raises(sf.SoundFileError):  # a 0 Hz rate fails inside libsndfile
        write_wav(out, np.zeros(100, np.float32), 0)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]
    with pytest.raises(sf.SoundFileError):
        write_wav(tmp_path / "b.wav", np.zeros(100, np.float32), 0)
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


def test_write_wav_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        write_wav(tmp_path / "missing" / "a.wav", np.zeros(10, np.float32), 24000)
    with pytest.raises(UserInputError, match="is a folder"):
        write_wav(tmp_path, np.zeros(10, np.float32), 24000)


def test_ends_clean() -> None:
    speech_then_silence = np.concatenate([np.ones(4800) * 0.3, np.zeros(4800)]).astype(np.float32)
    assert ends_clean(speech_then_silence, 24000)
    noise = np.random.default_rng(0).uniform(-0.4, 0.4, 9600).astype(np.float32)
    assert not ends_clean(noise, 24000)
    assert not ends_clean(np.full(9600, np.nan, np.float32), 24000)


def test_trim_silence_keeps_speech_and_short_pads() -> None:
    sr = 24000
    speech = (np.sin(np.arange(sr) / 7) * 0.3).astype(np.float32)  # 1 s
    soft = np.full(480, 0.002, np.float32)  # 20 ms at -54 dBFS: quiet but real
    padded = np.concatenate(
        [np.full(int(0.4 * sr), 1e-8, np.float32), soft, speech, np.zeros(int(0.6 * sr))]
    ).astype(np.float32)
    trimmed = trim_silence(padded, sr)
    start = int(np.flatnonzero(trimmed >= 0.002)[0])
    assert start == pytest.approx(0.05 * sr, abs=240)  # 50 ms kept before the first sound
    assert np.count_nonzero(trimmed == np.float32(0.002)) == 480  # the soft onset survives
    tail = len(trimmed) - (int(np.flatnonzero(np.abs(trimmed) > 0.01)[-1]) + 1)
    assert tail == pytest.approx(0.3 * sr, abs=240)
    np.testing.assert_array_equal(trimmed[start + 480 : start + 480 + sr], speech)
    silent = np.zeros(sr, np.float32)
    assert len(trim_silence(silent, sr)) == sr  # nothing audible: unchanged
    assert len(trim_silence(np.zeros(3, np.float32), sr)) == 3
