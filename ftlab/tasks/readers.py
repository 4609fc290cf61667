"""Task-level readers: one file of a task -> example dicts with label indices.

Each reader is `fn(path, task, split) -> list[dict]`, named by `Task.reader`. Readers know which columns hold
the text and the label for a task's published format; the format-level parsing (line splitting, column counts,
decoding) is `ftlab/data/readers.py`. Every error is a `DataError` naming `path:line`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ftlab.data import readers as fmt
from ftlab.data.errors import DataError

if TYPE_CHECKING:
    from ftlab.tasks import Task

Example = dict[str, Any]

# MR has no official train/dev split. ftlab's: concatenate neg then pos lines, permute with
# np.random.default_rng(MR_SPLIT_SEED), the first round(10%) indices are dev, the rest train (each kept in file
# order). Gives 9596 train / 1066 dev.
MR_SPLIT_SEED = 0
MR_DEV_FRACTION = 0.1


def _label(task: Task, raw: str | None, where: str) -> int | float | None:
    if raw is None:
        return None
    if task.kind == "regression":
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{where}: regression label {raw!r} of task {task.name!r} is not a finite number")
        return value
    return task.label_index(raw, where)


def _example(task: Task, text_a: str, text_b: str | None, raw_label: str | None, where: str) -> Example:
    return {"text_a": text_a, "text_b": text_b, "label": _label(task, raw_label, where), "source": where}


def glue_tsv(path: str, task: Task, split: str) -> list[Example]:
    """A TSV with a header line; text and label columns found by name (`task.columns`).

    Test splits (names starting with "test") may lack the label column: their labels are None.
    """
    a_col, b_col, label_col = task.columns
    header, rows = fmt.read_tsv(path, header=True, encoding=task.encoding)
    wanted = [a_col] + ([b_col] if b_col else [])
    text_idx = fmt.check_columns(path, header, wanted)
    if label_col in header:
        label_idx = header.index(label_col)
    elif split.startswith("test"):
        label_idx = None
    else:
        raise DataError(
            f"{path}:1: header {header} lacks the label column {label_col!r} (task {task.name!r})"
        )
    out = []
    for line, fields in rows:
        out.append(
            _example(
                task,
                fields[text_idx[0]],
                fields[text_idx[1]] if b_col else None,
                None if label_idx is None else fields[label_idx],
                f"{path}:{line}",
            )
        )
    return out


def cola_tsv(path: str, task: Task, split: str) -> list[Example]:
    """CoLA: train/dev have no header and 4 columns (source, label, original mark, sentence); test is
    "index<TAB>sentence" with a header."""
    if split.startswith("test"):
        return glue_tsv(path, task, split)
    _, rows = fmt.read_tsv(path, header=False, num_columns=4, encoding=task.encoding)
    return [_example(task, f[3], None, f[1], f"{path}:{line}") for line, f in rows]


def label_text_tsv(path: str, task: Task, split: str) -> list[Example]:
    """Headerless "label<TAB>text" rows (the SentEval-preprocessed CR / SUBJ / MPQA files)."""
    _, rows = fmt.read_tsv(path, header=False, num_columns=2, encoding=task.encoding)
    return [_example(task, f[1], None, f[0], f"{path}:{line}") for line, f in rows]


def conll(path: str, task: Task, split: str) -> list[Example]:
    """CoNLL-2003 "token POS chunk NER" lines; sentences separated by blank lines; tags from the last column."""
    out = []
    for first, rows in fmt.read_conll(path, num_columns=4, encoding=task.encoding):
        tags = [task.label_index(r[-1], f"{path}:{first + i}") for i, r in enumerate(rows)]
        out.append({"tokens": [r[0] for r in rows], "tags": tags, "source": f"{path}:{first}"})
    return out


def mr_polarity(path: str, task: Task, split: str) -> list[Example]:
    """MR: `rt-polarity.pos` / `.neg`, one latin-1 sentence per line; split by the fixed seed above."""
    if not path.endswith(".pos"):
        raise DataError(f"{path}: expected the rt-polarity.pos file (its .neg sibling is read with it)")
    neg_path = path[: -len(".pos")] + ".neg"
    examples = []
    for p, label in ((neg_path, "neg"), (path, "pos")):
        for i, line in enumerate(fmt.read_lines(p, task.encoding)):
            examples.append(_example(task, line.strip(), None, label, f"{p}:{i + 1}"))
    n_dev = round(MR_DEV_FRACTION * len(examples))
    perm = np.random.default_rng(MR_SPLIT_SEED).permutation(len(examples))
    if split == "dev":
        keep = np.sort(perm[:n_dev])
    elif split == "train":
        keep = np.sort(perm[n_dev:])
    else:
        raise DataError(f"task {task.name!r} has no split {split!r}")
    return [examples[i] for i in keep]


def trec(path: str, task: Task, split: str) -> list[Example]:
    """TREC "COARSE:fine question ..." lines; the label is the coarse class."""
    out = []
    for i, line in enumerate(fmt.read_lines(path, task.encoding)):
        where = f"{path}:{i + 1}"
        head, sep, text = line.partition(" ")
        coarse, colon, _ = head.partition(":")
        if not sep or not colon:
            raise DataError(f"{where}: expected 'COARSE:fine question text', found {line[:80]!r}")
        out.append(_example(task, text.strip(), None, coarse, where))
    return out


# ------------------------------------------------------------------------------------------------ user formats


def _user_text(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be a string, found {type(value).__name__}")
    return value


def _user_label(task: Task, value: Any, where: str) -> int | float | None:
    if value is None:
        return None
    if task.kind == "regression":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise DataError(f"{where}: regression label {value!r} is not a number")
        return _label(task, str(value), where)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(
            f"{where}: label {value!r} must be a string or an integer (label set {list(task.label_names)})"
        )
    return task.label_index(str(value), where)


def user_jsonl(path: str, task: Task, split: str) -> list[Example]:
    """One JSON object per line with the task's text and label fields (labels may be absent in test files)."""
    a_col, b_col, label_col = task.columns
    out = []
    for line, obj in fmt.read_jsonl(path, encoding=task.encoding):
        where = f"{path}:{line}"
        missing = [k for k in (a_col, b_col) if k and k not in obj]
        if label_col not in obj and not split.startswith("test"):
            missing.append(label_col)
        if missing:
            raise DataError(f"{where}: missing field(s) {missing} (found {sorted(obj)})")
        if task.kind == "tagging":
            tokens, tags = obj[a_col], obj[label_col]
            if not (isinstance(tokens, list) and isinstance(tags, list) and len(tokens) == len(tags)):
                raise DataError(f"{where}: {a_col!r} and {label_col!r} must be lists of equal length")
            tokens = [_user_text(t, a_col, where) for t in tokens]
            out.append(
                {"tokens": tokens, "tags": [_user_label(task, t, where) for t in tags], "source": where}
            )
            continue
        out.append(
            {
                "text_a": _user_text(obj[a_col], a_col, where),
                "text_b": _user_text(obj[b_col], b_col, where) if b_col else None,
                "label": _user_label(task, obj.get(label_col), where),
                "source": where,
            }
        )
    return out


def user_csv(path: str, task: Task, split: str) -> list[Example]:
    """A CSV file with a header naming the task's text and label columns."""
    a_col, b_col, label_col = task.columns
    header, rows = fmt.read_csv(path, encoding=task.encoding)
    fmt.check_columns(path, header, [a_col] + ([b_col] if b_col else []))
    if label_col not in header and not split.startswith("test"):
        raise DataError(f"{path}:1: header {header} lacks the label column {label_col!r}")
    return [
        _example(task, r[a_col], r[b_col] if b_col else None, r.get(label_col), f"{path}:{line}")
        for line, r in rows
    ]


def user_tsv(path: str, task: Task, split: str) -> list[Example]:
    """A TSV file with a header naming the task's text and label columns."""
    return glue_tsv(path, task, split)
