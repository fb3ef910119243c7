"""load_texts: every local file type through `datasets`, the built-in splits, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kokoro_opt.calib.corpus import corpus_path, is_offline, load_texts
from kokoro_opt.errors import CorpusError, OfflineError, UserInputError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_one_sentence_per_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.txt", "\ufeffHello there.\n\n   Two   spaces\there.  \n\nLast one!")
    assert load_texts(path) == ["Hello there.", "Two spaces here.", "Last one!"]
    assert load_texts(str(path)) == load_texts(path)


def test_builtin_splits() -> None:
    heldout = corpus_path("heldout").read_text(encoding="utf-8").splitlines()
    assert load_texts("heldout") == heldout
    assert len(load_texts("train")) >= 240
    assert set(load_texts("smoke")) <= set(heldout)


def test_csv_default_text_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", 'id,text\n1,"Hello, world."\n2,\n3,Bye.\n')
    assert load_texts(path) == ["Hello, world.", "Bye."]


def test_csv_named_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "sentence,note\nOne.,a\nTwo.,b\n")
    assert load_texts(path, text_column="sentence") == ["One.", "Two."]
    assert load_texts(path, text_column="note") == ["a", "b"]


def test_csv_single_string_column_is_picked(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "n,utterance\n1,First.\n2,Second.\n")
    assert load_texts(path) == ["First.", "Second."]


def test_tsv_keeps_quote_marks(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.tsv", 'id\ttext\n1\t"Run!" he said.\n2\tPlain.\n')
    assert load_texts(path) == ['"Run!" he said.', "Plain."]


def test_shipped_table_as_tsv() -> None:
    table = corpus_path("train").parent / "corpus.tsv"
    texts = load_texts(table)
    assert len(texts) >= 300 and set(load_texts("heldout")) <= set(texts)


def test_jsonl_and_json(tmp_path: Path) -> None:
    rows = [{"text": "Alpha.", "n": 1}, {"text": "Beta?", "n": 2}]
    jsonl = _write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_texts(jsonl) == ["Alpha.", "Beta?"]
    array = _write(tmp_path / "c.json", json.dumps([{"line": "Gamma!"}, {"line": "Delta."}]))
    assert load_texts(array, text_column="line") == ["Gamma!", "Delta."]


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["Parquet one.", None, "Two."], "k": [1, 2, 3]}), path)
    assert load_texts(path) == ["Parquet one.", "Two."]
    with pytest.raises(CorpusError, match="holds int64 values, not text"):
        load_texts(path, text_column="k")


def test_missing_file() -> None:
    with pytest.raises(CorpusError, match="Corpus file 'no/such/corpus.txt' does not exist"):
        load_texts("no/such/corpus.txt")
    with pytest.raises(CorpusError, match="does not exist"):
        load_texts(Path("/nonexistent/x.csv"))


@pytest.mark.parametrize("content", ["", "\n\n   \n", "\t\n"])
def test_empty_txt(tmp_path: Path, content: str) -> None:
    path = _write(tmp_path / "empty.txt", content)
    with pytest.raises(CorpusError, match="has no text"):
        load_texts(path)


def test_empty_tabular(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="has no text"):
        load_texts(_write(tmp_path / "e.csv", "text\n\n"))
    with pytest.raises(CorpusError, match="has no text"):
        load_texts(_write(tmp_path / "e.jsonl", json.dumps({"text": "  "}) + "\n"))


def test_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "a,b\nx,y\n")
    with pytest.raises(CorpusError, match=r"has no 'text' column. Columns: a, b.*--text-column"):
        load_texts(path)
    with pytest.raises(CorpusError, match=r"has no column 'sentence'. Columns: a, b"):
        load_texts(path, text_column="sentence")


def test_text_column_on_plain_text(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="applies to tabular corpora"):
        load_texts(_write(tmp_path / "c.txt", "Hi.\n"), text_column="sentence")


def test_unsupported_type_and_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"unsupported type '\.docx'.*\.parquet"):
        load_texts(_write(tmp_path / "c.docx", "Hi.\n"))
    with pytest.raises(CorpusError, match="is a folder"):
        load_texts(tmp_path)


def test_unreadable_files(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\xe9 au lait.\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="Cannot read corpus .* as txt"):
        load_texts(latin1)
    with pytest.raises(CorpusError, match="Cannot read corpus .* as jsonl"):
        load_texts(_write(tmp_path / "bad.jsonl", "{not json\n"))
    with pytest.raises(CorpusError, match="Cannot read corpus .* as parquet"):
        load_texts(_write(tmp_path / "bad.parquet", "not parquet"))


def test_errors_are_user_input_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as info:
        load_texts(tmp_path / "gone.txt")
    assert info.value.exit_code == 2


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The autouse fixture sets HF_DATASETS_OFFLINE=1; nothing is imported or fetched.
    with pytest.raises(OfflineError, match="'someone/sentences' is not a local file.*offline"):
        load_texts("someone/sentences", text_column="text")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(OfflineError):
        load_texts("plain_name", offline=True)


def test_is_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert not is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert is_offline()
    assert not is_offline(False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "TRUE")
    assert is_offline()
