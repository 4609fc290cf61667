"""Early exit (ftlab/exits.py): the exits' model outputs, the three training routines' losses by hand, DeeBERT's
frozen second stage, the exit policies on hand-made outputs, and inference that stops computing — layer by
layer, one example or a batch dropping finished rows — giving the decisions of the simulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from ftlab import exits, optim, tree
from ftlab.models import BertConfig, build_model
from ftlab.train import step as step_lib

CFG = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
B, T = 6, 10


def _batch(kind="classification", seed=0):
    r = np.random.default_rng(seed)
    lengths = np.array([3, 10, 5, 7, 10, 2])
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    labels = r.integers(0, 3, size=B) if kind == "classification" else r.uniform(0, 5, size=B)
    return {"input_ids": (r.integers(1, CFG.vocab_size, size=(B, T)) * mask).astype(np.int32),
            "attention_mask": mask, "token_type_ids": np.zeros((B, T), np.int32),
            "labels": labels.astype(np.int32 if kind == "classification" else np.float32),
            "example_mask": np.array([1, 1, 1, 1, 1, 0], np.float32)}


def _model(kind="classification"):
    model = build_model(CFG, head="early_exit", num_labels=3 if kind == "classification" else 1)
    params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                        jnp.ones((1, 8), jnp.int32))["params"]
    # non-trivial exits: larger random weights than the N(0, 0.02) init so that exits disagree
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 40 if "early_exit" in jax.tree_util.keystr(p) and x.ndim == 2 else x, params)
    return model, params


def test_exits_see_each_layers_hidden_state_and_the_plain_encoder_is_unchanged():
    model, params = _model()
    b = _batch()
    out = model.apply({"params": params}, b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert out["logits"].shape == (B, CFG.num_hidden_layers, 3) and out["lte"].shape == (B, CFG.num_hidden_layers)
    plain = build_model(CFG, head=None)
    hidden = plain.apply({"params": {"backbone": params["backbone"]}}, b["input_ids"], b["attention_mask"],
                         b["token_type_ids"])
    from ftlab.models.heads import ExitHead

    last = ExitHead(CFG, 3).apply({"params": params["head"]["early_exit"][f"exits_{CFG.num_hidden_layers - 1}"]},
                                  hidden, b["attention_mask"])[0]
    np.testing.assert_allclose(out["logits"][:, -1], last, rtol=1e-5, atol=1e-5)


def _ce(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


@pytest.mark.parametrize("routine", ["weighted", "two_stage", "alternating"])
def test_routine_losses_by_hand(routine):
    r = np.random.default_rng(1)
    n = 4
    out = {"logits": jnp.asarray(r.normal(size=(B, n, 3)), jnp.float32),
           "lte": jnp.asarray(r.normal(size=(B, n)), jnp.float32)}
    b = _batch()
    w = b["example_mask"]
    lg = np.asarray(out["logits"])
    per_exit = np.array([(_ce(lg[:, i], b["labels"]) * w).sum() / w.sum() for i in range(n)])
    weighted = (np.arange(1, n + 1) * per_exit).sum() / np.arange(1, n + 1).sum()
    g = 1 / (1 + np.exp(-np.asarray(out["lte"])))
    u = (lg.argmax(-1) == b["labels"][:, None]).astype(np.float32)
    lte = ((((g - u) ** 2).mean(1)) * w).sum() / w.sum()
    loss = exits.make_loss({"routine": routine, "lte_weight": 0.5}, "classification", total_steps=10)
    for step in (0, 1, 4, 5, 9):
        if routine == "weighted":
            want = weighted
        elif routine == "two_stage":
            want = per_exit[-1] if step < 5 else per_exit[:-1].mean()
        else:
            want = per_exit[-1] if step % 2 == 0 else weighted
        got, aux = loss(out, b, jnp.int32(step))
        np.testing.assert_allclose(float(got), want + 0.5 * lte, rtol=1e-5)
        np.testing.assert_allclose(float(aux["loss_sum"]), float(got) * w.sum(), rtol=1e-6)


def test_regression_lte_target_is_one_minus_tanh_of_the_error():
    logits = jnp.array([[[1.0], [3.0]], [[0.0], [2.5]]])
    u = exits.lte_targets("regression", logits, jnp.array([2.0, 2.5]))
    np.testing.assert_allclose(u, [[1 - np.tanh(1.0), 1 - np.tanh(1.0)], [1 - np.tanh(2.5), 1.0]], rtol=1e-5, atol=1e-7)


def test_bad_exit_config_is_refused():
    with pytest.raises(ValueError, match="routine"):
        exits.check({"routine": "deebert"})
    with pytest.raises(ValueError, match="unknown config keys"):
        exits.check({"routine": "weighted", "patience": 3})
    with pytest.raises(ValueError, match="entropy"):
        exits.Policy("entropy", 0.1, "regression", 6)


def test_two_stage_freezes_backbone_and_last_exit_in_stage_two():
    from ftlab.deltas import full

    model, params = _model()
    delta = full.init(None, params, {})
    train, fixed = tree.split(delta, full.trainable(delta))
    total = 4
    cfg = {"routine": "two_stage", "stage1_fraction": 0.5}
    tx, _ = optim.build({"lr": 1e-2, "warmup_steps": 0}, train, total, CFG.num_hidden_layers)
    tx = exits.freeze_in_stage2(tx, train, cfg, total)
    state = {"step": jnp.zeros([], jnp.int32), "train": train, "fixed": fixed, "opt_state": tx.init(train),
             "rng": jax.random.key_data(jax.random.key(3))}
    step = step_lib.make_train_step(model, full, tx, "classification", total_steps=total,
                                    loss=exits.make_loss(cfg, "classification", total))
    snaps = []
    for _ in range(total):
        state, m = step(state, params, _batch())
        assert bool(m["finite"])
        snaps.append(tree.flatten(jax.device_get(state["train"])))
    last = f"head/early_exit/exits_{CFG.num_hidden_layers - 1}/"
    for p in snaps[0]:
        moved_stage1 = not np.array_equal(snaps[0][p], snaps[1][p])
        moved_stage2 = not np.array_equal(snaps[2][p], snaps[3][p])
        if p.startswith("head/early_exit/exits_") and not p.startswith(last):
            assert moved_stage2, p  # the ramps train in stage 2
        elif p.startswith("head/early_exit/lte"):
            assert moved_stage2, p
        else:
            assert not moved_stage2, p  # backbone and last exit frozen (Adam's momentum too)
            if p.startswith("backbone/encoder") and p.endswith("kernel"):
                assert moved_stage1, p


def test_policies_on_hand_made_outputs():
    # 3 examples, 4 layers, 2 classes
    logits = np.array([
        [[0.0, 5.0], [0.0, 5.0], [0.0, 5.0], [0.0, 5.0]],     # confident and stable from layer 1
        [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]],     # flips once, then stable
        [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],     # keeps flipping
    ])
    lte = np.array([[3.0, 3.0, 3.0, 3.0], [-3.0, -3.0, 3.0, 3.0], [-3.0, -3.0, -3.0, -3.0]])
    cases = {("entropy", 0.1): [1, 4, 4], ("patience", 1): [2, 3, 4], ("patience", 2): [3, 4, 4],
             ("learned", 0.9): [1, 3, 4], ("static", 2): [2, 2, 2]}
    for (name, th), want in cases.items():
        pred, layer = exits.simulate(exits.Policy(name, th, "classification", 4), logits, lte)
        assert layer.tolist() == want, (name, th, layer)
        assert pred.tolist() == [logits[i, layer[i] - 1].argmax() for i in range(3)]
    reg = np.array([[[1.0], [1.05], [3.0], [3.0]], [[1.0], [2.0], [3.0], [4.0]]])
    _, layer = exits.simulate(exits.Policy("patience", 1, "regression", 4, tol=0.1), reg, np.zeros((2, 4)))
    assert layer.tolist() == [2, 4]


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_runner_stops_where_the_simulation_says(kind):
    model, params = _model(kind)
    variables = {"params": params}
    b = _batch(kind)
    runner = exits.ExitRunner(model, variables)
    logits, lte = runner.all_exits(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    ref = model.apply(variables, b["input_ids"], b["attention_mask"], b["token_type_ids"])
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lte, ref["lte"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(runner.full(b["input_ids"], b["token_type_ids"], b["attention_mask"]),
                               ref["logits"][:, -1], rtol=1e-4, atol=1e-5)
    policies = [("patience", 1), ("learned", 0.5), ("static", 2)]
    if kind == "classification":
        policies.append(("entropy", float(np.median(exits.entropy(logits)))))
    exited_early = False
    for name, th in policies:
        pol = exits.Policy(name, th, kind, CFG.num_hidden_layers, tol=0.05)
        pred_sim, layer_sim = exits.simulate(pol, logits, lte)
        exited_early |= bool((layer_sim < CFG.num_hidden_layers).any())
        one = [runner.run_one(pol, b["input_ids"][i:i + 1], b["token_type_ids"][i:i + 1],
                              b["attention_mask"][i:i + 1]) for i in range(B)]
        assert [x[1] for x in one] == layer_sim.tolist(), (name, th)
        np.testing.assert_allclose([x[0] for x in one], pred_sim, rtol=1e-4, atol=1e-5)
        pred_b, layer_b = runner.run_batched(pol, b["input_ids"], b["token_type_ids"], b["attention_mask"])
        assert layer_b.tolist() == layer_sim.tolist(), (name, th)
        np.testing.assert_allclose(pred_b.astype(float), pred_sim, rtol=1e-4, atol=1e-5)
    assert exited_early  # the test exercised stopping, not only the last layer


@pytest.mark.slow
def test_early_exit_run_end_to_end_and_policy_script(tmp_path, tiny_bert_dir):
    wd = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
           os.path.join(REPO, "configs", "sst2_exit.py:runlocal"), "--workdir", str(wd),
           f"--config.model.name={tiny_bert_dir}", "--config.task.max_length=32", "--config.train.progress=false",
           "--config.exit.routine=alternating"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.load(open(wd / "results.json"))
    assert r["config"]["exit"]["routine"] == "alternating" and 0 <= r["metrics"]["accuracy"] <= 1
    out = tmp_path / "ee"
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "early_exit.py"), "--workdir", str(wd),
                        "--out", str(out), "--limit", "20"], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(out / "sst2_alternating.json"))
    static_last = [row for row in res["rows"] if row["policy"] == "static" and row["threshold"] == 2][0]
    assert static_last["accuracy"] == pytest.approx(r["metrics"]["accuracy"])  # last exit = the loop's metric
    assert all(row["agreement_with_simulation"] == 1.0 for row in res["rows"])
    assert os.path.isfile(out / "sst2_alternating.png") and "| policy |" in p.stdout
    from ftlab import cli

    png = tmp_path / "again.png"
    assert cli.main(["plot", "--kind", "early-exit", "--json", str(out / "sst2_alternating.json"),
                     "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
