"""Client helper for the sequence-tagged streams (`stream_format` `ndjson` or `sse`).

    result = stream_speech("http://127.0.0.1:8880", "Hello there.", voice="jf_alpha")
    audio = result.samples            # int16 PCM, verified

`reassemble(lines)` puts chunk records in `seq` order and checks that nothing is missing or
repeated: seq runs 0..n-1, each `sample_offset` equals the samples before it, each chunk's
decoded length equals its `num_samples`, and the final record's chunk count, total samples and
sha256 match what arrived. Any mismatch, an error record, or a stream without a final record
raises `StreamIntegrityError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kokoro_opt.errors import KokoroOptError


class StreamIntegrityError(KokoroOptError):
    """A sequence-tagged stream that is incomplete, out of order beyond repair, or failed."""


@dataclass
class StreamResult:
    """A verified stream: PCM16 samples, the final record, and what was checked."""

    samples: np.ndarray
    sample_rate: int
    chunks: int
    done: dict[str, Any]
    reordered: bool = False
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def float_samples(self) -> np.ndarray:
        return self.samples.astype(np.float32) / 32767.0

    @property
    def words(self) -> list[dict[str, Any]]:
        """The chunks' word timestamps in order (seconds of the stream); empty without them."""
        chunks = [r for r in self.records if r.get("type") in ("chunk", "speech.audio.delta")]
        chunks.sort(key=lambda r: int(r["seq"]))
        return [w for r in chunks for w in r.get("words", [])]


def parse_records(lines: Iterable[str | bytes]) -> list[dict[str, Any]]:
    """JSON records from ndjson lines or SSE lines (`data: {...}`); blank lines, SSE comments
    and `event:`/`id:` fields are skipped."""
    records: list[dict[str, Any]] = []
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        line = line.strip()
        if not line or line.startswith(":") or line.startswith(("event:", "id:", "retry:")):
            continue
        if line.startswith("data:"):
            line = line[5:].strip()
            if line == "[DONE]":
                continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise StreamIntegrityError(
                f"Stream line is not JSON: {line[:60]!r}. Is stream_format ndjson or sse?"
            ) from None
        if not isinstance(record, dict):
            raise StreamIntegrityError(f"Stream record is not an object: {line[:60]!r}.")
        records.append(record)
    return records


def reassemble(lines: Iterable[str | bytes]) -> StreamResult:
    """Verified audio from the lines of an ndjson or SSE speech stream (see module docstring)."""
    records = parse_records(lines)
    chunks: list[dict[str, Any]] = []
    done: dict[str, Any] | None = None
    for record in records:
        kind = record.get("type")
        if kind == "error":
            message = (record.get("error") or {}).get("message", "unknown error")
            raise StreamIntegrityError(f"The server ended the stream with an error: {message}")
        if kind in ("chunk", "speech.audio.delta"):
            if done is not None:
                raise StreamIntegrityError("A chunk arrived after the final record.")
            chunks.append(record)
        elif kind in ("done", "speech.audio.done"):
            done = record
    if done is None:
        raise StreamIntegrityError(
            f"The stream ended without its final record after {len(chunks)} chunk(s): it was cut."
        )
    seqs = [int(c["seq"]) for c in chunks]
    reordered = seqs != sorted(seqs)
    chunks.sort(key=lambda c: int(c["seq"]))
    expected = list(range(len(chunks)))
    if [int(c["seq"]) for c in chunks] != expected:
        raise StreamIntegrityError(
            f"Chunk sequence numbers {sorted(seqs)[:10]} are not 0..{len(chunks) - 1}: chunks "
            "are missing or repeated."
        )
    parts: list[np.ndarray] = []
    offset = 0
    digest = hashlib.sha256()
    rate = int(done.get("sample_rate") or (chunks[0].get("sample_rate") if chunks else 24000))
    for chunk in chunks:
        payload = chunk.get("samples", chunk.get("audio"))
        if not isinstance(payload, str):
            raise StreamIntegrityError(f"Chunk {chunk['seq']} carries no audio.")
        data = base64.b64decode(payload)
        if len(data) % 2:
            raise StreamIntegrityError(f"Chunk {chunk['seq']} has an odd number of PCM16 bytes.")
        pcm = np.frombuffer(data, dtype="<i2")
        if int(chunk["sample_offset"]) != offset:
            raise StreamIntegrityError(
                f"Chunk {chunk['seq']} starts at sample {chunk['sample_offset']}, expected "
                f"{offset}: the offsets are not contiguous."
            )
        if int(chunk.get("num_samples", len(pcm))) != len(pcm):
            raise StreamIntegrityError(
                f"Chunk {chunk['seq']} says {chunk['num_samples']} samples but carries {len(pcm)}."
            )
        digest.update(data)
        parts.append(pcm)
        offset += len(pcm)
    if int(done.get("chunks", len(chunks))) != len(chunks):
        raise StreamIntegrityError(
            f"The final record counts {done['chunks']} chunks, {len(chunks)} arrived."
        )
    if int(done.get("total_samples", offset)) != offset:
        raise StreamIntegrityError(
            f"The final record counts {done['total_samples']} samples, {offset} arrived."
        )
    if "sha256" in done and done["sha256"] != digest.hexdigest():
        raise StreamIntegrityError("The audio's sha256 does not match the final record.")
    samples = np.concatenate(parts) if parts else np.zeros(0, np.int16)
    return StreamResult(samples.astype(np.int16), rate, len(chunks), done, reordered, records)


def stream_speech(
    base_url: str,
    text: str,
    *,
    voice: str,
    model: str = "kokoro",
    speed: float = 1.0,
    stream_format: str = "ndjson",
    lang: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 120.0,
) -> StreamResult:
    """POST a speech request with a sequence-tagged stream format and verify the result.

    Raises StreamIntegrityError for an HTTP error (with the server's message) or a bad stream.
    """
    import httpx

    body: dict[str, Any] = {
        "model": model,
        "input": text,
        "voice": voice,
        "speed": speed,
        "response_format": "pcm",
        "stream": True,
        "stream_format": stream_format,
    }
    if lang:
        body["lang"] = lang
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/audio/speech"
    with (
        httpx.Client(timeout=timeout_s) as client,
        client.stream("POST", url, json=body, headers=headers) as response,
    ):
        if response.status_code != 200:
            response.read()
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise StreamIntegrityError(f"HTTP {response.status_code}: {message}")
        return reassemble(response.iter_lines())
