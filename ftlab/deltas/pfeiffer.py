"""Pfeiffer adapters: `ftlab.deltas.adapters` with placement 'pfeiffer'.

Pfeiffer et al. 2020, "AdapterFusion" / "MAD-X": one adapter after the FFN block (BERT: after its
Add & Norm, followed by a second Add & Norm with the same LayerNorm, as AdapterHub; AdapterHub defaults:
reduction factor 16, relu). Stack a task adapter on a language adapter with `slot` / `stack_on`.
Config keys, trainable-parameter formula and initialisation: see ftlab.deltas.adapters (every key but
`placement`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ftlab.deltas import adapters

DEFAULTS: dict[str, Any] = {
    k: v for k, v in {**adapters.DEFAULTS, "non_linearity": "relu"}.items() if k != "placement"
}


def _full(config: Mapping[str, Any]) -> dict[str, Any]:
    return {**dict(config), "placement": "pfeiffer"}


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    return adapters.init(rng, base_params, _full(config))


apply = adapters.apply
trainable = adapters.trainable
to_disk = adapters.to_disk


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    return adapters.from_disk(arrays, base_params, _full(config))


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    return adapters.num_trainable(base_params, _full(config))
