"""ORT session factory: providers, options, and clear errors for missing or corrupt models."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import onnxruntime as ort
import pytest

from kokoro_opt.errors import (
    ModelFormatError,
    ModelNotFoundError,
    ProviderUnavailableError,
    UserInputError,
)
from kokoro_opt.runtime.session import (
    COREML_OPTIONS,
    available_providers,
    create_session,
    provider_chain,
    release_freed_memory,
    session_options,
)


def test_available_providers_reflect_this_build() -> None:
    have = available_providers()
    assert "cpu" in have
    full = set(ort.get_available_providers())
    assert ("cuda" in have) == ("CUDAExecutionProvider" in full)
    assert ("coreml" in have) == ("CoreMLExecutionProvider" in full)


def test_missing_provider_lists_the_available_ones() -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        provider_chain("coreml", ["cpu"], system="Linux")
    assert str(info.value).startswith(
        "Provider 'coreml' is not available in this onnxruntime build (available: cpu)."
    )
    with pytest.raises(ProviderUnavailableError, match=r"available: cpu, coreml\)"):
        provider_chain("cuda", ["cpu", "coreml"], system="Darwin")


def test_provider_chains() -> None:
    cpu = ("CPUExecutionProvider", {})
    assert provider_chain("cpu", ["cpu"]) == [cpu]
    assert provider_chain("CUDA", ["cpu", "cuda"]) == [("CUDAExecutionProvider", {}), cpu]
    mac = provider_chain("coreml", ["cpu", "coreml"], system="Darwin")
    assert mac == [("CoreMLExecutionProvider", COREML_OPTIONS), cpu]
    assert COREML_OPTIONS == {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"}
    assert provider_chain("auto", ["cpu"]) == [cpu]
    assert provider_chain("auto", ["cpu", "cuda"])[0][0] == "CUDAExecutionProvider"
    assert provider_chain("auto", ["cpu", "cuda", "coreml"], system="Darwin")[0][0] == (
        "CoreMLExecutionProvider"
    )


def test_unknown_provider_name() -> None:
    with pytest.raises(UserInputError, match="Unknown provider 'tpu'. Choose one of: cpu, cuda"):
        provider_chain("tpu", ["cpu"])


def test_session_options() -> None:
    opts = session_options(2)
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options(None).intra_op_num_threads == 0  # ORT's default
    spin = "session.intra_op.allow_spinning"
    assert opts.get_session_config_entry(spin) == "0"
    assert session_options(2, allow_spinning=True).get_session_config_entry(spin) == "1"
    for bad in (0, -3):
        with pytest.raises(UserInputError, match="threads"):
            session_options(bad)


def test_create_session_on_the_synthetic_model(synthetic_fp32: Path) -> None:
    session = create_session(synthetic_fp32, provider="cpu", threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert [i.name for i in session.get_inputs()] == ["tokens", "style", "speed"]
    assert create_session(synthetic_fp32, provider="auto").get_providers()[-1] == (
        "CPUExecutionProvider"
    )


def test_create_session_with_a_provider_this_build_lacks(synthetic_fp32: Path) -> None:
    missing = next(p for p in ("coreml", "cuda") if p not in available_providers())
    with pytest.raises(ProviderUnavailableError, match=f"Provider '{missing}' is not available"):
        create_session(synthetic_fp32, provider=missing)


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        create_session(tmp_path / "nope.onnx")
    with pytest.raises(ModelNotFoundError, match="is a folder"):
        create_session(tmp_path)


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_corrupt_models(tmp_path: Path, synthetic_fp32: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.onnx"
    if kind == "garbage":
        path.write_bytes(b"this is not an onnx model\n" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        data = synthetic_fp32.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError) as info:
        create_session(path)
    message = str(info.value)
    assert message.startswith(f"Cannot load model {path}") and "\n" not in message
    assert "[ONNXRuntimeError]" not in message


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(
    not Path("/proc/self/status").exists() or ctypes.util.find_library("c") is None,
    reason="needs Linux with glibc",
)
def test_release_freed_memory_returns_heap_pages_to_the_os() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc")
    # 200 MB of 64 KB heap blocks (under the mmap threshold), each touched; freeing all but the
    # last leaves them in the heap below a live block, where free() cannot give them back.
    blocks = [libc.malloc(64 * 1024) for _ in range(3200)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in blocks[:-1]:
        libc.free(block)
    before = _rss_mb()
    assert release_freed_memory() is True
    after = _rss_mb()
    libc.free(blocks[-1])
    assert before - after > 150, (before, after)
