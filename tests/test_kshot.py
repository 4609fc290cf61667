"""K-shot splits (ftlab/tasks/kshot.py): every committed split regenerates bit-identically from the staged data
(md5 against ftlab/assets/kshot/manifest.json), K per class, train and dev disjoint, files read back by the
task readers, the loop's in-memory path, and errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ftlab.data import DataError
from ftlab.tasks import get_task, kshot


def test_committed_manifest_regenerates(shared_data):
    manifest = kshot.load_manifest()
    assert len(manifest) == len(kshot.TASKS) * len(kshot.KS) * len(kshot.SEEDS) * 2
    for name in kshot.TASKS:
        task = get_task(name)
        examples, cache = task.read("train", shared_data), {}
        for k in kshot.KS:
            for seed in kshot.SEEDS:
                files = kshot.sample(task, shared_data, k, seed, examples, cache)
                for key, got in kshot.entries(name, k, seed, files).items():
                    assert manifest[key] == got, key


def test_select_is_k_per_class_and_disjoint():
    labels = [0] * 50 + [1] * 30 + [2] * 5
    train, dev = kshot.select(labels, 3, 4, 13)
    assert Counter(labels[i] for i in train) == {0: 4, 1: 4, 2: 4}
    assert Counter(labels[i] for i in dev) == {0: 4, 1: 4, 2: 1}  # class 2 has only 5 examples
    assert not set(train) & set(dev)
    assert kshot.select(labels, 3, 4, 13) == (train, dev) and kshot.select(labels, 3, 4, 21) != (train, dev)


@pytest.mark.parametrize("name", kshot.TASKS)
def test_written_splits_read_back(name, shared_data, tmp_path):
    task = get_task(name)
    files = kshot.sample(task, shared_data, 4, 42)
    kshot.write(str(tmp_path), name, 4, 42, files)
    for split in ("train", "dev"):
        ex = kshot.read(task, split, shared_data, "4-42", str(tmp_path))
        assert Counter(e["label"] for e in ex) == {c: 4 for c in range(task.num_labels)}
        assert all(e["text_a"] for e in ex)
    # the in-memory path (no kshot_dir) gives the same examples
    mem = kshot.read(task, "train", shared_data, "4-42")
    disk = kshot.read(task, "train", shared_data, "4-42", str(tmp_path))
    assert [(e["text_a"], e["text_b"], e["label"]) for e in mem] == [(e["text_a"], e["text_b"], e["label"])
                                                                      for e in disk]
    assert len(kshot.read(task, "test", shared_data, "4-42")) == len(task.read(kshot.TEST_SPLIT[name], shared_data))


def test_glue_rows_are_byte_identical(shared_data):
    task = get_task("mrpc")
    files = kshot.sample(task, shared_data, 4, 13)
    with open(f"{shared_data}/mrpc/train.tsv", "rb") as f:
        original = set(f.read().splitlines())
    assert all(line in original for line in files["train.tsv"].splitlines())


def test_manifest_mismatch_and_bad_specs(shared_data, tmp_path):
    task = get_task("sst2")
    files = kshot.sample(task, shared_data, 4, 42)
    wrong = {k: dict(v, md5="0" * 32) for k, v in kshot.entries("sst2", 4, 42, files).items()}
    with pytest.raises(DataError, match="sst2/4-42/.*differs"):
        kshot.check("sst2", 4, 42, files, wrong)
    with pytest.raises(ValueError, match="'<K>-<seed>'"):
        kshot.parse_spec("16")
    with pytest.raises(DataError, match="not found.*make_kshot"):
        kshot.read(task, "train", shared_data, "16-42", str(tmp_path))
    with pytest.raises(DataError, match="train, dev and test"):
        kshot.read(task, "validation", shared_data, "16-42")


def test_make_kshot_script(shared_data, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, f"{REPO}/scripts/make_kshot.py", "--data-dir", shared_data, "--out",
                          str(tmp_path), "--tasks", "trec", "--k", "8", "--seeds", "13", "--check"],
                         capture_output=True, text=True, check=True)
    assert "2 files, 0 mismatches" in out.stdout
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert set(doc["files"]) == {"trec/8-13/train.tsv", "trec/8-13/dev.tsv"}
    assert (tmp_path / "trec/8-13/train.tsv").read_bytes().count(b"\n") == 1 + 8 * 6
