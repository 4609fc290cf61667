"""Evaluation metrics as plain NumPy functions, and `compute(task, predictions, references)`.

Definitions follow the references the published numbers use: GLUE's (accuracy; binary F1 of class 1; Matthews
correlation as in sklearn, multi-class form, 0 when undefined; Pearson; Spearman with average ranks for ties)
and conlleval's for NER (entity-level micro precision / recall / F1 over chunks, where an I- tag that follows
O or another entity type starts a new chunk — seqeval's default, non-strict mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ftlab.tasks import Task

IGNORE = -100  # label value of positions that carry no tag (sub-tokens, special tokens, padding)


def accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = np.asarray(pred), np.asarray(ref)
    return float(np.mean(pred == ref)) if ref.size else 0.0


def f1_binary(pred: np.ndarray, ref: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC/QQP F1); 0 when there are no true positives."""
    pred, ref = np.asarray(pred) == positive, np.asarray(ref) == positive
    tp = float(np.sum(pred & ref))
    denom = float(np.sum(pred) + np.sum(ref))
    return 2.0 * tp / denom if tp > 0 else 0.0


def matthews_corr(pred: np.ndarray, ref: np.ndarray) -> float:
    """Matthews correlation coefficient (multi-class form, Gorodkin 2004, as sklearn); 0 when undefined."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    classes, inv = np.unique(np.concatenate([ref, pred]), return_inverse=True)
    k = len(classes)
    t, p = inv[: len(ref)], inv[len(ref) :]
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (t, p), 1.0)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    correct, s = np.trace(cm), cm.sum()
    cov_ytyp = correct * s - np.dot(t_sum, p_sum)
    cov_ypyp = s * s - np.dot(p_sum, p_sum)
    cov_ytyt = s * s - np.dot(t_sum, t_sum)
    denom = cov_ytyt * cov_ypyp
    return float(cov_ytyp / np.sqrt(denom)) if denom > 0 else 0.0


def pearson(pred: np.ndarray, ref: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (the correlation is undefined)."""
    x, y = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.dot(x, x) * np.dot(y, y))
    return float(np.dot(x, y) / denom) if denom > 0 else 0.0


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks (scipy.stats.rankdata 'average')."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # Group boundaries of equal values; each group's rank is the mean of its positions.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    group_rank = (starts + ends + 1) / 2.0  # mean of (start+1 .. end)
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman(pred: np.ndarray, ref: np.ndarray) -> float:
    """Spearman rank correlation = Pearson of average ranks."""
    return pearson(_average_ranks(pred), _average_ranks(ref))


# ------------------------------------------------------------------------------------------------ NER spans


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O" or "-" not in tag:
        return "O", ""
    prefix, _, typ = tag.partition("-")
    return prefix, typ


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Chunks `(type, start, end_exclusive)` of one BIO/IOBES tag sequence with conlleval semantics."""
    spans = set()
    start, prev_prefix, prev_type = None, "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):  # the sentinel O closes a chunk running to the end
        prefix, typ = _split_tag(tag)
        if start is not None and _chunk_ends(prev_prefix, prefix, prev_type, typ):
            spans.add((prev_type, start, i))
            start = None
        if _chunk_starts(prev_prefix, prefix, prev_type, typ):
            start = i
        prev_prefix, prev_type = prefix, typ
    return spans


def _chunk_ends(prev: str, cur: str, prev_type: str, cur_type: str) -> bool:
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and (cur in ("B", "S", "O") or cur_type != prev_type):
        return True
    return prev != "O" and prev_type != cur_type


def _chunk_starts(prev: str, cur: str, prev_type: str, cur_type: str) -> bool:
    if cur in ("B", "S"):
        return True
    if cur in ("I", "E") and (prev in ("E", "S", "O") or prev_type != cur_type):
        return True
    return cur != "O" and prev_type != cur_type


def span_prf(pred_tags: Sequence[Sequence[str]], ref_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 over all sentences (conlleval)."""
    if len(pred_tags) != len(ref_tags):
        raise ValueError(f"{len(pred_tags)} predicted sentences vs {len(ref_tags)} reference sentences")
    n_pred = n_ref = n_correct = 0
    for i, (p, r) in enumerate(zip(pred_tags, ref_tags, strict=True)):
        if len(p) != len(r):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags vs {len(r)} reference tags")
        ps, rs = entity_spans(p), entity_spans(r)
        n_pred, n_ref, n_correct = n_pred + len(ps), n_ref + len(rs), n_correct + len(ps & rs)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def word_level(predictions: Any, references: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token-aligned `[N, T]` predictions and labels (with -100 at non-word positions) -> per-sentence word
    tag sequences, keeping only positions whose label is not -100. Lists of sequences pass through."""
    if isinstance(references, np.ndarray) and references.ndim == 2:
        predictions = np.asarray(predictions)
        keep = references != IGNORE
        return [predictions[i][keep[i]] for i in range(len(references))], [
            r[k] for r, k in zip(references, keep, strict=True)
        ]
    return [np.asarray(p) for p in predictions], [np.asarray(r) for r in references]


# ------------------------------------------------------------------------------------------------ compute

_SCALAR = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_corr": matthews_corr,
    "pearson": pearson,
    "spearman": spearman,
}


def compute(task: Task, predictions: Any, references: Any) -> dict[str, float]:
    """`task.metrics` of predictions vs references.

    Classification: predicted and true class indices `[N]`. Regression: values `[N]`. Tagging: per-sentence
    tag-index sequences (lists), or `[N, T]` arrays aligned to tokens with -100 where there is no word tag
    (`encode`'s labels); then tagging also reports token-level "accuracy" if asked for in `task.metrics`.
    """
    if task.kind == "tagging":
        pred_seqs, ref_seqs = word_level(
            predictions, np.asarray(references) if _is_2d(references) else references
        )
        names = task.label_names
        out = span_prf(
            [[names[int(t)] for t in p] for p in pred_seqs], [[names[int(t)] for t in r] for r in ref_seqs]
        )
        if "accuracy" in task.metrics:
            flat_p = np.concatenate(pred_seqs) if pred_seqs else np.zeros(0)
            flat_r = np.concatenate(ref_seqs) if ref_seqs else np.zeros(0)
            out["accuracy"] = accuracy(flat_p, flat_r)
        return {k: float(out[k]) for k in task.metrics}
    pred, ref = np.asarray(predictions), np.asarray(references)
    if pred.shape != ref.shape or pred.ndim != 1:
        raise ValueError(
            f"task {task.name!r}: predictions {pred.shape} and references {ref.shape} must be [N]"
        )
    if ref.dtype == object:
        raise ValueError(f"task {task.name!r}: references contain None (a test split without labels?)")
    unknown = [m for m in task.metrics if m not in _SCALAR]
    if unknown:
        raise ValueError(f"task {task.name!r}: unknown metric(s) {unknown} (known: {sorted(_SCALAR)})")
    return {m: _SCALAR[m](pred, ref) for m in task.metrics}


LOWER_IS_BETTER = ("perplexity", "loss")


def improved(metric: str, new: float, old: float | None) -> bool:
    """Whether `new` beats `old` (None: nothing yet) on `metric`: lower perplexity/loss, higher anything else."""
    if old is None:
        return True
    return new < old if metric in LOWER_IS_BETTER else new > old


def _is_2d(x: Any) -> bool:
    return isinstance(x, np.ndarray) and x.ndim == 2 or (hasattr(x, "shape") and len(x.shape) == 2)
