"""Format-level file readers: lines, TSV, CSV, JSONL, plain-text corpora and CoNLL columns.

These functions know file formats, not tasks: they return rows of strings together with the 1-based line number
each came from, and raise `DataError` (naming `path:line`) for anything malformed. Task-level meaning (which
column is the label, the label set) lives in `ftlab/tasks/readers.py`.

Lines are split on "\\n" only (a trailing "\\r" is dropped). Python's `str.splitlines` is deliberately not used:
it also splits on U+0085 (NEL), U+2028 and friends, which occur *inside* sentences of MR (latin-1 byte 0x85) and
of web text, and would silently produce extra rows.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Sequence

from ftlab.data.errors import DataError


def read_lines(path: str, encoding: str = "utf-8") -> list[str]:
    """All lines of a text file (.gz transparently), without line terminators; a UTF-8 BOM is dropped.

    Returns one string per line; line `i` (0-based) of the result is line `i + 1` of the file.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a valid gzip file ({e})") from None
    # "utf-8-sig" drops the byte-order mark that MRPC's GLUE TSVs start with.
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: bytes {raw[e.start : e.end]!r} are not valid {encoding} "
            f"(pass the file's encoding, e.g. encoding='latin-1')"
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline, not an empty last row
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def read_tsv(
    path: str, *, header: bool, num_columns: int | None = None, encoding: str = "utf-8"
) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """Tab-separated rows, split on tabs only (no quoting, as the GLUE files are written).

    Returns `(header_names or None, [(line_number, fields), ...])`. Every row must have the header's number of
    columns (or `num_columns` when given); otherwise `DataError` names `path:line`, expected and found counts.
    """
    lines = read_lines(path, encoding)
    names: list[str] | None = None
    start = 0
    if header:
        if not lines:
            raise DataError(f"{path}: empty file, expected a header line")
        names = lines[0].split("\t")
        start = 1
        if num_columns is not None and len(names) != num_columns:
            raise DataError(
                f"{path}:1: header has {len(names)} columns, expected {num_columns} (header: {names})"
            )
        num_columns = len(names)
    rows = []
    for i in range(start, len(lines)):
        fields = lines[i].split("\t")
        if num_columns is not None and len(fields) != num_columns:
            raise DataError(
                f"{path}:{i + 1}: expected {num_columns} tab-separated columns, found {len(fields)}: "
                f"{_clip(lines[i])!r}"
            )
        rows.append((i + 1, fields))
    return names, rows


def read_csv(path: str, *, encoding: str = "utf-8") -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV file with a header line (RFC 4180 quoting). Returns `(header, [(line_number, {col: value}), ...])`.

    The line number is the line on which the record starts (records may span lines inside quotes).
    """
    text = "\n".join(read_lines(path, encoding))
    reader = csv.reader(_LineCounter(text), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file, expected a header line") from None
    except csv.Error as e:
        raise DataError(f"{path}:1: malformed CSV header ({e})") from None
    if len(set(header)) != len(header):
        raise DataError(f"{path}:1: duplicate column names in header {header}")
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
        if not fields:
            continue  # csv yields [] for a blank line
        if len(fields) != len(header):
            raise DataError(
                f"{path}:{start}: expected {len(header)} CSV columns (header {header}), found {len(fields)}"
            )
        rows.append((start, dict(zip(header, fields, strict=True))))
    return header, rows


class _LineCounter:
    """Feeds csv.reader one "\\n"-split line at a time (csv's own line splitting would honour NEL etc.)."""

    def __init__(self, text: str):
        self._lines = iter(text.split("\n")) if text else iter(())

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._lines) + "\n"


def read_jsonl(path: str, *, encoding: str = "utf-8") -> list[tuple[int, dict]]:
    """One JSON object per line (blank lines skipped). Returns `[(line_number, object), ...]`."""
    out = []
    for i, line in enumerate(read_lines(path, encoding)):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, huge ints, deep nesting
            raise DataError(f"{path}:{i + 1}: invalid JSON ({e.__class__.__name__}: {e})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i + 1}: expected a JSON object per line, found {type(obj).__name__}")
        out.append((i + 1, obj))
    return out


def read_text(path: str, *, text_field: str = "text", encoding: str = "utf-8") -> list[str]:
    """Documents of a plain-text corpus for LM objectives.

    `.txt` / `.txt.gz` (or any other non-JSONL name): one document per line, empty lines skipped.
    `.jsonl` / `.jsonl.gz`: one object per line, the document is `obj[text_field]` (must be a string).
    """
    stem = path[:-3] if path.endswith(".gz") else path
    if stem.endswith(".jsonl"):
        docs = []
        for line, obj in read_jsonl(path, encoding=encoding):
            value = obj.get(text_field)
            if not isinstance(value, str):
                raise DataError(
                    f"{path}:{line}: expected a string field {text_field!r}, found "
                    f"{type(value).__name__ if text_field in obj else 'no such field'} (keys: {sorted(obj)})"
                )
            if value.strip():
                docs.append(value)
        return docs
    return [ln for ln in read_lines(path, encoding) if ln.strip()]


def read_conll(
    path: str, *, num_columns: int | None = None, encoding: str = "utf-8"
) -> list[tuple[int, list[list[str]]]]:
    """CoNLL column files: one token per line, whitespace-separated columns, blank line between sentences.

    `-DOCSTART-` lines (and the blank line after them) are skipped. Returns `[(first_line_number, rows), ...]`
    where `rows` holds each token's columns. With `num_columns`, a token line with another count is an error.
    """
    sentences: list[tuple[int, list[list[str]]]] = []
    current: list[list[str]] = []
    first = 0
    for i, line in enumerate(read_lines(path, encoding)):
        cols = line.split()
        if not cols:
            if current:
                sentences.append((first, current))
                current = []
            continue
        if cols[0] == "-DOCSTART-":
            if current:
                sentences.append((first, current))
                current = []
            continue
        if num_columns is not None and len(cols) != num_columns:
            raise DataError(
                f"{path}:{i + 1}: expected {num_columns} whitespace-separated columns, found {len(cols)}: "
                f"{_clip(line)!r}"
            )
        if not current:
            first = i + 1
        current.append(cols)
    if current:
        sentences.append((first, current))
    return sentences


def _clip(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n] + "..."


def check_columns(path: str, header: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Indices of `wanted` column names in `header`; `DataError` naming the missing ones otherwise."""
    missing = [w for w in wanted if w not in header]
    if missing:
        raise DataError(f"{path}:1: header {list(header)} lacks column(s) {missing}")
    return [list(header).index(w) for w in wanted]
