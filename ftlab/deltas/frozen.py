"""Feature extraction: the pre-trained backbone is frozen, only the task head (`head/...`) is trained.

δ = the head's leaves; θ = θ₀ with the head replaced. Trainable parameters: |θ₀[head/...]|
(e.g. D·C + C for a linear classifier on D-dim features with C classes).
Config keys: none.
"""

from __future__ import annotations

from typing import Any

from ftlab.deltas import subset
from ftlab.deltas.subset import apply, to_disk, trainable  # noqa: F401  (same transform)

DEFAULTS: dict[str, Any] = {}


def _cfg(config):
    return {**subset.DEFAULTS, "preset": "none", "train_head": True}


def init(rng, base_params, config):
    return subset.init(rng, base_params, _cfg(config))


def from_disk(arrays, base_params, config):
    return subset.from_disk(arrays, base_params, _cfg(config))


def num_trainable(base_params, config):
    return subset.num_trainable(base_params, _cfg(config))
