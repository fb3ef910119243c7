"""Windowed synthesis through a back bound to one window size (shapes bind --window-frames)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kokoro_opt.errors import UserInputError
from kokoro_opt.passes import split as split_pass
from kokoro_opt.passes import static_window
from kokoro_opt.passes.base import PassContext
from kokoro_opt.runtime.windowed import SplitModel, WindowPlan
from tests.passes.graphs import run
from tests.passes.split_graphs import SAMPLES_PER_FRAME, anatomy_feeds, kokoro_anatomy_model

FRAMES = 5
LONG = 60
"""A window longer than a 3-phoneme segment: its one call is padded at the segment's end."""


def _folders(root: Path, *, norm: bool) -> tuple[Path, Path, np.ndarray]:
    model = kokoro_anatomy_model(norm=norm)
    (audio,) = run(model, anatomy_feeds())
    models = split_pass.split(model, split_pass.Config(), PassContext(threads=1))
    dynamic = split_pass.save(models, root / "dynamic")
    for frames in (FRAMES, LONG):
        static_window.bind_split(
            dynamic, root / f"w{frames}", frames=frames, check=False, ctx=PassContext(threads=1)
        )
    return dynamic, root / f"w{FRAMES}", audio.reshape(-1)


@pytest.fixture(scope="module")
def with_norms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    return _folders(tmp_path_factory.mktemp("norm"), norm=True)


@pytest.fixture(scope="module")
def without_norms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    return _folders(tmp_path_factory.mktemp("plain"), norm=False)


def _render(sm: SplitModel, plan: WindowPlan, n_phonemes: int = 30) -> tuple[np.ndarray, Any]:
    feeds = anatomy_feeds(n_phonemes)
    front = sm.run_front(feeds["tokens"], feeds["style"], 1.0)
    return np.concatenate(list(sm.render(front, feeds["style"], plan))), front


def _spans(sm: SplitModel) -> list[tuple[int, int]]:
    """Record the [lo, hi) frames of every back call."""
    calls: list[tuple[int, int]] = []
    inner = sm.window_feeds

    def record(session, source, style, front, lo, hi):  # noqa: ANN001, ANN202
        calls.append((lo, hi))
        return inner(session, source, style, front, lo, hi)

    sm.window_feeds = record  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("stats", ["window", "generator"])
@pytest.mark.parametrize("frames", [FRAMES, LONG])
def test_bound_back_renders_what_the_dynamic_back_renders(
    with_norms: tuple[Path, Path, np.ndarray], stats: str, frames: int
) -> None:
    """Same windows, same spans (the bound size), once through the static graphs and once
    through the dynamic ones: the same audio. With LONG windows the segment is shorter than
    the span, so its one window is padded at the end and cropped."""
    dynamic, _, _ = with_norms
    static = SplitModel(dynamic.parent / f"w{frames}", threads=1)
    reference = SplitModel(dynamic, threads=1)
    reference.static = static.static  # the dynamic graphs, fed the bound spans
    plan = WindowPlan(stats, lead=1)  # type: ignore[arg-type]
    calls = _spans(static)
    n_phonemes = 3 if frames == LONG else 30
    out, front = _render(static, plan, n_phonemes)
    ref, _ = _render(reference, plan, n_phonemes)
    assert out.shape == ref.shape
    assert float(np.abs(out - ref).max()) <= 1e-5
    graph = "back.onnx" if stats == "window" else "generator.onnx"
    span = static.static.span(graph)
    assert calls and all(hi - lo == span for lo, hi in calls)
    spans = static.windows(front, plan)
    assert all(b - a <= frames for a, b in spans)
    assert len(out) == (front.frames - spans[0][0]) * SAMPLES_PER_FRAME
    if frames == LONG:
        assert front.frames < span and calls == [(0, span)] and len(spans) == 1
    else:
        assert len(spans) > 3 and all(lo >= 0 and hi <= front.frames for lo, hi in calls)


def test_bound_windows_join_into_the_whole_render_without_norms(
    without_norms: tuple[Path, Path, np.ndarray],
) -> None:
    """Without instance norms the back is convolutional: windows placed inside the segment
    with their context reproduce the whole model's audio."""
    _, bound, audio = without_norms
    sm = SplitModel(bound, threads=1)
    plan = WindowPlan("window", lead=0)
    out, front = _render(sm, plan)
    spans = sm.windows(front, plan)
    assert len(spans) > 3 and all(b - a <= FRAMES for a, b in spans)
    skipped = spans[0][0] * SAMPLES_PER_FRAME
    assert len(out) == len(audio) - skipped
    assert float(np.abs(out - audio[skipped:]).max()) <= 2e-3


@pytest.mark.parametrize("stats", ["first", "whole"])
def test_a_bound_folder_refuses_policies_that_need_other_sizes(
    with_norms: tuple[Path, Path, np.ndarray], stats: str
) -> None:
    _, bound, _ = with_norms
    sm = SplitModel(bound, threads=1)
    with pytest.raises(UserInputError, match=f"bound to {FRAMES}-frame windows.*not '{stats}'"):
        _render(sm, WindowPlan(stats))  # type: ignore[arg-type]


def test_the_synthesizer_refuses_a_policy_a_bound_folder_cannot_render(
    with_norms: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    import onnx

    from kokoro_opt.runtime.synthesizer import Synthesizer

    _, bound, _ = with_norms
    model = tmp_path / "k.onnx"
    onnx.save(kokoro_anatomy_model(), model)
    with pytest.raises(UserInputError, match="not 'first'"):
        Synthesizer(model, split=bound, window=WindowPlan("first"), threads=1)
    synth = Synthesizer(model, split=bound, window=WindowPlan("window"), threads=1)
    chunks = list(synth.stream("The birch canoe slid on the smooth planks.", voice="jf_alpha"))
    assert len(chunks) > 2 and all(np.isfinite(c.samples).all() for c in chunks)
