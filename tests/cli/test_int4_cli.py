"""`kokoro-opt int4`: model + manifest, tables, JSON, the trial, one clear line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.cli_helpers import run_cli


def _ops(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return out


def test_int4_writes_model_and_manifest(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q4.onnx"
    args = ["int4", str(synthetic_fp32), "-o", str(out), "--min-elements", "64"]
    result = run_cli([*args, "--conv", "--lstm", "--gather", "--block-size", "64"], capsys)
    assert result.exit_code == 0, result.stderr
    ops = _ops(out)
    assert ops["MatMulNBits"] == 4 and ops["GatherBlockQuantized"] == 1
    assert ops["DequantizeLinear"] == 7  # 4 Conv + 1 ConvTranspose + LSTM W and R
    manifest = json.loads((tmp_path / "q4.onnx.json").read_text())
    assert manifest["settings"]["block_size"] == 64 and manifest["settings"]["conv"] is True
    assert len(manifest["input_sha256"]) == 64 and manifest["output_bytes"] > 0
    assert manifest["details"]["opset"] == 21
    assert "MatMulNBits" in result.stdout and "disable_quant_qdq" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q4.onnx", "q4.onnx.json"]


def test_int4_json_and_defaults(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mm.onnx"
    args = ["int4", str(synthetic_fp32), "-o", str(out), "--min-elements", "64", "--json"]
    result = run_cli([*args, "--symmetric", "--accuracy-level", "4"], capsys)
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["settings"]["symmetric"] is True and shown["settings"]["accuracy_level"] == 4
    assert shown["settings"]["conv"] is False  # MatMul only unless asked
    assert shown["details"]["quantized"] == {"MatMulNBits": 4}
    assert _ops(out).get("DequantizeLinear", 0) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--block-size", "48"], "Invalid option --block-size: block_size 48 is not supported"),
        (["--algo", "awq"], "Invalid option --algo: Input should be 'rtn', 'hqq' or 'gptq'"),
        (["--accuracy-level", "7"], "Invalid option --accuracy-level"),
        (["--algo", "hqq", "--symmetric"], "hqq fits a zero point per block"),
        (["--no-matmul"], "nothing to quantize: enable at least one of"),
        (["--algo", "gptq", "--calib", "heldout"], "held out for evaluation"),
        (["--exclude", "re:("], "is not a valid regular expression"),
        (["--min-elements", "100000000"], "Nothing to quantize"),
        (["--algo", "gptq", "--samples", "0"], "Invalid option --samples: Input should be"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--algo", "gptq", "--calib", "nosuch.txt"], "Corpus file 'nosuch.txt' does not exist"),
    ],
)
def test_int4_bad_options(
    synthetic_fp32: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    result = run_cli(["int4", str(synthetic_fp32), "-o", str(tmp_path / "x.onnx"), *args], capsys)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_int4_bad_paths(
    synthetic_fp32: Path,
    synthetic_int8: Path,
    tmp_path: Path,
    kokoro_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    garbage = inputs / "truncated.onnx"
    garbage.write_bytes(synthetic_fp32.read_bytes()[:1000])
    half = _with_fp16_weight(synthetic_fp32, inputs / "fp16.onnx")
    cases = [
        ([str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "a.onnx")], "No model"),
        ([str(synthetic_fp32), "-o", str(tmp_path / "a.txt")], "must end in .onnx"),
        ([str(synthetic_fp32), "-o", str(tmp_path)], "is a folder"),
        ([str(synthetic_fp32), "-o", str(synthetic_fp32)], "is the input model"),
        ([str(synthetic_int8), "-o", str(tmp_path / "b.onnx")], "already quantized"),
        ([str(garbage), "-o", str(tmp_path / "c.onnx")], "is not a valid ONNX model"),
        ([str(half), "-o", str(tmp_path / "d.onnx")], "holds FP16 weights"),
    ]
    for args, message in cases:
        result = run_cli(["int4", *args], capsys)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.onnx"))


def _with_fp16_weight(source: Path, path: Path) -> Path:
    """`source` with its largest MatMul weight stored as FP16 behind a Cast (a valid model)."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    inits = {t.name: t for t in model.graph.initializer}
    weights = [
        n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
    ]
    name = max(weights, key=lambda w: len(inits[w].raw_data))
    half = numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype("float16"), name)
    inits[name].CopyFrom(half)
    for node in model.graph.node:
        node.input[:] = [f"{name}_f32" if i == name else i for i in node.input]
    cast = helper.make_node("Cast", [name], [f"{name}_f32"], to=TensorProto.FLOAT)
    model.graph.node.insert(0, cast)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_trial_bad_options(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    fp32 = str(synthetic_fp32)
    base = ["int4", fp32, "--trial"]
    cases = [
        (["-o", str(afile)], "--output is a folder for the trial"),
        (["-o", str(tmp_path / "t"), "--variants", "nope"], "Unknown trial variant(s): nope"),
        (["-o", str(tmp_path / "t"), "--compare", "int8"], "--compare takes NAME=MODEL"),
        (["-o", str(tmp_path / "t"), "--sentences", "0"], "sentences must be 1 to 80"),
        (["-o", str(tmp_path / "t"), "--timing-rounds", "0"], "timing_rounds must be at least 1"),
        (["-o", str(tmp_path / "t"), "--sentences", "81"], "the held-out split has 80"),
        (
            ["-o", str(tmp_path / "t"), "--timing-texts", "41"],
            "timing_texts must be 1 to sentences",
        ),
        (["-o", str(tmp_path / "t"), "--threads", "0"], "--threads must be at least 1"),
        (["-o", str(tmp_path / "t"), "--executor", "mpi"], "Unknown executor 'mpi'"),
        (
            ["-o", str(tmp_path / "t"), "--variants", "mm-rtn-b32,all-rtn-b64,mm-rtn-b32"],
            "listed more than once: mm-rtn-b32",
        ),
        (["-o", str(tmp_path / "t"), "--compare", "x=missing.onnx"], "No model 'missing.onnx'"),
        (
            ["-o", str(tmp_path / "t"), "--compare", f"a={fp32}", "--compare", f"a={fp32}"],
            "--compare names must be unique; 'a' is given twice",
        ),
        (
            ["-o", str(tmp_path / "t"), "--variants", "mm-rtn-b32", "--compare", f"fp32={fp32}"],
            "--compare name(s) fp32 clash with the reference or a variant",
        ),
        (
            [
                "-o",
                str(tmp_path / "t"),
                "--variants",
                "mm-rtn-b32",
                "--compare",
                f"mm-rtn-b32={fp32}",
            ],
            "--compare name(s) mm-rtn-b32 clash",
        ),
    ]
    for args, message in cases:
        result = run_cli([*base, *args], capsys)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, args
    assert not (tmp_path / "t").exists()


def test_trial_builds_measures_and_reports(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kokoro_opt.report.schema import load_report

    out = tmp_path / "trial"
    args = ["int4", str(synthetic_fp32), "--trial", "-o", str(out), "--sentences", "2"]
    args += ["--variants", "mm-rtn-b32,all-rtn-b64", "--timing-texts", "1", "--timing-rounds", "1"]
    result = run_cli([*args, "--threads", "1"], capsys)
    assert result.exit_code == 0, result.stderr
    report = load_report(out / "report.json")
    names = [m.name for m in report.models]
    assert names[:3] == ["fp32", "mm-rtn-b32", "all-rtn-b64"]
    assert "all-rtn-b64+fold" in names  # DequantizeLinear models are also timed folded
    assert report.tradeoff is not None and len(report.tradeoff.steps) == 2
    sizes = {m.name: m.size_bytes for m in report.models}
    assert sizes["all-rtn-b64"] < sizes["mm-rtn-b32"] < sizes["fp32"]
    assert all(m.quality.logmel_distance is not None for m in report.models[1:3])
    assert report.comparison("all-rtn-b64", "fp32") is not None
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert (out / "models" / "all-rtn-b64.onnx").is_file()
    assert "all-rtn-b64" in result.stdout
    caches = sorted((out / "cache").glob("*.json"))
    assert [p.stem for p in caches] == ["all-rtn-b64", "fp32", "mm-rtn-b32"]
    stamps = {p: p.stat().st_mtime_ns for p in caches}
    # a second run reuses the models and the measurements
    again = run_cli(args + ["--threads", "1", "--json"], capsys)
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["recommendation"]["chosen"] == report.tradeoff.chosen
    assert {p: p.stat().st_mtime_ns for p in caches} == stamps
    # another reference in the same folder: rebuilt and measured again, never mixed
    from kokoro_opt.graph.io import sha256_file
    from tests.synthetic import build_fp32_model

    other = build_fp32_model(tmp_path / "other.onnx", seed=1)
    args[1] = str(other)
    third = run_cli(args + ["--threads", "1", "--json"], capsys)
    assert third.exit_code == 0, third.stderr
    for path in caches:
        assert json.loads(path.read_text())["reference_sha256"] == sha256_file(other)
    manifest = json.loads((out / "models" / "all-rtn-b64.json").read_text())
    assert manifest["input_sha256"] == sha256_file(other)


def test_trial_gptq_calibrates_once_for_both_block_sizes(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "trial"
    args = ["int4", str(synthetic_fp32), "--trial", "-o", str(out), "--sentences", "1"]
    args += ["--variants", "mm-gptq-b32,mm-gptq-b128", "--timing-texts", "1"]
    result = run_cli([*args, "--timing-rounds", "1", "--threads", "1", "--no-wer"], capsys)
    assert result.exit_code == 0, result.stderr
    details = [
        json.loads((out / "models" / f"{name}.json").read_text())["details"]
        for name in ("mm-gptq-b32", "mm-gptq-b128")
    ]
    calib = [d["calibration"] for d in details]
    assert calib[0]["corpus"] == "train" and calib[0]["samples"] == 32
    assert calib[0]["calibrate_s"] > 0  # the time of the one calibration both variants share
    assert calib[0] == calib[1]
    assert [d["settings"]["block_size"] for d in details] == [32, 128]
    assert "no variant is recommended" in result.stdout
