"""Pruning during fine-tuning (ftlab/deltas/prune.py): the cubic schedule, the bisection threshold's kept
fraction (global and per-layer), magnitude's top-|W|, movement's straight-through gradient, soft movement's
penalty, the sparse stored form and one run of configs/sst2_prune.py:runlocal through the training loop."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from ftlab import config as config_lib
from ftlab import deltas, tree
from ftlab.deltas import prune
from ftlab.models import BertConfig, build_model

CFG = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)


@pytest.fixture(scope="module")
def base():
    model = build_model(CFG, head="sequence_classification", num_labels=2)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x + 0.01 * rng.normal(size=x.shape), x.dtype), params)


def _delta(base, seed=1, **config):
    cfg = deltas.check_config(prune, config)
    d = prune.init(jax.random.key(0), base, cfg)
    if "scores" in d["prune"]:  # scores as after some training: distinct values
        rng = np.random.default_rng(seed)
        d["prune"]["scores"] = jax.tree_util.tree_map(
            lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), d["prune"]["scores"])
    return cfg, d


def _targets(base, cfg):
    flat = tree.flatten(base)
    return {p: np.asarray(flat[p]) for p in prune.target_paths(base, cfg)}


def _kept(theta, paths):
    flat = tree.flatten(theta["params"])
    return {p: np.asarray(flat[p]) != 0 for p in paths}


def test_schedule_values_by_hand():
    kf = lambda t, T=100: float(prune.keep_fraction(t, T, 0.1, 0.1, 0.2))  # noqa: E731
    assert kf(0) == 1.0 and kf(10) == 1.0  # warmup: t_i = 10
    np.testing.assert_allclose(kf(45), 0.1 + 0.9 * 0.5**3, rtol=1e-6)  # r = (45 - 10) / (80 - 10) = 0.5
    np.testing.assert_allclose(kf(24), 0.1 + 0.9 * 0.8**3, rtol=1e-6)  # r = 0.2
    np.testing.assert_allclose(kf(80), 0.1, rtol=1e-6)  # t_f = 80
    np.testing.assert_allclose(kf(100), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(prune.keep_fraction(None, None, 0.03, 0.1, 0.2)), 0.03, rtol=1e-6)
    np.testing.assert_allclose(float(prune.progress(jnp.int32(30), 200, 0.0, 0.5)), 0.3, rtol=1e-6)


def test_order_keys_preserve_float_order():
    x = np.array([-np.inf, -3.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 2.0, np.inf], np.float32)
    k = np.asarray(prune.order_keys(jnp.asarray(x)))
    assert np.all(np.diff(k.astype(np.int64)) > 0)
    assert np.array_equal(k, prune.order_keys_np(x))


@pytest.mark.parametrize("criterion", ["magnitude", "movement"])
@pytest.mark.parametrize("budget", ["global", "per_layer"])
def test_kept_fraction_equals_keep(base, criterion, budget):
    cfg, d = _delta(base, criterion=criterion, budget=budget, keep=0.1)
    W = _targets(base, cfg)
    paths = list(W)
    sizes = {p: W[p].size for p in paths}
    groups = [paths] if budget == "global" else [[p] for p in paths]
    score = {p: np.abs(W[p]) if criterion == "magnitude" else np.asarray(tree.flatten(d["prune"]["scores"])[p])
             for p in paths}
    # evaluation (no step): 32 iterations, exactly round(keep · N) per group
    kept = _kept(prune.apply(base, d), paths)
    for g in groups:
        assert sum(kept[p].sum() for p in g) == round(0.1 * sum(sizes[p] for p in g))
    # training, mid-schedule, TRAIN_ITERS iterations: at least k, at most k + the entries within the final
    # bracket (2^(32 - iters) keys below the k-th largest key)
    T, t = 100, 45
    v = 0.1 + 0.9 * 0.5**3
    kept = _kept(jax.jit(prune.apply, static_argnames="total_steps")(base, d, step=jnp.int32(t), total_steps=T), paths)
    for g in groups:
        n = sum(sizes[p] for p in g)
        k = round(v * n)
        keys = np.concatenate([prune.order_keys_np(score[p]).reshape(-1) for p in g]).astype(np.int64)
        kth = np.sort(keys)[-k]
        slack = int(np.sum((keys < kth) & (keys >= kth - 2 ** (32 - prune.TRAIN_ITERS))))
        got = sum(kept[p].sum() for p in g)
        assert k <= got <= k + slack, (got, k, slack)
        assert abs(got / n - v) < 0.01
    # warmup: everything kept
    kept = _kept(prune.apply(base, d, step=jnp.int32(5), total_steps=T), paths)
    assert all(kept[p].all() for p in paths)


def test_magnitude_keeps_the_largest_weights(base):
    cfg, d = _delta(base, criterion="magnitude", keep=0.2)
    W = _targets(base, cfg)
    theta = tree.flatten(prune.apply(base, d)["params"])
    a = np.concatenate([np.abs(W[p]).ravel() for p in W])
    kept = np.concatenate([(np.asarray(theta[p]) != 0).ravel() for p in W])
    k = round(0.2 * a.size)
    assert kept.sum() == k and a[kept].min() > a[~kept].max()
    for p in W:  # kept entries are W itself, the rest 0
        t = np.asarray(theta[p])
        np.testing.assert_array_equal(t[t != 0], W[p][t != 0])
    # other leaves untouched
    for p, x in tree.flatten(base).items():
        if p not in W:
            np.testing.assert_array_equal(np.asarray(theta[p]), np.asarray(x))


@pytest.mark.parametrize("criterion", ["movement", "soft_movement"])
def test_straight_through_gradients(base, criterion):
    cfg, d = _delta(base, criterion=criterion, keep=0.3)
    W = _targets(base, cfg)
    S = {p: np.asarray(x) for p, x in tree.flatten(d["prune"]["scores"]).items()}
    # the mask with dense numpy math
    if criterion == "movement":
        allS = np.concatenate([S[p].ravel() for p in W])
        kth = np.sort(allS)[-round(0.3 * allS.size)]
        M = {p: (S[p] >= kth).astype(np.float32) for p in W}
    else:
        M = {p: (1 / (1 + np.exp(-S[p].astype(np.float64))) > 0.1).astype(np.float32) for p in W}
    rng = np.random.default_rng(3)
    C = {p: rng.normal(size=x.shape).astype(np.float32) for p, x in tree.flatten(base).items()}

    train, fixed = tree.split(d, prune.trainable(d))

    def loss(train):  # L = Σ C ⊙ θ²: dL/dθ = 2 C ⊙ θ
        th = tree.flatten(prune.apply(base, tree.merge(train, fixed))["params"])
        return sum(jnp.sum(C[p] * th[p] ** 2) for p in th)

    g = jax.grad(loss)(train)
    gS, gW = tree.flatten(g["prune"]["scores"]), tree.flatten(g)
    for p in W:
        dtheta = 2 * C[p] * W[p] * M[p]  # dL/dθ' at θ' = W ⊙ M
        np.testing.assert_allclose(np.asarray(gS[p]), dtheta * W[p], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(gW[p]), dtheta * M[p], rtol=1e-5, atol=1e-7)
    assert set(tree.flatten(fixed)) == {p for p in tree.flatten(d) if p.startswith(("prune/hp/", "prune/targets/"))}


def test_magnitude_mask_is_constant_in_the_backward_pass(base):
    cfg, d = _delta(base, criterion="magnitude", keep=0.3)
    W = _targets(base, cfg)
    M = _kept(prune.apply(base, d), list(W))
    train, fixed = tree.split(d, prune.trainable(d))
    g = tree.flatten(jax.grad(lambda t: sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(
        prune.apply(base, tree.merge(t, fixed))["params"])))(train))
    for p in W:
        np.testing.assert_array_equal(np.asarray(g[p]), M[p].astype(np.float32))


@pytest.mark.parametrize("criterion", ["magnitude", "movement", "soft_movement"])
@pytest.mark.parametrize("budget", ["global", "per_layer"])
def test_stored_form_round_trip_and_bytes(base, criterion, budget):
    # soft movement: tau 0.9 keeps σ(S) > 0.9, ~1.4% of S ~ N(0, 1), so that the sparse form is the smaller one
    extra = {"tau": 0.9} if criterion == "soft_movement" else {}
    cfg, d = _delta(base, criterion=criterion, budget=budget, keep=0.1, **extra)
    theta = prune.apply(base, d)
    arrays = prune.to_disk(d)
    W = _targets(base, cfg)
    kept = sum(arrays[f"prune/indices/{p}"].size for p in W)
    assert kept == sum(m.sum() for m in _kept(theta, list(W)).values())
    assert all(arrays[f"prune/indices/{p}"].dtype == np.int32 for p in W)
    assert all(arrays[f"prune/values/{p}"].dtype == np.float32 for p in W)
    dense_rest = sum(np.asarray(x).nbytes for p, x in tree.flatten(base).items() if p not in W)
    assert tree.nbytes(arrays) == 8 * kept + dense_rest
    d2 = prune.from_disk(arrays, base, cfg)
    assert "scores" not in d2["prune"]  # mask-free: the criterion no longer matters
    theta2 = prune.apply(base, d2)
    a, b = tree.flatten(theta["params"]), tree.flatten(theta2["params"])
    assert list(a) == list(b)
    for p in a:
        np.testing.assert_array_equal(np.asarray(a[p]), np.asarray(b[p]))
    assert tree.nbytes(prune.to_disk(d2)) == tree.nbytes(arrays)  # the stored form stores itself
    assert prune.stats(base, d2)["density"] == prune.stats(base, d)["density"]
    if criterion != "soft_movement":
        n = sum(x.size for x in W.values())
        k = round(0.1 * n) if budget == "global" else sum(round(0.1 * x.size) for x in W.values())
        assert kept == k
    with pytest.raises(ValueError, match="differ"):
        prune.from_disk({k: v for k, v in arrays.items() if not k.startswith("prune/values/")}, base, cfg)


@pytest.mark.parametrize("criterion", ["magnitude", "soft_movement"])
def test_stored_form_falls_back_to_dense_above_half_density(base, criterion):
    # per-tensor keep 0.6 (magnitude), or soft movement's σ(S) > 0.1 with S ~ N(0, 1) (~98% kept): 8 bytes per
    # kept entry would exceed the dense 4, so each pruned tensor is stored as the dense W ⊙ M
    cfg, d = _delta(base, criterion=criterion, budget="per_layer", keep=0.6)
    arrays = prune.to_disk(d)
    W = _targets(base, cfg)
    assert not any(k.startswith(("prune/indices/", "prune/values/")) for k in arrays)
    theta = prune.apply(base, d)
    kept = _kept(theta, list(W))
    for p in W:
        np.testing.assert_array_equal(arrays[f"prune/dense/{p}"], np.asarray(tree.flatten(theta["params"])[p]))
    dense_rest = sum(np.asarray(x).nbytes for p, x in tree.flatten(base).items() if p not in W)
    assert tree.nbytes(arrays) == 4 * sum(x.size for x in W.values()) + dense_rest
    d2 = prune.from_disk(arrays, base, cfg)
    a, b = tree.flatten(theta["params"]), tree.flatten(prune.apply(base, d2)["params"])
    assert list(a) == list(b)
    for p in a:
        np.testing.assert_array_equal(np.asarray(a[p]), np.asarray(b[p]))
    assert prune.stats(base, d2)["kept"] == sum(int(m.sum()) for m in kept.values()) == prune.stats(base, d)["kept"]
    assert tree.nbytes(prune.to_disk(d2)) == tree.nbytes(arrays)
    bad = dict(arrays)
    p0 = next(iter(W))
    bad[f"prune/dense/{p0}"] = bad[f"prune/dense/{p0}"][:1]
    with pytest.raises(ValueError, match="stored shape"):
        prune.from_disk(bad, base, cfg)


def test_soft_movement_penalty_by_hand(base):
    cfg, d = _delta(base, criterion="soft_movement", penalty_weight=50.0)
    S = {p: np.asarray(x, np.float64) for p, x in tree.flatten(d["prune"]["scores"]).items()}
    n = sum(x.size for x in S.values())
    mean_sig = sum(np.sum(1 / (1 + np.exp(-x))) for x in S.values()) / n
    T = 100
    for t, r in ((5, 0.0), (45, 0.5), (90, 1.0)):
        want = 50.0 * (1 - (1 - r) ** 3) * mean_sig
        np.testing.assert_allclose(float(prune.penalty(d, jnp.int32(t), T)), want, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(float(prune.penalty(d)), 50.0 * mean_sig, rtol=1e-5)
    for crit in ("magnitude", "movement"):
        assert float(prune.penalty(_delta(base, criterion=crit)[1], jnp.int32(90), T)) == 0.0


def test_num_trainable_and_config_errors(base):
    total = tree.count(base)
    n = sum(x.size for x in _targets(base, deltas.check_config(prune, {})).values())
    assert prune.num_trainable(base, {"criterion": "magnitude"}) == total
    assert prune.num_trainable(base, {"criterion": "movement"}) == total + n
    with pytest.raises(ValueError, match="criterion"):
        prune.init(jax.random.key(0), base, {"criterion": "random"})
    with pytest.raises(ValueError, match="keep"):
        prune.init(jax.random.key(0), base, {"keep": 0.0})
    with pytest.raises(ValueError, match="match no parameter"):
        prune.init(jax.random.key(0), base, {"targets": "nothing"})


@pytest.mark.slow
def test_runlocal_reaches_the_target_density(tmp_path, tiny_bert_dir):
    from ftlab.train.loop import train_and_evaluate

    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_prune.py:runlocal"))
    cfg = config_lib.apply_overrides(cfg, [f"model.name={tiny_bert_dir}", "task.max_length=32",
                                           "train.pad_to_multiple_of=32", "train.progress=false",
                                           "train.eval_batch_size=256"])
    train_and_evaluate(cfg, str(tmp_path))
    r = json.load(open(tmp_path / "results.json"))
    s = r["delta_stats"]
    assert r["method"] == "prune" and r["train_steps"] == 8 and s["criterion"] == "movement"
    # the config's per-layer budget: each encoder kernel keeps round(0.1 · its size) entries
    mc = json.load(open(os.path.join(tiny_bert_dir, "config.json")))
    h, i = mc["hidden_size"], mc["intermediate_size"]
    per_layer = 4 * round(0.1 * h * h) + 2 * round(0.1 * h * i)
    assert s["budget"] == "per_layer" and s["pruned_params"] == mc["num_hidden_layers"] * (4 * h * h + 2 * h * i)
    assert s["kept"] == mc["num_hidden_layers"] * per_layer and abs(s["density"] - 0.1) < 1e-3
    meta = json.load(open(tmp_path / "delta" / "delta.json"))
    assert meta["array_bytes"] == r["delta_bytes"]
    dense = r["total_params"] * 4
    assert r["delta_bytes"] == dense - 4 * s["pruned_params"] + 8 * s["kept"]


def test_only_soft_movement_waits_for_the_schedule_end_to_select():
    assert prune.selectable({"criterion": "magnitude"}, 1, 100) and prune.selectable({"criterion": "movement"}, 1, 100)
    soft = {"criterion": "soft_movement", "cooldown_fraction": 0.2}
    assert not prune.selectable(soft, 79, 100) and prune.selectable(soft, 80, 100) and prune.selectable(soft, 100, 100)


@pytest.mark.slow
def test_soft_movement_run_selects_its_best_after_the_schedule(tmp_path, tiny_bert_dir):
    """Evaluations every 2 of 8 steps: those at 2, 4, 6 (before t_f = 6.4) are logged but never the best δ."""
    from ftlab.train.loop import train_and_evaluate

    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_prune.py:runlocal"))
    cfg = config_lib.apply_overrides(cfg, [f"model.name={tiny_bert_dir}", "task.max_length=32",
                                           "train.pad_to_multiple_of=32", "train.progress=false",
                                           "train.eval_batch_size=256", "delta.criterion=soft_movement",
                                           "train.eval_every=2"])
    train_and_evaluate(cfg, str(tmp_path))
    r = json.load(open(tmp_path / "results.json"))
    evals = [json.loads(ln) for ln in open(tmp_path / "metrics.jsonl") if '"eval"' in ln]
    assert [e["step"] for e in evals] == [2, 4, 6, 8]
    assert r["best_step"] == 8 and json.load(open(tmp_path / "delta" / "delta.json"))["step"] == 8


def test_largest_kept_by_hand(base):
    """Per-layer magnitude at keep 0.2 keeps every tensor's top 10% by |W₀| (the δ at init is θ₀); movement
    scores drawn independently of W keep about their density of it. The stored form gives the same masks, and
    the shares equal a direct count over each tensor's argsort."""
    cfg, d = _delta(base, criterion="magnitude", budget="per_layer", keep=0.2)
    r = prune.largest_kept(base, d, (0.1,))
    assert r["mean"]["top0.1"] == 1.0 and r["mean"]["density"] == pytest.approx(0.2, abs=0.01)
    stored = prune.from_disk(prune.to_disk(d), base, cfg)
    for p, m in prune.final_masks(base, stored).items():
        np.testing.assert_array_equal(m, prune.final_masks(base, d)[p])
    cfg, d = _delta(base, criterion="movement", budget="per_layer", keep=0.5)
    r = prune.largest_kept(base, d, (0.25,))
    W = _targets(base, cfg)
    masks = prune.final_masks(base, d)
    for p, row in r["tensors"].items():
        top = np.argsort(-np.abs(W[p]).ravel())[: int(np.ceil(0.25 * W[p].size))]
        assert row["top0.25"] == masks[p].ravel()[top].mean() and row["density"] == masks[p].mean()
    assert 0.3 < r["mean"]["top0.25"] < 0.7  # independent of |W₀|: about the density 0.5


def test_prune_diagnostics_script(tmp_path, tiny_bert_dir):
    """The script reads a run's exported δ against its own base (config.json's model.name) and refuses a δ of
    another method."""
    import subprocess
    import sys

    from ftlab.checkpoint import delta_io
    from ftlab.checkpoint.hf import load_base

    b = load_base(tiny_bert_dir)
    cfg, d = _delta(b.params, criterion="magnitude", budget="per_layer", keep=0.3)
    run = tmp_path / "run"
    delta_io.save(str(run / "delta"), "prune", cfg, d, b.source, b.hash, {"step": 7})
    (run / "config.json").write_text(json.dumps({"model": {"name": tiny_bert_dir}}))
    script = os.path.join(REPO, "scripts", "prune_diagnostics.py")
    out = subprocess.run([sys.executable, script, str(run), "--out", str(tmp_path / "d.json")],
                         capture_output=True, text=True, check=True)
    assert "| run | magnitude | per_layer |" in out.stdout
    rows = json.load(open(tmp_path / "d.json"))
    assert rows[0]["step"] == 7 and rows[0]["mean"]["top0.1"] == 1.0
    delta_io.save(str(tmp_path / "other"), "bitfit", {}, {"x": np.zeros(2, np.float32)}, b.source, b.hash, {})
    bad = subprocess.run([sys.executable, script, str(tmp_path / "other"), "--model", tiny_bert_dir],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not 'prune'" in bad.stderr
