"""Full fine-tuning: δ is a copy of every leaf of θ₀ (θ = δ). Trainable parameters: |θ₀|.

Kept in the delta contract so that every method, the baseline included, runs through one code path.
Config keys: none.
"""

from __future__ import annotations

from typing import Any

from ftlab.deltas import subset
from ftlab.deltas.subset import apply, to_disk, trainable  # noqa: F401  (same transform)

DEFAULTS: dict[str, Any] = {}


def _cfg(config):
    return {**subset.DEFAULTS, "extra": (r".*",), "train_head": False}


def init(rng, base_params, config):
    return subset.init(rng, base_params, _cfg(config))


def from_disk(arrays, base_params, config):
    return subset.from_disk(arrays, base_params, _cfg(config))


def num_trainable(base_params, config):
    return subset.num_trainable(base_params, _cfg(config))
