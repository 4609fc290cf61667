"""Diff pruning: θ = θ₀ + z ⊙ w with hard-concrete gates z, then a fixed sparse diff (Guo et al. 2021).

Paper: Guo, Rush & Kim 2021, "Parameter-Efficient Transfer Learning with Diff Pruning"; gates from Louizos,
Welling & Kingma 2018, "Learning Sparse Neural Networks through L0 Regularization".

Two phases, two runs (config `phase`):
  'l0'          δ = {w, log_alpha} per selected tensor (both trainable, shaped like the tensor) + the head.
                θ = θ₀ + z ⊙ w. In training (STOCHASTIC) z is sampled: u ~ U(0, 1),
                s = σ((log u - log(1 - u) + log_alpha) / β), z = clip(s·(ζ - γ) + γ, 0, 1); at evaluation the
                deterministic gate z = clip(σ(log_alpha)·(ζ - γ) + γ, 0, 1) is used. `penalty(δ)` adds the
                expected L0 norm l0_weight · Σ σ(log_alpha - β·log(-γ/ζ)) to the loss.
                w = 0 and log_alpha = alpha_init at init, so apply(θ₀, init(θ₀)) = θ₀ exactly.
  'fixed_mask'  δ = {indices (int32, fixed), values (float32, trainable)} per selected tensor with at least one
                kept entry + the head: θ_p = θ₀_p + scatter(indices_p, values_p). `init` loads the stage-1 δ
                saved at `init_from` and calls `project`: the magnitude projection onto the L0 ball keeps the
                k = round(target_fraction · N) entries of |z_det ⊙ w| largest over all N selected entries
                (global, not per tensor) with their values; training then continues on those k values only.
                This is the mask ⊙ w of the paper stored sparsely, so the optimiser state and the reported
                trainable count are exactly k, and the stored δ is 8 bytes per nonzero (int32 index +
                float32 value) plus the head.
The head (`head/...`) is trained densely in both phases when train_head.

Config keys:
  targets          regex (re.fullmatch) of the diff-pruned tensors; default every backbone tensor
  train_head       train the task head densely (default True)
  phase            'l0' | 'fixed_mask'
  l0_weight        λ of the expected-L0 penalty (Guo et al.: 1.25e-7 for BERT-large, summed over all gates)
  alpha_init       initial log_alpha (5.0: every gate open at init, Guo et al.'s default)
  beta, gamma, zeta  hard-concrete temperature and stretch interval (Louizos et al.: 2/3, -0.1, 1.1; Guo et al.
                   use the wider (-1.5, 1.5))
  target_fraction  fraction of the selected entries kept by `project` (Guo et al.: 0.005)
  init_from        fixed_mask phase: directory of the saved stage-1 (l0) δ (`delta_io.save` layout)
Trainable parameters: l0: 2·N + |head|; fixed_mask: round(target_fraction·N) + |head|, N = Σ |θ₀[p]| over targets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import override_params

STOCHASTIC = True  # the train step calls apply(base, δ, rng=key, train=True)

DEFAULTS: dict[str, Any] = {
    "targets": r"backbone/.*",
    "train_head": True,
    "phase": "l0",
    "l0_weight": 1.25e-7,
    "alpha_init": 5.0,
    "beta": 2.0 / 3.0,
    "gamma": -0.1,
    "zeta": 1.1,
    "target_fraction": 0.005,
    "init_from": "",
}
_HP = ("l0_weight", "beta", "gamma", "zeta")


# --------------------------------------------------------------------------------------------------------
# Hard-concrete gates (Louizos et al. 2018)
def sample_gates(
    rng: jax.Array | None, log_alpha: jax.Array, beta, gamma, zeta, u: jax.Array | None = None
) -> jax.Array:
    """z = clip(σ((log u - log(1 - u) + log_alpha)/β)·(ζ - γ) + γ, 0, 1), u ~ U(0, 1) drawn from rng unless given."""
    if u is None:
        u = jax.random.uniform(rng, log_alpha.shape, jnp.float32, 1e-6, 1.0 - 1e-6)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / beta)
    return jnp.clip(s * (zeta - gamma) + gamma, 0.0, 1.0)


def deterministic_gates(log_alpha: jax.Array, gamma, zeta) -> jax.Array:
    return jnp.clip(jax.nn.sigmoid(log_alpha) * (zeta - gamma) + gamma, 0.0, 1.0)


def prob_nonzero(log_alpha: jax.Array, beta, gamma, zeta) -> jax.Array:
    """P(z ≠ 0) = σ(log_alpha - β·log(-γ/ζ)); its sum is the expected L0 norm."""
    return jax.nn.sigmoid(log_alpha - beta * jnp.log(-gamma / zeta))


# --------------------------------------------------------------------------------------------------------
def _cfg(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(DEFAULTS) - {"method"}
    if unknown:
        raise ValueError(
            f"diffprune: unknown config keys {sorted(unknown)} (valid: {', '.join(sorted(DEFAULTS))})"
        )
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}
    if cfg["phase"] not in ("l0", "fixed_mask"):
        raise ValueError(f"diffprune: phase must be 'l0' or 'fixed_mask', got {cfg['phase']!r}")
    if not (cfg["gamma"] < 0 and cfg["zeta"] > 1):
        raise ValueError(
            f"diffprune: need gamma < 0 < 1 < zeta, got gamma={cfg['gamma']}, zeta={cfg['zeta']}"
        )
    if not 0 < cfg["target_fraction"] <= 1:
        raise ValueError(f"diffprune: target_fraction must be in (0, 1], got {cfg['target_fraction']}")
    return cfg


def target_paths(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    cfg = _cfg(config)
    rx = re.compile(cfg["targets"])
    paths = [p for p in tree.flatten(base_params) if rx.fullmatch(p)]
    if not paths:
        raise ValueError(f"diffprune: targets {cfg['targets']!r} match no parameter")
    if cfg["train_head"] and any(p.startswith("head/") for p in paths):
        raise ValueError("diffprune: targets overlap head/ while train_head=True; narrow `targets`")
    return paths


def _head(base_params, cfg) -> dict[str, Any]:
    if not cfg["train_head"]:
        return {}
    return {p: jnp.array(x, copy=True) for p, x in tree.flatten(base_params).items() if p.startswith("head/")}


def num_kept(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    flat = tree.flatten(base_params)
    n = sum(int(np.prod(np.shape(flat[p]))) for p in target_paths(base_params, config))
    return max(1, int(round(_cfg(config)["target_fraction"] * n)))


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    del rng
    cfg = _cfg(config)
    if cfg["phase"] == "fixed_mask":
        if not cfg["init_from"]:
            raise ValueError(
                "diffprune: phase 'fixed_mask' needs init_from = the directory of a saved l0-phase δ"
            )
        from ftlab.checkpoint import delta_io

        with jax.ensure_compile_time_eval():  # concrete values even when init is traced (eval_shape)
            method, _, stage1 = delta_io.load(cfg["init_from"], base_params, None)
            if method != "diffprune" or "log_alpha" not in stage1.get("diffprune", {}):
                raise ValueError(
                    f"diffprune: {cfg['init_from']} holds no l0-phase diffprune δ (method {method})"
                )
            return project(stage1, base_params, cfg)
    flat = tree.flatten(base_params)
    paths = target_paths(base_params, cfg)
    dp = {
        "w": tree.unflatten({p: jnp.zeros(np.shape(flat[p]), jnp.float32) for p in paths}),
        "log_alpha": tree.unflatten(
            {p: jnp.full(np.shape(flat[p]), cfg["alpha_init"], jnp.float32) for p in paths}
        ),
        "hp": {k: jnp.asarray(cfg[k], jnp.float32) for k in _HP},
    }
    return tree.merge({"diffprune": dp}, tree.unflatten(_head(base_params, cfg)))


def project(
    delta: Mapping[str, Any], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> dict[str, Any]:
    """l0-phase δ -> fixed_mask δ: keep the round(target_fraction·N) largest |z_det ⊙ w| over all targets."""
    cfg = _cfg(config)
    dp = delta["diffprune"]
    w, la = tree.flatten(dp["w"]), tree.flatten(dp["log_alpha"])
    paths = list(w)
    if set(paths) != set(target_paths(base_params, cfg)):
        raise ValueError("diffprune.project: the l0 δ's tensors differ from the config's targets")
    # numpy on the host: project also runs inside `init`, which must work under jax.eval_shape
    diffs = {}
    for p in paths:
        gate = (
            1.0 / (1.0 + np.exp(-np.asarray(la[p], np.float32))) * (cfg["zeta"] - cfg["gamma"]) + cfg["gamma"]
        )
        diffs[p] = (np.clip(gate, 0.0, 1.0) * np.asarray(w[p], np.float32)).reshape(-1).astype(np.float32)
    flat_all = np.concatenate([np.abs(diffs[p]) for p in paths])
    k = num_kept(base_params, cfg)
    keep = np.zeros(flat_all.shape[0], bool)
    keep[np.argpartition(-flat_all, k - 1)[:k]] = True
    idx, val, start = {}, {}, 0
    for p in paths:
        n = diffs[p].shape[0]
        sel = np.flatnonzero(keep[start : start + n]).astype(np.int32)
        start += n
        if sel.size:
            idx[p], val[p] = jnp.asarray(sel), jnp.asarray(diffs[p][sel], jnp.float32)
    head = {p: jnp.array(x, copy=True) for p, x in tree.flatten(delta).items() if p.startswith("head/")}
    if cfg["train_head"] and not head:
        head = _head(base_params, cfg)
    return tree.merge(
        {"diffprune": {"indices": tree.unflatten(idx), "values": tree.unflatten(val)}}, tree.unflatten(head)
    )


def apply(
    base_params: Mapping[str, Any],
    delta: Mapping[str, Any],
    rng: jax.Array | None = None,
    train: bool = False,
) -> dict[str, Any]:
    dp = delta["diffprune"]
    flat = tree.flatten(base_params)
    new = {}
    if "log_alpha" in dp:
        w, la, hp = tree.flatten(dp["w"]), tree.flatten(dp["log_alpha"]), dp["hp"]
        if (
            train
        ):  # one draw for all gates: one RNG kernel (and one compiled Threefry) instead of one per tensor
            sizes = np.cumsum([int(np.prod(x.shape)) for x in la.values()])
            u_all = jax.random.uniform(rng, (int(sizes[-1]),), jnp.float32, 1e-6, 1.0 - 1e-6)
            u = dict(zip(la, jnp.split(u_all, sizes[:-1].tolist())))
        for p in w:
            if train:
                z = sample_gates(
                    None, la[p], hp["beta"], hp["gamma"], hp["zeta"], u=u[p].reshape(la[p].shape)
                )
            else:
                z = deterministic_gates(la[p], hp["gamma"], hp["zeta"])
            new[p] = flat[p] + (z * w[p]).astype(flat[p].dtype)
    else:
        idx, val = tree.flatten(dp["indices"]), tree.flatten(dp["values"])
        for p in idx:
            x = (
                flat[p]
                .reshape(-1)
                .at[idx[p]]
                .add(val[p].astype(flat[p].dtype), indices_are_sorted=True, unique_indices=True)
            )
            new[p] = x.reshape(flat[p].shape)
    head = {k: v for k, v in delta.items() if k != "diffprune"}
    return {"params": override_params(override_params(base_params, tree.unflatten(new)), head)}


def penalty(delta: Mapping[str, Any]) -> jax.Array:
    """l0_weight · E[‖z‖₀] in the l0 phase, 0 in the fixed_mask phase."""
    dp = delta["diffprune"]
    if "log_alpha" not in dp:
        return jnp.zeros((), jnp.float32)
    hp = dp["hp"]
    total = sum(
        jnp.sum(prob_nonzero(x, hp["beta"], hp["gamma"], hp["zeta"]))
        for x in tree.flatten(dp["log_alpha"]).values()
    )
    return hp["l0_weight"] * total


def trainable(delta: Mapping[str, Any]) -> Any:
    frozen = re.compile(r"diffprune/(?:hp|indices)/.*")
    return tree.map_with_path(lambda p, _: not frozen.fullmatch(p), delta)


def to_disk(delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    skip = re.compile(r"diffprune/hp/.*")
    return {p: np.asarray(x) for p, x in tree.flatten(delta).items() if not skip.fullmatch(p)}


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    cfg = _cfg(config)
    flat = tree.flatten(base_params)
    paths = target_paths(base_params, cfg)
    head = set(_head(base_params, cfg))
    if cfg["phase"] == "l0":
        expected = {f"diffprune/{k}/{p}" for k in ("w", "log_alpha") for p in paths} | head
        if set(arrays) != expected:
            raise ValueError(
                f"diffprune: stored arrays differ from the config's δ: {sorted(set(arrays) ^ expected)[:10]}"
            )
        for p in paths:
            for k in ("w", "log_alpha"):
                if tuple(arrays[f"diffprune/{k}/{p}"].shape) != tuple(np.shape(flat[p])):
                    raise ValueError(
                        f"diffprune/{k}/{p}: stored shape differs from the base's {np.shape(flat[p])}"
                    )
        out = {p: jnp.asarray(x) for p, x in arrays.items()}
        out.update({f"diffprune/hp/{k}": jnp.asarray(cfg[k], jnp.float32) for k in _HP})
        return tree.unflatten(out)
    allowed = {f"diffprune/{k}/{p}" for k in ("indices", "values") for p in paths} | head
    extra = set(arrays) - allowed
    missing = head - set(arrays)
    if extra or missing:
        raise ValueError(
            f"diffprune: stored arrays differ from the config's δ: {sorted(extra | missing)[:10]}"
        )
    n = 0
    for p in paths:
        i, v = arrays.get(f"diffprune/indices/{p}"), arrays.get(f"diffprune/values/{p}")
        if (i is None) != (v is None) or (i is not None and i.shape != v.shape):
            raise ValueError(f"diffprune: indices and values of {p} do not pair up")
        if i is not None:
            if i.size and (i.min() < 0 or i.max() >= np.prod(np.shape(flat[p])) or np.any(np.diff(i) <= 0)):
                raise ValueError(
                    f"diffprune: indices of {p} not strictly increasing inside the tensor "
                    f"({np.shape(flat[p])})"
                )
            n += i.size
    if n != num_kept(base_params, cfg):
        raise ValueError(
            f"diffprune: {n} stored nonzeros, the config's target_fraction gives {num_kept(base_params, cfg)}"
        )
    return tree.unflatten({p: jnp.asarray(x) for p, x in arrays.items()})


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    cfg = _cfg(config)
    flat = tree.flatten(base_params)
    n = sum(int(np.prod(np.shape(flat[p]))) for p in target_paths(base_params, cfg))
    head = sum(int(np.prod(np.shape(x))) for x in _head(base_params, cfg).values())
    return (2 * n if cfg["phase"] == "l0" else num_kept(base_params, cfg)) + head
