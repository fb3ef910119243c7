"""CoreML weight compression for people who already have a CoreML Kokoro model (.mlpackage).

`compress(model, out, mode=...)` rewrites an ML program's weights with coremltools
(int8, int4, 4/6-bit palettization, magnitude pruning) and `inspect(model)` lists its ops and
stored weight dtypes and sizes. Off macOS coremltools cannot run predictions, so these tools
report sizes and op counts only.
"""

from __future__ import annotations

from kokoro_opt.coreml.compress import MODES, Mode, compress, kmeans_lut
from kokoro_opt.coreml.mlpackage import PREDICTION_NOTE, can_predict, inspect

__all__ = ["MODES", "PREDICTION_NOTE", "Mode", "can_predict", "compress", "inspect", "kmeans_lut"]
