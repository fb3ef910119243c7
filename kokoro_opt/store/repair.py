"""Check every cached model in full (`kokoro-opt model verify`) and repair damaged ones
(`kokoro-opt model pull --repair`).

Repair rebuilds the two default models offline (`pull_default`), copies a recipe's output again
from its run folder when that copy still has the recorded sha256, and registers a user's model
again from its recorded source path when that file still has the recorded source sha256.
Anything else cannot be repaired here, and the check says what to do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kokoro_opt.errors import IntegrityError, KokoroOptError, ModelNotFoundError
from kokoro_opt.store.cache import DEFAULT_NAMES, cached_names, model_file, read_sidecar
from kokoro_opt.store.pull import Progress, copy_checked, pull_default, register_model
from kokoro_opt.store.verify import sha256_file, verify_model


@dataclass
class ModelCheck:
    """The outcome of checking (and maybe repairing) one cached model."""

    name: str
    path: str
    ok: bool
    sha256: str | None
    """The recorded sha256."""
    seconds: float | None = None
    error: str | None = None
    action: str | None = None
    """What repair did: rebuilt, copied again, registered again, or cannot repair."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_all(names: list[str] | None = None) -> list[ModelCheck]:
    """Check the named cached models (all of them when `names` is empty) by full sha256.

    Raises `ModelNotFoundError` for a name that is not in the cache."""
    return [_check(model_file(name)) for name in _names(names)]


def repair(names: list[str] | None = None, progress: Progress | None = None) -> list[ModelCheck]:
    """Check the named cached models (all when `names` is empty) and repair the damaged ones
    where a good copy can be had; returns the final state of each. A default model named here
    is built when it is missing."""
    wanted = _names(names, allow_missing_defaults=True)
    before = {name: _check(model_file(name)) for name in wanted}
    actions: dict[str, str] = {}
    damaged = [n for n in wanted if n in DEFAULT_NAMES and not before[n].ok]
    if damaged:
        pull_default(progress, names=damaged)
        actions.update({n: "rebuilt" for n in damaged})
    for name in wanted:
        if name not in DEFAULT_NAMES and not before[name].ok:
            actions[name] = _restore(model_file(name))
    checks = []
    for name in wanted:
        after = _check(model_file(name)) if name in actions else before[name]
        after.action = actions.get(name)
        checks.append(after)
    return checks


def _names(names: list[str] | None, *, allow_missing_defaults: bool = False) -> list[str]:
    cached = cached_names()
    if not names:
        return cached
    out: list[str] = []
    for raw in names:
        name = raw.removesuffix(".onnx")
        if name not in cached and not (allow_missing_defaults and name in DEFAULT_NAMES):
            listed = ", ".join(cached) or "none yet"
            raise ModelNotFoundError(
                f"No cached model {raw!r} (cached: {listed}). See `kokoro-opt model list`."
            )
        if name not in out:
            out.append(name)
    return out


def _check(path: Path) -> ModelCheck:
    info = read_sidecar(path) or {}
    sha = info.get("sha256") if isinstance(info.get("sha256"), str) else None
    if not path.is_file():
        hint = "run `kokoro-opt model pull` to build it."
        return ModelCheck(path.stem, str(path), False, sha, error=f"{path} is missing; {hint}")
    try:
        done = verify_model(path, full=True)
    except IntegrityError as exc:
        return ModelCheck(path.stem, str(path), False, sha, error=str(exc))
    return ModelCheck(path.stem, str(path), True, done.sha256, seconds=done.seconds)


def _restore(path: Path) -> str:
    """Get a good copy of a damaged recipe output or user model back, if one can be had."""
    info = read_sidecar(path) or {}
    source = Path(str(info.get("source") or ""))
    sha = info.get("sha256")
    try:
        recipe = info.get("kind") == "recipe" and isinstance(sha, str) and source.is_file()
        if recipe and sha256_file(source) == sha:
            copy_checked(source, path, str(sha))
            return "copied again from its run folder"
        wanted = info.get("source_sha256")
        if info.get("kind") == "user" and source.is_file() and sha256_file(source) == wanted:
            register_model(str(source), path.stem)
            return "registered again from its source"
    except (OSError, KokoroOptError):
        pass
    if info.get("kind") == "recipe":
        recipe = info.get("recipe") or "RECIPE"
        return (
            f"cannot repair: its run folder's copy is gone or changed; run `kokoro-opt run "
            f"{recipe} --force`"
        )
    return (
        f"cannot repair: register a good copy with `kokoro-opt model pull PATH --name {path.stem}`"
    )
