"""Pseudo-labelled examples as JSONL: soft labels for distillation, hard labels for enlarged training sets.

PET (Schick & Schütze 2021, "Exploiting Cloze Questions for Few Shot Text Classification and Natural Language
Inference") labels unlabeled text with an ensemble of prompt-based models: soft labels (a distribution over the
classes) train the final sequence classifier by distillation (`task.soft_labels`), hard labels (the ensemble's
argmax) enlarge the next iPET generation's training sets (`task.train_extra`). Both files hold one JSON object
per line:

    {"text_a": "a gorgeous, witty movie", "soft_labels": [0.12, 0.88], "source": "sst2/train.tsv:1043"}
    {"text_a": "...", "text_b": "...", "label": "1", "source": "..."}          (sentence pairs; a hard label)

`text_b` is present exactly for sentence-pair tasks; `soft_labels` has one probability per class in the order of
the task's `label_names` (non-negative, finite, summing to 1 within `TOLERANCE`); `label` is one of the task's
label names (as in the task's own files); `source` (optional) says where the text came from. Examples read
back carry `source` = this file and line, and `origin` = the stored source. Every error is a `DataError` naming
`path:line` and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ftlab.data.errors import DataError
from ftlab.data.readers import read_jsonl

TOLERANCE = 1e-4  # |Σ p - 1| allowed in a row of soft labels (float32 softmax written with 17 significant digits)
KINDS = ("soft", "hard")


def write(path: str, examples: Sequence[dict[str, Any]], label_names: Sequence[str], *,
          soft: np.ndarray | None = None, labels: Sequence[int] | None = None) -> None:
    """Write `examples` (text_a, text_b, source) with soft labels [N, C] or hard label indices [N] (exactly one
    of the two), atomically (a .tmp file renamed)."""
    if (soft is None) == (labels is None):
        raise ValueError("give exactly one of soft= (soft labels [N, C]) and labels= (label indices [N])")
    n = len(examples)
    if soft is not None:
        soft = np.asarray(soft, np.float64)
        if soft.shape != (n, len(label_names)):
            raise ValueError(f"soft labels of shape {soft.shape} for {n} examples and {len(label_names)} labels")
    elif len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} examples")
    rows = []
    for i, e in enumerate(examples):
        row: dict[str, Any] = {"text_a": e["text_a"]}
        if e.get("text_b") is not None:
            row["text_b"] = e["text_b"]
        if soft is not None:
            row["soft_labels"] = [float(p) for p in soft[i]]
        else:
            row["label"] = label_names[int(labels[i])]
        if e.get("source"):
            row["source"] = e["source"]
        rows.append(json.dumps(row, ensure_ascii=False) + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(rows)
    os.replace(path + ".tmp", path)


def read(path: str, label_names: Sequence[str], pair: bool, kind: str) -> list[dict[str, Any]]:
    """Examples of a pseudo-label file: {'text_a', 'text_b' (None for single sentences), 'label', 'source',
    'origin'} plus 'soft_labels' (float32 [C]) for kind 'soft' (then 'label' is None); for kind 'hard' 'label'
    is the label's index. `pair`: the task reads sentence pairs (every row then needs `text_b`, else none may
    have it)."""
    if kind not in KINDS:
        raise ValueError(f"pseudo-label kind {kind!r} not in {KINDS}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    field = "soft_labels" if kind == "soft" else "label"
    other = "label" if kind == "soft" else "soft_labels"
    out = []
    for line, obj in read_jsonl(path):
        where = f"{path}:{line}"
        for key in ("text_a", "text_b"):
            if key in obj and not isinstance(obj[key], str):
                raise DataError(f"{where}: field {key!r} must be a string, found {type(obj[key]).__name__}")
        if "text_a" not in obj:
            raise DataError(f"{where}: no field 'text_a' (found {sorted(obj)})")
        if pair and "text_b" not in obj:
            raise DataError(f"{where}: no field 'text_b', but the task reads sentence pairs")
        if not pair and "text_b" in obj:
            raise DataError(f"{where}: field 'text_b' given, but the task reads single sentences")
        if field not in obj:
            hint = f" (this row has {other!r}: a {'hard' if kind == 'soft' else 'soft'}-label file?)" \
                if other in obj else ""
            raise DataError(f"{where}: no field {field!r}{hint}")
        e = {"text_a": obj["text_a"], "text_b": obj.get("text_b"), "source": where, "origin": obj.get("source")}
        if kind == "soft":
            e["label"] = None
            e["soft_labels"] = check_soft(obj[field], len(label_names), where)
        else:
            value = obj[field]
            if not isinstance(value, str) or value not in label_names:
                raise DataError(f"{where}: label {value!r} is not one of the task's label names "
                                f"{list(label_names)}")
            e["label"] = list(label_names).index(value)
        out.append(e)
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def check_soft(value: Any, num_labels: int, where: str) -> np.ndarray:
    """One row's soft labels as float32 [C]; `DataError` naming `where` unless a list of `num_labels`
    finite, non-negative numbers summing to 1 within TOLERANCE."""
    if not isinstance(value, list) or any(isinstance(p, bool) or not isinstance(p, (int, float)) for p in value):
        raise DataError(f"{where}: 'soft_labels' must be a list of numbers, found {value!r}")
    if len(value) != num_labels:
        raise DataError(f"{where}: 'soft_labels' has {len(value)} entries, the task has {num_labels} labels")
    if not all(math.isfinite(p) for p in value):
        raise DataError(f"{where}: 'soft_labels' {value} holds a non-finite number")
    if any(p < 0 for p in value):
        raise DataError(f"{where}: 'soft_labels' {value} holds a negative probability")
    total = math.fsum(value)
    if abs(total - 1.0) > TOLERANCE:
        raise DataError(f"{where}: 'soft_labels' {value} sum to {total:.6g}, not 1 (tolerance {TOLERANCE})")
    return np.asarray(value, np.float32)
