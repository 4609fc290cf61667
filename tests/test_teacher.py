"""Soft labels from a fine-tuned teacher (ftlab/train/teacher.py, scripts/teacher_labels.py): the written
distribution is the teacher's softmax at temperature T, computed here through the evaluation step's own
probabilities; the file is a valid soft-labelled train split whose subset is the task file's subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from ftlab import config as config_lib
from ftlab.data import pseudo_labels
from ftlab.data.paths import SHIPPED_ROOT


def _small_sst2(tmp_path, n_train=40, n_dev=16) -> str:
    """SST-2's shipped train/dev files cut to their first rows (a real file, small enough to label quickly)."""
    root = tmp_path / "data"
    (root / "sst2").mkdir(parents=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        with open(os.path.join(SHIPPED_ROOT, "sst2", f"{split}.tsv")) as f:
            lines = f.readlines()[: n + 1]
        (root / "sst2" / f"{split}.tsv").write_text("".join(lines))
    return str(root)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_bert_dir):
    from ftlab.train import loop

    tmp = tmp_path_factory.mktemp("teacher")
    cfg = loop.default_config()
    cfg.model.name = tiny_bert_dir
    cfg.task.update(name="sst2", data_dir=_small_sst2(tmp), max_length=32)
    cfg.train.update(max_steps=3, batch_size=8, eval_batch_size=16, eval_every=3, checkpoint_every=0, progress=False)
    cfg.optim.lr = 1e-3
    loop.train_and_evaluate(cfg, str(tmp / "run"))
    return cfg, str(tmp / "run")


def test_soft_labels_are_the_teachers_softmax_at_temperature(teacher_run, tmp_path):
    from ftlab.cli import _load_run
    from ftlab.data.batching import batches
    from ftlab.train import loop, step, teacher

    cfg, run = teacher_run
    _, prep, delta_mod, delta = _load_run(run)
    task, tok = prep["task"], prep["base"].tokenizer
    examples = task.read("train", cfg.task.data_dir)
    _, enc = loop.encode_examples(cfg, task, tok, examples, "train", prep["base"].config)
    train, fixed = delta, {}
    ev = step.make_eval_step(prep["model"], delta_mod, task.kind, with_scores=True)
    p1 = np.concatenate([np.asarray(ev(train, fixed, prep["params"], b)["scores"])[b["example_mask"] > 0]
                         for b in batches(enc, 16, shuffle=False, seed=0, epoch=0, pad_id=tok.pad_token_id,
                                          pad_to_multiple_of=8, drop_remainder=False, pad_final=True)])
    assert p1.shape == (40, 2)

    ex1, soft1, agree = teacher.soft_labels(run, temperature=1.0, batch_size=7, progress=False)
    assert [e["text_a"] for e in ex1] == [e["text_a"] for e in examples]
    np.testing.assert_allclose(soft1, p1, atol=1e-6)
    want_acc = np.mean(np.argmax(p1, -1) == np.asarray([e["label"] for e in examples]))
    assert agree == {"examples": 40, "teacher_accuracy": pytest.approx(want_acc)}
    # softmax(z / 2) = √p / Σ√p
    _, soft2, _ = teacher.soft_labels(run, temperature=2.0, progress=False)
    want2 = np.sqrt(p1) / np.sqrt(p1).sum(-1, keepdims=True)
    np.testing.assert_allclose(soft2, want2, atol=1e-6)
    assert not np.allclose(soft2, soft1, atol=1e-3) or np.allclose(p1, 0.5, atol=1e-3)

    with pytest.raises(config_lib.ConfigError, match="temperature=0.0"):
        teacher.soft_labels(run, temperature=0.0)


def test_script_writes_a_student_train_split_with_the_same_subset(teacher_run, tmp_path):
    from ftlab.train import loop

    cfg, run = teacher_run
    out = tmp_path / "soft.jsonl"
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "teacher_labels.py"), "--teacher", run,
                        "--out", str(out), "--temperature", "2"], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["examples"] == 40 and summary["temperature"] == 2.0 and summary["out"] == str(out)
    rows = pseudo_labels.read(str(out), ("0", "1"), False, "soft")
    assert len(rows) == 40 and rows[3]["origin"].endswith("train.tsv:5")  # the task file's line 5 (header = 1)

    student = config_lib.Config(cfg.to_dict())
    student.task.update(train_subset=12, soft_labels=str(out), distill_temperature=2.0)
    plain = config_lib.Config(cfg.to_dict())
    plain.task.update(train_subset=12)
    prep = loop.prepare(student)
    ex_soft, _ = loop._load_split(student, prep["task"], prep["base"].tokenizer, "train", 12)
    ex_gold, _ = loop._load_split(plain, prep["task"], prep["base"].tokenizer, "train", 12)
    assert [e["text_a"] for e in ex_soft] == [e["text_a"] for e in ex_gold]

    bad = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "teacher_labels.py"), "--teacher",
                          str(tmp_path / "nothing"), "--out", str(tmp_path / "x.jsonl")], capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO, timeout=600)
    assert bad.returncode != 0 and "config.json not found" in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()
