"""Windowed synthesis with a split model (`kokoro-opt split`): audio before the segment ends.

The front runs once per segment (durations, aligned features, F0 and energy curves, the
harmonic source's phase increments); the back renders the frames in windows. Each window is
given `context` frames of input on each side (the back's receptive field, recorded in
split.json) and the phase its harmonic source would have at the window's first input step
(`phase0`, the running sum of the front's `phase_step` there), so the sine never restarts.
Its audio is cropped to the window; consecutive windows overlap by `overlap` frames and are
cross-faded there, so a change of statistics between windows cannot click.

Statistics policy (AdaIN normalizes over time, so a window's statistics differ from the
segment's):

- `whole`: one window covers the segment: exactly the original model (no windowing);
- `window`: the whole back half on each window with its context (statistics of that span);
- `generator`: the decoder (frame-rate AdaIN blocks, a small share of the work) over the whole
  segment, only the generator windowed (its own statistics per window);
- `first`: the decoder over the whole segment, the generator on the first window alone (its
  own statistics: approximate), then the generator over the whole segment with the segment's
  statistics, cropped after the first window: everything after the first window (and its
  cross-fade) is exactly the original's audio. It costs one extra first window of generator
  work per segment. When the listener holds too little audio to wait for that exact render
  (it runs the generator over every frame of the segment), one more approximate window
  follows the first, sized so that its audio covers it (`ahead`); when the listener holds
  enough, the segment is rendered exactly in one call, no window at all.

Leading pad frames are not rendered beyond `lead` frames before the first spoken frame (the
first token is the pad; its duration is the leading silence) plus the context they need.
Windows start at `first` frames and double up to `largest`.

A split folder whose back is bound to one window size (`kokoro-opt shapes bind SPLIT_DIR
--window-frames W`, recorded as `window` in split.json) renders every window at that size:
`first = largest = W`, the bound context and overlap, and every call gets exactly the bound
span of W + overlap + 2 * context frames (`StaticWindow.place`): the span is moved inside the
segment where it can be (more real context instead of padding), and only a segment shorter than
the span is padded at its end with its last frame. Only the `window` and `generator` policies
render windows of one size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.runtime.synthesizer import EDGE_RAMP_S, SAMPLE_RATE

StatsPolicy = Literal["whole", "window", "generator", "first"]
STATS_POLICIES: tuple[str, ...] = ("whole", "window", "generator", "first")

FRONT, BACK, DECODER, GENERATOR, META = (
    "front.onnx",
    "back.onnx",
    "decoder.onnx",
    "generator.onnx",
    "split.json",
)


@dataclass(frozen=True)
class WindowPlan:
    """How a segment's frames are cut into windows."""

    stats: StatsPolicy = "whole"
    first: int = 12
    """Frames in the first window (25 ms each)."""
    ahead: float = 1.5
    """`first` policy: a bridging window after the first when their audio (plus what the
    listener holds) would not last `ahead` times the measured time of the exact render, so
    playback never runs dry (0: the first window alone, whatever the timing)."""
    largest: int = 96
    """Windows grow from `first` up to this many frames."""
    grow: float = 2.0
    """Each window is this many times the previous one (capped at `largest`)."""
    context: int | None = None
    """Input frames on each side of a window (None: the back's receptive field, rounded up)."""
    overlap: int = 1
    """Frames rendered twice at each join and cross-faded."""
    lead: int = 2
    """Leading pad frames kept before the first spoken frame."""
    trail: int | None = None
    """Trailing pad frames kept after the last spoken frame (None: render to the end)."""

    def __post_init__(self) -> None:
        if self.stats not in STATS_POLICIES:
            raise UserInputError(
                f"Unknown statistics policy {self.stats!r}. Choose one of: "
                f"{', '.join(STATS_POLICIES)}."
            )
        if self.first < 1 or self.largest < self.first or self.grow < 1:
            raise UserInputError("Windows need first >= 1 frame, largest >= first, grow >= 1.")
        if self.ahead < 0:
            raise UserInputError("ahead must be 0 (fixed first window) or more.")
        if self.overlap < 0 or self.lead < 0 or (self.context is not None and self.context < 0):
            raise UserInputError("context, overlap and lead must be 0 or more frames.")


@dataclass(frozen=True)
class StaticWindow:
    """The window size a bound back graph takes (split.json's `window`)."""

    frames: int
    overlap: int
    context: dict[str, int]
    """Context frames each side, per bound graph file (back.onnx, generator.onnx)."""

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> StaticWindow | None:
        if not meta:
            return None
        return cls(int(meta["frames"]), int(meta["overlap"]), dict(meta["context"]))

    def span(self, graph: str) -> int:
        """Frames of input every call of `graph` takes."""
        return self.frames + self.overlap + 2 * self.context[graph]

    def place(self, start: int, graph: str, total: int) -> tuple[int, int]:
        """[lo, hi) of the input span for a window starting at frame `start` of a `total`-frame
        segment: `context` frames before it where the segment allows, shifted right at the
        segment start and left at its end; `hi` passes `total` only when the segment is shorter
        than the span (those frames are padded)."""
        span = self.span(graph)
        lo = min(max(0, start - self.context[graph]), max(0, total - span))
        return lo, lo + span


@dataclass
class FrontOutput:
    durations: np.ndarray
    tensors: dict[str, np.ndarray]
    phase_sum: np.ndarray
    """Running phase sum (float32, as the model's own CumSum), one row per phase step."""

    @property
    def frames(self) -> int:
        return int(self.tensors["features"].shape[-1])


@dataclass
class WindowTimings:
    front_ms: float = 0.0
    decoder_ms: float = 0.0
    windows_ms: list[float] = field(default_factory=list)


@dataclass
class WindowChunk:
    samples: np.ndarray
    first: bool
    last: bool
    frame: int
    """The segment frame its first sample belongs to."""
    durations: np.ndarray | None = None
    """The segment's per-token durations in frames (the front's, pads included): word timings."""


def finish_chunk(
    chunk: WindowChunk, sample_rate: int, *, lead_s: float, trail_s: float
) -> tuple[np.ndarray, int, int]:
    """A window's audio made safe to play without touching its joins: NaN/inf -> 0 (counted),
    clipped to [-1, 1]; only the segment's own ends are trimmed of silence (to `lead_s` and
    `trail_s`) and ramped (4 ms), so consecutive windows still meet sample for sample.
    Returns (samples, nonfinite count, samples trimmed from the chunk's start)."""
    from kokoro_opt.runtime.audio import silence_bounds, trim_silence

    audio = np.array(chunk.samples, dtype=np.float32).reshape(-1)
    bad = ~np.isfinite(audio)
    nonfinite = int(bad.sum())
    if nonfinite:
        audio[bad] = 0.0
    np.clip(audio, -1.0, 1.0, out=audio)
    never = 1e9
    cut = 0
    if chunk.first:
        cut, _ = silence_bounds(audio, sample_rate, max_lead_s=lead_s, max_tail_s=never)
        audio = audio[cut:]
    if chunk.last:
        audio = trim_silence(audio, sample_rate, max_lead_s=never, max_tail_s=trail_s)
    ramp = min(int(EDGE_RAMP_S * sample_rate), len(audio) // 2)
    if ramp > 0 and (chunk.first or chunk.last):
        window = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))).astype(np.float32)
        audio = audio.copy()
        if chunk.first:
            audio[:ramp] *= window
        if chunk.last:
            audio[-ramp:] *= window[::-1]
    return audio, nonfinite, cut


class SplitModel:
    """The sessions of a split folder and the windowed render loop."""

    def __init__(
        self, folder: str | Path, *, provider: str = "cpu", threads: int | None = None
    ) -> None:
        from kokoro_opt.runtime.session import create_session

        self.folder = Path(folder)
        meta_path = self.folder / META
        if not meta_path.is_file():
            raise ModelFormatError(
                f"{self.folder} is not a split model (no {META}); make one with "
                "`kokoro-opt split MODEL -o DIR`."
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.front = create_session(self.folder / FRONT, provider=provider, threads=threads)
        self.back = create_session(self.folder / BACK, provider=provider, threads=threads)
        self.decoder = self.generator = None
        if (self.folder / GENERATOR).is_file():
            self.decoder = create_session(self.folder / DECODER, provider=provider, threads=threads)
            self.generator = create_session(
                self.folder / GENERATOR, provider=provider, threads=threads
            )
        self.static = StaticWindow.from_meta(self.meta.get("window"))
        """The bound window size, for a folder made by `shapes bind --window-frames`."""
        self.samples_per_frame = int(self.meta["samples_per_frame"])
        self.tensors: dict[str, dict[str, int]] = self.meta["tensors"]
        self.receptive_field = float(self.meta["receptive_field_frames"])
        self.rest_s_per_frame: float | None = None
        """Measured seconds per frame of the `first` policy's whole-segment render (an
        exponential average), which sizes later first windows."""
        self._front_inputs = {i.name: i.type for i in self.front.get_inputs()}
        self._back_inputs = {i.name for i in self.back.get_inputs()}

    # -- front -----------------------------------------------------------------------------

    def run_front(self, tokens: np.ndarray, style: np.ndarray, speed: float) -> FrontOutput:
        """The front on padded token ids [1, T]."""
        feeds: dict[str, Any] = {}
        for name, kind in self._front_inputs.items():
            if name in ("tokens", "input_ids"):
                feeds[name] = np.asarray(tokens, np.int64).reshape(1, -1)
            elif name == "style":
                feeds[name] = np.asarray(style, np.float32).reshape(1, -1)
            elif name == "speed":
                dtype = np.int32 if "int32" in kind else np.float32
                feeds[name] = np.array([speed], dtype)
        names = [o.name for o in self.front.get_outputs()]
        out = dict(zip(names, self.front.run(None, feeds), strict=True))
        step = out.pop("phase_step")
        axis = self.tensors["phase_step"]["axis"]
        phase_sum = np.cumsum(step.astype(np.float32), axis=axis, dtype=np.float32)
        phase_sum = np.moveaxis(phase_sum, axis, 0).reshape(phase_sum.shape[axis], -1)
        return FrontOutput(out.pop("durations").reshape(-1), out, phase_sum)

    # -- windows ---------------------------------------------------------------------------

    def fit_plan(self, plan: WindowPlan) -> WindowPlan:
        """`plan` at the bound window size of a bound folder (unchanged for a dynamic one)."""
        if self.static is None:
            return plan
        if plan.stats not in ("window", "generator"):
            raise UserInputError(
                f"{self.folder} is bound to {self.static.frames}-frame windows, which renders "
                f"only the window and generator statistics policies, not {plan.stats!r}; use "
                "one of those or the dynamic split folder."
            )
        graph = BACK if plan.stats == "window" else GENERATOR
        if graph not in self.static.context:
            raise ModelFormatError(f"{self.folder}: {graph} is not bound to the window size.")
        w, context = self.static.frames, self.static.context[graph]
        return replace(plan, first=w, largest=w, overlap=self.static.overlap, context=context)

    def context_frames(self, plan: WindowPlan) -> int:
        if plan.context is not None:
            return plan.context
        field = self.receptive_field
        generator_field = self.meta.get("generator_receptive_field_frames")
        if plan.stats in ("generator", "first") and generator_field is not None:
            field = float(generator_field)  # the decoder runs whole: only the generator's field
        return int(np.ceil(field))

    def windows(
        self, front: FrontOutput, plan: WindowPlan, slack_s: float = 0.0
    ) -> list[tuple[int, int]]:
        """The [start, end) frames of each window, after the skipped leading pad. `slack_s`:
        seconds of audio already waiting ahead of playback when the segment starts (the
        `first` policy renders exactly, in one call, whatever that buffer can cover)."""
        plan = self.fit_plan(plan)
        total = front.frames
        if plan.stats == "whole":
            return [(0, total)]
        lead_pad = int(round(float(front.durations[0]))) if front.durations.size else 0
        start = max(0, min(lead_pad - plan.lead, total - 1))
        if plan.trail is not None and front.durations.size > 1:
            trail_pad = int(round(float(front.durations[-1])))
            total = max(start + 1, min(total, total - trail_pad + plan.trail))
        if plan.stats == "first":
            return self._first_spans(front.frames, start, total, plan, slack_s)
        spans = []
        size = plan.first
        while start < total:
            end = min(total, start + size)
            if total - end < max(plan.first // 2, 1) and self.static is None:  # no sliver
                end = total
            spans.append((start, end))
            start = end
            size = min(plan.largest, int(size * plan.grow))
        return spans

    def _first_spans(
        self, frames: int, start: int, total: int, plan: WindowPlan, slack_s: float
    ) -> list[tuple[int, int]]:
        """`first` policy: the first window, then, when the listener could run dry before the
        exact render of the rest is done, one bridging window whose audio covers `ahead` times
        that render, then the exact render. It runs the generator over all `frames` of the
        segment, so its time is known from the last ones (`rest_s_per_frame`); before any was
        measured, the first window alone. One bridging window rather than several small ones:
        its statistics see more frames (log-mel to the exact audio 0.58 vs 0.62 on the 80
        held-out primers, see docs/findings/windowed.md)."""
        frame_s = self.samples_per_frame / SAMPLE_RATE
        per_frame = self.rest_s_per_frame
        first_end = min(total, start + plan.first)
        if first_end >= total:
            return [(start, total)]
        if per_frame is None or plan.ahead == 0:
            return [(start, first_end), (first_end, total)]
        need_s = plan.ahead * per_frame * frames - slack_s
        if (slack_s > 0 and need_s <= 0) or per_frame >= frame_s:
            # the buffer covers an exact render, or windows could never get ahead of playback
            return [(start, total)]
        # the bridge adds its audio and costs its own render (the first one plays at once)
        context = self.context_frames(plan)
        short_s = need_s - (first_end - start) * frame_s
        if short_s <= 0:
            return [(start, first_end), (first_end, total)]
        cost_s = per_frame * (2 * context + plan.overlap)
        bridge = int(np.ceil((short_s + cost_s) / (frame_s - per_frame)))
        bridge_end = min(total - plan.first, first_end + bridge)
        if bridge_end <= first_end:
            return [(start, first_end), (first_end, total)]
        return [(start, first_end), (first_end, bridge_end), (bridge_end, total)]

    def render(
        self,
        front: FrontOutput,
        style: np.ndarray,
        plan: WindowPlan,
        timings: WindowTimings | None = None,
        spans: list[tuple[int, int]] | None = None,
        slack_s: float = 0.0,
    ) -> Iterator[np.ndarray]:
        """Audio of the segment, one array per window, joined by cross-fades."""
        style = np.asarray(style, np.float32).reshape(1, -1)
        plan = self.fit_plan(plan)
        spans = spans or self.windows(front, plan, slack_s)
        if plan.stats == "whole":
            t0 = time.perf_counter()
            audio = self._run_back(self.back, front.tensors, style, front, 0, front.frames)
            if timings is not None:
                timings.windows_ms.append((time.perf_counter() - t0) * 1e3)
            yield audio
            return
        source = front.tensors
        session = self.back
        if plan.stats in ("generator", "first"):
            if self.decoder is None or self.generator is None:
                raise ModelFormatError(
                    f"{self.folder} has no decoder.onnx/generator.onnx; split again with the "
                    "generator cut (the default)."
                )
            t0 = time.perf_counter()
            feeds = {
                i.name: self._feed(i.name, front.tensors, style) for i in self.decoder.get_inputs()
            }
            (hidden,) = self.decoder.run(None, feeds)
            if timings is not None:
                timings.decoder_ms = (time.perf_counter() - t0) * 1e3
            source = {"hidden": hidden, "f0": front.tensors["f0"]}
            session = self.generator
        context = self.context_frames(plan)
        spf = self.samples_per_frame
        fade = plan.overlap * spf
        tail: np.ndarray | None = None
        for k, (a, b) in enumerate(spans):
            last = k == len(spans) - 1
            b_out = b if last else min(front.frames, b + plan.overlap)
            lo, hi = max(0, a - context), min(front.frames, b_out + context)
            if self.static is not None:  # the bound span, inside the segment where it fits
                graph = BACK if session is self.back else GENERATOR
                lo, hi = self.static.place(a, graph, front.frames)
            exact = plan.stats == "first" and last
            if exact:
                lo, hi = 0, front.frames  # the segment's own statistics: exact from here on
            t0 = time.perf_counter()
            audio = self._run_back(session, source, style, front, lo, hi)
            took = time.perf_counter() - t0
            if timings is not None:
                timings.windows_ms.append(took * 1e3)
            if exact:
                per_frame = took / max(1, hi - lo)
                old = self.rest_s_per_frame
                self.rest_s_per_frame = per_frame if old is None else 0.5 * old + 0.5 * per_frame
            audio = audio[(a - lo) * spf : (b_out - lo) * spf]
            if tail is not None and len(tail):
                n = min(len(tail), len(audio))
                ramp = (np.arange(n, dtype=np.float32) + 0.5) / n
                audio = audio.copy()
                audio[:n] = tail[:n] * (1.0 - ramp) + audio[:n] * ramp
            if last:
                yield audio
            else:
                keep = (b - a) * spf
                tail = audio[keep:] if fade else None
                yield audio[:keep]

    def stream(
        self,
        front: FrontOutput,
        style: np.ndarray,
        plan: WindowPlan,
        timings: WindowTimings | None = None,
        slack_s: float = 0.0,
    ) -> Iterator[WindowChunk]:
        """`render`'s audio with each window's place (first, last, start frame) and the
        segment's durations."""
        spans = self.windows(front, plan, slack_s)
        for k, audio in enumerate(self.render(front, style, plan, timings, spans)):
            yield WindowChunk(
                audio,
                first=k == 0,
                last=k == len(spans) - 1,
                frame=spans[k][0],
                durations=front.durations,
            )

    def _feed(self, name: str, source: dict[str, np.ndarray], style: np.ndarray) -> np.ndarray:
        return style if name == "style" else source[name]

    def _run_back(
        self,
        session: Any,
        source: dict[str, np.ndarray],
        style: np.ndarray,
        front: FrontOutput,
        lo: int,
        hi: int,
    ) -> np.ndarray:
        (audio,) = session.run(None, self.window_feeds(session, source, style, front, lo, hi))
        return np.asarray(audio, np.float32).reshape(-1)

    def window_feeds(
        self,
        session: Any,
        source: dict[str, np.ndarray],
        style: np.ndarray,
        front: FrontOutput,
        lo: int,
        hi: int,
    ) -> dict[str, np.ndarray]:
        """The inputs of `session` for frames [lo, hi): frame-level tensors sliced at their
        rates, repeating their last frame past the segment's end (a bound span longer than
        the segment), the style, and `phase0` at frame `lo`."""
        feeds: dict[str, np.ndarray] = {}
        for inp in session.get_inputs():
            name = inp.name
            if name == "style":
                feeds[name] = style
            elif name == "phase0":
                feeds[name] = self._phase0(front, lo, inp.shape)
            else:
                axis, rate = self.tensors[name]["axis"], self.tensors[name]["rate"]
                feeds[name] = _frames(source[name], axis, lo * rate, hi * rate)
        return feeds

    def _phase0(self, front: FrontOutput, lo: int, shape: Any) -> np.ndarray:
        rate = self.tensors["phase_step"]["rate"]
        shape0 = tuple(self.meta.get("phase0_shape", [1, 1, front.phase_sum.shape[1]]))
        if lo == 0:
            return np.zeros(shape0, np.float32)
        return front.phase_sum[lo * rate - 1].reshape(shape0).astype(np.float32)

    def synthesize(
        self, tokens: np.ndarray, style: np.ndarray, speed: float, plan: WindowPlan
    ) -> np.ndarray:
        """The whole segment's audio through the windows, as one array."""
        front = self.run_front(tokens, style, speed)
        return np.concatenate(list(self.render(front, style, plan)))

    def skipped_samples(
        self, tokens: np.ndarray, style: np.ndarray, speed: float, plan: WindowPlan
    ) -> int:
        front = self.run_front(tokens, style, speed)
        return self.windows(front, plan)[0][0] * self.samples_per_frame


def _frames(tensor: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    """tensor[lo:hi] along `axis`, edge-padded where hi passes its length."""
    index = [slice(None)] * tensor.ndim
    index[axis] = slice(lo, hi)
    part = tensor[tuple(index)]
    short = hi - lo - part.shape[axis]
    if short > 0:
        pad = [(0, 0)] * tensor.ndim
        pad[axis] = (0, short)
        part = np.pad(part, pad, mode="edge")
    return np.ascontiguousarray(part)
