"""Structured pruning during fine-tuning: whole attention heads and FFN units masked to a shrinking keep fraction.

Papers: Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?" (head pruning); Sanh, Wolf & Rush
2020, "Movement Pruning" (movement scores; their code's head/row variants); cubic schedule: Zhu & Gupta 2017.
The unstructured variant is `ftlab/deltas/prune.py`; this one removes units, so the pruned model is a smaller
dense model: HF's BertModel with those heads and units cut out (transformers' `prune_linear_layer`) gives the
same outputs as the masked model and as the stored δ (tests/test_prune_units.py).

Units of encoder layer l (BERT naming, `backbone/encoder/layer/<l>/...`, hidden size H, d = H / num_heads):
  head h   columns h·d … h·d+d−1 of attention/self/{query,key,value}/kernel and their biases, and the same rows
           of attention/output/dense/kernel
  FFN j    column j of intermediate/dense/kernel and its bias, row j of output/dense/kernel
δ (training form) = a copy of every leaf of θ₀ (all trainable, as `full`) plus, under `prune_units/`:
  scores/heads [L, num_heads], scores/ffn [L, I]   trainable (movement; init 0), absent for magnitude
  hp/...        keep_heads, keep_ffn, warmup_fraction, cooldown_fraction (float32), fixed
  layout/<units>/<budget>/<criterion>/<l>   int32 scalar l, fixed: the mode in δ's structure (static under jit),
                <units> = e.g. 'heads:12+ffn:1536' (each unit kind with its count per layer)
θ = W ⊙ expand(M) on the unit tensors above; every other leaf θ = δ. Unit score: 'magnitude' = Σ|W| over the
unit's entries (of the current δ, no gradient); 'movement' = S with the straight-through estimator
M_ste = S + stop_gradient(M − S), so dL/dS_u = Σ over the unit's entries of dL/dθ ⊙ W. M keeps the top
round(v_t · n) units per layer (`budget` 'per_layer') or over all layers ('global'), v_t the cubic schedule of
prune.py (1 before warmup, keep_* after the cool-down starts); ties at the threshold are all kept (S = 0 at
init: identity). Units are few (MiniLM: 72 heads, 9,216 FFN units), so the threshold is an exact sort.
`apply(θ₀, δ)` without a step (evaluation, export) uses the final keep.
Stored δ (`to_disk`): the dense non-unit leaves, and per layer the kept units' indices
(`prune_units/kept/{heads,ffn}/<l>`, int32) and the unit tensors sliced to them (`prune_units/sliced/<p>`): the
weights of the smaller dense model. `from_disk` gives that mask-free form; its apply scatters the slices back
(STORED_FORM_DIFFERS).

Config keys:
  units              'heads', 'ffn' or 'heads,ffn'
  criterion          'magnitude' | 'movement'
  keep_heads         final kept fraction of the heads (per layer or overall)
  keep_ffn           final kept fraction of the FFN units
  budget             'per_layer' | 'global'
  num_heads          attention heads per layer; 0 = the model's (filled in by the training loop)
  warmup_fraction    fraction of the steps before pruning starts
  cooldown_fraction  fraction of the steps at the end trained at the final keep
Trainable parameters: |θ₀| (magnitude); |θ₀| + L·num_heads (heads) + L·I (ffn) (movement).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import tree
from ftlab.deltas.prune import keep_fraction

SCHEDULED = True
STORED_FORM_DIFFERS = True

DEFAULTS: dict[str, Any] = {
    "units": "heads,ffn",
    "criterion": "movement",
    "keep_heads": 0.5,
    "keep_ffn": 0.5,
    "budget": "per_layer",
    "num_heads": 0,
    "warmup_fraction": 0.1,
    "cooldown_fraction": 0.2,
}
CRITERIA = ("magnitude", "movement")
BUDGETS = ("per_layer", "global")
LAYER = "backbone/encoder/layer/{l}/"
# unit -> [(path suffix, axis of the unit's entries counted from the end: -1 columns / bias, -2 rows)]
TENSORS = {
    "heads": [("attention/self/query/kernel", -1), ("attention/self/query/bias", -1),
              ("attention/self/key/kernel", -1), ("attention/self/key/bias", -1),
              ("attention/self/value/kernel", -1), ("attention/self/value/bias", -1),
              ("attention/output/dense/kernel", -2)],
    "ffn": [("intermediate/dense/kernel", -1), ("intermediate/dense/bias", -1), ("output/dense/kernel", -2)],
}
_HP = ("keep_heads", "keep_ffn", "warmup_fraction", "cooldown_fraction")


def _units(spec: str) -> tuple[str, ...]:
    got = tuple(u.strip() for u in str(spec).split(",") if u.strip())
    if not got or any(u not in TENSORS for u in got) or len(set(got)) != len(got):
        raise ValueError(f"prune_units: units must be 'heads', 'ffn' or 'heads,ffn', got {spec!r}")
    return tuple(u for u in TENSORS if u in got)


def _cfg(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(DEFAULTS) - {"method"}
    if unknown:
        raise ValueError(f"prune_units: unknown config keys {sorted(unknown)} (valid: {', '.join(sorted(DEFAULTS))})")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k != "method"}}
    cfg["units"] = ",".join(_units(cfg["units"]))
    if cfg["criterion"] not in CRITERIA:
        raise ValueError(f"prune_units: criterion must be one of {CRITERIA}, got {cfg['criterion']!r}")
    if cfg["budget"] not in BUDGETS:
        raise ValueError(f"prune_units: budget must be one of {BUDGETS}, got {cfg['budget']!r}")
    for k in ("keep_heads", "keep_ffn"):
        if not 0 < cfg[k] <= 1:
            raise ValueError(f"prune_units: {k} must be in (0, 1], got {cfg[k]}")
    w, c = cfg["warmup_fraction"], cfg["cooldown_fraction"]
    if not (0 <= w and 0 <= c and w + c < 1):
        raise ValueError(f"prune_units: need 0 <= warmup_fraction, cooldown_fraction and their sum < 1, got {w}, {c}")
    return cfg


def config_from_model(config: Mapping[str, Any], model_config: Any) -> dict[str, Any]:
    """`num_heads` 0 -> the model's num_attention_heads (the training loop calls this before init)."""
    out = dict(config)
    if not out.get("num_heads"):
        out["num_heads"] = int(getattr(model_config, "num_attention_heads", 0) or 0)
    return out


def _layers(flat: Mapping[str, Any]) -> list[int]:
    rx = re.compile(r"backbone/encoder/layer/(\d+)/")
    layers = sorted({int(m.group(1)) for p in flat for m in [rx.match(p)] if m})
    if not layers:
        raise ValueError("prune_units: no encoder layers (expected BERT-style paths backbone/encoder/layer/<l>/...)")
    return layers


def _layout(base_params: Mapping[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """{'layers', 'units', 'sizes': {unit: units per layer}, 'head_dim'}; errors name the missing path."""
    flat = tree.flatten(base_params)
    layers = _layers(flat)
    units = _units(cfg["units"])
    for u in units:
        for suffix, _ in TENSORS[u]:
            for lay in layers:
                if LAYER.format(l=lay) + suffix not in flat:
                    raise ValueError(f"prune_units: {LAYER.format(l=lay) + suffix} not in the parameters (units "
                                     f"{u!r} need BERT's layout)")
    q = np.shape(flat[LAYER.format(l=layers[0]) + "attention/self/query/kernel"])
    sizes, head_dim = {}, 0
    if "heads" in units:
        nh = int(cfg["num_heads"])
        if nh <= 0 or q[-1] % nh:
            raise ValueError(f"prune_units: num_heads={nh} must be a positive divisor of the hidden size {q[-1]} "
                             "(0 is filled in from the model's config by the training loop)")
        sizes["heads"], head_dim = nh, q[-1] // nh
    if "ffn" in units:
        sizes["ffn"] = int(np.shape(flat[LAYER.format(l=layers[0]) + "intermediate/dense/kernel"])[-1])
    return {"layers": layers, "units": units, "sizes": sizes, "head_dim": head_dim}


def _k_final(n_units: int, n_layers: int, keep: float, budget: str) -> int:
    """Units kept at the end: per layer (per_layer) or in all (global), at least 1."""
    return max(1, int(round(keep * (n_units if budget == "per_layer" else n_units * n_layers))))


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    del rng
    cfg = _cfg(config)
    lay = _layout(base_params, cfg)
    flat = tree.flatten(base_params)
    pu: dict[str, Any] = {"hp": {k: jnp.asarray(cfg[k], jnp.float32) for k in _HP}, "layout": _layout_tree(lay, cfg)}
    if cfg["criterion"] == "movement":
        pu["scores"] = {u: jnp.zeros((len(lay["layers"]), n), jnp.float32) for u, n in lay["sizes"].items()}
    copy = {p: jnp.array(x, copy=True) for p, x in flat.items()}
    return {**tree.unflatten(copy), "prune_units": pu}


def _layout_tree(lay: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    key = "+".join(f"{u}:{lay['sizes'][u]}" for u in lay["units"])
    return {key: {cfg["budget"]: {cfg["criterion"]: {str(i): jnp.asarray(i, jnp.int32) for i in lay["layers"]}}}}


def _mode(pu: Mapping[str, Any]) -> tuple[dict[str, int], str, str, list[int]]:
    """({unit: count per layer}, budget, criterion, layers): static, read from the layout's keys."""
    (units, by_budget), = pu["layout"].items()
    (budget, by_crit), = by_budget.items()
    (criterion, layers), = by_crit.items()
    sizes = {u: int(n) for u, n in (x.split(":") for x in units.split("+"))}
    return sizes, budget, criterion, sorted(int(i) for i in layers)


def _unit_view(x: jax.Array, axis: int, n_units: int) -> jax.Array:
    """x with the unit axis split out: [..., n_units, size/n_units] on `axis` (-1 columns, -2 rows)."""
    if axis == -1:
        return x.reshape(*x.shape[:-1], n_units, x.shape[-1] // n_units)
    return x.reshape(n_units, x.shape[0] // n_units, *x.shape[1:])


def _expand(m: jax.Array, x_shape: tuple[int, ...], axis: int) -> jax.Array:
    """A unit mask [n] broadcast over a tensor of `x_shape` along `axis` (each unit covers size/n entries)."""
    n = m.shape[0]
    if axis == -1:
        return jnp.repeat(m, x_shape[-1] // n, total_repeat_length=x_shape[-1])
    return jnp.repeat(m, x_shape[0] // n, total_repeat_length=x_shape[0]).reshape(x_shape[0], *([1] * (len(x_shape) - 1)))


def unit_scores(delta: Mapping[str, Any], unit: str) -> jax.Array:
    """[L, n] scores of `unit`: S (movement) or Σ|W| over each unit's entries (magnitude), no gradient."""
    pu = delta["prune_units"]
    sizes, _, criterion, layers = _mode(pu)
    if criterion == "movement":
        return jax.lax.stop_gradient(pu["scores"][unit])
    flat = tree.flatten({k: v for k, v in delta.items() if k != "prune_units"})
    n = sizes[unit]
    rows = []
    for lay in layers:
        s = 0.0
        for suffix, axis in TENSORS[unit]:
            v = _unit_view(jnp.abs(jax.lax.stop_gradient(flat[LAYER.format(l=lay) + suffix])), axis, n)
            s = s + (jnp.sum(v, axis=tuple(i for i in range(v.ndim) if i != v.ndim - 2)) if axis == -1
                     else jnp.sum(v, axis=tuple(range(1, v.ndim))))
        rows.append(s)
    return jnp.stack(rows)


def masks(delta: Mapping[str, Any], step=None, total_steps: int | None = None) -> dict[str, jax.Array]:
    """{unit: float32 0/1 [L, n]} at `step` (None: the final keep). Keeps every unit whose score is >= the
    k-th largest of its layer (per_layer) or of all layers (global)."""
    pu = delta["prune_units"]
    units, budget, _, _ = _mode(pu)
    hp = pu["hp"]
    out = {}
    for u in units:
        s = unit_scores(delta, u)
        n_layers, n = s.shape
        keep = hp["keep_heads"] if u == "heads" else hp["keep_ffn"]
        v = keep_fraction(step, total_steps, keep, hp["warmup_fraction"], hp["cooldown_fraction"])
        total = n if budget == "per_layer" else n * n_layers
        k_final = jnp.maximum(1, jnp.round(keep * total)).astype(jnp.int32)
        k = jnp.clip(jnp.round(v * total).astype(jnp.int32), k_final, total)
        if budget == "per_layer":
            desc = -jnp.sort(-s, axis=-1)
            thr = jnp.take_along_axis(desc, jnp.broadcast_to(k - 1, (n_layers, 1)), axis=-1)
        else:
            thr = (-jnp.sort(-s.reshape(-1)))[k - 1]
        out[u] = (s >= thr).astype(jnp.float32)
    return out


def apply(
    base_params: Mapping[str, Any], delta: Mapping[str, Any], step=None, total_steps: int | None = None
) -> dict[str, Any]:
    pu = delta["prune_units"]
    flat = tree.flatten({k: v for k, v in delta.items() if k != "prune_units"})
    if "kept" in pu:  # stored form: scatter the sliced unit tensors back into zeros
        base_flat = tree.flatten(base_params)
        sliced, kept = tree.flatten(pu["sliced"]), pu["kept"]
        sizes = _mode(pu)[0]
        for u, by_layer in kept.items():
            for lay_s, idx in by_layer.items():
                n = sizes[u]
                for suffix, axis in TENSORS[u]:
                    p = LAYER.format(l=lay_s) + suffix
                    shape, dtype = np.shape(base_flat[p]), base_flat[p].dtype
                    if idx.shape[0] == 0:  # every unit of the layer pruned (possible under a global budget)
                        flat[p] = jnp.zeros(shape, dtype)
                        continue
                    full = jnp.zeros(_unit_view(jnp.zeros(shape, dtype), axis, n).shape, dtype)
                    part = _unit_view(sliced[p].astype(dtype), axis, idx.shape[0])
                    full = full.at[..., idx, :].set(part) if axis == -1 else full.at[idx].set(part)
                    flat[p] = full.reshape(shape)
        return {"params": tree.unflatten({p: flat[p] for p in base_flat})}
    units, _, criterion, layers = _mode(pu)
    m = masks(delta, step, total_steps)
    for u in units:
        mu = m[u]
        if criterion == "movement":  # straight-through: value M, gradient to S through W
            s = pu["scores"][u]
            mu = mu + (s - jax.lax.stop_gradient(s))
        for i, lay in enumerate(layers):
            for suffix, axis in TENSORS[u]:
                p = LAYER.format(l=lay) + suffix
                w = flat[p]
                flat[p] = w * _expand(mu[i].astype(w.dtype), w.shape, axis)
    return {"params": tree.unflatten(flat)}


def trainable(delta: Mapping[str, Any]) -> Any:
    frozen = re.compile(r"prune_units/(?:hp|layout|kept)/.*")
    return tree.map_with_path(lambda p, _: not frozen.fullmatch(p), delta)


def to_disk(delta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Dense non-unit leaves; per layer the kept units' indices and the unit tensors sliced to them."""
    pu = delta["prune_units"]
    flat = {p: np.asarray(x) for p, x in tree.flatten({k: v for k, v in delta.items() if k != "prune_units"}).items()}
    if "kept" in pu:
        out = dict(flat)
        out.update({f"prune_units/kept/{u}/{lay}": np.asarray(i) for u, d in pu["kept"].items() for lay, i in d.items()})
        out.update({f"prune_units/sliced/{p}": np.asarray(x) for p, x in tree.flatten(pu["sliced"]).items()})
        return out
    sizes, _, _, layers = _mode(pu)
    units = list(sizes)
    m = {u: np.asarray(x) for u, x in jax.jit(masks)(delta).items()}
    unit_paths = {LAYER.format(l=lay) + s for u in units for lay in layers for s, _ in TENSORS[u]}
    out = {p: x for p, x in flat.items() if p not in unit_paths}
    for u in units:
        n = sizes[u]
        for i, lay in enumerate(layers):
            idx = np.flatnonzero(m[u][i] > 0).astype(np.int32)
            out[f"prune_units/kept/{u}/{lay}"] = idx
            for suffix, axis in TENSORS[u]:
                p = LAYER.format(l=lay) + suffix
                v = np.asarray(_unit_view(jnp.asarray(flat[p]), axis, n))
                part = v[..., idx, :] if axis == -1 else v[idx]
                shape = list(flat[p].shape)
                shape[axis] = idx.size * (shape[axis] // n)
                out[f"prune_units/sliced/{p}"] = np.ascontiguousarray(part.reshape(shape), np.float32)
    return out


def from_disk(arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    """The mask-free form {non-unit θ leaves, prune_units/kept, prune_units/sliced, prune_units/layout}."""
    cfg = _cfg(config)
    lay = _layout(base_params, cfg)
    flat = tree.flatten(base_params)
    unit_paths = {LAYER.format(l=i) + s for u in lay["units"] for i in lay["layers"] for s, _ in TENSORS[u]}
    expected = ({p for p in flat if p not in unit_paths} | {f"prune_units/sliced/{p}" for p in unit_paths}
                | {f"prune_units/kept/{u}/{i}" for u in lay["units"] for i in lay["layers"]})
    if set(arrays) != expected:
        raise ValueError(f"prune_units: stored arrays differ from the config's δ: {sorted(set(arrays) ^ expected)[:10]}")
    for u in lay["units"]:
        n = lay["sizes"][u]
        for i in lay["layers"]:
            idx = arrays[f"prune_units/kept/{u}/{i}"]
            if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n or np.any(np.diff(idx) <= 0))):
                raise ValueError(f"prune_units: prune_units/kept/{u}/{i} is not a strictly increasing list of units < {n}")
            for suffix, axis in TENSORS[u]:
                p = LAYER.format(l=i) + suffix
                want = list(np.shape(flat[p]))
                want[axis] = idx.size * (want[axis] // n)
                if list(arrays[f"prune_units/sliced/{p}"].shape) != want:
                    raise ValueError(f"prune_units: prune_units/sliced/{p}: shape {arrays[f'prune_units/sliced/{p}'].shape}, "
                                     f"expected {tuple(want)} for {idx.size} kept {u}")
    for p in flat:
        if p not in unit_paths and tuple(arrays[p].shape) != tuple(np.shape(flat[p])):
            raise ValueError(f"prune_units: {p}: stored shape {arrays[p].shape} differs from the base's {np.shape(flat[p])}")
    plain = {p: jnp.asarray(x) for p, x in arrays.items() if not p.startswith("prune_units/")}
    pu = {"layout": _layout_tree(lay, cfg),
          "kept": {u: {str(i): jnp.asarray(arrays[f"prune_units/kept/{u}/{i}"]) for i in lay["layers"]}
                   for u in lay["units"]},
          "sliced": tree.unflatten({p: jnp.asarray(arrays[f"prune_units/sliced/{p}"]) for p in unit_paths})}
    return {**tree.unflatten(plain), "prune_units": pu}


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    cfg = _cfg(config)
    total = sum(int(np.prod(np.shape(x))) for x in tree.flatten(base_params).values())
    if cfg["criterion"] == "magnitude":
        return total
    lay = _layout(base_params, cfg)
    return total + len(lay["layers"]) * sum(lay["sizes"].values())


def stats(base_params: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Kept heads / FFN units of the final θ, and the encoder weights they leave (a unit's kernel entries)."""
    pu = delta["prune_units"]
    sizes = _mode(pu)[0]
    if "kept" in pu:
        kept = {u: {int(lay): np.asarray(i).tolist() for lay, i in d.items()} for u, d in pu["kept"].items()}
    else:
        _, _, _, layers = _mode(pu)
        units = list(sizes)
        m = jax.jit(masks)(delta)
        kept = {u: {lay: np.flatnonzero(np.asarray(m[u][i])).tolist() for i, lay in enumerate(layers)} for u in units}
    out: dict[str, Any] = {}
    for u, by_layer in kept.items():
        n = sizes[u]
        got = sum(len(v) for v in by_layer.values())
        out[u] = {"kept": got, "total": n * len(by_layer), "fraction": got / (n * len(by_layer)),
                  "per_layer": [len(by_layer[k]) for k in sorted(by_layer)]}
    return out
