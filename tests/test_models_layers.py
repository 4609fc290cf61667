"""ftlab models without a reference checkpoint: the LoRA hook in Dense, bfloat16 compute, remat, KV-cache
generation with left-padded batches, init_params overlay and its errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftlab import tree
from ftlab.models import BertConfig, GPT2Config, LlamaConfig, build_model, init_params, initializer_for
from ftlab.models.generate import generate

BERT = BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)
LLAMA = LlamaConfig(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rope_theta=500.0,
)
GPT2 = GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def _ids(b=2, t=6, seed=0):
    ids = np.random.default_rng(seed).integers(3, 50, size=(b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    mask[1, -2:] = 0
    return ids, mask


def _init(model, ids):
    return model.init(jax.random.key(0), ids)["params"]


def test_dense_lora_hook_equals_merged_weight():
    model = build_model(BERT, "sequence_classification", 3)
    ids, mask = _ids()
    params = _init(model, ids)
    q = "backbone/encoder/layer/1/attention/self/query"
    a = jax.random.normal(jax.random.key(1), (32, 4)) * 0.3
    b = jax.random.normal(jax.random.key(2), (4, 32)) * 0.3
    delta = tree.unflatten({f"{q}/lora_a": a, f"{q}/lora_b": b, f"{q}/lora_scale": jnp.float32(2.0)})
    with_lora = model.apply({"params": params, "delta": delta}, ids, mask)
    flat = tree.flatten(params)
    flat[f"{q}/kernel"] = flat[f"{q}/kernel"] + 2.0 * a @ b  # the merged reference, formed only in the test
    merged = model.apply({"params": tree.unflatten(flat)}, ids, mask)
    np.testing.assert_allclose(with_lora, merged, atol=1e-5)
    assert not np.allclose(with_lora, model.apply({"params": params}, ids, mask))
    # B = 0 (LoRA's init) is exactly the identity.
    zero = tree.unflatten({f"{q}/lora_a": a, f"{q}/lora_b": jnp.zeros_like(b)})
    np.testing.assert_array_equal(
        model.apply({"params": params, "delta": zero}, ids, mask), model.apply({"params": params}, ids, mask)
    )


@pytest.mark.parametrize("cfg,head", [(BERT, "masked_lm"), (LLAMA, "causal_lm"), (GPT2, "causal_lm")])
def test_bfloat16_close_and_remat_identical(cfg, head):
    ids, mask = _ids()
    model = build_model(cfg, head)
    params = _init(model, ids)
    ref = model.apply({"params": params}, ids, mask)
    bf16 = build_model(dataclasses.replace(cfg, dtype="bfloat16"), head).apply({"params": params}, ids, mask)
    assert bf16.dtype == jnp.float32 and jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
    real = mask.astype(bool)
    assert float(jnp.abs(bf16 - ref)[real].max()) <= 0.05 * float(jnp.abs(ref).max()) + 0.05
    remat = build_model(dataclasses.replace(cfg, remat=True), head)

    def loss(m, p):
        return jnp.sum(m.apply({"params": p}, ids, mask) ** 2)

    np.testing.assert_array_equal(remat.apply({"params": params}, ids, mask), ref)
    if head != "causal_lm" or isinstance(cfg, GPT2Config):
        return  # gradients through remat checked once (Llama) to keep the suite fast
    g1, g2 = jax.grad(lambda p: loss(model, p))(params), jax.grad(lambda p: loss(remat, p))(params)
    for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_generate_left_padded_batch_equals_per_row(cfg):
    model = build_model(cfg, "causal_lm")
    rows = [[5, 9, 11, 4, 20], [7, 3]]
    ids = np.array([rows[0], [0, 0, 0, *rows[1]]], np.int32)
    mask = np.array([[1] * 5, [0, 0, 0, 1, 1]], np.int32)
    params = _init(model, ids)
    batch = generate(model, params, ids, mask, max_new_tokens=4)
    single = generate(model, params, np.array([rows[1]], np.int32), None, max_new_tokens=4)
    np.testing.assert_array_equal(batch[1], single[0])  # the left-padded row equals its unpadded run
    # Cached greedy decoding of the unpadded row equals re-running the full forward pass (no cache).
    seq = np.array([rows[0]], np.int32)
    apply = jax.jit(model.apply)
    for _ in range(4):
        logits = apply({"params": params}, seq)
        seq = np.concatenate([seq, np.argmax(logits[:, -1], -1)[:, None].astype(np.int32)], axis=1)
    np.testing.assert_array_equal(batch[0], seq[0, len(rows[0]) :])


def test_generate_stops_at_eos_and_pads():
    model = build_model(LLAMA, "causal_lm")
    ids = np.array([[5, 9, 11]], np.int32)
    params = _init(model, ids)
    sampled = generate(
        model, params, ids, None, 5, greedy=False, temperature=0.7, top_k=5, rng=jax.random.key(3)
    )
    assert sampled.shape == (1, 5) and sampled.min() >= 0 and sampled.max() < 50
    free = generate(model, params, ids, max_new_tokens=5)
    eos = int(free[0, 1])
    out = generate(model, params, ids, max_new_tokens=5, eos_token_id=eos, pad_token_id=0)
    np.testing.assert_array_equal(out[0, :2], free[0, :2])
    assert (out[0, 2:] == 0).all()


def test_init_params_overlay_and_errors():
    ids, _ = _ids()
    bare = build_model(BERT)
    base = _init(bare, ids)
    model = build_model(BERT, "token_classification", 4)
    params, fresh = init_params(model, jax.random.key(5), base, ids)
    assert fresh == ["head/classifier/bias", "head/classifier/kernel"]
    for p, x in tree.flatten(base).items():
        np.testing.assert_array_equal(tree.flatten(params)[p], x)
    assert float(jnp.abs(params["head"]["classifier"]["bias"]).max()) == 0.0
    assert abs(float(params["head"]["classifier"]["kernel"].std()) - BERT.initializer_range) < 0.01
    bad = tree.flatten(base)
    bad["backbone/pooler/dense/kernel"] = np.zeros((32, 31), np.float32)
    with pytest.raises(ValueError, match=r"backbone/pooler/dense/kernel.*\(32, 31\).*\(32, 32\)"):
        init_params(model, jax.random.key(5), tree.unflatten(bad), ids)
    extra = {**tree.flatten(base), "backbone/encoder/layer/7/output/dense/bias": np.zeros(32, np.float32)}
    with pytest.raises(ValueError, match="layer/7/output/dense/bias"):
        init_params(model, jax.random.key(5), tree.unflatten(extra), ids)
    # initializer_for is what re-initialising the top k layers uses.
    k = initializer_for("backbone/encoder/layer/1/output/dense/kernel", (48, 32), BERT, jax.random.key(0))
    assert k.shape == (48, 32) and abs(float(k.std()) - 0.02) < 0.005
    assert (initializer_for("backbone/embeddings/LayerNorm/scale", (32,), BERT, jax.random.key(0)) == 1).all()


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown head 'seq2seq'"):
        build_model(BERT, "seq2seq")
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        build_model(BERT, "sequence_classification", pooling="max")
    with pytest.raises(ValueError, match="causal_lm"):
        build_model(BERT, "causal_lm")


@pytest.mark.parametrize("pooling", ["cls", "mean", "last", "pooler"])
def test_pooling_options(pooling):
    ids, mask = _ids()
    model = build_model(BERT, "sequence_classification", 2, pooling)
    assert model.apply({"params": _init(model, ids)}, ids, mask).shape == (2, 2)


@pytest.mark.parametrize("cfg,head", [(BERT, "masked_lm"), (LLAMA, "causal_lm"), (GPT2, "causal_lm")],
                         ids=["bert", "llama", "gpt2"])
def test_fused_attention_path_equals_explicit_on_right_padded_rows(cfg, head):
    """model.attention='jax' (jax.nn.dot_product_attention with key lengths: the call 'cudnn' makes on a GPU)
    equals the explicit path at every real position, forward and gradient, including an all-pad row."""
    ids, mask = _ids(b=3, t=7)
    mask[2, :] = 0  # a filler row: no real token
    model = build_model(cfg, head)
    fused = build_model(dataclasses.replace(cfg, attention="jax"), head)
    params = _init(model, ids)
    real = mask.astype(bool)
    ref, out = model.apply({"params": params}, ids, mask), fused.apply({"params": params}, ids, mask)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], rtol=1e-5, atol=1e-5)

    def loss(m, p):
        return jnp.sum(jnp.where(real[..., None], m.apply({"params": p}, ids, mask), 0.0) ** 2)

    g1, g2 = jax.grad(lambda p: loss(model, p))(params), jax.grad(lambda p: loss(fused, p))(params)
    for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_remat_policies_same_gradients_and_bad_name_is_refused():
    ids, mask = _ids()
    params = _init(build_model(LLAMA, "causal_lm"), ids)

    def grads(remat):
        m = build_model(dataclasses.replace(LLAMA, remat=remat), "causal_lm")
        return jax.grad(lambda p: jnp.sum(m.apply({"params": p}, ids, mask) ** 2))(params)

    ref = jax.tree_util.tree_leaves(grads("none"))
    for policy in ("full", "dots", "dots_no_batch"):
        for x, y in zip(ref, jax.tree_util.tree_leaves(grads(policy)), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="model.remat must be one of"):
        grads("sometimes")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gemv_sums_and_custom_vjps_equal_plain_autodiff(dtype):
    """LayerNorm and RMSNorm take their statistics and parameter gradients as GEMVs through custom VJPs, and Dense
    its kernel gradient with the thinner operand transposed and its bias gradient as a GEMV; values and every
    gradient equal the plain formulas differentiated by JAX (float32 reference)."""
    from ftlab.models import layers

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 8)) * 2 + 0.5
    w = rng.normal(size=(8, 6)) * 0.3
    b, sc, sh = rng.normal(size=6), 1 + 0.1 * rng.normal(size=8), rng.normal(size=8)
    cot = rng.normal(size=(3, 5, 6))
    tol = {"rtol": 2e-5, "atol": 2e-5} if dtype == jnp.float32 else {"rtol": 3e-2, "atol": 3e-2}

    def dense_ref(x, w, b):
        return x @ w + b

    def ln_ref(x, sc, sh, eps=1e-12):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * sc + sh

    def rms_ref(x, sc, eps=1e-6):
        return sc * x / jnp.sqrt((x**2).mean(-1, keepdims=True) + eps)

    dense = layers.Dense(6, dtype=dtype)
    wide = layers.Dense(16, use_bias=False, dtype=dtype)  # the other kernel-gradient branch (x thinner than g)
    w16 = rng.normal(size=(8, 16)) * 0.3
    ln, rms = layers.LayerNorm(dtype=dtype), layers.RMSNorm(dtype=dtype)
    cases = [
        (lambda x, w, b: dense.apply({"params": {"kernel": w, "bias": b}}, x), dense_ref, (x, w, b), cot),
        (lambda x, w: wide.apply({"params": {"kernel": w}}, x), lambda x, w: x @ w, (x, w16),
         rng.normal(size=(3, 5, 16))),
        (lambda x, s, h: ln.apply({"params": {"scale": s, "bias": h}}, x), ln_ref, (x, sc, sh), cot[..., :1] * x),
        (lambda x, s: rms.apply({"params": {"scale": s}}, x), rms_ref, (x, sc), cot[..., :1] * x),
    ]
    with jax.default_matmul_precision("highest"):
        for f, ref, args, g in cases:
            ours = [jnp.asarray(a, jnp.float32) for a in args]
            ours[0] = ours[0].astype(dtype)
            y, vjp = jax.vjp(f, *ours)
            grads = vjp(jnp.asarray(g, dtype))
            y_ref, vjp_ref = jax.vjp(ref, *[jnp.asarray(a, jnp.float32) for a in args])
            want = vjp_ref(jnp.asarray(g, jnp.float32))
            np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref), **tol)
            for got, exp in zip(grads, want, strict=True):  # bfloat16: errors relative to the largest entry
                scale = 1.0 if dtype == jnp.float32 else float(np.abs(exp).max())
                np.testing.assert_allclose(np.asarray(got, np.float32) / scale, np.asarray(exp) / scale, **tol)
    # The helpers themselves: Σ over leading axes, mean over the last.
    np.testing.assert_allclose(layers.sum_rows(jnp.asarray(cot, jnp.float32)), cot.sum((0, 1)), rtol=1e-5)
    np.testing.assert_allclose(layers.mean_last(jnp.asarray(x, jnp.float32))[..., 0], x.mean(-1), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_recomputing_backward_equals_autodiff_of_the_explicit_formula(dtype):
    """`dot_product_attention` keeps only the softmax row statistics for the backward pass and recomputes the
    probabilities and the dropout mask there. Against softmax(Q·Kᵀ/√d masked)·V written out with repeated key/value
    heads and differentiated by JAX: the forward is identical and the q, k, v gradients agree, for MHA, GQA and MQA,
    with and without a causal ∧ padding mask (including a fully masked query row) and attention dropout."""
    from ftlab.models import layers

    def explicit(q, k, v, mask, rng, rate):
        g = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
        scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, -1).astype(q.dtype)
        if rng is not None:
            keep = layers.dropout_keep_mask(rng, rate, probs.shape)
            probs = jnp.where(keep, probs / (1 - rate), 0).astype(q.dtype)
        return jnp.einsum("bhts,bshd->bthd", probs, v)

    b, t, h, dh = 2, 6, 4, 8
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    lengths = jnp.array([6, 4])
    pad_causal = (jnp.arange(t)[None, :] < lengths[:, None])[:, None, None, :] & layers.causal_mask(jnp.arange(t), t)
    pad_causal = pad_causal.at[1, :, 5, :].set(False)  # a query row that sees no key
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == jnp.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for kh in (4, 2, 1):
        q = jax.random.normal(keys[0], (b, t, h, dh)).astype(dtype)
        k = jax.random.normal(keys[1], (b, t, kh, dh)).astype(dtype)
        v = jax.random.normal(keys[2], (b, t, kh, dh)).astype(dtype)
        cot = jax.random.normal(keys[3], (b, t, h, dh)).astype(dtype)
        for mask in (None, pad_causal):
            for rate in (0.0, 0.25):
                rng = jax.random.PRNGKey(7) if rate else None
                ours = jax.jit(lambda q, k, v, mask=mask, rng=rng, rate=rate: layers.dot_product_attention(
                    q, k, v, mask, dropout_rate=rate, dropout_rng=rng))
                y, vjp = jax.vjp(ours, q, k, v)
                y_ref, vjp_ref = jax.vjp(lambda *a, mask=mask, rng=rng, rate=rate: explicit(*a, mask, rng, rate),
                                         q, k, v)
                if dtype == jnp.float32:
                    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
                for got, want in zip(vjp(cot), vjp_ref(cot), strict=True):
                    scale = float(jnp.abs(want.astype(jnp.float32)).max())
                    np.testing.assert_allclose(np.asarray(got, np.float32) / scale,
                                               np.asarray(want, np.float32) / scale, **tol)
                    assert got.dtype == dtype
