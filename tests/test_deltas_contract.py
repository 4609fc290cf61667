"""The delta contract for every parameter-tree method, on the parameter tree of a tiny 2-layer BERT (width 16).

For each method: init under eval_shape, identity at init where the method allows (exact), structure / shape /
dtype preserved, jit(apply) == apply, one optimizer step through `make_train_step` (θ₀ bit-identical, fixed
leaves unchanged, only the leaves the method may touch change), to_disk/from_disk round trip, trainable count
== num_trainable. The per-method step runs a cheap stand-in forward over the real BERT parameter tree (XLA's
CPU compile of the BERT step costs seconds per method); `test_real_bert_step` runs the real model with SAID
over every backbone tensor (fixed projection leaves in the donated state, one λ per tensor).
Plus: diffprune's two phases and sizes, remove's smaller model, composition through `apply_all`.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ftlab import deltas, tree
from ftlab.checkpoint import delta_io
from ftlab.models import BertConfig, build_model
from ftlab.train.step import make_train_step

CFG = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
)
BIAS = r".*/bias"
HEAD = r"head/.*"
NORM = r".*LayerNorm/(?:scale|bias)"
LAYER1 = r"backbone/encoder/layer/1/.*"
POOLER = r"backbone/pooler/.*"
ANY = r".*"

# (id, method, config, identity at init, regex of the θ leaves one step may change)
METHODS = [
    ("full", "full", {}, True, ANY),
    ("frozen", "frozen", {}, True, HEAD),
    ("subset_topk2", "subset", {"preset": "topk", "k": 2}, True, r"backbone/encoder/.*|" + HEAD),
    ("subset_layernorm", "subset", {"preset": "layernorm"}, True, NORM + "|" + HEAD),
    ("bitfit", "bitfit", {}, True, BIAS + "|" + HEAD),
    ("bitfit_qm", "bitfit", {"variant": "qm"}, True, r".*/(?:query|intermediate/dense)/bias|" + HEAD),
    ("lastlayer", "lastlayer", {}, True, LAYER1 + "|" + HEAD),
    ("topk", "topk", {"k": 2}, True, r"backbone/encoder/.*|" + HEAD),
    ("layernorm", "layernorm", {}, True, NORM + "|" + HEAD),
    ("diffprune_l0", "diffprune", {"targets": LAYER1, "l0_weight": 1e-3}, True, LAYER1 + "|" + HEAD),
    (
        "diffprune_fixed",
        "diffprune",
        {"targets": LAYER1, "phase": "fixed_mask", "target_fraction": 0.05},
        False,
        LAYER1 + "|" + HEAD,
    ),
    ("prune_movement", "prune", {"targets": LAYER1 + "kernel", "keep": 0.5}, True, ANY),  # S = 0: ties, all kept
    ("prune_magnitude", "prune", {"criterion": "magnitude", "budget": "per_layer", "keep": 0.5}, False, ANY),
    ("prune_units_movement", "prune_units", {"num_heads": 2}, True, ANY),  # S = 0: ties, every unit kept
    ("prune_units_magnitude", "prune_units", {"criterion": "magnitude", "num_heads": 2, "units": "ffn"}, False, ANY),
    ("did", "did", {"d": 24, "targets": LAYER1}, True, LAYER1 + "|" + HEAD),
    ("said", "said", {"d": 40, "targets": LAYER1}, True, LAYER1 + "|" + HEAD),
    ("reinit", "reinit", {"k": 2}, False, ANY),
    ("reinit_only", "reinit", {"k": 1, "train_rest": False}, False, LAYER1 + "|" + POOLER + "|" + HEAD),
    ("mixout", "mixout", {"p": 0.5}, True, ANY),  # eval apply = δ = θ₀ at init; training mixes the kernels
]


class StandIn:
    """`model.apply` as the step calls it; every leaf of θ reaches the logits, and it compiles in a blink."""

    def apply(
        self, variables, input_ids, deterministic=True, rngs=None, attention_mask=None, token_type_ids=None
    ):
        p = tree.flatten(variables["params"])
        h = jnp.mean(p["backbone/embeddings/word_embeddings/embedding"][input_ids], axis=1)  # [B, H]
        h = h + sum(jnp.tanh(jnp.mean(x)) for k, x in p.items() if not k.startswith("head/"))
        return h @ p["head/classifier/kernel"] + p["head/classifier/bias"]


def _one_step(model, mod, delta, base):
    train, fixed = tree.split(delta, mod.trainable(delta))
    tx = optax.adam(1e-2)
    state = {
        "step": jnp.zeros([], jnp.int32),
        "train": train,
        "fixed": fixed,
        "opt_state": tx.init(train),
        "rng": jax.random.key_data(jax.random.key(3)),
    }
    batch = {
        "input_ids": jax.random.randint(jax.random.key(4), (4, 8), 1, 50, jnp.int32),
        "attention_mask": jnp.ones((4, 8), jnp.int32),
        "labels": jnp.array([0, 1, 1, 0], jnp.int32),
    }
    state, metrics = make_train_step(model, mod, tx, "classification")(state, base, batch)
    assert bool(metrics["finite"])
    return state, metrics


@pytest.fixture(scope="module")
def model_and_base():
    model = build_model(CFG, head="sequence_classification", num_labels=2)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    # Nonzero biases and non-unit LayerNorm scales, so that re-initialised or overwritten leaves show.
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x + 0.01 * rng.normal(size=x.shape), x.dtype), params
    )
    return model, params


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory, model_and_base):
    """A saved l0-phase diffprune δ with random w and log_alpha (what stage 1 of a run leaves behind)."""
    _, base = model_and_base
    cfg = deltas.check_config(deltas.get("diffprune"), {"targets": LAYER1, "l0_weight": 1e-3})
    d = deltas.get("diffprune").init(jax.random.key(0), base, cfg)
    rng = np.random.default_rng(0)
    d = tree.map_with_path(
        lambda p, x: (
            jnp.asarray(rng.normal(size=x.shape), x.dtype)
            if p.startswith(("diffprune/w", "diffprune/log_alpha"))
            else x
        ),
        d,
    )
    path = str(tmp_path_factory.mktemp("dp") / "stage1")
    delta_io.save(path, "diffprune", cfg, d, "test", "hash")
    return path


def _config(module, config, stage1_dir):
    cfg = dict(config)
    if cfg.get("phase") == "fixed_mask":
        cfg["init_from"] = stage1_dir
    return deltas.check_config(module, cfg)


def _equal_trees(a, b):
    fa, fb = tree.flatten(a), tree.flatten(b)
    assert list(fa) == list(fb)
    for p in fa:
        assert fa[p].dtype == fb[p].dtype and fa[p].shape == fb[p].shape, p
        assert np.array_equal(np.asarray(fa[p]), np.asarray(fb[p])), p


@pytest.mark.parametrize("name,method,config,identity,touch", METHODS, ids=[m[0] for m in METHODS])
def test_contract(name, method, config, identity, touch, model_and_base, stage1_dir):
    model, base = model_and_base
    mod = deltas.get(method)
    cfg = _config(mod, config, stage1_dir)
    base_np = jax.tree_util.tree_map(np.array, base)
    delta = mod.init(jax.random.key(1), base, cfg)

    # init is pure and traceable
    shapes = jax.eval_shape(lambda r: mod.init(r, base, cfg), jax.random.key(1))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(delta)
    assert all(
        s.shape == x.shape and s.dtype == x.dtype
        for s, x in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(delta))
    )

    # structure, shape, dtype; identity where the method allows; jit(apply) == apply
    out = mod.apply(base, delta)
    assert set(out) == {"params"}
    flat_out, flat_base = tree.flatten(out["params"]), tree.flatten(base)
    assert list(flat_out) == list(flat_base)
    assert all(
        flat_out[p].shape == flat_base[p].shape and flat_out[p].dtype == flat_base[p].dtype for p in flat_base
    )
    changed = [p for p in flat_base if not np.array_equal(flat_out[p], flat_base[p])]
    assert (not changed) if identity else changed
    _equal_trees(jax.jit(mod.apply)(base, delta), out)

    # trainable count is the formula
    train, fixed = tree.split(delta, mod.trainable(delta))
    assert tree.count(train) == mod.num_trainable(base, cfg)

    # to_disk / from_disk round trip
    arrays = mod.to_disk(delta)
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    if getattr(mod, "STORED_FORM_DIFFERS", False):  # e.g. pruning stores W ⊙ M sparsely: same θ, other leaves
        stored = mod.from_disk(arrays, base, cfg)
        _equal_trees(mod.apply(base, stored), out)
        _equal_trees(mod.from_disk(mod.to_disk(stored), base, cfg), stored)
    else:
        _equal_trees(mod.from_disk(arrays, base, cfg), delta)

    # one optimizer step: θ₀ bit-identical, fixed leaves unchanged, only allowed leaves of θ change
    fixed_np = jax.tree_util.tree_map(np.array, fixed)
    state, _ = _one_step(StandIn(), mod, delta, base)
    _equal_trees(base, base_np)
    _equal_trees(state["fixed"], fixed_np)
    new = tree.merge(state["train"], state["fixed"]) if state["fixed"] else state["train"]
    after = tree.flatten(mod.apply(base, new)["params"])
    moved = [p for p in flat_out if not np.array_equal(after[p], flat_out[p])]
    assert moved, "the step changed nothing"
    rx = re.compile(touch)
    assert not [p for p in moved if not rx.fullmatch(p)], "leaves outside the method's reach changed"


def test_real_bert_step(model_and_base):
    """SAID over every backbone tensor through the real BERT train step."""
    model, base = model_and_base
    mod = deltas.get("said")
    delta = mod.init(jax.random.key(1), base, deltas.check_config(mod, {"d": 64}))
    base_np = jax.tree_util.tree_map(np.array, base)
    before = tree.flatten(mod.apply(base, delta)["params"])
    state, metrics = _one_step(model, mod, delta, base)
    _equal_trees(base, base_np)
    after = tree.flatten(mod.apply(base, tree.merge(state["train"], state["fixed"]))["params"])
    assert all(not np.array_equal(after[p], before[p]) for p in before)  # every tensor is reached


def test_diffprune_phases_and_sizes(model_and_base, stage1_dir):
    _, base = model_and_base
    dp = deltas.get("diffprune")
    _, cfg1, stage1 = delta_io.load(stage1_dir, base, "hash")
    n = tree.count([x for p, x in tree.flatten(base).items() if p.startswith("backbone/encoder/layer/1/")])
    cfg2 = _config(dp, {"targets": LAYER1, "phase": "fixed_mask", "target_fraction": 0.05}, stage1_dir)
    d2 = dp.init(jax.random.key(0), base, cfg2)
    k = round(0.05 * n)
    idx, val = tree.flatten(d2["diffprune"]["indices"]), tree.flatten(d2["diffprune"]["values"])
    assert sum(v.size for v in val.values()) == k and all(i.dtype == jnp.int32 for i in idx.values())
    # the kept entries are the k largest |z_det ⊙ w| over all targets, with those values
    z = {
        p: np.asarray(
            dp.deterministic_gates(x, -0.1, 1.1) * tree.flatten(stage1["diffprune"]["w"])[p]
        ).reshape(-1)
        for p, x in tree.flatten(stage1["diffprune"]["log_alpha"]).items()
    }
    thresh = np.sort(np.abs(np.concatenate(list(z.values()))))[-k]
    for p in idx:
        np.testing.assert_allclose(np.asarray(val[p]), z[p][np.asarray(idx[p])], rtol=1e-6)
        assert np.abs(np.asarray(val[p])).min() >= thresh * (1 - 1e-6)
    # the stage-2 θ equals θ₀ + the hard-thresholded stage-1 diff
    theta = tree.flatten(dp.apply(base, d2)["params"])
    for p, zp in z.items():
        want = np.zeros_like(zp)
        if p in idx:
            want[np.asarray(idx[p])] = np.asarray(val[p])
        np.testing.assert_allclose(
            np.asarray(theta[p]).reshape(-1) - np.asarray(tree.flatten(base)[p]).reshape(-1), want, atol=1e-6
        )
    # stored: 8 bytes per nonzero + the dense head; penalty 0; the l0 phase stores w and log_alpha
    head_bytes = tree.nbytes({p: x for p, x in tree.flatten(base).items() if p.startswith("head/")})
    assert tree.nbytes(dp.to_disk(d2)) == 8 * k + head_bytes
    assert float(dp.penalty(d2)) == 0.0
    assert tree.nbytes(dp.to_disk(stage1)) == 8 * n + head_bytes
    assert cfg1["phase"] == "l0"
    # training applies sampled gates; evaluation deterministic ones
    t1 = dp.apply(base, stage1, rng=jax.random.key(0), train=True)["params"]
    t2 = dp.apply(base, stage1, rng=jax.random.key(1), train=True)["params"]
    assert not np.array_equal(
        t1["backbone"]["encoder"]["layer"]["1"]["output"]["dense"]["kernel"],
        t2["backbone"]["encoder"]["layer"]["1"]["output"]["dense"]["kernel"],
    )
    with pytest.raises(ValueError, match="init_from"):
        dp.init(jax.random.key(0), base, {"phase": "fixed_mask"})


def test_fastfood_sizes_on_disk(model_and_base):
    _, base = model_and_base
    head_bytes = tree.nbytes({p: x for p, x in tree.flatten(base).items() if p.startswith("head/")})
    m = len([p for p in tree.flatten(base) if p.startswith("backbone/")])
    for method, extra in (("did", 0), ("said", m)):
        mod = deltas.get(method)
        d = mod.init(jax.random.key(0), base, {"d": 100})
        assert d["fastfood"]["theta_d"].shape == (100 - extra,)
        assert tree.nbytes(mod.to_disk(d)) == 4 * 100 + 4 + head_bytes  # θ_d (+ λ), the seed, the head
    with pytest.raises(ValueError, match="SAID needs d"):
        deltas.get("said").init(jax.random.key(0), base, {"d": m})


def test_remove_top_layer_builds_the_smaller_model(model_and_base):
    _, base = model_and_base
    rm = deltas.get("remove")
    cfg = deltas.check_config(rm, {"k": 1})
    d = rm.init(jax.random.key(0), base, cfg)
    params = jax.jit(rm.apply)(base, d)["params"]
    small = build_model(rm.model_config_after(CFG, cfg), head="sequence_classification", num_labels=2)
    assert (
        small.config.num_hidden_layers == 1 == dataclasses.replace(CFG, num_hidden_layers=1).num_hidden_layers
    )
    want = jax.eval_shape(small.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    assert jax.tree_util.tree_structure(want) == jax.tree_util.tree_structure(params)
    logits = jax.jit(small.apply)({"params": params}, jnp.ones((2, 8), jnp.int32))
    assert logits.shape == (2, 2) and bool(jnp.all(jnp.isfinite(logits)))
    train, _ = tree.split(d, rm.trainable(d))
    layer1 = tree.count(
        [x for p, x in tree.flatten(base).items() if p.startswith("backbone/encoder/layer/1/")]
    )
    assert tree.count(train) == rm.num_trainable(base, cfg) == tree.count(base) - layer1
    _equal_trees(rm.from_disk(rm.to_disk(d), base, cfg), d)
    with pytest.raises(ValueError, match="k=2"):
        rm.init(jax.random.key(0), base, {"k": 2})


def test_compose_reinit_then_full(model_and_base):
    _, base = model_and_base
    ri, full = deltas.get("reinit"), deltas.get("full")
    d_ri = ri.init(jax.random.key(5), base, {"k": 2, "train_rest": False, "train_head": False})
    assert {p.split("/")[1] for p in tree.flatten(d_ri)} == {"encoder", "pooler"}
    d_full = full.init(jax.random.key(0), ri.apply(base, d_ri)["params"], {})
    composed = deltas.apply_all(base, [(ri, d_ri), (full, d_full)])
    alone = ri.apply(base, ri.init(jax.random.key(5), base, {"k": 2}))  # re-init + full fine-tuning in one δ
    _equal_trees(composed, alone)
    fresh = tree.flatten(alone["params"])
    for p, x in tree.flatten(base).items():  # exactly the top-2 layers and the pooler were re-initialised
        reinit = p.startswith(("backbone/encoder/", "backbone/pooler/"))
        assert np.array_equal(fresh[p], x) != reinit, p
        if reinit and p.endswith("LayerNorm/scale"):
            assert np.all(np.asarray(fresh[p]) == 1.0)


def test_compose_bitfit_and_head(model_and_base):
    _, base = model_and_base
    bf, frozen = deltas.get("bitfit"), deltas.get("frozen")
    d_bias = bf.init(jax.random.key(0), base, {"train_head": False})
    d_head = frozen.init(jax.random.key(0), base, {})
    assert not any(p.startswith("head/") for p in tree.flatten(d_bias))
    bump = lambda d: jax.tree_util.tree_map(lambda x: x + 1.0, d)
    composed = deltas.apply_all(base, [(bf, bump(d_bias)), (frozen, bump(d_head))])
    together = bf.apply(base, bump(bf.init(jax.random.key(0), base, {})))
    _equal_trees(composed, together)


def test_shipped_delta_configs_build(model_and_base):
    """Every configs/*.py (and variant) using a parameter-tree method: valid delta keys, δ builds, optimizer groups fit."""
    import glob
    import os

    from ftlab import config as config_lib
    from ftlab import optim
    from ftlab.deltas.subset import num_layers

    _, base = model_and_base
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    methods = ("bitfit", "lastlayer", "diffprune", "said", "did", "reinit", "prune")
    files = [
        f
        for f in sorted(glob.glob(os.path.join(root, "configs", "*.py")))
        if f.rsplit("_", 1)[-1][:-3] in methods
    ]
    assert len(files) == 26
    for f in files:
        variants = [None, *re.findall(r'^\s+"(\w+)": \{', open(f).read(), re.M)]
        for v in variants:
            cfg = config_lib.load(f + (f":{v}" if v else ""))
            dc = dict(cfg.delta)
            mod = deltas.get(dc.pop("method"))
            dc = deltas.check_config(mod, dc)
            if dc.get("phase") == "fixed_mask":  # needs stage 1's saved δ; its layout is tested above
                continue
            shapes = jax.eval_shape(lambda b, mod=mod, dc=dc: mod.init(jax.random.key(0), b, dc), base)
            train, _ = tree.split(shapes, mod.trainable(shapes))
            optim.build(dict(cfg.optim), train, 100, num_layers(base))
