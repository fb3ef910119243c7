"""Local OpenAI-compatible streaming TTS server built on the runtime.

    engine = Engine.load(model_path, sessions=1)
    app = create_app(engine, ServerSettings(api_key=None))

Heavy pieces (FastAPI, onnxruntime) load when these names are first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kokoro_opt.server.app import create_app
    from kokoro_opt.server.engine import Engine
    from kokoro_opt.server.settings import ServerSettings

__all__ = ["Engine", "ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from kokoro_opt.server.app import create_app

        return create_app
    if name == "Engine":
        from kokoro_opt.server.engine import Engine

        return Engine
    if name == "ServerSettings":
        from kokoro_opt.server.settings import ServerSettings

        return ServerSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
