"""What every pass shares: a strict config base, the run context and the result type.

A pass is a module with a `Config` (subclass of `PassConfig`) and a pure
`run(model, config, ctx) -> PassResult`: it never mutates its input model, never prints, and
reports what it did in `details` (JSON-serialisable) so the CLI and recipes can render it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from pydantic import BaseModel, ConfigDict

ProgressCallback = Callable[[str, int, int], None]
"""progress(task description, completed, total) — the CLI turns it into a Rich progress bar."""


class PassConfig(BaseModel):
    """Strict base: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


@dataclass
class PassContext:
    """Run-time services a pass may use; nothing in it changes the pass's result."""

    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kokoro-opt-")))
    progress: ProgressCallback | None = None
    threads: int | None = None

    def report(self, task: str, completed: int, total: int) -> None:
        if self.progress is not None:
            self.progress(task, completed, total)


@dataclass
class PassResult:
    model: onnx.ModelProto
    details: dict[str, Any] = field(default_factory=dict)
