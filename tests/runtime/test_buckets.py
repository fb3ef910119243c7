"""Bucketed static models behind the session interface: choice, padding, audio, bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.errors import ModelFormatError, ModelNotFoundError, TextError, UserInputError
from kokoro_opt.passes import static_shapes
from kokoro_opt.passes.base import PassContext
from kokoro_opt.runtime.buckets import (
    INDEX_FILE,
    Bucket,
    BucketedSession,
    choose_bucket,
    pad_tokens,
    read_buckets,
    write_index,
)
from tests.passes.graphs import aligner_feeds, aligner_model, run


@pytest.fixture(scope="module")
def bucket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("buckets")
    model = aligner_model()
    onnx.save(model, folder / "dynamic.onnx")
    made = []
    for t in (16, 48):
        bound = static_shapes.run(model, static_shapes.Config(tokens=t), PassContext()).model
        path = folder / f"aligner.t{t}.onnx"
        onnx.save(bound, path)
        made.append(Bucket(t, path, True))
    write_index(folder, made, source="dynamic.onnx")
    return folder


def test_index_round_trip(bucket_dir: Path) -> None:
    buckets = read_buckets(bucket_dir)
    assert [b.tokens for b in buckets] == [16, 48]
    assert all(b.length_mask and b.path.is_file() for b in buckets)


def test_choose_smallest_bucket_that_fits(bucket_dir: Path) -> None:
    buckets = read_buckets(bucket_dir)
    assert choose_bucket(buckets, 5).tokens == 16
    assert choose_bucket(buckets, 16).tokens == 16
    assert choose_bucket(buckets, 17).tokens == 48
    with pytest.raises(TextError, match="do not fit the largest bucket \\(48\\)"):
        choose_bucket(buckets, 49)


def test_pad_tokens() -> None:
    ids = np.array([[0, 5, 7, 0]], np.int64)
    padded = pad_tokens(ids, 8)
    assert padded.tolist() == [[0, 5, 7, 0, 0, 0, 0, 0]] and padded.dtype == np.int64
    assert pad_tokens(ids, 4) is ids
    with pytest.raises(TextError):
        pad_tokens(ids, 3)
    with pytest.raises(UserInputError, match="shape \\[1, n\\]"):
        pad_tokens(np.zeros(4, np.int64), 8)


@pytest.mark.parametrize("n_phonemes", [3, 14, 40])
def test_bucketed_session_matches_dynamic_model(bucket_dir: Path, n_phonemes: int) -> None:
    session = BucketedSession.from_folder(bucket_dir, threads=1)
    feeds = aligner_feeds(n_phonemes)
    want = run(onnx.load(bucket_dir / "dynamic.onnx"), feeds)[0]
    (got,) = session.run(["audio"], feeds)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    expected = 16 if n_phonemes + 2 <= 16 else 48
    assert session.calls[expected] == 1
    assert [i.name for i in session.get_inputs()] == ["tokens", "style", "speed"]
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_missing_folder_and_index(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        read_buckets(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match=f"No {INDEX_FILE}"):
        read_buckets(tmp_path)


def test_bad_index_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / INDEX_FILE).write_text("{not json")
    with pytest.raises(ModelFormatError, match="not a bucket index"):
        read_buckets(tmp_path)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"version": 1, "buckets": []}))
    with pytest.raises(ModelFormatError, match="lists no buckets"):
        read_buckets(tmp_path)
    write_index(tmp_path, [Bucket(32, tmp_path / "gone.onnx", True)])
    with pytest.raises(ModelNotFoundError, match="gone.onnx"):
        read_buckets(tmp_path)


def test_bucket_without_length_mask_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.t32.onnx"
    path.write_bytes(b"placeholder")  # never loaded: the index check comes first
    write_index(tmp_path, [Bucket(32, path, False)])
    with pytest.raises(ModelFormatError, match="without length masking"):
        read_buckets(tmp_path)
