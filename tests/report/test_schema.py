"""The report schema: round trip, strictness, cross references, version and file errors."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from kokoro_opt.errors import ReportError, SchemaVersionError, UserInputError
from kokoro_opt.report.meta import collect_run_meta, merge_reports, run_dir_name
from kokoro_opt.report.schema import (
    SCHEMA_VERSION,
    LatencyStats,
    ModelEntry,
    QuantStyle,
    Report,
    TradeoffStep,
    load_report,
    metric_fields,
    save_report,
)
from tests.report_factory import Spec, build_report


def _dump(report: Report) -> dict:
    return json.loads(report.model_dump_json())


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "report.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    report = build_report(tradeoff=True, concurrency=2)
    path = save_report(report, tmp_path / "run")
    assert path == tmp_path / "run" / "report.json"
    loaded = load_report(path)
    assert loaded == report
    assert load_report(tmp_path / "run") == report  # a run folder works too
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["models"][1]["speed"]["concurrency"]["streams"] == 2
    assert data["tradeoff"]["steps"][0]["pinned"] == []
    assert loaded.run.created.tzinfo is not None


def test_aggregates_in_the_fixture_follow_the_rows() -> None:
    # The factory computes aggregates from rows; the schema must carry them unchanged.
    report = build_report()
    int8 = report.model("kokoro-int8")
    rows = report.rows("kokoro-int8")
    lats = sorted(x for r in rows for x in r.latency_ms)
    assert int8.speed is not None
    assert lats[0] <= int8.speed.latency_ms.median <= int8.speed.latency_ms.p90 <= lats[-1]
    comp = report.comparison("kokoro-int8", "kokoro-fp32")
    assert comp is not None and 1.5 < comp.speedup < 2.3  # 0.20 vs 0.11 RTF, with noise


def test_save_replaces_atomically_and_leaves_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_report(seed=1)
    save_report(first, tmp_path)
    before = (tmp_path / "report.json").read_text()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_report(build_report(seed=2), tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "report.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert oct((tmp_path / "report.json").stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ((), "extra_section"),
        (("run",), "user"),
        (("models", 1, "speed"), "latency"),
        (("models", 0, "quality"), "wer_pct"),
        (("utterances", 0), "audio_seconds"),
    ],
)
def test_unknown_keys_are_rejected(tmp_path: Path, where: tuple, key: str) -> None:
    data = _dump(build_report())
    node = data
    for part in where:
        node = node[part]
    node[key] = 1
    with pytest.raises(ReportError) as info:
        load_report(_write(tmp_path, data))
    msg = str(info.value)
    assert "does not match report schema version 1" in msg
    assert key in msg and "unknown key" in msg
    assert "\n" not in msg


def test_wrong_types_and_values_are_rejected(tmp_path: Path) -> None:
    data = _dump(build_report())
    data["models"][1]["speed"]["rtf"]["median"] = "0.11"  # a string, not a number
    data["models"][1]["sha256"] = "abc"
    data["models"][0]["quant_style"] = "int3"
    with pytest.raises(ReportError) as info:
        load_report(_write(tmp_path, data))
    msg = str(info.value)
    assert "models[1].speed.rtf.median" in msg
    assert "models[1].sha256" in msg
    assert "models[0].quant_style" in msg


def test_missing_required_key(tmp_path: Path) -> None:
    data = _dump(build_report())
    del data["models"][0]["size_bytes"]
    with pytest.raises(ReportError, match=r"models\[0\]\.size_bytes: missing required key"):
        load_report(_write(tmp_path, data))


def test_nan_and_inverted_percentiles_are_rejected() -> None:
    with pytest.raises(ValidationError, match="finite"):
        LatencyStats(median=float("nan"), p90=1.0, mean=1.0)
    with pytest.raises(ValidationError, match=r"latency_ms.p90 \(100.0\) is below"):
        LatencyStats(median=200.0, p90=100.0, mean=150.0)


def test_cross_references_are_checked() -> None:
    report = build_report()
    data = report.model_dump()
    dup = dict(data, models=[data["models"][0], data["models"][0]])
    with pytest.raises(ValidationError, match="model names must be unique; repeated: kokoro-fp32"):
        Report.model_validate(dup)
    bad_row = dict(data, utterances=[dict(data["utterances"][0], model="kokoro-q4")])
    with pytest.raises(ValidationError, match="names model 'kokoro-q4', which is not in models"):
        Report.model_validate(bad_row)
    bad_cmp = dict(data, comparisons=[dict(data["comparisons"][1], reference="fp16")])
    with pytest.raises(ValidationError, match="comparison reference 'fp16' is not a model"):
        Report.model_validate(bad_cmp)
    twice = dict(data, utterances=[data["utterances"][0], data["utterances"][0]])
    with pytest.raises(ValidationError, match="appears twice"):
        Report.model_validate(twice)


def test_tradeoff_chosen_must_be_a_step() -> None:
    report = build_report(tradeoff=True)
    assert report.tradeoff is not None
    data = report.model_dump()
    data["tradeoff"]["chosen"] = "no-such-step"
    with pytest.raises(ValidationError, match="tradeoff.chosen 'no-such-step' is not a step"):
        Report.model_validate(data)
    with pytest.raises(ValidationError):
        TradeoffStep(name=" padded ", speed=1.0, fidelity=0.1)


def test_model_lookup_error_lists_names() -> None:
    report = build_report()
    with pytest.raises(ReportError, match="has kokoro-fp32, kokoro-int8"):
        report.model("kokoro-q4", role="baseline")


@pytest.mark.parametrize(("version", "hint"), [(2, "upgrade kokoro-opt"), (0, "re-create it")])
def test_other_schema_version_names_both_versions(tmp_path: Path, version: int, hint: str) -> None:
    data = _dump(build_report())
    data["schema_version"] = version
    with pytest.raises(SchemaVersionError) as info:
        load_report(_write(tmp_path, data), role="baseline")
    msg = str(info.value)
    assert f"schema version {version}" in msg and f"reads schema version {SCHEMA_VERSION}" in msg
    assert msg.startswith("The baseline ") and hint in msg
    assert isinstance(info.value, UserInputError) and info.value.exit_code == 2


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="does not exist"):
        load_report(tmp_path / "nope.json")
    with pytest.raises(ReportError, match=r"not valid JSON \(line 2, column 1"):
        load_report(_write(tmp_path, '{"schema_version": 1,\n}'))
    with pytest.raises(ReportError, match="no 'schema_version' key"):
        load_report(_write(tmp_path, {"models": []}))
    with pytest.raises(ReportError, match="no 'schema_version' key"):
        load_report(_write(tmp_path, "[1, 2]"))


def test_quant_styles_match_inspect() -> None:
    from typing import get_args

    from kokoro_opt.graph.inspect import QUANT_STYLES

    assert get_args(QuantStyle) == QUANT_STYLES


def test_metric_fields_are_the_numeric_leaves() -> None:
    fields = metric_fields()
    for path in (
        "size_bytes",
        "speed.rtf.median",
        "speed.ttfa_ms.p95",
        "speed.peak_rss_mb",
        "speed.concurrency.rtf_max",
        "quality.wer",
        "quality.logmel_distance",
    ):
        assert path in fields and fields[path]
    for not_numeric in ("name", "path", "sha256", "quant_style", "quality.reference", "speed"):
        assert not_numeric not in fields
    # every path resolves on a full model entry
    entry = build_report(concurrency=2).model("kokoro-int8")
    for path in fields:
        value: object = entry
        for part in path.split("."):
            value = getattr(value, part)
        assert value is None or isinstance(value, int | float), path


def test_collect_run_meta_describes_this_machine() -> None:
    import onnxruntime

    meta = collect_run_meta(provider="cpu", threads=2, title="t", voice="jf_alpha")
    assert meta.host.cores == os.cpu_count()
    assert meta.host.onnxruntime_version == onnxruntime.__version__
    assert meta.host.cpu_model
    assert meta.command == sys.argv
    assert meta.created.tzinfo is not None
    assert meta.voice == "jf_alpha" and meta.host.threads == 2
    with pytest.raises(ValidationError):
        collect_run_meta(provider="tpu", threads=None)  # type: ignore[arg-type]


def test_run_dir_name_is_path_safe() -> None:
    when = datetime(2025, 5, 1, 9, 8, 7, tzinfo=timezone.utc)
    assert run_dir_name("bench fp32/int8", when) == "bench-fp32-int8-20250501-090807"
    assert run_dir_name("///", when) == "run-20250501-090807"


def test_merge_eval_and_bench_reports() -> None:
    speed_only = build_report(
        [
            Spec("kokoro-fp32", rtf=0.2, size_bytes=325_600_000, quality=False),
            Spec("kokoro-int8", rtf=0.11, size_bytes=126_000_000, quality=False),
        ],
        seed=3,
    )
    quality_only = build_report(
        [
            Spec("kokoro-fp32", rtf=0.2, size_bytes=325_600_000, speed=False),
            Spec("kokoro-int8", rtf=0.11, size_bytes=126_000_000, logmel=0.3, speed=False),
        ],
        seed=4,
    )
    merged = merge_reports(speed_only, quality_only)
    int8 = merged.model("kokoro-int8")
    assert int8.speed == speed_only.model("kokoro-int8").speed
    assert int8.quality == quality_only.model("kokoro-int8").quality
    row = merged.rows("kokoro-int8")[0]
    assert row.latency_ms == speed_only.rows("kokoro-int8")[0].latency_ms
    assert row.wer == quality_only.rows("kokoro-int8")[0].wer
    assert len(merged.utterances) == len(speed_only.utterances)
    assert merged.comparisons == speed_only.comparisons
    assert any(n.startswith("Merged from:") for n in merged.notes)

    other = ModelEntry(**{**quality_only.models[1].model_dump(), "sha256": "0" * 64})
    changed = quality_only.model_copy(update={"models": [quality_only.models[0], other]})
    with pytest.raises(ReportError, match="model 'kokoro-int8' has sha256"):
        merge_reports(speed_only, changed)


def test_bench_harness_summary_fits_speed_metrics() -> None:
    """The bench harness's aggregate dicts map 1:1 onto SpeedMetrics / ConcurrencyStats."""
    from kokoro_opt.bench.harness import BenchModel, ModelBench, Utterance
    from kokoro_opt.report.schema import ConcurrencyStats, SpeedMetrics

    utts = [
        Utterance(0, "One.", audio_s=1.2, latency_ms=[210.0, 190.0, 200.0], ttfa_ms=[90.0] * 3,
                  cpu_s=[0.35, 0.33, 0.34]),
        Utterance(1, "Two words.", audio_s=2.5, latency_ms=[400.0, 420.0, 380.0],
                  ttfa_ms=[95.0, 99.0, 97.0], cpu_s=[0.7, 0.72, 0.69]),
    ]  # fmt: skip
    bench = ModelBench(BenchModel("m", Path("m.onnx")), load_s=0.8, utterances=utts)
    bench.peak_rss_mb = 812.5
    bench.concurrency = {
        "streams": 2,
        "wall_s": 3.0,
        "throughput_audio_s_per_s": 2.4,
        "rtf_max": 0.9,
        "rtf_median": 0.85,
        "errors": [],
    }
    speed = SpeedMetrics(
        **bench.summary(), runs=3, warmup=1, concurrency=ConcurrencyStats(**bench.concurrency)
    )
    assert speed.latency_ms.median == 295.0  # (210 + 380) / 2
    assert speed.rtf.median <= speed.rtf.p90
    assert speed.ttfa_ms.p95 >= speed.ttfa_ms.p50 == 92.5  # (90 + 95) / 2
    assert speed.audio_s == pytest.approx(3.7)
