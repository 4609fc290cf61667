"""Bottleneck adapters (Houlsby, Pfeiffer, MAD-X stacks) against a direct NumPy implementation of the papers'
equations on a tiny 2-layer BERT (final hidden states, padded batch), plus the decoder sites.

Houlsby et al. 2019:  LN(A(dropout(W_o a)) + x) after attention and after the FFN, A(h) = h + f(h W_d + b_d) W_u + b_u.
Pfeiffer et al. 2020 (AdapterFusion Fig. 2; MAD-X eq. 2: A(h, r) = U(ReLU(D(h))) + r, r the FFN output before its
Add & Norm; AdapterHub's SeqBnConfig): FFN only, s = FFN; s = s + U(f(D(LN(s + x)))) per stacked adapter; out = LN(s + x).
MAD-X: the task adapter after the language adapter at the same site.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftlab import deltas, tree
from ftlab.checkpoint import delta_io
from ftlab.models import BertConfig, LlamaConfig, build_model

CFG = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=40,
)
IDS = np.array([[5, 7, 9, 11, 13, 2], [4, 6, 8, 3, 0, 0]], np.int32)
MASK = (IDS != 0).astype(np.int32)
ACTS = {
    "relu": lambda z: np.maximum(z, 0),
    "swish": lambda z: z / (1 + np.exp(-z)),
    "gelu": lambda z: 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2))),
    "tanh": np.tanh,
}


@pytest.fixture(scope="module")
def bert():
    model = build_model(CFG)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x + 0.05 * rng.normal(size=x.shape), x.dtype), params
    )
    return model, params


def _ln(x, p, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _bottleneck(h, slot):
    return _dense(ACTS[("relu", "gelu", "swish", "tanh")[int(slot["act"])]](_dense(h, slot["down"])), slot["up"])


def _stack(h, site, read=lambda s: s):
    for k in sorted(site, key=int):
        h = h + _bottleneck(read(h), site[k])
    return h


def numpy_bert(params, collection):
    """Final hidden states [B, T, D] in float64, adapters as in the papers."""
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)["backbone"]
    d = jax.tree_util.tree_map(lambda x: np.asarray(x), collection).get("backbone", {})
    layers_d = d.get("encoder", {}).get("layer", {})
    e = p["embeddings"]
    b, t = IDS.shape
    x = e["word_embeddings"]["embedding"][IDS] + e["position_embeddings"]["embedding"][np.arange(t)][None]
    x = _ln(x + e["token_type_embeddings"]["embedding"][0], e["LayerNorm"])
    h, dh = CFG.num_attention_heads, CFG.hidden_size // CFG.num_attention_heads
    for i in range(CFG.num_hidden_layers):
        lp, ld = p["encoder"]["layer"][str(i)], layers_d.get(str(i), {})
        sa = lp["attention"]["self"]
        q, k, v = (_dense(x, sa[n]).reshape(b, t, h, dh) for n in ("query", "key", "value"))
        s = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(dh) + np.where(MASK[:, None, None, :], 0, -1e30)
        a = np.exp(s - s.max(-1, keepdims=True))
        a = np.einsum("bhts,bshd->bthd", a / a.sum(-1, keepdims=True), v).reshape(b, t, -1)
        o = _dense(a, lp["attention"]["output"]["dense"])
        o = _stack(o, ld.get("attention", {}).get("output", {}).get("adapter", {}))
        x1 = _ln(o + x, lp["attention"]["output"]["LayerNorm"])
        f = _dense(ACTS["gelu"](_dense(x1, lp["intermediate"]["dense"])), lp["output"]["dense"])
        f = _stack(f, ld.get("output", {}).get("adapter", {}))
        out = ld.get("output", {}).get("adapter_after_ln", {})
        f = _stack(f, out, read=lambda s, x1=x1, ln=lp["output"]["LayerNorm"]: _ln(s + x1, ln))
        x = _ln(f + x1, lp["output"]["LayerNorm"])
    return x


def _random(delta, seed):
    rng = np.random.default_rng(seed)
    return tree.map_with_path(
        lambda p, x: (
            jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype)
            if p.startswith("delta/") and p.rsplit("/", 1)[-1] in ("kernel", "bias")
            else x
        ),
        delta,
    )


def _hidden(model, variables):
    return np.asarray(jax.jit(lambda v: model.apply(v, IDS, MASK))(variables))


@pytest.mark.parametrize(
    "method,config",
    [
        ("houlsby", {"bottleneck": 4}),
        ("pfeiffer", {"reduction_factor": 4, "non_linearity": "gelu"}),
        ("houlsby", {"bottleneck": 3, "non_linearity": "tanh"}),
    ],
)
def test_adapters_match_numpy_papers(bert, method, config):
    model, params = bert
    mod = deltas.get(method)
    cfg = deltas.check_config(mod, {**config, "train_head": False})
    delta = _random(mod.init(jax.random.key(1), params, cfg), 0)
    v = mod.apply(params, delta)
    d = float(np.abs(_hidden(model, v) - numpy_bert(params, v["delta"]))[MASK.astype(bool)].max())
    print(f"\n[numpy] {method} {config}: max|Δ| = {d:.2e}")
    assert d <= 1e-5, d


def test_mad_x_stack_language_then_task(bert, tmp_path):
    """Language adapter (slot 0, saved) under a task adapter (slot 1): apply_all composition == stack_on
    training form == NumPy A_task(A_lang(h)); only the task adapter is trainable; languages swap."""
    model, params = bert
    pf = deltas.get("pfeiffer")
    lang_cfg = deltas.check_config(pf, {"reduction_factor": 4, "train_head": False})
    lang_de = _random(pf.init(jax.random.key(1), params, lang_cfg), 1)
    lang_sw = _random(pf.init(jax.random.key(2), params, lang_cfg), 2)
    delta_io.save(str(tmp_path / "de"), "pfeiffer", lang_cfg, lang_de, "test", "hash")
    task_cfg = deltas.check_config(
        pf, {"reduction_factor": 4, "slot": 1, "train_head": False, "stack_on": str(tmp_path / "de")}
    )
    task = _random(pf.init(jax.random.key(3), params, task_cfg), 3)

    # training form: language adapter fixed inside δ, only the task slot trainable and stored
    train, fixed = tree.split(task, pf.trainable(task))
    assert all("/adapter_after_ln/1/" in p for p in tree.flatten(train))
    assert all(p.startswith("frozen/") or p.endswith("/act") for p in tree.flatten(fixed))
    assert all("/adapter_after_ln/1/" in p for p in pf.to_disk(task))
    assert tree.count(train) == pf.num_trainable(params, task_cfg)
    stacked = _hidden(model, pf.apply(params, task))

    # composition of two saved deltas (the task δ without its fixed copy)
    task_only = {k: v for k, v in task.items() if k != "frozen"}
    composed = deltas.apply_all(params, [(pf, lang_de), (pf, task_only)])
    np.testing.assert_array_equal(_hidden(model, composed), stacked)
    ref = numpy_bert(params, composed["delta"])
    d = float(np.abs(stacked - ref)[MASK.astype(bool)].max())
    print(f"\n[numpy] MAD-X stack: max|Δ| = {d:.2e}")
    assert d <= 1e-5
    # swapping the language adapter changes the function; from_disk re-reads the fixed language adapter
    assert not np.allclose(
        _hidden(model, deltas.apply_all(params, [(pf, lang_sw), (pf, task_only)])), stacked
    )
    back = pf.from_disk(pf.to_disk(task), params, task_cfg)
    np.testing.assert_array_equal(_hidden(model, pf.apply(params, back)), stacked)
    with pytest.raises(ValueError, match="same slot"):
        pf.init(jax.random.key(0), params, {**task_cfg, "slot": 0})


LLAMA = LlamaConfig(
    vocab_size=50,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=32,
)


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer"])
def test_decoder_adapter_sites(method):
    model = build_model(LLAMA, "causal_lm")
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    mod = deltas.get(method)
    c = deltas.check_config(mod, {"bottleneck": 4})
    delta = mod.init(jax.random.key(1), params, c)
    sites = {p.split("/adapter")[0] for p in tree.flatten(delta["delta"])}
    want = {"self_attn", "mlp"} if method == "houlsby" else {"mlp"}
    assert {s.rsplit("/", 1)[-1] for s in sites} == want and len(sites) == 2 * len(want)
    f = jax.jit(lambda v: model.apply(v, IDS, MASK))
    base_out = np.asarray(model.apply({"params": params}, IDS, MASK))
    np.testing.assert_array_equal(np.asarray(model.apply(mod.apply(params, delta), IDS, MASK)), base_out)
    assert not np.allclose(np.asarray(f(mod.apply(params, _random(delta, 0)))), base_out)


@pytest.mark.parametrize("i, o", [(48, 6), (6, 48)])  # down projection (wide → thin), up projection (thin → wide)
def test_matmul_bias_backward_equals_the_plain_vjp(i, o):
    """The projection with its own backward (`layers.matmul_bias`: the thin operand transposed, for XLA's sake) has
    the plain x @ w + b's value and gradients, and stays differentiable twice (the regularisers' input-noise
    gradients run inside the loss)."""
    from ftlab.models.layers import matmul_bias

    rng = np.random.default_rng(0)
    x, w, b = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((3, 5, i), (i, o), (o,)))
    g = jnp.asarray(rng.normal(size=(3, 5, o)), jnp.float32)
    y, vjp = jax.vjp(matmul_bias, x, w, b)
    y0, vjp0 = jax.vjp(lambda x, w, b: x @ w + b, x, w, b)
    np.testing.assert_allclose(y, y0, rtol=1e-6)
    for a, a0 in zip(vjp(g), vjp0(g)):
        assert a.shape == a0.shape
        np.testing.assert_allclose(a, a0, rtol=1e-5, atol=1e-5)
    second = jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(matmul_bias(x, w, b))))(x) ** 2))(w)
    second0 = jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(x @ w + b)))(x) ** 2))(w)
    np.testing.assert_allclose(second, second0, rtol=1e-4, atol=1e-5)


def test_decoder_pfeiffer_is_adapterhubs_pre_ln_form():
    """Llama: AdapterHub calls a pre-LN block's output adapters with the MLP output, the block input and no
    LayerNorm; SeqBnConfig (Pfeiffer) then gives x + s, s = mlp + U(f(D(mlp + x))), re-read per stacked
    adapter. Checked in NumPy with the attention output projections zeroed (so x is the embedding in every
    layer's MLP input) and two stacked adapters (language slot 0, task slot 1)."""
    model = build_model(LLAMA)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    params = tree.map_with_path(
        lambda p, x: (
            jnp.zeros_like(x) if "/o_proj/" in p else jnp.asarray(x + 0.05 * rng.normal(size=x.shape), x.dtype)
        ),
        params,
    )
    pf = deltas.get("pfeiffer")
    lang_cfg = deltas.check_config(pf, {"bottleneck": 4, "train_head": False})
    lang = _random(pf.init(jax.random.key(1), params, lang_cfg), 1)
    task_cfg = deltas.check_config(pf, {"bottleneck": 4, "slot": 1, "non_linearity": "gelu", "train_head": False})
    task = _random(pf.init(jax.random.key(2), params, task_cfg), 2)
    v = deltas.apply_all(params, [(pf, lang), (pf, task)])
    got = _hidden(model, v)

    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)["backbone"]
    d = jax.tree_util.tree_map(np.asarray, v["delta"])["backbone"]["layers"]

    def rms(x, scale):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + LLAMA.rms_norm_eps) * scale

    def mm(x, dense):
        return x @ dense["kernel"]

    x = p["embed_tokens"]["embedding"][IDS]
    for i in range(LLAMA.num_hidden_layers):
        lp = p["layers"][str(i)]
        h = rms(x, lp["post_attention_layernorm"]["scale"])
        m = lp["mlp"]
        gate = mm(h, m["gate_proj"])
        s = mm(gate / (1 + np.exp(-gate)) * mm(h, m["up_proj"]), m["down_proj"])
        s = _stack(s, d[str(i)]["mlp"]["adapter_after_add"], read=lambda s, x=x: s + x)
        x = x + s
    want = rms(x, p["norm"]["scale"])
    err = float(np.abs(got - want)[MASK.astype(bool)].max())
    print(f"\n[numpy] decoder Pfeiffer stack: max|Δ| = {err:.2e}")
    assert err <= 1e-5, err
    # the same adapters read at the Houlsby site (the MLP output alone) give a different function
    moved = jax.tree_util.tree_map(lambda x: x, v)
    for i in range(LLAMA.num_hidden_layers):
        mlp = moved["delta"]["backbone"]["layers"][str(i)]["mlp"]
        mlp["adapter"] = mlp.pop("adapter_after_add")
    assert not np.allclose(_hidden(model, moved), got, atol=1e-4)
