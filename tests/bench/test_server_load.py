"""The server load driver against a real server on the synthetic model."""

from __future__ import annotations

from pathlib import Path

import pytest

from kokoro_opt.bench.server_load import drive
from kokoro_opt.errors import UserInputError
from kokoro_opt.server import Engine, ServerSettings
from tests.server.conftest import running_server

TEXTS = ["The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."]


def test_drive_measures_streams(synthetic_fp32: Path) -> None:
    engine = Engine.load(synthetic_fp32, sessions=1, threads=1)
    with running_server(engine, ServerSettings(warmup=False)) as url:
        report = drive(url, concurrency=2, duration_s=1.0, texts=TEXTS)
        keyed = drive(url, concurrency=1, duration_s=0.2, texts=TEXTS, api_key="ignored")
    assert report["errors"] == 0 and report["hangs"] == 0 and report["completed"] >= 2
    assert report["requests"] == report["completed"]
    assert 0 < report["ttfb_ms"]["p50"] <= report["ttfa_ms"]["p50"]
    # The tiny model makes a few ms of audio per sentence, so real-time checks belong to the
    # real-model measurements; here the numbers must only be consistent.
    assert report["x_realtime"]["count"] == report["completed"] and report["x_realtime"]["min"] > 0
    assert 0 <= report["underruns"] <= report["completed"]
    assert report["gap_ms"]["count"] >= report["completed"]  # several chunks per stream
    assert report["audio_s"] > 0 and report["audio_s_per_wall_s"] > 0
    assert report["server_before"]["pool_size"] == 1 and report["server_after"]["rss_mb"] > 0
    assert keyed["errors"] == 0  # a key the server does not ask for is ignored


def test_drive_counts_http_errors(synthetic_fp32: Path) -> None:
    engine = Engine.load(synthetic_fp32, sessions=1, threads=1)
    with running_server(engine, ServerSettings(api_key="k", warmup=False)) as url:
        report = drive(url, concurrency=1, duration_s=0.3, texts=TEXTS)
    assert report["errors"] == report["requests"] >= 1
    assert "HTTP 401" in report["error_samples"][0]
    assert report["server_before"] is None  # /status needs the key


def test_drive_backs_off_on_429(synthetic_fp32: Path) -> None:
    engine = Engine.load(synthetic_fp32, sessions=1, threads=1)
    long_texts = [" ".join([TEXTS[0]] * 30)]
    with running_server(engine, ServerSettings(max_concurrent=1, warmup=False)) as url:
        report = drive(url, concurrency=4, duration_s=2.0, texts=long_texts)
    assert report["errors"] == 0 and report["hangs"] == 0
    assert report["rejected"] >= 1 and report["completed"] >= 1
    assert report["requests"] == report["completed"] + report["rejected"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"duration_s": 0}, "duration"),
        ({"disconnect_fraction": 1.5}, "disconnect fraction"),
        ({"texts": []}, "non-empty text"),
    ],
)
def test_drive_rejects_bad_arguments(kwargs: dict, words: str) -> None:
    args = {"concurrency": 1, "duration_s": 1.0, "texts": TEXTS, **kwargs}
    with pytest.raises(UserInputError, match=words):
        drive("http://127.0.0.1:9", **args)
