"""Shared plumbing for the commands that write models: output checks, progress, manifests.

Used by `optimize`, `shapes` and `quantize`; kept free of heavy imports so `kokoro-opt --help`
stays fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kokoro_opt.cli.console import err_console

MANIFEST_PACKAGES = ("kokoro-opt", "onnx", "onnxruntime", "onnxsim", "numpy")


def check_output_file(output: Path, model_path: Path, *, what: str = "model") -> Path:
    """The output path, checked before any work: not a folder, not the input, writable."""
    from kokoro_opt.errors import UserInputError

    out = output.expanduser().absolute()
    if out.is_dir():
        raise UserInputError(
            f"Output {out} is a folder; give a file path such as {out}/{what}.onnx."
        )
    if out.suffix != ".onnx":
        raise UserInputError(f"Output {out} must end in .onnx, such as {out.stem}.onnx.")
    if out.exists() and out.resolve() == model_path.resolve():
        raise UserInputError(f"Output {out} is the input model; write the result to another path.")
    check_writable_dir(out.parent)
    return out


def check_writable_dir(folder: Path) -> Path:
    """Create `folder` if needed and prove we can write in it."""
    from kokoro_opt.errors import UserInputError

    folder = folder.expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(
            f"Cannot write in {folder}: {existing} is a file, not a folder. Choose another path."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kokoro-opt.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserInputError(
            f"Cannot write in {folder}: {exc.strerror or exc}. Choose a writable folder."
        ) from None
    return folder


@contextmanager
def progress_bar() -> Iterator[Any]:
    """A transient Rich progress bar on stderr; yields a `report(task, done, total)` callback."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        tasks: dict[str, Any] = {}

        def report(task: str, completed: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = progress.add_task(task, total=max(total, 1))
            progress.update(tasks[task], completed=completed, total=max(total, 1))

        yield report


def versions(packages: tuple[str, ...] = MANIFEST_PACKAGES) -> dict[str, str]:
    """Installed versions of `packages` (for manifests)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_json_atomic(path: Path, data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON via a temp file in the same folder and os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def mb(n: int | float) -> str:
    return f"{n / 1e6:.1f} MB"
