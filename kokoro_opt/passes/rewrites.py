"""The hot-spot rewrites by name, applied in a fixed dependency order.

Each rewrite is its own pass module (Config + run). Order matters and is fixed regardless of
how the user lists them: `instnorm` creates the InstanceNormalization that `snake` folds its
alpha into, and `snake` folds 1/alpha into Conv weights before `conv2d` changes the Convs.

`DEFAULT` holds the rewrites that measured faster on this project's CPU and stayed within the
float-noise floor of the audio (docs/graph-optimization.md has the numbers). `stft` is
implemented but not default: its spectrum is exact to 1e-6, yet Kokoro feeds the atan2 phase
of near-silent bins (pure rounding residue) into the generator, so any DFT other than ORT's
own changes the audio.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import onnx

from kokoro_opt.errors import UserInputError
from kokoro_opt.passes import rewrite_conv2d, rewrite_instnorm, rewrite_snake, rewrite_stft
from kokoro_opt.passes.base import PassContext, PassResult

REWRITES: dict[str, ModuleType] = {
    "instnorm": rewrite_instnorm,
    "snake": rewrite_snake,
    "stft": rewrite_stft,
    "conv2d": rewrite_conv2d,
}
ORDER: tuple[str, ...] = ("instnorm", "snake", "stft", "conv2d")
DEFAULT: tuple[str, ...] = ("instnorm", "snake", "conv2d")
FOR_QUANTIZATION: tuple[str, ...] = ("instnorm", "conv2d")
"""The rewrites before static INT8: no Snake fold. Folding 1/alpha into the Conv weights (and
alpha into the norm) rescales each input channel of the quantized Convs, so per-tensor
activation ranges and per-output-channel weight scales lose resolution: after optimize ->
quantize on 20 held-out sentences, log-mel distance to FP32 0.308 with the fold against 0.242
without it (quantize alone: 0.242), WER 8.8 % against 8.3 % (docs/int8-static.md)."""


def parse(text: str | None) -> list[str]:
    """`"snake,conv2d"` -> names in application order; `"default"` -> DEFAULT; `"none"`/"" -> []."""
    if text is None:
        return []
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not items or items == ["none"]:
        return []
    names: set[str] = set()
    for item in items:
        if item == "default":
            names.update(DEFAULT)
        elif item == "all":
            names.update(ORDER)
        elif item in REWRITES:
            names.add(item)
        else:
            raise UserInputError(
                f"Unknown rewrite {item!r}. Choose from {', '.join(ORDER)}, or 'default' "
                f"({', '.join(DEFAULT)}), 'all' or 'none'; separate several with commas."
            )
    return [name for name in ORDER if name in names]


def apply(
    model: onnx.ModelProto,
    names: list[str],
    ctx: PassContext,
    configs: dict[str, Any] | None = None,
) -> PassResult:
    """Run the named rewrites in ORDER; details[name] holds each rewrite's details."""
    configs = configs or {}
    details: dict[str, Any] = {}
    current = model
    for name in ORDER:
        if name not in names:
            continue
        module = REWRITES[name]
        config = configs.get(name) or module.Config()
        result = module.run(current, config, ctx)
        details[name] = result.details
        current = result.model
    return PassResult(current, details)
