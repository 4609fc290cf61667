"""PET / iPET (ftlab.train.pet, ftlab.data.pseudo_labels): the pseudo-label files and their errors, soft labels
through encoding and batching, the distillation loss of the training loop against a hand computation, iPET's
example selection by hand, config errors, and the whole scripts/pet.py pipeline on a tiny model with resume."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from conftest import REPO, minilm_dir

from ftlab import config as config_lib
from ftlab.data import pseudo_labels
from ftlab.data.errors import DataError
from ftlab.train import pet

EXAMPLES = [{"text_a": "a gorgeous, witty movie", "text_b": None, "source": "x.tsv:2"},
            {"text_a": "boilerplate clichés", "text_b": None, "source": "x.tsv:7"},
            {"text_a": "a charming journey", "text_b": None, "source": "x.tsv:9"}]
SOFT = np.array([[0.25, 0.75], [0.9, 0.1], [0.5, 0.5]], np.float32)


# ---- pseudo-label files -------------------------------------------------------------------------------------
def test_soft_and_hard_label_files_round_trip(tmp_path):
    path = str(tmp_path / "soft.jsonl")
    pseudo_labels.write(path, EXAMPLES, ("0", "1"), soft=SOFT)
    back = pseudo_labels.read(path, ("0", "1"), False, "soft")
    assert [e["text_a"] for e in back] == [e["text_a"] for e in EXAMPLES]
    np.testing.assert_array_equal(np.stack([e["soft_labels"] for e in back]), SOFT)
    assert all(e["label"] is None and e["text_b"] is None for e in back)
    assert [e["source"] for e in back] == [f"{path}:{i}" for i in (1, 2, 3)]
    assert [e["origin"] for e in back] == ["x.tsv:2", "x.tsv:7", "x.tsv:9"]
    pairs = [{**e, "text_b": f"second {i}"} for i, e in enumerate(EXAMPLES)]
    pseudo_labels.write(path, pairs, ("neg", "pos"), labels=[1, 0, 1])
    back = pseudo_labels.read(path, ("neg", "pos"), True, "hard")
    assert [(e["text_b"], e["label"]) for e in back] == [("second 0", 1), ("second 1", 0), ("second 2", 1)]
    assert json.loads(open(path).readline())["label"] == "pos"  # label names as in the task's own files
    with pytest.raises(ValueError, match="exactly one"):
        pseudo_labels.write(path, EXAMPLES, ("0", "1"))


@pytest.mark.parametrize("row, match", [
    ({"text_a": "x", "soft_labels": [0.2, 0.3, 0.5]}, r"has 3 entries, the task has 2 labels"),
    ({"text_a": "x", "soft_labels": [0.2, 0.7]}, r"sum to 0\.9, not 1"),
    ({"text_a": "x", "soft_labels": [1.5, -0.5]}, r"negative probability"),
    ({"text_a": "x", "soft_labels": [float("nan"), 1.0]}, r"non-finite"),
    ({"text_a": "x", "soft_labels": "0.5,0.5"}, r"must be a list of numbers"),
    ({"text_a": "x", "soft_labels": [True, 0]}, r"must be a list of numbers"),
    ({"text_a": "x", "label": "1"}, r"no field 'soft_labels' \(this row has 'label': a hard-label file\?\)"),
    ({"sentence": "x", "soft_labels": [0.5, 0.5]}, r"no field 'text_a'"),
    ({"text_a": "x", "text_b": "y", "soft_labels": [0.5, 0.5]}, r"'text_b' given, but the task reads single"),
    ({"text_a": 3, "soft_labels": [0.5, 0.5]}, r"'text_a' must be a string"),
])
def test_soft_label_file_errors_name_file_and_line(tmp_path, row, match):
    path = tmp_path / "soft.jsonl"
    good = json.dumps({"text_a": "fine", "soft_labels": [0.5, 0.5]})
    path.write_text(good + "\n\n" + json.dumps(row) + "\n")  # the bad row is on line 3 (a blank line before it)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: .*{match}"):
        pseudo_labels.read(str(path), ("0", "1"), False, "soft")


def test_soft_label_tolerance_and_other_errors(tmp_path):
    path = tmp_path / "soft.jsonl"
    path.write_text(json.dumps({"text_a": "x", "soft_labels": [0.30004, 0.7]}) + "\n")  # |Σ − 1| = 4e-5 passes
    np.testing.assert_allclose(pseudo_labels.read(str(path), ("0", "1"), False, "soft")[0]["soft_labels"],
                               [0.30004, 0.7], rtol=1e-6)
    path.write_text(json.dumps({"text_a": "x", "soft_labels": [0.3002, 0.7]}) + "\n")  # 2e-4: fails
    with pytest.raises(DataError, match=rf"{path}:1: .*sum to 1\.0002"):
        pseudo_labels.read(str(path), ("0", "1"), False, "soft")
    path.write_text(json.dumps({"text_a": "x", "soft_labels": [0.5, 0.5]}) + "\n{oops\n")
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        pseudo_labels.read(str(path), ("0", "1"), False, "soft")
    path.write_text(json.dumps({"text_a": "x", "soft_labels": [0.5, 0.5]}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: no field 'text_b', but the task reads sentence pairs"):
        pseudo_labels.read(str(path), ("0", "1"), True, "soft")
    path.write_text(json.dumps({"text_a": "x", "label": "2"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: label '2' is not one of the task's label names"):
        pseudo_labels.read(str(path), ("0", "1"), False, "hard")
    path.write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        pseudo_labels.read(str(path), ("0", "1"), False, "soft")
    with pytest.raises(DataError, match="file not found"):
        pseudo_labels.read(str(tmp_path / "nope.jsonl"), ("0", "1"), False, "soft")


def test_soft_labels_are_encoded_and_collated_with_their_rows(hf_offline):
    from transformers import AutoTokenizer

    from ftlab.data.batching import batches
    from ftlab.data.tokenize import encode
    from ftlab.tasks import get_task

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    rows = [{**e, "label": None, "soft_labels": s} for e, s in zip(EXAMPLES, SOFT)]
    enc = encode(rows, tok, get_task("sst2"), 32)
    np.testing.assert_array_equal(enc.soft_labels, SOFT)
    assert (enc.labels == -1).all()  # no hard label
    (b,) = list(batches(enc, 4, shuffle=True, seed=3, epoch=0, pad_id=0, drop_remainder=False, pad_final=True))
    real = b["index"] >= 0
    np.testing.assert_array_equal(b["soft_labels"][real], SOFT[b["index"][real]])
    assert not b["soft_labels"][~real].any() and b["soft_labels"].shape == (4, 2)
    with pytest.raises(ValueError, match="all carry them"):
        encode(rows[:1] + [{**EXAMPLES[1], "label": 0}], tok, get_task("sst2"), 32)


# ---- the distillation loss in the loop --------------------------------------------------------------------------
def _user_task(root, n_dev=6):
    d = root / "senti"
    d.mkdir()
    with open(d / "dev.jsonl", "w") as f:
        for i in range(n_dev):
            f.write(json.dumps({"text": f"dev review {i} was {'good' if i % 2 else 'bad'}", "label": str(i % 2)}) + "\n")
    (d / "task.json").write_text(json.dumps({"name": "senti", "kind": "classification", "label_names": ["0", "1"],
                                             "splits": {"dev": "dev.jsonl"}}))
    return f"jsonl:{d}"


def test_distillation_loss_in_the_loop_equals_the_hand_computation(tmp_path, tiny_bert_nodrop):
    """One step of `ftlab train` on a soft-labelled train split logs KL(q || softmax(z/T))·T², averaged over the
    batch, computed here by hand from the model's logits of each example alone."""
    import jax.numpy as jnp

    from ftlab.train import loop

    rng = np.random.default_rng(0)
    texts = [f"review {i}: the film was {'good' if i % 3 else 'dull'} and long" for i in range(8)]
    q = rng.dirichlet([1.0, 1.0], size=8).astype(np.float32)
    soft = str(tmp_path / "soft.jsonl")
    pseudo_labels.write(soft, [{"text_a": t} for t in texts], ("0", "1"), soft=q)
    cfg = loop.default_config()
    cfg.model.name = tiny_bert_nodrop
    cfg.task.update(name=_user_task(tmp_path), data_dir=str(tmp_path), soft_labels=soft, distill_temperature=3.0,
                    max_length=32)
    cfg.train.update(max_steps=1, batch_size=8, eval_batch_size=8, eval_every=1, log_every=1, checkpoint_every=0,
                     progress=False, export_delta="none")
    res = loop.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert res["train_examples"] == 8 and set(res["metrics"]) == {"accuracy", "loss"}
    logged = [json.loads(ln) for ln in open(tmp_path / "run" / "metrics.jsonl")]
    got = next(x["loss"] for x in logged if x["kind"] == "train")

    prep = loop.prepare(cfg)  # the same seed: the same fresh classifier as the step started from
    back = pseudo_labels.read(soft, ("0", "1"), False, "soft")  # as written: float32 values through JSON
    want = []
    for e in back:
        ids = prep["base"].tokenizer(e["text_a"], truncation=True, max_length=32)["input_ids"]
        z = np.asarray(prep["model"].apply({"params": prep["params"]}, jnp.asarray([ids], jnp.int32)), np.float64)[0]
        logp = z / 3.0 - np.log(np.sum(np.exp(z / 3.0)))
        p_soft = np.asarray(e["soft_labels"], np.float64)
        want.append(9.0 * np.sum(p_soft * (np.log(p_soft) - logp)))
    assert got == pytest.approx(float(np.mean(want)), rel=1e-5)

    for bad, match in ((["task.augment=cda"], "cannot go with task.augment='cda'"),
                       (["prompt.pattern=sst2:0"], "cannot go with prompt-based training"),
                       (["task.distill_temperature=0"], "must be a positive number")):
        c = config_lib.apply_overrides(config_lib.Config(json.loads(json.dumps(cfg.to_dict()))), bad)
        with pytest.raises(config_lib.ConfigError, match=match):
            loop.distill_temperature(c, prep["task"])


# ---- iPET selection -------------------------------------------------------------------------------------------
def test_ipet_selection_by_hand():
    # two labellers with weights 1 and 3: s̄ = (s1 + 3·s2) / 4
    s1 = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.2, 0.8]]))
    s2 = np.log(np.array([[0.7, 0.3], [0.6, 0.4], [0.1, 0.9], [0.6, 0.4], [0.3, 0.7]]))
    merged = (s1 + 3 * s2) / 4
    assert np.argmax(merged, -1).tolist() == [0, 0, 1, 0, 1]
    # T has 2 of label 0 and 1 of label 1; generation 1 with d = 2 adds 2·1 and 1·1 examples
    idx, labels = pet.ipet_selection([s1, s2], [1.0, 3.0], [0, 0, 1], 2, 1, 2.0, np.random.default_rng(0))
    assert labels.tolist() == [0, 0, 1]
    assert sorted(idx[:2].tolist()) in ([0, 1], [0, 3], [1, 3]) and len(set(idx[:2].tolist())) == 2
    assert idx[2] in (2, 4)
    # the draw follows softmax(s̄)_l: over many draws of one example of label 1, index 2 vs 4 as p2 : p4
    p = np.exp(merged) / np.exp(merged).sum(-1, keepdims=True)
    rng = np.random.default_rng(1)
    hits = [pet.ipet_selection([s1, s2], [1.0, 3.0], [1], 2, 1, 2.0, rng)[0][0] == 2 for _ in range(4000)]
    assert np.mean(hits) == pytest.approx(p[2, 1] / (p[2, 1] + p[4, 1]), abs=0.03)
    # generation 2 with d = 2: T_1 = 1 -> 3 examples of label 1 from the 2 candidates (repeated, as PET does)
    idx, labels = pet.ipet_selection([s1, s2], [1.0, 3.0], [1], 2, 2, 2.0, np.random.default_rng(0))
    assert labels.tolist() == [1, 1, 1] and set(idx.tolist()) <= {2, 4}
    with pytest.raises(ValueError, match="no pool example is labelled 1"):
        pet.ipet_selection([s1[:2]], [1.0], [1], 2, 1, 2.0, np.random.default_rng(0))
    # n_most_likely: label 1's candidates are the 2 examples most likely 1, whatever the argmax
    idx, labels = pet.ipet_selection([s1[:2]], [1.0], [1], 2, 1, 3.0, np.random.default_rng(0), n_most_likely=1)
    assert idx.tolist() == [1, 1] and labels.tolist() == [1, 1]  # p(1) of row 1 (0.2) > row 0 (0.1)


def test_ensemble_and_pet_config_errors(tmp_path, capsys):
    np.testing.assert_allclose(pet.ensemble_scores([np.array([[2.0, 0.0]]), np.array([[0.0, 4.0]])], [3.0, 1.0]),
                               [[1.5, 1.0]])
    from ftlab import cli

    base = os.path.join(REPO, "configs", "sst2_pet.py")
    for overrides, match in ((["pet.patterns=sst2:0,sst2:0"], "repeats a pattern"),
                             (["task.name=stsb"], "needs a classification task"),
                             (["task.soft_labels=x.jsonl"], "PET sets these itself"),
                             (["pet.eval_subset=-1"], "pet.eval_subset=-1: must be >= 0"),
                             (["pet.ipet_generations=1", "pet.ipet_scale=1"], "must be > 1")):
        with pytest.raises(config_lib.ConfigError, match=match):
            pet.check_config(config_lib.apply_overrides(config_lib.load(base), overrides))
    assert cli.main(["train", "--config", base, "--workdir", str(tmp_path)]) == 2
    assert "scripts/pet.py" in capsys.readouterr().err


# ---- the whole pipeline ---------------------------------------------------------------------------------------
def _pet_cfg(model_dir, data_dir, **pet_keys):
    from ftlab.train.loop import default_config

    c = default_config()
    c.model.name = model_dir
    c.task.update(name="sst2", data_dir=data_dir, kshot="4-13", max_length=48, eval_split="dev")
    c.prompt.scorer = "cloze"
    c.train.update(max_steps=2, batch_size=4, eval_batch_size=8, eval_every=2, log_every=1, checkpoint_every=0,
                   progress=False)
    c.optim.lr = 1e-3
    c.pet.update(patterns=("sst2:0", "sst2:3"), pool_size=16, pool_seed=1, eval_split="test", eval_subset=16,
                 score_batch_size=8, distill={"train.max_steps": 3, "optim.lr": 1e-4}, **pet_keys)
    return c


@pytest.mark.slow  # five tiny runs (two patterns × two generations + distillation) and their scoring: minutes
def test_pet_script_end_to_end_with_ipet_and_resume(tmp_path, shared_data, tiny_bert_nodrop, monkeypatch):
    import importlib.util

    from ftlab.checkpoint import load_base
    from ftlab.tasks import get_task, kshot
    from ftlab.train import loop, prompting

    cfg = _pet_cfg(tiny_bert_nodrop, shared_data, ipet_generations=1, ipet_scale=2.0, ipet_n_most_likely=6)
    (tmp_path / "pet_cfg.json").write_text(json.dumps(cfg.to_dict()))
    config_file = tmp_path / "pet_cfg.py"
    config_file.write_text("import json\n\nfrom ftlab import config\n\n\ndef get_config(variant=None):\n"
                           f"    return config.Config(json.load(open({str(tmp_path / 'pet_cfg.json')!r})))\n")
    spec = importlib.util.spec_from_file_location("pet_script", os.path.join(REPO, "scripts", "pet.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    wd = tmp_path / "pet"
    assert script.main(["--config", str(config_file), "--workdir", str(wd)]) == 0
    r = json.loads((wd / "results.json").read_text())
    task = get_task("sst2")

    # the pool: 16 SST-2 train sentences outside the K-shot train and dev splits
    soft = pseudo_labels.read(str(wd / "soft_labels.jsonl"), task.label_names, False, "soft")
    kshot_texts = {e["text_a"] for s in ("train", "dev") for e in kshot.read(task, s, shared_data, "4-13")}
    train_texts = {e["text_a"] for e in task.read("train", shared_data)}
    assert len(soft) == r["pool"]["examples"] == 16
    assert all(e["text_a"] in train_texts and e["text_a"] not in kshot_texts for e in soft)

    # generation 0: the 8 K-shot train sentences; generation 1: + int(4·(2 − 1)) = 4 pseudo-labelled per label
    g0, g1 = r["generations"]
    assert [m["train_examples"] for m in g0["models"]] == [8, 8] and [m["train_examples"] for m in g1["models"]] == [16, 16]
    extra = pseudo_labels.read(str(wd / "g1" / "extra" / "0-sst2_0.jsonl"), task.label_names, False, "hard")
    assert sorted(e["label"] for e in extra) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert {e["origin"] for e in extra} <= {e["origin"] for e in soft}

    # each model's metric on the eval split from its scores equals `ftlab eval`'s path (the eval step) on its δ
    m0 = g1["models"][0]
    sc = pet.pattern_config(_copy(cfg), "sst2:0", str(wd / "g1" / "extra" / "0-sst2_0.jsonl"))
    via_eval_step = pet.evaluate_run(sc, m0["workdir"], "test", 16)
    assert via_eval_step["accuracy"] == pytest.approx(m0["eval"]["accuracy"])

    # weights = K-shot train accuracy before training; ensemble and soft labels recomputed by hand from the scores
    kshot_train = kshot.read(task, "train", shared_data, "4-13")
    tok = load_base(tiny_bert_nodrop).tokenizer
    eval_labels = [e["label"] for e in loop._load_split(_copy(cfg), task, tok, "test", 16)[0]]
    z = [np.load(wd / "g1" / "scores" / f"{i}-{p}.npz") for i, p in enumerate(("sst2_0", "sst2_3"))]
    init = [np.load(wd / "g0" / "scores" / f"{i}-{p}.npz")["kshot_init"] for i, p in enumerate(("sst2_0", "sst2_3"))]
    w = [float(np.mean(np.argmax(s, -1) == [e["label"] for e in kshot_train])) for s in init]
    assert r["ensemble"]["weights"] == pytest.approx(w) == [m["weight"] for m in r["patterns"]]
    mean_eval = (w[0] * z[0]["eval"] + w[1] * z[1]["eval"]) / sum(w)
    assert r["ensemble"]["eval"]["accuracy"] == pytest.approx(np.mean(np.argmax(mean_eval, -1) == eval_labels))
    s_bar = (w[0] * z[0]["pool"].astype(np.float64) + w[1] * z[1]["pool"]) / sum(w) / 2.0
    q = np.exp(s_bar) / np.exp(s_bar).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.stack([e["soft_labels"] for e in soft]), q, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(prompting.pet_soft_labels([x["pool"] for x in z], w, 2.0), q, rtol=1e-5, atol=1e-7)

    # the distilled classifier: a sequence classifier on the 16 soft-labelled sentences, evaluated on test
    d = r["distilled"]
    assert d["train_examples"] == 16 and set(d["eval"]) == {"accuracy", "loss"}
    dcfg = json.loads((wd / "distill" / "config.json").read_text())
    assert dcfg["task"]["soft_labels"] == str(wd / "soft_labels.jsonl") and dcfg["prompt"]["pattern"] == ""
    assert dcfg["train"]["max_steps"] == 3 and dcfg["model"]["head"] == "new"

    # resume: every finished step is skipped (nothing trains or scores again), the results are the same
    def refuse(*a, **k):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(loop, "train_and_evaluate", refuse)
    monkeypatch.setattr(pet, "score_examples", refuse)
    monkeypatch.setattr(pet, "evaluate_run", refuse)
    assert script.main(["--config", str(config_file), "--workdir", str(wd)]) == 0
    assert json.loads((wd / "results.json").read_text()) == r
    # another temperature: the soft labels' record refuses the workdir, naming the step
    with pytest.raises(pet.StepError, match=r"soft_labels\.jsonl\.json: this step was made from other inputs "
                                            r"\(differences in \['temperature'\]\)"):
        pet.run(config_lib.apply_overrides(_copy(cfg), ["pet.temperature=3.0"]), str(wd))


def _copy(cfg):
    return config_lib.Config(json.loads(json.dumps(cfg.to_dict())))
