"""The split pass and the windowed runtime on a tiny model with Kokoro's anatomy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.graph.anatomy import NotKokoroError, find_anatomy
from kokoro_opt.passes import split as split_pass
from kokoro_opt.passes.base import PassContext
from kokoro_opt.runtime.windowed import SplitModel, WindowPlan
from tests.passes.graphs import aligner_model, plain_model, run
from tests.passes.split_graphs import SAMPLES_PER_FRAME, anatomy_feeds, kokoro_anatomy_model


def _split(tmp_path: Path, *, norm: bool = True) -> tuple[SplitModel, np.ndarray, dict]:
    model = kokoro_anatomy_model(norm=norm)
    feeds = anatomy_feeds()
    (audio,) = run(model, feeds)
    models = split_pass.split(model, split_pass.Config(), PassContext(threads=1))
    folder = split_pass.save(models, tmp_path / ("norm" if norm else "plain"))
    return SplitModel(folder, threads=1), audio.reshape(-1), feeds


def _windowed(sm: SplitModel, feeds: dict, plan: WindowPlan) -> tuple[list[np.ndarray], int]:
    front = sm.run_front(feeds["tokens"], feeds["style"], 1.0)
    chunks = list(sm.render(front, feeds["style"], plan))
    return chunks, sm.windows(front, plan)[0][0] * sm.samples_per_frame


def test_anatomy_found_from_structure() -> None:
    anatomy = find_anatomy(kokoro_anatomy_model())
    assert anatomy.durations == "dvec"  # the CumSum's input, as the durations pass finds it
    assert anatomy.features == ("asr",)
    assert anatomy.curves == ("f0_raw", "n_curve")  # F0 first: it feeds the harmonic source
    assert anatomy.source_phase == "phase_sum"
    assert set(anatomy.back_inputs) == {"asr", "f0_raw", "n_curve", "style"}


def test_anatomy_ignores_a_round_clip_that_is_not_the_durations() -> None:
    """Static INT8 graphs round and clip elsewhere too (27 pairs in the cpu-int8 model): the
    durations are the pair that feeds the alignment's CumSum, wherever it sits in the graph."""
    model = kokoro_anatomy_model()
    decoy = [
        onnx.helper.make_node("Round", ["style"], ["decoy_r"]),
        onnx.helper.make_node("Clip", ["decoy_r", "one"], ["decoy"]),
        onnx.helper.make_node("Add", ["style", "decoy"], ["decoy_sum"]),
    ]
    for k, node in enumerate(decoy):
        model.graph.node.insert(k, node)  # first in graph order
    assert find_anatomy(model).durations == "dvec"


def test_split_structure(tmp_path: Path) -> None:
    models = split_pass.split(kokoro_anatomy_model(), split_pass.Config(), PassContext(threads=1))
    front_out = [o.name for o in models.front.graph.output]
    assert front_out == ["durations", "features", "f0", "energy", "phase_step"]
    assert [i.name for i in models.back.graph.input] == [
        "features",
        "f0",
        "energy",
        "style",
        "phase0",
    ]
    assert models.generator is not None and models.decoder is not None
    assert [i.name for i in models.generator.graph.input] == ["hidden", "f0", "style", "phase0"]
    ops = {n.op_type for n in models.back.graph.node}
    assert "LSTM" not in ops and "Round" not in ops  # everything sequential stays in front
    assert models.meta["samples_per_frame"] == SAMPLES_PER_FRAME
    assert models.meta["tensors"]["f0"] == {"axis": 2, "rate": 2}
    assert models.meta["tensors"]["phase_step"] == {"axis": 1, "rate": 2}
    assert models.meta["receptive_field_frames"] > 1


def test_one_window_equals_the_original(tmp_path: Path) -> None:
    sm, audio, feeds = _split(tmp_path)
    chunks, skipped = _windowed(sm, feeds, WindowPlan("whole"))
    assert skipped == 0 and len(chunks) == 1
    assert chunks[0].shape == audio.shape
    assert float(np.abs(chunks[0] - audio).max()) <= 1e-4


def test_windows_keep_the_phase_continuous(tmp_path: Path) -> None:
    """Without instance norms the back is convolutional: windows with enough context must
    reproduce the whole render; restarting the phase per window must not."""
    sm, audio, feeds = _split(tmp_path, norm=False)
    plan = WindowPlan("window", first=5, largest=5, overlap=0, lead=0)
    chunks, skipped = _windowed(sm, feeds, plan)
    assert len(chunks) > 5
    out = np.concatenate(chunks)
    ref = audio[skipped : skipped + len(out)]
    assert len(out) == len(ref) == len(audio) - skipped
    # The phase reaches ~1500 rad here: float32 sums in another order differ by ~1e-4 rad.
    assert float(np.abs(out - ref).max()) <= 2e-3

    zero = np.zeros(sm.meta["phase0_shape"], np.float32)
    restart = SplitModel(sm.folder, threads=1)
    restart._phase0 = lambda front, lo, shape: zero  # type: ignore[method-assign]
    chunks, _ = _windowed(restart, feeds, plan)
    assert float(np.abs(np.concatenate(chunks) - ref).max()) > 1e-2


def test_generator_policy_is_exact_without_norms(tmp_path: Path) -> None:
    sm, audio, feeds = _split(tmp_path, norm=False)
    chunks, skipped = _windowed(sm, feeds, WindowPlan("generator", first=4, largest=8, lead=1))
    out = np.concatenate(chunks)
    assert float(np.abs(out - audio[skipped:]).max()) <= 2e-3


def test_joins_do_not_click(tmp_path: Path) -> None:
    """Windows whose levels differ (as per-window statistics make them) are cross-faded over
    the overlap: the join ramps in steps of 1 / fade length instead of jumping."""
    sm, audio, feeds = _split(tmp_path)
    calls: list[int] = []

    def level(session, source, style, front, lo, hi):  # noqa: ANN001, ANN202
        calls.append(lo)
        return np.full((hi - lo) * sm.samples_per_frame, float(len(calls)), np.float32)

    sm._run_back = level  # type: ignore[method-assign]
    plan = WindowPlan("window", first=4, largest=8, overlap=1, lead=0)
    chunks, skipped = _windowed(sm, feeds, plan)
    out = np.concatenate(chunks)
    assert len(out) == len(audio) - skipped and len(chunks) > 3
    steps = np.abs(np.diff(out))
    assert float(steps.max()) <= 1.0 / SAMPLES_PER_FRAME + 1e-6
    assert out[0] == 1.0 and out[-1] == float(len(chunks))

    calls.clear()
    hard = WindowPlan("window", first=4, largest=8, overlap=0, lead=0)
    chunks, _ = _windowed(sm, feeds, hard)
    assert float(np.abs(np.diff(np.concatenate(chunks))).max()) == 1.0


def test_leading_pad_is_not_rendered(tmp_path: Path) -> None:
    sm, audio, feeds = _split(tmp_path)
    front = sm.run_front(feeds["tokens"], feeds["style"], 1.0)
    lead = int(front.durations[0])
    spans = sm.windows(front, WindowPlan("window", lead=1))
    assert spans[0][0] == max(0, lead - 1)
    assert spans[-1][1] == front.frames
    assert all(a < b for a, b in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


@pytest.mark.parametrize("builder", [plain_model, aligner_model])
def test_a_graph_that_is_not_kokoro_is_refused(builder) -> None:  # noqa: ANN001
    model = builder()
    model = model[0] if isinstance(model, tuple) else model
    with pytest.raises(NotKokoroError, match="^Not a Kokoro graph: "):
        split_pass.split(model, split_pass.Config(), PassContext(threads=1))


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(Exception, match="Unknown statistics policy 'x'"):
        WindowPlan("x")  # type: ignore[arg-type]


def test_first_policy_is_exact_after_the_first_window(tmp_path: Path) -> None:
    """With instance norms: the first window has its own statistics, everything after it (and
    its one-frame cross-fade) is the whole render's audio."""
    sm, audio, feeds = _split(tmp_path)
    plan = WindowPlan("first", first=6, overlap=1, lead=0)
    chunks, skipped = _windowed(sm, feeds, plan)
    assert len(chunks) == 2
    out = np.concatenate(chunks)
    ref = audio[skipped:]
    assert len(out) == len(ref)
    exact_from = (6 + 1) * SAMPLES_PER_FRAME
    assert float(np.abs(out[exact_from:] - ref[exact_from:]).max()) <= 1e-5
    assert float(np.abs(out[: 6 * SAMPLES_PER_FRAME] - ref[: 6 * SAMPLES_PER_FRAME]).max()) > 1e-3


def test_first_windows_stay_ahead_of_playback(tmp_path: Path) -> None:
    sm, audio, feeds = _split(tmp_path)
    front = sm.run_front(feeds["tokens"], feeds["style"], 1.0)
    plan = WindowPlan("first", first=3, lead=0, context=1)
    start = int(front.durations[0])  # the leading pad is not rendered
    total = front.frames
    assert sm.rest_s_per_frame is None
    assert sm.windows(front, plan) == [(start, start + 3), (start + 3, total)]  # none measured
    list(sm.render(front, feeds["style"], plan))
    assert sm.rest_s_per_frame is not None and sm.rest_s_per_frame > 0
    frame_s = SAMPLES_PER_FRAME / 24000
    sm.rest_s_per_frame = 0.2 * frame_s  # the exact render runs at 5x real time
    spans = sm.windows(front, plan)
    assert len(spans) == 3 and spans[0] == (start, start + 3) and spans[-1][1] == total
    assert spans[0][1] == spans[1][0] and spans[1][1] == spans[2][0]  # contiguous
    # the first window and the bridge (less the time the bridge takes: 2 context frames and
    # the one-frame overlap around it) cover 1.5x the exact render (all frames), no more
    bridge = spans[1][1] - spans[1][0]
    need = 1.5 * 0.2 * total
    covered = 3 + bridge - 0.2 * (bridge + 2 + 1)
    assert need <= covered < need + 1
    fixed = WindowPlan("first", first=3, lead=0, ahead=0)
    assert sm.windows(front, fixed) == [(start, start + 3), (start + 3, total)]
    # a listener already holding enough audio: one exact render, no windows
    assert sm.windows(front, plan, slack_s=total * frame_s) == [(start, total)]
    sm.rest_s_per_frame = 10 * frame_s  # slower than real time: nothing to gain
    assert sm.windows(front, plan) == [(start, total)]
    (out,) = list(sm.render(front, feeds["style"], plan))
    skip = start * SAMPLES_PER_FRAME
    assert float(np.abs(out - audio[skip:]).max()) <= 1e-5  # one exact render
    sm.rest_s_per_frame = 0.2 * frame_s
    windowed = np.concatenate(list(sm.render(front, feeds["style"], plan, spans=spans)))
    # after the approximate windows (and the one-frame cross-fade) the audio is exact
    after = (spans[-1][0] + 1 - start) * SAMPLES_PER_FRAME
    assert len(windowed) == len(audio) - skip
    assert float(np.abs(windowed[after:] - audio[skip + after :]).max()) <= 1e-5
