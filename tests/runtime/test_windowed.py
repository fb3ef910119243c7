"""The Synthesizer with a split model: windows as chunks, exact when not windowed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.passes import split as split_pass
from kokoro_opt.passes.base import PassContext
from kokoro_opt.runtime.synthesizer import Synthesizer
from kokoro_opt.runtime.windowed import WindowChunk, WindowPlan, finish_chunk
from tests.passes.split_graphs import kokoro_anatomy_model

TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."


@pytest.fixture(scope="module")
def split_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("windowed")
    model = kokoro_anatomy_model()
    onnx.save(model, folder / "k.onnx")
    models = split_pass.split(model, split_pass.Config(), PassContext(threads=1))
    return folder / "k.onnx", split_pass.save(models, folder / "k.split")


def test_windowed_stream_yields_windows_in_order(split_model: tuple[Path, Path]) -> None:
    model, folder = split_model
    plan = WindowPlan("first", first=4, trail=4)
    synth = Synthesizer(model, split=folder, window=plan, threads=1)
    assert synth.windowed
    chunks = list(synth.stream(TEXT, voice="jf_alpha"))
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert len(chunks) > len({c.segment for c in chunks})  # several windows per segment
    assert all(np.isfinite(c.samples).all() and np.abs(c.samples).max() <= 1.0 for c in chunks)


def test_split_without_windows_is_the_whole_model(split_model: tuple[Path, Path]) -> None:
    model, folder = split_model
    plain = Synthesizer(model, threads=1)
    split = Synthesizer(model, split=folder, threads=1)
    assert not split.windowed
    a = np.concatenate([c.samples for c in plain.stream(TEXT, voice="jf_alpha")])
    b = np.concatenate([c.samples for c in split.stream(TEXT, voice="jf_alpha")])
    assert np.array_equal(a, b)


def test_finish_chunk_ramps_only_the_segment_ends() -> None:
    loud = np.full(4800, 0.5, np.float32)
    middle, _, cut = finish_chunk(WindowChunk(loud, first=False, last=False, frame=3), 24000,
                                  lead_s=0.05, trail_s=0.3)  # fmt: skip
    assert np.array_equal(middle, loud) and cut == 0  # a join is left sample for sample
    silent = np.concatenate([np.zeros(24000, np.float32), loud])
    first, _, cut = finish_chunk(WindowChunk(silent, first=True, last=False, frame=0), 24000,
                                 lead_s=0.05, trail_s=0.3)  # fmt: skip
    assert len(first) <= len(loud) + 0.06 * 24000 and first[0] == 0.0 and first[-1] == 0.5
    assert cut == 24000 - 1200 and len(first) == len(silent) - cut  # 50 ms of lead kept
    bad = loud.copy()
    bad[:3] = np.nan
    last, nonfinite, cut = finish_chunk(WindowChunk(bad, first=False, last=True, frame=9), 24000,
                                        lead_s=0.05, trail_s=0.3)  # fmt: skip
    assert nonfinite == 3 and last[-1] == 0.0 and last[100] == 0.5 and cut == 0


def test_only_a_listener_without_audio_gets_windows(
    split_model: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first segment is windowed (nothing plays yet); later ones, with the earlier audio
    still playing, come in one exact render each. The playback clock is frozen, so a busy test
    machine cannot make the listener run dry."""
    import types
    from collections import Counter

    from kokoro_opt.runtime import audio as audio_module
    from kokoro_opt.runtime.segment import SegmentPolicy

    monkeypatch.setattr(audio_module, "time", types.SimpleNamespace(perf_counter=lambda: 0.0))
    model, folder = split_model
    policy = SegmentPolicy(first_max_chars=12, max_chars=60)
    synth = Synthesizer(
        model,
        split=folder,
        window=WindowPlan("first", first=2),
        threads=1,
        segment_policy=policy,
        trim=False,  # the synthetic model's audio is quiet: trimmed, little would be left
    )
    list(synth.stream(TEXT, voice="jf_alpha"))  # measures the exact render's speed
    assert synth.split is not None and synth.split.rest_s_per_frame is not None
    per_segment = Counter(c.segment for c in synth.stream(TEXT, voice="jf_alpha"))
    assert len(per_segment) >= 3
    assert per_segment[0] >= 2
    assert all(n == 1 for segment, n in per_segment.items() if segment > 0)
