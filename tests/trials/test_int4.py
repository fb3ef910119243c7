"""The INT4 trial's recommendation rule and its settings checks (no models needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kokoro_opt.errors import UserInputError
from kokoro_opt.trials.int4 import (
    DEFAULT_MATRIX,
    Measured,
    TrialSettings,
    check_plan,
    parse_variants,
    recommend,
    verdict_notes,
)


def _measured(name: str, size: int, wer: float, logmel: float, nonfinite: int = 0) -> Measured:
    return Measured(
        name=name,
        path=f"{name}.onnx",
        sha256="0" * 64,
        size_bytes=size,
        quant_style="int4",
        has_weight_dq=False,
        audio_s=[1.0, 1.0],
        logmel=[logmel, logmel],
        mcd=[0.5, 0.5],
        duration_ratio=1.0,
        transcripts=["a", "b"],
        wer=wer,
        cer=wer / 2,
        utterance_wer=[wer, wer],
        asr_s=0.1,
        latency_ms={},
        reference_latency_ms={},
        speedup={"runtime": 1.0},
        nonfinite=nonfinite,
    )


def _evaluation(*rows: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    models = {"fp32": _measured("fp32", 325_000_000, 0.08, 0.0)}
    models.update({row[0]: _measured(*row) for row in rows})
    built = {row[0]: {"path": Path(f"{row[0]}.onnx"), "details": {}} for row in rows}
    evaluation = {"reference": "fp32", "models": models, "texts": ["a b", "c d"], "timing": [0]}
    return evaluation, built


def test_smallest_within_the_wer_margin_wins() -> None:
    evaluation, built = _evaluation(
        ("big-good", 60_000_000, 0.07, 0.20),
        ("small-ok", 45_000_000, 0.099, 0.31),  # 1.9 points worse than FP32: accepted
        ("tiny-bad", 40_000_000, 0.11, 0.40),  # 3 points worse: rejected though smallest
        ("tiny-nan", 39_000_000, 0.08, 0.10, 12),  # non-finite samples: rejected
    )
    rec = recommend(evaluation, built, TrialSettings())
    assert rec["chosen"] == "small-ok"
    assert rec["accepted"] == ["big-good", "small-ok"]
    assert rec["smallest"] == "tiny-nan"
    assert rec["meets_size_goal"] is True and rec["size_bytes"] == 45_000_000
    notes = verdict_notes(evaluation, rec, TrialSettings())
    assert notes[0].startswith("Recommended: small-ok, 45.0 MB (meets the 50 MB goal")


def test_sizes_within_one_percent_tie_and_lower_logmel_wins() -> None:
    evaluation, built = _evaluation(
        ("rtn-b128", 44_986_753, 0.084, 0.31),
        ("gptq-b128", 44_988_496, 0.084, 0.25),  # 1.7 kB larger: a tie
        ("gptq-b64", 47_838_882, 0.07, 0.20),  # 6 % larger: not a tie
    )
    assert recommend(evaluation, built, TrialSettings())["chosen"] == "gptq-b128"


def test_nothing_accepted_or_no_wer_means_no_recommendation() -> None:
    evaluation, built = _evaluation(("bad", 45_000_000, 0.2, 0.5))
    rec = recommend(evaluation, built, TrialSettings())
    assert rec["chosen"] is None and rec["accepted"] == []
    assert "none is recommended" in verdict_notes(evaluation, rec, TrialSettings())[0]
    evaluation, built = _evaluation(("good", 45_000_000, 0.08, 0.2))
    assert recommend(evaluation, built, TrialSettings(wer=False))["chosen"] is None


def test_wer_margin_is_configurable() -> None:
    evaluation, built = _evaluation(("q", 45_000_000, 0.095, 0.3))
    assert recommend(evaluation, built, TrialSettings(wer_margin=0.01))["chosen"] is None
    assert recommend(evaluation, built, TrialSettings(wer_margin=0.02))["chosen"] == "q"


def test_variants_and_plan_checks() -> None:
    assert parse_variants(None) == DEFAULT_MATRIX
    assert [v.name for v in parse_variants(["all-rtn-b64"])] == ["all-rtn-b64"]
    with pytest.raises(UserInputError, match="Unknown trial variant"):
        parse_variants(["all-rtn-b16"])
    with pytest.raises(UserInputError, match="listed more than once: all-rtn-b64"):
        parse_variants(["all-rtn-b64", "all-rtn-b64"])
    with pytest.raises(UserInputError, match="clash with the reference or a variant"):
        check_plan(DEFAULT_MATRIX[:1], TrialSettings(compare={"fp32": Path("x.onnx")}))
    with pytest.raises(UserInputError, match="wer_margin is a fraction"):
        check_plan(DEFAULT_MATRIX[:1], TrialSettings(wer_margin=2.0))
    # every variant of the matrix is a valid pass config
    assert all(v.config().block_size in (32, 64, 128) for v in DEFAULT_MATRIX)
