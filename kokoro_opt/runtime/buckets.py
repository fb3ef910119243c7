"""Run static-shape bucket models (`kokoro-opt shapes bind`) behind the session interface.

A bucket folder holds one model per token length (32, 64, ... 512, the two pad tokens
included) and `buckets.json`, the index `shapes bind` writes. `BucketedSession` looks like an
onnxruntime session to the rest of the runtime (`run`, `get_inputs`, `get_outputs`,
`get_providers`): for each call it picks the smallest bucket the tokens fit, pads the token row
with the pad id (0) up to the bucket length, and runs that bucket's session (created on first
use, then kept).

Padding is safe only for buckets made with length masking (`length_mask: on` in the index): the
model then derives the real length from the tokens, masks attention, text convolutions and
LSTMs, and gives the pads zero duration, so the audio has exactly the dynamic model's length and
differs only by float noise. There is nothing to trim. Buckets without masking are refused.

    synth = load_bucketed(Path("buckets/"))       # a Synthesizer whose session is bucketed
    audio, sr = synth.synthesize("Hello.", voice="jf_gongitsune")
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kokoro_opt.errors import ModelFormatError, ModelNotFoundError, TextError, UserInputError
from kokoro_opt.runtime.tokenizer import PAD_ID

if TYPE_CHECKING:
    from kokoro_opt.runtime.synthesizer import Synthesizer

INDEX_FILE = "buckets.json"
INDEX_VERSION = 1
META_TOKENS = "kokoro_opt.static_tokens"
META_MASK = "kokoro_opt.length_mask"
META_PAD = "kokoro_opt.pad_id"


@dataclass(frozen=True)
class Bucket:
    """One static model: `tokens` is its fixed token length, pads included."""

    tokens: int
    path: Path
    length_mask: bool = True


def read_buckets(folder: str | Path) -> list[Bucket]:
    """The buckets listed in `folder/buckets.json`, shortest first.

    Raises ModelNotFoundError (no folder, no index, a listed file missing) and ModelFormatError
    (an index that is not ours, or a bucket without length masking).
    """
    root = Path(folder).expanduser()
    index = root / INDEX_FILE
    if not root.is_dir():
        raise ModelNotFoundError(
            f"Bucket folder {root} does not exist: create it with `kokoro-opt shapes bind`."
        )
    if not index.is_file():
        raise ModelNotFoundError(
            f"No {INDEX_FILE} in {root}: it is written by `kokoro-opt shapes bind MODEL -o {root}`."
        )
    try:
        data = json.loads(index.read_text())
        entries = data["buckets"]
        if int(data.get("version", 0)) != INDEX_VERSION:
            raise ValueError(f"version {data.get('version')}")
        buckets = [
            Bucket(int(e["tokens"]), root / str(e["file"]), bool(e.get("length_mask", False)))
            for e in entries
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(
            f"{index} is not a bucket index written by this kokoro-opt ({exc}); re-run "
            "`kokoro-opt shapes bind`."
        ) from None
    if not buckets:
        raise ModelFormatError(f"{index} lists no buckets; re-run `kokoro-opt shapes bind`.")
    for bucket in buckets:
        if not bucket.path.is_file():
            raise ModelNotFoundError(
                f"Bucket {bucket.tokens} ({bucket.path.name}) listed in {index} is missing; "
                "re-run `kokoro-opt shapes bind`."
            )
        if not bucket.length_mask:
            raise ModelFormatError(
                f"Bucket {bucket.tokens} in {index} was made without length masking, so padding "
                "would change the audio; bind again with length masking on."
            )
    return sorted(buckets, key=lambda b: b.tokens)


def write_index(folder: str | Path, buckets: Sequence[Bucket], **extra: Any) -> Path:
    """Write `folder/buckets.json` atomically (file names relative to `folder`)."""
    import os
    import tempfile

    root = Path(folder)
    data = {
        "version": INDEX_VERSION,
        "buckets": [
            {"tokens": b.tokens, "file": b.path.name, "length_mask": b.length_mask}
            for b in sorted(buckets, key=lambda b: b.tokens)
        ],
        **extra,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{INDEX_FILE}.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.write("\n")
        os.replace(tmp, root / INDEX_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return root / INDEX_FILE


def choose_bucket(buckets: Sequence[Bucket], n_tokens: int) -> Bucket:
    """The smallest bucket with room for `n_tokens` (pads included)."""
    if n_tokens < 1:
        raise TextError("No tokens to synthesize.")
    for bucket in buckets:
        if bucket.tokens >= n_tokens:
            return bucket
    largest = max(b.tokens for b in buckets)
    raise TextError(
        f"{n_tokens} tokens (pads included) do not fit the largest bucket ({largest}); split "
        "the text (the runtime's segmenter does) or bind a larger bucket."
    )


def pad_tokens(ids: np.ndarray, length: int) -> np.ndarray:
    """`ids` [1, n] padded with the pad id to [1, length]."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise UserInputError(f"Token ids must have shape [1, n], got {list(ids.shape)}.")
    n = ids.shape[1]
    if n > length:
        raise TextError(f"{n} tokens do not fit a bucket of {length}.")
    if n == length:
        return ids
    pad = np.full((1, length - n), PAD_ID, dtype=ids.dtype)
    return np.concatenate([ids, pad], axis=1)


class BucketedSession:
    """An onnxruntime-session look-alike that routes each call to the right bucket."""

    def __init__(
        self,
        buckets: Sequence[Bucket],
        *,
        provider: str = "cpu",
        threads: int | None = None,
        sessions: Mapping[int, Any] | None = None,
    ) -> None:
        if not buckets:
            raise UserInputError("No buckets given.")
        self.buckets = sorted(buckets, key=lambda b: b.tokens)
        self.provider = provider
        self.threads = threads
        self._sessions: dict[int, Any] = dict(sessions or {})
        self._lock = threading.Lock()
        self._tokens_name: str | None = None
        self.calls: dict[int, int] = {b.tokens: 0 for b in self.buckets}

    @classmethod
    def from_folder(
        cls, folder: str | Path, *, provider: str = "cpu", threads: int | None = None
    ) -> BucketedSession:
        return cls(read_buckets(folder), provider=provider, threads=threads)

    def session_for(self, bucket: Bucket) -> Any:
        """The bucket's session, created on first use."""
        with self._lock:
            session = self._sessions.get(bucket.tokens)
            if session is None:
                from kokoro_opt.runtime.session import create_session

                session = create_session(bucket.path, provider=self.provider, threads=self.threads)
                self._sessions[bucket.tokens] = session
            return session

    def _any_session(self) -> Any:
        if self._sessions:
            return next(iter(self._sessions.values()))
        return self.session_for(self.buckets[0])

    def _token_input(self) -> str:
        if self._tokens_name is None:
            from kokoro_opt.runtime.contract import ModelContract

            self._tokens_name = ModelContract.from_session(self._any_session()).tokens
        return self._tokens_name

    def run(
        self, output_names: Sequence[str] | None, feeds: Mapping[str, Any], run_options: Any = None
    ) -> list[Any]:
        """Pad the token row to the chosen bucket and run that bucket's model."""
        name = self._token_input()
        if name not in feeds:
            raise UserInputError(f"Feeds lack the token input {name!r}.")
        ids = np.asarray(feeds[name])
        bucket = choose_bucket(self.buckets, int(ids.shape[-1]))
        padded = dict(feeds)
        padded[name] = pad_tokens(ids, bucket.tokens)
        self.calls[bucket.tokens] += 1
        return self.session_for(bucket).run(output_names, padded, run_options)

    def get_inputs(self) -> Any:
        return self._any_session().get_inputs()

    def get_outputs(self) -> Any:
        return self._any_session().get_outputs()

    def get_providers(self) -> list[str]:
        return list(self._any_session().get_providers())


def load_bucketed(
    folder: str | Path,
    *,
    voices: Any = None,
    provider: str = "cpu",
    threads: int | None = None,
) -> Synthesizer:
    """A Synthesizer that runs the bucket models in `folder` (loading each on first use)."""
    from kokoro_opt.runtime.synthesizer import Synthesizer

    buckets = read_buckets(folder)
    first = buckets[0]
    synth = Synthesizer(first.path, voices=voices, provider=provider, threads=threads)
    synth.session = BucketedSession(  # type: ignore[assignment]
        buckets, provider=provider, threads=threads, sessions={first.tokens: synth.session}
    )
    return synth
