"""kokoro-opt: make Kokoro-82M small and fast without making it sound worse.

`from kokoro_opt import Kokoro` is a drop-in for kokoro-onnx's `Kokoro` (see kokoro_opt.api);
it loads on first use, so importing kokoro_opt stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kokoro_opt.api.kokoro_onnx import SAMPLE_RATE, Kokoro

__version__ = "0.1.0"
__all__ = ["SAMPLE_RATE", "Kokoro", "__version__"]

_LAZY = ("Kokoro", "SAMPLE_RATE")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from kokoro_opt.api import kokoro_onnx

        return getattr(kokoro_onnx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
