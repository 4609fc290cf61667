"""DID — Direct Intrinsic Dimension (Aghajanyan et al. 2021; Li et al. 2018): θ = θ₀ + P·θ_d, one global θ_d.

A thin preset of `fastfood` (read it for the projection, its normalisation and δ's layout) with `said=False`.
Config keys: d, seed, targets, train_head (see fastfood.py).
Trainable parameters: d + |head| (the head only when train_head).
"""

from __future__ import annotations

from typing import Any

from ftlab.deltas import fastfood
from ftlab.deltas.fastfood import apply, to_disk, trainable  # noqa: F401  (same transform)

DEFAULTS: dict[str, Any] = {k: v for k, v in fastfood.DEFAULTS.items() if k != "said"}


def _cfg(config):
    return {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}, "said": False}


def init(rng, base_params, config):
    return fastfood.init(rng, base_params, _cfg(config))


def from_disk(arrays, base_params, config):
    return fastfood.from_disk(arrays, base_params, _cfg(config))


def num_trainable(base_params, config):
    return fastfood.num_trainable(base_params, _cfg(config))
