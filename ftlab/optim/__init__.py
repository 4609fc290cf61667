"""Optax optimizers from config: AdamW (bias correction switchable), schedules, regex parameter groups.

The optimizer only ever sees the trainable leaves of δ (the loop splits them off), so frozen weights get
no optimizer state. Parameter groups are `(path-regex, lr_multiplier)` rules, first match wins, every
trainable path must match (see `ftlab.tree.match_rules`); each distinct multiplier becomes one
`optax.partition` branch with its own scaled schedule. Weight decay skips paths matching `no_decay`.

Config keys (`config.optim`):
  name            'adamw' | 'sgd'
  lr              peak learning rate
  b1, b2, eps     Adam moments and epsilon
  bias_correction Adam's bias correction (Mosbach et al. 2021 show turning it off destabilises BERT
                  fine-tuning; the original BERT code had it off)
  weight_decay    decoupled weight decay (AdamW)
  no_decay        regex of paths without weight decay (biases and norms by default)
  schedule        'linear' | 'cosine' | 'constant' (after warmup) | 'cyclic_cosine' (no warmup): the
                  snapshot-ensemble schedule of Huang et al. 2017, α(t) = α0/2·(cos(π·mod(t−1, ⌈T/M⌉)/⌈T/M⌉)+1)
                  for update t = 1..T; the loop then snapshots δ at each cycle's end (ftlab.train.averaging)
  cycles          M, the number of cycles of 'cyclic_cosine' (1 for every other schedule)
  warmup_ratio    fraction of total steps for linear warmup (used when warmup_steps < 0)
  warmup_steps    explicit warmup steps (>= 0 overrides warmup_ratio)
  grad_clip       global-norm clipping (0 = off)
  groups          tuple of (regex, lr multiplier), first match wins; default: everything ×1
  llrd            layer-wise lr decay factor (1.0 = off): layer i of n gets lr × llrd^(n-i), the
                  embeddings llrd^(n+1), the head ×1 (Howard & Ruder 2018; Sun et al. 2019)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ftlab import tree

DEFAULTS: dict[str, Any] = {
    "name": "adamw",
    "lr": 5e-5,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "bias_correction": True,
    "weight_decay": 0.01,
    "no_decay": r".*(?:/bias|LayerNorm/scale|norm[^/]*/scale|ln_[^/]*/scale)",
    "schedule": "linear",
    "cycles": 1,  # M for schedule="cyclic_cosine" (snapshot ensembles); must stay 1 for other schedules
    "warmup_ratio": 0.06,
    "warmup_steps": -1,
    "grad_clip": 1.0,
    "groups": ((r".*", 1.0),),
    "llrd": 1.0,
}


class ScaleByAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def scale_by_adam(b1: float, b2: float, eps: float, bias_correction: bool = True) -> optax.GradientTransformation:
    """Adam's update direction m̂/(√v̂+ε); without bias correction m̂=m, v̂=v (BERT's original 'BertAdam')."""

    def init_fn(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return ScaleByAdamState(jnp.zeros([], jnp.int32), zeros, jax.tree_util.tree_map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        count = state.count + 1
        if bias_correction:
            c1 = 1 - b1 ** count.astype(jnp.float32)
            c2 = 1 - b2 ** count.astype(jnp.float32)
            out = jax.tree_util.tree_map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
        else:
            out = jax.tree_util.tree_map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return out, ScaleByAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def cyclic_cosine_schedule(peak: float, total_steps: int, cycles: int) -> optax.Schedule:
    """Huang et al. 2017 (Snapshot Ensembles, eq. 2): α(t) = α0/2·(cos(π·mod(t−1, ⌈T/M⌉)/⌈T/M⌉) + 1).

    optax calls a schedule with the number of updates done so far, `count` = t − 1 (0 for the first
    update), so the value is α0/2·(cos(π·mod(count, C)/C) + 1) with C = ⌈T/M⌉: α0 at each cycle's first
    update, falling to α0/2·(cos(π(C−1)/C)+1) ≈ 0 at its last; the cycle ends after updates C, 2C, ..., T."""
    length = cycle_length(total_steps, cycles)

    def fn(count):
        phase = jnp.mod(jnp.asarray(count, jnp.int32), length).astype(jnp.float32) / length
        return peak / 2.0 * (jnp.cos(jnp.pi * phase) + 1.0)

    return fn


def cycle_length(total_steps: int, cycles: int) -> int:
    """⌈T/M⌉, checked: M must be a whole number of cycles that ⌈T/M⌉-step cycles really make out of T steps."""
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise ValueError(f"optim.cycles={cycles!r} must be an integer >= 1")
    if cycles > total_steps:
        raise ValueError(f"optim.cycles={cycles} is more than the run's {total_steps} steps")
    length = -(-total_steps // cycles)
    made = -(-total_steps // length)
    if made != cycles:
        raise ValueError(f"optim.cycles={cycles} with {total_steps} steps: cycles of ⌈T/M⌉={length} steps make "
                         f"only {made} cycles; choose optim.cycles so that ⌈T/⌈T/M⌉⌉ = M (e.g. a divisor of T)")
    return length


def schedule(cfg: Mapping[str, Any], total_steps: int, peak: float) -> optax.Schedule:
    warmup = int(cfg["warmup_steps"]) if cfg["warmup_steps"] >= 0 else int(round(cfg["warmup_ratio"] * total_steps))
    warmup = min(warmup, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    cycles = cfg.get("cycles", 1)
    if cfg["schedule"] != "cyclic_cosine" and cycles != 1:
        raise ValueError(f"optim.cycles={cycles} needs optim.schedule='cyclic_cosine' "
                         f"(optim.schedule is {cfg['schedule']!r})")
    if cfg["schedule"] == "linear":
        after = optax.linear_schedule(peak, 0.0, decay_steps)
    elif cfg["schedule"] == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps)
    elif cfg["schedule"] == "constant":
        after = optax.constant_schedule(peak)
    elif cfg["schedule"] == "cyclic_cosine":
        if warmup:  # the paper's schedule restarts at α0 without warmup; a warmup would shift every cycle
            raise ValueError(f"optim.schedule='cyclic_cosine' has no warmup (Huang et al. 2017), but optim.warmup_"
                             f"steps/warmup_ratio give {warmup} warmup steps; set optim.warmup_ratio=0 "
                             "(and optim.warmup_steps=-1 or 0)")
        return cyclic_cosine_schedule(peak, total_steps, cycles)
    else:
        raise ValueError(f"optim.schedule: unknown schedule {cfg['schedule']!r} (linear, cosine, constant, "
                         "cyclic_cosine)")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


_LAYER_RX = re.compile(r"^backbone/(?:encoder/layer|layers|h)/(\d+)/")


def lr_multipliers(trainable_params: Mapping[str, Any], cfg: Mapping[str, Any], num_layers: int | None) -> dict[str, float]:
    """{path: lr multiplier} from the group rules and layer-wise decay."""
    paths = list(tree.flatten(trainable_params))
    mult = tree.match_rules(paths, [tuple(g) for g in cfg["groups"]], what="optim.groups")
    if cfg["llrd"] != 1.0:
        if not num_layers:
            raise ValueError("optim.llrd needs the number of layers")
        for p in paths:
            m = _LAYER_RX.match(p)
            if m:
                depth = num_layers - int(m.group(1))
            elif p.startswith("backbone/"):  # embeddings (and anything below the stack)
                depth = num_layers + 1
            else:
                depth = 0
            if p.startswith("backbone/pooler"):
                depth = 0
            mult[p] = mult[p] * cfg["llrd"] ** depth
    return mult


def build(
    cfg: Mapping[str, Any], trainable_params: Mapping[str, Any], total_steps: int, num_layers: int | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer over the trainable tree, base lr schedule for logging)."""
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        from ftlab.config import closest

        k = sorted(unknown)[0]
        close = closest(k, list(DEFAULTS))
        raise ValueError(f"unknown config key 'optim.{k}'" + (f"; did you mean 'optim.{close}'?" if close else ""))
    cfg = {**DEFAULTS, **cfg}
    mult = lr_multipliers(trainable_params, cfg, num_layers)
    labels_flat = {p: f"x{m:.6g}" for p, m in mult.items()}
    no_decay = re.compile(cfg["no_decay"])
    decay_mask = tree.map_with_path(lambda p, _: not no_decay.fullmatch(p), trainable_params)

    def branch(m: float) -> optax.GradientTransformation:
        lr = schedule(cfg, total_steps, cfg["lr"] * m)
        if cfg["name"] == "adamw":
            parts = [scale_by_adam(cfg["b1"], cfg["b2"], cfg["eps"], cfg["bias_correction"])]
            if cfg["weight_decay"]:
                parts.append(optax.add_decayed_weights(cfg["weight_decay"], mask=decay_mask_for_branch))
            parts.append(optax.scale_by_learning_rate(lr))
            return optax.chain(*parts)
        if cfg["name"] == "sgd":
            return optax.sgd(lr)
        raise ValueError(f"optim.name: unknown optimizer {cfg['name']!r} (adamw, sgd)")

    # optax.partition hands each branch the sub-tree of its leaves with the others masked out; the decay
    # mask must have the same structure, so it is given as a function of the branch's params.
    def decay_mask_for_branch(params):
        return jax.tree_util.tree_map(
            lambda x, d: d if not isinstance(x, optax.MaskedNode) else False, params, decay_mask,
            is_leaf=lambda x: isinstance(x, optax.MaskedNode),
        )

    branches = {label: branch(float(label[1:])) for label in sorted(set(labels_flat.values()))}
    labels = tree.unflatten(labels_flat)
    tx = optax.partition(branches, labels) if len(branches) > 1 else next(iter(branches.values()))
    parts = []
    if cfg["grad_clip"] and cfg["grad_clip"] > 0:
        parts.append(optax.clip_by_global_norm(cfg["grad_clip"]))
    parts.append(tx)
    return optax.chain(*parts), schedule(cfg, total_steps, cfg["lr"])
