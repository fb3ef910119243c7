"""The runtime on the real Kokoro-82M (INT8 export and restored FP32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kokoro_opt.runtime.audio import ends_clean, tail_report
from kokoro_opt.runtime.contract import ModelContract
from kokoro_opt.runtime.synthesizer import SAMPLE_RATE, Synthesizer

pytestmark = pytest.mark.real

BIRCH = "The birch canoe slid on the smooth planks."
THREE = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It's easy to tell the depth of a well."
)


@pytest.fixture(scope="module", params=["kokoro-int8-export", "kokoro-fp32"])
def real_synth(request: pytest.FixtureRequest, real_models: dict[str, Path]) -> Synthesizer:
    return Synthesizer(real_models[request.param], threads=2)


def test_real_contract(real_synth: Synthesizer) -> None:
    assert real_synth.contract == ModelContract(
        tokens="tokens",
        tokens_dtype="int64",
        style="style",
        style_dtype="float32",
        speed="speed",
        speed_dtype="float32",
        audio="audio",
        outputs=("audio",),
    )


def test_real_birch_sentence(real_synth: Synthesizer) -> None:
    audio, sr = real_synth.synthesize(BIRCH, voice="jf_gongitsune")
    assert sr == SAMPLE_RATE
    assert 1.5 <= len(audio) / sr <= 5.0
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert float(np.sqrt(np.mean(audio**2))) > 0.01  # speech, not silence
    assert ends_clean(audio, sr)


def test_real_stream_ends_clean(real_synth: Synthesizer) -> None:
    chunks = list(real_synth.stream(THREE, voice="jf_alpha", speed=1.1))
    assert len(chunks) >= 2 and chunks[-1].is_last
    assert chunks[0].text == "The birch canoe slid on the smooth planks."
    for chunk in chunks:
        assert chunk.nonfinite == 0
        assert float(np.sqrt(np.mean(chunk.samples**2))) > 0.01
        # Every chunk, the final one included, ends in near-silence, not static.
        report = tail_report(chunk.samples, SAMPLE_RATE, window_s=0.05)
        assert report["rms"] < 0.01 and report["peak"] < 0.05, report
    total = sum(c.duration_s for c in chunks)
    assert 5.0 < total < 15.0
