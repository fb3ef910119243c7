"""Word timestamps from Kokoro's predicted durations.

The G2P knows which phonemes came from which word (misaki's `MToken`s carry text, phonemes and
the whitespace after them; numbers, abbreviations and punctuation included), and the model knows
how many frames each phoneme lasts (the `durations` output, see `passes/durations.py`). A word's
start is the first frame of its first phoneme, its end the last frame of its last phoneme; a
frame is `len(raw audio) / sum(durations)` samples (600 at 24 kHz for Kokoro v1.0, 25 ms).

    phonemes, words = phoneme_words(tokens)        # from the G2P, per segment
    timings = word_timings(piece_words, durations, raw_samples=len(raw), lead_cut=start)
    timer = WindowWords(piece_words, ...)           # windowed: timer.take(chunk, ...) per window

Times are seconds from the start of the audio they belong to; `shift` moves them along a stream.
Output formats: JSON records (`WordTiming.to_dict`), SubRip (`to_srt`) and WebVTT (`to_vtt`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kokoro_opt.errors import UserInputError
from kokoro_opt.runtime.tokenizer import filter_phonemes

FORMATS = (".json", ".srt", ".vtt")
# Kokoro's audio runs ahead of its frame count: the reference pipeline (hexgrad/kokoro,
# `KPipeline.join_timestamps`) starts its timestamps 3 frames (75 ms) early.
LEAD_FRAMES = 3.0

# Characters trimmed from the ends of a word's text ("6:45," -> "6:45", "(hello)" -> "hello").
_EDGE_PUNCT = "\"'“”‘’()[]{}«»,;:!?…—–-¿¡"


class TokenLike(Protocol):
    """What the G2P gives per token (misaki's MToken has these attributes)."""

    text: str
    phonemes: str | None
    whitespace: str


class ChunkLike(Protocol):
    """What `WindowWords` reads of a window's chunk (`runtime.windowed.WindowChunk`)."""

    frame: int
    last: bool
    durations: np.ndarray | None


@dataclass(frozen=True)
class PhonemeWord:
    """A word of the text and the span [start, end) of its phonemes in a phoneme string."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class WordTiming:
    """A word and where it is spoken: seconds from the start of its audio."""

    word: str
    start: float
    end: float

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3)}


def phoneme_words(tokens: Sequence[TokenLike]) -> tuple[str, list[PhonemeWord]]:
    """The phoneme string of a G2P result and its words with their phoneme spans.

    The string equals `filter_phonemes` of the G2P's own joined result (only vocabulary
    symbols, single spaces, stripped). Tokens not separated by whitespace form one word
    (`$` `5.50` -> `$5.50`); a word is kept when its text has a letter or digit, so punctuation
    has no timing of its own (its phonemes still take time between words).
    """
    out: list[str] = []
    words: list[PhonemeWord] = []
    text_parts: list[str] = []
    span_start: int | None = None
    span_end = 0

    def close() -> None:
        nonlocal span_start
        word = clean_word("".join(text_parts))
        if word:
            start = span_start if span_start is not None else len("".join(out).rstrip())
            words.append(PhonemeWord(word, start, max(start, span_end)))
        text_parts.clear()
        span_start = None

    length = 0
    for tok in tokens:
        phon = filter_phonemes(tok.phonemes or "")
        if phon:
            if _has_word_chars(tok.text):
                if span_start is None:
                    span_start = length
                span_end = length + len(phon)
            out.append(phon)
            length += len(phon)
        text_parts.append(tok.text)
        if tok.whitespace:
            close()
            if length and out[-1] != " ":
                out.append(" ")
                length += 1
    close()
    phonemes = "".join(out)
    stripped = phonemes.rstrip()
    words = [PhonemeWord(w.text, min(w.start, len(stripped)), min(w.end, len(stripped)))
             for w in words]  # fmt: skip
    return stripped, words


def locate_pieces(phonemes: str, pieces: Sequence[str]) -> list[int]:
    """Offsets of `pieces` (from `split_phonemes`) in the normalized phoneme string, in order."""
    offsets: list[int] = []
    cursor = 0
    for piece in pieces:
        at = phonemes.find(piece, cursor)
        if at < 0:
            raise ValueError(f"phoneme piece {piece[:20]!r} is not in the segment's phonemes")
        offsets.append(at)
        cursor = at + len(piece)
    return offsets


def words_in(words: Sequence[PhonemeWord], offset: int, length: int) -> list[PhonemeWord]:
    """The words that start within [offset, offset + length), spans made relative to it (a word
    cut by the 510-phoneme limit belongs to the piece where it starts)."""
    end = offset + length
    return [
        PhonemeWord(w.text, w.start - offset, min(w.end, end) - offset)
        for w in words
        if offset <= w.start < end or (w.start == w.end == end and length)
    ]


def word_timings(
    words: Sequence[PhonemeWord],
    durations: np.ndarray,
    *,
    raw_samples: int,
    sample_rate: int,
    lead_cut: int = 0,
    kept_samples: int | None = None,
    phonemes: str | None = None,
    lead_frames: float = LEAD_FRAMES,
) -> list[WordTiming]:
    """Times of `words` (spans into `phonemes`, the phonemes of one model call) from that
    call's durations.

    `durations` has one entry per token, the two pads included; `raw_samples` is the length of
    the model's audio for the call, `lead_cut` the samples trimmed from its start and
    `kept_samples` the length kept after trimming (times are clamped into it). As in Kokoro's
    reference pipeline (hexgrad/kokoro `KPipeline.join_timestamps`), a space between two words
    is split between them (with `phonemes` given) and every time is `lead_frames` frames earlier
    than the frame count says.
    """
    frames = np.asarray(durations, dtype=np.float64).reshape(-1)
    total = float(frames.sum())
    if total <= 0:
        return []
    hop = raw_samples / total
    ends = np.cumsum(frames)
    starts = ends - frames
    limit = (raw_samples - lead_cut) if kept_samples is None else kept_samples
    hi = limit / sample_rate
    last_token = len(frames) - 2  # the last text token (before the closing pad)

    def seconds(frame: float) -> float:
        t = ((frame - lead_frames) * hop - lead_cut) / sample_rate
        return float(min(max(t, 0.0), hi))

    out: list[WordTiming] = []
    for w in words:
        first = min(w.start + 1, last_token)  # +1: the leading pad token
        last = min(max(w.end, w.start + 1), last_token)
        begin = starts[first]
        finish = ends[last] if w.end > w.start else begin
        if phonemes is not None:
            if w.start > 0 and phonemes[w.start - 1] == " ":
                begin -= frames[w.start] / 2  # the space before (padded index w.start)
            if w.end > w.start and w.end < len(phonemes) and phonemes[w.end] == " ":
                finish += frames[w.end + 1] / 2  # the space after
        out.append(WordTiming(w.text, seconds(begin), seconds(finish)))
    return out


class WindowWords:
    """A windowed segment's words (`runtime.windowed`), handed to its chunks in order: each
    chunk gets the words whose start falls in it, in seconds from its first sample.

    The words are timed once, from the front's durations, in seconds of the segment's whole
    raw audio (frame f starts at sample f * samples_per_frame, as in a whole-segment call); a
    chunk sits there at its first frame (`WindowChunk.frame`: the skipped leading pad counts)
    plus the samples `finish_chunk` trimmed from its start. So a word gets the time a
    whole-segment render trimmed at the same sample gives it. The first chunk also takes the
    words before it (start clamped to 0), the last one those after it; only the last chunk
    clamps ends to its length (a word running past a chunk ends in the next one).
    """

    def __init__(
        self,
        words: Sequence[PhonemeWord],
        *,
        phonemes: str,
        tokens: int,
        samples_per_frame: int,
        sample_rate: int,
    ) -> None:
        self.words = list(words)
        self.phonemes = phonemes
        self.tokens = tokens
        self.samples_per_frame = samples_per_frame
        self.sample_rate = sample_rate
        self._timed: list[WordTiming] | None = None
        self._next = 0

    def take(self, chunk: ChunkLike, *, cut: int, samples: int) -> list[WordTiming]:
        """The words of the next chunk: it starts `cut` samples into frame `chunk.frame` of the
        segment and holds `samples` samples (none when the chunk has no durations)."""
        if chunk.durations is None:
            return []
        if self._timed is None:
            frames = np.asarray(chunk.durations).reshape(-1)[: self.tokens + 2]  # pads too
            total = int(round(float(frames.astype(np.float64).sum())))
            self._timed = word_timings(
                self.words,
                frames,
                raw_samples=total * self.samples_per_frame,
                sample_rate=self.sample_rate,
                phonemes=self.phonemes,
            )
        start = (chunk.frame * self.samples_per_frame + cut) / self.sample_rate
        length = samples / self.sample_rate
        hi = length if chunk.last else float("inf")
        out: list[WordTiming] = []
        while self._next < len(self._timed):
            word = self._timed[self._next]
            if not chunk.last and word.start >= start + length:
                break
            out.append(
                WordTiming(
                    word.word,
                    min(max(word.start - start, 0.0), hi),
                    min(max(word.end - start, 0.0), hi),
                )
            )
            self._next += 1
        return out


def shift(words: Iterable[WordTiming], seconds: float) -> list[WordTiming]:
    """The same words moved later by `seconds`."""
    return [WordTiming(w.word, w.start + seconds, w.end + seconds) for w in words]


def clip(words: Iterable[WordTiming], start: float, end: float) -> list[WordTiming]:
    """Words of audio cut to [start, end) seconds, in seconds of the cut audio (clamped)."""
    length = max(0.0, end - start)
    return [
        WordTiming(
            w.word, min(max(w.start - start, 0.0), length), min(max(w.end - start, 0.0), length)
        )
        for w in words
    ]


def to_json(words: Sequence[WordTiming]) -> str:
    return json.dumps({"words": [w.to_dict() for w in words]}, ensure_ascii=False, indent=1)


def to_srt(words: Sequence[WordTiming]) -> str:
    """One SubRip cue per word."""
    cues = [
        f"{i}\n{_clock(w.start, ',')} --> {_clock(w.end, ',')}\n{w.word}\n"
        for i, w in enumerate(words, 1)
    ]
    return "\n".join(cues)


def to_vtt(words: Sequence[WordTiming]) -> str:
    """One WebVTT cue per word."""
    cues = [f"{_clock(w.start, '.')} --> {_clock(w.end, '.')}\n{w.word}\n" for w in words]
    return "WEBVTT\n\n" + "\n".join(cues)


def render(words: Sequence[WordTiming], suffix: str) -> str:
    """The words in the format named by a file suffix: .json, .srt or .vtt."""
    kind = suffix.lower()
    if kind == ".srt":
        return to_srt(words)
    if kind == ".vtt":
        return to_vtt(words)
    return to_json(words) + "\n"


def check_timestamps_path(path: str | Path) -> Path:
    """The path of a timestamps file to write, checked before any work: a .json, .srt or .vtt
    file in an existing folder."""
    out = Path(path).expanduser()
    if out.suffix.lower() not in FORMATS:
        raise UserInputError(
            f"Timestamps file {out} must end in .json, .srt or .vtt (the format follows the "
            "extension)."
        )
    if out.is_dir():
        raise UserInputError(f"Timestamps file {out} is a folder: give a file name.")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UserInputError(f"Folder {folder} does not exist: create it or choose another path.")
    return out


def write_timestamps(path: str | Path, words: Sequence[WordTiming]) -> Path:
    """Write the words in the format of the file's extension, atomically (temp file + rename)."""
    out = check_timestamps_path(path)
    folder = out.parent if str(out.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render(words, out.suffix))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _has_word_chars(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def clean_word(text: str) -> str:
    """A word of the text as timestamps name it: edge punctuation and a sentence's full stop
    removed (an abbreviation's period goes too; "U.S.A." keeps its)."""
    word = text.strip().strip(_EDGE_PUNCT)
    if word.endswith(".") and word.count(".") == 1:
        word = word[:-1]  # a sentence's full stop, not an abbreviation's ("U.S.A." keeps its)
    return word if _has_word_chars(word) else ""
