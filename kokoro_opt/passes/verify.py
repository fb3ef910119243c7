"""The fixed inputs that checks of graph rewrites use, and the shapes passes need.

`reference_feeds` turns fixed phoneme strings (no G2P needed) and one voice into model inputs;
`optimize --check` and `shapes bind` speak them with the unrewritten and the rewritten model
through the measuring core (`kokoro_opt.measure.reference.compare_models`), which reports the
largest sample difference and the DTW log-mel distance. Sample differences alone mislead for
Kokoro: the harmonic source integrates F0 into a phase over ~10^5 samples, so a 1e-6 change in
F0 shifts the phase and moves samples by 1e-2 while the sound is the same. The log-mel distance
is the number that says whether the audio changed (`NOISE_FLOOR_LOGMEL`).

`tensor_shapes` runs a model once on a short input to learn the shapes of chosen tensors where
ONNX shape inference cannot see them (behind com.microsoft ops).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from kokoro_opt.errors import KokoroOptError, UserInputError

# Fixed phoneme strings (misaki en-us output) so checks need no G2P: 11, 69 and 185 phonemes.
REFERENCE_PHONEMES: tuple[str, ...] = (
    "həlˈO ðˈɛɹ.",
    "ðə kwˈɪk bɹˈWn fˈɑks ʤˈʌmps ˈOvəɹ ðə lˈAzi dˈɔɡ nˌɪɹ ðə ɹˈɪvəɹ bˈæŋk.",
    "ɡɹˈæf ˌɑptəməzˈAʃən kæn mˌAk ɐ spˈiʧ mˈɑdᵊl fˈæstəɹ wɪðˈWt ʧˈAnʤɪŋ wˌʌt ɪt sˈɛz. "
    "wˌi mˈɛʒəɹ ˈɛvəɹi ɹˈiɹˌIt, kˈip ðə wˈʌnz ðæt hˈɛlp, ænd ɹˈIt dˌWn ðə nˈʌmbəɹz fɔɹ ðə "
    "wˈʌnz ðæt dˈu nˌɑt.",
)
PROBE_PHONEMES = "hˈI."
DEFAULT_VOICE = "jf_gongitsune"
# Log-mel distance between two renderings that differ only by float rounding: the same FP32
# model run at ORT_ENABLE_BASIC vs ORT_ENABLE_ALL gives 0.022-0.036 on REFERENCE_PHONEMES
# (the harmonic source turns 1e-7 changes into phase shifts). A rewrite at or under this is
# "within float noise".
NOISE_FLOOR_LOGMEL = 0.05


def reference_feeds(
    model: onnx.ModelProto | str | Path,
    *,
    phonemes: Sequence[str] = REFERENCE_PHONEMES,
    voice: str = DEFAULT_VOICE,
    speed: float = 1.0,
) -> list[dict[str, np.ndarray]]:
    """Model inputs for each phoneme string, in the dtypes and names the model wants."""
    from kokoro_opt.runtime.contract import ModelContract
    from kokoro_opt.runtime.tokenizer import PAD_ID, tokenize
    from kokoro_opt.runtime.voices import style_for

    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        proto = onnx.load(str(model), load_external_data=False)
    contract = ModelContract.from_onnx(proto)
    static_len = static_token_length(proto, contract.tokens)
    pack = _voice_pack(voice)
    feeds = []
    for text in phonemes:
        ids = tokenize(text)
        padded = [PAD_ID, *ids, PAD_ID]
        if static_len is not None:
            if len(padded) > static_len:
                raise UserInputError(
                    f"{len(ids)} phonemes do not fit this model's static length of "
                    f"{static_len} tokens (two are pads); use a larger bucket."
                )
            padded += [PAD_ID] * (static_len - len(padded))
        feeds.append(contract.feeds(padded, style_for(pack, len(ids)), speed))
    return feeds


def static_token_length(model: onnx.ModelProto, tokens_name: str) -> int | None:
    """The fixed token length of a statically bound model (None when it is dynamic)."""
    for vi in model.graph.input:
        if vi.name == tokens_name:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return None


def tensor_shapes(
    model: onnx.ModelProto, names: Sequence[str], *, threads: int | None = 2
) -> dict[str, list[int]]:
    """Shapes of `names` from one run on a very short input ({} when the model's input
    contract is not a Kokoro one, so callers fall back to what static inference knows)."""
    wanted = [n for n in dict.fromkeys(names) if n]
    if not wanted:
        return {}
    try:
        feeds = reference_feeds(model, phonemes=[PROBE_PHONEMES])
    except KokoroOptError:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_value_info(name, onnx.TypeProto()))
    session = _session(probe, threads)
    outs = session.run(wanted, feeds[0])
    return {n: list(np.shape(v)) for n, v in zip(wanted, outs, strict=True)}


def known_shapes(
    model: onnx.ModelProto, names: Sequence[str], *, threads: int | None = 2
) -> dict[str, list[Any]]:
    """Static shapes from ONNX inference, completed by one probe run for `names` it cannot
    fully see (unknown or symbolic dimensions)."""
    from kokoro_opt.graph.edit import inferred_shapes

    shapes: dict[str, list[Any]] = dict(inferred_shapes(model))
    unclear = [n for n in names if not all(isinstance(d, int) for d in shapes.get(n) or [None])]
    shapes.update(tensor_shapes(model, unclear, threads=threads))
    return shapes


def _session(model: onnx.ModelProto | str | Path, threads: int | None) -> Any:
    import onnxruntime as ort

    from kokoro_opt.runtime.session import session_options

    opts = session_options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=4)
def _voice_pack(voice: str) -> np.ndarray:
    from kokoro_opt.runtime.voices import VoiceLibrary

    return VoiceLibrary.default().get(voice)
