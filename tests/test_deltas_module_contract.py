"""The delta contract for every module delta (LoRA, IA³, prompt, prefix, Houlsby, Pfeiffer, MAD-X stack) on a
tiny 2-layer BERT classifier (width 16), through the real model and the real train step.

For each method: init under eval_shape, identity at init where the method allows (exact: LoRA, IA³, Houlsby,
Pfeiffer; prompt and prefix change every position's context, so those are not), jit(apply) == apply, one `make_train_step` + `ftlab.optim.build` step (θ₀ bit-identical,
fixed leaves unchanged, every trainable leaf moved), to_disk / from_disk round trip, trainable count ==
num_trainable, and δ saved through ftlab.checkpoint.delta_io.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftlab import deltas, optim, tree
from ftlab.checkpoint import delta_io
from ftlab.models import BertConfig, build_model
from ftlab.train.step import make_train_step

CFG = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=40,
    add_pooling_layer=True,
)

# (id, method, config, identity at init)
METHODS = [
    (
        "lora",
        "lora",
        {
            "r": 2,
            "dropout": 0.1,
            "targets": [r".*/(query|value)", r".*/word_embeddings"],
            "modules_to_save": [r"backbone/embeddings/LayerNorm/.*"],
        },
        True,
    ),
    ("ia3", "ia3", {}, True),
    ("prompt", "prompt", {"num_virtual_tokens": 3}, False),
    ("prefix", "prefix", {"num_virtual_tokens": 3}, False),
    ("prefix_mlp", "prefix", {"num_virtual_tokens": 3, "projection": True, "projection_hidden": 8}, False),
    ("houlsby", "houlsby", {"bottleneck": 4}, True),
    ("pfeiffer", "pfeiffer", {"reduction_factor": 4, "non_linearity": "gelu"}, True),
]


@pytest.fixture(scope="module")
def model_and_base():
    model = MODEL
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x + 0.01 * rng.normal(size=x.shape), x.dtype), params
    )
    return model, params


BATCH = {
    "input_ids": jax.random.randint(jax.random.key(4), (4, 8), 1, 50, jnp.int32),
    "attention_mask": jnp.ones((4, 8), jnp.int32).at[1, -2:].set(0),
    "labels": jnp.array([0, 1, 1, 0], jnp.int32),
}


def _equal_trees(a, b):
    fa, fb = tree.flatten(a), tree.flatten(b)
    assert list(fa) == list(fb)
    for p in fa:
        assert np.asarray(fa[p]).dtype == np.asarray(fb[p]).dtype and np.shape(fa[p]) == np.shape(fb[p]), p
        assert np.array_equal(np.asarray(fa[p]), np.asarray(fb[p])), p


@jax.jit
def _apply(variables, ids, mask):
    return MODEL.apply(variables, ids, mask)


MODEL = build_model(CFG, head="sequence_classification", num_labels=2)


def _logits(model, variables):
    assert model is MODEL
    return np.asarray(_apply(variables, BATCH["input_ids"], BATCH["attention_mask"]))


@pytest.mark.parametrize("name,method,config,identity", METHODS, ids=[m[0] for m in METHODS])
def test_module_delta_contract(name, method, config, identity, model_and_base, tmp_path):
    model, base = model_and_base
    mod = deltas.get(method)
    cfg = deltas.check_config(mod, config)
    base_np = jax.tree_util.tree_map(np.array, base)
    delta = mod.init(jax.random.key(1), base, cfg)

    shapes = jax.eval_shape(lambda r: mod.init(r, base, cfg), jax.random.key(1))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(delta)

    variables = mod.apply(base, delta)
    assert set(variables) == {"params", "delta"}
    flat_p, flat_b = tree.flatten(variables["params"]), tree.flatten(base)
    assert list(flat_p) == list(flat_b) and all(flat_p[p].shape == flat_b[p].shape for p in flat_b)
    for p in tree.flatten(variables["delta"]):  # delta sites mirror the params path of the module they modify
        module = p.split("/adapter")[0].rsplit("/", 1)[0]
        assert any(q.startswith(module + "/") for q in flat_b), p
    out, ref = _logits(model, variables), _logits(model, {"params": base})
    if identity:  # exact: compared op by op (two different XLA programs may round differently)
        eager = lambda v: np.asarray(model.apply(v, BATCH["input_ids"], BATCH["attention_mask"]))
        np.testing.assert_array_equal(eager(variables), eager({"params": base}))
    else:
        assert not np.array_equal(out, ref)
    _equal_trees(jax.jit(mod.apply)(base, delta), variables)

    train, fixed = tree.split(delta, mod.trainable(delta))
    assert tree.count(train) == mod.num_trainable(base, cfg)
    assert all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree_util.tree_leaves(train))

    arrays = mod.to_disk(delta)
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    back = mod.from_disk(arrays, base, cfg)
    if cfg.get("projection"):  # stored collapsed: same function, no MLP
        assert "prefix_mlp" not in back
        np.testing.assert_allclose(_logits(model, mod.apply(base, back)), out, atol=1e-6)
        assert tree.nbytes(arrays) == 4 * (2 * 2 * 3 * 16) + tree.nbytes(delta["head"])
    else:
        _equal_trees(back, delta)
    meta = delta_io.save(str(tmp_path / "d"), method, cfg, delta, "test", "hash")
    assert meta["array_bytes"] == tree.nbytes(arrays)

    tx, _ = optim.build({"lr": 1e-2, "warmup_steps": 0}, train, 10)
    state = {
        "step": jnp.zeros([], jnp.int32),
        "train": train,
        "fixed": fixed,
        "opt_state": tx.init(train),
        "rng": jax.random.key_data(jax.random.key(3)),
    }
    fixed_np = jax.tree_util.tree_map(np.array, fixed)
    train_np = jax.tree_util.tree_map(np.array, train)
    state, metrics = make_train_step(model, mod, tx, "classification")(state, base, BATCH)
    assert bool(metrics["finite"])
    _equal_trees(base, base_np)
    _equal_trees(state["fixed"], fixed_np)
    moved = {
        p: not np.array_equal(np.asarray(a), b)
        for (p, a), b in zip(tree.flatten(state["train"]).items(), tree.flatten(train_np).values())
    }
    # Every trainable leaf moves, except those whose first gradient is 0 because the next factor starts at 0
    # (LoRA's A before B = 0; an adapter's down-projection before up = 0).
    zero_grad = ("lora_a", "down/kernel", "down/bias")
    assert all(v for p, v in moved.items() if not p.endswith(zero_grad)), [
        p for p, v in moved.items() if not v
    ]


def test_lora_dropout_only_in_training(model_and_base):
    model, base = model_and_base
    mod = deltas.get("lora")
    cfg = deltas.check_config(mod, {"r": 2, "dropout": 0.5})
    delta = tree.map_with_path(
        lambda p, x: x + 0.3 if p.endswith("lora_b") else x, mod.init(jax.random.key(1), base, cfg)
    )
    v = mod.apply(base, delta)
    ids, mask = BATCH["input_ids"], BATCH["attention_mask"]
    det = model.apply(v, ids, mask)
    cfg0 = deltas.check_config(mod, {"r": 2})
    d0 = tree.map_with_path(
        lambda p, x: x + 0.3 if p.endswith("lora_b") else x, mod.init(jax.random.key(1), base, cfg0)
    )
    np.testing.assert_array_equal(det, model.apply(mod.apply(base, d0), ids, mask))  # no dropout in eval
    # In training, turning only the LoRA dropout on changes the output (the base dropout draws are the same).
    base_cfg_nodrop = build_model(
        BertConfig(**{**CFG.__dict__, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}),
        "sequence_classification",
        2,
    )
    tr = lambda d: base_cfg_nodrop.apply(
        mod.apply(base, d), ids, mask, deterministic=False, rngs={"dropout": jax.random.key(0)}
    )
    np.testing.assert_allclose(tr(d0), det, atol=1e-6)
    assert not np.allclose(tr(delta), det)


def test_module_deltas_compose_with_apply_all(model_and_base):
    """BitFit-style subset + LoRA: params from the first, the delta collection from the second."""
    model, base = model_and_base
    lora, subset = deltas.get("lora"), deltas.get("subset")
    d_lora = lora.init(jax.random.key(1), base, deltas.check_config(lora, {"r": 2, "train_head": False}))
    d_sub = subset.init(jax.random.key(1), base, deltas.check_config(subset, {"preset": "bitfit"}))
    v = deltas.apply_all(base, [(subset, d_sub), (lora, d_lora)])
    assert set(v) == {"params", "delta"}
    np.testing.assert_array_equal(_logits(model, v), _logits(model, {"params": base}))
