"""Text normalization for word error rates: the same function runs on the reference and on the
ASR transcript, so "Dr. Smith paid $12.50 on July 4th" and "doctor smith paid twelve dollars
fifty cents on july fourth" score as identical.

Steps, in order (`normalize_for_wer`):
1. Unicode NFKC; curly quotes to straight ones.
2. Abbreviations expanded (Dr. -> doctor, St. -> saint before a name, else street, etc. ->
   et cetera, e.g. -> for example, vs. -> versus, ...); dotted initialisms joined (U.S. -> us,
   Ph.D. -> phd, a.m. -> am), so Whisper's "US" and "PhD" match.
3. Numbers written as words with num2words: money ($12.50 -> twelve dollars fifty cents,
   $3.4 billion -> three point four billion dollars, also £ and €), percentages, times
   (6:45 -> six forty five, 7:05 -> seven oh five), ordinals (21st -> twenty first), decades
   (1990s -> nineteen nineties), years 1100-2099 (1986 -> nineteen eighty six), grouped numbers
   (2,500,000), decimals (0.05 -> zero point zero five), numbers with a leading zero digit by
   digit (0142 -> zero one four two), other integers as cardinals without "and".
4. Lower case, accents removed (café -> cafe), apostrophes dropped (don't -> dont), every other
   non-alphanumeric character a space, spaces collapsed; a few spelling variants unified
   (ok -> okay, mr -> mister; "o'clock" dropped, since 10:00 reads as "ten").
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable

_QUOTES = str.maketrans({"‘": "'", "’": "'", "ʼ": "'", "“": '"', "”": '"', "—": " ", "–": " "})

# Abbreviations with a period, matched case-sensitively at a word start.
_ABBREVIATIONS: dict[str, str] = {
    "Dr.": "doctor",
    "Mr.": "mister",
    "Mrs.": "missus",
    "Ms.": "miz",
    "Prof.": "professor",
    "Sgt.": "sergeant",
    "Lt.": "lieutenant",
    "Gen.": "general",
    "Capt.": "captain",
    "Col.": "colonel",
    "Rev.": "reverend",
    "Jr.": "junior",
    "Sr.": "senior",
    "Mt.": "mount",
    "Ave.": "avenue",
    "Blvd.": "boulevard",
    "Apt.": "apartment",
    "Dept.": "department",
    "Approx.": "approximately",
    "approx.": "approximately",
    "etc.": "et cetera",
    "vs.": "versus",
    "e.g.": "for example",
    "i.e.": "that is",
}
_ABBREVIATION = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(k) for k in sorted(_ABBREVIATIONS, key=len)[::-1]) + r")"
)
_SAINT = re.compile(r"(?<![\w.])St\.(?=\s+[A-Z])")
_STREET = re.compile(r"(?<![\w.])St\.")
_INITIALISM = re.compile(r"(?<![\w.])((?:[A-Za-z]\.){2,})")
_PHD = re.compile(r"(?<![\w.])Ph\.\s?D\.?", re.IGNORECASE)

_SCALES = "thousand|million|billion|trillion"
_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
}
_MONEY = re.compile(
    r"([$£€])\s?(" + _NUMBER + r")(?:\s?(" + _SCALES + r"|[kKmM]\b|bn\b))?",
)
_PERCENT = re.compile(r"(-?(?:" + _NUMBER + r"))\s?%")
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE = re.compile(r"(?<!\d)(\d{3}0)'?s\b")
_SHORT_DECADE = re.compile(r"(?<![\w'])'?([1-9]0)'?s\b")
_GROUPED = re.compile(r"(?<![\d,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])")
_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)")
_INTEGER = re.compile(r"(?<!\d)\d+(?!\d)")
_NEGATIVE = re.compile(r"(?<![\w])-(?=\d)")
_UNITS = {
    "km": "kilometers",
    "kg": "kilograms",
    "cm": "centimeters",
    "mm": "millimeters",
    "mph": "miles per hour",
    "ft": "feet",
    "lbs": "pounds",
    "kmh": "kilometers per hour",
}
_UNIT = re.compile(r"(?<=\d)\s?(" + "|".join(_UNITS) + r")\b")
_VARIANTS = {
    "ok": "okay",
    "mr": "mister",
    "mrs": "missus",
    "ms": "miz",
    "dr": "doctor",
    "etcetera": "et cetera",
    "percents": "percent",
    "oclock": "",
}
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalize_for_wer(text: str) -> str:
    """Lower-case words separated by single spaces, numbers and abbreviations spelled out."""
    text = unicodedata.normalize("NFKC", str(text)).translate(_QUOTES)
    text = _expand_abbreviations(text)
    text = _expand_numbers(text)
    text = "".join(
        c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)
    ).lower()
    text = text.replace("'", "").replace("&", " and ")
    words = _NON_WORD.sub(" ", text).split()
    return " ".join(v for v in (_VARIANTS.get(w, w) for w in words) if v)


def _expand_abbreviations(text: str) -> str:
    text = _PHD.sub("PhD", text)
    text = _SAINT.sub("saint", text)
    text = _STREET.sub("street", text)
    text = _ABBREVIATION.sub(lambda m: _ABBREVIATIONS[m.group(1)], text)
    return _INITIALISM.sub(lambda m: m.group(1).replace(".", ""), text)


def _expand_numbers(text: str) -> str:
    text = _MONEY.sub(_money, text)
    text = _PERCENT.sub(lambda m: f" {_number(m.group(1))} percent ", text)
    text = _TIME.sub(_time, text)
    text = _ORDINAL.sub(lambda m: f" {_words(int(m.group(1)), 'ordinal')} ", text)
    text = _DECADE.sub(_decade, text)
    text = _SHORT_DECADE.sub(_decade, text)
    text = _UNIT.sub(lambda m: f" {_UNITS[m.group(1)]}", text)
    text = _NEGATIVE.sub(" minus ", text)
    text = _GROUPED.sub(lambda m: f" {_number(m.group(0))} ", text)
    text = _DECIMAL.sub(lambda m: f" {_number(m.group(0))} ", text)
    return _INTEGER.sub(lambda m: f" {_integer(m.group(0))} ", text)


def _money(match: re.Match[str]) -> str:
    symbol, amount, scale = match.group(1), match.group(2), match.group(3)
    one, many, sub_one, sub_many = _CURRENCIES[symbol]
    if scale:
        scale = {"k": "thousand", "m": "million", "bn": "billion"}.get(scale.lower(), scale)
        return f" {_number(amount)} {scale.lower()} {many} "
    whole, _, frac = amount.replace(",", "").partition(".")
    units = int(whole)
    words = f"{_words(units)} {one if units == 1 else many}"
    if frac and len(frac) <= 2 and int(frac):
        cents = int(frac.ljust(2, "0"))
        cents_words = f"{_words(cents)} {sub_one if cents == 1 else sub_many}"
        words = f"{words} {cents_words}" if units else cents_words  # $0.99: ninety nine cents
    elif frac and int(frac):  # $1.234: read as a decimal amount
        words = f"{_number(amount)} {many}"
    return f" {words} "


def _time(match: re.Match[str]) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours > 24 or minutes > 59:
        return match.group(0).replace(":", " ")
    if minutes == 0:
        return f" {_words(hours)} "
    if minutes < 10:
        return f" {_words(hours)} oh {_words(minutes)} "
    return f" {_words(hours)} {_words(minutes)} "


def _decade(match: re.Match[str]) -> str:
    value = int(match.group(1))
    words = _words(value, "year") if 1100 <= value <= 2099 else _words(value)
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f" {head} {last} " if head else f" {last} "


def _number(token: str) -> str:
    """A decimal or comma-grouped number: cardinal words, digits after the point one by one."""
    token = token.replace(",", "")
    negative = token.startswith("-")
    whole, _, frac = token.lstrip("-").partition(".")
    words = _words(int(whole))
    if frac:
        words += " point " + " ".join(_words(int(d)) for d in frac)
    return ("minus " if negative else "") + words


def _integer(token: str) -> str:
    if len(token) > 1 and token.startswith("0"):
        return " ".join(_words(int(d)) for d in token)
    value = int(token)
    if len(token) == 4 and 1100 <= value <= 2099:
        return _words(value, "year")
    return _words(value)


@functools.lru_cache(maxsize=4096)
def _words(value: int, to: str = "cardinal") -> str:
    """num2words in American style: no "and", no commas, hyphens as spaces."""
    from num2words import num2words

    convert: Callable[..., str] = num2words
    words = convert(value, to=to, lang="en")
    words = words.replace(",", " ").replace("-", " ")
    return " ".join(w for w in words.split() if w != "and")
