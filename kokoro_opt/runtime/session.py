"""ONNX Runtime sessions: provider choice, thread settings, clear errors.

Providers are named `cpu`, `cuda` and `coreml` (`auto` picks the best this build has: CoreML on
macOS, then CUDA, then CPU). An accelerator provider always gets the CPU provider after it so
nodes it cannot take still run. Which providers exist depends on the onnxruntime build: CUDA only
in onnxruntime-gpu, CoreML only in macOS builds.
"""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kokoro_opt.errors import (
    ModelFormatError,
    ModelNotFoundError,
    ProviderUnavailableError,
    UserInputError,
)

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger(__name__)

PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
PROVIDER_CHOICES = (*PROVIDERS, "auto")
_AUTO_ORDER = ("coreml", "cuda", "cpu")

# CoreML EP options (onnxruntime >= 1.20): compile to an ML Program (the format that keeps fp32
# and runs on the Neural Engine, GPU and CPU) and let CoreML use every compute unit.
COREML_OPTIONS: dict[str, str] = {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"}

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")


def available_providers() -> list[str]:
    """Short names (`cpu`, `cuda`, `coreml`) of the providers this onnxruntime build has."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in have]


def normalize_provider(provider: str) -> str:
    """`cpu`, `cuda`, `coreml` or `auto` (case-insensitive), else UserInputError."""
    name = str(provider).strip().lower()
    if name not in PROVIDER_CHOICES:
        raise UserInputError(
            f"Unknown provider {provider!r}. Choose one of: {', '.join(PROVIDER_CHOICES)}."
        )
    return name


def provider_chain(
    provider: str, available: list[str], *, system: str | None = None
) -> list[tuple[str, dict[str, str]]]:
    """ORT provider list (name, options) for a short provider name, given what is available.

    Pure: `available` are short names, `system` is `platform.system()` (default: this one).
    """
    name = normalize_provider(provider)
    if name == "auto":
        name = next((p for p in _AUTO_ORDER if p in available), "cpu")
    if name not in available:
        raise ProviderUnavailableError(
            f"Provider {name!r} is not available in this onnxruntime build (available: "
            f"{', '.join(available) or 'none'}). {_install_hint(name)}"
        )
    system = platform.system() if system is None else system
    chain: list[tuple[str, dict[str, str]]] = []
    if name == "coreml":
        chain.append((PROVIDERS["coreml"], dict(COREML_OPTIONS) if system == "Darwin" else {}))
    elif name == "cuda":
        chain.append((PROVIDERS["cuda"], {}))
    chain.append((PROVIDERS["cpu"], {}))
    return chain


def session_options(
    threads: int | None = None, *, allow_spinning: bool = False
) -> ort.SessionOptions:
    """Session options: full graph optimization, sequential execution, `threads` intra-op threads
    (None: onnxruntime's default, one per physical core).

    Idle worker threads do not spin by default: spinning buys a few percent on an idle machine
    but costs far more when cores are shared (several sessions in a server pool, other
    processes); measured on 2 shared cores, FP32 Kokoro ran a sentence in 3.1 s without
    spinning against 4.0 s with it.
    """
    import onnxruntime as ort

    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise UserInputError(f"threads must be a whole number of at least 1, got {threads}.")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3  # errors only; ORT's warnings are not for our users
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return opts


def create_session(
    model_path: str | Path,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    allow_spinning: bool = False,
    model_bytes: bytes | None = None,
) -> ort.InferenceSession:
    """An InferenceSession for `model_path` on `provider` with `threads` intra-op threads
    (`model_bytes`: a serialized model to load instead of the file, named by `model_path`).

    Raises ModelNotFoundError (no such file), ModelFormatError (not a loadable ONNX model),
    ProviderUnavailableError (provider missing from this build or failing to start).
    """
    import onnxruntime as ort

    path = Path(model_path).expanduser()
    if not path.is_file():
        what = "is a folder, not a model file" if path.is_dir() else "does not exist"
        raise ModelNotFoundError(f"Model {path} {what}: give the path of an .onnx file.")
    chain = provider_chain(provider, available_providers())
    opts = session_options(threads, allow_spinning=allow_spinning)
    names = [name for name, _ in chain]
    options: list[dict[str, Any]] = [opt for _, opt in chain]
    try:
        session = ort.InferenceSession(
            model_bytes if model_bytes is not None else str(path),
            sess_options=opts,
            providers=names,
            provider_options=options,
        )
    except Exception as exc:  # ORT raises its own pybind exception types, all Exception
        raise ModelFormatError(
            f"Cannot load model {path}: {_ort_message(exc)}. Is it a complete ONNX file? "
            "Re-create or re-pull it."
        ) from None
    wanted = names[0]
    if wanted not in session.get_providers():
        short = next(k for k, v in PROVIDERS.items() if v == wanted)
        raise ProviderUnavailableError(
            f"Provider {short!r} failed to start for {path.name} (session runs on "
            f"{', '.join(session.get_providers())}). {_install_hint(short)}"
        )
    logger.debug("session for %s on %s", path.name, session.get_providers())
    release_freed_memory()
    return session


def release_freed_memory() -> bool:
    """Hand heap memory freed while loading back to the OS (glibc `malloc_trim`).

    ORT folds a model's `Cast(int8 weight) -> Mul(scale)` weights back to float at load; the
    int8 tensors and intermediates it frees stay in glibc's heap otherwise. Measured on the
    static INT8 model: resident memory after load 650 MB, 368 MB after the trim (FP32: 434 ->
    391 MB). The load's own peak is unchanged. Returns whether a trim ran (glibc only).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other libcs have no malloc_trim
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def _ort_message(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = _ORT_PREFIX.sub("", lines[0] if lines else type(exc).__name__)
    return text.rstrip(".")


def _install_hint(name: str) -> str:
    if name == "cuda":
        return "Install onnxruntime-gpu with a matching CUDA toolkit, or use the 'cpu' provider."
    if name == "coreml":
        return "CoreML needs onnxruntime on macOS; use the 'cpu' provider elsewhere."
    return "Use the 'cpu' provider."
