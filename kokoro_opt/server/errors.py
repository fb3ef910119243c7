"""HTTP errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure the server reports goes through `APIError`, so clients see one JSON shape with the
right status: 400 for a request that cannot be served as written (OpenAI's
`invalid_request_error`, validation errors included: FastAPI's 422 is turned into 400), 401 for a
missing or wrong API key, 404 for an unknown model or path, 429 when too many requests are
running, 503 while the server is not ready or no inference session frees up in time, 504 when
synthesis stalls past the request timeout, 500 for a bug.
"""

from __future__ import annotations

from typing import Any

from kokoro_opt.errors import KokoroOptError, LanguageError, TextError, UserInputError, VoiceError


class APIError(Exception):
    """An error response: HTTP status plus OpenAI-style error fields (message is one line)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, *, code: str, param: str | None = None) -> APIError:
    """A 400 `invalid_request_error`."""
    return APIError(400, message, code=code, param=param)


def from_domain(exc: KokoroOptError) -> APIError:
    """The HTTP error for a runtime error: user input -> 400 with the field it concerns, anything
    else -> 500."""
    if isinstance(exc, VoiceError):
        return bad_request(str(exc), code="invalid_voice", param="voice")
    if isinstance(exc, TextError):
        return bad_request(str(exc), code="invalid_input", param="input")
    if isinstance(exc, LanguageError):
        return bad_request(str(exc), code="invalid_lang", param="lang")
    if isinstance(exc, UserInputError):
        return bad_request(str(exc), code="invalid_value")
    return APIError(500, str(exc), type="server_error", code="synthesis_failed")


class SynthesisTimeout(APIError):
    """No audio (or no inference session) within the request timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(504, message, type="timeout_error", code="timeout")


class PoolBusy(APIError):
    """No inference session became free within the request timeout."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(
            503,
            message,
            type="server_busy_error",
            code="no_session_available",
            headers={"Retry-After": str(retry_after_s)},
        )
