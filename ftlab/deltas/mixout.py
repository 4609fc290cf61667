"""Mixout: full fine-tuning where, in training, each weight entry is swapped for its pretrained value with
probability p and the result rescaled so its expectation is the trained weight.

Paper: Lee, Cho & Kang 2020, "Mixout: Effective Regularization to Finetune Large-scale Pretrained Language
Models" (ICLR). The paper's mixout(u, p), for a target u (here θ₀'s value) and a trained w, is (also what
their reference `Mixout` autograd function computes)

    mixout(w; u, p) = (1 − p)⁻¹ · ( M ⊙ w + (1 − M) ⊙ u − p · u ),   M_i ~ Bernoulli(1 − p) i.i.d.,

so E[mixout(w; u, p)] = ((1 − p)·w + p·u − p·u) / (1 − p) = w (the paper's unbiasedness; with u = 0 this is
dropout on the weights). A replaced entry (M_i = 0) ends up at u_i·(1 − p)/(1 − p) = u_i (up to rounding), a kept one at
(w_i − p·u_i)/(1 − p). Like their reference `MixLinear`, mixout acts on the weight matrices (Dense kernels),
not on biases, with one mask per forward pass shared by every example of the batch.

δ = a trainable copy of every leaf of θ₀ (as ftlab.deltas.full). `apply(θ₀, δ)` is δ exactly (evaluation and
the exported δ); `apply(θ₀, δ, rng=key, train=True)` (the train step, STOCHASTIC) applies mixout to the leaves
matched by `targets` with u = θ₀'s leaf.

Targets: by default every Dense kernel of the backbone — the pretrained layers, the paper's mixout(w_pre).
ftlab's θ₀ also holds the freshly initialised head, whose "pretrained" value is only its random init w₀; we
leave the head alone by default (it is trained as in full fine-tuning, with the model's own dropout before
it). Adding `head/.*/kernel` to `targets` gives mixout(w₀) on the head (u = its initial value in θ₀). Mixout
replaces dropout in the paper's runs: set the model's dropout rates yourself if you want that too.

Config keys:
  p        mixout probability of replacing an entry by its pretrained value, 0 <= p < 1 (the paper's best
           runs use 0.9; p = 0 is plain full fine-tuning)
  targets  regex (re.fullmatch over "/"-joined θ₀ paths) of the mixed-out leaves; must match at least one
Trainable parameters: |θ₀| (as full fine-tuning).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import full

STOCHASTIC = True  # the train step calls apply(base, δ, rng=key, train=True)

DEFAULTS: dict[str, Any] = {"p": 0.9, "targets": r"backbone/.*/kernel"}


def _cfg(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(DEFAULTS) - {"method"}
    if unknown:
        raise ValueError(f"mixout: unknown config keys {sorted(unknown)} (valid: {', '.join(sorted(DEFAULTS))})")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}
    if not 0.0 <= float(cfg["p"]) < 1.0:
        raise ValueError(f"mixout: p must be in [0, 1), got p={cfg['p']}")
    return cfg


def target_paths(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    rx = re.compile(_cfg(config)["targets"])
    paths = [p for p in tree.flatten(base_params) if rx.fullmatch(p)]
    if not paths:
        raise ValueError(f"mixout: targets {config.get('targets', DEFAULTS['targets'])!r} match no parameter")
    return paths


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """δ = a trainable copy of θ₀ (θ₀'s paths) + fixed 'mixout/p' (scalar) and 'mixout/targets/<θ₀ path>'
    (True, one per mixed-out leaf), so that `apply` needs nothing but (θ₀, δ)."""
    return {**full.init(rng, base_params, {}), "mixout": _fixed(base_params, config)}


def _fixed(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    cfg = _cfg(config)
    if "mixout" in base_params:
        raise ValueError("mixout: θ₀ has a top-level 'mixout' entry, which δ uses for its own leaves")
    targets = target_paths(base_params, cfg)
    return {"p": jnp.asarray(cfg["p"], jnp.float32),
            "targets": tree.unflatten({p: jnp.ones([], jnp.bool_) for p in targets})}


def mix(w: jax.Array, u: jax.Array, p: jax.Array, keep: jax.Array) -> jax.Array:
    """(keep ⊙ w + (1 − keep) ⊙ u − p·u) / (1 − p); keep: bool, True = the trained entry stays (prob 1 − p)."""
    m = keep.astype(w.dtype)
    return (m * w + (1.0 - m) * u - p * u) / (1.0 - p)


def apply(base_params: Mapping[str, Any], delta: Mapping[str, Any], rng: jax.Array | None = None,
          train: bool = False) -> dict[str, Any]:
    params = {k: v for k, v in delta.items() if k != "mixout"}
    if not train or rng is None:
        return {"params": params}
    p = jax.lax.stop_gradient(delta["mixout"]["p"])
    base, targets = tree.flatten(base_params), set(tree.flatten(delta["mixout"]["targets"]))
    out = {}
    for i, (path, w) in enumerate(tree.flatten(params).items()):  # sorted paths: a fixed key per leaf
        if path in targets:
            keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1.0 - p, w.shape)
            w = mix(w, jax.lax.stop_gradient(base[path]).astype(w.dtype), p, keep)
        out[path] = w
    return {"params": tree.unflatten(out)}


def trainable(delta: Mapping[str, Any]) -> Any:
    """The copy of θ₀ is trained; p and the target flags are fixed."""
    return {k: jax.tree_util.tree_map(lambda _, k=k: k != "mixout", v) for k, v in delta.items()}


def to_disk(delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """θ = δ's copy, as full fine-tuning stores it; p and the targets come back from the config."""
    return full.to_disk({k: v for k, v in delta.items() if k != "mixout"})


def from_disk(arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    return {**full.from_disk(arrays, base_params, {}), "mixout": _fixed(base_params, config)}


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    _cfg(config)
    return full.num_trainable(base_params, {})
