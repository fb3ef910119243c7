"""Pinning analysis and search on the synthetic Kokoro-shaped model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kokoro_opt.errors import UserInputError
from kokoro_opt.measure.reference import reference_set
from kokoro_opt.passes import pin
from kokoro_opt.trials import pin as trial


@pytest.fixture(scope="module")
def prepared(synthetic_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> trial.Prepared:
    return trial.prepare(
        synthetic_fp32,
        pin.build_config({"samples": 4}),
        cache_folder=tmp_path_factory.mktemp("pin-cache"),
        threads=1,
    )


@pytest.fixture(scope="module")
def analysis(prepared: trial.Prepared) -> dict:
    return trial.analyze(prepared, sentences=2, all_but=True)


def test_analysis_ranks_every_group_with_its_evidence(
    prepared: trial.Prepared, analysis: dict
) -> None:
    rows = analysis["groups"]
    assert [r["group"] for r in rows] and {r["group"] for r in rows} == set(prepared.groups)
    alone = [r["logmel_alone"] for r in rows]
    assert alone == sorted(alone, reverse=True)  # most sensitive first
    assert all(math.isfinite(v) and v >= 0 for v in alone)
    assert max(alone) > 0.01  # quantizing something does change the audio
    for row in rows:
        assert 0 <= row["time_share"] <= 1
        assert row["nodes"] == len(prepared.groups[row["group"]])
        assert row["logmel_all_but"] is not None and len(row["per_sentence"]) == 2
        assert row["weight_sqnr_db"] is not None and row["weight_sqnr_db"] > 10
        assert row["activation_sqnr_db"] is not None and row["activation_sqnr_db"] > 10
        assert row["sensitivity_per_time"] == pytest.approx(
            row["logmel_alone"] / max(row["time_share"], 1e-4), rel=1e-2, abs=1e-4
        )
    assert 0 < sum(r["time_share"] for r in rows) <= 1.0 + 1e-9
    # Everything quantized is at least as far from FP32 as the worst single group.
    assert analysis["all_quantized_logmel"] >= max(alone) * 0.8
    assert analysis["sentences"] == 2 and not analysis["calibration"]["reused"]


def test_search_meets_a_budget_between_fp32_and_full_int8(
    prepared: trial.Prepared, analysis: dict, tmp_path: Path
) -> None:
    limit = analysis["all_quantized_logmel"] * 0.6
    rows = sorted(analysis["groups"], key=lambda r: -r["sensitivity_per_time"])
    found = trial.search(
        prepared,
        trial.Budget(max_logmel=limit),
        sentences=2,
        timing_runs=1,
        order=[r["group"] for r in rows],
        shares={r["group"]: r["time_share"] for r in rows},
        alone={r["group"]: r["logmel_alone"] for r in rows},
        free_share=0.0,  # no free groups: one group per step
        out_dir=tmp_path,
    )
    result = found.to_dict()
    assert result["order"] == [r["group"] for r in rows] and result["free_groups"] == []
    steps = result["steps"]
    assert steps[0]["action"] == "quantize every group" and not steps[0]["meets"]
    chosen = next(s for s in steps if s["name"] == result["chosen"])
    assert chosen["meets"] and chosen["logmel"] <= limit
    assert chosen["pinned"] == result["pinned"] and result["pinned"]
    # The greedy phase pins one group per step until the budget holds, in the given order.
    first_ok = next(i for i, s in enumerate(steps) if s["meets"])
    for i in range(1, first_ok + 1):
        assert len(steps[i]["pinned"]) == i and steps[i]["action"].startswith("pin ")
    assert all(not s["meets"] for s in steps[:first_ok])
    # Then every pinned group is tried un-pinned once, unless quantizing it alone already
    # breaks the budget.
    unpins = [s["action"].removeprefix("un-pin ") for s in steps[first_ok + 1 :]]
    assert sorted(unpins + result["unpin_skipped"]) == sorted(steps[first_ok]["pinned"])
    alone = {r["group"]: r["logmel_alone"] for r in analysis["groups"]}
    assert all(alone[g] > limit for g in result["unpin_skipped"])
    assert (tmp_path / "pinned.onnx").is_file() and not (tmp_path / ".work").exists()
    assert result["final_speed"]["speedup"] > 0
    paths = trial.write_search_report(found, prepared, tmp_path, command=["test"])
    assert "Pinning search" in paths["report.md"].read_text()


def test_search_pins_the_free_groups_in_one_step(
    prepared: trial.Prepared, analysis: dict, tmp_path: Path
) -> None:
    rows = sorted(analysis["groups"], key=lambda r: -r["sensitivity_per_time"])
    shares = {r["group"]: r["time_share"] for r in rows}
    cut = sorted(shares.values())[len(shares) // 2]  # the cheaper half is "free"
    free = [r["group"] for r in rows if r["time_share"] < cut]
    assert free and len(free) < len(rows)
    found = trial.search(
        prepared,
        trial.Budget(max_logmel=1e-9),  # never met: every step runs
        sentences=1,
        timing_runs=1,
        order=[r["group"] for r in rows],
        shares=shares,
        alone={r["group"]: r["logmel_alone"] for r in rows},
        free_share=cut,
        max_steps=3,
        out_dir=tmp_path,
    )
    result = found.to_dict()
    steps = result["steps"]
    assert result["free_groups"] == free
    assert steps[1]["pinned"] == free and steps[1]["action"].startswith(f"pin {len(free)} groups")
    # then one costly group per step, in the given order
    costly = [g for g in result["order"] if g not in free]
    assert steps[2]["pinned"] == [*free, costly[0]]


def test_a_step_counts_only_if_it_holds_on_the_confirmation_set(
    prepared: trial.Prepared, tmp_path: Path
) -> None:
    # The fully quantized model's mean distance on k held-out sentences, k = 1..4: pick a
    # screen and a confirmation set where the screen reads better, and put the limit there.
    full = trial.build_variant(prepared, list(prepared.groups), tmp_path / "full.onnx")
    mean = {}
    for k in range(1, 5):
        held = reference_set(prepared, k)
        dists, _ = trial.measure_variant(prepared, full, held)
        mean[k] = sum(dists) / k
    pairs = [(n, m) for n in mean for m in mean if n < m and mean[n] < mean[m] - 1e-3]
    assert pairs, mean
    n, m = pairs[0]
    limit = mean[n] + 1e-6
    found = trial.search(
        prepared,
        trial.Budget(max_logmel=limit),
        sentences=n,
        confirm_sentences=m,
        timing_runs=1,
        max_steps=1,
        order=list(prepared.groups),
        shares={g: 0.1 for g in prepared.groups},
        out_dir=tmp_path / "search",
    )
    result = found.to_dict()
    (step,) = result["steps"]
    assert step["logmel"] <= limit  # passes the screen ...
    checked = step["confirmation"]
    assert checked["sentences"] == m and checked["logmel"] > limit  # ... not the confirmation
    assert not step["meets"] and result["chosen"] is None
    assert result["confirm"]["sentences"] == m
    paths = trial.write_search_report(found, prepared, tmp_path / "search", command=["test"])
    assert f"checked again on {m}" in paths["report.md"].read_text()


def test_search_stops_when_the_budget_already_holds(
    prepared: trial.Prepared, analysis: dict, tmp_path: Path
) -> None:
    found = trial.search(
        prepared, trial.Budget(max_logmel=50.0), sentences=1, timing_runs=1, out_dir=tmp_path
    )
    result = found.to_dict()
    assert [s["name"] for s in result["steps"]] == ["s00"]
    assert result["chosen"] == "s00" and result["pinned"] == []


def test_search_gives_up_after_max_steps(
    prepared: trial.Prepared, analysis: dict, tmp_path: Path
) -> None:
    found = trial.search(
        prepared,
        trial.Budget(max_logmel=1e-9),
        sentences=1,
        timing_runs=1,
        max_steps=2,
        free_share=0.0,  # on a loaded machine every group of the tiny model can profile "free"
        out_dir=tmp_path,
    )
    result = found.to_dict()
    assert len(result["steps"]) == 2 and result["chosen"] is None
    assert not (tmp_path / "pinned.onnx").exists()
    paths = trial.write_search_report(found, prepared, tmp_path, command=["test"])
    assert "No step met the budget" in paths["report.md"].read_text()


def test_wer_budget_uses_the_asr(prepared: trial.Prepared, tmp_path: Path) -> None:
    found = trial.search(
        prepared,
        trial.Budget(max_wer_increase=100.0),
        sentences=1,
        timing_runs=1,
        order=list(prepared.groups),
        shares={g: 0.1 for g in prepared.groups},
        out_dir=tmp_path,
    )
    result = found.to_dict()
    assert result["fp32_wer"] is not None and result["steps"][0]["wer"] is not None
    assert result["chosen"] == "s00"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wer=abc", "Cannot read budget part"),
        ("speed=2", "Cannot read budget part"),
        ("wer", "Cannot read budget part"),
        ("", "No quality budget"),
        ("logmel=-1", "positive log-mel distance"),
        ("wer=+200", "percentage points"),
    ],
)
def test_budget_validation(text: str, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        trial.parse_budget(text)


def test_budget_parsing() -> None:
    budget = trial.parse_budget("wer=+0.5, logmel=0.28")
    assert budget == trial.Budget(max_wer_increase=0.5, max_logmel=0.28)
    assert trial.meets_budget(budget, 0.2, 0.065, 0.062)
    assert not trial.meets_budget(budget, 0.2, 0.075, 0.062)
    assert not trial.meets_budget(budget, 0.3, 0.062, 0.062)
    assert not trial.meets_budget(budget, math.inf, 0.062, 0.062)


def test_logmel_limit_from_another_model(prepared: trial.Prepared, tmp_path: Path) -> None:
    other = trial.build_variant(prepared, ["generator/ups.0"], tmp_path / "other.onnx")
    found = trial.search(
        prepared,
        trial.Budget(),
        sentences=1,
        timing_runs=1,
        order=list(prepared.groups),
        shares={g: 0.1 for g in prepared.groups},
        logmel_of=other,
        out_dir=tmp_path / "search",
    )
    result = found.to_dict()
    limit = result["budget_model"]["logmel"]
    assert limit > 0 and result["budget"]["max_logmel"] == limit
    chosen = next(s for s in result["steps"] if s["name"] == result["chosen"])
    assert chosen["logmel"] <= limit
