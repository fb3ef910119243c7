"""A content-addressed cache of step results, so re-running a recipe skips what did not change.

A step's key is the sha256 of canonical JSON holding everything its output depends on:
the step kind, its validated options (defaults filled in), the sha256 of every file an option
names, the sha256 of its input model (and of the reference for eval/bench, with the names the
report gives them), the recipe's thread count, the versions of the packages that compute it,
and a fingerprint of kokoro-opt's own source files the step runs (`code_fingerprint`). Input
models are identified by content, so a step after a cached step hits too, and a changed option
re-runs that step and, because its output hash changes, everything after it.

Layout under `<kokoro-opt cache>/recipes/`: `<key[:2]>/<key>/entry.json` (written last, the
commit marker) and `<key[:2]>/<key>/files/...` (the step's outputs). A step runs in
`tmp/<random>/` and the folder is renamed into place only when it finished; an interrupted or
failed step leaves nothing behind. A hit is verified (every file present with its recorded
sha256) before it is used; a damaged entry is dropped and the step runs again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

ENTRY_FILE = "entry.json"
FILES_DIR = "files"
_PACKAGE = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """`<kokoro-opt cache>/recipes` (KOKORO_OPT_HOME or the XDG cache folder)."""
    from kokoro_opt.store import cache_dir

    return cache_dir() / "recipes"


def step_key(material: dict[str, Any]) -> str:
    """The cache key: sha256 of `material` as canonical JSON."""
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=64)
def code_fingerprint(parts: tuple[str, ...]) -> str:
    """sha256 over the kokoro-opt source a step runs: each module named in `parts` (dotted,
    `kokoro_opt....`) with every kokoro_opt module it imports, directly or not (imports inside
    functions included), plus data files or folders named by a path relative to kokoro_opt/
    (`data/calibration`). Unrelated modules can change without invalidating the step."""
    digest = hashlib.sha256()
    files: set[Path] = set()
    for part in parts:
        if part.startswith("kokoro_opt."):
            files.update(_module_closure(part))
        else:
            target = _PACKAGE / part
            if target.is_file():
                files.add(target)
            elif target.is_dir():
                files.update(
                    p
                    for p in target.rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
                )
    for path in sorted(files):
        digest.update(str(path.relative_to(_PACKAGE)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


_NOT_FOLLOWED = frozenset(
    {"kokoro_opt.recipe.steps", "kokoro_opt.recipe.schema", "kokoro_opt.recipe.runner"}
)
"""The step registry and runner import every step lazily; following them would make each
step depend on all of kokoro-opt. Their effect on outputs is through the modules named."""


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    if not parts:
        return _PACKAGE / "__init__.py"
    rel = Path(*parts)
    for candidate in (_PACKAGE / rel.with_suffix(".py"), _PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_closure(root: str) -> set[Path]:
    import ast

    seen: set[str] = set()
    files: set[Path] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name in _NOT_FOLLOWED or not name.startswith("kokoro_opt"):
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)
        package = name if path.name == "__init__.py" else parent
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            if isinstance(node, ast.Import):
                todo.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                todo.append(base)
                todo.extend(f"{base}.{alias.name}" for alias in node.names)
    return files


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in sorted order)."""
    from kokoro_opt.graph.io import sha256_file

    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(str(p.relative_to(path)).encode() + b"\0" + sha256_file(p).encode())
    return digest.hexdigest()


class StepCache:
    """Entries of finished steps, keyed by `step_key`."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()

    def entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The entry for `key` if it is complete and its files are intact, else None."""
        folder = self.entry_dir(key)
        try:
            entry = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        files = entry.get("files")
        if not isinstance(files, dict):
            return None
        from kokoro_opt.graph.io import sha256_file

        for rel, info in files.items():
            path = folder / FILES_DIR / rel
            try:
                ok = path.stat().st_size == info["bytes"] and sha256_file(path) == info["sha256"]
            except (OSError, KeyError, TypeError):
                ok = False
            if not ok:
                self.drop(key)
                return None
        entry["folder"] = str(folder)
        return entry

    @contextlib.contextmanager
    def staging(self) -> Any:
        """A fresh folder for a running step (removed on exit unless committed)."""
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="step-", dir=tmp_root))
        (folder / FILES_DIR).mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(
        self, staging: Path, key: str, entry: dict[str, Any], *, replace: bool = False
    ) -> dict[str, Any]:
        """Record the staged files and move the folder into place (atomic rename).

        An intact entry already there (a concurrent run) is kept unless `replace` (--force:
        the fresh result, e.g. a new measurement, wins)."""
        from kokoro_opt.graph.io import sha256_file
        from kokoro_opt.recipe.artifacts import write_json_atomic

        files_dir = staging / FILES_DIR
        entry = dict(entry)
        entry["files"] = {
            str(p.relative_to(files_dir)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(files_dir.rglob("*"))
            if p.is_file()
        }
        write_json_atomic(staging / ENTRY_FILE, entry)
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a stale or concurrent entry: replace a damaged one, keep a good one
            if not replace and self.lookup(key) is not None:
                return {**json.loads((final / ENTRY_FILE).read_text()), "folder": str(final)}
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(staging, final)
        except OSError:
            if self.lookup(key) is None:
                raise
        entry["folder"] = str(final)
        return entry

    def drop(self, key: str) -> None:
        shutil.rmtree(self.entry_dir(key), ignore_errors=True)
