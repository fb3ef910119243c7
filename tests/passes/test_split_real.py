"""The split pass on the real Kokoro-82M (restored FP32).

The dynamic INT8 export is not split: its curves come out of ConvInteger, not Conv (the
recipes' static INT8 model keeps Conv with QDQ around it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kokoro_opt.graph.io import load_model
from kokoro_opt.passes import split as split_pass
from kokoro_opt.passes.base import PassContext
from kokoro_opt.runtime.session import create_session
from kokoro_opt.runtime.windowed import SplitModel, WindowPlan

pytestmark = pytest.mark.real


def test_real_split_one_window_is_exact(real_models: dict[str, Path], tmp_path: Path) -> None:
    name = "kokoro-fp32"
    model = load_model(real_models[name])
    models = split_pass.split(model, split_pass.Config(generator=False), PassContext(threads=2))
    assert models.meta["samples_per_frame"] == 600
    assert models.meta["tensors"]["features"] == {"axis": 2, "rate": 1}
    assert 12 <= models.meta["receptive_field_frames"] <= 16
    folder = split_pass.save(models, tmp_path / "split")
    del model, models
    rng = np.random.default_rng(3)
    tokens = np.concatenate([[0], rng.integers(1, 178, 24), [0]])[None].astype(np.int64)
    style = (rng.standard_normal((1, 256)) * 0.1).astype(np.float32)
    session = create_session(real_models[name], threads=2)
    (ref,) = session.run(None, {"tokens": tokens, "style": style, "speed": np.ones(1, np.float32)})
    sm = SplitModel(folder, threads=2)
    out = sm.synthesize(tokens, style, 1.0, WindowPlan("whole"))
    assert out.shape == ref.reshape(-1).shape
    assert float(np.abs(out - ref.reshape(-1)).max()) <= 1e-4
