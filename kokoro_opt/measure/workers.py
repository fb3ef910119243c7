"""What a worker keeps between tasks: the ONNX Runtime sessions (or synthesizers) it used last,
by model content, thread count and session settings (at most `KEEP`, least recently used
dropped first, so a search over many variants does not pile up sessions). The ASR keeps its
own model per thread count (`quality.asr`). `clear()` drops them (the local executor calls it
when it closes)."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kokoro_opt.measure.executors import FileRef
    from kokoro_opt.runtime.synthesizer import Synthesizer

KEEP = 4
_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def synthesizer(model: FileRef, *, provider: str = "cpu", threads: int | None) -> Synthesizer:
    """The model's Synthesizer (with the installed voice library), made once per worker."""
    key = ("synth", model.sha256, provider, threads)
    if key not in _cache:
        from kokoro_opt.runtime.synthesizer import Synthesizer

        _keep(key, Synthesizer(model.open(), provider=provider, threads=threads))
    _cache.move_to_end(key)
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
        _keep(key, (sess, ModelContract.from_session(sess)))
    _cache.move_to_end(key)
    return _cache[key]


def _keep(key: tuple[Any, ...], value: Any) -> None:
    while len(_cache) >= KEEP:
        _cache.popitem(last=False)
    _cache[key] = value


def clear() -> None:
    _cache.clear()
