"""Format-level readers: plain-text corpora (txt, txt.gz, JSONL), line splitting, CSV and CoNLL details."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from ftlab.data import DataError, read_text
from ftlab.data.readers import read_conll, read_csv, read_lines

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_read_text_formats(tmp_path):
    (tmp_path / "a.txt").write_bytes("first doc\n\n  \nsecond\x85doc\r\nthird\n".encode())
    assert read_text(str(tmp_path / "a.txt")) == ["first doc", "second\x85doc", "third"]
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress("ünï\n\ncode\n".encode()))
    assert read_text(str(tmp_path / "b.txt.gz")) == ["ünï", "code"]
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n{"text": ""}\n')
    assert read_text(str(tmp_path / "c.jsonl")) == ["one", "two"]
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n')
    assert read_text(str(tmp_path / "d.jsonl"), text_field="body") == ["x"]
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected a string field 'text'"):
        read_text(str(tmp_path / "d.jsonl"))
    (tmp_path / "e.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a valid gzip"):
        read_text(str(tmp_path / "e.txt.gz"))
    with pytest.raises(DataError, match="file not found"):
        read_text(str(tmp_path / "missing.txt"))


@pytest.mark.skipif(not (DATA / "imdb" / "unsup.txt.gz").is_file(), reason="staged IMDB not found")
def test_read_text_imdb_unsup():
    docs = read_text(str(DATA / "imdb" / "unsup.txt.gz"))
    assert len(docs) == 50000 and docs[0].startswith("I admit, the great majority")


def test_read_lines_only_splits_on_newline(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_bytes("\ufeffa\u2028b\tc\r\nd\x0be\n".encode())
    assert read_lines(str(p)) == ["a\u2028b\tc", "d\x0be"]


def test_read_csv_and_conll(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text('a,b\n1,"x\ny"\n\n2,3\n4\n')
    with pytest.raises(DataError, match=r"x\.csv:6: expected 2 CSV columns"):
        read_csv(str(p))
    p.write_text('a,b\n1,"x\ny"\n2,3\n')
    assert read_csv(str(p)) == (["a", "b"], [(2, {"a": "1", "b": "x\ny"}), (4, {"a": "2", "b": "3"})])
    c = tmp_path / "c.txt"
    c.write_text("-DOCSTART- -X- -X- O\n\nA x y O\nB x y B-PER\n\n\nC x y O\n")
    assert read_conll(str(c)) == [
        (3, [["A", "x", "y", "O"], ["B", "x", "y", "B-PER"]]),
        (7, [["C", "x", "y", "O"]]),
    ]
