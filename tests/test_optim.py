"""ftlab.optim against hand-computed AdamW updates, schedules, groups, no-decay, LLRD."""

import jax.numpy as jnp
import numpy as np
import pytest

from ftlab import optim


def _params():
    return {"backbone": {"encoder": {"layer": {"0": {"dense": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])}},
                                             "1": {"dense": {"kernel": jnp.array([3.0])}}}},
                         "embeddings": {"word_embeddings": {"embedding": jnp.array([1.0])}}},
            "head": {"classifier": {"kernel": jnp.array([2.0])}}}


def _adamw_reference(p, grads, lr, b1, b2, eps, wd, steps, bias_correction, decay):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    p = p.copy()
    for t in range(1, steps + 1):
        g = grads
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if bias_correction else (m, v)
        upd = mh / (np.sqrt(vh) + eps) + (wd * p if decay else 0.0)
        p = p - lr * upd
    return p


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adamw_matches_hand_computation(bias_correction):
    import optax

    params = _params()
    cfg = {"lr": 0.1, "weight_decay": 0.01, "bias_correction": bias_correction, "schedule": "constant",
           "warmup_steps": 0, "grad_clip": 0.0}
    tx, _ = optim.build(cfg, params, total_steps=10)
    state = tx.init(params)
    grads = {"backbone": {"encoder": {"layer": {"0": {"dense": {"kernel": jnp.array([0.3, -0.1]), "bias": jnp.array([0.2])}},
                                                "1": {"dense": {"kernel": jnp.array([0.05])}}}},
                          "embeddings": {"word_embeddings": {"embedding": jnp.array([-0.4])}}},
             "head": {"classifier": {"kernel": jnp.array([1.0])}}}
    p = params
    for _ in range(3):
        upd, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, upd)
    k = _adamw_reference(np.array([1.0, -2.0]), np.array([0.3, -0.1]), 0.1, 0.9, 0.999, 1e-8, 0.01, 3, bias_correction, True)
    b = _adamw_reference(np.array([0.5]), np.array([0.2]), 0.1, 0.9, 0.999, 1e-8, 0.01, 3, bias_correction, False)
    np.testing.assert_allclose(p["backbone"]["encoder"]["layer"]["0"]["dense"]["kernel"], k, rtol=1e-5)  # float32 vs float64 reference
    np.testing.assert_allclose(p["backbone"]["encoder"]["layer"]["0"]["dense"]["bias"], b, rtol=1e-5, atol=1e-5)  # no decay on bias


def test_warmup_linear_schedule():
    _, sched = optim.build({"lr": 1.0, "warmup_steps": 10, "schedule": "linear"}, _params(), total_steps=110)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(5)), 0.5)
    np.testing.assert_allclose(float(sched(10)), 1.0)
    np.testing.assert_allclose(float(sched(60)), 0.5)
    np.testing.assert_allclose(float(sched(110)), 0.0, atol=1e-7)


def test_groups_and_llrd_multipliers():
    cfg = {**optim.DEFAULTS, "groups": ((r"head/.*", 10.0), (r".*", 1.0)), "llrd": 0.5}
    mult = optim.lr_multipliers(_params(), cfg, num_layers=2)
    assert mult["head/classifier/kernel"] == 10.0
    assert mult["backbone/encoder/layer/1/dense/kernel"] == 0.5      # top layer: llrd^1
    assert mult["backbone/encoder/layer/0/dense/kernel"] == 0.25     # llrd^2
    assert mult["backbone/embeddings/word_embeddings/embedding"] == 0.125
    with pytest.raises(ValueError, match="matched no rule"):
        optim.lr_multipliers(_params(), {**optim.DEFAULTS, "groups": ((r"head/.*", 1.0),)}, 2)


def test_group_lr_is_applied():
    import optax

    params = _params()
    tx, _ = optim.build({"lr": 0.1, "groups": ((r"head/.*", 10.0), (r".*", 1.0)), "schedule": "constant",
                         "warmup_steps": 0, "grad_clip": 0.0, "weight_decay": 0.0}, params, 10)
    grads = jax_tree_ones(params)
    upd, _ = tx.update(grads, tx.init(params), params)
    # first Adam step with bias correction moves every leaf by lr × sign(g)
    np.testing.assert_allclose(upd["head"]["classifier"]["kernel"], [-1.0], rtol=1e-5)
    np.testing.assert_allclose(upd["backbone"]["encoder"]["layer"]["1"]["dense"]["kernel"], [-0.1], rtol=1e-5)
    del optax


def jax_tree_ones(t):
    import jax

    return jax.tree_util.tree_map(jnp.ones_like, t)


def test_unknown_optim_key():
    with pytest.raises(ValueError, match="did you mean 'optim.lr'"):
        optim.build({"lrr": 1.0}, _params(), 10)
