"""Regenerate the split files and the package-data copy of the corpus from `corpus.tsv`.

    python calibration/build.py           # write en/{train,heldout,smoke}.txt + package copy
    python calibration/build.py --check   # exit 1 if any generated file is out of date

`calibration/en/corpus.tsv` is the only file to edit by hand. A sentence's split is fixed in
that table; add new sentences with new ids and never move a held-out sentence to train.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kokoro_opt.calib.corpus import SPLITS, TABLE_NAME, read_corpus_table, split_texts  # noqa: E402

LANG = "en"
SOURCE = ROOT / "calibration" / LANG
PACKAGE_COPY = ROOT / "kokoro_opt" / "data" / "calibration" / LANG


def expected_files() -> dict[str, bytes]:
    """File name -> content of every generated file."""
    entries = read_corpus_table(SOURCE / TABLE_NAME)
    files = {
        f"{split}.txt": "".join(t + "\n" for t in split_texts(entries, split)) for split in SPLITS
    }
    out = {name: text.encode("utf-8") for name, text in files.items()}
    out[TABLE_NAME] = (SOURCE / TABLE_NAME).read_bytes()
    return out


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary readable data files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def counts_table() -> str:
    entries = read_corpus_table(SOURCE / TABLE_NAME)
    by_cat: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for e in entries:
        by_cat[e.category][e.split] += 1
    lines = ["| Category | Train | Held-out | Total |", "|---|---:|---:|---:|"]
    for cat, c in by_cat.items():
        lines.append(f"| {cat} | {c['train']} | {c['heldout']} | {c['train'] + c['heldout']} |")
    train = sum(c["train"] for c in by_cat.values())
    held = sum(c["heldout"] for c in by_cat.values())
    lines.append(f"| **all** | {train} | {held} | {train + held} |")
    smoke = sum(e.smoke for e in entries)
    return "\n".join(lines) + f"\n\nsmoke: {smoke} held-out sentences"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only check; write nothing.")
    args = parser.parse_args()
    stale = []
    for name, data in expected_files().items():
        targets = [PACKAGE_COPY / name] + ([] if name == TABLE_NAME else [SOURCE / name])
        for target in targets:
            if target.is_file() and target.read_bytes() == data:
                continue
            stale.append(target)
            if not args.check:
                write_atomic(target, data)
    for extra in sorted(set(PACKAGE_COPY.glob("*")) - {PACKAGE_COPY / n for n in expected_files()}):
        stale.append(extra)
        if not args.check:
            if extra.is_dir():
                shutil.rmtree(extra)
            else:
                extra.unlink()
    for path in stale:
        print(("out of date: " if args.check else "wrote: ") + str(path.relative_to(ROOT)))
    print(counts_table())
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
