"""`kokoro-opt shapes bind`: one model per bucket, the index, checks and errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from kokoro_opt.runtime.buckets import INDEX_FILE, read_buckets
from tests.cli_helpers import run_cli
from tests.passes.graphs import aligner_model


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOKORO_OPT_WIDTH", "160")


@pytest.fixture
def aligner(tmp_path: Path) -> Path:
    path = tmp_path / "aligner.onnx"
    onnx.save(aligner_model(), path)
    return path


def test_bind_writes_buckets_and_index(
    aligner: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "buckets"
    res = run_cli(
        [
            "shapes",
            "bind",
            str(aligner),
            "--tokens",
            "64,16",
            "-o",
            str(out),
            "--measure",
            "--runs",
            "1",
        ],
        capsys,
    )
    assert res.exit_code == 0, res.stderr
    buckets = read_buckets(out)
    assert [b.tokens for b in buckets] == [16, 64]
    assert (out / "aligner.t16.onnx.json").is_file()
    manifest = json.loads((out / "aligner.t64.onnx.json").read_text())
    assert manifest["settings"]["tokens"] == 64
    assert manifest["audio_check"]["within_noise"] is True
    assert manifest["latency"]["paired_ratio"] > 0
    assert "aligner.t16.onnx" in res.stdout and INDEX_FILE in res.stdout


def test_bind_without_mask_warns(
    aligner: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "b"
    res = run_cli(
        [
            "shapes",
            "bind",
            str(aligner),
            "--tokens",
            "16",
            "-o",
            str(out),
            "--length-mask",
            "off",
            "--no-check",
        ],
        capsys,
    )
    assert res.exit_code == 0, res.stderr
    assert "no length masking" in res.stderr
    assert json.loads((out / INDEX_FILE).read_text())["buckets"][0]["length_mask"] is False


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ("16,abc", "--tokens takes whole numbers"),
        ("2", "Bucket 2 is out of range"),
        ("600", "Bucket 600 is out of range"),
        (",", "--tokens is empty"),
    ],
)
def test_bad_tokens(
    aligner: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kokoro_home: Path,
    tokens: str,
    message: str,
) -> None:
    res = run_cli(
        ["shapes", "bind", str(aligner), "--tokens", tokens, "-o", str(tmp_path / "o")], capsys
    )
    assert res.exit_code == 2 and message in res.stderr


def test_mask_required_but_impossible(
    synthetic_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    res = run_cli(
        [
            "shapes",
            "bind",
            str(synthetic_fp32),
            "--tokens",
            "32",
            "-o",
            str(tmp_path / "o"),
            "--length-mask",
            "on",
        ],
        capsys,
    )
    assert res.exit_code == 2 and "no duration predictor" in res.stderr
    assert not (tmp_path / "o" / INDEX_FILE).exists()


def test_output_is_a_file(
    aligner: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    res = run_cli(["shapes", "bind", str(aligner), "-o", str(aligner)], capsys)
    assert res.exit_code == 2 and "is a file" in res.stderr


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    from kokoro_opt.passes import split as split_pass
    from kokoro_opt.passes.base import PassContext
    from tests.passes.split_graphs import kokoro_anatomy_model

    models = split_pass.split(kokoro_anatomy_model(), split_pass.Config(), PassContext(threads=1))
    return split_pass.save(models, tmp_path / "split")


def test_bind_a_split_folder_to_one_window(
    split_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    out = tmp_path / "w6"
    args = ["shapes", "bind", str(split_dir), "--window-frames", "6", "-o", str(out)]
    res = run_cli([*args, "--measure", "--runs", "1", "--threads", "1"], capsys)
    assert res.exit_code == 0, res.stderr
    meta = json.loads((out / "split.json").read_text())
    assert meta["window"]["frames"] == 6 and set(meta["window"]["context"]) == {
        "back.onnx",
        "generator.onnx",
    }
    summary = json.loads((out / "shapes.json").read_text())
    for graph in ("back.onnx", "generator.onnx"):
        d = summary["graphs"][graph]
        assert d["static_tensors"] == d["tensors"] and d["check"]["max_abs_diff"] <= 1e-5
        assert d["latency"]["paired_ratio"] > 0
    assert "back.onnx" in res.stdout and "identical" in res.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--window-frames", "0"], "A window holds 1 to 2048 frames (25 ms each); got 0."),
        ([], "is a split folder: give --window-frames"),
        (["--window-frames", "8", "--tokens", "32"], "a split folder takes --window-frames only"),
        (["--window-frames", "8", "--overlap", "-1"], "--overlap takes 0 to 64 frames"),
    ],
)
def test_bad_window_options(
    split_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kokoro_home: Path,
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "o"
    res = run_cli(["shapes", "bind", str(split_dir), "-o", str(out), *extra], capsys)
    assert res.exit_code == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_window_frames_need_a_split_folder(
    aligner: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kokoro_home: Path
) -> None:
    res = run_cli(
        ["shapes", "bind", str(aligner), "--window-frames", "8", "-o", str(tmp_path / "o")], capsys
    )
    assert res.exit_code == 2 and "is not a split folder" in res.stderr
