"""Text corpora: the shipped English calibration/evaluation corpus, and loading any text corpus.

The shipped corpus (CC0-1.0, written for this project) lives in the repository's
`calibration/en/`: `corpus.tsv` is the source of truth (id, split, category, smoke flag, text)
and `train.txt`, `heldout.txt`, `smoke.txt` are generated from it by `calibration/build.py`.
An installed kokoro-opt carries an identical copy as package data in
`kokoro_opt/data/calibration/en/` (a test keeps the two equal). `corpus_path` prefers the
checkout and falls back to the package data, so both a clone and a wheel find it.

    corpus_path("heldout")                  # -> .../calibration/en/heldout.txt
    load_texts("train")                     # the shipped calibration sentences
    load_texts("my.csv", text_column="sentence")
    load_texts("owner/dataset")             # a Hugging Face dataset id: online only

The held-out split is for evaluation only; calibration must never read it.

Local files are read with `datasets`' packaged builders (`Dataset.from_text/csv/json/parquet`),
which never touch the network, into memory and a throw-away cache folder. A Hugging Face
dataset id is the only path that downloads; with `offline=True`, or `HF_DATASETS_OFFLINE` /
`HF_HUB_OFFLINE` set, it raises OfflineError before anything is imported or fetched.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.resources
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kokoro_opt.errors import CorpusError, OfflineError

logger = logging.getLogger(__name__)

SPLITS = ("train", "heldout", "smoke")
LANGUAGES = ("en",)
TABLE_NAME = "corpus.tsv"
TABLE_COLUMNS = ("id", "split", "category", "smoke", "text")
TEXT_SUFFIXES = (".txt", ".text")
TABULAR_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
SUFFIXES = TEXT_SUFFIXES + TABULAR_SUFFIXES

_REPO_ROOT = Path(__file__).resolve().parents[2]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?$")
_TRUE = {"1", "on", "yes", "true"}
_SPACES = re.compile(r"\s+")
_ALLOWED = (
    "a .txt (one text per line), .csv, .tsv, .jsonl, .json or .parquet file, "
    "a built-in split (train, heldout, smoke), or a Hugging Face dataset id (online only)"
)


@dataclass(frozen=True)
class CorpusEntry:
    """One row of the shipped corpus table."""

    id: str
    split: str
    category: str
    smoke: bool
    text: str


def checkout_corpus_dir(lang: str = "en") -> Path | None:
    """`calibration/<lang>/` of the source checkout this package runs from, if there is one."""
    folder = _REPO_ROOT / "calibration" / _check_lang(lang)
    if (_REPO_ROOT / "pyproject.toml").is_file() and (folder / TABLE_NAME).is_file():
        return folder
    return None


def package_corpus_dir(lang: str = "en") -> Path:
    """The copy of the corpus shipped as package data (`kokoro_opt/data/calibration/<lang>/`)."""
    root = importlib.resources.files("kokoro_opt").joinpath("data", "calibration", lang)
    return Path(str(root))


def corpus_dir(lang: str = "en") -> Path:
    """Folder of the shipped corpus: the checkout's `calibration/<lang>/`, else package data."""
    lang = _check_lang(lang)
    checkout = checkout_corpus_dir(lang)
    if checkout is not None:
        return checkout
    packaged = package_corpus_dir(lang)
    if (packaged / TABLE_NAME).is_file():
        return packaged
    raise CorpusError(
        f"The shipped {lang} corpus is missing: neither {_REPO_ROOT / 'calibration' / lang} nor "
        f"{packaged} holds {TABLE_NAME}. Reinstall kokoro-opt, or pass a corpus file instead."
    )


def corpus_path(split: str, *, lang: str = "en") -> Path:
    """Path of one split of the shipped corpus (`train`, `heldout` or `smoke`)."""
    if split not in SPLITS:
        raise CorpusError(f"Unknown corpus split {split!r}. Available: {', '.join(SPLITS)}.")
    path = corpus_dir(lang) / f"{split}.txt"
    if not path.is_file():
        raise CorpusError(
            f"The shipped corpus split {split!r} is missing ({path}). Reinstall kokoro-opt, or "
            "run `python calibration/build.py` in a checkout."
        )
    return path


def read_corpus_table(path: str | Path | None = None, *, lang: str = "en") -> list[CorpusEntry]:
    """Rows of a corpus table (default: the shipped `corpus.tsv`), validated.

    The file is tab-separated with the header `id split category smoke text`, no quoting
    (sentences keep their quote marks). Raises CorpusError naming the line of any bad row.
    """
    path = Path(path) if path is not None else corpus_dir(lang) / TABLE_NAME
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    except FileNotFoundError:
        raise CorpusError(f"Corpus table {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"Cannot read corpus table {path}: {exc}.") from None
    if not rows or tuple(rows[0]) != TABLE_COLUMNS:
        raise CorpusError(
            f"{path}: the header must be {' '.join(TABLE_COLUMNS)} (tab-separated); "
            f"found {' '.join(rows[0]) if rows else 'an empty file'}."
        )
    entries: list[CorpusEntry] = []
    seen: set[str] = set()
    for line_no, row in enumerate(rows[1:], start=2):
        where = f"{path}:{line_no}"
        if len(row) != len(TABLE_COLUMNS):
            raise CorpusError(f"{where}: expected {len(TABLE_COLUMNS)} tab-separated fields.")
        entry_id, split, category, smoke, text = row
        if split not in ("train", "heldout"):
            raise CorpusError(f"{where}: split must be train or heldout, not {split!r}.")
        if smoke not in ("0", "1"):
            raise CorpusError(f"{where}: smoke must be 0 or 1, not {smoke!r}.")
        if smoke == "1" and split != "heldout":
            raise CorpusError(f"{where}: smoke sentences must come from the held-out split.")
        if not text.strip() or not category or not entry_id:
            raise CorpusError(f"{where}: id, category and text must not be empty.")
        if entry_id in seen:
            raise CorpusError(f"{where}: duplicate id {entry_id!r}.")
        seen.add(entry_id)
        entries.append(CorpusEntry(entry_id, split, category, smoke == "1", text.strip()))
    return entries


def split_texts(entries: list[CorpusEntry], split: str) -> list[str]:
    """Texts of one split of a corpus table, in table order (`smoke` is a held-out subset)."""
    if split not in SPLITS:
        raise CorpusError(f"Unknown corpus split {split!r}. Available: {', '.join(SPLITS)}.")
    if split == "smoke":
        return [e.text for e in entries if e.smoke]
    return [e.text for e in entries if e.split == split]


def load_texts(
    source: str | Path,
    *,
    text_column: str | None = None,
    hub_split: str = "train",
    offline: bool | None = None,
) -> list[str]:
    """Non-empty texts of a corpus, in order, with whitespace runs collapsed.

    `source` is a built-in split name (`train`, `heldout`, `smoke`), a local `.txt` (one text
    per line), `.csv`, `.tsv`, `.jsonl`, `.json` or `.parquet` file, or a Hugging Face dataset
    id (`owner/name`, online only; `hub_split` picks its split). Tabular files use
    `text_column`, else a column named `text`, else their only string column. `offline=None`
    reads `HF_DATASETS_OFFLINE` / `HF_HUB_OFFLINE`.
    """
    if isinstance(source, str) and source in SPLITS:
        path = corpus_path(source)
    else:
        path = Path(source).expanduser()
    if path.exists():
        texts = _load_local(path, text_column)
        label = str(path)
    elif isinstance(source, str) and path.suffix.lower() not in SUFFIXES and _HUB_ID.match(source):
        texts = _load_hub(source, text_column=text_column, split=hub_split, offline=offline)
        label = f"{source!r} (split {hub_split!r})"
    else:
        raise CorpusError(f"Corpus file {str(source)!r} does not exist. Give {_ALLOWED}.")
    cleaned = [_SPACES.sub(" ", t.replace("\ufeff", "")).strip() for t in texts]
    cleaned = [t for t in cleaned if t]
    if not cleaned:
        raise CorpusError(
            f"Corpus {label} has no text: every line or row is empty. Give a corpus with at "
            "least one sentence."
        )
    return cleaned


def is_offline(offline: bool | None = None) -> bool:
    """`offline` if given, else whether HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set true."""
    if offline is not None:
        return offline
    return any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _check_lang(lang: str) -> str:
    if lang not in LANGUAGES:
        raise CorpusError(
            f"No shipped corpus for language {lang!r}. Available: {', '.join(LANGUAGES)}; "
            "pass your own corpus file for other languages."
        )
    return lang


def _load_local(path: Path, text_column: str | None) -> list[str]:
    if path.is_dir():
        raise CorpusError(f"Corpus {path} is a folder. Give {_ALLOWED}.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CorpusError(
            f"Corpus {path} has an unsupported type {suffix or '(no suffix)'!r}. Give {_ALLOWED}."
        )
    if suffix in TEXT_SUFFIXES and text_column not in (None, "text"):
        raise CorpusError(
            f"--text-column {text_column!r} applies to tabular corpora (.csv, .tsv, .jsonl, "
            f".json, .parquet); {path.name} is plain text with one sentence per line."
        )
    if path.stat().st_size == 0:
        raise CorpusError(
            f"Corpus {path} has no text: the file is empty. Give a corpus with at least one "
            "sentence."
        )
    import datasets

    with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="kokoro-opt-corpus-") as cache:
        common: dict[str, Any] = {"cache_dir": cache, "keep_in_memory": True}
        try:
            if suffix in TEXT_SUFFIXES:
                ds = datasets.Dataset.from_text(str(path), **common)
            elif suffix == ".csv":
                ds = datasets.Dataset.from_csv(str(path), **common)
            elif suffix == ".tsv":
                ds = datasets.Dataset.from_csv(
                    str(path), sep="\t", quoting=csv.QUOTE_NONE, **common
                )
            elif suffix in (".jsonl", ".json"):
                ds = datasets.Dataset.from_json(str(path), **common)
            else:
                ds = datasets.Dataset.from_parquet(str(path), **common)
        except Exception as exc:  # third-party readers: any failure means an unreadable file
            if "corresponds to no data" in str(exc):
                raise CorpusError(
                    f"Corpus {path} has no text: it has no rows. Give a corpus with at least "
                    "one sentence."
                ) from exc
            raise CorpusError(
                f"Cannot read corpus {path} as {suffix[1:]}: {_first_line(exc)}. Check that the "
                "file is UTF-8 and well formed."
            ) from exc
        if ds.num_rows == 0:
            raise CorpusError(
                f"Corpus {path} has no text: it is empty. Give a corpus with at least one sentence."
            )
        column = _pick_column(ds, text_column, str(path))
        return [str(v) for v in ds[column] if v is not None]


def _load_hub(
    source: str, *, text_column: str | None, split: str, offline: bool | None
) -> list[str]:
    if is_offline(offline):
        raise OfflineError(
            f"{source!r} is not a local file, and reading it as a Hugging Face dataset needs the "
            "network, but offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE). Give a local "
            ".txt/.csv/.tsv/.jsonl/.json/.parquet file, or go online."
        )
    import datasets

    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(source, split=split)
    except Exception as exc:  # network and hub failures come in many types
        name = type(exc).__name__
        if "NotFound" in name:
            raise CorpusError(
                f"No Hugging Face dataset {source!r} (or no split {split!r}): "
                f"{_first_line(exc)}. Check the id and the split."
            ) from exc
        if any(word in name for word in ("Connect", "Timeout", "Offline", "HTTP")):
            raise OfflineError(
                f"Could not reach the Hugging Face Hub for {source!r}: {_first_line(exc)}. "
                "Use a local corpus file, or retry when online."
            ) from exc
        raise CorpusError(f"Cannot load dataset {source!r}: {_first_line(exc)}.") from exc
    if not isinstance(ds, datasets.Dataset):
        raise CorpusError(f"Dataset {source!r} did not give one split; pick one with hub_split.")
    return [str(v) for v in ds[_pick_column(ds, text_column, repr(source))] if v is not None]


def _pick_column(ds: Any, text_column: str | None, label: str) -> str:
    columns = list(ds.column_names)
    if text_column is not None:
        if text_column not in columns:
            raise CorpusError(
                f"Corpus {label} has no column {text_column!r}. Columns: {', '.join(columns)}. "
                "Name the text column with --text-column."
            )
        column = text_column
    elif "text" in columns:
        column = "text"
    else:
        strings = [c for c in columns if _is_string_feature(ds.features[c])]
        if len(strings) != 1:
            raise CorpusError(
                f"Corpus {label} has no 'text' column. Columns: {', '.join(columns)}. "
                "Name the text column with --text-column."
            )
        column = strings[0]
    feature = ds.features[column]
    if not _is_string_feature(feature):
        dtype = getattr(feature, "dtype", type(feature).__name__)
        raise CorpusError(
            f"Column {column!r} of corpus {label} holds {dtype} values, not text. Name a text "
            "column with --text-column."
        )
    return column


def _is_string_feature(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars or error logs while we read: library code never writes to
    the terminal, and a reader failure becomes our own one-line CorpusError instead."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not was_disabled:
            datasets.enable_progress_bars()


def _first_line(exc: BaseException) -> str:
    """First line of the innermost cause (datasets wraps reader errors in a generic one)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__
