"""Speech markup, parsed before segmentation: pauses, SSML breaks and pronunciations.

    [pause:0.5s]  [pause:300ms]          exactly that much silence; segments split there
    <break time="500ms"/>  <break strength="strong"/>      the same, in SSML
    [Kokoro](/kˈOkəɹO/)                  this word said with these phonemes (misaki's syntax)

`parse_markup` turns text into a list of `Speech` (text, pronunciations kept in misaki's link
syntax) and `Pause` items. `<speak>` (and an `<?xml ...?>` declaration) are accepted and
ignored; any other SSML tag is a TextError naming it (`ssml="strict"`, the default) or is
removed with its content kept (`ssml="lenient"`). A lexicon (`Lexicon.load("words.tsv")`)
turns every matching word into a pronunciation. Phonemes must be symbols of Kokoro's
vocabulary; the first one that is not is named in the error.

`plan` cuts the Speech items with a segmenter (the runtime's or the server's) while keeping each
`[word](/phonemes/)` whole, and returns segments and pauses in order.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kokoro_opt.errors import TextError, UserInputError
from kokoro_opt.runtime.tokenizer import vocab

SSML_MODES = ("strict", "lenient")
MAX_PAUSE_S = 30.0
# <break strength=...> in seconds.
BREAK_STRENGTHS: dict[str, float] = {
    "none": 0.0,
    "x-weak": 0.1,
    "weak": 0.2,
    "medium": 0.4,
    "strong": 0.7,
    "x-strong": 1.0,
}

_TAG = re.compile(r"<(?P<close>/?)\s*(?P<name>[A-Za-z][\w:.-]*)(?P<attrs>[^<>]*?)/?\s*>")
_SKIP = re.compile(r"<\?xml[^<>]*\?>|<!--.*?-->", re.DOTALL)
_ATTR = re.compile(r"([A-Za-z][\w:-]*)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")
_PAUSE = re.compile(r"\[pause\s*:([^\]]*)\]", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*$", re.IGNORECASE)
_LINK = re.compile(r"\[([^\]\[]+)\]\(/([^/)]*)/\)")
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_PLACEHOLDER = re.compile(r"⟦(\d+)⟧")


@dataclass(frozen=True)
class Pause:
    """Silence of `seconds` between the speech around it."""

    seconds: float


@dataclass(frozen=True)
class Speech:
    """Text to speak; pronunciations are inside it as `[word](/phonemes/)`."""

    text: str


Item = Speech | Pause


@dataclass(frozen=True)
class Lexicon:
    """Word -> phonemes. A lower-case key matches the word in any capitalization; a key with a
    capital letter matches only that exact spelling and wins over a lower-case one."""

    exact: dict[str, str] = field(default_factory=dict)
    folded: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.exact) + len(self.folded)

    def lookup(self, word: str) -> str | None:
        hit = self.exact.get(word)
        return hit if hit is not None else self.folded.get(word.lower())

    @classmethod
    def from_entries(
        cls, entries: Sequence[tuple[str, str]], *, source: str = "lexicon"
    ) -> Lexicon:
        exact: dict[str, str] = {}
        folded: dict[str, str] = {}
        for number, (word, phonemes) in enumerate(entries, 1):
            where = f"{source}, entry {number}"
            word = word.strip()
            if not word or not _WORD.fullmatch(word):
                raise UserInputError(
                    f"{where}: {word!r} is not a single word (letters, digits, ' or - inside)."
                )
            phonemes = check_phonemes(phonemes.strip(), where=f"{where} ({word})")
            (folded if word == word.lower() else exact)[word] = phonemes
        return cls(exact, folded)

    @classmethod
    def load(cls, path: str | Path) -> Lexicon:
        """Read a TSV file: `word<TAB>phonemes` per line; blank lines and `#` comments skipped."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise UserInputError(f"Lexicon {file} does not exist: give a word<TAB>phonemes file.")
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserInputError(f"Cannot read lexicon {file}: {exc}.") from None
        exact: dict[str, str] = {}
        folded: dict[str, str] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{file.name}:{number}"
            if "\t" not in line:
                raise UserInputError(f"{where}: expected word<TAB>phonemes, got {line[:40]!r}.")
            word, phonemes = (part.strip() for part in line.split("\t", 1))
            part = cls.from_entries([(word, phonemes)], source=where)
            exact.update(part.exact)
            folded.update(part.folded)
        return cls(exact, folded)


def check_ssml_mode(mode: str) -> str:
    value = str(mode).strip().lower()
    if value not in SSML_MODES:
        raise UserInputError(f"Unknown SSML mode {mode!r}: use strict or lenient.")
    return value


def check_phonemes(phonemes: str, *, where: str = "pronunciation") -> str:
    """The phonemes if every symbol is in Kokoro's vocabulary, else TextError naming it."""
    if not phonemes.strip():
        raise TextError(f"{where}: the phonemes are empty.")
    table = vocab()
    for ch in phonemes:
        if ch not in table:
            raise TextError(
                f"{where}: {ch!r} (U+{ord(ch):04X}) is not a Kokoro phoneme symbol; use symbols "
                "of kokoro_opt/data/vocab.json (misaki's phoneme set)."
            )
    return phonemes


def parse_markup(text: str, *, lexicon: Lexicon | None = None, ssml: str = "strict") -> list[Item]:
    """Speech and Pause items of `text` in order (see the module docstring)."""
    mode = check_ssml_mode(ssml)
    items: list[Item] = []
    tagged = bool(_TAG.search(text))
    text = _SKIP.sub(" ", text)
    pos = 0
    buffer = ""  # text since the last break; stripped tags do not cut it
    for m in _TAG.finditer(text):
        buffer += text[pos : m.start()]
        pos = m.end()
        name = m.group("name").lower()
        if name == "break":
            if not m.group("close"):
                _add_text(items, buffer, unescape=tagged, lexicon=lexicon)
                buffer = ""
                items.append(Pause(_break_seconds(m.group("attrs"))))
        elif name != "speak" and mode == "strict":
            raise TextError(
                f"Unsupported SSML tag <{m.group('name')}>: only <break> and <speak> are "
                "understood. Remove it, or use lenient SSML (--ssml lenient) to strip it."
            )
    _add_text(items, buffer + text[pos:], unescape=tagged, lexicon=lexicon)
    items = [i for i in items if not (isinstance(i, Pause) and i.seconds <= 0)]
    return _merge(items)


def plan(items: Sequence[Item], segmenter: Callable[[str, bool], list[str]]) -> list[str | Pause]:
    """Segments (strings, pronunciations inside) and pauses in order. `segmenter(text, first)`
    cuts one Speech item's text; `first` is True for the first item that has speech."""
    out: list[str | Pause] = []
    first = True
    for item in items:
        if isinstance(item, Pause):
            out.append(item)
            continue
        protected, table = _protect(item.text)
        segments = segmenter(protected, first)
        first = first and not segments
        out.extend(_restore(s, table) for s in segments)
    return out


def plain_text(text: str) -> str:
    """`text` with pronunciation links reduced to their words (for display and checks)."""
    return _LINK.sub(lambda m: m.group(1), text)


# -- internals ---------------------------------------------------------------------------


def _add_text(items: list[Item], chunk: str, *, unescape: bool, lexicon: Lexicon | None) -> None:
    pos = 0
    for m in _PAUSE.finditer(chunk):
        _add_speech(items, chunk[pos : m.start()], unescape=unescape, lexicon=lexicon)
        items.append(Pause(_pause_seconds(m.group(1), m.group(0))))
        pos = m.end()
    _add_speech(items, chunk[pos:], unescape=unescape, lexicon=lexicon)


def _add_speech(items: list[Item], chunk: str, *, unescape: bool, lexicon: Lexicon | None) -> None:
    if unescape:
        chunk = html.unescape(chunk)
    if not chunk.strip():
        return
    parts: list[str] = []
    pos = 0
    for m in _LINK.finditer(chunk):
        parts.append(_apply_lexicon(chunk[pos : m.start()], lexicon))
        word, phonemes = m.group(1), m.group(2)
        if not word.strip():
            raise TextError(f"Pronunciation {m.group(0)!r} has no word before the phonemes.")
        check_phonemes(phonemes, where=f"Pronunciation of {word!r}")
        parts.append(m.group(0))
        pos = m.end()
    parts.append(_apply_lexicon(chunk[pos:], lexicon))
    items.append(Speech("".join(parts)))


def _apply_lexicon(text: str, lexicon: Lexicon | None) -> str:
    if not lexicon:
        return text

    def sub(m: re.Match[str]) -> str:
        phonemes = lexicon.lookup(m.group(0))
        return m.group(0) if phonemes is None else f"[{m.group(0)}](/{phonemes}/)"

    return _WORD.sub(sub, text)


def _pause_seconds(value: str, whole: str) -> float:
    m = _DURATION.match(value)
    if m is None:
        raise TextError(
            f"Bad pause {whole!r}: write a duration such as [pause:0.5s] or [pause:300ms]."
        )
    return _seconds(float(m.group(1)), (m.group(2) or "s").lower(), whole)


def _break_seconds(attrs: str) -> float:
    values = {k.lower(): a or b for k, a, b in _ATTR.findall(attrs)}
    if "time" in values:
        m = _DURATION.match(values["time"])
        if m is None or m.group(2) is None:
            raise TextError(
                f'Bad <break time="{values["time"]}">: write a duration such as "500ms" or "1s".'
            )
        return _seconds(float(m.group(1)), m.group(2).lower(), f"<break time={values['time']!r}>")
    strength = values.get("strength", "medium").strip().lower()
    if strength not in BREAK_STRENGTHS:
        raise TextError(
            f"Bad <break strength={strength!r}>: use one of {', '.join(BREAK_STRENGTHS)}."
        )
    return BREAK_STRENGTHS[strength]


def _seconds(value: float, unit: str, whole: str) -> float:
    seconds = value / 1000.0 if unit == "ms" else value
    if seconds > MAX_PAUSE_S:
        raise TextError(f"Pause {whole!r} is too long: at most {MAX_PAUSE_S:g} s.")
    return seconds


def _merge(items: list[Item]) -> list[Item]:
    out: list[Item] = []
    for item in items:
        prev = out[-1] if out else None
        if isinstance(item, Pause) and isinstance(prev, Pause):
            out[-1] = Pause(prev.seconds + item.seconds)
        elif isinstance(item, Speech) and isinstance(prev, Speech):
            out[-1] = Speech(f"{prev.text} {item.text}")
        else:
            out.append(item)
    return out


def _protect(text: str) -> tuple[str, list[str]]:
    table: list[str] = []

    def sub(m: re.Match[str]) -> str:
        table.append(m.group(0))
        return f"⟦{len(table) - 1}⟧"

    return _LINK.sub(sub, text), table


def _restore(segment: str, table: list[str]) -> str:
    return _PLACEHOLDER.sub(lambda m: table[int(m.group(1))], segment)
