"""Hypothesis fuzz of the file readers: arbitrary bytes give a parse or a `DataError`, never another exception;
well-formed random rows round-trip exactly."""

from __future__ import annotations

import json
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftlab.data import DataError
from ftlab.data.readers import read_text
from ftlab.tasks import get_task, make_user_task

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Bytes biased towards the separators and label values the readers care about.
TOKENS = [b"\t", b"\n", b"\r", b"0", b"1", b"5.0", b" ", b",", b'"', b"{", b"}", b":", b"\xef\xbb\xbf", b"\x85", b"\xe9",
          b"label", b"sentence", b"-DOCSTART-", b"B-PER", b"I-ORG", b"O", b"nan", b"ABBR:x"]  # fmt: skip
fuzz_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=60).map(b"".join),
)

FILE_TASKS = [
    ("sst2", "SST-2", "train.tsv", "train"),
    ("sst2", "sst2", "test.tsv", "test"),
    ("cola", "cola", "train.tsv", "train"),
    ("mrpc", "MRPC", "dev.tsv", "dev"),
    ("stsb", "stsb", "dev.tsv", "dev"),
    ("mnli", "mnli", "dev_matched.tsv", "dev"),
    ("cr", "cr", "train.tsv", "train"),
    ("conll2003", "conll2003", "valid.txt", "dev"),
    ("trec", "trec", "train_5500.label", "train"),
    ("mr", "mr", "rt-polarity.pos", "train"),
]


def _check_examples(task, examples):
    assert isinstance(examples, list)
    for e in examples:
        if task.kind == "tagging":
            assert len(e["tokens"]) == len(e["tags"]) and all(0 <= t < task.num_labels for t in e["tags"])
        elif task.kind == "classification":
            assert e["label"] is None or 0 <= e["label"] < task.num_labels
            assert isinstance(e["text_a"], str)


@SETTINGS
@given(data=fuzz_bytes, which=st.integers(0, len(FILE_TASKS) - 1))
def test_task_readers_bytes(data, which):
    name, folder, fname, split = FILE_TASKS[which]
    task = get_task(name)
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, folder))
        with open(os.path.join(d, folder, fname), "wb") as f:
            f.write(data)
        if name == "mr":
            with open(os.path.join(d, folder, "rt-polarity.neg"), "wb") as f:
                f.write(data[::-1])
        try:
            examples = task.read(split, d)
        except DataError:
            return
        _check_examples(task, examples)


@SETTINGS
@given(data=fuzz_bytes, fmt=st.sampled_from(["jsonl", "csv", "tsv", "txt", "ner.jsonl"]))
def test_user_readers_bytes(data, fmt):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"f.{fmt}")
        with open(path, "wb") as f:
            f.write(data)
        try:
            if fmt == "txt":
                assert all(isinstance(x, str) and x.strip() for x in read_text(path))
                return
            if fmt == "ner.jsonl":
                task = make_user_task(
                    "u",
                    "tagging",
                    path_train=path,
                    text_fields=("tokens",),
                    label_field="tags",
                    label_names=("O", "B-PER", "I-PER"),
                )
            else:
                task = make_user_task("u", "classification", path_train=path, label_names=("0", "1"))
            examples = task.read("train")
        except DataError:
            return
        _check_examples(task, examples)


sentence = st.text(st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)), max_size=30)


@SETTINGS
@given(rows=st.lists(st.tuples(sentence, sentence, st.sampled_from(["0", "1"])), max_size=20))
def test_well_formed_rows_round_trip(rows):
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "mrpc"))
        path = os.path.join(d, "mrpc", "train.tsv")
        lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [
            f"{y}\t1\t2\t{a}\t{b}" for a, b, y in rows
        ]
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write("\n".join(lines) + "\n")
        got = get_task("mrpc").read("train", d)
        assert [(e["text_a"], e["text_b"], e["label"]) for e in got] == [(a, b, int(y)) for a, b, y in rows]
        assert [e["source"] for e in got] == [f"{path}:{i + 2}" for i in range(len(rows))]
        jl = os.path.join(d, "x.jsonl")
        with open(jl, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": a, "label": int(y)}) + "\n" for a, _, y in rows)
        task = make_user_task("u", "classification", path_train=jl, label_names=("0", "1"))
        assert [(e["text_a"], e["label"]) for e in task.read("train")] == [(a, int(y)) for a, _, y in rows]
