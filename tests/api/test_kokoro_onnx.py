"""`kokoro_opt.Kokoro`, the kokoro-onnx drop-in: its surface, errors and audio, on the synthetic
model (the real model in the `real`-marked tests at the end)."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kokoro_opt import SAMPLE_RATE, Kokoro
from kokoro_opt.errors import KokoroOptError, TextError, VoiceError
from kokoro_opt.runtime.tokenizer import vocab
from kokoro_opt.runtime.voices import VoiceLibrary

LONG_TEXT = " ".join(
    [
        "The birch canoe slid on the smooth planks, and the sheet was glued to the dark blue "
        "background while the wind blew over the hills and far away.",
    ]
    * 4
)


@pytest.fixture(scope="module")
def kokoro(synthetic_fp32: Path) -> Kokoro:
    return Kokoro(str(synthetic_fp32), None, threads=1)


def test_the_import_is_lazy() -> None:
    code = (
        "import sys, kokoro_opt; assert 'onnxruntime' not in sys.modules; "
        "assert 'kokoro_opt.api' not in sys.modules; print(kokoro_opt.Kokoro.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Kokoro"


def test_same_signatures_as_kokoro_onnx_0_6() -> None:
    """Parameter names, order and defaults of kokoro-onnx 0.6.1 (kokoro_onnx/__init__.py)."""
    expected = {
        "create": "text voice speed=1.0 lang='en-us' is_phonemes=False trim=True "
        "sentence_pause=0.25 clause_pause=0.1 continuous=False",
        "create_timed": "text voice speed=1.0 lang='en-us' is_phonemes=False trim=True "
        "sentence_pause=0.25 clause_pause=0.1 continuous=False",
        "create_stream": "text voice speed=1.0 lang='en-us' is_phonemes=False trim=True "
        "sentence_pause=0.25 clause_pause=0.1",
        "from_session": "session voices_path=None espeak_config=None vocab_config=None",
        "get_voices": "",
        "get_voice_style": "name",
    }
    for name, params in expected.items():
        signature = inspect.signature(getattr(Kokoro, name))
        shown = [
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            for p in signature.parameters.values()
            if p.name not in ("self", "cls")
        ]
        assert " ".join(shown) == params, name
    init = list(inspect.signature(Kokoro.__init__).parameters)
    assert init[1:5] == ["model_path", "voices_path", "espeak_config", "vocab_config"]
    assert inspect.isasyncgenfunction(Kokoro.create_stream)


def test_create_gives_float32_audio_at_24khz(kokoro: Kokoro) -> None:
    samples, sample_rate = kokoro.create("Hello there. How are you?", voice="jf_alpha")
    assert sample_rate == SAMPLE_RATE == 24000
    assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) > 0
    assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0
    again, _ = kokoro.create("Hello there. How are you?", voice="jf_alpha")
    assert np.array_equal(samples, again)  # deterministic


def test_voices_and_styles(kokoro: Kokoro) -> None:
    assert kokoro.get_voices() == VoiceLibrary.default().names
    style = kokoro.get_voice_style("jf_alpha")
    assert style.shape == (510, 1, 256) and style.dtype == np.float32
    style *= 2.0  # a copy the caller may change in place
    assert np.array_equal(kokoro.get_voice_style("jf_alpha"), kokoro.voices["jf_alpha"])


def test_voice_array_is_used_and_left_writable(kokoro: Kokoro) -> None:
    text = "Blending voices by arrays."
    mix = kokoro.get_voice_style("jf_alpha") * 0.5 + kokoro.get_voice_style("jm_kumo") * 0.5
    by_array, _ = kokoro.create(text, voice=mix)
    by_name, _ = kokoro.create(text, voice="jf_alpha+jm_kumo")
    alpha, _ = kokoro.create(text, voice="jf_alpha")
    assert mix.flags.writeable
    assert len(by_array) == len(by_name) and np.abs(by_array - by_name).max() < 1e-4
    assert len(alpha) != len(by_array) or np.abs(alpha - by_array).max() > 1e-3


def test_phoneme_input(kokoro: Kokoro) -> None:
    samples, _ = kokoro.create("həlˈO wˈɜɹld.", voice="jf_alpha", is_phonemes=True)
    assert len(samples) > 0
    with pytest.raises(ValueError, match="no sounds of Kokoro's phoneme vocabulary"):
        kokoro.create("123 ###", voice="jf_alpha", is_phonemes=True)


def test_tokenizer_surface(kokoro: Kokoro) -> None:
    phonemes = kokoro.tokenizer.phonemize("Hello world.", lang="en-us")
    assert phonemes and all(c in kokoro.tokenizer.vocab or c == " " for c in phonemes)
    assert kokoro.tokenizer.tokenize(phonemes) == [vocab()[c] for c in phonemes if c in vocab()]
    with pytest.raises(ValueError, match="at most 510"):
        kokoro.tokenizer.tokenize("a" * 511)


def test_sentence_pause_tops_up_the_gap_where_segments_meet(kokoro: Kokoro) -> None:
    quick, _ = kokoro.create(LONG_TEXT, voice="jf_alpha", sentence_pause=0.0, clause_pause=0.0)
    paused, _ = kokoro.create(LONG_TEXT, voice="jf_alpha", sentence_pause=2.0, clause_pause=2.0)
    untrimmed, _ = kokoro.create(LONG_TEXT, voice="jf_alpha", trim=False, sentence_pause=2.0)
    joins = len(kokoro._synth.phonemize(LONG_TEXT, first_segment_fast=False)) - 1
    assert joins >= 1
    # Each join gets up to 2 s (less the silence already there, at most 0.35 s after trimming).
    extra = (len(paused) - len(quick)) / SAMPLE_RATE
    assert joins * 1.6 <= extra <= joins * 2.0 + 1e-6
    assert len(untrimmed) >= len(quick)  # no trimming and no pauses: the model's own audio


def test_create_stream_yields_chunks_as_made(kokoro: Kokoro) -> None:
    async def collect() -> list[tuple[np.ndarray, int]]:
        return [item async for item in kokoro.create_stream(LONG_TEXT, voice="jm_kumo")]

    chunks = asyncio.run(collect())
    assert len(chunks) >= 3 and all(rate == 24000 for _, rate in chunks)
    assert all(len(s) > 0 and s.dtype == np.float32 for s, _ in chunks)


def test_abandoned_stream_stops_and_the_model_stays_usable(kokoro: Kokoro) -> None:
    async def first_only() -> np.ndarray:
        stream = kokoro.create_stream(LONG_TEXT * 3, voice="jm_kumo")
        async for samples, _ in stream:
            await stream.aclose()
            return samples
        raise AssertionError("no chunk")

    assert len(asyncio.run(first_only())) > 0
    samples, _ = kokoro.create("Still here.", voice="jm_kumo")
    assert len(samples) > 0


def test_stream_errors_are_raised_to_the_consumer(kokoro: Kokoro) -> None:
    async def consume() -> None:
        async for _ in kokoro.create_stream("Hello.", voice="af_heart"):
            pass

    with pytest.raises(ValueError, match="Unknown voice 'af_heart'"):
        asyncio.run(consume())


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"voice": "af_sarah"}, "Unknown voice 'af_sarah'"),
        ({"voice": "jf_alpha", "speed": 2.5}, "Speed 2.5 is out of range"),
        ({"voice": "jf_alpha", "lang": "xx"}, "Unsupported language 'xx'"),
        ({"voice": "jf_alpha", "continuous": True}, "continuous=True"),
        ({"voice": np.zeros((3, 7), np.float32)}, "Bad voice"),
    ],
)
def test_bad_arguments_raise_value_error_with_one_line(
    kokoro: Kokoro, kwargs: dict[str, object], words: str
) -> None:
    with pytest.raises(ValueError, match=words) as info:
        kokoro.create("Hello.", **kwargs)
    assert isinstance(info.value, KokoroOptError) and "\n" not in str(info.value)


def test_empty_text_is_a_value_error(kokoro: Kokoro) -> None:
    with pytest.raises(ValueError, match="The text is empty") as info:
        kokoro.create("  ", voice="jf_alpha")
    assert isinstance(info.value, TextError)


def test_missing_files_are_file_not_found(synthetic_fp32: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No model 'kokoro-v1.0.onnx'"):
        Kokoro("kokoro-v1.0.onnx", None)
    with pytest.raises(FileNotFoundError, match="voices-v1.0.bin does not exist") as info:
        Kokoro(str(synthetic_fp32), str(tmp_path / "voices-v1.0.bin"))
    assert isinstance(info.value, VoiceError)


def test_a_cache_name_works_as_model_path(synthetic_fp32: Path, kokoro_home: Path) -> None:
    from kokoro_opt.store.pull import register_model

    register_model(str(synthetic_fp32), "kokoro-cpu-int8")  # as `model pull PATH --name`
    samples, _ = Kokoro("kokoro-cpu-int8", None).create("Hello.", voice="jf_alpha")
    assert len(samples) > 0


def test_voices_path_npz_and_from_session(synthetic_fp32: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    pack = tmp_path / "voices.npz"
    alpha = VoiceLibrary.default().get("jf_alpha")
    np.savez(pack, my_voice=alpha)
    session = ort.InferenceSession(str(synthetic_fp32), providers=["CPUExecutionProvider"])
    kokoro = Kokoro.from_session(session, str(pack))
    assert kokoro.sess is session and kokoro.get_voices() == ["my_voice"]
    mine, _ = kokoro.create("Hello.", voice="my_voice")
    reference, _ = Kokoro(str(synthetic_fp32), None).create("Hello.", voice="jf_alpha")
    assert np.array_equal(mine, reference)


def test_vocab_config(synthetic_fp32: Path, tmp_path: Path) -> None:
    same = tmp_path / "config.json"
    same.write_text(json.dumps({"vocab": vocab()}))
    Kokoro(str(synthetic_fp32), None, vocab_config=str(same))
    other = dict(vocab())
    other["X"] = 200
    with pytest.raises(ValueError, match="differs from Kokoro v1.0's vocabulary"):
        Kokoro(str(synthetic_fp32), None, vocab_config={"vocab": other})


@pytest.mark.real
def test_real_model_create_and_stream(real_models: dict[str, Path]) -> None:
    kokoro = Kokoro(str(real_models["kokoro-int8-export"]), None, threads=2)
    text = "Hello there. The birch canoe slid on the smooth planks."
    samples, rate = kokoro.create(text, voice="jf_gongitsune")
    seconds = len(samples) / rate
    assert 2.0 < seconds < 8.0
    raw, _ = kokoro.create(text, voice="jf_gongitsune", trim=False)
    assert len(raw) > len(samples)  # trimming removed the model's padding silence

    async def stream() -> list[np.ndarray]:
        return [s async for s, _ in kokoro.create_stream(text, voice="jf_gongitsune")]

    chunks = asyncio.run(stream())
    assert len(chunks) >= 2 and len(chunks[0]) < len(samples)
    assert abs(sum(len(c) for c in chunks) / rate - seconds) < 1.5

    timed, rate, words = kokoro.create_timed(text, voice="jf_gongitsune")
    assert kokoro.has_timings and np.array_equal(timed, samples)
    assert [w.word for w in words] == [
        "Hello", "there", "The", "birch", "canoe", "slid", "on", "the", "smooth", "planks",
    ]  # fmt: skip
    assert all(0 <= w.start < w.end <= seconds for w in words)
    assert words[2].start - words[1].end > 0.1  # the pause between the sentences


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Kokoro:
    """The drop-in on a tiny model with Kokoro's duration predictor (word timings work)."""
    from tests.runtime.timed_models import build_timed_model

    path = build_timed_model(tmp_path_factory.mktemp("timed") / "kokoro-timed.onnx")
    return Kokoro(str(path), None, threads=1)


def test_create_timed_gives_every_word_in_order(timed: Kokoro) -> None:
    assert timed.has_timings
    text = "Hello there, my friend. The second sentence comes after it."
    samples, rate, words = timed.create_timed(text, voice="jf_alpha")
    assert [w.word for w in words] == [
        "Hello", "there", "my", "friend", "The", "second", "sentence", "comes", "after", "it",
    ]  # fmt: skip
    assert all(0 <= w.start < w.end <= len(samples) / rate + 1e-6 for w in words)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:], strict=False))
    plain, _ = timed.create(text, voice="jf_alpha")
    assert np.array_equal(plain, samples)  # the same audio as create


def test_create_timed_moves_words_by_the_pauses_it_adds(timed: Kokoro) -> None:
    text = " ".join(["The first sentence is a rather long one, with words in it."] * 8)
    _, _, tight = timed.create_timed(text, voice="jf_alpha", sentence_pause=0, clause_pause=0)
    audio, rate, wide = timed.create_timed(text, voice="jf_alpha", sentence_pause=1.5)
    assert [w.word for w in tight] == [w.word for w in wide]
    moved = [b.start - a.start for a, b in zip(tight, wide, strict=True)]
    assert moved[0] == 0 and moved[-1] >= 1.0  # at least one join got most of 1.5 s
    assert wide[-1].end <= len(audio) / rate + 1e-6


def test_model_without_duration_predictor_has_no_timings(kokoro: Kokoro) -> None:
    assert kokoro.has_timings is False
    samples, _, words = kokoro.create_timed("Hello there.", voice="jf_alpha")
    assert len(samples) > 0 and words == []


def test_pause_markup_is_exact_silence(timed: Kokoro) -> None:
    samples, rate = timed.create("Hello there. [pause:0.5s] And now more.", voice="jf_alpha")
    quiet = np.abs(samples) < 1e-4
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    assert abs(longest / rate - 0.5) < 0.010  # the pause, not topped up by sentence_pause


def test_lexicon_changes_the_pronunciation(timed: Kokoro, tmp_path: Path) -> None:
    lexicon = tmp_path / "words.tsv"
    lexicon.write_text("kokoro\tkˈOkəɹOkˈOkəɹO\n", encoding="utf-8")
    custom = Kokoro(timed.model_path, None, threads=1, lexicon=lexicon)
    plain, _ = timed.create("Kokoro.", voice="jf_alpha")
    longer, _ = custom.create("Kokoro.", voice="jf_alpha")
    assert len(longer) > len(plain)
    with pytest.raises(ValueError, match="lexicon"):
        Kokoro(timed.model_path, None, lexicon=tmp_path / "missing.tsv")
