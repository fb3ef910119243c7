"""The model cache: where it lives, what is in it, and how a MODEL argument resolves.

Layout: `<cache>/models/<name>.onnx` with a JSON sidecar `<name>.json` (sha256, size_bytes,
source, created, kind) and the fingerprint of its last full check in `.verified/<name>.json`.
`<cache>` is `$KOKORO_OPT_HOME`, else `$XDG_CACHE_HOME/kokoro-opt`, else `~/.cache/kokoro-opt`.
A cached model is verified against its sidecar whenever a MODEL argument resolves to it
(`kokoro_opt.store.verify`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kokoro_opt.errors import ModelFormatError, ModelNotFoundError, UserInputError

INT8_NAME = "kokoro-int8-export"
FP32_NAME = "kokoro-fp32"
DEFAULT_NAMES = (FP32_NAME, INT8_NAME)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def cache_dir() -> Path:
    """The kokoro-opt cache folder (not created here)."""
    home = os.environ.get("KOKORO_OPT_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kokoro-opt"


def models_dir() -> Path:
    """The folder holding cached models (not created here)."""
    return cache_dir() / "models"


def model_file(name: str) -> Path:
    """Where the cached model `name` lives (whether or not it exists)."""
    return models_dir() / f"{check_name(name)}.onnx"


def sidecar_file(model_path: Path) -> Path:
    """The JSON sidecar that describes a cached model."""
    return model_path.with_suffix(".json")


def check_name(name: str) -> str:
    """Validate a cache name (letters, digits, `.`, `_`, `-`; no `.onnx` suffix needed)."""
    name = name.removesuffix(".onnx")
    if not _NAME_RE.match(name):
        raise UserInputError(
            f"Invalid model name {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (for example 'my-kokoro')."
        )
    return name


def read_sidecar(model_path: Path) -> dict[str, Any] | None:
    """The sidecar of a cached model, or None if it is missing or unreadable."""
    try:
        data = json.loads(sidecar_file(model_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_sidecar(model_path: Path, info: dict[str, Any]) -> Path:
    """Write `<name>.json` beside `model_path` atomically; adds `created` if absent."""
    info = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info}
    target = sidecar_file(model_path)
    write_text_atomic(target, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return target


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def list_models() -> list[dict[str, Any]]:
    """One dict per cached model: name, path, size_bytes, kind, sha256, source, created, and
    `verified`/`checked` from `kokoro_opt.store.verify.check_state` (no full hash)."""
    from kokoro_opt.store.verify import check_state

    folder = models_dir()
    if not folder.is_dir():
        return []
    rows = []
    for path in sorted(folder.glob("*.onnx")):
        if path.name.startswith("."):
            continue
        info = read_sidecar(path) or {}
        rows.append(
            {
                "name": path.stem,
                "path": str(path),
                "size_bytes": path.stat().st_size,
                "kind": info.get("kind", "unknown"),
                "sha256": info.get("sha256"),
                "source": info.get("source"),
                "created": info.get("created"),
                **{("verified" if k == "state" else k): v for k, v in check_state(path).items()},
            }
        )
    return rows


def cached_names() -> list[str]:
    """Names of the models in the cache, sorted."""
    return [row["name"] for row in list_models()]


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """Turn a MODEL argument (an existing path, or a cache name) into a model file path.

    A cached model (by name, or a path into the cache) is verified against its sidecar first:
    `IntegrityError` (one line with both digests and the fix) when its bytes changed.
    """
    from kokoro_opt.store.verify import is_cached, verify_model

    text = str(name_or_path).strip()
    if not text:
        raise ModelNotFoundError(_not_found_message(text))
    path = Path(text).expanduser()
    if path.is_file():
        found = path.absolute()
    elif path.is_dir():
        raise ModelFormatError(f"{path} is a folder, not an ONNX model file. Pass an .onnx file.")
    else:
        name = text.removesuffix(".onnx")
        candidate = models_dir() / f"{name}.onnx"
        if not (_NAME_RE.match(name) and candidate.is_file()):
            raise ModelNotFoundError(_not_found_message(text))
        found = candidate
    if is_cached(found):
        verify_model(found)
    return found


def _not_found_message(text: str) -> str:
    names = cached_names()
    cached = ", ".join(names) if names else "none yet"
    return (
        f"No model {text!r}: it is neither an existing file nor a cached model (cached: "
        f"{cached}). Pass the path of an .onnx file, or run `kokoro-opt model pull` to build "
        f"{FP32_NAME} and {INT8_NAME}."
    )


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Serialize writers of the cache across processes (a no-op where flock is missing)."""
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
