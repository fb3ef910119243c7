"""The input/output contract of a Kokoro ONNX export, resolved once when a model is loaded.

Known conventions:
- ours (and the kokoro-onnx INT8 export we ship): inputs `tokens` int64 [1, T], `style` float
  [1, 256], `speed` float [1]; output `audio` float [N];
- kokoro-onnx's export script: inputs `input_ids`, `style`, `speed` (float, or int32 in newer
  exports); outputs `waveform` and `duration`.
Aliases are matched by name; dtypes are read from the model, so feeds are built with exactly the
types it wants (int32/int64 tokens, float32/float16 style, float/int speed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.graph.durations import DURATION_NAMES

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

TOKEN_NAMES = ("tokens", "input_ids")
STYLE_NAMES = ("style", "ref_s")
SPEED_NAMES = ("speed",)
AUDIO_NAMES = ("audio", "waveform")

_TOKEN_DTYPES = ("int64", "int32")
_STYLE_DTYPES = ("float32", "float16")
_SPEED_DTYPES = ("float32", "float16", "int32", "int64")

# ORT's type strings ('tensor(float)') and ONNX's TensorProto enum values -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}
_ONNX_TYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32"}

_EXPECTED = (
    "inputs tokens|input_ids (int64/int32), style|ref_s (float), speed (float or int); "
    "output audio|waveform (float)"
)


@dataclass(frozen=True)
class ModelContract:
    """Names and dtypes of a Kokoro model's inputs and its audio output."""

    tokens: str
    tokens_dtype: str
    style: str
    style_dtype: str
    speed: str
    speed_dtype: str
    audio: str
    outputs: tuple[str, ...]
    durations: str | None = None

    @property
    def integer_speed(self) -> bool:
        """True when the model takes speed as an integer (only whole speeds can be given)."""
        return self.speed_dtype.startswith("int")

    @classmethod
    def from_io(
        cls, inputs: Sequence[tuple[str, str]], outputs: Sequence[tuple[str, str]]
    ) -> ModelContract:
        """Resolve from (name, numpy dtype name) pairs of the graph's inputs and outputs."""
        found = _describe(inputs, outputs)
        in_types = dict(inputs)
        out_types = dict(outputs)

        def pick(names: tuple[str, ...], table: dict[str, str], role: str) -> str:
            hits = [n for n in names if n in table]
            if len(hits) != 1:
                problem = "no" if not hits else "more than one"
                raise ModelFormatError(
                    f"Unknown model contract: {problem} {role} ({'/'.join(names)}). Found "
                    f"{found}; expected {_EXPECTED}. Is this a Kokoro ONNX export?"
                )
            return hits[0]

        tokens = pick(TOKEN_NAMES, in_types, "token input")
        style = pick(STYLE_NAMES, in_types, "style input")
        speed = pick(SPEED_NAMES, in_types, "speed input")
        audio = pick(AUDIO_NAMES, out_types, "audio output")
        extra = sorted(set(in_types) - {tokens, style, speed})
        if extra:
            raise ModelFormatError(
                f"Unknown model contract: unexpected inputs {', '.join(extra)}. Found {found}; "
                f"expected {_EXPECTED}."
            )
        for name, allowed in (
            (tokens, _TOKEN_DTYPES),
            (style, _STYLE_DTYPES),
            (speed, _SPEED_DTYPES),
        ):
            if in_types[name] not in allowed:
                raise ModelFormatError(
                    f"Unsupported model contract: input {name!r} is {in_types[name]}, expected "
                    f"one of {', '.join(allowed)}. Found {found}."
                )
        if out_types[audio] not in ("float32", "float16"):
            raise ModelFormatError(
                f"Unsupported model contract: output {audio!r} is {out_types[audio]}, expected "
                f"float32 or float16. Found {found}."
            )
        return cls(
            tokens=tokens,
            tokens_dtype=in_types[tokens],
            style=style,
            style_dtype=in_types[style],
            speed=speed,
            speed_dtype=in_types[speed],
            audio=audio,
            outputs=tuple(n for n, _ in outputs),
            durations=next((n for n in DURATION_NAMES if n in out_types), None),
        )

    @classmethod
    def from_session(cls, session: ort.InferenceSession) -> ModelContract:
        """Resolve from a live onnxruntime session."""
        return cls.from_io(
            [(i.name, _ORT_TYPES.get(i.type, i.type)) for i in session.get_inputs()],
            [(o.name, _ORT_TYPES.get(o.type, o.type)) for o in session.get_outputs()],
        )

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto) -> ModelContract:
        """Resolve from an ONNX model (graph inputs that are initializers are ignored)."""
        inits = {t.name for t in model.graph.initializer}

        def dtype(value_info: Any) -> str:
            elem = value_info.type.tensor_type.elem_type
            return _ONNX_TYPES.get(elem, f"onnx-type-{elem}")

        return cls.from_io(
            [(v.name, dtype(v)) for v in model.graph.input if v.name not in inits],
            [(v.name, dtype(v)) for v in model.graph.output],
        )

    def feeds(self, tokens: Sequence[int], style: np.ndarray, speed: float) -> dict[str, Any]:
        """Model inputs for padded token ids, a style vector [1, 256] and a speed."""
        ids = np.asarray(tokens, dtype=self.tokens_dtype).reshape(1, -1)
        style_arr = np.ascontiguousarray(np.asarray(style).reshape(1, -1), dtype=self.style_dtype)
        if self.integer_speed:
            if float(speed) != round(float(speed)):
                raise UserInputError(
                    f"This model takes an integer speed, so speed {speed} cannot be used: "
                    "give a whole number such as 1 or 2."
                )
            speed_arr = np.array([round(float(speed))], dtype=self.speed_dtype)
        else:
            speed_arr = np.array([speed], dtype=self.speed_dtype)
        return {self.tokens: ids, self.style: style_arr, self.speed: speed_arr}


def _describe(inputs: Sequence[tuple[str, str]], outputs: Sequence[tuple[str, str]]) -> str:
    ins = ", ".join(f"{n} ({t})" for n, t in inputs) or "none"
    outs = ", ".join(f"{n} ({t})" for n, t in outputs) or "none"
    return f"inputs {ins}; outputs {outs}"
