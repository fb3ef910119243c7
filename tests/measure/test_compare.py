"""Two models on the same fixed inputs: the audio check of `optimize --check` and `shapes bind`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx

from kokoro_opt.measure.executors import Executor
from kokoro_opt.measure.reference import compare_audio, compare_models
from kokoro_opt.passes.verify import REFERENCE_PHONEMES, reference_feeds


def _tone(n: int, freq: float = 220.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / 24000)).astype(np.float32)


def test_compare_audio_reports_each_utterance_and_the_worst() -> None:
    a, b = _tone(12000), _tone(9000, 330.0)
    changed = a.copy()
    changed[100] += 0.25
    broken = b.copy()
    broken[10:13] = np.nan
    result = compare_audio([a, b], [changed, broken[:8000]])
    first, second = result["items"]
    assert first["samples_reference"] == first["samples_test"] == 12000
    assert math.isclose(first["max_abs_diff"], 0.25, rel_tol=1e-6)
    assert 0.0 < first["logmel_distance"] < 1.0
    assert (second["samples_reference"], second["samples_test"]) == (9000, 8000)
    assert second["nonfinite"] == 3 and second["logmel_distance"] == math.inf
    assert result["same_lengths"] is False and result["nonfinite"] == 3
    assert result["max_logmel_distance"] == math.inf


def test_compare_audio_of_identical_renderings_is_zero() -> None:
    a = _tone(6000)
    result = compare_audio([a], [a.copy()])
    assert result["max_abs_diff"] == 0.0 and result["max_logmel_distance"] < 1e-6
    assert result["same_lengths"] and result["nonfinite"] == 0


def test_compare_models_speaks_both_models_on_the_same_feeds(
    synthetic_fp32: Path, tmp_path: Path
) -> None:
    feeds = reference_feeds(synthetic_fp32, phonemes=REFERENCE_PHONEMES[:2])
    same = compare_models(synthetic_fp32, synthetic_fp32, feeds, threads=1)
    assert len(same["items"]) == 2 and same["max_abs_diff"] == 0.0
    assert same["same_lengths"] and same["nonfinite"] == 0

    # a model whose audio is scaled by 0.5: the samples move, and so does the log-mel
    model = onnx.load(synthetic_fp32)
    audio = model.graph.output[0].name
    half = onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half")
    model.graph.initializer.append(half)
    for node in model.graph.node:
        node.output[:] = [f"{o}_raw" if o == audio else o for o in node.output]
    model.graph.node.append(onnx.helper.make_node("Mul", [f"{audio}_raw", "half"], [audio]))
    quiet = tmp_path / "quiet.onnx"
    onnx.save(model, quiet)
    with Executor() as executor:
        diff = compare_models(synthetic_fp32, quiet, feeds, threads=1, executor=executor)
    assert diff["same_lengths"] and diff["max_abs_diff"] > 0.0
    assert diff["max_logmel_distance"] > same["max_logmel_distance"]
