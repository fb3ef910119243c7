"""One speech request as a three-stage pipeline joined by bounded queues.

    stage 1  text     segment plan (short first segment), G2P, tokens  -> pieces queue
    stage 2  infer    a pooled session per piece (earliest deadline first) -> audio queue
    stage 3  encode   PCM16 / WAV / MP3 / Opus / FLAC, or ndjson / SSE records -> output queue

Each stage is an asyncio task; blocking work (G2P, model calls, compressed encoding) runs on the
engine's fixed worker threads. Queues hold `queue_size` items, so a slow client holds back the
stages behind it (backpressure) and a stream never synthesizes far ahead of what is sent, while
segment N+1 is being synthesized as segment N is sent. `aclose()` cancels all stages: a client
that disconnects stops its pending work at the next segment boundary (a model call in progress
finishes, then its session goes back to the pool).

The first segment is looked up in the primer cache before G2P; on a hit it skips the model.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kokoro_opt.runtime.audio import speech_span, to_pcm16
from kokoro_opt.runtime.g2p import get_g2p
from kokoro_opt.runtime.markup import Item, Pause, Speech, plan
from kokoro_opt.runtime.segment import FirstSegment
from kokoro_opt.runtime.synthesizer import PAUSE_EDGE_S, SAMPLE_RATE, Synthesizer, guard_audio
from kokoro_opt.runtime.timestamps import (
    PhonemeWord,
    WordTiming,
    clip,
    locate_pieces,
    word_timings,
    words_in,
)
from kokoro_opt.runtime.tokenizer import MAX_PHONEMES, split_phonemes, tokenize, vocab
from kokoro_opt.runtime.voices import style_for
from kokoro_opt.runtime.windowed import finish_chunk
from kokoro_opt.server.cache import CacheKey, PrimerCache
from kokoro_opt.server.encoding import make_encoder, wav_bytes
from kokoro_opt.server.engine import Engine
from kokoro_opt.server.errors import SynthesisTimeout
from kokoro_opt.server.joins import (
    LEAD_FIRST_S,
    LEAD_S,
    TRAIL_SENTENCE_S,
    pause_after,
    trim_bounds,
)
from kokoro_opt.server.segments import plan_segments
from kokoro_opt.server.telemetry import Telemetry

# A chunk counts as audible (for time to first audio) when a sample exceeds this (-40 dBFS).
AUDIBLE = 0.01
_END = object()


@functools.cache
def _silent_ids() -> frozenset[int]:
    table = vocab()
    return frozenset(table[c] for c in ';:,.!?—…"()“” ' if c in table)


@dataclass(frozen=True)
class PipelineConfig:
    """Per-request knobs (from ServerSettings)."""

    first_segment_chars: int = 12
    first_segment: FirstSegment = "clause"
    max_segment_chars: int = 300
    growth: float = 3.0
    queue_size: int = 2
    timeout_s: float = 30.0
    primer_ms: int = 0
    trim_silence: bool = True


@dataclass(frozen=True)
class SpeechJob:
    """A validated speech request."""

    text: str
    voice: str
    pack: np.ndarray = field(repr=False)
    speed: float
    lang: str
    response_format: str  # wav, pcm, mp3, opus, flac
    stream_format: str  # audio, ndjson, sse
    stream: bool  # False: one complete file at the end
    arrived: float  # time.perf_counter() when the request came in
    items: tuple[Item, ...] = ()  # the text's markup parsed (runtime.markup); () = plain text
    words: bool = False  # records carry word timestamps (the engine's model has durations)
    timestamps_json: bool = False  # one JSON body: base64 audio file plus words


@dataclass
class _Piece:
    index: int
    text: str
    tokens: list[int] | None
    cached: np.ndarray | None = None
    cache_key: CacheKey | None = None
    first: bool = False  # the first piece of the stream
    last: bool = False  # the last piece of the stream
    trail_s: float = TRAIL_SENTENCE_S  # silence to keep after it
    phonemes: str = ""
    words: list[PhonemeWord] = field(default_factory=list)
    cached_words: tuple[WordTiming, ...] = ()  # of a cache hit, in seconds of its samples
    silence_s: float | None = None  # a pause: this much silence, no model call
    pause_before: bool = False  # speech is cut tight on a side that meets a pause
    pause_after: bool = False


@dataclass
class _Audio:
    index: int
    text: str
    samples: np.ndarray
    cached: bool
    words: list[WordTiming] = field(default_factory=list)  # seconds of `samples`


@dataclass
class Output:
    """Bytes ready to send, with what they carry."""

    data: bytes
    samples: int = 0
    audible: bool = False


class SpeechPipeline:
    """The stages of one request; iterate `outputs()` once, always `aclose()`."""

    def __init__(
        self,
        engine: Engine,
        job: SpeechJob,
        config: PipelineConfig,
        *,
        cache: PrimerCache,
        telemetry: Telemetry,
    ) -> None:
        self.engine = engine
        self.job = job
        self.config = config
        self.cache = cache
        self.telemetry = telemetry
        self._pieces: asyncio.Queue[Any] = asyncio.Queue(config.queue_size)
        self._audio: asyncio.Queue[Any] = asyncio.Queue(config.queue_size)
        self._out: asyncio.Queue[Any] = asyncio.Queue(config.queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.first_audio_at: float | None = None  # perf_counter of the first audible chunk
        # Set once the first segment is synthesized. Stage 1 waits for it before the G2P of
        # later segments: on 2 cores a G2P thread running beside the first model call slowed
        # that call (and time to first audio) by about 2x.
        self._first_audio = asyncio.Event()
        self.audio_s = 0.0  # audio produced by stage 2
        self.compute_s = 0.0  # model time spent on this request
        self.samples_sent = 0
        self.chunks = 0
        self.segments = 0
        self.sha256 = hashlib.sha256()

    def depths(self) -> dict[str, int]:
        return {
            "text": self._pieces.qsize(),
            "audio": self._audio.qsize(),
            "out": self._out.qsize(),
        }

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._stage_text(), name="kokoro-stage-text"),
                asyncio.create_task(self._stage_infer(), name="kokoro-stage-infer"),
                asyncio.create_task(self._stage_encode(), name="kokoro-stage-encode"),
            ]

    async def outputs(self) -> AsyncIterator[Output]:
        """Outputs in order until the end; raises the first stage error, or SynthesisTimeout
        when nothing arrives within the timeout."""
        self.start()
        while True:
            # asyncio.wait, not wait_for: before Python 3.12 wait_for can swallow a cancellation
            # that arrives together with an item.
            getter = asyncio.ensure_future(self._out.get())
            try:
                done, _ = await asyncio.wait({getter}, timeout=self.config.timeout_s)
            finally:
                if not getter.done():
                    getter.cancel()
            if not done:
                raise SynthesisTimeout(
                    f"No audio within {self.config.timeout_s:g} s (the server is overloaded or a "
                    "model call stalled): retry later, or raise --timeout."
                )
            item = getter.result()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def aclose(self) -> None:
        """Cancel every stage and wait for them to stop (safe to call twice)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _fail(self, queue: asyncio.Queue[Any], exc: BaseException) -> None:
        """Pass a stage's failure downstream. Cancellation by `aclose` just stops the stage;
        any other cancellation (a worker future cancelled under us, say) is a failure too, or
        the client would wait for audio that never comes."""
        if isinstance(exc, asyncio.CancelledError):
            if self._closing:
                raise exc
            exc = RuntimeError("a pipeline stage was cancelled while the request was running")
        await queue.put(exc)

    # -- stage 1: text -> pieces ---------------------------------------------------------

    async def _stage_text(self) -> None:
        loop = asyncio.get_running_loop()
        job, cfg = self.job, self.config
        executor = self.engine.text_executor
        try:
            items = job.items or (Speech(job.text),)

            def segmenter(chunk: str, first: bool) -> list[str]:
                return plan_segments(
                    chunk,
                    first_chars=cfg.first_segment_chars if first else cfg.max_segment_chars,
                    max_chars=cfg.max_segment_chars,
                    growth=cfg.growth,
                    # after a pause the text goes on: no early primer there
                    first=cfg.first_segment if first else "sentence",
                )

            steps = await loop.run_in_executor(executor, functools.partial(plan, items, segmenter))
            g2p = get_g2p(job.lang)
            final = len(steps) - 1
            for index, step in enumerate(steps):
                if index == 1:
                    await self._first_audio.wait()
                before = index > 0 and isinstance(steps[index - 1], Pause)
                after = index < final and isinstance(steps[index + 1], Pause)
                if isinstance(step, Pause):
                    speech_sides = (index > 0) + (index < final)
                    seconds = max(0.0, step.seconds - PAUSE_EDGE_S * speech_sides)
                    await self._pieces.put(
                        _Piece(
                            index,
                            "",
                            None,
                            first=index == 0,
                            last=index == final,
                            silence_s=seconds,
                        )  # fmt: skip
                    )
                    continue
                segment = step
                key = None
                if index == 0 and self.cache.max_entries > 0:
                    key = PrimerCache.key(
                        segment, voice=job.voice, speed=job.speed, lang=job.lang,
                        model=self.engine.model_id,
                    )  # fmt: skip
                    hit = self.cache.lookup(key)
                    if hit is not None:
                        trail = pause_after(segment, last=index == final)
                        piece = _Piece(index, segment, None, cached=hit[0], cached_words=hit[1],
                                       first=True, last=index == final, trail_s=trail,
                                       pause_after=after)  # fmt: skip
                        await self._pieces.put(piece)
                        continue
                phonemes, words = await loop.run_in_executor(executor, g2p.phonemize_words, segment)
                split = split_phonemes(phonemes, MAX_PHONEMES)
                offsets = locate_pieces(phonemes, split)
                parts = [
                    (part, tokenize(part), words_in(words, at, len(part)))
                    for part, at in zip(split, offsets, strict=True)
                ]
                parts = [p for p in parts if any(i not in _silent_ids() for i in p[1])]
                for j, (part, tokens, part_words) in enumerate(parts):
                    end = j == len(parts) - 1
                    last = end and index == final
                    await self._pieces.put(
                        _Piece(
                            index,
                            segment,
                            tokens,
                            # Only a first segment made in one model call goes into the cache.
                            cache_key=key if len(parts) == 1 else None,
                            first=index == 0 and j == 0,
                            last=last,
                            trail_s=pause_after(segment if end else part, last=last),
                            phonemes=part,
                            words=part_words,
                            pause_before=before and j == 0,
                            pause_after=after and end,
                        )
                    )
            await self._pieces.put(_END)
        except BaseException as exc:  # handed downstream, raised to the client by outputs()
            await self._fail(self._pieces, exc)

    # -- stage 2: pieces -> audio --------------------------------------------------------

    async def _stage_infer(self) -> None:
        job, cfg = self.job, self.config
        pool = self.engine.pool
        executor = self.engine.infer_executor
        if executor is None:
            raise RuntimeError("the engine is not started: call engine.start() first")
        try:
            while True:
                piece = await self._pieces.get()
                if piece is _END or isinstance(piece, BaseException):
                    await self._audio.put(piece)
                    return
                if piece.silence_s is not None:  # a pause: silence, nothing to trim
                    samples = np.zeros(round(piece.silence_s * SAMPLE_RATE), np.float32)
                    await self._deliver(_Audio(piece.index, "", samples, True))
                    continue
                if piece.cached is None and self.engine.windowed:
                    await self._infer_windows(piece)
                    continue
                infer_s = wait_ms = 0.0
                nonfinite = 0
                raw_words: tuple[WordTiming, ...] = ()
                if piece.cached is not None:
                    samples, cached = piece.cached, True
                    raw_words = piece.cached_words
                else:
                    tokens = piece.tokens
                    style = style_for(job.pack, len(tokens))
                    # Due when the audio produced so far would finish playing.
                    deadline = (self.first_audio_at or job.arrived) + self.audio_s
                    queued = time.perf_counter()
                    timing: dict[str, float] = {}
                    raw, durations = await pool.run(
                        functools.partial(_infer, tokens=tokens, style=style, speed=job.speed,
                                          timing=timing),
                        executor=executor,
                        deadline=deadline,
                        timeout=cfg.timeout_s,
                    )  # fmt: skip
                    samples, nonfinite = guard_audio(raw, SAMPLE_RATE)
                    if durations is not None:
                        raw_words = tuple(
                            word_timings(piece.words, durations, raw_samples=len(raw),
                                         sample_rate=SAMPLE_RATE, phonemes=piece.phonemes)
                        )  # fmt: skip
                    infer_s = timing.get("infer_s", 0.0)
                    self.compute_s += infer_s
                    wait_ms = max(0.0, (timing.get("start", queued) - queued) * 1e3)
                    if piece.cache_key is not None:
                        self.cache.put(piece.cache_key, samples, raw_words)
                    cached = False
                start, end = 0, len(samples)
                if cfg.trim_silence:
                    start, end = trim_bounds(
                        samples,
                        SAMPLE_RATE,
                        lead_s=LEAD_FIRST_S if piece.first else LEAD_S,
                        trail_s=piece.trail_s,
                    )
                span = speech_span(samples) if piece.pause_before or piece.pause_after else None
                if span is not None:
                    edge = round(PAUSE_EDGE_S * SAMPLE_RATE)
                    if piece.pause_before:
                        start = max(0, span[0] - edge)
                    if piece.pause_after:
                        end = min(len(samples), span[1] + edge)
                words = clip(raw_words, start / SAMPLE_RATE, end / SAMPLE_RATE)
                if (start, end) != (0, len(samples)):
                    samples, _ = guard_audio(samples[start:end], SAMPLE_RATE)
                if not cached:
                    self.telemetry.segment(
                        infer_ms=infer_s * 1e3, wait_ms=wait_ms, nonfinite=nonfinite,
                        audio_s=len(samples) / SAMPLE_RATE,
                    )  # fmt: skip
                await self._deliver(_Audio(piece.index, piece.text, samples, cached, words))
        except BaseException as exc:
            await self._fail(self._audio, exc)

    async def _infer_windows(self, piece: _Piece) -> None:
        """Windowed synthesis of one piece: each window's audio goes downstream as soon as it
        is made (the worker thread hands it to the loop and waits for queue room), with the
        words that start in it (`timestamps.WindowWords`)."""
        job, cfg = self.job, self.config
        loop = asyncio.get_running_loop()
        tokens = piece.tokens or []
        style = style_for(job.pack, len(tokens))
        deadline = (self.first_audio_at or job.arrived) + self.audio_s
        never = 1e9
        lead_s = (LEAD_FIRST_S if piece.first else LEAD_S) if cfg.trim_silence else never
        trail_s = piece.trail_s if cfg.trim_silence else never

        def slack() -> float:  # audio the listener has buffered when the front is done
            if self.first_audio_at is None:
                return 0.0
            return self.first_audio_at + self.audio_s - time.perf_counter()

        def work(synth: Synthesizer) -> None:
            timed = synth.window_words(piece.words, piece.phonemes)
            t0 = time.perf_counter()
            for chunk in synth.infer_windows(tokens, style, job.speed, slack):
                infer_s = time.perf_counter() - t0
                samples, nonfinite, cut = finish_chunk(
                    chunk, SAMPLE_RATE, lead_s=lead_s, trail_s=trail_s
                )
                words = timed.take(chunk, cut=cut, samples=len(samples)) if timed else []
                if self._closing:
                    return
                handoff = asyncio.run_coroutine_threadsafe(
                    self._window_audio(piece, samples, nonfinite, infer_s, words), loop
                )
                handoff.result(timeout=cfg.timeout_s)
                t0 = time.perf_counter()

        executor = self.engine.infer_executor
        if executor is None:
            raise RuntimeError("the engine is not started: call engine.start() first")
        await self.engine.pool.run(
            work, executor=executor, deadline=deadline, timeout=cfg.timeout_s
        )

    async def _window_audio(
        self,
        piece: _Piece,
        samples: np.ndarray,
        nonfinite: int,
        infer_s: float,
        words: list[WordTiming],
    ) -> None:
        self.compute_s += infer_s
        self.telemetry.segment(
            infer_ms=infer_s * 1e3, wait_ms=0.0, nonfinite=nonfinite,
            audio_s=len(samples) / SAMPLE_RATE,
        )  # fmt: skip
        await self._deliver(_Audio(piece.index, piece.text, samples, False, words))

    async def _deliver(self, audio: _Audio) -> None:
        self.audio_s += len(audio.samples) / SAMPLE_RATE
        self.segments += 1
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()
        self._first_audio.set()
        await self._audio.put(audio)

    # -- stage 3: audio -> bytes ---------------------------------------------------------

    async def _stage_encode(self) -> None:
        loop = asyncio.get_running_loop()
        job = self.job
        try:
            framer = _make_framer(job, self)
            head = framer.header()
            primer_n = int(SAMPLE_RATE * self.config.primer_ms / 1000)
            if primer_n:
                head += framer.chunk(np.zeros(primer_n, np.float32))
            if head:
                await self._out.put(Output(head, samples=primer_n))
            compressed = job.response_format not in ("wav", "pcm")
            while True:
                item = await self._audio.get()
                if item is _END:
                    tail = await loop.run_in_executor(self.engine.encode_executor, framer.finish)
                    if tail:
                        await self._out.put(Output(tail))
                    await self._out.put(_END)
                    return
                if isinstance(item, BaseException):
                    await self._out.put(item)
                    return
                samples = item.samples
                if compressed:
                    data = await loop.run_in_executor(
                        self.engine.encode_executor, framer.chunk, samples, item.words
                    )
                else:
                    data = framer.chunk(samples, item.words)
                audible = bool(np.any(np.abs(samples) > AUDIBLE))
                await self._out.put(Output(data, samples=len(samples), audible=audible))
        except BaseException as exc:
            await self._fail(self._out, exc)


def _infer(
    synth: Synthesizer,
    *,
    tokens: list[int],
    style: np.ndarray,
    speed: float,
    timing: dict[str, float],
) -> tuple[np.ndarray, np.ndarray | None]:
    start = time.perf_counter()
    timing["start"] = start
    audio, durations = synth.infer_timed(tokens, style, speed)
    timing["infer_s"] = time.perf_counter() - start
    return audio, durations


class _AudioFramer:
    """Raw audio bytes of the response format."""

    def __init__(self, job: SpeechJob, pipeline: SpeechPipeline) -> None:
        self.encoder = make_encoder(job.response_format, SAMPLE_RATE, streaming=True)
        self.pipeline = pipeline

    def header(self) -> bytes:
        return self.encoder.header()

    def chunk(self, samples: np.ndarray, words: Sequence[WordTiming] = ()) -> bytes:
        p = self.pipeline
        p.chunks += 1
        p.samples_sent += len(samples)
        return self.encoder.encode(samples)

    def finish(self) -> bytes:
        return self.encoder.finish()


class _RecordFramer:
    """Sequence-tagged records: ndjson lines or OpenAI-style server-sent events."""

    def __init__(self, job: SpeechJob, pipeline: SpeechPipeline) -> None:
        self.sse = job.stream_format == "sse"
        self.pipeline = pipeline

    def header(self) -> bytes:
        return b""

    def chunk(self, samples: np.ndarray, words: Sequence[WordTiming] = ()) -> bytes:
        p = self.pipeline
        pcm = to_pcm16(samples).tobytes()
        p.sha256.update(pcm)
        record: dict[str, Any] = {
            "type": "speech.audio.delta" if self.sse else "chunk",
            "seq": p.chunks,
            "sample_offset": p.samples_sent,
            "num_samples": len(samples),
            "sample_rate": SAMPLE_RATE,
            "audio" if self.sse else "samples": base64.b64encode(pcm).decode("ascii"),
        }
        if p.job.words:
            record["words"] = stream_words(words, p.samples_sent)
        p.chunks += 1
        p.samples_sent += len(samples)
        return self._frame(record)

    def finish(self) -> bytes:
        p = self.pipeline
        record: dict[str, Any] = {
            "type": "speech.audio.done" if self.sse else "done",
            "chunks": p.chunks,
            "total_samples": p.samples_sent,
            "sample_rate": SAMPLE_RATE,
            "duration_s": round(p.samples_sent / SAMPLE_RATE, 4),
            "encoding": "pcm_s16le",
            "sha256": p.sha256.hexdigest(),
        }
        if self.sse:
            record["usage"] = {"input_tokens": len(p.job.text), "output_tokens": 0,
                               "total_tokens": len(p.job.text)}  # fmt: skip
        return self._frame(record)

    def _frame(self, record: dict[str, Any]) -> bytes:
        text = json.dumps(record, separators=(",", ":"))
        return f"data: {text}\n\n".encode() if self.sse else f"{text}\n".encode()


def error_record(body: dict[str, Any], *, sse: bool) -> bytes:
    """The last record of a record stream that failed mid-way."""
    record = {"type": "error", **body}
    text = json.dumps(record, separators=(",", ":"))
    return f"data: {text}\n\n".encode() if sse else f"{text}\n".encode()


class _WholeFileFramer:
    """Collects the audio and encodes one complete file at the end (exact WAV sizes)."""

    def __init__(self, job: SpeechJob, pipeline: SpeechPipeline) -> None:
        self.job = job
        self.pipeline = pipeline
        self.parts: list[np.ndarray] = []
        self.words: list[dict[str, Any]] = []

    def header(self) -> bytes:
        return b""

    def chunk(self, samples: np.ndarray, words: Sequence[WordTiming] = ()) -> bytes:
        self.words.extend(stream_words(words, self.pipeline.samples_sent))
        self.parts.append(samples)
        self.pipeline.chunks += 1
        self.pipeline.samples_sent += len(samples)
        return b""

    def finish(self) -> bytes:
        audio = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        if self.job.response_format == "wav":
            data = wav_bytes(audio, SAMPLE_RATE)
        else:
            encoder = make_encoder(self.job.response_format, SAMPLE_RATE, streaming=False)
            data = encoder.header() + encoder.encode(audio) + encoder.finish()
        if not self.job.timestamps_json:
            return data
        body = {
            "audio": base64.b64encode(data).decode("ascii"),
            "response_format": self.job.response_format,
            "sample_rate": SAMPLE_RATE,
            "duration_s": round(len(audio) / SAMPLE_RATE, 4),
            "words": self.words,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def stream_words(words: Sequence[WordTiming], offset_samples: int) -> list[dict[str, Any]]:
    """Word records in seconds of the stream: a chunk's words moved to where it starts."""
    shift_s = offset_samples / SAMPLE_RATE
    return [
        {"word": w.word, "start": round(w.start + shift_s, 3), "end": round(w.end + shift_s, 3)}
        for w in words
    ]


def _make_framer(
    job: SpeechJob, pipeline: SpeechPipeline
) -> _AudioFramer | _RecordFramer | _WholeFileFramer:
    if not job.stream:
        return _WholeFileFramer(job, pipeline)
    if job.stream_format in ("ndjson", "sse"):
        return _RecordFramer(job, pipeline)
    return _AudioFramer(job, pipeline)
