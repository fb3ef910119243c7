"""Speech markup: pauses, SSML breaks, pronunciations and lexicons, parsed before segmenting."""

from __future__ import annotations

from pathlib import Path

import pytest

from kokoro_opt.errors import TextError, UserInputError
from kokoro_opt.runtime.markup import (
    BREAK_STRENGTHS,
    Lexicon,
    Pause,
    Speech,
    check_phonemes,
    parse_markup,
    plain_text,
    plan,
)
from kokoro_opt.runtime.segment import segment_text


@pytest.mark.parametrize(
    ("markup", "seconds"),
    [
        ("[pause:0.5s]", 0.5),
        ("[pause:300ms]", 0.3),
        ("[PAUSE: 2 s]", 2.0),
        ("[pause:1.25]", 1.25),
        ('<break time="500ms"/>', 0.5),
        ("<break time='2s' />", 2.0),
        ('<break strength="strong"/>', BREAK_STRENGTHS["strong"]),
        ("<break/>", BREAK_STRENGTHS["medium"]),
        ('<break time="250ms" strength="x-strong"/>', 0.25),
    ],
)
def test_pauses(markup: str, seconds: float) -> None:
    items = parse_markup(f"Hello there. {markup} General Kenobi.")
    assert items == [Speech("Hello there. "), Pause(seconds), Speech(" General Kenobi.")]


def test_adjacent_pauses_add_up_and_speak_is_accepted() -> None:
    items = parse_markup("<speak>One [pause:200ms]<break time='300ms'/> two &amp; three</speak>")
    assert items == [Speech("One "), Pause(0.5), Speech(" two & three")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Hi <emphasis>there</emphasis>.", "Unsupported SSML tag <emphasis>"),
        ('Hi <prosody rate="slow">there</prosody>.', "Unsupported SSML tag <prosody>"),
        ("Hi [pause:soon] there.", "Bad pause '[pause:soon]'"),
        ("Hi [pause:-1s] there.", "Bad pause"),
        ('Hi <break time="fast"/> there.', "Bad <break time="),
        ('Hi <break time="500"/> there.', "Bad <break time="),
        ('Hi <break strength="huge"/> there.', "Bad <break strength='huge'>"),
        ("Hi [pause:31s] there.", "too long"),
        ("Say [Kokoro](/kˈO#kəɹO/).", "'#' (U+0023) is not a Kokoro phoneme symbol"),
        ("Say [Kokoro](//).", "phonemes are empty"),
    ],
)
def test_bad_markup_is_a_one_line_error(text: str, message: str) -> None:
    with pytest.raises(TextError, match=None) as err:
        parse_markup(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_lenient_ssml_strips_unknown_tags() -> None:
    items = parse_markup(
        'Hi <emphasis level="strong">there</emphasis> <break time="1s"/> you.', ssml="lenient"
    )
    assert items == [Speech("Hi there "), Pause(1.0), Speech(" you.")]
    with pytest.raises(UserInputError, match="Unknown SSML mode 'loose'"):
        parse_markup("Hi.", ssml="loose")


def test_text_without_markup_is_one_speech_item() -> None:
    text = "Prices rose 3 < 4 percent (a lot) [sic] in 2024."
    assert parse_markup(text) == [Speech(text)]


def test_inline_pronunciations_are_kept_and_checked() -> None:
    items = parse_markup("I love [Kokoro](/kˈOkəɹO/) and [New York](/nu jˈɔɹk/).")
    assert items == [Speech("I love [Kokoro](/kˈOkəɹO/) and [New York](/nu jˈɔɹk/).")]
    assert plain_text(items[0].text) == "I love Kokoro and New York."
    assert check_phonemes("kˈOkəɹO") == "kˈOkəɹO"


def test_lexicon_case_rules(tmp_path: Path) -> None:
    path = tmp_path / "words.tsv"
    path.write_text(
        "# word<TAB>phonemes\n\nkokoro\tkˈOkəɹO\nUS\tjˌuˈɛs\nus\tˈʌs\nNew-York\tnujˈɔɹk\n",
        encoding="utf-8",
    )
    lexicon = Lexicon.load(path)
    assert len(lexicon) == 4
    assert lexicon.lookup("Kokoro") == lexicon.lookup("KOKORO") == "kˈOkəɹO"  # lower: any case
    assert lexicon.lookup("US") == "jˌuˈɛs" and lexicon.lookup("Us") == "ˈʌs"  # exact wins
    assert lexicon.lookup("new-york") is None  # a capitalized key matches only itself
    (item,) = parse_markup("Kokoro met US, us and [kokoro](/kokoro/).", lexicon=lexicon)
    assert item == Speech(
        "[Kokoro](/kˈOkəɹO/) met [US](/jˌuˈɛs/), [us](/ˈʌs/) and [kokoro](/kokoro/)."
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kokoro kˈOkəɹO\n", "words.tsv:1: expected word<TAB>phonemes"),
        ("ok\tfine\nkokoro\tkˈO%kəɹO\n", "words.tsv:2, entry 1 (kokoro): '%'"),
        ("two words\tabc\n", "is not a single word"),
        ("kokoro\t\n", "phonemes are empty"),
    ],
)
def test_bad_lexicon_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "words.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserInputError) as err:
        Lexicon.load(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserInputError, match="does not exist"):
        Lexicon.load(tmp_path / "missing.tsv")


def test_plan_keeps_pronunciations_whole_and_splits_at_pauses() -> None:
    text = (
        "Welcome to [New York City](/nu jˈɔɹk sˈɪTi/), the big apple, my friend. "
        "[pause:1s] Goodbye, [Kokoro](/kˈOkəɹO/)."
    )
    steps = plan(
        parse_markup(text),
        lambda chunk, first: segment_text(chunk, first_segment_fast=first),
    )
    pause = steps.index(Pause(1.0))
    before, after = steps[:pause], steps[pause + 1 :]
    assert len(before) >= 2  # the first sentence was cut for a fast start ...
    assert "[New York City](/nu jˈɔɹk sˈɪTi/)" in " ".join(before)  # ... never inside the link
    assert " ".join(after) == "Goodbye, [Kokoro](/kˈOkəɹO/)."
