"""Text -> speech with a Kokoro ONNX model: a generator of typed audio chunks, one per segment.

    synth = Synthesizer(model_path)                 # session + contract + voices, loaded once
    for chunk in synth.stream(text, voice="jf_gongitsune", lang="en-us"):
        play(chunk.samples)                         # float32 mono at chunk.sample_rate
    audio, sr = synth.synthesize(text, voice="jf_alpha*0.7+jm_kumo*0.3")

A Synthesizer is safe to share between threads: the ORT session runs concurrently, G2P
backends lock internally, and each `stream` call is an independent generator. All input is
validated when `stream`/`synthesize` is called, before any audio is produced.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from kokoro_opt.errors import ModelFormatError, TextError, UserInputError
from kokoro_opt.runtime.audio import (
    SAMPLE_RATE,
    PlaybackClock,
    silence_bounds,
    speech_span,
    trim_silence,
)
from kokoro_opt.runtime.contract import ModelContract
from kokoro_opt.runtime.g2p import G2P, get_g2p, normalize_lang
from kokoro_opt.runtime.markup import Lexicon, Pause, parse_markup, plan
from kokoro_opt.runtime.segment import SegmentPolicy, is_speakable, segment_text
from kokoro_opt.runtime.session import create_session
from kokoro_opt.runtime.timestamps import (
    PhonemeWord,
    WindowWords,
    WordTiming,
    locate_pieces,
    shift,
    word_timings,
    words_in,
)
from kokoro_opt.runtime.tokenizer import MAX_PHONEMES, PAD_ID, split_phonemes, tokenize, vocab
from kokoro_opt.runtime.voices import VoiceLibrary, style_for

if TYPE_CHECKING:
    import onnxruntime as ort

    from kokoro_opt.runtime.windowed import SplitModel, WindowChunk, WindowPlan

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 10_000
MIN_SPEED = 0.5
MAX_SPEED = 2.0
# Short raised-cosine ramps at both ends of every chunk. Kokoro's output starts and ends in
# near-silence, so this removes nothing audible; it guarantees that chunks joined by a player
# (or the end of the stream) never step from a non-zero sample to silence, which is a click.
EDGE_RAMP_S = 0.004
# At a pause, speech is cut this long after its last (before its first) sample at -60 dBFS, and
# the pause's silence is shortened by the same amount, so the silence between the words is the
# pause exactly; the edge ramps fall inside this margin.
PAUSE_EDGE_S = EDGE_RAMP_S


@functools.cache
def _silent_ids() -> frozenset[int]:
    """Token ids of punctuation and space: a piece made only of these has nothing to say."""
    table = vocab()
    return frozenset(table[c] for c in ';:,.!?—…"()“” ' if c in table)


@dataclass(frozen=True)
class AudioChunk:
    """Audio for one segment of the text.

    `seq` counts chunks from 0; `segment` is the index of the step of the plan it belongs to
    (`Synthesizer.plan`: segments and pauses; a segment whose phonemes exceed the model's limit
    yields several chunks). `timings` holds
    `g2p_ms`, `infer_ms` and `audio_s`. `nonfinite` counts NaN/inf samples the model produced
    (replaced by 0; a healthy model gives 0). `words` are the chunk's word timings in seconds
    from its first sample (only from a synthesizer made with `timestamps=True`; a pause chunk,
    with empty text, has none).
    """

    seq: int
    samples: np.ndarray
    sample_rate: int
    text: str
    phonemes: str
    is_last: bool
    segment: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    nonfinite: int = 0
    words: tuple[WordTiming, ...] = ()

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


class Synthesizer:
    """A loaded Kokoro model with its voices: call `stream` or `synthesize`.

    Each chunk is the model's audio with its padding silence shortened (`trim=True`: at most
    50 ms before the speech, 300 ms after it; Kokoro pads every call with about 0.4 s before and
    0.4-0.6 s after, which would otherwise put a one-second hole between segments and delay the
    first audible sample), NaN/inf set to 0, clipped to [-1, 1], with 4 ms edge ramps.
    `infer` returns the raw model output.

    Text may hold markup (`runtime.markup`: `[pause:0.5s]`, `<break time="300ms"/>`,
    `[word](/phonemes/)`); a pause is exact silence between the speech around it.
    `timestamps=True` gives chunks their word timings (`AudioChunk.words`, `synthesize_timed`):
    the model's per-token durations are read from its duration output, added in memory by
    `graph.durations` when the model has none (ModelFormatError when its graph has no duration
    predictor; `"auto"` then goes on without timestamps).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        voices: VoiceLibrary | str | Path | None = None,
        provider: str = "cpu",
        threads: int | None = None,
        max_chars: int = MAX_TEXT_CHARS,
        segment_policy: SegmentPolicy | None = None,
        trim: bool = True,
        allow_spinning: bool = False,
        session: ort.InferenceSession | None = None,
        timestamps: bool | Literal["auto"] = False,
        split: str | Path | None = None,
        window: WindowPlan | None = None,
    ) -> None:
        self.model_path = Path(model)
        self.voices = VoiceLibrary.from_spec(voices)
        # `session`: an existing ORT session of `model` (provider and threads are then its own).
        if session is None:
            session = create_session(
                self.model_path,
                provider=provider,
                threads=threads,
                allow_spinning=allow_spinning,
                model_bytes=(
                    _with_durations(self.model_path, required=timestamps is True)
                    if timestamps
                    else None
                ),
            )
        self.session: ort.InferenceSession = session
        self.contract = ModelContract.from_session(self.session)
        # Word timings need the model's durations (added in memory by `timestamps=True` when the
        # model has no such output; a given `session` must already have one).
        self.timestamps = bool(timestamps) and self.contract.durations is not None
        self.providers: list[str] = list(self.session.get_providers())
        self.max_chars = max_chars
        self.segment_policy = segment_policy or SegmentPolicy()
        self.trim = trim
        self.split: SplitModel | None = None
        self.window = window
        if split is not None:
            from kokoro_opt.runtime.windowed import SplitModel, WindowPlan

            self.split = SplitModel(split, provider=provider, threads=threads)
            self.window = window or WindowPlan("whole")
            if self.windowed:  # a folder bound to one window size refuses other policies now
                self.split.fit_plan(self.window)

    @property
    def windowed(self) -> bool:
        """True when segments are rendered in windows (a split model and a windowing plan)."""
        return self.split is not None and self.window is not None and self.window.stats != "whole"

    # -- low level -------------------------------------------------------------------------

    def infer(self, tokens: list[int], style: np.ndarray, speed: float) -> np.ndarray:
        """Raw model audio (float32, 1-D) for token ids without pads; pads 0 at both ends."""
        return self.infer_timed(tokens, style, speed)[0]

    def infer_timed(
        self, tokens: list[int], style: np.ndarray, speed: float
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw model audio and the per-token durations in frames (pads included; None when the
        synthesizer was made without timestamps)."""
        if not tokens:
            raise TextError("No phonemes to synthesize: give text with words in it.")
        if len(tokens) > MAX_PHONEMES:
            raise TextError(
                f"{len(tokens)} phonemes in one call; the model takes at most {MAX_PHONEMES}. "
                "Split the input (split_phonemes does this)."
            )
        feeds = self.contract.feeds([PAD_ID, *tokens, PAD_ID], style, speed)
        names = [self.contract.audio]
        if self.timestamps and self.contract.durations is not None:
            names.append(self.contract.durations)
        outputs = self.session.run(names, feeds)
        audio = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        if len(outputs) == 1:
            return audio, None
        durations = np.asarray(outputs[1]).reshape(-1)[: len(tokens) + 2]
        return audio, durations

    def infer_windows(
        self,
        tokens: list[int],
        style: np.ndarray,
        speed: float,
        slack: Callable[[], float] | None = None,
    ) -> Iterator[WindowChunk]:
        """Raw model audio in windows (`windowed` synthesizers): the front once, then the
        back window by window (see `runtime.windowed`). `slack()`: seconds of audio the
        listener has buffered (asked after the front ran); the more, the fewer windows."""
        if self.split is None or self.window is None:
            raise UserInputError("This synthesizer has no split model: load it with split=DIR.")
        if not tokens or len(tokens) > MAX_PHONEMES:
            self.infer(tokens, style, speed)  # raises the same errors as a whole call
        padded = np.array([[PAD_ID, *tokens, PAD_ID]], np.int64)
        front = self.split.run_front(padded, style, speed)
        slack_s = slack() if slack is not None else 0.0
        yield from self.split.stream(front, style, self.window, slack_s=slack_s)

    def phonemize(
        self,
        text: str,
        lang: str = "en-us",
        *,
        first_segment_fast: bool = True,
        lexicon: Lexicon | None = None,
        ssml: str = "strict",
    ) -> list[str]:
        """Phoneme strings, one per model call of `stream` (segments split at the 510 limit;
        pauses make no call)."""
        check_text(text, self.max_chars)
        steps = self.plan(text, first_segment_fast=first_segment_fast, lexicon=lexicon, ssml=ssml)
        return [p.phonemes for p in self._pieces(steps, get_g2p(lang)) if isinstance(p, _Piece)]

    def plan(
        self,
        text: str,
        *,
        first_segment_fast: bool = True,
        segment_policy: SegmentPolicy | None = None,
        lexicon: Lexicon | None = None,
        ssml: str = "strict",
    ) -> list[str | Pause]:
        """The text's markup parsed (`runtime.markup`) and its speech cut into segments: the
        segments and pauses `stream` renders, in order."""
        policy = segment_policy or self.segment_policy
        items = parse_markup(text, lexicon=lexicon, ssml=ssml)
        return plan(
            items,
            lambda chunk, first: segment_text(
                chunk, first_segment_fast=first_segment_fast and first, policy=policy
            ),
        )

    # -- synthesis -------------------------------------------------------------------------

    def stream(
        self,
        text: str,
        *,
        voice: str,
        speed: float = 1.0,
        lang: str = "en-us",
        first_segment_fast: bool = True,
        segment_policy: SegmentPolicy | None = None,
        lexicon: Lexicon | None = None,
        ssml: str = "strict",
    ) -> Iterator[AudioChunk]:
        """Validate everything now, then return a generator of AudioChunk, one per segment or
        pause, the last with `is_last=True`. `segment_policy` overrides the synthesizer's for
        this call; markup (pauses, SSML breaks, pronunciations) is read with `ssml` rules and
        `lexicon` applies to every word. Closing the generator (or dropping it) stops the
        work."""
        check_text(text, self.max_chars)
        speed = check_speed(speed)
        pack = self.voices.get(voice)
        g2p = get_g2p(normalize_lang(lang))
        steps = self.plan(
            text,
            first_segment_fast=first_segment_fast,
            segment_policy=segment_policy,
            lexicon=lexicon,
            ssml=ssml,
        )
        if not any(isinstance(step, str) for step in steps):
            raise TextError("Nothing speakable in the text: give words, not only punctuation.")
        return self._generate(steps, g2p, pack, speed)

    def synthesize(
        self,
        text: str,
        *,
        voice: str,
        speed: float = 1.0,
        lang: str = "en-us",
        lexicon: Lexicon | None = None,
        ssml: str = "strict",
    ) -> tuple[np.ndarray, int]:
        """The whole text as one float32 array in [-1, 1] and the sample rate (24000)."""
        audio, rate, _ = self._whole(text, voice, speed, lang, lexicon, ssml)
        return audio, rate

    def synthesize_timed(
        self,
        text: str,
        *,
        voice: str,
        speed: float = 1.0,
        lang: str = "en-us",
        lexicon: Lexicon | None = None,
        ssml: str = "strict",
    ) -> tuple[np.ndarray, int, list[WordTiming]]:
        """`synthesize` plus the words with their times in seconds of the returned audio.
        Needs a synthesizer made with `timestamps=True`."""
        if not self.timestamps:
            raise UserInputError(
                "Word timestamps need a synthesizer made with timestamps=True "
                "(its model then gets a durations output)."
            )
        return self._whole(text, voice, speed, lang, lexicon, ssml)

    def warmup(self, *, voice: str | None = None, lang: str = "en-us") -> float:
        """Build the G2P for `lang` and run the model once; returns the seconds it took."""
        start = time.perf_counter()
        name = voice or self.voices.names[0]
        for _ in self.stream("Hello.", voice=name, lang=lang):
            pass
        return time.perf_counter() - start

    # -- internals -------------------------------------------------------------------------

    def _whole(
        self,
        text: str,
        voice: str,
        speed: float,
        lang: str,
        lexicon: Lexicon | None,
        ssml: str,
    ) -> tuple[np.ndarray, int, list[WordTiming]]:
        parts: list[np.ndarray] = []
        words: list[WordTiming] = []
        offset = 0
        for chunk in self.stream(
            text, voice=voice, speed=speed, lang=lang, lexicon=lexicon, ssml=ssml
        ):
            words.extend(shift(chunk.words, offset / SAMPLE_RATE))
            parts.append(chunk.samples)
            offset += len(chunk.samples)
        audio = np.concatenate(parts).astype(np.float32, copy=False)
        return audio, SAMPLE_RATE, words

    def _pieces(self, steps: list[str | Pause], g2p: G2P) -> Iterator[_Piece | _Gap]:
        """One _Piece per model call and the pauses between them; unspeakable ones skipped."""
        for index, step in enumerate(steps):
            if isinstance(step, Pause):
                yield _Gap(index, step.seconds)
                continue
            phonemes, words = g2p.phonemize_words(step)
            pieces = split_phonemes(phonemes, MAX_PHONEMES)
            offsets = locate_pieces(phonemes, pieces)
            for piece, offset in zip(pieces, offsets, strict=True):
                if any(t not in _silent_ids() for t in tokenize(piece)):
                    yield _Piece(index, step, piece, words_in(words, offset, len(piece)))
                else:
                    logger.debug("skipping segment without phonemes: %r", step)

    def _generate(
        self, steps: list[str | Pause], g2p: G2P, pack: np.ndarray, speed: float
    ) -> Iterator[AudioChunk]:
        pieces = self._pieces(steps, g2p)
        seq = 0
        start = time.perf_counter()
        current = next(pieces, None)
        g2p_ms = (time.perf_counter() - start) * 1e3
        if current is None:
            raise TextError("Nothing speakable in the text: the G2P produced no phonemes.")
        after_pause = False
        spoke = False
        clock = PlaybackClock()  # how far ahead of a listener the stream is: sizes windows
        while current is not None:
            if self.windowed and isinstance(current, _Piece):
                upcoming, seq = yield from self._windows(current, pack, speed, seq, pieces, clock)
                current, g2p_ms = upcoming, 0.0
                after_pause, spoke = False, True
                continue
            # Look one piece ahead (G2P only, a few ms) so the last chunk is marked as such and a
            # piece before a pause is cut tight.
            t1 = time.perf_counter()
            upcoming = next(pieces, None)
            next_g2p_ms = (time.perf_counter() - t1) * 1e3
            if isinstance(current, _Gap):
                edges = PAUSE_EDGE_S * (spoke + isinstance(upcoming, _Piece))
                n = max(0, round((current.seconds - edges) * SAMPLE_RATE))
                clock.add(n)
                yield AudioChunk(
                    seq=seq,
                    samples=np.zeros(n, np.float32),
                    sample_rate=SAMPLE_RATE,
                    text="",
                    phonemes="",
                    is_last=upcoming is None,
                    segment=current.index,
                    timings={"g2p_ms": 0.0, "infer_ms": 0.0, "audio_s": n / SAMPLE_RATE},
                )
                after_pause = True
            else:
                tokens = tokenize(current.phonemes)
                t0 = time.perf_counter()
                raw, durations = self.infer_timed(tokens, style_for(pack, len(tokens)), speed)
                infer_ms = (time.perf_counter() - t0) * 1e3
                lo, hi = self._keep(raw, after_pause, isinstance(upcoming, _Gap))
                samples, nonfinite = guard_audio(raw[lo:hi])
                if nonfinite:
                    logger.warning(
                        "model produced %d NaN/inf samples for %r; replaced by 0",
                        nonfinite,
                        current.text,
                    )
                words: list[WordTiming] = []
                if durations is not None:
                    words = word_timings(
                        current.words,
                        durations,
                        raw_samples=len(raw),
                        sample_rate=SAMPLE_RATE,
                        lead_cut=lo,
                        kept_samples=hi - lo,
                        phonemes=current.phonemes,
                    )
                clock.add(len(samples))
                yield AudioChunk(
                    seq=seq,
                    samples=samples,
                    sample_rate=SAMPLE_RATE,
                    text=current.text,
                    phonemes=current.phonemes,
                    is_last=upcoming is None,
                    segment=current.index,
                    timings={
                        "g2p_ms": g2p_ms,
                        "infer_ms": infer_ms,
                        "audio_s": len(samples) / SAMPLE_RATE,
                    },
                    nonfinite=nonfinite,
                    words=tuple(words),
                )
                after_pause = False
                spoke = True
            seq += 1
            current, g2p_ms = upcoming, next_g2p_ms

    def _keep(self, raw: np.ndarray, after_pause: bool, before_pause: bool) -> tuple[int, int]:
        """The sample range of a model call's audio to keep: padding silence shortened
        (`trim`), and cut tight on a side that meets a pause."""
        lo, hi = silence_bounds(raw, SAMPLE_RATE) if self.trim else (0, len(raw))
        span = speech_span(raw) if (after_pause or before_pause) else None
        if span is not None:
            edge = round(PAUSE_EDGE_S * SAMPLE_RATE)
            if after_pause:
                lo = max(0, span[0] - edge)
            if before_pause:
                hi = min(len(raw), span[1] + edge)
        return lo, hi

    def _windows(
        self,
        current: _Piece,
        pack: np.ndarray,
        speed: float,
        seq: int,
        pieces: Iterator[_Piece | _Gap],
        clock: PlaybackClock,
    ) -> Generator[AudioChunk, None, tuple[_Piece | _Gap | None, int]]:
        """One AudioChunk per window of one piece; returns the next piece (looked up before
        the last window is yielded, so `is_last` is right) and the next chunk number. Each
        chunk carries the words that start in it (`timestamps.WindowWords`)."""
        from kokoro_opt.runtime.windowed import finish_chunk

        index, segment, phonemes = current.index, current.text, current.phonemes
        tokens = tokenize(phonemes)
        timed = self.window_words(current.words, phonemes)
        upcoming: _Piece | _Gap | None = None
        t0 = time.perf_counter()
        style = style_for(pack, len(tokens))
        for chunk in self.infer_windows(tokens, style, speed, clock.slack_s):
            infer_ms = (time.perf_counter() - t0) * 1e3
            samples, nonfinite, cut = finish_chunk(
                chunk,
                SAMPLE_RATE,
                lead_s=0.05 if self.trim else 1e9,
                trail_s=0.3 if self.trim else 1e9,
            )
            words = timed.take(chunk, cut=cut, samples=len(samples)) if timed else []
            if chunk.last:
                upcoming = next(pieces, None)
            clock.add(len(samples))
            yield AudioChunk(
                seq=seq,
                samples=samples,
                sample_rate=SAMPLE_RATE,
                text=segment,
                phonemes=phonemes,
                is_last=chunk.last and upcoming is None,
                segment=index,
                timings={
                    "g2p_ms": 0.0,
                    "infer_ms": infer_ms,
                    "audio_s": len(samples) / SAMPLE_RATE,
                },
                nonfinite=nonfinite,
                words=tuple(words),
            )
            seq += 1
            t0 = time.perf_counter()
        return upcoming, seq

    def window_words(self, words: list[PhonemeWord], phonemes: str) -> WindowWords | None:
        """The word timer of one windowed model call (None without timestamps)."""
        if not self.timestamps or self.split is None:
            return None
        return WindowWords(
            words,
            phonemes=phonemes,
            tokens=len(tokenize(phonemes)),
            samples_per_frame=self.split.samples_per_frame,
            sample_rate=SAMPLE_RATE,
        )


@dataclass(frozen=True)
class _Piece:
    """One model call: the segment it comes from, its phonemes and their words."""

    index: int
    text: str
    phonemes: str
    words: list[PhonemeWord]


@dataclass(frozen=True)
class _Gap:
    """A pause: `seconds` of silence between the words around it (step `index` of the plan)."""

    index: int
    seconds: float


def _with_durations(path: Path, *, required: bool) -> bytes | None:
    """The model serialized with a `durations` output added (`graph.durations`), or None when
    it already has one (or is not a file: create_session reports that). A graph without a
    duration predictor is a ModelFormatError when `required`, else None (no timestamps)."""
    import onnx

    from kokoro_opt.graph.durations import add_durations_output, duration_output

    if not path.is_file():
        return None
    header = onnx.load(str(path), load_external_data=False)
    if duration_output(header) is not None:
        return None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others on a corrupt file
        raise ModelFormatError(f"Cannot read model {path}: {exc}.") from None
    try:
        timed, _source = add_durations_output(model)
    except ModelFormatError:
        if required:
            raise
        logger.info("%s has no duration predictor: no word timestamps", path.name)
        return None
    return timed.SerializeToString()


def check_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """The text if it can be synthesized, else TextError (empty, over `max_chars`, or nothing
    speakable such as only punctuation)."""
    if not isinstance(text, str) or not text.strip():
        raise TextError("The text is empty: give something to say.")
    if len(text) > max_chars:
        raise TextError(
            f"The text has {len(text):,} characters; the limit is {max_chars:,}. "
            "Split it into shorter pieces."
        )
    if not is_speakable(text):
        raise TextError("Nothing speakable in the text: give words, not only punctuation.")
    return text


def check_speed(speed: float) -> float:
    """The speed as a float if it is within [0.5, 2.0], else UserInputError."""
    try:
        value = float(speed)
    except (TypeError, ValueError):
        raise UserInputError(f"Speed must be a number, got {speed!r}.") from None
    if not math.isfinite(value) or not MIN_SPEED <= value <= MAX_SPEED:
        raise UserInputError(
            f"Speed {speed} is out of range: use a value from {MIN_SPEED} to {MAX_SPEED} "
            "(1.0 is normal speed)."
        )
    return value


def finish_audio(
    raw: np.ndarray, sample_rate: int = SAMPLE_RATE, *, trim: bool = True
) -> tuple[np.ndarray, int]:
    """What `stream` does to each raw model output: shorten the padding silence (`trim`,
    see `audio.trim_silence`), then `guard_audio`. Returns (samples, nonfinite count). Other
    callers of `infer` (the server's pipeline) should use this to get identical chunks."""
    return guard_audio(trim_silence(raw, sample_rate) if trim else raw, sample_rate)


def guard_audio(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Make model output safe to play: NaN/inf -> 0 (counted), clip to [-1, 1], and short
    raised-cosine ramps at both ends (`EDGE_RAMP_S`). Returns (samples, nonfinite count)."""
    audio = np.array(samples, dtype=np.float32).reshape(-1)
    bad = ~np.isfinite(audio)
    nonfinite = int(bad.sum())
    if nonfinite:
        audio[bad] = 0.0
    np.clip(audio, -1.0, 1.0, out=audio)
    ramp = min(int(EDGE_RAMP_S * sample_rate), len(audio) // 2)
    if ramp > 0:
        window = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp, dtype=np.float64))).astype(
            np.float32
        )
        audio[:ramp] *= window
        audio[-ramp:] *= window[::-1]
    return audio, nonfinite
