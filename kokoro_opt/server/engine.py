"""The server's engine: one model loaded into a pool of inference sessions, its voices, and the
worker threads the pipeline runs on.

    engine = Engine.load("kokoro-fp32.onnx", sessions=2, providers=["cpu"], threads=1)
    app = create_app(engine, ServerSettings())

Threads are fixed when the engine starts: `text` (segmentation and G2P, 2 threads),
`infer` (one per session) and `encode` (compressed formats, 2 threads). They end in `close()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from kokoro_opt.errors import UserInputError
from kokoro_opt.runtime.g2p import get_g2p
from kokoro_opt.runtime.synthesizer import SAMPLE_RATE, Synthesizer
from kokoro_opt.runtime.tokenizer import MAX_PHONEMES, tokenize
from kokoro_opt.runtime.voices import VoiceLibrary, style_for
from kokoro_opt.runtime.windowed import WindowPlan
from kokoro_opt.server.pool import SessionPool
from kokoro_opt.store.verify import verified_sha256

logger = logging.getLogger(__name__)

WARMUP_TEXTS = (
    "Hello there.",
    "The birch canoe slid on the smooth planks, and the sheet was glued to the dark blue "
    "background while the wind blew.",
)


class Engine:
    """A model in a session pool, its voices and the pipeline's worker threads."""

    def __init__(
        self,
        synths: Sequence[Synthesizer],
        *,
        voices: VoiceLibrary,
        model_id: str,
        model_path: Path,
        threads: int | None = None,
        model_sha256: str | None = None,
    ) -> None:
        self.pool = SessionPool(list(synths))
        self.voices = voices
        self.model_id = model_id
        self.model_path = model_path
        self.model_sha256 = model_sha256
        self.threads = threads
        self.contract = synths[0].contract
        # Word timings in records and /v1/audio/speech/timestamps: every session has durations.
        self.timestamps = all(s.timestamps for s in synths)
        self.text_executor: ThreadPoolExecutor | None = None
        self.infer_executor: ThreadPoolExecutor | None = None
        self.encode_executor: ThreadPoolExecutor | None = None
        self.warmup_s: float | None = None
        self._users = 0

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        sessions: int = 1,
        providers: Sequence[str] = ("cpu",),
        threads: int | None = None,
        voices: VoiceLibrary | str | Path | None = None,
        model_id: str | None = None,
        timestamps: bool | Literal["auto"] = "auto",
        split: str | Path | None = None,
        window: WindowPlan | None = None,
    ) -> Engine:
        """Load `sessions` inference sessions of `model`. `providers` are given to sessions in
        turn (`["cuda", "cpu"]` with 2 sessions: one of each; the first listed is preferred).
        `threads` is per session; by default the CPU cores are split between the sessions.
        `timestamps`: give the sessions the model's durations for word timings ("auto": when
        the graph has a duration predictor; True: required). A cached model is verified against
        its sidecar first (`IntegrityError` when its bytes changed); the sha256 of any model is
        kept for /status."""
        if isinstance(sessions, bool) or sessions < 1:
            raise UserInputError(f"sessions must be a whole number of at least 1, got {sessions}.")
        if not providers:
            raise UserInputError("Give at least one provider, such as cpu.")
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // sessions)
        path = Path(model)
        sha256 = verified_sha256(path) if path.is_file() else None
        library = VoiceLibrary.from_spec(voices)
        synths = [
            Synthesizer(
                path,
                voices=library,
                provider=providers[i % len(providers)],
                threads=threads,
                timestamps=timestamps,
                split=split,
                window=window,
            )
            for i in range(sessions)
        ]
        contracts = {s.contract for s in synths}
        if len(contracts) != 1:  # the same file on every provider: cannot differ, but be sure
            raise UserInputError(f"Sessions of {path.name} disagree on the model's inputs.")
        return cls(
            synths,
            voices=library,
            model_id=model_id or path.stem,
            model_path=path,
            threads=threads,
            model_sha256=sha256,
        )

    @property
    def windowed(self) -> bool:
        """True when segments are rendered in windows (a split model with a windowing plan)."""
        return self.pool.members[0].synth.windowed

    @property
    def providers(self) -> list[str]:
        return [m.provider for m in self.pool.members]

    def start(self) -> None:
        """Start the worker threads. Several apps may share one engine: each `start` is matched
        by a `close`, and the threads stop at the last `close`."""
        self._users += 1
        if self.infer_executor is None:
            self.text_executor = _started_executor(2, "kokoro-text")
            self.infer_executor = _started_executor(self.pool.size, "kokoro-infer")
            self.encode_executor = _started_executor(2, "kokoro-encode")

    def close(self) -> None:
        """End one `start`; the last one stops the worker threads, waiting for calls in
        progress."""
        self._users = max(0, self._users - 1)
        if self._users:
            return
        for name in ("text_executor", "infer_executor", "encode_executor"):
            executor = getattr(self, name)
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
                setattr(self, name, None)

    def warmup(self, *, lang: str, voice: str, longest_chars: int = 300) -> dict[str, Any]:
        """Build the G2P for `lang` and run every session on a short input and on the longest
        segment a request can produce (`longest_chars`), so the first request pays no one-time
        costs and ONNX Runtime's memory arena has already grown to its working size (it keeps
        what it grew to: without this, RSS steps up the first time each larger segment comes).
        Blocking; returns timings."""
        start = time.perf_counter()
        g2p = get_g2p(lang)
        pack = self.voices.get(voice)
        long_text = " ".join([WARMUP_TEXTS[1]] * (longest_chars // len(WARMUP_TEXTS[1]) + 1))
        texts = [*WARMUP_TEXTS, long_text[:longest_chars]]
        token_lists = [tokenize(g2p.phonemize(text))[:MAX_PHONEMES] for text in texts]
        g2p_s = time.perf_counter() - start
        per_session = []
        infer_s = audio_s = 0.0
        for member in self.pool.members:
            t0 = time.perf_counter()
            for i, tokens in enumerate(token_lists):
                t1 = time.perf_counter()
                audio = member.synth.infer(tokens, style_for(pack, len(tokens)), 1.0)
                if member.synth.windowed:  # the split sessions warm up too
                    for _ in member.synth.infer_windows(tokens, style_for(pack, len(tokens)), 1.0):
                        pass
                if i == len(token_lists) - 1:  # the long input: a fair speed sample
                    infer_s += time.perf_counter() - t1
                    audio_s += len(audio) / SAMPLE_RATE
            per_session.append(round(time.perf_counter() - t0, 3))
        self.warmup_s = time.perf_counter() - start
        logger.info("warm-up done in %.2f s", self.warmup_s)
        return {
            "total_s": round(self.warmup_s, 3),
            "g2p_s": round(g2p_s, 3),
            "sessions_s": per_session,
            "rtf": round(infer_s / audio_s, 4) if audio_s else None,
            "infer_s": infer_s,
            "audio_s": audio_s,
        }


def _started_executor(workers: int, prefix: str) -> ThreadPoolExecutor:
    """A thread pool whose `workers` threads all run from the start (ThreadPoolExecutor adds
    threads lazily; a fixed count makes thread leaks visible and start-up costs paid once)."""
    executor = ThreadPoolExecutor(workers, thread_name_prefix=prefix)
    barrier = threading.Barrier(workers + 1)
    for _ in range(workers):
        executor.submit(barrier.wait, 30)
    barrier.wait(30)
    return executor
