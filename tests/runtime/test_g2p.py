"""Language codes and offline G2P (misaki English with espeak-ng fallback; espeak-ng alone)."""

from __future__ import annotations

import inspect
import re
import threading

import pytest

from kokoro_opt.errors import LanguageError
from kokoro_opt.runtime import g2p as g2p_mod
from kokoro_opt.runtime.g2p import LANGUAGES, MisakiEnglishG2P, get_g2p, normalize_lang
from kokoro_opt.runtime.tokenizer import vocab


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("en", "en-us"),
        ("EN", "en-us"),
        ("en-US", "en-us"),
        ("en_us", "en-us"),
        ("a", "en-us"),
        (" en-us ", "en-us"),
        ("en-gb", "en-gb"),
        ("en_GB", "en-gb"),
        ("b", "en-gb"),
        ("ja", "ja"),
        ("j", "ja"),
        ("fr", "fr-fr"),
        ("fr-fr", "fr-fr"),
        ("es", "es"),
        ("hi", "hi"),
        ("it", "it"),
        ("pt-br", "pt-br"),
        ("pt", "pt-br"),
        ("zh", "zh"),
        ("cmn", "zh"),
    ],
)
def test_normalize_lang(code: str, expected: str) -> None:
    assert normalize_lang(code) == expected


@pytest.mark.parametrize("code", ["xx", "", "english-ish", "de"])
def test_unknown_language_lists_supported(code: str) -> None:
    with pytest.raises(LanguageError) as info:
        normalize_lang(code)
    message = str(info.value)
    assert repr(code) in message
    assert all(lang in message for lang in LANGUAGES)
    assert "\n" not in message


def test_offline_misaki_init_sets_what_misaki_sets() -> None:
    """Our offline subclass replaces misaki.en.G2P.__init__; it must set the same attributes."""
    import misaki.en

    source = inspect.getsource(misaki.en.G2P.__init__)
    assert set(re.findall(r"self\.(\w+)\s*=", source)) == g2p_mod.MISAKI_G2P_ATTRIBUTES
    english = get_g2p("en-us")
    assert isinstance(english, MisakiEnglishG2P)
    inner = english._g2p
    assert all(hasattr(inner, name) for name in g2p_mod.MISAKI_G2P_ATTRIBUTES)
    assert isinstance(inner, misaki.en.G2P)
    assert inner.nlp.pipe_names == ["tok2vec", "tagger"]


def test_english_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    import spacy.cli

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("spaCy tried to download a model")

    monkeypatch.setattr(spacy.cli, "download", no_download)
    fresh = MisakiEnglishG2P(british=True)  # built outside the cache on purpose
    assert fresh.phonemize("Hello.").endswith(".")


def test_english_phonemes() -> None:
    english = get_g2p("en")
    assert english.lang == "en-us"
    assert english.phonemize("The birch canoe slid on the smooth planks.") == (
        "ðə bˈɜɹʧ kənˈu slˈɪd ˌɔn ðə smˈuð plˈæŋks."
    )
    assert get_g2p("en-gb").phonemize("tomato") != english.phonemize("tomato")


def test_english_out_of_vocabulary_uses_espeak() -> None:
    english = get_g2p("en-us")
    phonemes = english.phonemize("Xzyqwe went to Brbnt.")
    assert "❓" not in phonemes
    # Each made-up word gets phonemes from espeak-ng, not silence.
    assert len(phonemes.split()) == 4 and all(len(w) > 1 for w in phonemes.split())


def test_espeak_fallback_word_count_warning_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    # "6:45" reaches espeak as a piece phonemizer counts as a different number of words; the
    # phonemes are right and the warning is noise on every calibration run.
    caplog.set_level("WARNING")
    phonemes = get_g2p("en-us").phonemize("Our flight leaves from gate 23 at 6:45 in the evening.")
    assert phonemes
    assert not [r for r in caplog.records if "words count mismatch" in r.getMessage()]


@pytest.mark.parametrize(
    ("lang", "text"),
    [
        ("es", "Hola, ¿cómo estás?"),
        ("fr", "Bonjour, je m'appelle Marie."),
        ("it", "Ciao mondo"),
        ("pt-br", "Olá mundo"),
        ("hi", "नमस्ते दुनिया"),
        ("ja", "こんにちは、せかい。"),
        ("zh", "你好，世界。"),
    ],
)
def test_espeak_languages_give_vocabulary_symbols(lang: str, text: str) -> None:
    phonemes = get_g2p(lang).phonemize(text)
    letters = [c for c in phonemes if c not in " ,.;:!?¿¡—…"]
    assert len(letters) >= 4
    assert set(phonemes) <= set(vocab())


def test_get_g2p_is_cached_per_language_and_thread_safe() -> None:
    assert get_g2p("en") is get_g2p("en-US") is get_g2p("a")
    assert get_g2p("fr") is get_g2p("fr-fr")
    results: list[tuple[object, str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            g = get_g2p("it")
            for _ in range(20):
                results.append((g, g.phonemize("Buongiorno a tutti, come state?")))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(g) for g, _ in results}) == 1
    assert len({p for _, p in results}) == 1


def test_backend_failures_become_one_line_text_errors() -> None:
    from kokoro_opt.errors import TextError

    with pytest.raises(TextError) as info, g2p_mod._g2p_errors("en-us", "some odd text"):
        raise ValueError("bad token\nsecond line")
    message = str(info.value)
    assert message.startswith("The en-us G2P failed on 'some odd text': bad token.")
    assert "\n" not in message


def test_japanese_kanji_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    japanese = g2p_mod.EspeakG2P("ja")  # fresh, so the warning has not fired yet

    def ours() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "kokoro_opt.runtime.g2p"]

    with caplog.at_level("WARNING", logger="kokoro_opt.runtime.g2p"):
        japanese.phonemize("こんにちは")
        assert not ours()
        japanese.phonemize("今日は")
        japanese.phonemize("明日")
    assert len(ours()) == 1 and "kana" in ours()[0]
