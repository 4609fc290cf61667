"""Last layer: fine-tune only the top encoder/decoder layer (and the task head).

The classic "fine-tune the top layer" baseline (e.g. Lee et al. 2019, "What Would Elsa Do? Freezing Layers
During Transformer Fine-Tuning"); a thin preset of `subset` (preset 'lastlayer').
Config keys: train_head (also train `head/...`, default True).
Trainable parameters: |top layer| (+ |head|); for BERT: 4H² + 2HI + 9H + I per layer (+ |head|).
"""

from __future__ import annotations

from typing import Any

from ftlab.deltas import subset
from ftlab.deltas.subset import apply, to_disk, trainable  # noqa: F401  (same transform)

DEFAULTS: dict[str, Any] = {"train_head": True}


def _cfg(config):
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}
    if set(cfg) != set(DEFAULTS):
        raise ValueError(f"lastlayer: unknown config keys {sorted(set(cfg) - set(DEFAULTS))}")
    return {**subset.DEFAULTS, "preset": "lastlayer", **cfg}


def init(rng, base_params, config):
    return subset.init(rng, base_params, _cfg(config))


def from_disk(arrays, base_params, config):
    return subset.from_disk(arrays, base_params, _cfg(config))


def num_trainable(base_params, config):
    return subset.num_trainable(base_params, _cfg(config))
