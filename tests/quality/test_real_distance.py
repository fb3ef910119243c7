"""Aligned distances on real Kokoro speech: FP32 vs the INT8 export vs other speech."""

from __future__ import annotations

from pathlib import Path

import pytest

from kokoro_opt.quality.distance import compare

pytestmark = pytest.mark.real

TEXT = "Our team finished the project two days ahead of schedule."
OTHER = "What time does the last bus leave tonight?"
VOICE = "jf_gongitsune"


def test_int8_export_is_close_to_fp32_and_speed_shows_in_duration(
    real_models: dict[str, Path],
) -> None:
    from kokoro_opt.runtime.synthesizer import Synthesizer

    fp32 = Synthesizer(real_models["kokoro-fp32"], threads=2)
    int8 = Synthesizer(real_models["kokoro-int8-export"], threads=2)
    ref, sr = fp32.synthesize(TEXT, voice=VOICE)
    quant, _ = int8.synthesize(TEXT, voice=VOICE)
    faster, _ = fp32.synthesize(TEXT, voice=VOICE, speed=1.25)
    other, _ = fp32.synthesize(OTHER, voice=VOICE)

    same = compare(ref, ref.copy(), sr)
    near = compare(quant, ref, sr)
    fast = compare(faster, ref, sr)
    far = compare(other, ref, sr)
    assert same.logmel_distance < 1e-5 and same.mcd_db < 1e-4
    # measured: INT8 export 0.30 nepers / 0.8 dB; another sentence is several times further
    assert 0.0 < near.logmel_distance < 0.6 * far.logmel_distance
    assert near.mcd_db < 0.6 * far.mcd_db
    assert near.duration_ratio == pytest.approx(1.0, abs=0.08)
    assert near.f0_rmse_cents is not None and near.f0_rmse_cents < 150
    # speed 1.25 shortens speech, not the fixed edge padding (measured ratio 0.88)
    assert 0.75 < fast.duration_ratio < 0.95
    assert fast.logmel_distance < far.logmel_distance
