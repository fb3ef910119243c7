"""Audio encoders for responses: WAV/PCM by hand, MP3/Opus/FLAC through libsndfile (soundfile).

Every encoder turns float32 chunks into bytes as they come: `header()` first, `encode(samples)`
per chunk, `finish()` once at the end. Streaming WAV sends a 44-byte header whose RIFF and data
sizes are 0xFFFFFFFF (length unknown; players read to the end), then PCM16 little-endian.
Non-streaming WAV has the exact sizes (`wav_bytes`).

libsndfile writes MP3 and Ogg/Opus as it goes and seeks back only at the end to patch a few
header bytes (MP3's Xing frame, FLAC's STREAMINFO totals). A stream cannot take those patches
back, and every decoder accepts the unpatched form (unknown length); a whole file gets them.
"""

from __future__ import annotations

import functools
import struct
from typing import Protocol

import numpy as np

from kokoro_opt.runtime.audio import to_pcm16

# response_format -> (libsndfile format, subtype)
_SOUNDFILE_FORMATS: dict[str, tuple[str, str]] = {
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
    "flac": ("FLAC", "PCM_16"),
}
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
}
# Formats OpenAI lists that no well-kept encoder on PyPI gives us here.
UNSUPPORTED_KNOWN = ("aac",)
UNKNOWN_SIZE = 0xFFFFFFFF


@functools.cache
def supported_formats() -> tuple[str, ...]:
    """`wav`, `pcm`, and whichever of mp3/opus/flac this libsndfile can write."""
    formats = ["wav", "pcm"]
    try:
        import soundfile as sf

        available = sf.available_formats()
        for name, (fmt, subtype) in _SOUNDFILE_FORMATS.items():
            if fmt in available and subtype in sf.available_subtypes(fmt):
                formats.append(name)
    except (ImportError, OSError):  # no libsndfile: WAV and PCM still work
        pass
    return tuple(formats)


def wav_header(sample_rate: int, *, num_samples: int | None = None) -> bytes:
    """A 44-byte PCM16 mono WAV header; `num_samples=None` marks the length unknown."""
    if num_samples is None:
        riff_size = data_size = UNKNOWN_SIZE
    else:
        data_size = 2 * num_samples
        riff_size = 36 + data_size
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete WAV file (exact sizes) for float samples."""
    pcm = to_pcm16(samples)
    return wav_header(sample_rate, num_samples=len(pcm)) + pcm.tobytes()


class Encoder(Protocol):
    """Turns a stream of float32 chunks into the bytes of one response."""

    def header(self) -> bytes: ...

    def encode(self, samples: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


class PCMEncoder:
    """PCM16 little-endian, with a streaming WAV header (`wav=True`) or raw (`wav=False`)."""

    def __init__(self, sample_rate: int, *, wav: bool) -> None:
        self.sample_rate = sample_rate
        self.wav = wav

    def header(self) -> bytes:
        return wav_header(self.sample_rate) if self.wav else b""

    def encode(self, samples: np.ndarray) -> bytes:
        return to_pcm16(samples).tobytes()

    def finish(self) -> bytes:
        return b""


class _Sink:
    """A write-only file for libsndfile that hands out bytes as they are written.

    `take()` returns what was written since the last call. A write or seek behind what was
    already taken (libsndfile patching its header at close) is dropped in streaming mode; with
    `keep_all=True` nothing is taken early and the patches land (a complete file).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0]
        self._pos = 0
        self._end = 0
        self.dropped = 0

    def write(self, data: bytes) -> int:
        chunk = bytes(data)
        start = self._pos
        skip = max(0, self._base - start)
        if skip:
            self.dropped += min(skip, len(chunk))
        rel = start + skip - self._base
        piece = chunk[skip:]
        if piece:
            if rel > len(self._buf):
                self._buf.extend(b"\0" * (rel - len(self._buf)))
            self._buf[rel : rel + len(piece)] = piece
        self._pos = start + len(chunk)
        self._end = max(self._end, self._pos)
        return len(chunk)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:
            self._pos = self._end + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        return b""  # write-only: libsndfile never needs to read back what it wrote

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._base += len(self._buf)
        self._buf.clear()
        return out


class SoundFileEncoder:
    """MP3, Ogg/Opus or FLAC through libsndfile, emitting bytes as chunks are written."""

    def __init__(self, fmt: str, sample_rate: int, *, streaming: bool) -> None:
        import soundfile as sf

        file_format, subtype = _SOUNDFILE_FORMATS[fmt]
        self.streaming = streaming
        self._sink = _Sink()
        self._file = sf.SoundFile(
            self._sink, "w", samplerate=sample_rate, channels=1, format=file_format,
            subtype=subtype,
        )  # fmt: skip

    def header(self) -> bytes:
        return self._sink.take() if self.streaming else b""

    def encode(self, samples: np.ndarray) -> bytes:
        self._file.write(to_pcm16(samples))
        return self._sink.take() if self.streaming else b""

    def finish(self) -> bytes:
        self._file.close()
        return self._sink.take()


def make_encoder(fmt: str, sample_rate: int, *, streaming: bool) -> Encoder:
    """The encoder for a `response_format` (one of `supported_formats()`)."""
    if fmt in ("wav", "pcm"):
        return PCMEncoder(sample_rate, wav=fmt == "wav")
    if fmt in _SOUNDFILE_FORMATS and fmt in supported_formats():
        return SoundFileEncoder(fmt, sample_rate, streaming=streaming)
    raise ValueError(f"unsupported format {fmt!r}")
