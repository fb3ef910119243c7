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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kokoro_opt.errors import TextError, UserInputError
from kokoro_opt.runtime.audio import SAMPLE_RATE, trim_silence
from kokoro_opt.runtime.contract import ModelContract
from kokoro_opt.runtime.g2p import G2P, get_g2p, normalize_lang
from kokoro_opt.runtime.segment import SegmentPolicy, is_speakable, segment_text
from kokoro_opt.runtime.session import create_session
from kokoro_opt.runtime.tokenizer import MAX_PHONEMES, PAD_ID, split_phonemes, tokenize, vocab
from kokoro_opt.runtime.voices import VoiceLibrary, style_for

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 10_000
MIN_SPEED = 0.5
MAX_SPEED = 2.0
# Short raised-cosine ramps at both ends of every chunk. Kokoro's output starts and ends in
# near-silence, so this removes nothing audible; it guarantees that chunks joined by a player
# (or the end of the stream) never step from a non-zero sample to silence, which is a click.
EDGE_RAMP_S = 0.004


@functools.cache
def _silent_ids() -> frozenset[int]:
    """Token ids of punctuation and space: a piece made only of these has nothing to say."""
    table = vocab()
    return frozenset(table[c] for c in ';:,.!?—…"()“” ' if c in table)


@dataclass(frozen=True)
class AudioChunk:
    """Audio for one segment of the text.

    `seq` counts chunks from 0; `segment` is the index of the text segment it belongs to (a
    segment whose phonemes exceed the model's limit yields several chunks). `timings` holds
    `g2p_ms`, `infer_ms` and `audio_s`. `nonfinite` counts NaN/inf samples the model produced
    (replaced by 0; a healthy model gives 0).
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
    ) -> None:
        self.model_path = Path(model)
        self.voices = VoiceLibrary.from_spec(voices)
        self.session: ort.InferenceSession = create_session(
            self.model_path, provider=provider, threads=threads, allow_spinning=allow_spinning
        )
        self.contract = ModelContract.from_session(self.session)
        self.providers: list[str] = list(self.session.get_providers())
        self.max_chars = max_chars
        self.segment_policy = segment_policy or SegmentPolicy()
        self.trim = trim

    # -- low level -------------------------------------------------------------------------

    def infer(self, tokens: list[int], style: np.ndarray, speed: float) -> np.ndarray:
        """Raw model audio (float32, 1-D) for token ids without pads; pads 0 at both ends."""
        if not tokens:
            raise TextError("No phonemes to synthesize: give text with words in it.")
        if len(tokens) > MAX_PHONEMES:
            raise TextError(
                f"{len(tokens)} phonemes in one call; the model takes at most {MAX_PHONEMES}. "
                "Split the input (split_phonemes does this)."
            )
        feeds = self.contract.feeds([PAD_ID, *tokens, PAD_ID], style, speed)
        (audio,) = self.session.run([self.contract.audio], feeds)
        return np.asarray(audio, dtype=np.float32).reshape(-1)

    def phonemize(
        self, text: str, lang: str = "en-us", *, first_segment_fast: bool = True
    ) -> list[str]:
        """Phoneme strings, one per model call of `stream` (segments split at the 510 limit)."""
        check_text(text, self.max_chars)
        g2p = get_g2p(lang)
        segments = segment_text(
            text, first_segment_fast=first_segment_fast, policy=self.segment_policy
        )
        return [p for _, _, p in self._pieces(segments, g2p)]

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
    ) -> Iterator[AudioChunk]:
        """Validate everything now, then return a generator of AudioChunk, one per segment,
        the last with `is_last=True`. `segment_policy` overrides the synthesizer's for this
        call. Closing the generator (or dropping it) stops the work."""
        check_text(text, self.max_chars)
        speed = check_speed(speed)
        pack = self.voices.get(voice)
        g2p = get_g2p(normalize_lang(lang))
        segments = segment_text(
            text,
            first_segment_fast=first_segment_fast,
            policy=segment_policy or self.segment_policy,
        )
        if not segments:
            raise TextError("Nothing speakable in the text: give words, not only punctuation.")
        return self._generate(segments, g2p, pack, speed)

    def synthesize(
        self, text: str, *, voice: str, speed: float = 1.0, lang: str = "en-us"
    ) -> tuple[np.ndarray, int]:
        """The whole text as one float32 array in [-1, 1] and the sample rate (24000)."""
        chunks = [c.samples for c in self.stream(text, voice=voice, speed=speed, lang=lang)]
        return np.concatenate(chunks).astype(np.float32, copy=False), SAMPLE_RATE

    def warmup(self, *, voice: str | None = None, lang: str = "en-us") -> float:
        """Build the G2P for `lang` and run the model once; returns the seconds it took."""
        start = time.perf_counter()
        name = voice or self.voices.names[0]
        for _ in self.stream("Hello.", voice=name, lang=lang):
            pass
        return time.perf_counter() - start

    # -- internals -------------------------------------------------------------------------

    def _pieces(self, segments: list[str], g2p: G2P) -> Iterator[tuple[int, str, str]]:
        """(segment index, segment text, phonemes) per model call; unspeakable ones skipped."""
        for index, segment in enumerate(segments):
            phonemes = g2p.phonemize(segment)
            for piece in split_phonemes(phonemes, MAX_PHONEMES):
                if any(t not in _silent_ids() for t in tokenize(piece)):
                    yield index, segment, piece
                else:
                    logger.debug("skipping segment without phonemes: %r", segment)

    def _generate(
        self, segments: list[str], g2p: G2P, pack: np.ndarray, speed: float
    ) -> Iterator[AudioChunk]:
        pieces = self._pieces(segments, g2p)
        seq = 0
        start = time.perf_counter()
        current = next(pieces, None)
        g2p_ms = (time.perf_counter() - start) * 1e3
        if current is None:
            raise TextError("Nothing speakable in the text: the G2P produced no phonemes.")
        while current is not None:
            index, segment, phonemes = current
            tokens = tokenize(phonemes)
            t0 = time.perf_counter()
            raw = self.infer(tokens, style_for(pack, len(tokens)), speed)
            infer_ms = (time.perf_counter() - t0) * 1e3
            samples, nonfinite = finish_audio(raw, trim=self.trim)
            if nonfinite:
                logger.warning(
                    "model produced %d NaN/inf samples for %r; replaced by 0", nonfinite, segment
                )
            # Look one piece ahead (G2P only, a few ms) so the last chunk is marked as such.
            t1 = time.perf_counter()
            upcoming = next(pieces, None)
            next_g2p_ms = (time.perf_counter() - t1) * 1e3
            yield AudioChunk(
                seq=seq,
                samples=samples,
                sample_rate=SAMPLE_RATE,
                text=segment,
                phonemes=phonemes,
                is_last=upcoming is None,
                segment=index,
                timings={
                    "g2p_ms": g2p_ms,
                    "infer_ms": infer_ms,
                    "audio_s": len(samples) / SAMPLE_RATE,
                },
                nonfinite=nonfinite,
            )
            seq += 1
            current, g2p_ms = upcoming, next_g2p_ms


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
