"""LoRA: low-rank updates of selected linear (and optionally embedding) layers, computed without forming W + BA.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; rsLoRA scaling from Kalajdzievski 2023.
For each target Dense with kernel W [in, out]:

    y = x W + b + s · (dropout(x) A) B,      A [in, r], B [r, out],  s = alpha / r  (alpha / √r with use_rslora)

and for a target Embed with table E [V, D]: y = E[ids] + s · A[ids] B with A [V, r], B [r, D].
Initialised as Hugging Face PEFT does: Dense A ~ kaiming-uniform(a=√5) = U(±1/√in), B = 0; Embed A = 0,
B ~ N(0, 1). So apply(θ₀, init(θ₀)) is exactly θ₀'s function. The dropout acts on the A path's input only, in
training (the model's 'dropout' rng). `merge`/`unmerge` fold s·AB into / out of the kernels for inference.
`stack_loras` + `with_index` serve several tasks' LoRAs in one batch (row b uses delta index[b]).

δ layout (see ftlab.deltas._module): delta/<module>/{lora_a, lora_b, lora_scale[, lora_dropout]} + trained
copies of the head (train_head) and of `modules_to_save` leaves.

Config keys:
  r               rank
  alpha           scaling numerator (s = alpha / r)
  dropout         LoRA dropout on the A path's input (training only)
  targets         regex or list of regexes over module paths (Dense or Embed); '' = the family default
                  (BERT query/value, Llama q_proj/v_proj, GPT-2 c_attn, T5 q/v of self- and cross-attention
                  in both stacks: PEFT's defaults)
  use_rslora      s = alpha / √r
  train_head      train a copy of head/... (default True)
  modules_to_save regexes of further base leaves trained directly

Trainable parameters: Σ_{Dense targets} r·(in + out) + Σ_{Embed targets} r·(V + D) + |head| + |modules_to_save|.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import _module

DEFAULTS: dict[str, Any] = {
    "r": 8,
    "alpha": 16.0,
    "dropout": 0.0,
    "targets": "",
    "use_rslora": False,
    "train_head": True,
    "modules_to_save": (),
}

DEFAULT_TARGETS = {
    "bert": _module.LAYER_PREFIX["bert"] + r"/attention/self/(?:query|value)",
    "llama": _module.LAYER_PREFIX["llama"] + r"/self_attn/(?:q_proj|v_proj)",
    "gpt2": _module.LAYER_PREFIX["gpt2"] + r"/attn/c_attn",
    "t5": _module.LAYER_PREFIX["t5"] + r"/layer/\d+/(?:SelfAttention|EncDecAttention)/(?:q|v)",
}


def scale(config: Mapping[str, Any]) -> float:
    r = int(config["r"])
    return float(config["alpha"]) / (math.sqrt(r) if config["use_rslora"] else r)


def targets(
    base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> dict[str, tuple[str, tuple[int, int]]]:
    """{module path: ('dense' | 'embed', (in, out) | (V, D))} of the targeted modules."""
    pats = config["targets"] or DEFAULT_TARGETS[_module.family(base_params)]
    flat = tree.flatten(base_params)
    dense = {p: ("dense", flat[p + "/kernel"].shape) for p in _module.module_paths(base_params, "kernel")}
    embed = {
        p: ("embed", flat[p + "/embedding"].shape) for p in _module.module_paths(base_params, "embedding")
    }
    kinds = {**dense, **embed}
    return {p: kinds[p] for p in _module.match_modules(list(kinds), pats, "lora.targets")}


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    r = int(config["r"])
    leaves: dict[str, Any] = {}
    for i, (path, (kind, (n_in, n_out))) in enumerate(sorted(targets(base_params, config).items())):
        key = jax.random.fold_in(rng, i)
        if kind == "dense":
            bound = 1.0 / math.sqrt(n_in)  # kaiming_uniform(a=√5) on PEFT's [r, in] weight
            leaves[f"{path}/lora_a"] = jax.random.uniform(key, (n_in, r), jnp.float32, -bound, bound)
            leaves[f"{path}/lora_b"] = jnp.zeros((r, n_out), jnp.float32)
        else:
            leaves[f"{path}/lora_a"] = jnp.zeros((n_in, r), jnp.float32)
            leaves[f"{path}/lora_b"] = jax.random.normal(key, (r, n_out), jnp.float32)
        leaves[f"{path}/lora_scale"] = jnp.asarray(scale(config), jnp.float32)
        if config["dropout"] and kind == "dense":
            leaves[f"{path}/lora_dropout"] = jnp.asarray(config["dropout"], jnp.float32)
    return _module.build(leaves, _module.copy_saved(base_params, config))


apply = _module.apply
trainable = _module.trainable
to_disk = _module.to_disk


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    return _module.from_disk(sys.modules[__name__], arrays, base_params, config)


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    r = int(config["r"])
    n = sum(r * (a + b) for _, (a, b) in targets(base_params, config).values())
    return int(n) + _module.num_saved(base_params, config)


# --------------------------------------------------------------------------------------- merge / unmerge


def _products(delta: Mapping[str, Any]) -> dict[str, Any]:
    """{module path: s · A B} for every LoRA site of δ (single-task δ only)."""
    flat = _module.module_delta(delta)
    out = {}
    for p, a in flat.items():
        if p.endswith("/lora_a"):
            m = p[: -len("/lora_a")]
            if a.ndim != 2:
                raise ValueError("merge/unmerge need a single-task LoRA δ, not a stacked one")
            s = flat.get(f"{m}/lora_scale", 1.0)
            out[m] = jnp.asarray(s, jnp.float32) * (a @ flat[f"{m}/lora_b"])
    return out


def merge(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Plain params (no `delta` collection) computing the same function: W' = W + s·AB, head overridden."""
    flat = tree.flatten(apply(base_params, delta)["params"])
    for m, prod in _products(delta).items():
        leaf = f"{m}/kernel" if f"{m}/kernel" in flat else f"{m}/embedding"
        flat[leaf] = flat[leaf] + prod
    return tree.unflatten(flat)


def unmerge(params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """θ₀'s low-rank-targeted leaves back from merged params: W = W' − s·AB (up to float rounding).

    The head and `modules_to_save` leaves stay as in `params` (δ holds their trained values, not θ₀'s)."""
    flat = tree.flatten(params)
    for m, prod in _products(delta).items():
        leaf = f"{m}/kernel" if f"{m}/kernel" in flat else f"{m}/embedding"
        flat[leaf] = flat[leaf] - prod
    return tree.unflatten(flat)


# --------------------------------------------------------------------------------- many tasks, one batch


def stack_loras(deltas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One δ serving N tasks: lora_a [N, in, r], lora_b [N, r, out], lora_scale [N] at every site.

    All δs must target the same modules with the same rank (alpha may differ) and carry identical non-LoRA
    leaves (e.g. train_head=False, or one shared head). Dropout is dropped (serving is inference). Set the
    per-row task index with `with_index` before applying.
    """
    if not deltas:
        raise ValueError("stack_loras needs at least one delta")
    flats = [tree.flatten(d) for d in deltas]
    keys = [sorted(p for p in f if not p.endswith("/lora_dropout")) for f in flats]
    if any(k != keys[0] for k in keys):
        raise ValueError("stack_loras: the deltas target different modules (or carry different leaves)")
    out = {}
    for p in keys[0]:
        xs = [f[p] for f in flats]
        if p.startswith("delta/"):
            if any(np.shape(x) != np.shape(xs[0]) for x in xs):
                raise ValueError(f"stack_loras: {p} differs in shape across deltas (same rank needed)")
            out[p] = jnp.stack([jnp.asarray(x) for x in xs])
        else:
            if any(not np.array_equal(np.asarray(x), np.asarray(xs[0])) for x in xs):
                raise ValueError(
                    f"stack_loras: {p} differs across deltas; one batch can use only one head "
                    "(train the tasks with train_head=False or serve the heads separately)"
                )
            out[p] = xs[0]
    return tree.unflatten(out)


def with_index(stacked: Mapping[str, Any], index: Any) -> dict[str, Any]:
    """The stacked δ with `lora_index` [B] (row b uses task index[b]) at every LoRA site."""
    flat = tree.flatten(stacked)
    idx = jnp.asarray(index, jnp.int32)
    for p in [p for p in flat if p.endswith("/lora_a")]:
        flat[p[: -len("lora_a")] + "lora_index"] = idx
    return tree.unflatten(flat)
