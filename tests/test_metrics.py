"""Metrics against hand-computed values and scipy.stats, and conlleval span semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from ftlab.tasks import get_task, make_user_task
from ftlab.tasks import metrics as M


def test_accuracy_f1_by_hand():
    pred = np.array([1, 1, 0, 0, 1, 0])
    ref = np.array([1, 0, 0, 1, 1, 0])
    assert M.accuracy(pred, ref) == pytest.approx(4 / 6)
    # tp=2, fp=1, fn=1 -> P=2/3, R=2/3, F1=2/3
    assert M.f1_binary(pred, ref) == pytest.approx(2 / 3)
    assert M.f1_binary(np.zeros(4, int), np.zeros(4, int)) == 0.0
    assert M.compute(get_task("mrpc"), pred, ref) == pytest.approx({"f1": 2 / 3, "accuracy": 4 / 6})


def test_matthews_binary_by_hand_and_multiclass():
    pred = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    ref = np.array([1, 0, 0, 1, 1, 0, 1, 1])
    tp, tn, fp, fn = 4, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.matthews_corr(pred, ref) == pytest.approx(expected)
    assert (
        M.matthews_corr(np.ones(5, int), np.array([0, 1, 0, 1, 1])) == 0.0
    )  # constant prediction: undefined -> 0
    assert M.matthews_corr(ref, ref) == pytest.approx(1.0)
    # Multi-class (sklearn's formula), computed by hand from the confusion matrix.
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    p = np.array([0, 2, 2, 0, 1, 1, 2])
    cm = np.zeros((3, 3))
    for a, b in zip(y, p, strict=True):
        cm[a, b] += 1
    t, q, c, s = cm.sum(1), cm.sum(0), np.trace(cm), cm.sum()
    assert M.matthews_corr(p, y) == pytest.approx(
        (c * s - t @ q) / math.sqrt((s * s - q @ q) * (s * s - t @ t))
    )
    assert M.compute(get_task("cola"), pred, ref) == pytest.approx({"matthews_corr": expected})


def test_pearson_spearman_vs_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    assert M.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
    ties_x = np.round(x * 2) / 2  # many ties: average ranks matter
    ties_y = np.round(y)
    assert M.spearman(ties_x, ties_y) == pytest.approx(scipy.stats.spearmanr(ties_x, ties_y)[0], abs=1e-12)
    assert np.allclose(M._average_ranks(ties_x), scipy.stats.rankdata(ties_x))
    out = M.compute(get_task("stsb"), x, y)
    assert set(out) == {"pearson", "spearman"} and out["pearson"] == pytest.approx(
        scipy.stats.pearsonr(x, y)[0]
    )
    assert M.pearson(np.ones(3), np.arange(3.0)) == 0.0


def test_entity_spans_conlleval_semantics():
    spans = M.entity_spans
    assert spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert spans(["O", "I-PER", "I-PER", "O"]) == {("PER", 1, 3)}  # I- after O starts an entity
    assert spans(["B-PER", "I-LOC", "O"]) == {("PER", 0, 1), ("LOC", 1, 2)}  # type change splits
    assert spans(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 1), ("PER", 1, 3)}
    assert spans(["I-ORG"]) == {("ORG", 0, 1)}
    assert spans(["O", "O"]) == set()


def test_span_prf_by_hand():
    ref = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "B-MISC", "O"]]
    # gold 4 spans; predicted 3 (PER ok, ORG ok, MISC truncated wrong) -> P=2/3, R=2/4
    out = M.span_prf(pred, ref)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_compute_tagging_sequences_and_token_aligned():
    task = get_task("conll2003")
    names = task.label_names
    ref = [[names.index(t) for t in s] for s in (["B-PER", "I-PER", "O"], ["B-LOC", "O"])]
    pred = [[names.index(t) for t in s] for s in (["B-PER", "I-PER", "O"], ["O", "O"])]
    expected = {"f1": 2 * 1 * 0.5 / 1.5, "precision": 1.0, "recall": 0.5}
    assert M.compute(task, pred, ref) == pytest.approx(expected)
    # Token-aligned form: -100 at sub-tokens/special tokens/padding; predictions there are ignored.
    labels = np.array(
        [[-100, ref[0][0], -100, ref[0][1], ref[0][2], -100], [-100, ref[1][0], ref[1][1], -100, -100, -100]]
    )
    logits_argmax = np.array(
        [[5, pred[0][0], 7, pred[0][1], pred[0][2], 3], [8, pred[1][0], pred[1][1], 1, 1, 1]]
    )
    assert M.compute(task, logits_argmax, labels) == pytest.approx(expected)


def test_user_tagging_accuracy_metric(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"tokens": ["a"], "tags": ["O"]}\n')
    task = make_user_task(
        "t",
        "tagging",
        path_train=str(p),
        text_fields=("tokens",),
        label_field="tags",
        label_names=("O", "B-X", "I-X"),
        metrics=("f1", "accuracy"),
    )
    assert M.compute(task, [[0, 1]], [[0, 0]]) == pytest.approx({"f1": 0.0, "accuracy": 0.5})


def test_compute_rejects_bad_shapes_and_unlabelled():
    with pytest.raises(ValueError, match="must be"):
        M.compute(get_task("sst2"), np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="None"):
        M.compute(get_task("sst2"), np.zeros(2), np.array([None, 1], dtype=object))
