"""Prefix tuning: P trained key/value vectors prepended in every attention layer.

Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation". Layer i reads delta
`prefix_key`, `prefix_value` [P, K·Dh] at its attention module (BERT encoder/layer/i/attention/self, Llama
layers/i/self_attn, GPT-2 h/i/attn): every query may attend to the P prefix slots (mask extended with ones),
which are used as given (not rotated by RoPE). This is Hugging Face PEFT's convention, which passes the prefix
as `past_key_values`; as there, the real tokens' position ids start at P. With a KV cache (generation) the
prefix is concatenated in front of the cache at every step, so the cache holds the real tokens only
(`ftlab.models.generate.generate(..., delta=...)`). Not an identity at init.

Re-parameterisation (`projection`, Li & Liang §4.3, PEFT's prefix_projection): training learns an embedding
E [P, K·Dh] and an MLP  E → tanh(E W₁ + b₁) W₂ + b₂ → [P, 2·L·K·Dh]  (layer i: key = slice 2i, value = 2i+1,
PEFT's layout); `to_disk` stores the collapsed per-layer prefixes only, and `from_disk` returns that
collapsed (inference) form.

Config keys:
  num_virtual_tokens  P
  projection          MLP re-parameterisation in training (default False)
  projection_hidden   MLP width H (0 = K·Dh, PEFT's encoder_hidden_size default)
  init_std            std of the normal init of the prefixes / E (1.0 = PEFT's nn.Embedding init)
  train_head, modules_to_save
Trainable parameters: 2·L·P·K·Dh (no projection) or P·K·Dh + K·Dh·H + H + H·2·L·K·Dh + 2·L·K·Dh (projection),
plus |head| + |modules_to_save|. Stored: 2·L·P·K·Dh + |head| + |modules_to_save|.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import _module, override_params

DEFAULTS: dict[str, Any] = {
    "num_virtual_tokens": 20,
    "projection": False,
    "projection_hidden": 0,
    "init_std": 1.0,
    "train_head": True,
    "modules_to_save": (),
}

_SITES = {
    "bert": "backbone/encoder/layer/{}/attention/self",
    "llama": "backbone/layers/{}/self_attn",
    "gpt2": "backbone/h/{}/attn",
}


def site(base_params: Mapping[str, Any], i: int) -> str:
    if _module.family(base_params) == "t5":
        raise ValueError("prefix tuning: ftlab's T5 has no prefix site (supported: bert, llama, gpt2)")
    return _SITES[_module.family(base_params)].format(i)


def kv_width(base_params: Mapping[str, Any]) -> int:
    """K·Dh: the width of one layer's keys."""
    flat = tree.flatten(base_params)
    fam = _module.family(base_params)
    if fam == "bert":
        return flat[site(base_params, 0) + "/key/kernel"].shape[1]
    if fam == "llama":
        return flat[site(base_params, 0) + "/k_proj/kernel"].shape[1]
    return flat[site(base_params, 0) + "/c_attn/kernel"].shape[0]


def _dims(base_params, config):
    kd = kv_width(base_params)
    return (
        int(config["num_virtual_tokens"]),
        _module.num_layers(base_params),
        kd,
        int(config["projection_hidden"]) or kd,
    )


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    p, n_layers, kd, hidden = _dims(base_params, config)
    std = float(config["init_std"])
    saved = _module.copy_saved(base_params, config)
    if not config["projection"]:
        leaves = {}
        for i in range(n_layers):
            k1, k2 = jax.random.split(jax.random.fold_in(rng, i))
            leaves[site(base_params, i) + "/prefix_key"] = std * jax.random.normal(k1, (p, kd), jnp.float32)
            leaves[site(base_params, i) + "/prefix_value"] = std * jax.random.normal(k2, (p, kd), jnp.float32)
        return _module.build(leaves, saved)
    ke, k1, k2, k3, k4 = jax.random.split(rng, 5)

    def torch_linear(key_w, key_b, n_in, n_out):  # nn.Linear's default init: U(±1/√in)
        bound = 1.0 / math.sqrt(n_in)
        return {
            "kernel": jax.random.uniform(key_w, (n_in, n_out), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(key_b, (n_out,), jnp.float32, -bound, bound),
        }

    mlp = {
        "embedding": std * jax.random.normal(ke, (p, kd), jnp.float32),
        "dense_in": torch_linear(k1, k2, kd, hidden),
        "dense_out": torch_linear(k3, k4, hidden, 2 * n_layers * kd),
    }
    return {**_module.build({}, saved), "prefix_mlp": mlp}


def layer_prefixes(delta: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """[(key [P, K·Dh], value [P, K·Dh]) for layer 0..L-1] from either form of δ."""
    if "prefix_mlp" in delta:
        m = delta["prefix_mlp"]
        h = jnp.tanh(m["embedding"] @ m["dense_in"]["kernel"] + m["dense_in"]["bias"])
        out = h @ m["dense_out"]["kernel"] + m["dense_out"]["bias"]  # [P, 2·L·K·Dh]
        p, kd = m["embedding"].shape
        rows = out.reshape(p, -1, kd)
        return [(rows[:, 2 * i], rows[:, 2 * i + 1]) for i in range(rows.shape[1] // 2)]
    flat = _module.module_delta(delta)
    keys = sorted((p for p in flat if p.endswith("/prefix_key")), key=_layer_index)
    return [(flat[k], flat[k[: -len("prefix_key")] + "prefix_value"]) for k in keys]


def _layer_index(path: str) -> int:
    parts = path.split("/")
    return int(next(x for x in parts if x.isdigit()))


def _sites(delta: Mapping[str, Any], base_params: Mapping[str, Any]) -> dict[str, Any]:
    leaves = {}
    for i, (k, v) in enumerate(layer_prefixes(delta)):
        leaves[site(base_params, i) + "/prefix_key"] = k
        leaves[site(base_params, i) + "/prefix_value"] = v
    return leaves


def apply(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    if "prefix_mlp" not in delta:
        return _module.apply(base_params, delta)
    saved = {k: v for k, v in delta.items() if k not in ("delta", "prefix_mlp")}
    col = tree.unflatten(_sites(delta, base_params))
    return {"params": override_params(base_params, saved), "delta": col}


trainable = _module.trainable


def to_disk(delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The collapsed per-layer prefixes (+ trained base leaves): the MLP is training-only."""
    if "prefix_mlp" not in delta:
        return _module.to_disk(delta)
    out = {p: np.asarray(x) for p, x in tree.flatten(delta).items() if not p.startswith("prefix_mlp/")}
    # Without θ₀ the family's site paths are unknown here: layer i is stored as prefix/i/{key,value} and
    # `from_disk` puts it at its site.
    for i, (k, v) in enumerate(layer_prefixes(delta)):
        out[f"prefix/{i}/key"] = np.asarray(k)
        out[f"prefix/{i}/value"] = np.asarray(v)
    return out


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    """δ from `to_disk`'s arrays; a projection δ comes back collapsed (no MLP; same function)."""
    arrays = dict(arrays)
    n_layers = _module.num_layers(base_params)
    for i in range(n_layers):
        if f"prefix/{i}/key" in arrays:
            arrays[f"delta/{site(base_params, i)}/prefix_key"] = arrays.pop(f"prefix/{i}/key")
            arrays[f"delta/{site(base_params, i)}/prefix_value"] = arrays.pop(f"prefix/{i}/value")
    collapsed = {**dict(config), "projection": False}
    return _module.from_disk(sys.modules[__name__], arrays, base_params, collapsed)


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    p, n_layers, kd, hidden = _dims(base_params, config)
    if config["projection"]:
        n = p * kd + kd * hidden + hidden + hidden * 2 * n_layers * kd + 2 * n_layers * kd
    else:
        n = 2 * n_layers * p * kd
    return n + _module.num_saved(base_params, config)
