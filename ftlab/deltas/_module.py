"""What every module delta (LoRA, adapters, prefix, prompt, IA³) shares: the layout of δ and the contract glue.

δ is one nested dict with three kinds of entries, told apart by the first path component:

    delta/<module path>/<leaf>   read by the model at that module (e.g. delta/backbone/encoder/layer/0/
                                 attention/self/query/lora_a); the path mirrors the module's params path,
                                 so a leaf's sharding can be inherited from the base leaf next to it
    head/..., backbone/...       trained copies of base leaves (the task head when `train_head`, plus the
                                 leaves matched by `modules_to_save` regexes), applied by overriding θ₀
    frozen/delta/<module path>   module-delta leaves held fixed (e.g. a MAD-X language adapter under a task
                                 adapter); not stored by `to_disk`, re-read from the config's path by
                                 `from_disk`

Leaves named in FIXED_LEAVES (scales, dropout rates, activation codes, row indices) are never trained.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas import override_params

FIXED_LEAVES = ("lora_scale", "lora_dropout", "lora_index", "act")

# Per-family module paths (regexes over "/"-joined module paths, the params path minus the leaf name).
LAYER_PREFIX = {
    "bert": r"backbone/encoder/layer/\d+",
    "llama": r"backbone/layers/\d+",
    "gpt2": r"backbone/h/\d+",
    "t5": r"backbone/(?:encoder|decoder)/block/\d+",
}


def family(base_params: Mapping[str, Any]) -> str:
    """'bert' | 'llama' | 'gpt2' | 't5' from the parameter tree's layer container."""
    bb = base_params.get("backbone", {})
    if "shared" in bb and "decoder" in bb:  # T5 also has an `encoder`: test it first
        return "t5"
    for fam, key in (("bert", "encoder"), ("llama", "layers"), ("gpt2", "h")):
        if key in bb:
            return fam
    raise ValueError("base parameters have no backbone/encoder, backbone/layers or backbone/h")


def num_layers(base_params: Mapping[str, Any]) -> int:
    bb = base_params["backbone"]
    fam = family(base_params)
    if fam == "t5":
        raise ValueError("num_layers: a T5 model has an encoder and a decoder stack; this method needs one stack "
                         "(bert, llama or gpt2)")
    stack = bb["encoder"]["layer"] if fam == "bert" else bb["layers" if fam == "llama" else "h"]
    return len(stack)


def module_paths(base_params: Mapping[str, Any], leaf: str) -> list[str]:
    """Paths of the modules owning a leaf called `leaf` ('kernel' = Dense, 'embedding' = Embed)."""
    return [p[: -len(leaf) - 1] for p in tree.flatten(base_params) if p.endswith("/" + leaf)]


def match_modules(paths: Sequence[str], patterns: str | Sequence[str], what: str) -> list[str]:
    """Paths fullmatching any pattern; a pattern that matches none of `paths` is an error."""
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    out = []
    for pat in pats:
        rx = re.compile(pat)
        hit = [p for p in paths if rx.fullmatch(p)]
        if not hit:
            raise ValueError(f"{what}: pattern {pat!r} matches no module (e.g. {sorted(paths)[:3]})")
        out += hit
    return sorted(set(out))


def saved_paths(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Base leaves trained directly: the head (train_head) and the `modules_to_save` regexes."""
    pats = list(config.get("modules_to_save", ()))
    if config.get("train_head", True):
        pats.append(r"head/.*")
    flat = tree.flatten(base_params)
    out: set[str] = set()
    for pat in pats:
        rx = re.compile(pat)
        hit = [p for p in flat if rx.fullmatch(p)]
        if not hit and pat != r"head/.*":
            raise ValueError(f"modules_to_save: pattern {pat!r} matches no parameter")
        out.update(hit)
    return sorted(out)


def copy_saved(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    flat = tree.flatten(base_params)
    # Real copies: δ is donated and updated in place by the step, θ₀ must stay untouched.
    return {p: jnp.array(flat[p], copy=True) for p in saved_paths(base_params, config)}


def num_saved(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    flat = tree.flatten(base_params)
    return int(sum(np.prod(np.shape(flat[p])) for p in saved_paths(base_params, config)))


def build(
    module_leaves: Mapping[str, Any], saved: Mapping[str, Any], frozen: Mapping[str, Any] | None = None
):
    """δ from {module path/leaf: array}, {params path: array} and optional fixed module leaves."""
    flat = {f"delta/{p}": x for p, x in module_leaves.items()}
    flat.update(saved)
    for p, x in (frozen or {}).items():
        flat[f"frozen/delta/{p}"] = x
    return tree.unflatten(flat)


def apply(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """{'params': θ₀ with saved leaves overridden, 'delta': the module-delta collection}."""
    saved = {k: v for k, v in delta.items() if k not in ("delta", "frozen")}
    col = delta.get("delta", {})
    if "frozen" in delta:
        col = tree.merge(col, delta["frozen"]["delta"])
    return {"params": override_params(base_params, saved), "delta": col}


def trainable(delta: Mapping[str, Any]) -> Any:
    return tree.map_with_path(
        lambda p, _: not (p.startswith("frozen/") or p.rsplit("/", 1)[-1] in FIXED_LEAVES), delta
    )


def to_disk(delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {p: np.asarray(x) for p, x in tree.flatten(delta).items() if not p.startswith("frozen/")}


def from_disk(
    module: ModuleType,
    arrays: Mapping[str, np.ndarray],
    base_params: Mapping[str, Any],
    config: Mapping[str, Any],
) -> Any:
    """Inverse of `to_disk`, checked against the shapes `module.init` gives for this base and config."""
    want = tree.flatten(jax.eval_shape(lambda: module.init(jax.random.key(0), base_params, config)))
    stored = {p: s for p, s in want.items() if not p.startswith("frozen/")}
    if set(arrays) != set(stored):
        raise ValueError(
            f"stored delta paths differ from the config's: {sorted(set(arrays) ^ set(stored))[:10]}"
        )
    flat = {}
    for p, s in stored.items():
        x = np.asarray(arrays[p])
        if s.shape == () and x.shape == (1,):  # scalars (scales, codes) may come back from a file as [1]
            x = x.reshape(())
        if tuple(x.shape) != tuple(s.shape):
            raise ValueError(f"stored delta leaf {p!r} has shape {x.shape}, the config gives {s.shape}")
        flat[p] = jnp.asarray(x, s.dtype)
    if len(stored) != len(want):  # fixed stacked leaves come from where the config points
        fixed = module.init(jax.random.key(0), base_params, config)
        flat.update({p: x for p, x in tree.flatten(fixed).items() if p.startswith("frozen/")})
    return tree.unflatten(flat)


def module_delta(delta: Mapping[str, Any]) -> dict[str, Any]:
    """{module path/leaf: array} of δ's own (non-frozen) module leaves."""
    return tree.flatten(delta.get("delta", {}))
