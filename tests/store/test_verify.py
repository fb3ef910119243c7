"""Verified loads: a cached model whose bytes changed is refused, whatever preserved its mtime;
`verify_all` and `repair` find and fix it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kokoro_opt.errors import IntegrityError, UserInputError
from kokoro_opt.store import (
    list_models,
    register_model,
    repair,
    resolve_model,
    verified_sha256,
    verify_all,
    verify_model,
)
from kokoro_opt.store import verify as verify_module


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path, where: str) -> None:
    """Flip one bit of the byte at the start, the middle or the end of `path`, then put the
    old mtime back (as rsync -t, cp -p or a careful tool would)."""
    before = path.stat()
    offset = {"header": 0, "weights": before.st_size // 2, "end": before.st_size - 1}[where]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        old = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([old[0] ^ 0x01]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size


@pytest.fixture
def cached(kokoro_home: Path, synthetic_fp32: Path) -> Path:
    return register_model(str(synthetic_fp32), "tiny")


def test_registering_records_a_fingerprint_so_the_first_load_is_quick(cached: Path) -> None:
    done = verify_model(cached)
    assert done.method == "fingerprint" and done.sha256 == _sha(cached)
    assert done.size_bytes == cached.stat().st_size
    assert resolve_model("tiny") == cached
    assert verified_sha256(cached) == _sha(cached)
    assert verify_model(cached, full=True).method == "sha256"


@pytest.mark.parametrize("where", ["header", "weights", "end"])
def test_a_flipped_byte_anywhere_is_refused_with_one_line(cached: Path, where: str) -> None:
    good = _sha(cached)
    flip_byte(cached, where)
    with pytest.raises(IntegrityError) as info:
        resolve_model("tiny")
    message = str(info.value)
    assert "\n" not in message
    assert str(cached) in message and good in message and _sha(cached) in message
    assert "kokoro-opt model pull --repair" in message
    with pytest.raises(IntegrityError):  # a path into the cache is checked too
        resolve_model(str(cached))


def test_ctime_catches_an_edit_outside_the_sampled_blocks(
    kokoro_home: Path, synthetic_fp32: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make the sample a real sample (the synthetic model is small enough to be hashed whole).
    monkeypatch.setattr(verify_module, "_WHOLE_BELOW", 0)
    monkeypatch.setattr(verify_module, "_EDGE", 1024)
    monkeypatch.setattr(verify_module, "_BLOCK", 16)
    monkeypatch.setattr(verify_module, "_SAMPLES", 4)
    path = register_model(str(synthetic_fp32), "tiny")
    size = path.stat().st_size
    before = verify_module.sample_sha256(path, size)
    flip_byte(path, "weights")  # the middle: in no sampled block with these settings
    assert verify_module.sample_sha256(path, size) == before
    with pytest.raises(IntegrityError, match="is damaged"):
        verify_model(path)


def test_the_block_sample_catches_an_edit_where_ctime_is_not_kept(cached: Path) -> None:
    flip_byte(cached, "header")
    # As on a file system that does not keep ctime: the stamp's stat fields still match.
    stamp_file = cached.parent / verify_module.STAMP_DIR / "tiny.json"
    stamp = json.loads(stamp_file.read_text())
    st = cached.stat()
    stamp.update(ctime_ns=st.st_ctime_ns, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
    stamp_file.write_text(json.dumps(stamp))
    with pytest.raises(IntegrityError):
        verify_model(cached)


def test_a_touched_but_unchanged_file_is_hashed_once_then_quick(cached: Path) -> None:
    os.utime(cached)  # new mtime and ctime, same bytes
    assert verify_model(cached).method == "sha256"
    assert verify_model(cached).method == "fingerprint"


def test_wrong_size_and_missing_record(cached: Path) -> None:
    with open(cached, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(IntegrityError, match=r"bytes instead of"):
        verify_model(cached)
    cached.with_suffix(".json").unlink()
    with pytest.raises(IntegrityError, match="no usable record"):
        resolve_model("tiny")


def test_list_shows_what_was_verified(cached: Path, synthetic_int8: Path) -> None:
    other = register_model(str(synthetic_int8), "other")
    (other.parent / verify_module.STAMP_DIR / "other.json").unlink()
    states = {r["name"]: r["verified"] for r in list_models()}
    assert states == {"tiny": "verified", "other": "unverified"}
    flip_byte(cached, "end")
    assert {r["name"]: r["verified"] for r in list_models()}["tiny"] == "changed"


def test_verify_all_and_repair_from_the_source(cached: Path, synthetic_int8: Path) -> None:
    register_model(str(synthetic_int8), "other")
    good = _sha(cached)
    flip_byte(cached, "weights")
    checks = {c.name: c for c in verify_all()}
    assert not checks["tiny"].ok and "is damaged" in (checks["tiny"].error or "")
    assert checks["other"].ok and checks["other"].seconds is not None
    fixed = {c.name: c for c in repair()}
    assert fixed["tiny"].ok and fixed["tiny"].action == "registered again from its source"
    assert fixed["other"].ok and fixed["other"].action is None
    assert _sha(cached) == good and resolve_model("tiny") == cached


def test_repair_without_a_good_source_says_what_to_do(
    kokoro_home: Path, synthetic_fp32: Path, tmp_path: Path
) -> None:
    source = tmp_path / "mine.onnx"
    source.write_bytes(synthetic_fp32.read_bytes())
    path = register_model(str(source), "mine")
    source.unlink()
    flip_byte(path, "end")
    (check,) = repair()
    assert not check.ok and check.action is not None
    assert (
        check.action.startswith("cannot repair") and "model pull PATH --name mine" in check.action
    )


def test_policy_full_hashes_every_load(cached: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOKORO_OPT_VERIFY", "full")
    assert verify_model(cached).method == "sha256"
    assert verify_model(cached).method == "sha256"
    monkeypatch.setenv("KOKORO_OPT_VERIFY", "sometimes")
    with pytest.raises(UserInputError, match="KOKORO_OPT_VERIFY='sometimes'"):
        verify_model(cached)
