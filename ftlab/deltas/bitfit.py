"""BitFit: train only the bias terms (and the task head); θ = θ₀ with the biases overwritten by δ.

Paper: Ben Zaken, Ravfogel & Goldberg 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models". A thin preset of `subset`.
Config keys:
  variant     'all' — every backbone bias (`backbone/.*/bias`, LayerNorm biases included, as in the paper);
              'qm'  — the paper's query-bias + second-MLP-bias subset (b_q, b_m2: attention/self/query/bias and
                      intermediate/dense/bias in BERT names; q_proj/up_proj biases in Llama names)
  train_head  also train the task head (`head/...`, default True; the paper trains the classifier)
Trainable parameters: Σ |θ₀[p]| over the selected biases (+ |head|); for BERT 'all' per layer:
  3H (q, k, v) + H (attention output) + I (intermediate) + H (output) + 4H (two LayerNorms) = 9H + I.
"""

from __future__ import annotations

from typing import Any

from ftlab.deltas import subset
from ftlab.deltas.subset import apply, to_disk, trainable  # noqa: F401  (same transform)

DEFAULTS: dict[str, Any] = {"variant": "all", "train_head": True}


# Backbone biases only (subset's 'bitfit' preset regex `.*/bias` also catches the head's bias, so that
# train_head=False would still train part of the head).
_PATTERNS = {
    "all": (r"backbone/.*/bias",),
    "qm": (
        r"backbone/.*/attention/self/query/bias",  # BERT names: b_q
        r"backbone/.*/intermediate/dense/bias",  # b_m2 (the first FFN projection)
        r"backbone/.*/self_attn/q_proj/bias",  # Llama names
        r"backbone/.*/mlp/up_proj/bias",
    ),
}


def _cfg(config):
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}
    if set(cfg) != set(DEFAULTS):
        raise ValueError(f"bitfit: unknown config keys {sorted(set(cfg) - set(DEFAULTS))}")
    if cfg["variant"] not in _PATTERNS:
        raise ValueError(f"bitfit: variant must be 'all' or 'qm', got {cfg['variant']!r}")
    return {
        **subset.DEFAULTS,
        "preset": "none",
        "extra": _PATTERNS[cfg["variant"]],
        "train_head": cfg["train_head"],
    }


def init(rng, base_params, config):
    return subset.init(rng, base_params, _cfg(config))


def from_disk(arrays, base_params, config):
    return subset.from_disk(arrays, base_params, _cfg(config))


def num_trainable(base_params, config):
    return subset.num_trainable(base_params, _cfg(config))
