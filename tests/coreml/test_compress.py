"""CoreML weight compression on small ML programs: stored dtypes, sizes and decompressed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kokoro_opt.coreml import compress, inspect, kmeans_lut
from kokoro_opt.coreml.mlpackage import save_atomic
from kokoro_opt.errors import ModelFormatError, ModelNotFoundError, UserInputError
from tests.coreml.programs import decompressed_weights, original_weights

BIG = 2 * 256 * 256 + 64 * 32 * 3  # the three weights above the 2048-element threshold
SMALL = 2 * 256  # two biases (the builder adds a zero one to the second linear) stay float
FLOAT_BYTES = 4 * (BIG + SMALL)


def _weights_file(path: Path) -> int:
    return (path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size


def test_inspect_lists_ops_weights_and_sizes(mlpackage: Path) -> None:
    info = inspect(mlpackage)
    assert info["format"] == "mlprogram"
    assert info["deployment_target"] == "iOS18"
    assert info["op_counts"]["linear"] == 2 and info["op_counts"]["conv"] == 1
    assert info["compute_ops"] == 4  # linear, relu, linear, conv
    assert info["weights_by_dtype"] == {
        "float32": {"count": 5, "elements": BIG + SMALL, "bytes": FLOAT_BYTES}
    }
    assert info["compressed_fraction"] == 0.0
    assert [i["name"] for i in info["inputs"]] == ["x", "y"]
    assert info["inputs"][0]["shape"] == [1, 256]
    largest = info["weights"][0]
    assert largest["shape"] == [256, 256] and largest["used_by"] == ["linear"]
    # The weight file holds the weights plus a small header per blob.
    assert FLOAT_BYTES <= info["weights_file_bytes"] < FLOAT_BYTES + 4096


def test_int8_stores_int8_with_per_channel_scales(mlpackage: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.mlpackage"
    details = compress(mlpackage, out, mode="int8")
    after = inspect(out)
    assert after["weights_by_dtype"]["int8"]["elements"] == BIG
    assert after["weights_by_dtype"]["float32"]["elements"] == SMALL  # biases stay float
    assert after["compressed_fraction"] > 0.99
    assert 0.25 < details["weight_ratio"] < 0.27
    assert _weights_file(out) < 0.27 * _weights_file(mlpackage)
    assert after["op_counts"]["constexpr_blockwise_shift_scale"] == 3
    ref, got = original_weights(mlpackage), decompressed_weights(out)
    assert set(ref) == set(got)
    for key, w in ref.items():
        axes = tuple(range(1, w.ndim))
        step = np.abs(w).max(axis=axes, keepdims=True) / 127  # one scale per output channel
        assert np.all(np.abs(got[key] - w) <= step / 2 + 1e-6), key
    assert 0 < details["weight_error"]["max_relative_rms"] < 0.02


def test_int4_blocks(mlpackage: Path, tmp_path: Path) -> None:
    out = tmp_path / "int4.mlpackage"
    details = compress(mlpackage, out, mode="int4", block_size=32)
    after = inspect(out)
    assert after["weights_by_dtype"]["int4"]["elements"] == BIG
    assert details["skipped"] == []
    scales = [w["components"]["scale"]["shape"] for w in after["weights"] if w["dtype"] == "int4"]
    assert [256, 8] in scales  # 256 input channels / block 32 -> 8 scales per output channel
    assert details["weight_ratio"] < 0.17
    assert _weights_file(out) < 0.17 * _weights_file(mlpackage)
    assert 0.05 < details["weight_error"]["mean_relative_rms"] < 0.15


def test_int4_block_that_does_not_divide_is_reported(mlpackage: Path, tmp_path: Path) -> None:
    # The conv has 32 input channels: coremltools cannot use blocks of 64 there and keeps it.
    details = compress(mlpackage, tmp_path / "int4.mlpackage", mode="int4", block_size=64)
    assert details["skipped"] == ["conv_0_weight_0"]
    assert details["after"]["weights_by_dtype"]["int4"]["elements"] == 2 * 256 * 256


@pytest.mark.parametrize(
    ("mode", "nbits", "max_ratio"), [("palettize4", 4, 0.14), ("palettize6", 6, 0.2)]
)
def test_palettize_uses_a_lookup_table(
    mlpackage: Path, tmp_path: Path, mode: str, nbits: int, max_ratio: float
) -> None:
    out = tmp_path / f"{mode}.mlpackage"
    details = compress(mlpackage, out, mode=mode)
    after = inspect(out)
    assert after["weights_by_dtype"][f"uint{nbits}"]["elements"] == BIG
    assert after["op_counts"]["constexpr_lut_to_dense"] == 3
    assert details["weight_ratio"] < max_ratio
    assert _weights_file(out) < max_ratio * _weights_file(mlpackage)
    ref, got = original_weights(mlpackage), decompressed_weights(out)
    for key, w in ref.items():
        assert len(np.unique(got[key])) <= 2**nbits, key
        # k-means beats a uniform grid of the same size on bell-shaped weights
        lo, hi = w.min(), w.max()
        grid = lo + np.round((w - lo) / (hi - lo) * (2**nbits - 1)) * (hi - lo) / (2**nbits - 1)
        assert np.mean((got[key] - w) ** 2) < np.mean((grid - w) ** 2), key


def test_palettize_per_group(mlpackage: Path, tmp_path: Path) -> None:
    out = tmp_path / "grouped.mlpackage"
    per_tensor = compress(mlpackage, tmp_path / "tensor.mlpackage", mode="palettize4")
    details = compress(mlpackage, out, mode="palettize4", group_size=16)
    weights = {w["name"]: w for w in inspect(out)["weights"]}
    lut = next(w for n, w in weights.items() if n.startswith("linear_0_weight"))
    assert lut["components"]["lut"]["shape"][0] == 256 // 16  # one table per 16 output channels
    got = decompressed_weights(out)["linear_0.weight"]
    for group in np.split(got, 16, axis=0):
        assert len(np.unique(group)) <= 16
    err, err_tensor = details["weight_error"], per_tensor["weight_error"]
    assert err["mean_relative_rms"] <= err_tensor["mean_relative_rms"] * 1.02
    assert details["weight_ratio"] > per_tensor["weight_ratio"]  # the extra tables cost bytes


def test_prune_keeps_the_largest_half(mlpackage: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned.mlpackage"
    details = compress(mlpackage, out, mode="prune", sparsity=0.5)
    after = inspect(out)
    assert after["weights_by_dtype"]["uint1+float32"]["elements"] == BIG
    # half the float values plus a one-bit mask
    assert 0.5 < details["weight_ratio"] < 0.56
    ref, got = original_weights(mlpackage), decompressed_weights(out)
    for key, w in ref.items():
        kept = got[key] != 0
        assert abs(kept.mean() - 0.5) < 0.01, key
        np.testing.assert_allclose(got[key][kept], w[kept], rtol=1e-6)
        assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max() - 1e-7, key


def test_ios16_model_int8_and_palettes(mlpackage_ios16: Path, tmp_path: Path) -> None:
    info = inspect(mlpackage_ios16)
    assert info["deployment_target"] == "iOS16"
    compress(mlpackage_ios16, tmp_path / "a.mlpackage", mode="int8")
    compress(mlpackage_ios16, tmp_path / "b.mlpackage", mode="palettize6")
    assert inspect(tmp_path / "a.mlpackage")["weights_by_dtype"]["int8"]["elements"] == BIG
    # iOS16 packs the 6-bit indices into bytes; inspect names them by the bits they hold.
    after = inspect(tmp_path / "b.mlpackage")
    assert after["weights_by_dtype"]["uint6"]["elements"] == BIG
    assert after["weights_by_dtype"]["uint6"]["bytes"] < 0.8 * BIG


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "int4"}, "needs an ML program with minimum deployment target iOS18"),
        ({"mode": "palettize4", "group_size": 8}, "per-group palettization"),
    ],
)
def test_ios18_features_on_ios16_are_refused(
    mlpackage_ios16: Path, tmp_path: Path, kwargs: dict, match: str
) -> None:
    out = tmp_path / "x.mlpackage"
    with pytest.raises(UserInputError, match=match):
        compress(mlpackage_ios16, out, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "int2"}, r"Unknown compression mode 'int2'\. Allowed: int8, int4, palettize4"),
        ({"mode": "int4", "block_size": 48}, "block_size 48 is not supported; use one of 16, 32"),
        ({"mode": "int8", "group_size": 8}, "group_size applies to the palettize modes only"),
        ({"mode": "palettize4", "group_size": 0}, "group_size must be a positive number"),
        ({"mode": "prune", "sparsity": 1.0}, "sparsity must be between 0 and 1"),
        ({"mode": "int8", "min_elements": 0}, "min_elements must be at least 1"),
    ],
)
def test_bad_options(mlpackage: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        compress(mlpackage, tmp_path / "x.mlpackage", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(mlpackage: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="No CoreML model at .*missing.mlpackage"):
        inspect(tmp_path / "missing.mlpackage")
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not coreml")
    with pytest.raises(
        ModelFormatError, match="is a file, not an .mlpackage folder.*kokoro-opt int4"
    ):
        compress(onnx_file, tmp_path / "o.mlpackage", mode="int8")
    folder = tmp_path / "plain"
    folder.mkdir()
    with pytest.raises(ModelFormatError, match="is a folder, not an .mlpackage folder"):
        inspect(folder)
    empty = tmp_path / "empty.mlpackage"
    empty.mkdir()
    with pytest.raises(ModelFormatError, match="has no Manifest.json"):
        inspect(empty)
    corrupt = tmp_path / "corrupt.mlpackage"
    import shutil

    shutil.copytree(mlpackage, corrupt)
    (corrupt / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFormatError, match="Cannot read the CoreML model"):
        inspect(corrupt)


def test_neural_network_models_are_refused(tmp_path: Path) -> None:
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.models.utils import save_spec

    builder = NeuralNetworkBuilder([("x", datatypes.Array(4))], [("y", datatypes.Array(4))])
    builder.add_inner_product(
        "fc",
        W=np.eye(4, dtype=np.float32),
        b=None,
        input_channels=4,
        output_channels=4,
        has_bias=False,
        input_name="x",
        output_name="y",
    )
    path = tmp_path / "nn.mlpackage"
    save_spec(builder.spec, str(path))
    with pytest.raises(ModelFormatError, match="'neuralNetwork' model; weight compression needs"):
        inspect(path)


def test_bad_outputs(mlpackage: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="must end in .mlpackage"):
        compress(mlpackage, tmp_path / "out.onnx", mode="int8")
    with pytest.raises(UserInputError, match="is the input model"):
        compress(mlpackage, mlpackage, mode="int8")
    taken = tmp_path / "taken.mlpackage"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="exists and is not an .mlpackage; refusing"):
        compress(mlpackage, taken, mode="int8")
    assert (taken / "keep.txt").read_text() == "mine"


def test_existing_package_is_replaced_whole(mlpackage: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mlpackage"
    compress(mlpackage, out, mode="prune")
    compress(mlpackage, out, mode="palettize4")
    assert "uint4" in inspect(out)["weights_by_dtype"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mlpackage"]


def test_save_atomic_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "m.mlpackage"
    out.mkdir()
    (out / "Manifest.json").write_text("{}")

    def half_write(path: Path) -> None:
        path.mkdir()
        (path / "Manifest.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_atomic(half_write, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]
    assert [p.name for p in out.iterdir()] == ["Manifest.json"]


def test_kmeans_lut() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal(50_000).astype(np.float32)
    lut, idx = kmeans_lut(w, nbits=4)
    assert lut.shape == (16,) and lut.dtype == np.float32
    assert idx.dtype == np.uint8 and idx.max() < 16
    mse = np.mean((lut[idx] - w) ** 2)
    # Lloyd-Max optimum for 16 levels on a unit Gaussian is 0.0095; a uniform grid is 3x worse
    assert mse < 0.0100
    assert np.all(np.diff(lut) > 0)
    # each value maps to its nearest centre
    nearest = np.abs(w[:, None] - lut[None, :]).argmin(axis=1)
    assert np.mean(nearest == idx) > 0.999
    # fewer distinct values than entries: exact
    lut2, idx2 = kmeans_lut(np.array([0.5, 0.5, -1.0, 2.0], dtype=np.float32), nbits=4)
    np.testing.assert_array_equal(lut2[idx2], [0.5, 0.5, -1.0, 2.0])
