"""Remove the top k layers, then fine-tune what is left (Sajjad et al. 2020 / 2023).

Paper: Sajjad, Dalvi, Durrani & Nakov, "On the Effect of Dropping Layers of Pre-trained Transformer Models"
(arXiv 2020; Computer Speech & Language 2023): dropping the top layers ("top-layer dropping") keeps most of
the GLUE score at a fraction of the cost.

The model's structure changes: apply(θ₀, δ) returns θ₀ WITHOUT layers n-k … n-1 (the other leaves overwritten
by δ's), so the model must be rebuilt with `model_config_after(model_config, delta_config)` (the layer count
reduced by k) and run with those params; θ₀ and δ keep their usual meaning otherwise. The number of layers
kept is carried in δ as the static shape of a marker, `δ['remove']['kept_layers']`: int8 zeros of shape
[n - k] (fixed, never stored on disk), so that `apply` needs no config and works under jit.
NOT the identity (θ has fewer leaves than θ₀).

Config keys:
  k           number of top layers removed (1 ≤ k < number of layers)
  train_rest  δ holds (and trains) every remaining leaf (Sajjad et al. fine-tune the pruned model fully)
  train_head  with train_rest=False: δ holds the head only (feature extraction from layer n-k)
Trainable parameters: |θ₀| - |top k layers| with train_rest; else |head| (or 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import override_params
from ftlab.deltas.subset import _LAYER_RX, num_layers

DEFAULTS: dict[str, Any] = {"k": 1, "train_rest": True, "train_head": True}


def _cfg(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(DEFAULTS) - {"method"}
    if unknown:
        raise ValueError(
            f"remove: unknown config keys {sorted(unknown)} (valid: {', '.join(sorted(DEFAULTS))})"
        )
    return {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}


def _n_keep(base_params, cfg) -> int:
    n = num_layers(base_params)
    k = int(cfg["k"])
    if not 1 <= k < n:
        raise ValueError(f"remove: k={k} must be between 1 and the number of layers - 1 ({n - 1})")
    return n - k


def _drop(paths, n_keep: int) -> list[str]:
    return [p for p in paths if not ((m := _LAYER_RX.match(p)) and int(m.group(1)) >= n_keep)]


def _kept(base_params, cfg) -> list[str]:
    kept = _drop(tree.flatten(base_params), _n_keep(base_params, cfg))
    if cfg["train_rest"]:
        return kept
    return [p for p in kept if cfg["train_head"] and p.startswith("head/")]


def model_config_after(model_config: Any, delta_config: Mapping[str, Any]) -> Any:
    """The model config with k fewer layers (`num_hidden_layers`, or GPT-2's `n_layer`)."""
    k = int(_cfg(delta_config)["k"])
    for field in ("num_hidden_layers", "n_layer"):
        if hasattr(model_config, field):
            n = getattr(model_config, field)
            if not 1 <= k < n:
                raise ValueError(f"remove: k={k} must be between 1 and {field} - 1 ({n - 1})")
            return dataclasses.replace(model_config, **{field: n - k})
    raise ValueError(f"remove: {type(model_config).__name__} has no num_hidden_layers / n_layer field")


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    del rng
    cfg = _cfg(config)
    flat = tree.flatten(base_params)
    out = {p: jnp.array(flat[p], copy=True) for p in _kept(base_params, cfg)}
    out["remove/kept_layers"] = jnp.zeros((_n_keep(base_params, cfg),), jnp.int8)
    return tree.unflatten(out)


def apply(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    n_keep = delta["remove"]["kept_layers"].shape[0]  # static
    flat = tree.flatten(base_params)
    kept = tree.unflatten({p: flat[p] for p in _drop(flat, n_keep)})
    return {"params": override_params(kept, {k: v for k, v in delta.items() if k != "remove"})}


def trainable(delta: Mapping[str, Any]) -> Any:
    return tree.map_with_path(lambda p, _: not p.startswith("remove/"), delta)


def to_disk(delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {p: np.asarray(x) for p, x in tree.flatten(delta).items() if not p.startswith("remove/")}


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    cfg = _cfg(config)
    expected = set(_kept(base_params, cfg))
    if set(arrays) != expected:
        raise ValueError(
            f"remove: stored paths differ from the config's δ: {sorted(set(arrays) ^ expected)[:10]}"
        )
    out = {p: jnp.asarray(x) for p, x in arrays.items()}
    out["remove/kept_layers"] = jnp.zeros((_n_keep(base_params, cfg),), jnp.int8)
    return tree.unflatten(out)


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    flat = tree.flatten(base_params)
    return int(sum(np.prod(np.shape(flat[p])) for p in _kept(base_params, _cfg(config))))
