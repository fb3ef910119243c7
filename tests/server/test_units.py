"""Pure pieces of the server: segment plans, encoders, the primer cache, stream reassembly."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct

import numpy as np
import pytest
import soundfile as sf

from kokoro_opt.runtime.segment import normalize_text
from kokoro_opt.server.cache import PrimerCache
from kokoro_opt.server.client import StreamIntegrityError, reassemble
from kokoro_opt.server.encoding import (
    UNKNOWN_SIZE,
    PCMEncoder,
    make_encoder,
    supported_formats,
    wav_bytes,
    wav_header,
)
from kokoro_opt.server.segments import plan_segments, primer_cut

THREE = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It's easy to tell the depth of a well."
)


# -- segments --------------------------------------------------------------------------------


def test_primer_is_a_short_phrase_not_ending_on_a_function_word() -> None:
    assert primer_cut("The birch canoe slid on the smooth planks.", 24) == (
        "The birch canoe slid",
        "on the smooth planks.",
    )
    assert primer_cut("Well, that went better than expected.", 24) == (
        "Well,",
        "that went better than expected.",
    )
    # a single long word is kept whole; trailing punctuation alone is not a segment
    assert primer_cut("Supercalifragilistic!", 8) == ("Supercalifragilistic!", "")


def test_plan_keeps_every_word_in_order() -> None:
    segments = plan_segments(THREE, first_chars=24, max_chars=300, growth=3.0)
    assert segments[0] == "The birch canoe slid"
    assert " ".join(segments).split() == normalize_text(THREE).split()
    assert all(len(s) <= 300 for s in segments)


def test_plan_grows_segments_and_never_splits_short_sentences() -> None:
    text = " ".join(f"This is sentence number {i} of the text." for i in range(30))
    segments = plan_segments(text, first_chars=24, max_chars=300, growth=3.0)
    emitted = len(segments[0])
    for seg in segments[1:]:
        assert len(seg) <= max(24, 3.0 * emitted) or seg.endswith(".")
        emitted += len(seg)
    assert all(s.endswith(".") for s in segments[1:])  # whole sentences after the primer
    assert len(segments[-1]) > len(segments[1])  # later segments are longer


def test_plan_cuts_only_overlong_clauses_between_words() -> None:
    long_clause = "word " * 200
    segments = plan_segments(long_clause, first_chars=24, max_chars=100, growth=3.0)
    assert all(len(s) <= 100 for s in segments)
    assert " ".join(segments).split() == long_clause.split()
    assert plan_segments("?!", first_chars=24) == []


# -- encoders --------------------------------------------------------------------------------


def test_wav_headers() -> None:
    streaming = wav_header(24000)
    assert len(streaming) == 44
    assert struct.unpack("<I", streaming[4:8])[0] == UNKNOWN_SIZE
    assert struct.unpack("<I", streaming[40:44])[0] == UNKNOWN_SIZE
    samples = np.sin(np.linspace(0, 100, 2400)).astype(np.float32) * 0.5
    data = wav_bytes(samples, 24000)
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000 and len(audio) == 2400
    np.testing.assert_allclose(audio, samples, atol=1 / 16000)


def test_pcm_encoder_streams_header_then_samples() -> None:
    enc = PCMEncoder(24000, wav=True)
    chunks = [np.full(100, 0.25, np.float32), np.full(50, -0.25, np.float32)]
    data = enc.header() + b"".join(enc.encode(c) for c in chunks) + enc.finish()
    pcm = np.frombuffer(data[44:], "<i2")
    assert len(pcm) == 150 and pcm[0] == round(0.25 * 32767) and pcm[-1] == -round(0.25 * 32767)
    assert PCMEncoder(24000, wav=False).header() == b""


@pytest.mark.parametrize("fmt", [f for f in ("mp3", "opus", "flac") if f in supported_formats()])
def test_compressed_encoders_stream_bytes_as_they_go(fmt: str) -> None:
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(24000) / 24000)).astype(np.float32)
    streaming = make_encoder(fmt, 24000, streaming=True)
    pieces = [streaming.header(), streaming.encode(tone), streaming.encode(tone)]
    pieces.append(streaming.finish())
    assert sum(len(p) for p in pieces[:3]) > 0  # bytes before the end: a real stream
    whole = make_encoder(fmt, 24000, streaming=False)
    whole.encode(np.concatenate([tone, tone]))
    data = whole.finish()
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000 and abs(len(audio) - 48000) < 2400


def test_unsupported_format_is_refused() -> None:
    assert {"wav", "pcm"} <= set(supported_formats())
    with pytest.raises(ValueError, match="unsupported format"):
        make_encoder("aac", 24000, streaming=True)


# -- cache -----------------------------------------------------------------------------------


def test_primer_cache_is_an_lru_with_counts() -> None:
    cache = PrimerCache(2)
    keys = [PrimerCache.key(t, voice="v", speed=1.0, lang="en-us", model="m") for t in "abc"]
    for i, key in enumerate(keys):
        cache.put(key, np.full(10, i, np.float32))
    assert cache.get(keys[0]) is None  # evicted
    hit = cache.get(keys[2])
    assert hit is not None and hit[0] == 2 and not hit.flags.writeable
    stats = cache.stats()
    assert (stats["entries"], stats["hits"], stats["misses"], stats["hit_rate"]) == (2, 1, 1, 0.5)
    assert PrimerCache.key("a", voice="v", speed=1.1, lang="en-us", model="m") != keys[0]
    disabled = PrimerCache(0)
    disabled.put(keys[0], np.zeros(3, np.float32))
    assert disabled.get(keys[0]) is None


# -- reassembly ------------------------------------------------------------------------------


def _records(parts: list[np.ndarray], *, sse: bool = False) -> list[str]:
    lines, offset, digest = [], 0, hashlib.sha256()
    for seq, part in enumerate(parts):
        data = part.astype("<i2").tobytes()
        digest.update(data)
        record = {
            "type": "speech.audio.delta" if sse else "chunk",
            "seq": seq,
            "sample_offset": offset,
            "num_samples": len(part),
            "audio" if sse else "samples": base64.b64encode(data).decode(),
        }
        lines.append(record)
        offset += len(part)
    done = {
        "type": "speech.audio.done" if sse else "done",
        "chunks": len(parts),
        "total_samples": offset,
        "sample_rate": 24000,
        "sha256": digest.hexdigest(),
    }
    lines.append(done)
    return [f"data: {json.dumps(r)}" if sse else json.dumps(r) for r in lines]


PARTS = [np.arange(5, dtype=np.int16), np.arange(7, dtype=np.int16) * -3, np.ones(2, np.int16)]


@pytest.mark.parametrize("sse", [False, True])
def test_reassemble_verifies_a_good_stream(sse: bool) -> None:
    result = reassemble(_records(PARTS, sse=sse))
    np.testing.assert_array_equal(result.samples, np.concatenate(PARTS))
    assert result.chunks == 3 and not result.reordered and result.sample_rate == 24000


def test_reassemble_rejects_damaged_streams() -> None:
    lines = _records(PARTS)
    with pytest.raises(StreamIntegrityError, match="without its final record"):
        reassemble(lines[:-1])
    with pytest.raises(StreamIntegrityError, match="missing or repeated"):
        reassemble([lines[0], lines[2], lines[3]])
    with pytest.raises(StreamIntegrityError, match="missing or repeated"):
        reassemble([lines[0], lines[0], lines[1], lines[2], lines[3]])
    bad_offset = json.loads(lines[1])
    bad_offset["sample_offset"] += 1
    with pytest.raises(StreamIntegrityError, match="not contiguous"):
        reassemble([lines[0], json.dumps(bad_offset), lines[2], lines[3]])
    bad_done = json.loads(lines[3])
    bad_done["sha256"] = "0" * 64
    with pytest.raises(StreamIntegrityError, match="sha256"):
        reassemble([*lines[:3], json.dumps(bad_done)])
    error = json.dumps({"type": "error", "error": {"message": "No audio within 1 s"}})
    with pytest.raises(StreamIntegrityError, match="No audio within 1 s"):
        reassemble([lines[0], error])
    with pytest.raises(StreamIntegrityError, match="not JSON"):
        reassemble(["RIFF...."])


# -- joins -----------------------------------------------------------------------------------


def test_pause_after_follows_the_text() -> None:
    from kokoro_opt.server.joins import pause_after

    assert pause_after("The birch canoe slid.", last=False) == 0.25
    assert pause_after('He said "stop!"', last=False) == 0.25
    assert pause_after("Well,", last=False) == 0.15
    assert pause_after("The birch", last=False) == 0.06
    assert pause_after("The birch", last=True) == 0.25


def test_trim_to_pauses_keeps_the_speech_and_natural_pauses() -> None:
    from kokoro_opt.server.joins import trim_to_pauses

    rate = 24000
    speech = (0.3 * np.sin(2 * np.pi * 200 * np.arange(rate) / rate)).astype(np.float32)
    audio = np.concatenate([np.zeros(int(0.42 * rate)), speech, np.zeros(int(0.5 * rate))])
    out = trim_to_pauses(audio.astype(np.float32), rate, lead_s=0.05, trail_s=0.25)
    assert abs(len(out) / rate - 1.30) < 0.02  # 50 ms + 1 s of speech + 250 ms
    assert np.abs(out[:1000]).max() == 0 and np.abs(out[-5000:]).max() == 0
    loud = np.nonzero(np.abs(out) > 0.01)[0]
    assert abs((loud[-1] - loud[0]) / rate - 1.0) < 0.01  # no speech was cut
    silent = np.zeros(rate, np.float32)
    assert len(trim_to_pauses(silent, rate, lead_s=0.05, trail_s=0.25)) == rate
    short = audio[: int(0.45 * rate)].astype(np.float32)  # less silence than asked: unchanged
    assert len(trim_to_pauses(short, rate, lead_s=0.5, trail_s=0.5)) == len(short)
