"""INT4 on the real Kokoro-82M FP32 model: opset 21 validates, ORT runs it, it stays close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.passes.base import PassContext
from kokoro_opt.passes.int4 import FOLD_SESSION_CONFIG, Config, run

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def fp32(real_models: dict[str, Path]) -> onnx.ModelProto:
    return onnx.load(str(real_models["kokoro-fp32"]))


def test_all_weights_int4_block64_is_under_50_mb_and_close(
    fp32: onnx.ModelProto, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from kokoro_opt.calib.corpus import load_texts
    from kokoro_opt.calib.feeds import corpus_feeds
    from kokoro_opt.graph.io import save_model_atomic
    from kokoro_opt.quality.distance import compare
    from kokoro_opt.runtime.contract import ModelContract

    config = Config(block_size=64, conv=True, lstm=True, gather=True)
    result = run(fp32, config, PassContext(threads=2))
    details = result.details
    assert details["opset"] == 21
    assert details["quantized"]["DequantizeLinear->Conv"] >= 80
    assert details["quantized"]["MatMulNBits"] >= 140
    assert details["parameters_quantized"] > 0.99 * details["parameters_total"]
    path = save_model_atomic(result.model, tmp_path / "q4.onnx")
    assert path.stat().st_size < 50_000_000

    contract = ModelContract.from_onnx(fp32)
    _, feeds = corpus_feeds(
        load_texts("smoke")[:1], contract, count=1, voices=["jf_gongitsune"], speeds=[1.0]
    )

    def audio(model: str | bytes, config: dict[str, str] | None = None) -> np.ndarray:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        for key, value in (config or {}).items():
            opts.add_session_config_entry(key, value)
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        return session.run([contract.audio], feeds[0])[0].reshape(-1)

    ref = audio(fp32.SerializeToString())
    runtime = audio(str(path))
    folded = audio(str(path), FOLD_SESSION_CONFIG)
    assert np.isfinite(runtime).all() and np.isfinite(folded).all()
    # Folding the DequantizeLinear at load gives the same weights, but onnxruntime then picks
    # other Conv kernels (constant, prepacked weights), so the float sums differ in the last bits
    # and the harmonic source's running phase carries that into the samples (measured: max
    # 0.03, RMS 0.002 on speech of RMS 0.09). The sound is the same: same length, and a log-mel
    # distance (0.03 measured) ten times below the 4-bit error itself.
    assert len(runtime) == len(folded)
    assert compare(runtime, folded, 24000, f0=False).logmel_distance < 0.08
    for audio_out in (runtime, folded):
        dist = compare(audio_out, ref, 24000, f0=False)
        assert 0.9 < dist.duration_ratio < 1.1
        assert dist.logmel_distance < 0.45  # 0.29 measured (RTN, block 64)
