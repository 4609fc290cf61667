"""Fastfood projection against an explicitly built dense matrix; its column statistics; hard-concrete gates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftlab import tree
from ftlab.deltas import diffprune, fastfood


@pytest.mark.parametrize(
    "L,radix", [(1, 2), (2, 2), (8, 2), (64, 2), (64, 4), (64, 32), (512, 8), (1024, 32), (4096, 32), (16384, 32)]
)
def test_fwht_equals_dense_hadamard(L, radix):
    rs = fastfood.radices(L, radix)
    assert int(np.prod(rs)) == L and all(r <= radix for r in rs) and (max(rs) // min(rs) <= 2 if rs else L == 1)
    x = np.random.default_rng(L).normal(size=(3, L)).astype(np.float32)
    H = fastfood.hadamard(L)
    assert np.array_equal(H @ H, L * np.eye(L, dtype=np.float32))
    np.testing.assert_allclose(
        np.asarray(jax.jit(fastfood.fwht, static_argnums=1)(jnp.asarray(x), radix)),
        x @ H,
        atol=2e-5 * np.sqrt(L),
    )


def _dense_projection(ff: dict, path: str, base_params: dict) -> np.ndarray:
    """P_i [D_i, d'] built from explicit matrices: c_i · vstack_k(H·diag(g_k)·Π_k·H·diag(b_k))[:D_i, :d']."""
    S, L = ff["gauss"].shape
    H = fastfood.hadamard(L).astype(np.float64)
    perm = np.asarray(ff["perm"], np.int64)
    norm = tree.flatten(ff["norm"])
    ((_, off, D),) = [o for o in fastfood.offsets(base_params, list(norm), L) if o[0] == path]
    blocks = []
    for k in range(off // L, off // L + -(-D // L)):
        Pi = np.zeros((L, L))
        Pi[np.arange(L), perm[k]] = 1.0  # (Π y)[m] = y[perm[m]]
        V = (
            H
            @ np.diag(np.asarray(ff["gauss"][k], np.float64))
            @ Pi
            @ H
            @ np.diag(np.asarray(ff["sign"][k], np.float64))
        )
        blocks.append(V)
    dd = ff["theta_d"].shape[0]
    return float(norm[path]) * np.vstack(blocks)[:D, :dd]


BASE = {
    "backbone": {
        "a": {"kernel": jnp.ones((16, 12))},
        "b": {"bias": jnp.ones((5,))},
        "c": {"kernel": jnp.ones((8, 64))},
    },
    "head": {"kernel": jnp.ones((4, 2))},
}


@pytest.mark.parametrize("said", [False, True])
def test_fast_projection_equals_dense(said):
    cfg = {"d": 40, "seed": 3, "said": said}
    delta = fastfood.init(jax.random.key(0), BASE, cfg)
    ff = delta["fastfood"]
    dd = ff["theta_d"].shape[0]
    assert dd == (40 - 3 if said else 40) and ff["gauss"].shape[1] == 64
    theta = np.random.default_rng(0).normal(size=dd).astype(np.float32)
    lam = np.array([0.5, -2.0, 3.0], np.float32)
    ff["theta_d"] = jnp.asarray(theta)
    if said:
        ff["lambda"] = jnp.asarray(lam)
    out = jax.jit(fastfood.apply)(BASE, delta)["params"]
    for i, p in enumerate(sorted(tree.flatten(ff["norm"]))):
        P = _dense_projection(ff, p, BASE)
        want = np.asarray(tree.flatten(BASE)[p]).reshape(-1) + (lam[i] if said else 1.0) * (P @ theta)
        got = np.asarray(tree.flatten(out)[p]).reshape(-1)
        assert np.abs(got - want).max() <= 1e-5, p
    assert np.array_equal(out["head"]["kernel"], BASE["head"]["kernel"])


def test_projection_column_statistics():
    L, D = 64, 64 * 32  # L divides D: every column has norm exactly 1
    base = {"backbone": {"w": jnp.zeros((D,)), "v": jnp.zeros((1000,))}}
    ff = fastfood.init(jax.random.key(0), base, {"d": L, "seed": 7, "train_head": False})["fastfood"]
    P = _dense_projection(ff, "backbone/w", base)
    np.testing.assert_allclose((P**2).sum(0), 1.0, rtol=1e-5)  # ‖P e_j‖² = 1
    assert abs(P.mean()) < 3 / np.sqrt(P.size * D)  # entries: mean 0, variance 1/D
    np.testing.assert_allclose(P.var() * D, 1.0, rtol=1e-3)
    off = (P.T @ P)[~np.eye(L, dtype=bool)]  # columns nearly orthogonal: off-diagonals ≈ N(0, 2/D)
    assert abs(off.mean()) < 0.01 and 0.5 < off.std() * np.sqrt(D / 2) < 1.5
    # L does not divide D (1000 = 15·64 + 40 rows): E‖P e_j‖² = 1, each within O(sqrt(L/D))
    Q = _dense_projection(ff, "backbone/v", base)
    norms = (Q**2).sum(0)
    assert abs(norms.mean() - 1) < 0.05 and norms.min() > 0.6
    np.testing.assert_allclose(Q.var() * 1000, 1.0, atol=0.1)


def test_same_seed_same_projection_other_seed_other():
    a = fastfood.init(jax.random.key(0), BASE, {"d": 40, "seed": 1})["fastfood"]
    b = fastfood.init(jax.random.key(9), BASE, {"d": 40, "seed": 1})["fastfood"]
    c = fastfood.init(jax.random.key(0), BASE, {"d": 40, "seed": 2})["fastfood"]
    assert all(np.array_equal(a[k], b[k]) for k in ("sign", "perm", "perm_inv", "gauss"))
    assert not np.array_equal(a["gauss"], c["gauss"])
    perm, inv = np.asarray(a["perm"], np.int64), np.asarray(a["perm_inv"], np.int64)
    assert a["perm"].dtype == np.int16 and perm.shape == a["gauss"].shape
    assert all(sorted(row.tolist()) == list(range(perm.shape[1])) for row in perm)  # each block: a permutation
    assert (np.take_along_axis(perm, inv, 1) == np.arange(perm.shape[1])).all()  # perm_inv is its inverse


@pytest.mark.parametrize("said", [False, True])
def test_projection_gradient_is_the_dense_transpose(said):
    """d/dθ_d of Σ w ⊙ (θ - θ₀) is Σ_i λ_i P_iᵀ w_i: the backward pass (the permutation's custom VJP included)
    against the explicitly built P."""
    delta = fastfood.init(jax.random.key(0), BASE, {"d": 40, "seed": 3, "said": said})
    ff = delta["fastfood"]
    rng = np.random.default_rng(1)
    ff["theta_d"] = jnp.asarray(rng.normal(size=ff["theta_d"].shape).astype(np.float32))
    if said:
        ff["lambda"] = jnp.asarray([0.5, -2.0, 3.0], jnp.float32)
    paths = sorted(tree.flatten(ff["norm"]))
    w = {p: rng.normal(size=np.shape(tree.flatten(BASE)[p])).astype(np.float32) for p in paths}

    def f(theta_d):
        out = fastfood.projected(BASE, {**delta, "fastfood": {**ff, "theta_d": theta_d}})
        return sum(jnp.sum(out[p] * w[p]) for p in paths)

    got = np.asarray(jax.jit(jax.grad(f))(ff["theta_d"]))
    lam = np.asarray(ff["lambda"]) if said else np.ones(len(paths))
    want = sum(lam[i] * _dense_projection(ff, p, BASE).T @ w[p].reshape(-1).astype(np.float64)
               for i, p in enumerate(paths))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 1.5, 4.0])
def test_hard_concrete_expected_l0_matches_monte_carlo(log_alpha):
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    la = jnp.full((200_000,), log_alpha)
    z = np.asarray(diffprune.sample_gates(jax.random.key(1), la, beta, gamma, zeta))
    assert z.min() >= 0 and z.max() <= 1
    p = float(diffprune.prob_nonzero(jnp.float32(log_alpha), beta, gamma, zeta))
    assert abs((z > 0).mean() - p) < 4 * np.sqrt(p * (1 - p) / z.size) + 1e-4
    # and the mass at 1: P(z = 1) = σ(log_alpha - β·log((1 - γ)/(ζ - 1)))
    p_one = float(jax.nn.sigmoid(log_alpha - beta * np.log((1 - gamma) / (zeta - 1))))
    assert abs((z == 1).mean() - p_one) < 4 * np.sqrt(p_one * (1 - p_one) / z.size) + 1e-4


def test_deterministic_gates_and_penalty():
    z = diffprune.deterministic_gates(jnp.array([-10.0, 0.0, 5.0]), -0.1, 1.1)
    np.testing.assert_allclose(np.asarray(z), [0.0, 0.5, 1.0], atol=1e-6)
    base = {"backbone": {"w": jnp.ones((3, 4))}, "head": {"b": jnp.ones((2,))}}
    d = diffprune.init(jax.random.key(0), base, {"l0_weight": 0.5, "alpha_init": 1.0})
    want = 0.5 * 12 * float(diffprune.prob_nonzero(jnp.float32(1.0), 2 / 3, -0.1, 1.1))
    np.testing.assert_allclose(float(diffprune.penalty(d)), want, rtol=1e-6)
