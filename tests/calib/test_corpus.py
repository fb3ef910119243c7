"""The shipped English corpus: sizes, splits, coverage, and the package-data copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kokoro_opt.calib import corpus
from kokoro_opt.calib.corpus import (
    SPLITS,
    TABLE_NAME,
    CorpusEntry,
    corpus_dir,
    corpus_path,
    package_corpus_dir,
    read_corpus_table,
    split_texts,
)
from kokoro_opt.errors import CorpusError

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = REPO / "calibration" / "en"

# misaki's US phoneme inventory (misaki.en.US_VOCAB) as it reaches Kokoro: the flap ɾ is written
# T and the glottal stop ʔ becomes t, so those two never appear in G2P output.
US_PHONEMES = set("AIOWYbdfhijklmnpstuvwzæðŋɑɔəɛɜɡɪɹʃʊʌʒʤʧθᵊᵻT")


@pytest.fixture(scope="module")
def entries() -> list[CorpusEntry]:
    return read_corpus_table()


def test_sizes_and_splits(entries: list[CorpusEntry]) -> None:
    train = split_texts(entries, "train")
    heldout = split_texts(entries, "heldout")
    smoke = split_texts(entries, "smoke")
    assert len(entries) >= 300
    assert len(heldout) >= 60 and len(train) >= 240
    assert 3 <= len(smoke) <= 8 and set(smoke) <= set(heldout)
    assert not set(train) & set(heldout), "a held-out sentence is also in train"
    assert len({e.text for e in entries}) == len(entries), "duplicate sentences"


def test_heldout_is_stratified(entries: list[CorpusEntry]) -> None:
    categories = {e.category for e in entries}
    assert len(categories) >= 8
    for category in categories:
        rows = [e for e in entries if e.category == category]
        held = sum(e.split == "heldout" for e in rows)
        assert held >= 1 and 0.1 <= held / len(rows) <= 0.35, (category, held, len(rows))


@pytest.mark.parametrize("split", SPLITS)
def test_split_files_match_the_table(entries: list[CorpusEntry], split: str) -> None:
    lines = corpus_path(split).read_text(encoding="utf-8").splitlines()
    assert lines == split_texts(entries, split), "run: python calibration/build.py"


def test_package_copy_equals_checkout() -> None:
    packaged = package_corpus_dir("en")
    names = sorted(p.name for p in packaged.iterdir())
    assert names == sorted([TABLE_NAME] + [f"{s}.txt" for s in SPLITS])
    for name in names:
        assert (packaged / name).read_bytes() == (CHECKOUT / name).read_bytes(), (
            f"kokoro_opt/data/calibration/en/{name} drifted; run: python calibration/build.py"
        )


def test_corpus_path_prefers_checkout_then_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert corpus_dir() == CHECKOUT
    # As installed from a wheel: no checkout around the package.
    monkeypatch.setattr(corpus, "_REPO_ROOT", Path("/nonexistent/site-packages"))
    assert corpus_dir() == package_corpus_dir("en")
    assert corpus_path("heldout").parent == package_corpus_dir("en")


def test_unknown_split_and_language() -> None:
    with pytest.raises(CorpusError, match="Unknown corpus split 'dev'. Available: train"):
        corpus_path("dev")
    with pytest.raises(CorpusError, match="No shipped corpus for language 'fr'"):
        corpus_path("train", lang="fr")


def test_readme_counts_match_table(entries: list[CorpusEntry]) -> None:
    readme = (REPO / "calibration" / "README.md").read_text(encoding="utf-8")
    rows = dict(
        (m[0], (int(m[1]), int(m[2]), int(m[3])))
        for m in re.findall(r"^\| \**([a-z]+)\** \| (\d+) \| (\d+) \| (\d+) \|$", readme, re.M)
    )
    expected = {"all": (0, 0, 0)}
    for e in entries:
        tr, he, _ = expected.get(e.category, (0, 0, 0))
        expected[e.category] = (tr + (e.split == "train"), he + (e.split == "heldout"), 0)
    expected = {k: (tr, he, tr + he) for k, (tr, he, _) in expected.items() if k != "all"}
    expected["all"] = (
        sum(v[0] for v in expected.values()),
        sum(v[1] for v in expected.values()),
        len(entries),
    )
    assert rows == expected
    assert "CC0-1.0" in readme


def test_content_covers_the_required_kinds(entries: list[CorpusEntry]) -> None:
    def texts(category: str) -> str:
        return "\n".join(e.text for e in entries if e.category == category)

    numbers = texts("numbers")
    for label, pattern in {
        "ordinal": r"\d(?:st|nd|rd|th)\b",
        "year": r"\b(?:1[6-9]|20)\d\d\b",
        "money": r"[$£€]\d",
        "decimal": r"\d\.\d",
        "percent": r"\d%",
        "phone": r"\d{3}-\d{4}",
        "time": r"\d:\d\d",
    }.items():
        assert re.search(pattern, numbers), label
    abbreviations = texts("abbreviations")
    for token in ("Dr.", "Mr.", "Mrs.", "etc.", "U.S.", "NASA", "e.g.", "vs."):
        assert token in abbreviations, token
    assert all(t.endswith("?") for t in texts("questions").splitlines())
    assert all(t.endswith("!") for t in texts("exclamations").splitlines())
    short = [e for e in entries if len(e.text.split()) <= 3]
    assert len(short) >= 30
    assert sum(len(e.text) >= 250 for e in entries) >= 20
    assert sum(len(e.text) >= 350 for e in entries) >= 5


def test_phoneme_inventory_and_lengths(entries: list[CorpusEntry]) -> None:
    from kokoro_opt.runtime.g2p import get_g2p

    g2p = get_g2p("en-us")
    lengths: dict[str, int] = {}
    seen: set[str] = set()
    for e in entries:
        phonemes = g2p.phonemize(e.text)
        lengths[e.id] = len(phonemes)
        if e.split == "train":
            seen |= set(phonemes)
    assert US_PHONEMES - seen == set(), "train split misses these phonemes"
    assert max(lengths.values()) <= 510, "every sentence must fit one model call"
    assert max(lengths.values()) >= 380, "long sentences up to about 400 phonemes"
    held = [lengths[e.id] for e in entries if e.split == "heldout"]
    assert min(held) < 10 and max(held) > 300, "held-out spans short and long"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id\ttext\n", "the header must be"),
        ("id\tsplit\tcategory\tsmoke\ttext\nx1\tdev\tshort\t0\tHi.\n", "split must be"),
        ("id\tsplit\tcategory\tsmoke\ttext\nx1\ttrain\tshort\t1\tHi.\n", "must come from the held"),
        (
            "id\tsplit\tcategory\tsmoke\ttext\nx1\ttrain\tshort\t0\tHi.\nx1\ttrain\ts\t0\tYo.\n",
            "duplicate id",
        ),
        ("id\tsplit\tcategory\tsmoke\ttext\nx1\ttrain\tshort\tHi.\n", "expected 5"),
        ("id\tsplit\tcategory\tsmoke\ttext\nx1\ttrain\tshort\t0\t \n", "must not be empty"),
    ],
)
def test_bad_corpus_table(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "corpus.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        read_corpus_table(path)


def test_missing_corpus_table(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus_table(tmp_path / "nope.tsv")
