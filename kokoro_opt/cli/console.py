"""Shared Rich consoles for the CLI (stdout for results, stderr for errors and progress)."""

from __future__ import annotations

import os

from rich.console import Console

_width = int(os.environ["KOKORO_OPT_WIDTH"]) if os.environ.get("KOKORO_OPT_WIDTH") else None

console = Console(width=_width)
err_console = Console(stderr=True, width=_width)
