"""Every bad request gets the right 4xx with OpenAI's error shape; limits, auth and timeouts."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from kokoro_opt.server import Engine, ServerSettings
from kokoro_opt.server.client import StreamIntegrityError, stream_speech
from tests.server.conftest import running_server

GOOD = {"model": "kokoro", "input": "Hello there.", "voice": "jf_alpha"}


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and "\n" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("change", "status", "code", "param", "words"),
    [
        ({"input": ""}, 400, "invalid_input", "input", "empty"),
        ({"input": "   \n "}, 400, "invalid_input", "input", "empty"),
        ({"input": "?!..."}, 400, "invalid_input", "input", "Nothing speakable"),
        ({"input": "word " * 101}, 400, "invalid_input", "input", "limit is 500"),
        ({"voice": "alloy"}, 400, "invalid_voice", "voice", "Available: jf_alpha"),
        ({"voice": "jf_alpha*0.7+nobody"}, 400, "invalid_voice", "voice", "nobody"),
        ({"model": "whisper-1"}, 404, "model_not_found", "model", "does not exist"),
        ({"response_format": "aac"}, 400, "unsupported_format", "response_format", "wav, pcm"),
        ({"response_format": "ogg"}, 400, "unsupported_format", "response_format", "wav, pcm"),
        ({"speed": 3.0}, 400, "invalid_speed", "speed", "0.5 to 2.0"),
        ({"speed": 0.1}, 400, "invalid_speed", "speed", "out of range"),
        ({"speed": "fast"}, 400, "invalid_type", "speed", "a number"),
        ({"stream": "yes"}, 400, "invalid_type", "stream", "true or false"),
        ({"input": 42}, 400, "invalid_type", "input", "a string"),
        ({"lang": "xx"}, 400, "invalid_lang", "lang", "Supported"),
        ({"stream_format": "xml"}, 400, "unsupported_stream_format", "stream_format", "ndjson"),
        (
            {"stream_format": "ndjson", "response_format": "mp3"},
            400,
            "unsupported_format",
            "response_format",
            "PCM16",
        ),
        ({"instructions": "whisper"}, 400, "unsupported_parameter", "instructions", "voice"),
        ({"colour": "blue"}, 400, "unknown_field", "colour", "Allowed fields"),
    ],
)
def test_bad_field_values(
    server: str, change: dict, status: int, code: str, param: str, words: str
) -> None:
    error = _error(httpx.post(f"{server}/v1/audio/speech", json={**GOOD, **change}), status)
    assert error["code"] == code and error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]


@pytest.mark.parametrize("missing", ["model", "input", "voice"])
def test_missing_fields(server: str, missing: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != missing}
    error = _error(httpx.post(f"{server}/v1/audio/speech", json=body), 400)
    assert error["code"] == "missing_field" and error["param"] == missing
    assert f"Missing required field '{missing}'" in error["message"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"model": "kokoro", "input": ', "Malformed JSON"),
        (b"not json at all", "Malformed JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b"", "no JSON body"),
    ],
)
def test_malformed_json(server: str, content: bytes, words: str) -> None:
    response = httpx.post(
        f"{server}/v1/audio/speech", content=content, headers={"content-type": "application/json"}
    )
    error = _error(response, 400)
    assert error["code"] == "invalid_json" and words in error["message"]


def test_unknown_path_and_method(server: str) -> None:
    assert _error(httpx.get(f"{server}/v1/nothing"), 404)["code"] == "not_found"
    assert _error(httpx.get(f"{server}/v1/audio/speech"), 405)["code"] == "method_not_allowed"
    assert _error(httpx.get(f"{server}/v1/models/nope"), 404)["code"] == "model_not_found"


def test_rejections_are_counted(server: str) -> None:
    httpx.post(f"{server}/v1/audio/speech", json={**GOOD, "voice": "alloy"})
    status = httpx.get(f"{server}/status").json()["requests"]
    assert status["responses"]["400"] >= 1 and status["errors"]["invalid_voice"] >= 1


def test_api_key(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "s3cret-key"
    with running_server(engine, ServerSettings(api_key=key, warmup=False)) as url:
        assert httpx.get(f"{url}/health").status_code == 200  # health stays open
        for path in ("/status", "/metrics", "/v1/models", "/v1/audio/voices"):
            assert _error(httpx.get(f"{url}{path}"), 401)["code"] == "missing_api_key"
        wrong = {"Authorization": "Bearer nope"}
        response = httpx.get(f"{url}/status", headers=wrong)
        assert _error(response, 401)["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
        # The key is checked before the body: a wrong key with a broken body is still 401.
        response = httpx.post(f"{url}/v1/audio/speech", content=b"{", headers=wrong)
        assert _error(response, 401)["code"] == "invalid_api_key"
        right = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/status", headers=right).status_code == 200
        response = httpx.post(f"{url}/v1/audio/speech", json=GOOD, headers=right)
        assert response.status_code == 200 and response.content[:4] == b"RIFF"
        # The official client sends the key the same way.
        from openai import AuthenticationError, OpenAI

        client = OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(AuthenticationError):
            client.audio.speech.create(model="tts-1", voice="jf_alpha", input="Hi.")
        client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        assert client.audio.speech.create(model="tts-1", voice="jf_alpha", input="Hi.").content


def test_429_when_too_many_requests(engine: Engine) -> None:
    long_text = "The birch canoe slid on the smooth planks. " * 90  # about 3,900 characters
    settings = ServerSettings(max_concurrent=1, warmup=False)
    with running_server(engine, settings) as url:
        rejected = None
        # The held request can finish between the status check and the second request on a
        # fast machine; then try again (a few times at most).
        for attempt in range(5):
            holder: dict[str, httpx.Response] = {}
            body = {**GOOD, "input": f"Attempt {attempt}. {long_text}", "stream": False}

            def hold(body: dict = body, holder: dict = holder) -> None:
                holder["r"] = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)

            thread = threading.Thread(target=hold)
            thread.start()
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/status").json()["active_requests"] < 1:
                assert time.monotonic() < deadline and thread.is_alive(), "request never started"
                time.sleep(0.002)
            response = httpx.post(f"{url}/v1/audio/speech", json=GOOD)
            thread.join(120)
            assert holder["r"].status_code == 200
            if response.status_code == 429:
                rejected = response
                break
            assert response.status_code == 200, response.text
        assert rejected is not None, "never saw a 429 with one request in progress"
        error = _error(rejected, 429)
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
        assert int(rejected.headers["retry-after"]) >= 1
        # Once the slot is free, requests succeed again.
        assert httpx.post(f"{url}/v1/audio/speech", json=GOOD).status_code == 200


def test_load_shedding_refuses_what_the_sessions_cannot_keep_real_time(engine: Engine) -> None:
    from kokoro_opt.server import create_app
    from tests.server.conftest import serving

    app = create_app(engine, ServerSettings(warmup=False))
    state = app.state.kokoro
    long_text = "The birch canoe slid on the smooth planks. " * 90
    with serving(app) as url:
        # The sessions were just measured at 3 s of model time per second of audio (a machine
        # busy with other work, say): two sessions keep at most one stream in real time.
        for _ in range(24):
            state.telemetry.segment(infer_ms=3000.0, wait_ms=0.0, nonfinite=0, audio_s=1.0)
        status = httpx.get(f"{url}/status").json()
        assert status["limits"]["stream_capacity"] == 1
        assert status["requests"]["recent_rtf"] == pytest.approx(3.0)
        rejected = None
        for attempt in range(5):
            holder: dict[str, httpx.Response] = {}
            body = {**GOOD, "input": f"Attempt {attempt}. {long_text}", "stream": False}

            def hold(body: dict = body, holder: dict = holder) -> None:
                holder["r"] = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)

            thread = threading.Thread(target=hold)
            thread.start()
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/status").json()["active_requests"] < 1:
                assert time.monotonic() < deadline and thread.is_alive(), "request never started"
                time.sleep(0.002)
            response = httpx.post(f"{url}/v1/audio/speech", json=GOOD)
            thread.join(120)
            assert holder["r"].status_code == 200  # the stream already running is served
            if response.status_code == 429:
                rejected = response
                break
        assert rejected is not None, "never refused a second stream"
        error = _error(rejected, 429)
        assert error["code"] == "overloaded" and "fall behind real time" in error["message"]
        assert int(rejected.headers["retry-after"]) >= 1


def test_timeout_is_504_or_a_cut_stream(engine: Engine) -> None:
    """With a timeout shorter than any synthesis, every kind of response fails cleanly.
    (Each request has its own text: a first segment cached by an earlier one needs no model.)"""
    settings = ServerSettings(timeout_s=0.001, warmup=False)
    with running_server(engine, settings) as url:
        response = httpx.post(f"{url}/v1/audio/speech", json={**GOOD, "stream": False})
        error = _error(response, 504)
        assert error["type"] == "timeout_error" and "raise --timeout" in error["message"]
        # A WAV stream cannot carry an error after its header: the connection is cut, so the
        # client sees an incomplete transfer rather than a short "complete" file.
        with pytest.raises(httpx.RemoteProtocolError):
            body = {**GOOD, "input": "A second text."}
            with httpx.stream("POST", f"{url}/v1/audio/speech", json=body) as stream:
                for _ in stream.iter_raw():
                    pass
        # A record stream ends with an error record.
        with pytest.raises(StreamIntegrityError, match="No audio within"):
            stream_speech(url, "A third text.", voice="jf_alpha")
        status = httpx.get(f"{url}/status").json()
        assert status["active_requests"] == 0 and status["requests"]["errors"]["timeout"] >= 3


def test_bad_settings_are_rejected() -> None:
    from kokoro_opt.errors import UserInputError

    for kwargs, words in [
        ({"max_concurrent": 0}, "max-concurrent must be a whole number of at least 1"),
        ({"timeout_s": 0}, "timeout must be a positive number"),
        ({"primer_ms": 5000}, "primer-ms must be from 0 to 1000"),
        ({"api_key": "  "}, "API key is empty"),
        ({"self_bench_interval_s": -1}, "self-bench-interval"),
    ]:
        with pytest.raises(UserInputError, match=words):
            ServerSettings(**kwargs)
