"""The server's model: /status shows its sha256, and a damaged cached model never starts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from kokoro_opt.errors import IntegrityError
from kokoro_opt.server import Engine, ServerSettings
from kokoro_opt.store import register_model
from tests.server.conftest import running_server
from tests.store.test_verify import flip_byte


def test_status_shows_the_model_sha256(kokoro_home: Path, synthetic_fp32: Path) -> None:
    cached = register_model(str(synthetic_fp32), "tiny")
    engine = Engine.load(cached, sessions=1, threads=1)
    assert engine.model_sha256 == hashlib.sha256(cached.read_bytes()).hexdigest()
    with running_server(engine, ServerSettings(warmup=False)) as url:
        model = httpx.get(f"{url}/status").json()["model"]
    assert model["sha256"] == engine.model_sha256 and model["path"] == str(cached)


def test_a_damaged_cached_model_does_not_load(kokoro_home: Path, synthetic_fp32: Path) -> None:
    cached = register_model(str(synthetic_fp32), "tiny")
    flip_byte(cached, "end")
    with pytest.raises(IntegrityError, match="is damaged"):
        Engine.load(cached, sessions=1, threads=1)
