"""Pruning during fine-tuning: full fine-tuning with the encoder's weights masked to a shrinking keep fraction.

Paper: Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning" (magnitude, movement and
soft movement pruning of BERT's encoder weights); cubic sparsity schedule: Zhu & Gupta 2017, "To prune, or not
to prune: exploring the efficacy of pruning for model compression".

δ (training form) = a copy of every leaf of θ₀ (all trainable, as `full`) plus, under `prune/`:
  scores/<p>        S, shaped like W_p, trainable (movement criteria only; init 0, as Sanh et al.'s code:
                    `--mask_init constant --mask_scale 0`)
  targets/<criterion>/<budget>/<p>   int32 scalar = |W_p|, fixed: names the pruned tensors, the criterion and
                    the budget in δ's structure (apply has no config)
  hp/...            keep, warmup_fraction, cooldown_fraction, tau, penalty_weight (float32) and k_final
                    (int32 [groups], the exact kept count at the end of the schedule), fixed
θ_p = W_p ⊙ M_p for every pruned tensor p (the `targets` regex), every other leaf θ = δ.
Criteria (config `criterion`):
  'magnitude'      M = top-v of |W| (no scores; M is a constant of the backward pass, so pruned weights get
                   no gradient)
  'movement'       M = top-v of S, straight-through: M_ste = S + stop_gradient(M - S), so dL/dS = dL/dθ ⊙ W
                   and dL/dW = dL/dθ ⊙ M
  'soft_movement'  M = 1[σ(S) > tau] with the same straight-through estimator, plus `penalty` =
                   λ_t · Σ σ(S) / N (N = Σ |W_p| over the targets); λ_t = penalty_weight · (1 - (1 - r_t)³),
                   r_t the schedule's progress below. `keep` and `budget` are unused: the density reached is
                   whatever λ drives it to (reported as `delta_stats.density` in results.json).
Cubic schedule (Zhu & Gupta; Sanh et al.'s warmup / cool-down): with t_i = warmup_fraction·T,
t_f = (1 - cooldown_fraction)·T and r_t = clip((t - t_i)/(t_f - t_i), 0, 1), the kept fraction is
v_t = keep + (1 - keep)(1 - r_t)³: 1 before t_i, `keep` after t_f. `apply(θ₀, δ)` without a step
(evaluation, export) uses the final keep, so every reported metric is at the target sparsity. Under
`budget` 'global' one threshold covers all targets (k = round(v·Σ|W_p|)); 'per_layer' gives each tensor its own
(k_p = round(v·|W_p|)).
Threshold: an exact top-k over millions of weights costs seconds per call on a CPU (5-6 s for MiniLM's 21M), so
apply finds the k-th largest score by bisection on the scores' order-preserving uint32 bit patterns
(`kth_largest`): each iteration one counting pass over the scores, bracket width 2^32 / 2^iterations keys.
Training uses TRAIN_ITERS = 24 iterations: it keeps at least k and at most k + (the entries within 256 float32
steps below the k-th largest score); measured on MiniLM's 10.6M encoder kernels at keep 0.1: +3e-6·k
(magnitude), +1e-5·k (movement, scores ~ N(0, 0.05²)). Without a step apply runs 32 iterations, which is exact: it keeps every
score >= the k-th largest (ties at the threshold are all kept, e.g. at init every S = 0, so
apply(θ₀, init) = θ₀ under movement).
Stored δ (`to_disk`): each pruned tensor as int32 flat indices + float32 values of the kept entries of W ⊙ M
(the exact top-k computed once in numpy, equal to apply's 32-iteration mask), or, where that would not be
smaller (a tensor's density ≥ 1/2, e.g. soft movement with a small λ), as the dense W ⊙ M under
prune/dense/<p>; every other leaf dense: about 4·N·min(2·density_p, 1) bytes per pruned tensor + the dense
rest. `from_disk` gives the mask-free form {θ leaves, prune/indices, prune/values, prune/dense} whose apply is
the same θ (STORED_FORM_DIFFERS: the round trip preserves θ, not δ's training leaves).

Config keys:
  targets            regex (re.fullmatch) of the pruned tensors; default the encoder's linear kernels
                     (embeddings, pooler and head stay dense, as in Sanh et al.)
  criterion          'magnitude' | 'movement' | 'soft_movement'
  keep               final kept fraction v (Sanh et al.: 0.03 - 0.15); unused by soft_movement
  budget             'global' (one threshold over all targets) | 'per_layer' (one per tensor)
  warmup_fraction    fraction of the steps before pruning starts (v = 1)
  cooldown_fraction  fraction of the steps at the end trained at the final keep
  tau                soft_movement: keep an entry while σ(S) > tau (fixed, not ramped)
  penalty_weight     soft_movement: final λ of the penalty λ_t · Σσ(S)/N
Trainable parameters: |θ₀| (magnitude); |θ₀| + N (movement, soft_movement), N = Σ |θ₀[p]| over targets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree

SCHEDULED = True  # the train step calls apply(base, δ, step=step, total_steps=T) and penalty(δ, step, T)
STORED_FORM_DIFFERS = True  # from_disk(to_disk(δ)) is the mask-free form: same apply, other leaves

DEFAULTS: dict[str, Any] = {
    "targets": r"backbone/encoder/layer/\d+/.*/kernel",
    "criterion": "movement",
    "keep": 0.10,
    "budget": "global",
    "warmup_fraction": 0.1,
    "cooldown_fraction": 0.2,
    "tau": 0.1,
    "penalty_weight": 400.0,
}
TRAIN_ITERS = 24  # bisection iterations of the threshold in training (32 = exact, used without a step)
CRITERIA = ("magnitude", "movement", "soft_movement")
BUDGETS = ("global", "per_layer")
_HP = ("keep", "warmup_fraction", "cooldown_fraction", "tau", "penalty_weight")


def _cfg(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(DEFAULTS) - {"method"}
    if unknown:
        raise ValueError(f"prune: unknown config keys {sorted(unknown)} (valid: {', '.join(sorted(DEFAULTS))})")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}
    if cfg["criterion"] not in CRITERIA:
        raise ValueError(f"prune: criterion must be one of {CRITERIA}, got {cfg['criterion']!r}")
    if cfg["budget"] not in BUDGETS:
        raise ValueError(f"prune: budget must be one of {BUDGETS}, got {cfg['budget']!r}")
    if not 0 < cfg["keep"] <= 1:
        raise ValueError(f"prune: keep must be in (0, 1], got {cfg['keep']}")
    w, c = cfg["warmup_fraction"], cfg["cooldown_fraction"]
    if not (0 <= w and 0 <= c and w + c < 1):
        raise ValueError(f"prune: need 0 <= warmup_fraction, cooldown_fraction and their sum < 1, got {w}, {c}")
    if not 0 < cfg["tau"] < 1:
        raise ValueError(f"prune: tau must be in (0, 1), got {cfg['tau']}")
    return cfg


def target_paths(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    cfg = _cfg(config)
    rx = re.compile(cfg["targets"])
    paths = [p for p in tree.flatten(base_params) if rx.fullmatch(p)]
    if not paths:
        raise ValueError(f"prune: targets {cfg['targets']!r} match no parameter")
    return paths


def _k_final(sizes: list[int], keep: float, budget: str) -> list[int]:
    if budget == "global":
        return [max(1, int(round(keep * sum(sizes))))]
    return [max(1, int(round(keep * n))) for n in sizes]


# --------------------------------------------------------------------------------------------------------
# Schedule and threshold
def progress(step, total_steps: int | None, warmup_fraction, cooldown_fraction) -> jax.Array:
    """r_t = clip((t - t_i)/(t_f - t_i), 0, 1); 1 without a schedule (step or total_steps None)."""
    if step is None or total_steps is None:
        return jnp.ones((), jnp.float32)
    t = jnp.asarray(step, jnp.float32)
    t_i = warmup_fraction * total_steps
    t_f = (1.0 - cooldown_fraction) * total_steps
    return jnp.clip((t - t_i) / jnp.maximum(t_f - t_i, 1e-6), 0.0, 1.0)


def keep_fraction(step, total_steps: int | None, keep, warmup_fraction, cooldown_fraction) -> jax.Array:
    """v_t = keep + (1 - keep)(1 - r_t)³ (Zhu & Gupta 2017)."""
    r = progress(step, total_steps, warmup_fraction, cooldown_fraction)
    return keep + (1.0 - keep) * (1.0 - r) ** 3


def order_keys(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (negatives: all bits flipped; others: the sign bit set)."""
    b = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(b >> 31 == 1, ~b, b | jnp.uint32(0x80000000))


def order_keys_np(x: np.ndarray) -> np.ndarray:
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return np.where(b >> 31 == 1, ~b, b | np.uint32(0x80000000))


def kth_largest(keys: list[jax.Array], groups: list[int], k: jax.Array, iters: int) -> jax.Array:
    """Per group g: the largest t with count(key >= t) >= k[g] over the group's key arrays, by bisection.

    `groups[i]` is the group of keys[i]; k: int32 [G]. Invariant count(>= lo) >= k > count(>= hi); after
    `iters` iterations hi - lo <= ceil((max - min + 1) / 2^iters), so 32 iterations give the exact k-th largest
    key and fewer return a lower bound (masks `key >= lo` keep at least k). Returns lo, uint32 [G]."""
    n_groups = int(k.shape[0])
    members = [[i for i, g in enumerate(groups) if g == gi] for gi in range(n_groups)]
    lo = jnp.stack([jnp.min(jnp.stack([jnp.min(keys[i]) for i in m])) for m in members])
    mx = jnp.stack([jnp.max(jnp.stack([jnp.max(keys[i]) for i in m])) for m in members])
    hi = jnp.where(mx == jnp.uint32(0xFFFFFFFF), mx, mx + 1)

    def body(_, carry):
        lo, hi = carry
        mid = lo + (hi - lo) // 2
        counts = [jnp.sum(x >= mid[g], dtype=jnp.int32) for x, g in zip(keys, groups)]
        per_group = jnp.stack([sum(counts[i] for i in m) for m in members])
        ok = per_group >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return lo


# --------------------------------------------------------------------------------------------------------
def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    del rng
    cfg = _cfg(config)
    flat = tree.flatten(base_params)
    paths = target_paths(base_params, cfg)
    sizes = [int(np.prod(np.shape(flat[p]))) for p in paths]
    prune: dict[str, Any] = {
        "hp": {
            **{k: jnp.asarray(cfg[k], jnp.float32) for k in _HP},
            "k_final": jnp.asarray(_k_final(sizes, cfg["keep"], cfg["budget"]), jnp.int32),
        },
        "targets": {cfg["criterion"]: {cfg["budget"]: tree.unflatten(
            {p: jnp.asarray(n, jnp.int32) for p, n in zip(paths, sizes)})}},
    }
    if cfg["criterion"] != "magnitude":
        prune["scores"] = tree.unflatten({p: jnp.zeros(np.shape(flat[p]), jnp.float32) for p in paths})
    copy = {p: jnp.array(x, copy=True) for p, x in flat.items()}
    return {**tree.unflatten(copy), "prune": prune}


def _mode(prune: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    (criterion, by_budget), = prune["targets"].items()
    (budget, tgt), = by_budget.items()
    return criterion, budget, list(tree.flatten(tgt))


def masks(
    delta: Mapping[str, Any], step=None, total_steps: int | None = None, iters: int | None = None
) -> dict[str, jax.Array]:
    """{target path: float32 0/1 mask} of δ's training form at `step` (None: the final keep, exact)."""
    prune = delta["prune"]
    criterion, budget, paths = _mode(prune)
    hp = prune["hp"]
    flat = tree.flatten({k: v for k, v in delta.items() if k != "prune"})
    if criterion == "soft_movement":
        s = tree.flatten(prune["scores"])
        return {p: (jax.nn.sigmoid(jax.lax.stop_gradient(s[p])) > hp["tau"]).astype(jnp.float32) for p in paths}
    if criterion == "magnitude":
        scores = [jnp.abs(jax.lax.stop_gradient(flat[p])) for p in paths]
    else:
        s = tree.flatten(prune["scores"])
        scores = [jax.lax.stop_gradient(s[p]) for p in paths]
    sizes = [int(np.prod(x.shape)) for x in scores]
    groups = [0] * len(paths) if budget == "global" else list(range(len(paths)))
    n_group = np.zeros(max(groups) + 1, np.int64)
    for n, g in zip(sizes, groups):
        n_group[g] += n
    k_final = hp["k_final"]
    if step is None or total_steps is None:
        k, iters = k_final, 32
    else:
        v = keep_fraction(step, total_steps, hp["keep"], hp["warmup_fraction"], hp["cooldown_fraction"])
        k = jnp.round(v * jnp.asarray(n_group, jnp.float32)).astype(jnp.int32)
        k = jnp.clip(k, k_final, jnp.asarray(n_group, jnp.int32))
        iters = iters or TRAIN_ITERS
    keys = [order_keys(x) for x in scores]
    lo = kth_largest(keys, groups, k, iters)
    return {p: (x >= lo[g]).astype(jnp.float32) for p, x, g in zip(paths, keys, groups)}


def apply(
    base_params: Mapping[str, Any], delta: Mapping[str, Any], step=None, total_steps: int | None = None
) -> dict[str, Any]:
    prune = delta["prune"]
    dense = {k: v for k, v in delta.items() if k != "prune"}
    flat = tree.flatten(dense)
    if "indices" in prune:  # stored form: θ_p = scatter(indices_p, values_p) or W ⊙ M as stored, no mask
        base_flat = tree.flatten(base_params)
        idx, val = tree.flatten(prune["indices"]), tree.flatten(prune["values"])
        flat.update(tree.flatten(prune.get("dense", {})))
        for p in idx:
            shape, dtype = np.shape(base_flat[p]), base_flat[p].dtype
            x = jnp.zeros(int(np.prod(shape)), dtype).at[idx[p]].set(
                val[p].astype(dtype), indices_are_sorted=True, unique_indices=True)
            flat[p] = x.reshape(shape)
        return {"params": tree.unflatten({p: flat[p] for p in base_flat})}  # θ₀'s leaf order
    criterion = _mode(prune)[0]
    m = masks(delta, step, total_steps)
    scores = tree.flatten(prune["scores"]) if criterion != "magnitude" else {}
    for p, mp in m.items():
        if criterion == "magnitude":
            flat[p] = flat[p] * mp.astype(flat[p].dtype)
        else:  # straight-through M_ste = S + stop_gradient(M - S), written so that the value is W ⊙ M exactly
            w, sp = flat[p], scores[p].astype(flat[p].dtype)
            flat[p] = w * mp.astype(w.dtype) + w * (sp - jax.lax.stop_gradient(sp))
    return {"params": tree.unflatten(flat)}


def penalty(delta: Mapping[str, Any], step=None, total_steps: int | None = None) -> jax.Array:
    """soft_movement: λ_t · Σ σ(S) / N with λ_t = penalty_weight · (1 - (1 - r_t)³); 0 otherwise."""
    prune = delta["prune"]
    if "scores" not in prune or _mode(prune)[0] != "soft_movement":
        return jnp.zeros((), jnp.float32)
    hp = prune["hp"]
    r = progress(step, total_steps, hp["warmup_fraction"], hp["cooldown_fraction"])
    lam = hp["penalty_weight"] * (1.0 - (1.0 - r) ** 3)
    s = list(tree.flatten(prune["scores"]).values())
    n = sum(int(np.prod(x.shape)) for x in s)
    return lam * sum(jnp.sum(jax.nn.sigmoid(x)) for x in s) / n


def selectable(config: Mapping[str, Any], step: int, total_steps: int) -> bool:
    """Whether an evaluation at `step` may become the run's best δ (the training loop asks). The hard criteria
    evaluate with the final keep at every step; soft movement's mask is σ(S) > tau of the current scores, so only
    evaluations from the end of the schedule (t_f = (1 - cooldown_fraction)·T) on are at the run's sparsity. An
    earlier one (e.g. MRPC's first epoch, still ~100% dense) was selected and exported before this check."""
    cfg = _cfg(config)
    return cfg["criterion"] != "soft_movement" or step >= (1.0 - cfg["cooldown_fraction"]) * total_steps


def trainable(delta: Mapping[str, Any]) -> Any:
    frozen = re.compile(r"prune/(?:hp|targets|indices)/.*")
    return tree.map_with_path(lambda p, _: not frozen.fullmatch(p), delta)


def to_disk(delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Dense leaves as they are; each pruned tensor as the exact top-k of its final mask (numpy, once)."""
    prune = delta["prune"]
    dense = {p: np.asarray(x) for p, x in tree.flatten({k: v for k, v in delta.items() if k != "prune"}).items()}
    if "indices" in prune:
        out = dict(dense)
        out.update({f"prune/{k}/{p}": np.asarray(x) for k in ("indices", "values", "dense")
                    for p, x in tree.flatten(prune.get(k, {})).items()})
        return out
    criterion, budget, paths = _mode(prune)
    hp = {k: np.asarray(v) for k, v in prune["hp"].items()}
    if criterion == "soft_movement":
        s = {p: np.asarray(x, np.float32) for p, x in tree.flatten(prune["scores"]).items()}
        # same float32 arithmetic as apply: σ(S) > tau
        keep = {p: np.asarray(jax.nn.sigmoid(jnp.asarray(s[p])) > hp["tau"]).reshape(-1) for p in paths}
    else:
        src = dense if criterion == "magnitude" else {
            p: np.asarray(x) for p, x in tree.flatten(prune["scores"]).items()}
        keys = {p: order_keys_np(np.abs(src[p]) if criterion == "magnitude" else src[p]).reshape(-1) for p in paths}
        groups = [paths] if budget == "global" else [[p] for p in paths]
        keep = {}
        for g, members in enumerate(groups):
            allk = np.concatenate([keys[p] for p in members])
            kk = int(hp["k_final"][g])
            kth = np.partition(allk, allk.size - kk)[allk.size - kk]
            keep.update({p: keys[p] >= kth for p in members})
    out = {p: x for p, x in dense.items() if p not in keep}
    for p in paths:
        idx = np.flatnonzero(keep[p]).astype(np.int32)
        if 2 * idx.size >= keep[p].size:  # 8 bytes per kept entry would not beat 4 per entry
            out[f"prune/dense/{p}"] = (dense[p] * keep[p].reshape(dense[p].shape)).astype(np.float32)
        else:
            out[f"prune/indices/{p}"] = idx
            out[f"prune/values/{p}"] = dense[p].reshape(-1)[idx].astype(np.float32)
    return out


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    """The mask-free form {θ leaves, prune/indices, prune/values, prune/dense}: apply gives the stored θ."""
    cfg = _cfg(config)
    flat = tree.flatten(base_params)
    paths = target_paths(base_params, cfg)
    as_dense = [p for p in paths if f"prune/dense/{p}" in arrays]
    sparse = [p for p in paths if p not in as_dense]
    expected = ({p for p in flat if p not in paths} | {f"prune/dense/{p}" for p in as_dense}
                | {f"prune/{k}/{p}" for k in ("indices", "values") for p in sparse})
    if set(arrays) != expected:
        raise ValueError(f"prune: stored arrays differ from the config's δ: {sorted(set(arrays) ^ expected)[:10]}")
    for p in as_dense:
        if tuple(arrays[f"prune/dense/{p}"].shape) != tuple(np.shape(flat[p])):
            raise ValueError(f"prune: prune/dense/{p}: stored shape {arrays[f'prune/dense/{p}'].shape} differs from "
                             f"the base's {np.shape(flat[p])}")
    for p in sparse:
        i, v = arrays[f"prune/indices/{p}"], arrays[f"prune/values/{p}"]
        n = int(np.prod(np.shape(flat[p])))
        if i.shape != v.shape or i.ndim != 1:
            raise ValueError(f"prune: indices and values of {p} do not pair up")
        if i.size and (i.min() < 0 or i.max() >= n or np.any(np.diff(i) <= 0)):
            raise ValueError(f"prune: indices of {p} not strictly increasing inside the tensor ({np.shape(flat[p])})")
    for p in flat:
        if p not in paths and tuple(arrays[p].shape) != tuple(np.shape(flat[p])):
            raise ValueError(f"prune: {p}: stored shape {arrays[p].shape} differs from the base's {np.shape(flat[p])}")
    out = tree.unflatten({p: jnp.asarray(x) for p, x in arrays.items()})
    out.setdefault("prune", {})
    for k in ("indices", "values"):  # present (maybe empty) so that apply and stats see the stored form
        out["prune"].setdefault(k, {})
    return out


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    cfg = _cfg(config)
    flat = tree.flatten(base_params)
    total = sum(int(np.prod(np.shape(x))) for x in flat.values())
    n = sum(int(np.prod(np.shape(flat[p]))) for p in target_paths(base_params, cfg))
    return total + (n if cfg["criterion"] != "magnitude" else 0)


def final_masks(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{pruned path: bool mask} of δ's final θ, from the training form (exact top-k / σ(S) > tau) or the stored
    form (the stored indices; a tensor stored dense keeps its nonzeros)."""
    prune = delta["prune"]
    if "indices" not in prune:
        return {p: np.asarray(m) > 0 for p, m in jax.jit(masks)(delta).items()}
    out = {p: np.asarray(x) != 0 for p, x in tree.flatten(prune.get("dense", {})).items()}
    base_flat = tree.flatten(base_params)
    for p, idx in tree.flatten(prune["indices"]).items():
        m = np.zeros(np.shape(base_flat[p]), bool)
        m.reshape(-1)[np.asarray(idx)] = True
        out[p] = m
    return out


def largest_kept(base_params: Mapping[str, Any], delta: Mapping[str, Any],
                 fractions: tuple[float, ...] = (0.001, 0.01, 0.1)) -> dict[str, Any]:
    """Which of the base's largest weights δ keeps: for each pruned tensor and each q in `fractions`, the share
    of its top-⌈q·n⌉ entries by |W₀| that the final mask keeps (magnitude pruning at keep ≥ q: about 1; a mask
    independent of |W₀|: about its density). Returns {"tensors": {path: {"density", "top<q>"...}}, "mean": the
    unweighted means over tensors}."""
    base_flat = tree.flatten(base_params)
    rows = {}
    for p, m in final_masks(base_params, delta).items():
        w = np.abs(np.asarray(base_flat[p], np.float32)).reshape(-1)
        order = np.argsort(-w, kind="stable")
        mk = np.asarray(m).reshape(-1)
        row = {"density": float(mk.mean())}
        for q in fractions:
            row[f"top{q:g}"] = float(mk[order[: max(1, int(math.ceil(q * w.size)))]].mean())
        rows[p] = row
    keys = list(next(iter(rows.values()))) if rows else []
    return {"tensors": rows, "mean": {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}}


def stats(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """What the loop writes to results.json: the pruned entries' density of the final θ (apply without step)."""
    m = final_masks(base_params, delta)
    kept = sum(int(x.sum()) for x in m.values())
    n = sum(int(x.size) for x in m.values())
    out = {"pruned_params": n, "kept": kept, "density": kept / n}
    if "indices" in delta["prune"]:  # the stored form no longer names its criterion
        return out
    criterion, budget, _ = _mode(delta["prune"])
    return {"criterion": criterion, "budget": budget, **out}
