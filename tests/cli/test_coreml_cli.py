"""`kokoro-opt coreml compress|inspect`: output, manifest, and one clear line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from tests.coreml.programs import build_mlpackage


@pytest.fixture(scope="module")
def mlpackage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mlpackage(tmp_path_factory.mktemp("coreml-cli") / "small.mlpackage")


def test_inspect_table_and_json(mlpackage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["coreml", "inspect", str(mlpackage)], capsys)
    assert result.exit_code == 0, result.stderr
    assert "iOS18" in result.stdout and "linear" in result.stdout and "float32" in result.stdout
    assert "predictions need macOS" in result.stderr
    result = run_cli(["coreml", "inspect", str(mlpackage), "--json"], capsys)
    info = json.loads(result.stdout)
    assert info["op_counts"]["conv"] == 1
    assert info["weights_by_dtype"]["float32"]["count"] == 5


@pytest.mark.parametrize(
    ("mode", "extra", "dtype"),
    [
        ("int8", [], "int8"),
        ("int4", ["--block-size", "16"], "int4"),
        ("palettize4", ["--group-size", "32"], "uint4"),
        ("palettize6", [], "uint6"),
        ("prune", ["--sparsity", "0.75"], "uint1+float32"),
    ],
)
def test_compress_each_mode(
    mlpackage: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    extra: list[str],
    dtype: str,
) -> None:
    out = tmp_path / f"{mode}.mlpackage"
    args = ["coreml", "compress", str(mlpackage), "-o", str(out), "--mode", mode, *extra]
    result = run_cli([*args, "--json"], capsys)
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert shown == manifest
    assert manifest["mode"] == mode and len(manifest["input_sha256"]) == 64
    assert dtype in manifest["after"]["weights_by_dtype"]
    assert manifest["after"]["weight_bytes"] < manifest["before"]["weight_bytes"]
    # the package on disk shrinks too (its weight.bin holds the compressed weights)
    assert manifest["after"]["package_bytes"] < 0.8 * manifest["before"]["package_bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".json"]


def test_compress_table(
    mlpackage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.mlpackage"
    result = run_cli(["coreml", "compress", str(mlpackage), "-o", str(out)], capsys)
    assert result.exit_code == 0, result.stderr
    assert "int8" in result.stdout and "Size ratio 0.2" in result.stdout
    assert "predictions need macOS" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "int3"], "Unknown compression mode 'int3'. Allowed: int8, int4"),
        (["--mode", "prune", "--sparsity", "0"], "sparsity must be between 0 and 1"),
        (["--mode", "int4", "--block-size", "100"], "block_size 100 is not supported"),
        (["--mode", "int8", "--group-size", "4"], "group_size applies to the palettize modes"),
        (["--mode", "palettize4", "--group-size", "0"], "group_size must be a positive number"),
        (["--min-elements", "0"], "min_elements must be at least 1"),
        (["--mode", "prune", "--sparsity", "1.5"], "sparsity must be between 0 and 1"),
    ],
)
def test_compress_bad_options(
    mlpackage: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "x.mlpackage"
    result = run_cli(["coreml", "compress", str(mlpackage), "-o", str(out), *args], capsys)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_file = tmp_path / "kokoro.onnx"
    onnx_file.write_bytes(b"onnx")
    out = str(tmp_path / "o.mlpackage")
    for model, message in [
        (tmp_path / "nope.mlpackage", "No CoreML model at"),
        (onnx_file, "is a file, not an .mlpackage folder"),
        (tmp_path, "is a folder, not an .mlpackage folder"),
    ]:
        for command in (["compress", str(model), "-o", out], ["inspect", str(model)]):
            result = run_cli(["coreml", *command], capsys)
            assert result.exit_code == 2, (command, result.stderr)
            assert message in result.stderr
            assert "Traceback" not in result.stderr


def test_bad_output(mlpackage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["coreml", "compress", str(mlpackage), "-o", str(tmp_path / "o.bin")], capsys)
    assert result.exit_code == 2
    assert "must end in .mlpackage" in result.stderr


def test_inputs_that_are_not_ml_program_packages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An .onnx file (with a pointer to `int4`), a spec saved as a single .mlmodel file, a
    neural-network package, an empty package: one line each, exit 2, nothing written."""
    import numpy as np
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
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    save_spec(builder.spec, str(inputs / "nn.mlmodel"))
    save_spec(builder.spec, str(inputs / "nn.mlpackage"))
    (inputs / "kokoro.onnx").write_bytes(b"onnx")
    (inputs / "empty.mlpackage").mkdir()
    out = tmp_path / "out.mlpackage"
    cases = [
        ("kokoro.onnx", "is a file, not an .mlpackage folder", "For ONNX models use"),
        ("nn.mlmodel", "is a file, not an .mlpackage folder", "saved as .mlpackage"),
        ("nn.mlpackage", "'neuralNetwork' model", "convert_to='mlprogram'"),
        ("empty.mlpackage", "has no Manifest.json", "save the model again"),
    ]
    for name, problem, fix in cases:
        for command in (
            ["compress", str(inputs / name), "-o", str(out)],
            ["inspect", str(inputs / name)],
        ):
            result = run_cli(["coreml", *command], capsys)
            assert result.exit_code == 2, (name, command, result.stderr)
            assert problem in result.stderr and fix in result.stderr, result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists() and not out.with_name(out.name + ".json").exists()


def test_ios18_modes_on_an_ios16_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = build_mlpackage(tmp_path / "in" / "small16.mlpackage", target="iOS16")
    out = tmp_path / "out.mlpackage"
    for extra, message in [
        (["--mode", "int4"], "minimum deployment target iOS18"),
        (["--mode", "palettize4", "--group-size", "8"], "per-group palettization"),
    ]:
        result = run_cli(["coreml", "compress", str(package), "-o", str(out), *extra], capsys)
        assert result.exit_code == 2, result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()
    # int8 works on iOS16, and the weights really become int8
    result = run_cli(["coreml", "compress", str(package), "-o", str(out), "--json"], capsys)
    assert result.exit_code == 0, result.stderr
    after = json.loads(result.stdout)["after"]["weights_by_dtype"]
    assert "int8" in after
