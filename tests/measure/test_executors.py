"""Executors: the same eval on the synthetic models gives the same numbers in this process, in
worker processes and on a real local Ray cluster; bad specs are one clear error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kokoro_opt.bench.evaluate import EvalConfig, EvalResult, evaluate
from kokoro_opt.bench.harness import BenchModel
from kokoro_opt.errors import UserInputError
from kokoro_opt.measure.executors import (
    Executor,
    ProcessExecutor,
    check_executor,
    parse_executor,
)

TEXTS = ["Hello there, friend.", "A short one.", "The third sentence is a little longer."]


def _eval(models: list[BenchModel], executor: Executor, asr: bool = False) -> EvalResult:
    config = EvalConfig(texts=TEXTS, reference=models[0].name, asr=asr, threads=2)
    calls: list[tuple[str, int, int]] = []
    result = evaluate(models, config, executor=executor, progress=lambda *c: calls.append(c))
    assert [c[1:] for c in calls][-1] == (len(TEXTS), len(TEXTS))
    assert len({c[0] for c in calls}) == 1  # one bar for all the tasks
    return result


def _same(result: EvalResult, expected: EvalResult) -> None:
    """Everything measured except seconds of work equal, numbers to 1e-6: a dynamic INT8
    graph's reductions round differently with another thread count (about 1e-7 here)."""
    for m, e in zip(result.models, expected.models, strict=True):
        assert (m.name, m.transcripts, m.nonfinite) == (e.name, e.transcripts, e.nonfinite)
        assert m.audio_s == e.audio_s
        got, want = m.summary(), e.summary()
        for key in set(got) | set(want):
            if key != "asr_seconds":
                assert got[key] == (want[key] if not isinstance(want[key], float) else
                                    pytest.approx(want[key], abs=1e-6)), key  # fmt: skip


@pytest.fixture(scope="module")
def models(synthetic_fp32: Path, synthetic_int8: Path) -> list[BenchModel]:
    return [BenchModel("fp32", synthetic_fp32), BenchModel("int8", synthetic_int8)]


@pytest.fixture(scope="module")
def local_result(models: list[BenchModel]) -> EvalResult:
    with Executor() as executor:
        return _eval(models, executor, asr=True)


def test_processes_give_the_local_numbers(
    models: list[BenchModel], local_result: EvalResult
) -> None:
    with ProcessExecutor(2) as executor:
        assert executor.task_threads(2) == 1 and executor.task_threads(None) >= 1
        ref = executor.share(models[0].path)
        assert ref.path == str(models[0].path.resolve()) and len(ref.sha256) == 64
        result = _eval(models, executor, asr=True)
    _same(result, local_result)
    assert result.model("int8").summary()["logmel_distance"] > 0


def test_ray_local_cluster_gives_the_local_numbers(
    models: list[BenchModel], local_result: EvalResult, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    os.environ["KOKORO_OPT_HOME"] = str(tmp_path / "home")  # the workers' file cache
    try:
        with parse_executor("ray") as executor:
            assert executor.kind == "ray" and executor.task_threads(None) == 1
            ref = executor.share(models[0].path)
            assert ref.path is None and ref.blob is not None  # by content, not by path
            result = _eval(models, executor, asr=True)
    finally:
        del os.environ["KOKORO_OPT_HOME"]
    _same(result, local_result)
    cached = list((tmp_path / "home" / "measure" / "files").glob("*.onnx"))
    assert {p.stem for p in cached} == _shas(models)


def _shas(models: list[BenchModel]) -> set[str]:
    from kokoro_opt.graph.io import sha256_file

    return {sha256_file(m.path) for m in models}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("threads", "Unknown executor 'threads': use local, processes"),
        ("processes:0", "the number of worker processes must be a whole number"),
        ("processes:x", "the number of worker processes must be a whole number"),
        ("local:3", "Unknown executor 'local:3'"),
    ],
)
def test_bad_executor_specs_are_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        check_executor(spec)


def test_good_specs_parse_without_starting_anything() -> None:
    assert check_executor(None) == "local"
    assert check_executor("processes") == "processes"
    assert check_executor("processes:3") == "processes:3"
    assert check_executor("ray:auto") == "ray:auto"
    executor = parse_executor("processes:3")
    assert executor.describe() == "processes:3" and executor.workers == 3
    executor.close()  # no pool was started
