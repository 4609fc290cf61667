"""Re-initialise the top k layers (and the pooler), then fine-tune (Zhang et al. 2021).

Paper: Zhang, Wu, Katiyar, Weinberger & Artzi 2021, "Revisiting Few-sample BERT Fine-tuning" (Sec. 5: the top
layers' pre-trained weights hurt few-sample fine-tuning; re-initialising them, and the pooler, helps).
Fresh values use the model's own initialisers (as `ftlab.models.initializer_for` and HF's `_init_weights`):
kernels and embeddings ~ N(0, initializer_range), biases 0, LayerNorm/RMSNorm scale 1. Each leaf's key is
fold_in(rng, crc32(path)), so a leaf's fresh value does not depend on which other leaves are re-initialised.

δ is a copy of θ₀ in which the selected leaves are replaced by fresh values; θ = θ₀ overwritten by δ.
With train_rest (default) δ holds every leaf (re-init + full fine-tuning, Zhang et al.'s recipe); without it
δ holds only the re-initialised leaves and the head (to compose with another delta, e.g. a layer subset).
NOT the identity at init: apply(θ₀, init(θ₀)) differs from θ₀ on the re-initialised leaves by design.

Config keys:
  k                  number of top layers re-initialised (1 ≤ k ≤ number of layers)
  pooler             also re-initialise the pooler (`backbone/pooler/...`; an error if the model has none)
  initializer_range  std of the normal initialiser (BERT: 0.02; read your model config's value)
  train_rest         δ also holds (and trains) every other leaf
  train_head         with train_rest=False: δ also holds the head (`head/...`)
Trainable parameters: |θ₀| with train_rest; else Σ |θ₀[p]| over the re-initialised leaves (+ |head|).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import subset
from ftlab.deltas.subset import apply, to_disk, trainable  # noqa: F401  (same transform: overwrite leaves)

DEFAULTS: dict[str, Any] = {
    "k": 1,
    "pooler": True,
    "initializer_range": 0.02,
    "train_rest": True,
    "train_head": True,
}
_POOLER = r"backbone/pooler/.*"


def _cfg(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(DEFAULTS) - {"method"}
    if unknown:
        raise ValueError(
            f"reinit: unknown config keys {sorted(unknown)} (valid: {', '.join(sorted(DEFAULTS))})"
        )
    return {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}


def reinit_paths(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The leaves given fresh values: every leaf of the top k layers (+ the pooler)."""
    cfg = _cfg(config)
    pats = subset.patterns(
        base_params, {**subset.DEFAULTS, "preset": "topk", "k": cfg["k"], "train_head": False}
    )
    paths = list(tree.flatten(base_params))
    out = [p for p in paths if any(re.fullmatch(r, p) for r in pats)]
    if cfg["pooler"]:
        pooler = [p for p in paths if re.fullmatch(_POOLER, p)]
        if not pooler:
            raise ValueError(
                "reinit: pooler=True but the model has no backbone/pooler/ (set delta.pooler=False)"
            )
        out += pooler
    return out


def fresh_value(path: str, shape: tuple[int, ...], initializer_range: float, rng: jax.Array) -> jax.Array:
    leaf = path.rsplit("/", 1)[-1]
    if leaf in ("kernel", "embedding"):
        return initializer_range * jax.random.normal(rng, shape, jnp.float32)
    if leaf == "bias":
        return jnp.zeros(shape, jnp.float32)
    if leaf == "scale":
        return jnp.ones(shape, jnp.float32)
    raise ValueError(f"reinit: no initialiser for leaf {path!r}")


def _kept(base_params, cfg) -> list[str]:
    flat = tree.flatten(base_params)
    fresh = set(reinit_paths(base_params, cfg))
    if cfg["train_rest"]:
        return list(flat)
    return [p for p in flat if p in fresh or (cfg["train_head"] and p.startswith("head/"))]


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    cfg = _cfg(config)
    flat = tree.flatten(base_params)
    fresh = set(reinit_paths(base_params, cfg))
    out = {}
    for p in _kept(base_params, cfg):
        if p in fresh:
            key = jax.random.fold_in(rng, zlib.crc32(p.encode()))
            out[p] = fresh_value(p, tuple(np.shape(flat[p])), cfg["initializer_range"], key).astype(
                flat[p].dtype
            )
        else:
            out[p] = jnp.array(flat[p], copy=True)  # a real copy: δ is donated, θ₀ must stay untouched
    return tree.unflatten(out)


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    expected = set(_kept(base_params, _cfg(config)))
    if set(arrays) != expected:
        raise ValueError(
            f"reinit: stored paths differ from the config's δ: {sorted(set(arrays) ^ expected)[:10]}"
        )
    return tree.unflatten({p: jnp.asarray(x) for p, x in arrays.items()})


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    flat = tree.flatten(base_params)
    return int(sum(np.prod(np.shape(flat[p])) for p in _kept(base_params, _cfg(config))))
