"""Reference sets: held-out sentences as model inputs with the reference model's audio and
transcripts, cached by the model's sha256 and a hash of the inputs; the loops that speak
and score a model on them through an executor; and `compare_models`, two models on the same
fixed inputs (the audio check of `optimize --check` and `shapes bind`).

    held = reference_set(fp32, sha, contract, 12, cache_folder=cache, wer=True)
    scores = score_model(variant, held, threads=2, asr=True, executor=executor)
    logmel = mean([s.logmel for s in scores])

The sentences are the held-out split (never used for calibration), read by one voice at speed
1. The cache lives in `cache_folder/reference/<key>.npz` (+ `.transcripts.json`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kokoro_opt.errors import UserInputError
from kokoro_opt.measure.score import FeedScore, FeedTask, score_feed, word_error_rate
from kokoro_opt.runtime.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from kokoro_opt.measure.executors import Executor

ProgressCallback = Callable[[str, int, int], None]


@dataclass
class ReferenceSet:
    """Held-out sentences as model inputs, with the reference's audio (and transcripts)."""

    texts: list[str]
    feeds: list[dict[str, Any]]
    phonemes: list[int]
    ref_audio: list[np.ndarray]
    ref_transcripts: list[str] | None = None
    ref_wer: float | None = None


def heldout_feeds(
    contract: Any, count: int, *, voice: str, lang: str, progress: ProgressCallback | None = None
) -> tuple[list[Any], list[dict[str, Any]]]:
    """The first `count` held-out sentences as (samples, model feeds) for one voice at speed 1."""
    from kokoro_opt.calib.corpus import load_texts
    from kokoro_opt.calib.feeds import corpus_feeds

    texts = load_texts("heldout")
    if not 1 <= count <= len(texts):
        raise UserInputError(
            f"--sentences must be 1 to {len(texts)} (the held-out split's size), got {count}."
        )
    return corpus_feeds(
        texts[:count],
        contract,
        count=count,
        voices=[voice],
        speeds=[1.0],
        seed=0,
        lang=lang,
        source="the held-out split",
        progress=progress,
    )


class ReferenceSource(Protocol):
    """The reference model and where its reference sets are cached (`trials.pin.Prepared`)."""

    model_path: Path
    sha256: str
    contract: Any
    cache_folder: Path
    threads: int


def reference_set(
    source: ReferenceSource,
    count: int,
    *,
    voice: str = "jf_gongitsune",
    lang: str = "en-us",
    wer: bool = False,
    executor: Executor | None = None,
    progress: ProgressCallback | None = None,
) -> ReferenceSet:
    """The first `count` held-out sentences and the source model's audio for them (and its
    transcripts and WER with `wer`), cached under `source.cache_folder` by the model's sha256
    and the inputs."""
    threads = source.threads
    samples, feeds = heldout_feeds(
        source.contract, count, voice=voice, lang=lang, progress=progress
    )
    digest = hashlib.sha256(source.sha256.encode())
    for feed in feeds:
        for key in sorted(feed):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(feed[key]).tobytes())
    cache = source.cache_folder / "reference" / f"{digest.hexdigest()[:24]}.npz"
    audio = _load_npz(cache, len(feeds))
    if audio is None:
        audio = speak_model(
            source.model_path, feeds, threads=threads, executor=executor, progress=progress
        )
        _save_npz(cache, {f"a{i}": a for i, a in enumerate(audio)})
    held = ReferenceSet(
        texts=[s.text for s in samples],
        feeds=feeds,
        phonemes=[s.n_phonemes for s in samples],
        ref_audio=audio,
    )
    if wer:
        held.ref_transcripts = _reference_transcripts(cache, held, threads, executor, progress)
        held.ref_wer = word_error_rate(held.texts, held.ref_transcripts)
    return held


def speak_model(
    model: Path,
    feeds: Sequence[dict[str, Any]],
    *,
    threads: int,
    executor: Executor | None = None,
    progress: ProgressCallback | None = None,
    label: str = "Speaking",
) -> list[np.ndarray]:
    """The model's raw audio for each feed."""
    run = _executor(executor)
    ref = run.share(model)
    tasks = [
        FeedTask(ref, dict(feed), run.task_threads(threads), keep_audio=True) for feed in feeds
    ]
    try:
        return [s.audio for s in run.map(score_feed, tasks, progress=progress, label=label)]
    finally:
        if executor is None:
            run.close()


def score_model(
    model: Path,
    held: ReferenceSet,
    *,
    threads: int,
    asr: bool = False,
    full: bool = False,
    session_config: tuple[tuple[str, str], ...] = (),
    executor: Executor | None = None,
    progress: ProgressCallback | None = None,
    label: str = "Speaking",
) -> list[FeedScore]:
    """Per-sentence scores of `model` against the reference audio of `held` (and a transcript
    each with `asr`)."""
    run = _executor(executor)
    ref = run.share(model)
    tasks = [
        FeedTask(
            ref,
            dict(feed),
            run.task_threads(threads),
            reference=audio,
            asr=asr,
            full=full,
            session_config=session_config,
        )
        for feed, audio in zip(held.feeds, held.ref_audio, strict=True)
    ]
    try:
        return run.map(score_feed, tasks, progress=progress, label=label)
    finally:
        if executor is None:
            run.close()


def logmel_distances(audio: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> list[float]:
    """Log-mel distance after DTW per sentence; audio that is not finite scores infinity."""
    from kokoro_opt.quality.distance import logmel_distance

    out = []
    for a, r in zip(audio, ref, strict=True):
        if a.size == 0 or not np.isfinite(a).all():
            out.append(math.inf)
        else:
            out.append(float(logmel_distance(a, r, SAMPLE_RATE)))
    return out


def compare_models(
    reference: Path,
    test: Path,
    feeds: Sequence[dict[str, Any]],
    *,
    test_feeds: Sequence[dict[str, Any]] | None = None,
    threads: int = 2,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Speak the same inputs with both models and say how far apart the audio is
    (`compare_audio`); `test_feeds` when the test model needs them shaped its own way (padded
    to a static length)."""
    ref = speak_model(reference, feeds, threads=threads, executor=executor)
    out = speak_model(
        test, feeds if test_feeds is None else test_feeds, threads=threads, executor=executor
    )
    return compare_audio(ref, out)


def compare_audio(reference: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> dict[str, Any]:
    """Per-utterance and worst-case differences between two lists of renderings: the largest
    sample difference (over the common length), the log-mel distance (`logmel_distances`),
    the lengths and the count of samples that are not finite."""
    distances = logmel_distances(test, reference)
    items = []
    for ref, out, logmel in zip(reference, test, distances, strict=True):
        n = min(len(ref), len(out))
        items.append(
            {
                "samples_reference": int(len(ref)),
                "samples_test": int(len(out)),
                "max_abs_diff": float(np.max(np.abs(ref[:n] - out[:n]))) if n else 0.0,
                "logmel_distance": logmel,
                "nonfinite": int(np.count_nonzero(~np.isfinite(out))),
            }
        )
    return {
        "items": items,
        "max_abs_diff": max(i["max_abs_diff"] for i in items),
        "max_logmel_distance": max(i["logmel_distance"] for i in items),
        "same_lengths": all(i["samples_reference"] == i["samples_test"] for i in items),
        "nonfinite": sum(i["nonfinite"] for i in items),
    }


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """`data` as JSON at `path`, atomically (the folder is created)."""
    from kokoro_opt.report.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1, default=str))


def _reference_transcripts(
    cache: Path,
    held: ReferenceSet,
    threads: int,
    executor: Executor | None,
    progress: ProgressCallback | None,
) -> list[str]:
    from kokoro_opt.quality.asr import MODEL_NAME

    path = cache.with_suffix(".transcripts.json")
    cached = read_json(path)
    if (
        cached
        and cached.get("asr") == MODEL_NAME
        and len(cached.get("transcripts", [])) == len(held.feeds)
    ):
        return list(cached["transcripts"])
    from kokoro_opt.measure.score import transcribe_task

    run = _executor(executor)
    try:
        items = [(a, run.task_threads(threads)) for a in held.ref_audio]
        transcripts = run.map(transcribe_task, items, progress=progress, label="Transcribing")
    finally:
        if executor is None:
            run.close()
    write_json(path, {"asr": MODEL_NAME, "transcripts": transcripts})
    return transcripts


def _executor(executor: Executor | None) -> Executor:
    from kokoro_opt.measure.executors import Executor

    return executor or Executor()


def _load_npz(path: Path, count: int) -> list[np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return [data[f"a{i}"] for i in range(count)]
    except (OSError, KeyError, ValueError):
        return None


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
