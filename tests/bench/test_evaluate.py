"""The eval library on the synthetic model: same phonemes for every model, WAVs, distances,
reference ordering, report objects that merge with a bench over the same texts."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import onnx
import pytest

from kokoro_opt.bench.evaluate import EvalConfig, evaluate, wav_path
from kokoro_opt.bench.harness import BenchConfig, BenchModel, run_bench, speedups
from kokoro_opt.bench.reports import (
    bench_report,
    describe_model,
    eval_report,
    merge_with_existing,
    utterance_ids,
)
from kokoro_opt.errors import ModelFormatError, TextError, UserInputError
from kokoro_opt.report.meta import collect_run_meta
from kokoro_opt.report.schema import save_report

TEXTS = ["Hello there, friend.", "A short one."]


@pytest.fixture(scope="module")
def fp32_copy(synthetic_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-identical copy of the synthetic FP32 model under another name."""
    return Path(shutil.copy(synthetic_fp32, tmp_path_factory.mktemp("copy") / "copy.onnx"))


def _meta() -> object:
    return collect_run_meta(provider="cpu", threads=1, command=["test"])


def test_evaluate_feeds_identical_phonemes_and_keeps_wavs(
    synthetic_fp32: Path, synthetic_int8: Path, tmp_path: Path
) -> None:
    calls: list[tuple[str, int, int]] = []
    models = [BenchModel("int8", synthetic_int8), BenchModel("fp32", synthetic_fp32)]
    config = EvalConfig(texts=TEXTS, reference="fp32", asr=False, threads=1, wav_dir=tmp_path)
    result = evaluate(models, config, progress=lambda *c: calls.append(c))

    assert result.reference == "fp32" and result.asr is None
    assert [m.name for m in result.models] == ["int8", "fp32"]
    assert len(result.phonemes) == len(TEXTS) and all(result.phonemes)
    ref, int8 = result.model("fp32"), result.model("int8")
    assert ref.is_reference and ref.distances is None and ref.reference is None
    assert int8.reference == "fp32" and int8.distances is not None and len(int8.distances) == 2
    # One task per text (the reference renders it first, then the others); one progress bar.
    assert {c[0] for c in calls} == {"Synthesizing and scoring 2 model(s) on local"}
    assert [c[1:] for c in calls] == [(1, 2), (2, 2)]
    for m in result.models:
        assert m.transcripts is None and m.errors is None
        for i, seconds in enumerate(m.audio_s):
            path = wav_path(tmp_path, m.name, i)
            assert m.wavs[i] == path and path.is_file()
            with wave.open(str(path)) as w:
                assert w.getframerate() == 24000 and w.getnchannels() == 1
                assert w.getnframes() / 24000 == pytest.approx(seconds, abs=1e-4)
    summary = int8.summary()
    assert summary["n_utterances"] == 2 and summary["wer"] is None
    assert 0 < summary["logmel_distance"] < 5
    assert summary["duration_ratio"] == pytest.approx(sum(int8.audio_s) / sum(ref.audio_s))


def test_identical_models_are_at_distance_zero(synthetic_fp32: Path, fp32_copy: Path) -> None:
    models = [BenchModel("fp32", synthetic_fp32), BenchModel("copy", fp32_copy)]
    config = EvalConfig(texts=TEXTS, reference="fp32", asr=False, threads=1)
    result = evaluate(models, config)
    summary = result.model("copy").summary()
    assert summary["logmel_distance"] == pytest.approx(0.0, abs=1e-6)
    assert summary["mcd_db"] == pytest.approx(0.0, abs=1e-4)
    assert summary["duration_ratio"] == pytest.approx(1.0)
    assert all(w is None for w in result.model("copy").wavs)


def test_evaluate_with_asr_fills_wer_and_asr_speed(synthetic_fp32: Path, fp32_copy: Path) -> None:
    models = [BenchModel("fp32", synthetic_fp32), BenchModel("copy", fp32_copy)]
    result = evaluate(models, EvalConfig(texts=TEXTS[:1], reference="fp32", threads=1))
    assert result.asr is not None and result.asr.load_s >= 0
    assert result.asr.audio_s == pytest.approx(sum(sum(m.audio_s) for m in result.models))
    assert result.asr.asr_s > 0 and result.asr.audio_s_per_s is not None
    for m in result.models:
        assert m.transcripts is not None and len(m.transcripts) == 1
        assert m.errors is not None and m.summary()["wer"] == m.errors.wer
        assert m.summary()["asr_seconds"] == pytest.approx(sum(m.asr_s))
    # Identical audio, identical (deterministic) transcripts.
    assert result.model("fp32").transcripts == result.model("copy").transcripts


@pytest.mark.parametrize(
    ("names", "reference", "message"),
    [
        ([], "a", "No models to evaluate"),
        (["a", "b"], "c", "The reference 'c' is not among the models (a, b)"),
        (["a", "a"], "a", "Two models are called 'a'"),
    ],
)
def test_evaluate_rejects_bad_model_lists(
    synthetic_fp32: Path, synthetic_int8: Path, names: list[str], reference: str, message: str
) -> None:
    paths = [synthetic_fp32, synthetic_int8]
    models = [BenchModel(n, paths[i]) for i, n in enumerate(names)]
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(models, EvalConfig(texts=TEXTS, reference=reference, asr=False))


def test_evaluate_rejects_bad_texts_before_synthesizing(synthetic_fp32: Path) -> None:
    with pytest.raises(UserInputError, match="No texts to evaluate"):
        EvalConfig(texts=[], reference="fp32")
    with pytest.raises(TextError, match=r"Text #2 .* cannot be spoken"):
        evaluate(
            [BenchModel("fp32", synthetic_fp32)],
            EvalConfig(texts=["Hello.", "?!"], reference="fp32", asr=False),
        )


def test_describe_model_reads_hash_size_and_style(
    synthetic_fp32: Path, synthetic_int8: Path, tmp_path: Path
) -> None:
    fp32 = describe_model("fp32", synthetic_fp32)
    int8 = describe_model("int8", synthetic_int8)
    assert fp32.quant_style == "float" and int8.quant_style == "dynamic-int8"
    assert fp32.size_bytes == synthetic_fp32.stat().st_size and len(fp32.sha256) == 64
    # External data counts towards the size.
    proto = onnx.load(str(synthetic_fp32))
    ext = tmp_path / "ext.onnx"
    onnx.save(proto, str(ext), save_as_external_data=True, location="ext.data", size_threshold=0)
    entry = describe_model("ext", ext)
    assert entry.size_bytes == ext.stat().st_size + (tmp_path / "ext.data").stat().st_size
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ModelFormatError, match="external-data file that is missing"):
        describe_model("ext", ext)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError):
        describe_model("bad", bad)


def test_eval_and_bench_reports_merge_by_text(
    synthetic_fp32: Path, synthetic_int8: Path, tmp_path: Path
) -> None:
    models = [BenchModel("fp32", synthetic_fp32), BenchModel("int8", synthetic_int8)]
    entries = [describe_model(m.name, m.path) for m in models]
    result = evaluate(
        models,
        EvalConfig(texts=TEXTS, reference="fp32", asr=False, threads=1, wav_dir=tmp_path / "wav"),
    )
    first = eval_report(result, entries, _meta(), run_dir=tmp_path)
    assert [m.name for m in first.models] == ["fp32", "int8"]
    assert first.model("int8").quality.reference == "fp32"
    assert first.rows("int8")[0].wav == "wav/int8/000.wav"
    save_report(first, tmp_path)

    # A bench over one shared text and one new one, models in the other order.
    bench_texts = [TEXTS[1], "Something else entirely."]
    config = BenchConfig(texts=bench_texts, runs=2, warmup=0, threads=1, measure_memory=False)
    results = run_bench(list(reversed(models)), config)
    second = bench_report(results, speedups(results), list(reversed(entries)), _meta(), config)
    assert [c.reference for c in second.comparisons] == ["int8"]
    merged = merge_with_existing(second, tmp_path)
    assert [m.name for m in merged.models] == ["fp32", "int8"]
    assert all(m.speed is not None and m.quality is not None for m in merged.models)
    rows = {(r.model, r.text): r for r in merged.utterances}
    assert len(rows) == 2 * 3
    shared = rows[("int8", TEXTS[1])]
    assert len(shared.latency_ms) == 2 and shared.logmel_distance is not None
    assert rows[("int8", TEXTS[0])].latency_ms == []


def test_utterance_ids_follow_the_text() -> None:
    a, b, a2, c = utterance_ids(["Hi.", "Ho.", "Hi.", "x"])
    assert a == utterance_ids(["Ho.", "Hi."])[1]
    assert len({a, b, a2, c}) == 4 and a2 == f"{a}-2"
    assert all(i.startswith("t") for i in (a, b, c))


def test_each_model_gets_one_session_in_this_process(
    synthetic_fp32: Path, synthetic_int8: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Phonemizing and rendering share the reference's session (a second session of the same
    model cost the recipe's eval step time and memory)."""
    from kokoro_opt.runtime import synthesizer

    made: list[str] = []
    real = synthesizer.create_session

    def counting(path: Path, **kwargs: object) -> object:
        made.append(Path(path).name)
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synthesizer, "create_session", counting)
    models = [BenchModel("fp32", synthetic_fp32), BenchModel("int8", synthetic_int8)]
    for threads in (None, 1):
        made.clear()
        config = EvalConfig(texts=TEXTS, reference="fp32", asr=False, threads=threads)
        evaluate(models, config)
        assert sorted(made) == sorted([synthetic_fp32.name, synthetic_int8.name])
