"""The embedding-perturbation regularisers (ftlab.train.regularizers: R3F, R4F, SMART, FreeLB) and Mixout
(ftlab.deltas.mixout) against their definitions, on a tiny 1-layer BERT (width 16), dropout off where a test
reproduces a computation by hand.

- the `input_noise` site: zero noise is bit-identical; noise equals shifting the embedding rows by hand (BERT,
  Llama, GPT-2, and with a soft prompt);
- symmetric KL / squared error against numpy; R3F = task loss + λ·symKL with the same noise; R4F's head has
  spectral norm 1 (numpy SVD) and its loss is R3F's with W/σ_max(W);
- SMART: the adversarial noise equals K explicit normalised-gradient steps with projection (linf and l2),
  the proximal term and the EMA update, the gradient holds ν fixed;
- FreeLB: the parameter gradient is the mean of the gradients of an explicit Python loop over K perturbations;
- Mixout: p = 0 is δ, eval is δ, each entry is (m·w + (1−m)·u − p·u)/(1−p), the Monte-Carlo mean is δ;
- config errors; the un-jitted step under jax.vmap over 2 seeds equals two separate steps; state['reg']
  survives an Orbax round trip; every method through `train_and_evaluate`.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO

from ftlab import config as config_lib
from ftlab import deltas, tree
from ftlab.models import BertConfig, GPT2Config, LlamaConfig, build_model
from ftlab.train import losses
from ftlab.train import regularizers as R
from ftlab.train import step as step_lib

CFG = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
B, T, D = 4, 8, 16
SITE = "backbone/embeddings/input_noise"


def _batch(seed=0, kind="classification"):
    r = np.random.default_rng(seed)
    lengths = np.array([8, 5, 3, 8])
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    ids = r.permutation(np.arange(1, B * T + 1)).reshape(B, T).astype(np.int32)  # every (b, t) a distinct id
    labels = r.integers(0, 3, size=B).astype(np.int32) if kind == "classification" else r.normal(size=B)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros((B, T), np.int32),
            "labels": labels.astype(np.int32 if kind == "classification" else np.float32),
            "example_mask": np.array([1, 1, 1, 0], np.float32)}


@pytest.fixture(scope="module")
def setup():
    model = build_model(CFG, head="sequence_classification", num_labels=3)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    # a larger head: logits of order 1, so that the divergences are far from float32 rounding
    params["head"]["classifier"]["kernel"] = 30.0 * params["head"]["classifier"]["kernel"]
    return model, params


def _vars(params, noise=None, delta=None):
    v = {"params": params}
    if delta is not None:
        v["delta"] = delta
    if noise is not None:
        v = R.with_noise(v, SITE, noise)
    return v


_JITTED: dict = {}


def _logits(model, variables, batch):
    """model.apply in eval mode, jitted once per model (eager applies are slow on a loaded CPU)."""
    if id(model) not in _JITTED:
        _JITTED[id(model)] = (model, jax.jit(lambda v, b: model.apply(v, b["input_ids"], deterministic=True,
                                                                      **step_lib.model_inputs(b))))
    return _JITTED[id(model)][1](variables, batch)


def _vg(reg, model, mod, kind="classification"):
    return jax.jit(R.build(reg, model, mod, kind)["value_and_grad"])


def _np_symkl(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    p = np.exp(a - a.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(b - b.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    return (p * np.log(p / q)).sum(-1) + (q * np.log(q / p)).sum(-1)


def _wmean(x, w):
    return float((np.asarray(x) * w).sum() / max(w.sum(), 1.0))


def _state(train, fixed, tx, seed=3, reg_state=None):
    s = {"step": jnp.zeros([], jnp.int32), "train": train, "fixed": fixed, "opt_state": tx.init(train),
         "rng": jax.random.key_data(jax.random.key(seed))}
    if reg_state:
        s["reg"] = reg_state
    return s


# ------------------------------------------------------------------------------------- the noise site


def test_zero_noise_is_bit_identical_and_noise_equals_shifted_embeddings(setup):
    model, params = setup
    batch = _batch()
    # Op by op (not jitted: two different XLA programs may fuse, hence round, differently) + 0 changes no bit.
    eager = lambda v: model.apply(v, batch["input_ids"], deterministic=True, **step_lib.model_inputs(batch))  # noqa: E731
    assert np.array_equal(eager(_vars(params)), eager(_vars(params, jnp.zeros((B, T, D)))))
    plain = _logits(model, _vars(params), batch)
    noise = 0.3 * jax.random.normal(jax.random.key(1), (B, T, D))
    with_noise = _logits(model, _vars(params, noise), batch)
    # Every (b, t) holds its own token id: adding noise[b, t] to that id's embedding row is the same input.
    flat = tree.flatten(params)
    table = flat["backbone/embeddings/word_embeddings/embedding"]
    table = table.at[batch["input_ids"].reshape(-1)].add(noise.reshape(-1, D))
    by_hand = _logits(model, {"params": tree.unflatten({**flat, "backbone/embeddings/word_embeddings/embedding":
                                                        table})}, batch)
    pad = batch["input_ids"] == 0  # id 0 is shared by the padding positions: compare only rows without padding
    rows = ~pad.any(1)
    np.testing.assert_allclose(with_noise[rows], by_hand[rows], rtol=1e-5, atol=1e-6)
    assert not np.allclose(with_noise, plain, atol=1e-4)


def test_noise_site_with_a_soft_prompt(setup):
    """Noise is added to the T real tokens only; the P prompt vectors stay as they are."""
    model, params = setup
    prompt = deltas.get("prompt")
    d = prompt.init(jax.random.key(0), params, deltas.check_config(prompt, {"num_virtual_tokens": 3}))
    v = prompt.apply(params, d)
    batch = {k: x[:1] for k, x in _batch().items()}  # the full-length row: no padding
    noise = 0.3 * jax.random.normal(jax.random.key(1), (1, T, D))
    np.testing.assert_allclose(_logits(model, v, batch), _logits(model, R.with_noise(v, SITE, jnp.zeros((1, T, D))),
                                                                 batch), rtol=1e-6, atol=1e-7)
    flat = tree.flatten(v["params"])
    key = "backbone/embeddings/word_embeddings/embedding"
    shifted = {**v, "params": tree.unflatten({**flat, key: flat[key].at[batch["input_ids"][0]].add(noise[0])})}
    np.testing.assert_allclose(_logits(model, R.with_noise(v, SITE, noise), batch), _logits(model, shifted, batch),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", [pytest.param("llama", marks=pytest.mark.slow), "gpt2"])
def test_noise_site_in_decoders(family):
    if family == "llama":
        cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
        key = "backbone/embed_tokens/embedding"
    else:
        cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0)
        key = "backbone/wte/embedding"
    model = build_model(cfg, head="sequence_classification", num_labels=2)
    ids = jnp.arange(1, 9, dtype=jnp.int32)[None]
    params = model.init(jax.random.key(0), ids)["params"]
    assert R.noise_site(params) == "backbone/input_noise"
    noise = 0.3 * jax.random.normal(jax.random.key(1), (1, 8, 16))
    assert np.array_equal(model.apply({"params": params}, ids),  # op by op: bit-identical with zero noise
                          model.apply(R.with_noise({"params": params}, "backbone/input_noise", jnp.zeros_like(noise)),
                                      ids))
    apply = jax.jit(model.apply)
    flat = tree.flatten(params)
    shifted = tree.unflatten({**flat, key: flat[key].at[ids[0]].add(noise[0])})
    np.testing.assert_allclose(apply(R.with_noise({"params": params}, "backbone/input_noise", noise), ids),
                               apply({"params": shifted}, ids), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------- divergences


def test_divergence_against_numpy():
    r = np.random.default_rng(0)
    a, b = r.normal(size=(5, 3)).astype(np.float32), r.normal(size=(5, 3)).astype(np.float32)
    w = np.array([1, 1, 0, 1, 1], np.float32)
    batch = {"example_mask": w}
    np.testing.assert_allclose(R.divergence("classification", a, b, batch), _wmean(_np_symkl(a, b), w), rtol=1e-5)
    np.testing.assert_allclose(R.symmetric_kl(a, a), 0.0, atol=1e-7)
    np.testing.assert_allclose(R.divergence("regression", a[:, :1], b[:, :1], batch),
                               _wmean((a[:, 0] - b[:, 0]) ** 2, w), rtol=1e-5)
    at, bt = r.normal(size=(2, 4, 3)), r.normal(size=(2, 4, 3))
    labels = np.array([[1, 2, -100, 0], [0, -100, -100, 1]])
    tok_w = (labels != -100).astype(np.float64)
    np.testing.assert_allclose(R.divergence("tagging", at, bt, {"labels": labels}),
                               _wmean(_np_symkl(at, bt), tok_w), rtol=1e-5)


# --------------------------------------------------------------------------------------------- R3F / R4F


def _full(params):
    mod = deltas.get("full")
    train = mod.init(jax.random.key(0), params, {})
    return mod, train


@pytest.mark.parametrize("noise_kind", ["normal", pytest.param("uniform", marks=pytest.mark.slow)])
def test_r3f_loss_is_task_loss_plus_lambda_symkl(setup, noise_kind):
    model, params = setup
    mod, train = _full(params)
    batch = _batch()
    reg = {"method": "r3f", "lam": 2.0, "sigma": 0.5, "noise": noise_kind}
    rng = jax.random.key(7)
    (value, aux), _ = _vg(reg, model, mod)(train, {}, params, batch, rng, jnp.zeros([], jnp.int32))
    key = jax.random.fold_in(rng, 1)
    if noise_kind == "normal":
        z = 0.5 * jax.random.normal(key, (B, T, D))
    else:
        z = jax.random.uniform(key, (B, T, D), jnp.float32, -0.5, 0.5)
    z = z * batch["attention_mask"][..., None]
    clean, noisy = _logits(model, _vars(params), batch), _logits(model, _vars(params, z), batch)
    task, _ = losses.compute("classification", clean, batch)
    kl = _wmean(_np_symkl(clean, noisy), batch["example_mask"])
    assert kl > 1e-3
    np.testing.assert_allclose(aux["reg"], kl, rtol=1e-4)
    np.testing.assert_allclose(value, float(task) + 2.0 * kl, rtol=1e-5)


@pytest.mark.slow
def test_r3f_regression_uses_squared_error(setup):
    _, params = setup
    model = build_model(CFG, head="sequence_classification", num_labels=1)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    mod, train = _full(params)
    batch = _batch(kind="regression")
    rng = jax.random.key(7)
    (value, aux), _ = _vg({"method": "r3f", "sigma": 0.5}, model, mod, "regression")(train, {}, params, batch, rng, jnp.zeros([], jnp.int32))
    z = 0.5 * jax.random.normal(jax.random.fold_in(rng, 1), (B, T, D)) * batch["attention_mask"][..., None]
    clean, noisy = _logits(model, _vars(params), batch), _logits(model, _vars(params, z), batch)
    se = _wmean((np.asarray(clean)[:, 0] - np.asarray(noisy)[:, 0]) ** 2, batch["example_mask"])
    np.testing.assert_allclose(aux["reg"], se, rtol=1e-4)
    np.testing.assert_allclose(value, float(losses.compute("regression", clean, batch)[0]) + se, rtol=1e-5)


def test_r4f_head_has_spectral_norm_one(setup):
    model, params = setup
    mod, train = _full(params)
    batch = _batch()
    kpath = "head/classifier/kernel"
    reg = {"method": "r4f", "sigma": 0.5}
    rng, step0 = jax.random.key(7), jnp.zeros([], jnp.int32)
    # the forward uses W / σ_max(W): R4F's loss is R3F's on the normalised kernel
    flat = tree.flatten(train)
    w = np.asarray(flat[kpath])
    normed = tree.unflatten({**flat, kpath: jnp.asarray(w / np.linalg.svd(w, compute_uv=False)[0])})
    r4f = _vg(reg, model, mod)(train, {}, params, batch, rng, step0)[0][0]
    r3f = _vg({**reg, "method": "r3f"}, model, mod)(normed, {}, params, batch, rng, step0)[0][0]
    np.testing.assert_allclose(r4f, r3f, rtol=1e-5)
    # after an update the stored head kernel is normalised (σ_max from numpy's SVD); nothing else changes
    after, _ = R.build(reg, model, mod, "classification")["after_update"](train, None)
    k = np.asarray(tree.flatten(after)[kpath])
    np.testing.assert_allclose(np.linalg.svd(k, compute_uv=False)[0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(k, w / np.linalg.svd(w, compute_uv=False)[0], rtol=1e-5)
    for p, x in tree.flatten(after).items():
        assert p == kpath or np.array_equal(x, tree.flatten(train)[p]), p


# ---------------------------------------------------------------------------------------------- SMART


def _smart_expected(model, params, ema_params, batch, rng, cfg):
    """SMART's loss terms and ν computed by hand: explicit jax.grad steps on the noise."""
    mask = batch["attention_mask"][..., None].astype(np.float32)
    clean = _logits(model, _vars(params), batch)
    nu = cfg["sigma"] * jax.random.normal(jax.random.fold_in(rng, 1), (B, T, D)) * mask
    grad = jax.jit(jax.grad(lambda n: R.divergence("classification", clean, model.apply(
        _vars(params, n), batch["input_ids"], deterministic=True, **step_lib.model_inputs(batch)), batch)))
    for _ in range(cfg["steps"]):
        g = grad(nu)
        g = np.asarray(g).reshape(B, -1)
        if cfg["norm"] == "linf":
            n = np.abs(g).max(1)
        else:
            n = np.sqrt((g ** 2).sum(1))
        step = np.asarray(nu) + cfg["step_size"] * (g / np.where(n > 0, n, 1.0)[:, None]).reshape(B, T, D)
        if cfg["norm"] == "linf":
            step = np.clip(step, -cfg["eps"], cfg["eps"])
        else:
            sn = np.sqrt((step.reshape(B, -1) ** 2).sum(1))
            step = step * np.minimum(1.0, cfg["eps"] / np.where(sn > 0, sn, 1.0))[:, None, None]
        nu = jnp.asarray(step * mask, jnp.float32)
    adv = _logits(model, _vars(params, nu), batch)
    teacher = _logits(model, _vars(ema_params), batch)
    w = batch["example_mask"]
    return nu, clean, _wmean(_np_symkl(clean, adv), w), _wmean(_np_symkl(clean, teacher), w)


@pytest.mark.parametrize("norm,steps", [("linf", 1), pytest.param("l2", 2, marks=pytest.mark.slow)])
def test_smart_adversarial_step_projection_and_proximal_term(setup, norm, steps):
    model, params = setup
    mod, train = _full(params)
    batch = _batch()
    eps = 0.05 if norm == "linf" else 0.25
    reg = {"method": "smart", "lam": 3.0, "sigma": 0.01, "steps": steps, "step_size": 0.2, "eps": eps,
           "norm": norm, "mu": 0.7}
    ema = jax.tree_util.tree_map(lambda x: x + 0.05 * jnp.cos(jnp.arange(x.size).reshape(x.shape)), train)
    rng, step0 = jax.random.key(11), jnp.zeros([], jnp.int32)
    (value, aux), grads = _vg(reg, model, mod)(train, {}, params, batch, rng, step0, {"ema": ema})
    nu, clean, adv_kl, prox = _smart_expected(model, params, ema, batch, rng, R.check_config(reg))
    if norm == "linf":  # the projection is active: some entries sit on the ε box
        assert np.isclose(np.abs(np.asarray(nu)).max(), eps)
    else:
        norms = np.sqrt((np.asarray(nu).reshape(B, -1) ** 2).sum(1))
        assert np.all(norms <= eps * (1 + 1e-5)) and np.isclose(norms.max(), eps, rtol=1e-4)
    task = float(losses.compute("classification", clean, batch)[0])
    np.testing.assert_allclose(aux["reg"], adv_kl, rtol=1e-3)
    np.testing.assert_allclose(aux["prox"], prox, rtol=1e-4)
    np.testing.assert_allclose(value, task + 3.0 * adv_kl + 0.7 * prox, rtol=1e-4)

    # the gradient treats ν (and the teacher) as constants
    def by_hand(t):
        c = _logits(model, _vars(t), batch)
        a = _logits(model, _vars(t, nu), batch)
        te = jax.lax.stop_gradient(_logits(model, _vars(ema), batch))
        return (losses.compute("classification", c, batch)[0] + 3.0 * R.divergence("classification", c, a, batch)
                + 0.7 * R.divergence("classification", c, te, batch))

    want = jax.jit(jax.grad(by_hand))(train)
    for p, g in tree.flatten(grads).items():
        np.testing.assert_allclose(g, tree.flatten(want)[p], rtol=2e-3, atol=1e-6, err_msg=p)


class StandIn:
    """A cheap stand-in for the BERT classifier with the same call signature and noise site (mean of the
    word embeddings + input_noise, dropout, tanh, the head), so that whole train steps compile in a blink."""

    def apply(self, variables, input_ids, deterministic=True, rngs=None, attention_mask=None, token_type_ids=None):
        p = tree.flatten(variables["params"])
        x = p["backbone/embeddings/word_embeddings/embedding"][input_ids]
        noise = tree.flatten(variables.get("delta", {})).get(SITE)
        if noise is not None:
            x = x + noise
        if not deterministic:
            x = jnp.where(jax.random.bernoulli(rngs["dropout"], 0.9, x.shape), x / 0.9, 0.0)
        m = attention_mask[..., None].astype(x.dtype)
        h = jnp.tanh(30.0 * (x * m).sum(1) / m.sum(1))
        return h @ p["head/classifier/kernel"] + p["head/classifier/bias"]


def test_smart_ema_update_and_no_state_without_mu(setup):
    _, params = setup
    model = StandIn()
    mod, train = _full(params)
    assert R.init_state({"method": "smart", "mu": 0.0}, train) == {}
    assert R.init_state({"method": "r3f"}, train) == {}
    reg = {"method": "smart", "beta": 0.9}
    st = R.init_state(reg, train)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, st["ema"], train))
    tx = optax.sgd(1e-1)
    step = step_lib.make_train_step(model, mod, tx, "classification", reg=reg)
    before = jax.tree_util.tree_map(np.array, train)  # the step donates its state
    new, m = step(_state(train, {}, tx, reg_state=st), params, _batch())
    assert float(m["reg"]) >= 0
    want = jax.tree_util.tree_map(lambda e, x: 0.9 * e + 0.1 * np.asarray(x), before, new["train"])
    for p, x in tree.flatten(new["reg"]["ema"]).items():
        np.testing.assert_allclose(x, tree.flatten(want)[p], rtol=1e-6, atol=1e-7, err_msg=p)


# --------------------------------------------------------------------------------------------- FreeLB


@pytest.mark.parametrize("eps", [pytest.param(0.0, marks=pytest.mark.slow), 0.05])
def test_freelb_gradient_is_the_mean_over_the_k_perturbations(setup, eps):
    model, params = setup
    mod, train = _full(params)
    batch = _batch()
    k, alpha, init_mag = 3, 0.3, 0.2
    reg = {"method": "freelb", "steps": k, "step_size": alpha, "eps": eps, "init_mag": init_mag}
    rng = jax.random.key(5)
    (value, _), grads = _vg(reg, model, mod)(train, {}, params, batch, rng, jnp.zeros([], jnp.int32))
    # the explicit loop
    mask = batch["attention_mask"][..., None].astype(np.float32)
    lengths = mask.sum((1, 2))
    noise = (jax.random.uniform(jax.random.fold_in(rng, 1), (B, T, D), jnp.float32, -1.0, 1.0) * mask
             * (init_mag / np.sqrt(lengths * D))[:, None, None])

    def loss(t, n):
        return losses.compute("classification", _logits(model, _vars(t, n), batch), batch)[0]

    acc, total = None, 0.0
    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    for _ in range(k):
        value_k, (g, gn) = vg(train, noise)
        total += float(value_k)
        acc = g if acc is None else jax.tree_util.tree_map(jnp.add, acc, g)
        gn = np.asarray(gn)
        gnorm = np.sqrt((gn.reshape(B, -1) ** 2).sum(1))
        noise = np.asarray(noise) + alpha * gn / np.where(gnorm > 0, gnorm, 1.0)[:, None, None]
        if eps > 0:
            nn_ = np.sqrt((noise.reshape(B, -1) ** 2).sum(1))
            noise = noise * np.minimum(1.0, eps / nn_)[:, None, None]
        noise = jnp.asarray(noise * mask, jnp.float32)
    np.testing.assert_allclose(value, total / k, rtol=1e-5)
    for p, g in tree.flatten(grads).items():
        np.testing.assert_allclose(g, np.asarray(tree.flatten(acc)[p]) / k, rtol=1e-4, atol=1e-7, err_msg=p)


# --------------------------------------------------------------------------------------------- Mixout


@pytest.fixture(scope="module")
def mixout_setup(setup):
    _, params = setup
    mo = deltas.get("mixout")
    # δ differs from θ₀ everywhere, so kept and replaced entries are told apart
    delta = mo.init(jax.random.key(0), params, deltas.check_config(mo, {"p": 0.6}))
    delta = {**jax.tree_util.tree_map(lambda x: x + 0.1 + 0.01 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                                      {k: v for k, v in delta.items() if k != "mixout"}),
             "mixout": delta["mixout"]}
    return mo, params, delta


def test_mixout_formula_eval_and_p0(mixout_setup):
    mo, params, delta = mixout_setup
    p = 0.6
    w_all = {k: v for k, v in delta.items() if k != "mixout"}
    # eval: δ exactly
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, mo.apply(params, delta)["params"], w_all))
    out = tree.flatten(mo.apply(params, delta, rng=jax.random.key(1), train=True)["params"])
    flat_w, flat_u = tree.flatten(w_all), tree.flatten(params)
    targets = mo.target_paths(params, {"p": p})
    assert targets and all(t.startswith("backbone/") and t.endswith("/kernel") for t in targets)
    replaced = total = 0
    for path, x in out.items():
        w, u, x = np.asarray(flat_w[path]), np.asarray(flat_u[path]), np.asarray(x)
        if path not in targets:  # biases, LayerNorms, embeddings, the head: untouched
            assert np.array_equal(x, w), path
            continue
        kept_v, repl_v = (w - p * u) / (1 - p), (u - p * u) / (1 - p)  # (m·w + (1−m)·u − p·u)/(1−p), m = 1 / 0
        is_kept, is_repl = np.isclose(x, kept_v, rtol=1e-5, atol=1e-7), np.isclose(x, repl_v, rtol=1e-5, atol=1e-7)
        assert np.all(is_kept ^ is_repl), path
        np.testing.assert_allclose(x[is_repl], u[is_repl], rtol=1e-5, atol=1e-7)  # replaced entries are u
        replaced, total = replaced + is_repl.sum(), total + x.size
    assert abs(replaced / total - p) < 0.03
    # p = 0: training is δ exactly
    d0 = {**delta, "mixout": {**delta["mixout"], "p": jnp.zeros([], jnp.float32)}}
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        np.array_equal, mo.apply(params, d0, rng=jax.random.key(1), train=True)["params"], w_all))
    with pytest.raises(ValueError, match="p must be in"):
        mo.init(jax.random.key(0), params, {"p": 1.0})


def test_mixout_is_unbiased(mixout_setup):
    mo, params, delta = mixout_setup
    path = "backbone/encoder/layer/0/intermediate/dense/kernel"
    n = 4000
    samples = jax.jit(jax.vmap(lambda k: tree.flatten(mo.apply(params, delta, rng=k, train=True)["params"])[path]))(
        jax.random.split(jax.random.key(2), n))
    w, u = np.asarray(tree.flatten(delta)[path]), np.asarray(tree.flatten(params)[path])
    # Var = p/(1−p)·(w − u)²: the mean over n samples is within 5 standard errors of w
    se = np.sqrt(0.6 / 0.4) * np.abs(w - u) / np.sqrt(n)
    assert np.all(np.abs(np.asarray(samples).mean(0) - w) < 5 * se + 1e-6)


# ------------------------------------------------------------------------------------------- config


def test_config_errors_name_the_key():
    from ftlab.train.loop import default_config

    assert dict(default_config().reg) == R.DEFAULTS
    assert R.check_config({"method": "smart"})["steps"] == 1 and R.check_config({"method": "freelb"})["steps"] == 2
    cases = [({"method": "r5f"}, "reg.method='r5f'"), ({"method": "r3f", "lamda": 1.0}, "reg.lamda"),
             ({"method": "freelb", "lam": 2.0}, "reg.lam=2.0 has no effect"),
             ({"method": "none", "mu": 0.5}, "reg.mu"), ({"method": "smart", "eps": 0.0}, "reg.eps"),
             ({"method": "smart", "norm": "l1"}, "reg.norm"), ({"method": "r3f", "noise": "laplace"}, "reg.noise"),
             ({"method": "smart", "steps": 0}, "reg.steps")]
    for reg, msg in cases:
        with pytest.raises(config_lib.ConfigError, match=msg.replace("(", r"\(").replace(".", r"\.")):
            R.check_config(reg)
    with pytest.raises(config_lib.ConfigError, match="train.grad_accum=2"):
        R.check_training({"method": "r3f"}, accum_steps=2)
    with pytest.raises(config_lib.ConfigError, match="reg.head_kernels"):
        R.init_state({"method": "r4f"}, {"backbone": {"x": {"kernel": jnp.ones((2, 2))}}})


# -------------------------------------------------------------------------- vmap, checkpoint, the loop


@pytest.mark.parametrize("method,real", [pytest.param("r4f", False, marks=pytest.mark.slow), ("smart", False),
                                         pytest.param("freelb", False, marks=pytest.mark.slow),
                                         pytest.param("smart", True, marks=pytest.mark.slow)])
def test_unjitted_step_vmapped_over_seeds_equals_separate_steps(setup, method, real):
    """jit(vmap(step)) over 2 seeds (state and batch stacked) == each seed's step alone. Dropout on, so each
    seed's dropout keys must come from its own rng; `real`: the BERT model with LoRA (a module delta in the
    `delta` collection next to the noise), else the stand-in with full fine-tuning."""
    _, params = setup
    if real:
        model = build_model(dataclasses.replace(CFG, hidden_dropout_prob=0.1), head="sequence_classification",
                            num_labels=3)
        mod = deltas.get("lora")
        delta = mod.init(jax.random.key(1), params, deltas.check_config(mod, {}))
        delta = jax.tree_util.tree_map(lambda x: x + 0.01 if x.dtype == jnp.float32 else x, delta)
    else:
        model, (mod, delta) = StandIn(), _full(params)
    train, fixed = tree.split(delta, mod.trainable(delta))
    tx = optax.adam(1e-2)
    reg = {"method": method}
    step = step_lib.make_train_step(model, mod, tx, "classification", reg=reg, jit=False)
    states = [_state(train, fixed, tx, seed=s, reg_state=R.init_state(reg, train)) for s in (3, 4)]
    batches = [_batch(0), _batch(1)]
    one = jax.jit(step)
    separate = [one(s, params, b) for s, b in zip(states, batches)]
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    vmapped = jax.jit(jax.vmap(step, in_axes=(0, None, 0)))(stack(states), params, stack(batches))
    for i, (s, m) in enumerate(separate):
        got = jax.tree_util.tree_map(lambda x, i=i: x[i], vmapped)
        for a, b in zip(jax.tree_util.tree_leaves((s, m)), jax.tree_util.tree_leaves(got)):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=2e-5, atol=1e-7)
    assert not np.allclose(separate[0][1]["loss"], separate[1][1]["loss"])


def test_reg_state_checkpoint_round_trip(setup, tmp_path):
    from ftlab.checkpoint import train_state as ckpt

    _, params = setup
    _, train = _full(params)
    tx = optax.adam(1e-3)
    state = _state(train, {}, tx, reg_state=R.init_state({"method": "smart"}, train))
    state["reg"]["ema"] = jax.tree_util.tree_map(lambda x: x + 1.0, state["reg"]["ema"])
    mngr = ckpt.manager(str(tmp_path / "ck"))
    ckpt.save(mngr, 1, state, {"x": 1})
    like = jax.tree_util.tree_map(jnp.zeros_like, state)
    restored, meta = ckpt.restore(mngr, 1, like)
    assert meta == {"x": 1}
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def _loop_cfg(tiny_bert_dir, *overrides):
    cfg = config_lib.load(os.path.join(REPO, "configs", "sst2_full.py:runlocal"))
    return config_lib.apply_overrides(cfg, [f"model.name={tiny_bert_dir}", "task.max_length=32",
                                            "train.pad_to_multiple_of=32", "train.progress=false",
                                            "train.eval_batch_size=256", "train.max_steps=2",
                                            "train.log_every=1", "train.export_delta=final", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["reg.method=r3f"], ["reg.method=r4f", "reg.noise=uniform"],
                                       ["reg.method=smart"], ["reg.method=smart", "reg.mu=0"],
                                       ["reg.method=freelb"], ["delta.method=mixout"],
                                       ["delta.method=lora", "reg.method=smart"],
                                       ["delta.method=prompt", "delta.num_virtual_tokens=4", "reg.method=r3f"]],
                         ids=lambda o: "+".join(x.split("=")[1] for x in o if "method" in x))
def test_method_trains_through_the_loop(overrides, tmp_path, tiny_bert_dir):
    from ftlab.train.loop import train_and_evaluate

    r = train_and_evaluate(_loop_cfg(tiny_bert_dir, *overrides), str(tmp_path))
    assert r["train_steps"] == 2 and np.isfinite(r["metrics"]["loss"])
    import json

    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train_logs = [x for x in logged if x["kind"] == "train"]
    assert all(np.isfinite(x["loss"]) for x in train_logs)
    assert all(("reg" in x) == ("reg.method=freelb" not in overrides and any("reg." in o for o in overrides))
               for x in train_logs)


@pytest.mark.slow
def test_smart_resumes_exactly(tmp_path, tiny_bert_dir):
    """A run interrupted after a checkpoint resumes with the EMA teacher restored: same logged values."""
    import json

    from ftlab.train.loop import train_and_evaluate

    common = ["reg.method=smart", "train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=4"]
    train_and_evaluate(_loop_cfg(tiny_bert_dir, *common), str(tmp_path / "straight"))
    # the interrupted run: keep only step 2's checkpoint, then run the same command again
    train_and_evaluate(_loop_cfg(tiny_bert_dir, *common), str(tmp_path / "resumed"))
    import shutil

    ck = tmp_path / "resumed" / "checkpoints"
    for name in os.listdir(ck):
        if name != "2":
            shutil.rmtree(ck / name)
    os.remove(tmp_path / "resumed" / "results.json")
    train_and_evaluate(_loop_cfg(tiny_bert_dir, *common), str(tmp_path / "resumed"))
    a = [json.loads(x) for x in open(tmp_path / "straight" / "metrics.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert a == b
