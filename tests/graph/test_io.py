"""load_model / save_model_atomic / sha256_file: clear errors, atomic writes, external data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kokoro_opt.errors import ModelFormatError, ModelNotFoundError
from kokoro_opt.graph import io
from kokoro_opt.graph.io import load_model, save_model_atomic, sha256_file


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_load_and_save_round_trip(synthetic_fp32: Path, tmp_path: Path) -> None:
    model = load_model(synthetic_fp32)
    out = save_model_atomic(model, tmp_path / "sub" / "copy.onnx")
    assert out == tmp_path / "sub" / "copy.onnx"
    again = load_model(out)
    assert [n.op_type for n in again.graph.node] == [n.op_type for n in model.graph.node]
    for name, value in _weights(model).items():
        np.testing.assert_array_equal(_weights(again)[name], value)
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.onnx"]  # no temp files left
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_save_replaces_an_existing_file(synthetic_fp32: Path, synthetic_int8: Path, tmp_path):
    target = tmp_path / "m.onnx"
    save_model_atomic(load_model(synthetic_fp32), target)
    save_model_atomic(load_model(synthetic_int8), target)
    ops = {n.op_type for n in load_model(target).graph.node}
    assert "MatMulInteger" in ops
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_failed_save_leaves_no_partial_output(
    synthetic_fp32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m.onnx"

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model_atomic(load_model(synthetic_fp32), target)
    assert list(tmp_path.iterdir()) == []


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="Model file not found") as info:
        load_model(tmp_path / "nope.onnx")
    assert "\n" not in str(info.value)


def test_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="is a folder"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not an onnx model\n" * 10, os.urandom(4096), b"\x08\x07" + b"\xff" * 64],
    ids=["empty", "text", "random", "garbage-after-ir-version"],
)
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError, match="is not a valid ONNX model") as info:
        load_model(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.5, 0.9, 0.999])
def test_truncated_file(synthetic_int8: Path, tmp_path: Path, fraction: float) -> None:
    data = synthetic_int8.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFormatError, match="corrupt or truncated") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_model_whose_nodes_read_undefined_tensors(synthetic_fp32: Path, tmp_path: Path) -> None:
    model = onnx.load(synthetic_fp32)
    del model.graph.initializer[:3]  # what a dropped tail of tensors looks like
    path = tmp_path / "holes.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelFormatError, match="which nothing defines"):
        load_model(path)


def test_external_data_is_loaded(synthetic_fp32: Path, tmp_path: Path) -> None:
    model = onnx.load(synthetic_fp32)
    expected = _weights(model)
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model, path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0
    )
    assert (tmp_path / "ext.onnx.data").stat().st_size > 1000
    loaded = load_model(path)
    for name, value in expected.items():
        np.testing.assert_array_equal(_weights(loaded)[name], value)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelFormatError, match="external-data file that is missing"):
        load_model(path)


def test_large_models_are_saved_with_external_data(
    synthetic_fp32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lower the 2 GB protobuf limit so the tiny model takes the large-model path.
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)
    model = load_model(synthetic_fp32)
    target = save_model_atomic(model, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert target.stat().st_size < (tmp_path / "big.onnx.data").stat().st_size
    loaded = load_model(target)
    for name, value in _weights(model).items():
        np.testing.assert_array_equal(_weights(loaded)[name], value)
    # The input model still holds its own data.
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 123)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
