"""Model I/O contracts: our names and kokoro-onnx's, resolved once, feeds with the right dtypes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.runtime.contract import ModelContract
from kokoro_opt.runtime.session import create_session
from tests.runtime.tiny_models import build_contract_model

STYLE = np.full((1, 256), 0.5, np.float32)


def _resolve(path: Path) -> tuple[ModelContract, object]:
    session = create_session(path, threads=1)
    contract = ModelContract.from_session(session)
    assert contract == ModelContract.from_onnx(onnx.load(path))
    return contract, session


def test_our_contract(tmp_path: Path) -> None:
    contract, session = _resolve(build_contract_model(tmp_path / "ours.onnx"))
    assert (contract.tokens, contract.style, contract.speed, contract.audio) == (
        "tokens",
        "style",
        "speed",
        "audio",
    )
    assert contract.speed_dtype == "float32" and not contract.integer_speed
    feeds = contract.feeds([0, 5, 7, 0], STYLE, 1.5)
    assert feeds["tokens"].dtype == np.int64 and feeds["tokens"].shape == (1, 4)
    assert feeds["speed"].dtype == np.float32
    (audio,) = session.run([contract.audio], feeds)
    np.testing.assert_allclose(audio, [0, 5 * 0.75, 7 * 0.75, 0], rtol=1e-6)


def test_kokoro_onnx_contract_with_int32_speed(tmp_path: Path) -> None:
    path = build_contract_model(
        tmp_path / "kokoro-onnx.onnx",
        tokens="input_ids",
        speed_dtype="int32",
        audio="waveform",
        extra_outputs=("duration",),
    )
    contract, session = _resolve(path)
    assert (contract.tokens, contract.audio, contract.speed_dtype) == (
        "input_ids",
        "waveform",
        "int32",
    )
    assert contract.outputs == ("waveform", "duration")
    feeds = contract.feeds([0, 3, 0], STYLE, 2.0)
    assert feeds["speed"].dtype == np.int32 and feeds["speed"].tolist() == [2]
    (audio,) = session.run([contract.audio], feeds)
    np.testing.assert_allclose(audio, [0, 3.0, 0])
    with pytest.raises(UserInputError, match="integer speed"):
        contract.feeds([0, 3, 0], STYLE, 1.5)


def test_kokoro_onnx_contract_with_float_speed_and_int32_tokens(tmp_path: Path) -> None:
    path = build_contract_model(
        tmp_path / "k.onnx", tokens="input_ids", tokens_dtype="int32", audio="waveform"
    )
    contract, session = _resolve(path)
    feeds = contract.feeds([0, 4, 0], STYLE, 0.5)
    assert feeds["input_ids"].dtype == np.int32
    (audio,) = session.run([contract.audio], feeds)
    np.testing.assert_allclose(audio, [0, 1.0, 0])


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"tokens": "phoneme_ids"}, ["no token input", "phoneme_ids", "expected"]),
        ({"audio": "wav"}, ["no audio output", "wav (float32)", "audio|waveform"]),
        ({"speed": "rate"}, ["no speed input", "rate"]),
        ({"extra_inputs": ("sid",)}, ["unexpected inputs sid"]),
        ({"tokens_dtype": "float32"}, ["'tokens' is float32", "int64"]),
    ],
)
def test_unknown_contracts_are_clear(tmp_path: Path, kwargs: dict, fragments: list[str]) -> None:
    path = build_contract_model(tmp_path / "odd.onnx", **kwargs)
    with pytest.raises(ModelFormatError) as info:
        ModelContract.from_onnx(onnx.load(path))
    message = str(info.value)
    assert all(f in message for f in fragments), message
    assert "\n" not in message


def test_synthetic_model_contract(synthetic_fp32: Path, synthetic_int8: Path) -> None:
    for path in (synthetic_fp32, synthetic_int8):
        contract = ModelContract.from_onnx(onnx.load(path))
        assert (contract.tokens, contract.style, contract.speed, contract.audio) == (
            "tokens",
            "style",
            "speed",
            "audio",
        )
