"""A real uvicorn server on 127.0.0.1 (free port, in a thread, always shut down) for the tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kokoro_opt.server import Engine, ServerSettings, create_app

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@contextlib.contextmanager
def running_server(engine: Engine, settings: ServerSettings | None = None) -> Iterator[str]:
    """Serve `create_app(engine, settings)` on a free loopback port; yields the base URL and
    stops the server (bounded) on exit, failing if it does not stop."""
    with serving(create_app(engine, settings or ServerSettings())) as url:
        yield url


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port (see `running_server`)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("the test server failed to start (see its log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(STOP_TIMEOUT_S)
            sock.close()
            raise RuntimeError(f"the test server did not start within {START_TIMEOUT_S} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT_S)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("the test server did not stop within its shutdown timeout")


@pytest.fixture(scope="module")
def engine(synthetic_fp32: Path) -> Engine:
    """Two single-threaded sessions of the synthetic model (a pool, as in production)."""
    return Engine.load(synthetic_fp32, sessions=2, threads=1, model_id="kokoro-synthetic")


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[str]:
    """A server with default settings but a small input limit (for the over-limit test)."""
    with running_server(engine, ServerSettings(max_chars=500)) as url:
        yield url
