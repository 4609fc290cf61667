"""Top k layers: fine-tune only the top k encoder/decoder layers (and the task head).

Lee et al. 2019, "What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning"; a thin preset of
`subset` (preset 'topk').
Config keys: k (number of top layers, default 1), train_head (also train `head/...`, default True).
Trainable parameters: Σ |layer i| over the top k layers (+ |head|).
"""

from __future__ import annotations

from typing import Any

from ftlab.deltas import subset
from ftlab.deltas.subset import apply, to_disk, trainable  # noqa: F401  (same transform)

DEFAULTS: dict[str, Any] = {"k": 1, "train_head": True}


def _cfg(config):
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}
    if set(cfg) != set(DEFAULTS):
        raise ValueError(f"topk: unknown config keys {sorted(set(cfg) - set(DEFAULTS))}")
    return {**subset.DEFAULTS, "preset": "topk", **cfg}


def init(rng, base_params, config):
    return subset.init(rng, base_params, _cfg(config))


def from_disk(arrays, base_params, config):
    return subset.from_disk(arrays, base_params, _cfg(config))


def num_trainable(base_params, config):
    return subset.num_trainable(base_params, _cfg(config))
