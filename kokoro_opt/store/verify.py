"""Verified loads: a cached model is checked against its sidecar before anything uses it.

The sidecar `<name>.json` records the model's `sha256` and `size_bytes` when the file is made
(pull, register, a recipe's output). Before a cached model is used, `verify_model` checks:

1. the size, always;
2. a fingerprint: the file's (size, mtime, ctime, inode, device) and the sha256 of a sample of
   its blocks (the first and last 64 KiB and 256 blocks of 4 KiB spread evenly; the whole file
   when it is under 2 MiB). When the fingerprint equals the one recorded by the last full check
   (`models/.verified/<name>.json`, valid only for the sidecar's sha256), the file is accepted;
3. otherwise the full sha256, which must equal the sidecar's; then a new fingerprint is recorded
   (best effort: a read-only cache simply hashes in full every time).

Why the fast path catches a byte flipped anywhere: every write to a file sets its ctime to the
current time, and so does `touch`/`utime()` when a tool puts the old mtime back; a user process
cannot set ctime. So an edit in place always changes the fingerprint and forces the full sha256.
The block sample is a second net for file systems whose ctime is not kept (some network and FAT
mounts) and catches edits of the header and the end there. Replacing the file (a new inode) or
hard-linking it (ctime) also forces a full check.

`KOKORO_OPT_VERIFY=full` hashes in full on every load (for such file systems, or the cautious);
the default, `fingerprint`, is the scheme above.

A mismatch raises `IntegrityError`: one line naming the file, both digests and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from kokoro_opt.errors import IntegrityError, UserInputError
from kokoro_opt.store.cache import (
    DEFAULT_NAMES,
    models_dir,
    read_sidecar,
    sidecar_file,
    write_text_atomic,
)

STAMP_DIR = ".verified"
POLICY_ENV = "KOKORO_OPT_VERIFY"
_BLOCK = 4096
_EDGE = 64 * 1024
_SAMPLES = 256
_WHOLE_BELOW = 2 * 1024 * 1024
_CHUNK = 1 << 20

Method = Literal["fingerprint", "sha256"]


@dataclass(frozen=True)
class Verified:
    """A cached model that matched its sidecar."""

    name: str
    path: Path
    sha256: str
    size_bytes: int
    method: Method
    """`fingerprint` (unchanged since the last full check) or `sha256` (hashed in full now)."""
    seconds: float


def is_cached(path: Path) -> bool:
    """Whether `path` is a model file inside the cache's models folder."""
    try:
        return path.suffix == ".onnx" and path.parent.resolve() == models_dir().resolve()
    except OSError:
        return False


def verify_model(path: Path, *, full: bool = False) -> Verified:
    """Check the cached model at `path` against its sidecar (see the module docstring).

    `full=True` (or `KOKORO_OPT_VERIFY=full`) always computes the whole sha256 (`kokoro-opt
    model verify`). Raises `IntegrityError` for a missing record, a wrong size or a wrong sha256.
    """
    started = time.perf_counter()
    full = full or _policy() == "full"
    name = path.stem
    info = read_sidecar(path) or {}
    expected, size = info.get("sha256"), info.get("size_bytes")
    if not isinstance(expected, str) or not isinstance(size, int):
        raise IntegrityError(
            f"Cached model {path} has no usable record ({sidecar_file(path).name} is missing or "
            f"lacks sha256/size_bytes), so it cannot be verified; {repair_hint(name, info)}"
        )
    stat = path.stat()
    if stat.st_size == size and not full:
        stamp = read_stamp(path)
        if stamp is not None and _same(stamp, _fingerprint(path, stat, expected)):
            return Verified(name, path, expected, size, "fingerprint", _since(started))
    actual = sha256_file(path)
    if stat.st_size != size or actual != expected:
        raise IntegrityError(mismatch_message(path, info, actual=actual, size=stat.st_size))
    write_stamp(path, expected, stat)
    return Verified(name, path, expected, size, "sha256", _since(started))


def verified_sha256(path: Path) -> str:
    """The sha256 of a model file: verified against its sidecar when it is cached, else hashed."""
    path = Path(path)
    return verify_model(path).sha256 if is_cached(path) else sha256_file(path)


def check_state(path: Path) -> dict[str, Any]:
    """What `model list` shows without hashing in full: `state` is `verified` (the fingerprint
    equals the last full check's), `changed` (it does not: the next load hashes in full),
    `damaged` (wrong size), `unverified` (never checked in full) or `no record`; `checked` is
    when the last full check ran."""
    info = read_sidecar(path) or {}
    expected, size = info.get("sha256"), info.get("size_bytes")
    if not isinstance(expected, str) or not isinstance(size, int):
        return {"state": "no record", "checked": None}
    stat = path.stat()
    if stat.st_size != size:
        return {"state": "damaged", "checked": None}
    stamp = read_stamp(path)
    if stamp is None:
        return {"state": "unverified", "checked": None}
    same = _same(stamp, _fingerprint(path, stat, expected))
    return {"state": "verified" if same else "changed", "checked": stamp.get("checked")}


def mismatch_message(path: Path, info: dict[str, Any], *, actual: str, size: int) -> str:
    """The one-line error for a cached model whose bytes are not the recorded ones."""
    expected, expected_size = info.get("sha256"), info.get("size_bytes")
    sizes = "" if size == expected_size else f", {size:,} bytes instead of {expected_size:,}"
    return (
        f"Cached model {path} is damaged: sha256 {actual}, expected {expected} (recorded in "
        f"{sidecar_file(path).name}{sizes}); {repair_hint(path.stem, info)}"
    )


def repair_hint(name: str, info: dict[str, Any]) -> str:
    """How to get a good copy of the cached model `name` back (for one-line errors)."""
    if name in DEFAULT_NAMES:
        return "run `kokoro-opt model pull --repair` to rebuild it."
    source = info.get("source")
    if info.get("kind") == "recipe":
        recipe = info.get("recipe") or "RECIPE"
        return (
            f"run `kokoro-opt model pull --repair` to copy it again from its run folder ({source}) "
            f"if that copy is intact, or run the recipe again (`kokoro-opt run {recipe} --force`)."
        )
    if source:
        return (
            f"run `kokoro-opt model pull --repair` to register it again from {source} if that "
            f"file is unchanged, or `kokoro-opt model pull PATH --name {name}` with a good copy."
        )
    return f"register a good copy again: `kokoro-opt model pull PATH --name {name}`."


# ------------------------------------------------------------------------- fingerprints


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The fingerprint recorded by the last full check of the cached model `path`, if any."""
    try:
        data = json.loads(_stamp_file(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_stamp(path: Path, sha256: str, stat: os.stat_result) -> None:
    """Record the fingerprint of `path` after its full sha256 matched (`stat` taken before the
    hash, so a write during hashing leaves a stale stamp, never a wrong one). Best effort."""
    data = _fingerprint(path, stat, sha256)
    data["checked"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with contextlib.suppress(OSError):
        write_text_atomic(_stamp_file(path), json.dumps(data, indent=2, sort_keys=True) + "\n")


def drop_stamp(path: Path) -> None:
    """Forget the fingerprint of `path` (when the file is replaced or removed)."""
    with contextlib.suppress(OSError):
        _stamp_file(path).unlink()


def sample_sha256(path: Path, size: int) -> str:
    """sha256 of the first and last 64 KiB and 256 blocks of 4 KiB spread evenly (the whole
    file when it is under 2 MiB): a few milliseconds for any model size."""
    if size < _WHOLE_BELOW:
        return sha256_file(path)
    digest = hashlib.sha256()
    offsets = [0, size - _EDGE]
    step = (size - _BLOCK) / (_SAMPLES - 1)
    with open(path, "rb") as handle:
        for n, offset in enumerate(offsets):
            handle.seek(offset)
            digest.update(handle.read(_EDGE if n < 2 else _BLOCK))
        for i in range(_SAMPLES):
            handle.seek(int(i * step))
            digest.update(handle.read(_BLOCK))
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a whole file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _policy() -> str:
    value = os.environ.get(POLICY_ENV, "fingerprint").strip().lower() or "fingerprint"
    if value not in ("fingerprint", "full"):
        raise UserInputError(
            f"{POLICY_ENV}={value!r} is not a verification policy: use 'fingerprint' (the "
            "default: full sha256 only when the file changed) or 'full' (every load)."
        )
    return value


def _fingerprint(path: Path, stat: os.stat_result, sha256: str) -> dict[str, Any]:
    return {
        "sha256": sha256,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
        "device": stat.st_dev,
        "sample_sha256": sample_sha256(path, stat.st_size),
    }


def _same(stamp: dict[str, Any] | None, fingerprint: dict[str, Any]) -> bool:
    return stamp is not None and {k: v for k, v in stamp.items() if k != "checked"} == fingerprint


def _stamp_file(path: Path) -> Path:
    return path.parent / STAMP_DIR / f"{path.stem}.json"


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 4)
