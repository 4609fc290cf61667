"""Device mesh and path-regex sharding rules: θ₀, δ, optimizer state and batches on a (data, fsdp, tensor) mesh.

Mesh axes (t5x/MaxText vocabulary):
  data    pure data parallelism: parameters replicated, the batch split
  fsdp    the batch split and every large weight split too (ZeRO-3 / FSDP), gathered where it is used
  tensor  Megatron tensor parallelism: column-parallel q/k/v, up/gate, intermediate (output features split),
          row-parallel o, down, output (input features split), vocabulary-parallel embeddings

θ₀ gets its layout from `(regex, PartitionSpec)` rules over "/"-paths (first match wins, see ftlab.tree):
the config's `parallel.rules` first (every one must match something), then DEFAULT_RULES, one list for all
families (BERT, Llama, GPT-2) and heads; defaults that match no path of this model are skipped, and a
parameter no rule matches is an error naming its path. A dimension that a rule's mesh axes do not divide
(e.g. a 2-class head over 8 devices) is replicated instead, and the table from `describe` says so.

δ is never given rules of its own: each leaf takes the layout of the base leaf it modifies (full copies,
masks and sparse diffs mirror their leaf's path, e.g. diffprune/w/<base path>), LoRA A [in, r] / B [r, out]
take the input / output split of their kernel, IA³ vectors theirs; a leaf with no base counterpart is
replicated when tiny (≤ TINY_BYTES) and otherwise split over fsdp on its largest divisible dimension.
Optimizer state follows its parameter (moments mirror the train tree's paths); batches split their leading
dimension over (data, fsdp).

Config keys (`config.parallel`):
  data, fsdp, tensor  mesh axis sizes; one may be -1 (= the devices left over); the product must equal the
                      device count
  rules               extra (regex, spec) pairs tried before the defaults; spec a tuple of axis names / None /
                      tuples of names, e.g. ("backbone/.*/kernel", ("fsdp", None))
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ftlab import tree

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
DEFAULTS: dict[str, Any] = {"data": -1, "fsdp": 1, "tensor": 1, "rules": ()}
TINY_BYTES = 1 << 20  # δ leaves without a base counterpart up to this size are replicated

FSDP, TP = "fsdp", "tensor"
_LAYER = r"backbone/(?:encoder/layer|layers|h)/\d+/"
_COLUMN = (r"(?:attention/self/(?:query|key|value)|intermediate/dense"  # BERT
           r"|self_attn/[qkv]_proj|mlp/(?:gate|up)_proj"  # Llama
           r"|attn/c_attn|mlp/c_fc)")  # GPT-2 (c_attn is q|k|v fused along the output features)
_ROW = (r"(?:attention/output/dense|output/dense"  # BERT
        r"|self_attn/o_proj|mlp/down_proj"  # Llama
        r"|attn/c_proj|mlp/c_proj)")  # GPT-2

# Kernels are [in, out], embeddings [vocab, width]. First match wins.
DEFAULT_RULES: tuple[tuple[str, P], ...] = (
    (r"backbone/(?:embeddings/word_embeddings|embed_tokens|wte)/embedding", P(TP, FSDP)),
    (r"backbone/(?:embeddings/(?:position|token_type)_embeddings|wpe)/embedding", P(None, FSDP)),
    (_LAYER + _COLUMN + "/kernel", P(FSDP, TP)),
    (_LAYER + _COLUMN + "/bias", P(TP)),
    (_LAYER + _ROW + "/kernel", P(TP, FSDP)),
    (r"head/lm_head/kernel", P(FSDP, TP)),
    (r"(?:backbone/pooler|head)/.*kernel", P(FSDP, None)),
    (r"head/predictions/bias", P(TP)),  # the MLM decoder bias [V] (its kernel is the tied embedding)
    (r".*/(?:bias|scale)", P()),  # norms and the remaining biases: small, replicated
)


# --------------------------------------------------------------------------------------------------- mesh


def mesh_shape(config: Mapping[str, Any] | None, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with a -1 filled in; raises naming the sizes if they do not make num_devices."""
    cfg = {**DEFAULTS, **(config or {})}
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown parallel config key(s) {sorted(unknown)} (valid: {', '.join(DEFAULTS)})")
    sizes = [int(cfg[a]) for a in AXES]
    shown = " × ".join(f"{a}={s}" for a, s in zip(AXES, sizes))
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {shown}: sizes must be positive, with at most one -1 (= fill)")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh {shown}: {known} does not divide the {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {shown} has {math.prod(sizes)} devices but there are {num_devices} "
                         f"(the product of the sizes must equal the device count)")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: Mapping[str, Any] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """Mesh with axes (data, fsdp, tensor) over `devices` (default: all devices of all processes)."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(config, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


# --------------------------------------------------------------------------------------------------- rules


def _as_spec(spec: Any) -> P:
    """A PartitionSpec from a spec or a config tuple/list (inner lists become tuples of axes)."""
    if isinstance(spec, P):
        return spec
    return P(*[tuple(s) if isinstance(s, list) else s for s in spec])


def _fit(path: str, spec: P, shape: Sequence[int], mesh: Mesh) -> tuple[P, str]:
    """`spec` padded to len(shape), with each dimension its axes do not divide replicated (and said why)."""
    if len(spec) > len(shape):
        raise ValueError(f"sharding of {path!r}: spec {spec} has more entries than its shape {tuple(shape)}")
    out, notes = [], []
    for d, axes in enumerate(list(spec) + [None] * (len(shape) - len(spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        for a in names:
            if a not in mesh.shape:
                raise ValueError(f"sharding of {path!r}: axis {a!r} is not a mesh axis {tuple(mesh.shape)}")
        size = math.prod(mesh.shape[a] for a in names)
        if size > 1 and shape[d] % size:
            notes.append(f"dim {d} ({shape[d]}) not divisible by {'×'.join(names)}={size}: replicated")
            axes = None
        out.append(axes)
    while out and out[-1] is None:
        out.pop()
    return P(*out), "; ".join(notes)


def _rule_table(paths: Sequence[str], rules: Sequence[tuple[str, Any]]) -> dict[str, P]:
    """{path: spec}: the config's rules strictly (each must match), then the defaults that apply here."""
    user = tree.match_rules(paths, [(r, _as_spec(s)) for r, s in rules], "parallel.rules",
                            allow_unmatched=True) if rules else {}
    rest = [p for p in paths if p not in user]
    first = {next((i for i, (r, _) in enumerate(DEFAULT_RULES) if re.fullmatch(r, p)), None) for p in rest}
    defaults = [rule for i, rule in enumerate(DEFAULT_RULES) if i in first]  # those that win a path here
    return {**user, **tree.match_rules(rest, defaults, "parallel rules (defaults)")}


def param_specs(params: Mapping[str, Any], mesh: Mesh, rules: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Tree of PartitionSpecs for θ₀ (`params`: arrays or ShapeDtypeStructs); unmatched path → ValueError."""
    flat = tree.flatten(params)
    table = _rule_table(list(flat), rules)
    return tree.unflatten({p: _fit(p, table[p], np.shape(x), mesh)[0] for p, x in flat.items()})


def _fallback(path: str, x: Any, mesh: Mesh) -> tuple[P, str]:
    """A leaf with no base counterpart: replicated when tiny, else fsdp on its largest divisible dim."""
    shape = np.shape(x)
    nbytes = math.prod(shape) * np.dtype(x.dtype).itemsize
    if nbytes <= TINY_BYTES or mesh.shape[FSDP] == 1:
        return P(), "no base leaf: replicated"
    dims = sorted((d for d in range(len(shape)) if shape[d] % mesh.shape[FSDP] == 0), key=lambda d: -shape[d])
    if not dims:
        return P(), f"no base leaf, no dim divisible by fsdp={mesh.shape[FSDP]}: replicated"
    spec = [None] * len(shape)
    spec[dims[0]] = FSDP
    return _fit(path, P(*spec), shape, mesh)[0], "no base leaf: fsdp on its largest dim"


# How a module-δ leaf (delta/<module>/<leaf>) splits, given its module's kernel spec (s_in, s_out):
# the entries for the leaf's trailing dimensions ('in' / 'out' = the kernel's, None = replicated).
_MODULE_LEAVES = {
    "lora_a": ("in", None),  # [..., in, r] (embeddings: [..., V, r])
    "lora_b": (None, "out"),  # [..., r, out]
    "ia3_in": ("in",),
    "ia3_out": ("out",),
}


def _inherit(path: str, x: Any, base: dict[str, Any], specs: dict[str, P], mesh: Mesh) -> tuple[P, str]:
    """Spec of δ leaf `path`: its base leaf's (matched by path suffix and shape), else the module rule."""
    shape = tuple(np.shape(x))
    parts = path.split("/")
    for k in range(len(parts)):  # e.g. train copy 'head/...', 'diffprune/w/backbone/...', 'frozen/...'
        q = "/".join(parts[k:])
        if q in base and tuple(np.shape(base[q])) == shape:
            return specs[q], f"as {q}" if k else "as base"
    q = path[len("frozen/"):] if path.startswith("frozen/") else path
    if q.startswith("delta/") and parts[-1] in _MODULE_LEAVES:
        module = q[len("delta/"):].rsplit("/", 1)[0]
        for leaf in ("kernel", "embedding"):
            if f"{module}/{leaf}" in base:
                s_in, s_out = (list(specs[f"{module}/{leaf}"]) + [None, None])[:2]
                want = _MODULE_LEAVES[parts[-1]]
                tail = [s_in if w == "in" else s_out if w == "out" else None for w in want]
                spec = P(*([None] * (len(shape) - len(tail)) + tail))
                fitted, note = _fit(path, spec, shape, mesh)
                return fitted, f"from {module}/{leaf}" + (f" ({note})" if note else "")
    return _fallback(path, x, mesh)


def delta_specs(delta: Mapping[str, Any], base_params: Mapping[str, Any], base_specs: Mapping[str, Any],
                mesh: Mesh) -> dict[str, Any]:
    """Tree of PartitionSpecs for δ (or any part of it, e.g. its train/fixed split), inherited from θ₀."""
    base, specs = tree.flatten(base_params), tree.flatten(base_specs)
    return tree.unflatten({p: _inherit(p, x, base, specs, mesh)[0] for p, x in tree.flatten(delta).items()})


def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def opt_state_specs(opt_state: Any, train: Mapping[str, Any], train_specs: Mapping[str, Any], mesh: Mesh) -> Any:
    """PartitionSpecs for an optax state: a leaf whose key-path ends with a train path (same shape) takes
    that parameter's spec (Adam's mu/nu, inside chain/partition/masked states alike); others (counts) as
    `_fallback`."""
    flat_train, flat_specs = tree.flatten(train), tree.flatten(train_specs)

    def one(keypath, x):
        keys = [_key_str(k) for k in keypath]
        for k in range(len(keys)):
            q = "/".join(keys[k:])
            if q in flat_train and tuple(np.shape(flat_train[q])) == tuple(np.shape(x)):
                return flat_specs[q]
        return _fallback("opt_state/" + "/".join(keys), x, mesh)[0]

    return jax.tree_util.tree_map_with_path(one, opt_state)


# ----------------------------------------------------------------------------------------- step shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Every batch leaf [B, ...] split on B over (data, fsdp); B must be a multiple of data × fsdp."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def train_shardings(mesh: Mesh, state: Mapping[str, Any], base_params: Mapping[str, Any],
                    rules: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """{'state', 'base', 'batch'}: NamedSharding trees for the train step's three arguments.

    `state` is the loop's {step, train, fixed, opt_state, rng[, reg]} (arrays or ShapeDtypeStructs); its
    shardings tree has exactly its structure, so it can be both the step's input and output sharding."""
    to_sharding = lambda specs: jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                                       is_leaf=lambda s: isinstance(s, P))
    base_specs = param_specs(base_params, mesh, rules)
    train_specs = delta_specs(state["train"], base_params, base_specs, mesh)
    out = {k: P() for k in state if k not in ("train", "fixed", "opt_state")}  # step, rng: scalars/keys
    out["train"] = train_specs
    out["fixed"] = delta_specs(state["fixed"], base_params, base_specs, mesh)
    out["opt_state"] = opt_state_specs(state["opt_state"], state["train"], train_specs, mesh)
    if "reg" in state:  # a regulariser's copies of δ's trainable leaves (SMART's EMA teacher) are laid out as δ
        out["reg"] = {k: delta_specs(v, base_params, base_specs, mesh) for k, v in state["reg"].items()}
    return {"state": to_sharding(out), "base": to_sharding(base_specs), "batch": batch_sharding(mesh)}


def eval_shardings(shardings: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
    """in_shardings for the eval step (train, fixed, base, batch) from `train_shardings`' result."""
    s = shardings["state"]
    return s["train"], s["fixed"], shardings["base"], shardings["batch"]


# ------------------------------------------------------------------------------------------- inspection


def per_device_bytes(x: Any, shardings: Any) -> int:
    """Bytes one device holds of tree `x` laid out by `shardings` (a matching tree or one sharding)."""
    leaves = jax.tree_util.tree_leaves(x)
    shards = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda _, s: s, x, shardings) if not isinstance(shardings, NamedSharding)
        else jax.tree_util.tree_map(lambda _: shardings, x))
    return int(sum(math.prod(s.shard_shape(np.shape(a))) * np.dtype(a.dtype).itemsize
                   for a, s in zip(leaves, shards)))


def describe(params: Mapping[str, Any], mesh: Mesh, rules: Sequence[tuple[str, Any]] = (),
             delta: Mapping[str, Any] | None = None) -> str:
    """Plain-text table: every θ₀ (and δ) path, its shape, its spec and why (logged once by the loop)."""
    flat = tree.flatten(params)
    table = _rule_table(list(flat), rules)
    rows = []
    specs = {}
    for p, x in flat.items():
        spec, note = _fit(p, table[p], np.shape(x), mesh)
        specs[p] = spec
        rows.append((p, tuple(np.shape(x)), spec, note))
    for p, x in tree.flatten(delta or {}).items():
        spec, note = _inherit(p, x, flat, specs, mesh)
        rows.append((p, tuple(np.shape(x)), spec, note))
    width = max(len(r[0]) for r in rows)
    head = f"mesh {dict(mesh.shape)}\n{'path':<{width}}  {'shape':<16} {'spec':<28} note"
    return "\n".join([head] + [f"{p:<{width}}  {str(s):<16} {str(spec):<28} {n}" for p, s, spec, n in rows])
