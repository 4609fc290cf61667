"""LayerNorm tuning: train only the normalisation parameters (LayerNorm / RMSNorm scale and bias) and the head.

Zhao et al. 2024, "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning" (and the
LN-only baselines of the adapter literature); a thin preset of `subset` (preset 'layernorm').
Config keys: train_head (also train `head/...`, default True).
Trainable parameters: Σ |θ₀[p]| over norm scales and biases (BERT: 2H per LayerNorm) (+ |head|).
"""

from __future__ import annotations

from typing import Any

from ftlab.deltas import subset
from ftlab.deltas.subset import apply, to_disk, trainable  # noqa: F401  (same transform)

DEFAULTS: dict[str, Any] = {"train_head": True}


def _cfg(config):
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}
    if set(cfg) != set(DEFAULTS):
        raise ValueError(f"layernorm: unknown config keys {sorted(set(cfg) - set(DEFAULTS))}")
    return {**subset.DEFAULTS, "preset": "layernorm", **cfg}


def init(rng, base_params, config):
    return subset.init(rng, base_params, _cfg(config))


def from_disk(arrays, base_params, config):
    return subset.from_disk(arrays, base_params, _cfg(config))


def num_trainable(base_params, config):
    return subset.num_trainable(base_params, _cfg(config))
