"""Layer subsets: train a regex-selected subset of θ₀'s leaves (BitFit, last layer, top-k, LayerNorm, ...).

δ is a copy of the selected leaves; apply(θ₀, δ) overwrites them: θ = θ₀ with θ[p] = δ[p] for p in δ.
Presets (config `preset`):
  - 'bitfit'     all biases (Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning")
  - 'bitfit_qm'  BitFit's query-bias + second-MLP-bias subset (same paper, Table 2 "b_q, b_m2")
  - 'lastlayer'  the top encoder/decoder layer
  - 'topk'       the top `k` layers
  - 'layernorm'  LayerNorm / RMSNorm parameters only
  - 'none'       nothing but `extra` patterns (with train_head: feature extraction)
plus `extra`: more path regexes, and `train_head` (default True): every leaf under `head/` is in δ.
Trainable parameters: Σ_{p selected} |θ₀[p]| (exact, see `num_trainable`).

Config keys: preset, k, extra, train_head.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import override_params

DEFAULTS: dict[str, Any] = {"preset": "none", "k": 1, "extra": (), "train_head": True}

# Layer containers of each model family: the index after these is the layer number.
_LAYER_RX = re.compile(r"^backbone/(?:encoder/layer|layers|h)/(\d+)/")
_BIAS = r".*/bias"
_NORM = r".*(?:LayerNorm|layer_norm|layernorm|_norm|norm|ln_\d|ln_f)[^/]*/(?:scale|bias)"


def num_layers(base_params: Mapping[str, Any]) -> int:
    idx = {int(m.group(1)) for p in tree.flatten(base_params) if (m := _LAYER_RX.match(p))}
    if not idx:
        raise ValueError("no layer stack found under backbone/ (expected encoder/layer/i, layers/i or h/i)")
    return max(idx) + 1


def patterns(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    preset = config["preset"]
    if preset == "bitfit":
        pats = [_BIAS]
    elif preset == "bitfit_qm":
        pats = [r".*/attention/self/query/bias", r".*/intermediate/dense/bias",  # BERT names
                r".*/self_attn/q_proj/bias", r".*/mlp/up_proj/bias"]
    elif preset in ("lastlayer", "topk"):
        k = 1 if preset == "lastlayer" else int(config["k"])
        n = num_layers(base_params)
        if not 1 <= k <= n:
            raise ValueError(f"subset: k={k} must be between 1 and the number of layers ({n})")
        layers = "|".join(str(i) for i in range(n - k, n))
        pats = [rf"backbone/(?:encoder/layer|layers|h)/(?:{layers})/.*"]
    elif preset == "layernorm":
        pats = [_NORM]
    elif preset == "none":
        pats = []
    else:
        raise ValueError(f"subset: unknown preset {preset!r} "
                         "(bitfit, bitfit_qm, lastlayer, topk, layernorm, none)")
    pats += list(config["extra"])
    if config["train_head"]:
        pats.append(r"head/.*")
    return pats


def selected_paths(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    rxs = [re.compile(p) for p in patterns(base_params, config)]
    paths = [p for p in tree.flatten(base_params) if any(r.fullmatch(p) for r in rxs)]
    if not paths:
        raise ValueError(f"subset: patterns {[r.pattern for r in rxs]} select no parameter")
    return paths


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    del rng
    flat = tree.flatten(base_params)
    # A real copy: δ is donated and updated in place by the step, θ₀ must stay untouched.
    return tree.unflatten({p: jnp.array(flat[p], copy=True) for p in selected_paths(base_params, config)})


def apply(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    return {"params": override_params(base_params, delta)}


def trainable(delta: Mapping[str, Any]) -> Any:
    return jax.tree_util.tree_map(lambda _: True, delta)


def to_disk(delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {p: np.asarray(x) for p, x in tree.flatten(delta).items()}


def from_disk(arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    expected = set(selected_paths(base_params, config))
    if set(arrays) != expected:
        raise ValueError(f"stored delta paths differ from the config's selection: {sorted(set(arrays) ^ expected)[:10]}")
    return tree.unflatten({p: jnp.asarray(x) for p, x in arrays.items()})


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    flat = tree.flatten(base_params)
    return int(sum(np.prod(np.shape(flat[p])) for p in selected_paths(base_params, config)))
