"""The windowing options `speak` and `serve` share (`--split` renders segments in windows)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from kokoro_opt.runtime.windowed import WindowPlan

FirstWindow = Annotated[
    int, typer.Option(help="Frames (25 ms each) in the first window with --split.")
]
WindowContext = Annotated[
    int,
    typer.Option(
        help="Frames of input on each side of an approximate window with --split (the "
        "generator's receptive field is about 6; fewer makes first audio cheaper)."
    ),
]


def window_plan(policy: str, first: int, context: int) -> WindowPlan:
    """The plan `--window`, `--first-window` and `--window-context` describe (trailing pad
    beyond 12 frames after the last spoken one is not rendered)."""
    from kokoro_opt.runtime.windowed import WindowPlan

    return WindowPlan(policy, first=first, context=context, trail=12)  # type: ignore[arg-type]
