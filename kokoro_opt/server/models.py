"""Request and response bodies of the HTTP API (pydantic)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr

STREAM_FORMATS = ("audio", "ndjson", "sse")


class SpeechRequest(BaseModel):
    """`POST /v1/audio/speech`, OpenAI's fields plus `stream`, `stream_format` and `lang`.

    Types are checked here; values (voice, model, limits, ranges) by the endpoint, which knows
    what the server has loaded.
    """

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    input: StrictStr
    voice: StrictStr
    speed: StrictFloat | StrictInt = 1.0
    response_format: StrictStr = "wav"
    stream: StrictBool = True
    stream_format: StrictStr = "audio"
    lang: StrictStr | None = None
    instructions: StrictStr | None = None


FIELDS = tuple(SpeechRequest.model_fields)


def model_card(model_id: str, *, created: int, root: str | None = None) -> dict[str, Any]:
    """One entry of `/v1/models` in OpenAI's shape."""
    card: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "kokoro-opt",
    }
    if root:
        card["root"] = root
    return card
