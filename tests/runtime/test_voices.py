"""Voice packs: the bundled Japanese voices, npz/.bin, .npy and folder packs, blends, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kokoro_opt.errors import VoiceError
from kokoro_opt.runtime.voices import DEFAULT_VOICE, VoiceLibrary, parse_blend, style_for

JA_VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


def _pack(seed: int, rows: int = 510) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 1, 256)).astype(np.float32)


def test_default_pack_is_the_five_japanese_voices() -> None:
    lib = VoiceLibrary.default()
    assert lib.names == JA_VOICES
    assert DEFAULT_VOICE in lib
    for name in JA_VOICES:
        pack = lib.get(name)
        assert pack.shape == (510, 1, 256) and pack.dtype == np.float32
        assert np.isfinite(pack).all() and float(np.abs(pack).mean()) > 0.01
    assert not np.allclose(lib.get("jf_alpha"), lib.get("jm_kumo"))


def test_load_npz_and_kokoro_onnx_bin(tmp_path: Path) -> None:
    packs = {"af_test": _pack(1), "am_test": _pack(2)}
    npz = tmp_path / "voices.npz"
    np.savez(npz, **packs)
    # kokoro-onnx ships voices-v1.0.bin: an npz archive under another suffix.
    binary = tmp_path / "voices-v1.0.bin"
    binary.write_bytes(npz.read_bytes())
    for path in (npz, binary):
        lib = VoiceLibrary.load(path)
        assert lib.names == ["af_test", "am_test"]
        np.testing.assert_array_equal(lib.get("am_test"), packs["am_test"])


def test_load_npy_and_folder(tmp_path: Path) -> None:
    np.save(tmp_path / "af_one.npy", _pack(3))
    np.save(tmp_path / "af_two.npy", _pack(4)[:, 0, :])  # [510, 256] is accepted too
    one = VoiceLibrary.load(tmp_path / "af_one.npy")
    assert one.names == ["af_one"]
    folder = VoiceLibrary.load(tmp_path)
    assert folder.names == ["af_one", "af_two"]
    assert folder.get("af_two").shape == (510, 1, 256)
    assert VoiceLibrary.from_spec(str(tmp_path)).names == folder.names
    assert VoiceLibrary.from_spec(folder) is folder


def test_blend_is_normalized_weighted_mean() -> None:
    lib = VoiceLibrary.default()
    a, k = lib.get("jf_alpha"), lib.get("jm_kumo")
    mixed = lib.get("jf_alpha*0.7+jm_kumo*0.3")
    np.testing.assert_allclose(mixed, 0.7 * a + 0.3 * k, atol=1e-6)
    # Weights are normalized: 7:3 is the same blend as 0.7:0.3; no weight means 1.
    np.testing.assert_allclose(lib.get("jf_alpha*7 + jm_kumo*3"), mixed, atol=1e-6)
    np.testing.assert_allclose(lib.get("jf_alpha+jm_kumo"), 0.5 * a + 0.5 * k, atol=1e-6)
    assert mixed.shape == (510, 1, 256) and mixed.dtype == np.float32


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "Empty voice"),
        ("jf_alpha*", "Malformed"),
        ("jf_alpha*0.5+", "Malformed"),
        ("jf_alpha*x", "Bad weight"),
        ("jf_alpha*-1", "positive"),
        ("jf_alpha*0", "positive"),
        ("jf_alpha*nan", "positive"),
        ("jf_alpha*0.5*2", "Malformed"),
        ("jf_alpha+jf_alpha", "twice"),
    ],
)
def test_bad_blend_syntax(spec: str, fragment: str) -> None:
    with pytest.raises(VoiceError, match=fragment):
        parse_blend(spec)


def test_unknown_voice_names_available_ones() -> None:
    lib = VoiceLibrary.default()
    with pytest.raises(VoiceError) as info:
        lib.get("af_heart")
    message = str(info.value)
    assert "'af_heart'" in message and all(name in message for name in JA_VOICES)
    with pytest.raises(VoiceError, match="'nobody'"):
        lib.get("jf_alpha*0.5+nobody*0.5")


@pytest.mark.parametrize(
    ("writer", "fragment"),
    [
        (lambda p: p.write_bytes(b"not a zip"), "Cannot read voice pack"),
        (lambda p: np.savez(p, v=np.zeros((510, 1, 128), np.float32)), r"expected \(510, 1"),
        (lambda p: np.savez(p, v=np.full((510, 1, 256), np.nan, np.float32)), "NaN"),
        (lambda p: np.savez(p, v=np.zeros((510, 1, 256), np.int32)), "float"),
    ],
)
def test_bad_pack_files(tmp_path: Path, writer, fragment: str) -> None:
    path = tmp_path / "voices.npz"
    writer(path)
    with pytest.raises(VoiceError, match=fragment):
        VoiceLibrary.load(path)


def test_single_array_under_a_pack_suffix(tmp_path: Path) -> None:
    np.save(tmp_path / "af_x.npy", _pack(6))
    (tmp_path / "af_x.npy").rename(tmp_path / "af_x.bin")
    with pytest.raises(VoiceError, match="single array"):
        VoiceLibrary.load(tmp_path / "af_x.bin")


def test_missing_pack_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(VoiceError, match="does not exist"):
        VoiceLibrary.load(tmp_path / "nope.bin")
    with pytest.raises(VoiceError, match="No .npy"):
        VoiceLibrary.load(tmp_path)


def test_style_for_picks_the_row_of_the_phoneme_count() -> None:
    pack = _pack(5)
    np.testing.assert_array_equal(style_for(pack, 0), pack[0].reshape(1, 256))
    np.testing.assert_array_equal(style_for(pack, 37), pack[37].reshape(1, 256))
    np.testing.assert_array_equal(style_for(pack, 509), pack[509].reshape(1, 256))
    np.testing.assert_array_equal(style_for(pack, 2000), pack[509].reshape(1, 256))
    assert style_for(pack, 10).shape == (1, 256) and style_for(pack, 10).dtype == np.float32


def test_packs_are_read_only() -> None:
    pack = VoiceLibrary.default().get("jf_alpha")
    with pytest.raises(ValueError):
        pack[0, 0, 0] = 1.0
