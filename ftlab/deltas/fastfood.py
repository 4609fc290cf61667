"""Intrinsic-dimension fine-tuning with a Fastfood projection: θ_i = θ₀_i + c_i · P_i θ_d  (DID, SAID).

Papers: Li et al. 2018, "Measuring the Intrinsic Dimension of Objective Landscapes" (the random subspace
and the Fastfood projection); Aghajanyan et al. 2021, "Intrinsic Dimensionality Explains the Effectiveness
of Language Model Fine-Tuning" (DID = one global θ_d; SAID = plus one trainable scale λ_i per tensor:
θ_i = θ₀_i + λ_i · P_i θ_{d-m}, m = number of projected tensors, so that the total is still d).

Projection. θ_d (length d' = d for DID, d - m for SAID) is zero-padded to L = 2^⌈log2 d'⌉. Each projected
tensor i (D_i entries) gets n_i = ⌈D_i / L⌉ independent Fastfood blocks V = H·G·Π·H·B (B random ±1 diagonal,
H the unnormalised L×L Walsh–Hadamard matrix, Π a uniform random permutation, G a N(0, 1) diagonal); the
blocks are stacked and the first D_i rows kept (Li et al.'s "stack ⌈D/L⌉ Fastfood transforms"). All blocks of
all tensors share L, so the whole projection is one batched transform of shape [S, L], S = Σ_i n_i, whatever
the number of tensors; only the final slice-and-add is per tensor (XLA fuses it into one add per leaf).
Normalisation (as the reference code: `ret[:D] / (sqrt(L·ΣG²) · sqrt(D/L))`): each block is divided by
sqrt(ΣG_k²) and each tensor by sqrt(D_i), i.e. P_i = [V_1; …; V_{n_i}][:D_i, :d'] / sqrt(ΣG_k² · D_i) blockwise.
Then every column of P_i has squared norm exactly 1 when L divides D_i (and 1 ± O(L/D_i) otherwise) and the
entries of P_i have mean 0 and variance 1/D_i: the normalisation is per tensor, as in Aghajanyan et al.'s
implementation, so a bias moves as far (in norm) as an embedding matrix for the same θ_d.
Difference from the Li et al. / Aghajanyan reference code: it uses one block of size 2^⌈log2 D_i⌉ per tensor
(θ_d padded up to it); stacking blocks of size 2^⌈log2 d⌉ has the same column normalisation and entry
variance, more independent randomness, and ~2× less padding and log2(L) instead of log2(D_i) work.

The Walsh–Hadamard transform `fwht` is a mixed-radix transform in O(L·Σr_j) = O(L log L) for bounded radix:
L = r_1·…·r_k with every r_j ≤ `max_radix` (32), each Kronecker factor H_r applied as a small [r, r] matmul on
contiguous rows (k = 2 passes over memory for L = 1024, 3 for 4096 and 16384). No dense L×L or D×d matrix is
ever formed.

δ = {'fastfood': {'theta_d': [d'], 'lambda': [m] (SAID), 'norm': {path: c_i = 1/sqrt(D_i)} (fixed),
                  'sign': int8 [S, L], 'perm' / 'perm_inv': [S, L] (Π_k and Π_k⁻¹ of each block as indices 0..L-1,
                  int16 while L ≤ 2^15), 'gauss': f32 [S, L] (G_k/sqrt(ΣG_k²)),
                  'seed': uint32 []} (all fixed but theta_d and lambda),
     'head': {...}  (a trainable copy of the task head when train_head)}
B, Π, G are drawn from `seed` (not from init's rng: the same seed gives the same P in every run) and live in
memory once (9 bytes per padded entry, never on disk). On disk: θ_d, λ, the seed and the head.
At init θ_d = 0, so apply(θ₀, init(θ₀)) = θ₀ exactly. SAID: λ_i = 1 at init; identity still holds because
θ_d = 0, and λ_i = 0 would instead make both gradients zero (a saddle the optimiser cannot leave).

Config keys:
  d           intrinsic dimension (total trainable count outside the head, SAID's λ included)
  seed        seed of the random projection (B, Π, G)
  targets     regex (re.fullmatch) of the projected tensors; default every backbone tensor
  train_head  train the task head directly (default True). Aghajanyan et al. do not say whether the head
              is inside the projection; the fresh head has no pre-trained value to stay close to, so we
              train it directly and count it separately. With train_head=False and a targets regex that
              covers head/ the head is projected too (Li et al.'s setting).
  said        SAID (one λ per projected tensor) instead of DID; `did.py` / `said.py` set it.
Trainable parameters: d + |head| (DID: d' = d; SAID: d' + m = d).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import override_params

DEFAULTS: dict[str, Any] = {
    "d": 1000,
    "seed": 0,
    "targets": r"backbone/.*",
    "train_head": True,
    "said": False,
}

MAX_RADIX = 32  # largest Hadamard factor applied as one small matmul in `fwht`


# --------------------------------------------------------------------------------------------------------
# Walsh–Hadamard transform and the Fastfood blocks
def hadamard(n: int) -> np.ndarray:
    """Sylvester's n×n Walsh–Hadamard matrix (entries ±1, H·H = n·I), n a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"hadamard: {n} is not a power of two")
    i = np.arange(n)
    bits = np.bitwise_and(i[:, None], i[None, :])
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    return (1 - 2 * parity).astype(np.float32)


def radices(L: int, max_radix: int = MAX_RADIX) -> list[int]:
    """Powers of two ≤ max_radix whose product is L, as few and as even as possible (1024 -> [32, 32],
    4096 -> [16, 16, 16], 1 -> [])."""
    m = L.bit_length() - 1
    step = max(1, max_radix.bit_length() - 1)
    k = -(-m // step) if m else 0
    out, left = [], m
    for i in range(k):
        b = -(-left // (k - i))
        out.append(1 << b)
        left -= b
    return out


def fwht(x: jax.Array, max_radix: int = MAX_RADIX) -> jax.Array:
    """Unnormalised Walsh–Hadamard transform along the last axis: x [..., L] -> x · H_L, L = 2^m.

    Sylvester's H_L = H_{r_1} ⊗ … ⊗ H_{r_k} for L = r_1·…·r_k (`radices`), so x is viewed as [N, r_1, …, r_k]
    and each factor applied along its axis. Every pass multiplies the *last* axis by H_r (one [N·L/r, r] × [r, r]
    matmul over contiguous rows) and then rotates that axis to the front of the block ([N, r_k, r_1, …]); after k
    passes every axis was transformed once and the order is back. The rotation is a transpose inside each
    L-entry block (cache-resident), where contracting a middle axis directly makes XLA's CPU backend transpose
    the whole [N, L] array across blocks: 2.6× slower for the [22220, 1024] of SAID on MiniLM at d = 1000.
    """
    L = x.shape[-1]
    m = L.bit_length() - 1
    if L < 1 or (1 << m) != L:
        raise ValueError(f"fwht: last axis {L} is not a power of two")
    rs = radices(L, max_radix)
    if not rs:
        return x
    lead = x.shape[:-1]
    y = x.reshape(-1, *rs)
    for _ in rs:
        h = jnp.asarray(hadamard(y.shape[-1]), x.dtype)
        y = jnp.moveaxis(jnp.matmul(y, h, precision=jax.lax.Precision.HIGHEST), -1, 1)
    return y.reshape(*lead, L)


def block_size(d: int) -> int:
    return 1 << max(0, math.ceil(math.log2(d)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def fastfood_vars(seed: int | jax.Array, num_blocks: int, L: int) -> dict[str, jax.Array]:
    """B (int8 ±1), Π and Π⁻¹ (each block's permutation of 0..L-1 and its inverse; int16 while L ≤ 2^15) and
    G/sqrt(ΣG²) for `num_blocks` blocks of size L."""
    if num_blocks * L >= 2**31:
        raise ValueError(f"fastfood: {num_blocks}×{L} padded entries exceed int32 indexing")
    ks, kp, kg = jax.random.split(jax.random.key(seed), 3)
    sign = jnp.where(jax.random.bernoulli(ks, 0.5, (num_blocks, L)), 1, -1).astype(jnp.int8)
    local = jax.random.permutation(
        kp, jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (num_blocks, L)), axis=1, independent=True
    )
    inverse = jnp.zeros_like(local).at[jnp.arange(num_blocks)[:, None], local].set(jnp.arange(L, dtype=jnp.int32))
    idx = jnp.int16 if L <= 2**15 else jnp.int32
    g = jax.random.normal(kg, (num_blocks, L), jnp.float32)
    gauss = g / jnp.sqrt(jnp.sum(g * g, axis=1, keepdims=True))
    return {"sign": sign, "perm": local.astype(idx), "perm_inv": inverse.astype(idx), "gauss": gauss}


def _flat_index(perm: jax.Array) -> jax.Array:
    S, L = perm.shape
    return (perm.astype(jnp.int32) + L * jnp.arange(S, dtype=jnp.int32)[:, None]).reshape(-1)


@jax.custom_vjp
def permute_blocks(y: jax.Array, perm: jax.Array, perm_inv: jax.Array) -> jax.Array:
    """y [S, L] -> out[k, m] = y[k, perm[k, m]]: Π_k applied to every block (row) k.

    The backward pass is the gather g[k, perm_inv[k, j]] (a permutation's transpose is its inverse) instead of
    the scatter-add into a zero [S·L] buffer that XLA derives for a gather's transpose."""
    flat = y.reshape(-1).at[_flat_index(perm)].get(unique_indices=True, mode="promise_in_bounds")
    return flat.reshape(y.shape)


def _permute_fwd(y, perm, perm_inv):
    return permute_blocks(y, perm, perm_inv), (perm, perm_inv)


def _permute_bwd(res, g):
    perm, perm_inv = res
    return permute_blocks(g, perm_inv, perm), None, None


permute_blocks.defvjp(_permute_fwd, _permute_bwd)


def project_blocks(theta_d: jax.Array, ff: Mapping[str, jax.Array]) -> jax.Array:
    """[S·L] = stacked H·G·Π·H·B · pad(θ_d), every block normalised by sqrt(ΣG_k²) (not yet by sqrt(D_i))."""
    L = ff["gauss"].shape[1]
    x = jnp.pad(theta_d.astype(jnp.float32), (0, L - theta_d.shape[0]))
    y = fwht(ff["sign"].astype(jnp.float32) * x)  # [S, L]: H·B_k·x for every block k
    y = permute_blocks(y, ff["perm"], ff["perm_inv"])
    return fwht(y * ff["gauss"]).reshape(-1)


# --------------------------------------------------------------------------------------------------------
# The delta contract
def _cfg(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(DEFAULTS) - {"method"}
    if unknown:
        raise ValueError(
            f"fastfood: unknown config keys {sorted(unknown)} (valid: {', '.join(sorted(DEFAULTS))})"
        )
    return {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}


def target_paths(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    cfg = _cfg(config)
    rx = re.compile(cfg["targets"])
    paths = [p for p in tree.flatten(base_params) if rx.fullmatch(p)]
    if not paths:
        raise ValueError(f"fastfood: targets {cfg['targets']!r} match no parameter")
    if cfg["train_head"]:
        overlap = [p for p in paths if p.startswith("head/")]
        if overlap:
            raise ValueError(
                f"fastfood: {overlap[:3]} are both projected (targets) and trained directly "
                "(train_head); narrow `targets` or set train_head=False"
            )
    return paths


def _dims(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[list[str], int, int, int]:
    """(target paths, d' = length of θ_d, L, S)."""
    cfg = _cfg(config)
    paths = target_paths(base_params, cfg)
    d = int(cfg["d"])
    dd = d - len(paths) if cfg["said"] else d
    if dd < 1:
        raise ValueError(
            f"fastfood: SAID needs d > the number of projected tensors ({len(paths)}), got d={d}"
        )
    L = block_size(dd)
    flat = tree.flatten(base_params)
    S = sum(math.ceil(int(np.prod(np.shape(flat[p]))) / L) for p in paths)
    return paths, dd, L, S


def _head(base_params: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    if not cfg["train_head"]:
        return {}
    head = {p: x for p, x in tree.flatten(base_params).items() if p.startswith("head/")}
    return {p: jnp.array(x, copy=True) for p, x in head.items()}


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    del rng  # the projection comes from config['seed'] so that the same seed means the same P everywhere
    cfg = _cfg(config)
    paths, dd, L, S = _dims(base_params, cfg)
    flat = tree.flatten(base_params)
    ff = {
        "theta_d": jnp.zeros((dd,), jnp.float32),
        "norm": tree.unflatten(
            {p: jnp.asarray(1.0 / math.sqrt(np.prod(np.shape(flat[p]))), jnp.float32) for p in paths}
        ),
        "seed": jnp.asarray(cfg["seed"], jnp.uint32),
        **fastfood_vars(jnp.uint32(cfg["seed"]), S, L),
    }
    if cfg["said"]:
        ff["lambda"] = jnp.ones((len(paths),), jnp.float32)
    return tree.merge({"fastfood": ff}, tree.unflatten(_head(base_params, cfg)))


def offsets(base_params: Mapping[str, Any], paths: list[str], L: int) -> list[tuple[str, int, int]]:
    """(path, first entry in the [S·L] output, D_i) for every projected tensor, in δ's order."""
    flat = tree.flatten(base_params)
    out, off = [], 0
    for p in paths:
        D = int(np.prod(np.shape(flat[p])))
        out.append((p, off, D))
        off += math.ceil(D / L) * L
    return out


def projected(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, jax.Array]:
    """{path: c_i·(λ_i)·P_i θ_d reshaped like θ₀[path]} — the offset added to each projected tensor."""
    ff = delta["fastfood"]
    norm = tree.flatten(ff["norm"])
    L = ff["gauss"].shape[1]
    y = project_blocks(ff["theta_d"], ff)
    flat = tree.flatten(base_params)
    offs = offsets(base_params, list(norm), L)
    # One split (whose transpose is one concatenate) instead of a slice per tensor: slices transpose to a
    # pad + add of the whole [S·L] vector each, i.e. O(m·S·L) work in the backward pass and m× the HLO.
    cuts = sorted({c for _, off, D in offs for c in (off, off + D)} - {0, y.shape[0]})
    pieces = dict(zip([0, *cuts], jnp.split(y, cuts)))
    lam = jnp.split(ff["lambda"], len(offs)) if "lambda" in ff else None
    out = {}
    for i, (p, off, _) in enumerate(offs):
        scale = norm[p] * lam[i][0] if lam is not None else norm[p]
        out[p] = (pieces[off] * scale).reshape(np.shape(flat[p]))
    return out


def apply(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    flat = tree.flatten(base_params)
    new = {p: (flat[p] + off.astype(flat[p].dtype)) for p, off in projected(base_params, delta).items()}
    head = {k: v for k, v in delta.items() if k != "fastfood"}
    return {"params": override_params(override_params(base_params, tree.unflatten(new)), head)}


def trainable(delta: Mapping[str, Any]) -> Any:
    trains = re.compile(r"fastfood/(?:theta_d|lambda)|(?!fastfood/).*")
    return tree.map_with_path(lambda p, _: bool(trains.fullmatch(p)), delta)


def to_disk(delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    ff = delta["fastfood"]
    out = {
        "fastfood/theta_d": np.asarray(ff["theta_d"], np.float32),
        "fastfood/seed": np.asarray(ff["seed"], np.uint32).reshape(1),
    }
    if "lambda" in ff:
        out["fastfood/lambda"] = np.asarray(ff["lambda"], np.float32)
    out.update(
        {
            p: np.asarray(x)
            for p, x in tree.flatten({k: v for k, v in delta.items() if k != "fastfood"}).items()
        }
    )
    return out


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    cfg = _cfg(config)
    seed = int(np.asarray(arrays["fastfood/seed"]).reshape(()))
    if seed != int(cfg["seed"]):
        raise ValueError(f"fastfood: stored seed {seed} differs from the config's seed {cfg['seed']}")
    delta = init(jax.random.key(0), base_params, cfg)
    ff = delta["fastfood"]
    expected = {"fastfood/theta_d", "fastfood/seed"} | ({"fastfood/lambda"} if "lambda" in ff else set())
    expected |= {p for p in tree.flatten(delta) if not p.startswith("fastfood/")}
    if set(arrays) != expected:
        raise ValueError(
            f"fastfood: stored arrays differ from the config's δ: {sorted(set(arrays) ^ expected)[:10]}"
        )
    ff["theta_d"] = _checked(arrays["fastfood/theta_d"], ff["theta_d"], "fastfood/theta_d")
    if "lambda" in ff:
        ff["lambda"] = _checked(arrays["fastfood/lambda"], ff["lambda"], "fastfood/lambda")
    rest = {
        p: _checked(arrays[p], x, p) for p, x in tree.flatten(delta).items() if not p.startswith("fastfood/")
    }
    return tree.merge({"fastfood": ff}, tree.unflatten(rest))


def _checked(stored: np.ndarray, like: jax.Array, name: str) -> jax.Array:
    if tuple(stored.shape) != tuple(like.shape):
        raise ValueError(f"{name}: stored shape {tuple(stored.shape)}, the config gives {tuple(like.shape)}")
    return jnp.asarray(stored, like.dtype)


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    cfg = _cfg(config)
    paths, dd, _, _ = _dims(base_params, cfg)
    head = sum(int(np.prod(np.shape(x))) for x in _head_shapes(base_params, cfg))
    return dd + (len(paths) if cfg["said"] else 0) + head


def _head_shapes(base_params, cfg):
    if not cfg["train_head"]:
        return []
    return [x for p, x in tree.flatten(base_params).items() if p.startswith("head/")]
