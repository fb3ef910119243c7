"""Python APIs on top of the runtime.

- `Kokoro`: a drop-in for kokoro-onnx 0.6's `Kokoro` class (`kokoro_opt.api.kokoro_onnx`), so an
  application switches by changing its import to `from kokoro_opt import Kokoro`.

Names load on first use (onnxruntime and the G2P are heavy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kokoro_opt.api.kokoro_onnx import (
        MAX_PHONEME_LENGTH,
        SAMPLE_RATE,
        EspeakConfig,
        Kokoro,
        Tokenizer,
    )

__all__ = ["MAX_PHONEME_LENGTH", "SAMPLE_RATE", "EspeakConfig", "Kokoro", "Tokenizer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kokoro_opt.api import kokoro_onnx

        return getattr(kokoro_onnx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
