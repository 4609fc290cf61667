"""IA³: learned vectors rescaling keys, values and the feed-forward activations.

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning".
For a target Dense with kernel W [in, out]:

    key / value style:   y = (x W + b) ⊙ l_out,   l_out [out]       (delta leaf `ia3_out`)
    feed-forward style:  y = (x ⊙ l_in) W + b,    l_in [in]         (delta leaf `ia3_in`, on the input of the
                                                                    FFN's second projection = the activation)
initialised to ones, so apply(θ₀, init(θ₀)) is exactly θ₀'s function. The default targets are Hugging Face
PEFT's for the family, matched the way PEFT matches its suffixes: BERT key, value and every `output.dense`
(the FFN output *and* the attention output projection, both feed-forward style), Llama k_proj, v_proj and
down_proj (feed-forward), GPT-2 c_attn and mlp/c_proj (feed-forward), T5 k, v (self- and cross-attention)
and DenseReluDense/wo (feed-forward).

Config keys:
  targets         regex or list of regexes over Dense module paths; '' = the family default above
  feedforward     regex(es) of the targets scaled on their input; '' = the family default above
  train_head      train a copy of head/... (default True)
  modules_to_save regexes of further base leaves trained directly

Trainable parameters: Σ_{targets, not feed-forward} out + Σ_{feed-forward targets} in + |head| + |modules_to_save|.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import _module

DEFAULTS: dict[str, Any] = {"targets": "", "feedforward": "", "train_head": True, "modules_to_save": ()}

_L = _module.LAYER_PREFIX
DEFAULT_TARGETS = {
    "bert": [_L["bert"] + r"/attention/self/(?:key|value)", _L["bert"] + r"/(?:attention/)?output/dense"],
    "llama": [_L["llama"] + r"/self_attn/(?:k_proj|v_proj)", _L["llama"] + r"/mlp/down_proj"],
    "gpt2": [_L["gpt2"] + r"/attn/c_attn", _L["gpt2"] + r"/mlp/c_proj"],
    "t5": [_L["t5"] + r"/layer/\d+/(?:SelfAttention|EncDecAttention)/(?:k|v)", _L["t5"] + r"/layer/\d+/DenseReluDense/wo"],
}
DEFAULT_FEEDFORWARD = {
    "bert": _L["bert"] + r"/(?:attention/)?output/dense",
    "llama": _L["llama"] + r"/mlp/down_proj",
    "gpt2": _L["gpt2"] + r"/mlp/c_proj",
    "t5": _L["t5"] + r"/layer/\d+/DenseReluDense/wo",
}


def targets(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """{Dense module path: ('ia3_in' | 'ia3_out', vector length)}."""
    fam = _module.family(base_params)
    flat = tree.flatten(base_params)
    paths = _module.match_modules(
        _module.module_paths(base_params, "kernel"), config["targets"] or DEFAULT_TARGETS[fam], "ia3.targets"
    )
    ff = config["feedforward"] if config["feedforward"] != "" else DEFAULT_FEEDFORWARD[fam]
    ff_rx = [re.compile(p) for p in ([ff] if isinstance(ff, str) else list(ff))]
    out = {}
    for p in paths:
        n_in, n_out = flat[p + "/kernel"].shape
        is_ff = any(r.fullmatch(p) for r in ff_rx)
        out[p] = ("ia3_in", n_in) if is_ff else ("ia3_out", n_out)
    return out


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    del rng
    leaves = {
        f"{p}/{leaf}": jnp.ones((n,), jnp.float32) for p, (leaf, n) in targets(base_params, config).items()
    }
    return _module.build(leaves, _module.copy_saved(base_params, config))


apply = _module.apply
trainable = _module.trainable
to_disk = _module.to_disk


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    return _module.from_disk(sys.modules[__name__], arrays, base_params, config)


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    return sum(n for _, n in targets(base_params, config).values()) + _module.num_saved(base_params, config)


def merge(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Plain params computing the same function: kernel rows (ia3_in) or columns and bias (ia3_out) scaled."""
    flat = tree.flatten(apply(base_params, delta)["params"])
    for p, v in _module.module_delta(delta).items():
        m, leaf = p.rsplit("/", 1)
        if leaf == "ia3_in":
            flat[f"{m}/kernel"] = flat[f"{m}/kernel"] * v[:, None]
        else:
            flat[f"{m}/kernel"] = flat[f"{m}/kernel"] * v[None, :]
            if f"{m}/bias" in flat:
                flat[f"{m}/bias"] = flat[f"{m}/bias"] * v
    return tree.unflatten(flat)
