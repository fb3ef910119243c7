"""What a worker keeps between tasks: one ONNX Runtime session (or synthesizer) per model file,
thread count and session settings. The ASR keeps its own model per thread count
(`quality.asr`). `clear()` drops them (the local executor calls it when it closes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kokoro_opt.measure.executors import FileRef
    from kokoro_opt.runtime.synthesizer import Synthesizer

_cache: dict[tuple[Any, ...], Any] = {}


def synthesizer(model: FileRef, *, provider: str = "cpu", threads: int | None) -> Synthesizer:
    """The model's Synthesizer (with the installed voice library), made once per worker."""
    key = ("synth", model.sha256, provider, threads)
    if key not in _cache:
        from kokoro_opt.runtime.synthesizer import Synthesizer

        _cache[key] = Synthesizer(model.open(), provider=provider, threads=threads)
    return _cache[key]


def session(
    model: FileRef, *, threads: int | None, config: tuple[tuple[str, str], ...] = ()
) -> tuple[Any, Any]:
    """A CPU InferenceSession of the model and its I/O contract, made once per worker."""
    key = ("session", model.sha256, threads, config)
    if key not in _cache:
        import onnxruntime as ort

        from kokoro_opt.runtime.contract import ModelContract
        from kokoro_opt.runtime.session import session_options

        opts = session_options(threads)
        for name, value in config:
            opts.add_session_config_entry(name, value)
        sess = ort.InferenceSession(
            str(model.open()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        _cache[key] = (sess, ModelContract.from_session(sess))
    return _cache[key]


def clear() -> None:
    _cache.clear()
