"""Houlsby adapters: `ftlab.deltas.adapters` with placement 'houlsby'.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP": adapters after the attention
output projection and after the FFN output, before the residual + LayerNorm (AdapterHub defaults: reduction
factor 16, swish).
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
    k: v for k, v in {**adapters.DEFAULTS, "non_linearity": "swish"}.items() if k != "placement"
}


def _full(config: Mapping[str, Any]) -> dict[str, Any]:
    return {**dict(config), "placement": "houlsby"}


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
