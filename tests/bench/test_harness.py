"""The bench harness on the synthetic model: interleaving, statistics, ratios, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from kokoro_opt.bench.harness import (
    BenchConfig,
    BenchModel,
    ModelBench,
    Utterance,
    percentile,
    run_bench,
    speedups,
)
from kokoro_opt.errors import UserInputError

TEXTS = ["Hello there, friend. How are you today?", "A short one."]


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([10.0], 95) == 10.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)


def test_speedups_are_geometric_means_of_per_text_ratios() -> None:
    model = BenchModel("m", Path("m.onnx"))
    base = ModelBench(
        model, 0.0, [Utterance(0, "a", 1.0, [100.0] * 3), Utterance(1, "b", 1.0, [40.0])]
    )
    fast = ModelBench(
        model, 0.0, [Utterance(0, "a", 1.0, [50.0] * 3), Utterance(1, "b", 1.0, [10.0])]
    )
    ratios = speedups([base, fast])
    assert ratios[0] == pytest.approx(1.0)
    assert ratios[1] == pytest.approx((2.0 * 4.0) ** 0.5)


def test_run_bench_measures_each_model_on_each_text(
    synthetic_fp32: Path, synthetic_int8: Path
) -> None:
    calls: list[tuple[str, int, int]] = []
    config = BenchConfig(texts=TEXTS, runs=3, warmup=1, concurrency=2, measure_memory=False)
    results = run_bench(
        [BenchModel("fp32", synthetic_fp32), BenchModel("int8", synthetic_int8)],
        config,
        progress=lambda task, done, total: calls.append((task, done, total)),
    )
    assert [r.model.name for r in results] == ["fp32", "int8"]
    for res in results:
        assert len(res.utterances) == len(TEXTS)
        for utt in res.utterances:
            assert len(utt.latency_ms) == 3 and len(utt.ttfa_ms) == 3
            assert all(t <= lat + 1e-6 for t, lat in zip(utt.ttfa_ms, utt.latency_ms, strict=True))
            assert utt.audio_s > 0
        summary = res.summary()
        assert (
            summary["latency_ms"]["median"] > 0
            and summary["rtf"]["p90"] >= summary["rtf"]["median"]
        )
        assert res.concurrency is not None and res.concurrency["errors"] == []
        assert res.concurrency["streams"] == 2
    # Interleaved: the progress alternates between the two models.
    names = [task.split()[-1] for task, _, _ in calls]
    assert names[:4] == ["fp32", "int8", "fp32", "int8"]
    assert calls[-1][1] == calls[-1][2] == (1 + 3) * len(TEXTS) * 2


def test_peak_rss_is_measured_in_a_child(synthetic_fp32: Path) -> None:
    config = BenchConfig(texts=["Hi there."], runs=1, warmup=0)
    (res,) = run_bench([BenchModel("fp32", synthetic_fp32)], config)
    assert res.peak_rss_mb is not None and res.peak_rss_mb > 50


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_is_the_childs_own_not_the_parents(synthetic_fp32: Path) -> None:
    """ru_maxrss survives execve on Linux, so a spawned child once reported its parent's RSS."""
    import numpy as np

    from kokoro_opt.bench.harness import peak_rss_mb

    config = BenchConfig(texts=["Hi there."], runs=1, warmup=0)
    small = peak_rss_mb(synthetic_fp32, config)
    ballast = np.ones(1536 * 2**20 // 8)  # 1.5 GiB resident in this (parent) process
    big_parent = peak_rss_mb(synthetic_fp32, config)
    del ballast
    assert small is not None and big_parent is not None
    assert big_parent < 1000, big_parent  # the tiny model's child needs a few hundred MB
    assert abs(big_parent - small) < 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"texts": []}, "No texts"),
        ({"texts": ["a"], "runs": 0}, "--runs"),
        ({"texts": ["a"], "warmup": -1}, "--warmup"),
        ({"texts": ["a"], "concurrency": 0}, "--concurrency"),
    ],
)
def test_bad_config(kwargs: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        BenchConfig(**kwargs)


def test_unknown_voice_fails_before_measuring(synthetic_fp32: Path) -> None:
    with pytest.raises(UserInputError, match="nope"):
        run_bench([BenchModel("m", synthetic_fp32)], BenchConfig(texts=TEXTS, voice="nope"))
