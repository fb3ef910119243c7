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
from kokoro_opt.runtime.segment import SegmentPolicy
from kokoro_opt.runtime.session import create_session
from kokoro_opt.runtime.synthesizer import Synthesizer
from kokoro_opt.runtime.windowed import SplitModel, WindowPlan

pytestmark = pytest.mark.real

NAME = "kokoro-fp32"


@pytest.fixture(scope="module")
def fp32_split(real_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FP32 model split once for this module (back only: no decoder/generator cut)."""
    model = load_model(real_models[NAME])
    models = split_pass.split(model, split_pass.Config(generator=False), PassContext(threads=2))
    assert models.meta["samples_per_frame"] == 600
    assert models.meta["tensors"]["features"] == {"axis": 2, "rate": 1}
    assert 12 <= models.meta["receptive_field_frames"] <= 16
    assert models.meta["anatomy"]["durations"] == "/encoder/Gather_output_0"  # as the pass's
    return split_pass.save(models, tmp_path_factory.mktemp("real-split") / "split")


def test_real_split_one_window_is_exact(real_models: dict[str, Path], fp32_split: Path) -> None:
    rng = np.random.default_rng(3)
    tokens = np.concatenate([[0], rng.integers(1, 178, 24), [0]])[None].astype(np.int64)
    style = (rng.standard_normal((1, 256)) * 0.1).astype(np.float32)
    session = create_session(real_models[NAME], threads=2)
    (ref,) = session.run(None, {"tokens": tokens, "style": style, "speed": np.ones(1, np.float32)})
    sm = SplitModel(fp32_split, threads=2)
    out = sm.synthesize(tokens, style, 1.0, WindowPlan("whole"))
    assert out.shape == ref.reshape(-1).shape
    assert float(np.abs(out - ref.reshape(-1)).max()) <= 1e-4


def test_real_windowed_words_match_whole_segments(
    real_models: dict[str, Path], fp32_split: Path
) -> None:
    """Windows of 8 frames and up: the chunks' words, in seconds of the stream, are the words of
    the whole-segment render within a frame (25 ms).

    `lead=4`: Kokoro's speech starts about 3 frames before its durations say, so with the
    default 2 lead frames the windowed stream starts at the speech (about 57 ms later into it
    than the whole render's trimmed start) and every time moves with it. The last word's end
    is left out: each stream clamps it to its own audio, and per-window statistics leave the
    trailing pad louder, so less of it is trimmed.
    """
    text = "Joy pointed at the noisy oyster boat moored beside the toy shop."
    policy = SegmentPolicy(first="sentence")
    plan = WindowPlan("window", first=8, largest=32, lead=4)
    whole = Synthesizer(real_models[NAME], threads=2, timestamps=True, segment_policy=policy)
    windowed = Synthesizer(real_models[NAME], threads=2, timestamps=True, split=fp32_split,
                           window=plan, segment_policy=policy, session=whole.session)  # fmt: skip
    _, _, ref = whole.synthesize_timed(text, voice="jf_gongitsune")
    chunks = list(windowed.stream(text, voice="jf_gongitsune"))
    assert len(chunks) > 3 and sum(1 for c in chunks if c.words) > 3
    words, offset = [], 0.0
    for chunk in chunks:
        assert all(0 <= w.start <= chunk.duration_s + 1e-9 for w in chunk.words)
        words += [(w.word, w.start + offset, w.end + offset) for w in chunk.words]
        offset += chunk.duration_s
    assert [w[0] for w in words] == [w.word for w in ref] and len(ref) == 12
    starts = [abs(a[1] - b.start) for a, b in zip(words, ref, strict=True)]
    ends = [abs(a[2] - b.end) for a, b in zip(words[:-1], ref[:-1], strict=True)]
    assert max(starts + ends) <= 0.025, (starts, ends)
