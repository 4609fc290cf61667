"""BitFit: train only the bias terms (and the task head); θ = θ₀ with the biases overwritten by δ.

Paper: Ben Zaken, Ravfogel & Goldberg 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models". A thin preset of `subset`.
Config keys:
  variant     'all' — every bias (`.*/bias`, LayerNorm biases included, as in the paper's BERT runs);
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


def _cfg(config):
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}
    if set(cfg) != set(DEFAULTS):
        raise ValueError(f"bitfit: unknown config keys {sorted(set(cfg) - set(DEFAULTS))}")
    preset = {"all": "bitfit", "qm": "bitfit_qm"}.get(cfg["variant"])
    if preset is None:
        raise ValueError(f"bitfit: variant must be 'all' or 'qm', got {cfg['variant']!r}")
    return {**subset.DEFAULTS, "preset": preset, "train_head": cfg["train_head"]}


def init(rng, base_params, config):
    return subset.init(rng, base_params, _cfg(config))


def from_disk(arrays, base_params, config):
    return subset.from_disk(arrays, base_params, _cfg(config))


def num_trainable(base_params, config):
    return subset.num_trainable(base_params, _cfg(config))
