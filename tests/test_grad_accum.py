"""Gradient accumulation (`train.grad_accum`): a step over k microbatches equals the step over the whole batch —
for a mean over examples, a token-level loss with padding (tagging: microbatches hold different token counts)
and a delta with a data-independent penalty (diff pruning's L0 term, added once). Dropout off, so both sides
see the same computation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftlab import deltas, optim, tree
from ftlab.models import BertConfig, build_model
from ftlab.train import step as step_lib

CFG = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
B, T = 8, 12


def _batch(kind: str) -> dict:
    r = np.random.default_rng(0)
    lengths = np.array([3, 12, 5, 12, 12, 4, 9, 2])  # uneven real tokens per microbatch
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    labels = (r.integers(0, 3, size=(B, T)) if kind == "tagging" else r.integers(0, 3, size=B)).astype(np.int32)
    if kind == "tagging":
        labels = np.where(mask == 1, labels, -100)
    example_mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)  # a padded final batch
    return {"input_ids": (r.integers(1, CFG.vocab_size, size=(B, T)) * mask).astype(np.int32),
            "attention_mask": mask, "token_type_ids": np.zeros((B, T), np.int32), "labels": labels,
            "example_mask": example_mask}


@pytest.mark.parametrize("method,kind", [("full", "classification"), ("lora", "tagging"),
                                         ("diffprune", "classification")])
def test_accumulated_step_equals_whole_batch_step(method, kind):
    head = "token_classification" if kind == "tagging" else "sequence_classification"
    model = build_model(CFG, head=head, num_labels=3)
    rng = jax.random.key(0)
    params = model.init({"params": rng, "dropout": rng}, jnp.ones((1, 8), jnp.int32))["params"]
    mod = deltas.get(method)
    delta = mod.init(jax.random.key(1), params, deltas.check_config(mod, {}))
    if method == "lora":  # non-zero B so that every LoRA leaf gets a gradient
        delta = jax.tree_util.tree_map(lambda x: x + 0.01, delta)
    train, fixed = tree.split(delta, mod.trainable(delta))
    tx, _ = optim.build({"lr": 1e-3, "warmup_steps": 0, "eps": 1e-3}, train, 10, CFG.num_hidden_layers)
    state = {"step": jnp.zeros([], jnp.int32), "train": train, "fixed": fixed, "opt_state": tx.init(train),
             "rng": jax.random.key_data(jax.random.key(3))}
    batch = _batch(kind)
    outs = {}
    for k in (1, 4):
        step = step_lib.make_train_step(model, mod, tx, kind, accum_steps=k)
        new, m = step(jax.tree_util.tree_map(jnp.array, state), params, batch)
        outs[k] = (float(m["loss"]), float(m["grad_norm"]), jax.device_get(new["train"]))
    if method == "diffprune":  # stochastic gates draw per microbatch: compare only what is deterministic
        assert np.isfinite(outs[4][0]) and np.isfinite(outs[4][1])
        return
    for k in (4,):
        np.testing.assert_allclose(outs[k][0], outs[1][0], rtol=1e-5)
        np.testing.assert_allclose(outs[k][1], outs[1][1], rtol=1e-5)
        for p, a in tree.flatten(outs[k][2]).items():
            np.testing.assert_allclose(a, tree.flatten(outs[1][2])[p], rtol=1e-4, atol=1e-6, err_msg=p)


def test_batch_not_divisible_is_a_clear_error():
    model = build_model(dataclasses.replace(CFG), head="sequence_classification", num_labels=3)
    rng = jax.random.key(0)
    params = model.init({"params": rng, "dropout": rng}, jnp.ones((1, 8), jnp.int32))["params"]
    mod = deltas.get("full")
    delta = mod.init(rng, params, {})
    train, fixed = tree.split(delta, mod.trainable(delta))
    tx, _ = optim.build({"lr": 1e-3}, train, 10, CFG.num_hidden_layers)
    state = {"step": jnp.zeros([], jnp.int32), "train": train, "fixed": fixed, "opt_state": tx.init(train),
             "rng": jax.random.key_data(jax.random.key(3))}
    step = step_lib.make_train_step(model, mod, tx, "classification", accum_steps=3)
    with pytest.raises(ValueError, match="batch of 8 rows does not split into grad_accum=3"):
        step(state, params, _batch("classification"))
