"""Bottleneck adapters (Houlsby, Pfeiffer) and their MAD-X stacks; `houlsby.py` / `pfeiffer.py` are presets.

An adapter maps h [.., D] to h + up(f(down(h))) with down: D → m, up: m → D (m = bottleneck, or D / reduction
factor) and f in relu | gelu | swish | tanh: the residual is inside the adapter. Placement (`placement`):
  - 'houlsby' (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"): after the attention
    output projection and after the FFN output (after their dropout), before the residual + LayerNorm:
    BERT  LN(adapter(dropout(W_o a)) + x)            delta .../attention/output/adapter, .../output/adapter
  - 'pfeiffer' (Pfeiffer et al. 2020, "AdapterFusion" / "MAD-X"): after the FFN only. On BERT (post-LN) in the
    AdapterHub form of the papers' figure (MAD-X eq. 2: A(h, r) = U(ReLU(D(h))) + r, h the block output, r the
    FFN output before its Add & Norm): s = FFN; s = s + up(f(down(LN(s + x)))) for each stacked adapter;
    out = LN(s + x), the block's own LayerNorm used before and after the adapters; the unmodified block at
    init (delta .../output/adapter_after_ln).
  Decoders (pre-LN: Llama, GPT-2), as AdapterHub calls its adapters there (no LayerNorm passed):
    'houlsby'   x + adapter(sublayer(norm(x))) on the attention and the MLP output (DoubleSeqBnConfig:
                original_ln_before=False): delta .../self_attn|attn/adapter, .../mlp/adapter;
    'pfeiffer'  MLP only, the adapter reads the block output and adds to the MLP output (SeqBnConfig:
                original_ln_before=True, residual_before_ln=True): s = mlp(norm(x)); s = s + up(f(down(s + x)))
                per stacked adapter; out = x + s: delta .../mlp/adapter_after_add.
Each site holds slots "0", "1", ... applied in order (stacking). `slot` picks this adapter's slot; MAD-X
(Pfeiffer et al. 2020b): a language adapter (slot 0) under a task adapter (slot 1). Compose two saved deltas
with `ftlab.deltas.apply_all(θ₀, [(pfeiffer, δ_lang), (pfeiffer, δ_task)])` (either can be swapped), or train
the task adapter on a fixed language adapter with `stack_on` = the language δ's saved directory: its module
leaves then sit in δ's `frozen/` part (not trained, not stored; re-read from `stack_on` by `from_disk`).

Initialisation: down kernel ~ N(0, 1e-2), biases 0, up kernel = 0 when `up_init_std` is 0 (default: exact
identity at init) else N(0, up_init_std) (e.g. 1e-3, Houlsby's near-identity).

Config keys: placement, reduction_factor, bottleneck (>0 overrides reduction_factor), non_linearity, slot,
up_init_std, stack_on, train_head, modules_to_save.
Trainable parameters: sites · (2·D·m + m + D) + |head| + |modules_to_save|, sites = 2·L ('houlsby') or L
('pfeiffer').
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab.deltas import _module
from ftlab.models.layers import ADAPTER_ACTIVATIONS

DEFAULTS: dict[str, Any] = {
    "placement": "houlsby",
    "reduction_factor": 16,
    "bottleneck": 0,
    "non_linearity": "swish",
    "slot": 0,
    "up_init_std": 0.0,
    "stack_on": "",
    "train_head": True,
    "modules_to_save": (),
}

_SITES = {
    ("bert", "houlsby"): ["{L}/attention/output/adapter", "{L}/output/adapter"],
    ("bert", "pfeiffer"): ["{L}/output/adapter_after_ln"],
    ("llama", "houlsby"): ["{L}/self_attn/adapter", "{L}/mlp/adapter"],
    ("llama", "pfeiffer"): ["{L}/mlp/adapter_after_add"],
    ("gpt2", "houlsby"): ["{L}/attn/adapter", "{L}/mlp/adapter"],
    ("gpt2", "pfeiffer"): ["{L}/mlp/adapter_after_add"],
}
_LAYERS = {"bert": "backbone/encoder/layer/{}", "llama": "backbone/layers/{}", "gpt2": "backbone/h/{}"}


def _family(base_params: Mapping[str, Any]) -> str:
    fam = _module.family(base_params)
    if fam == "t5":
        raise ValueError("adapters: ftlab's T5 has no adapter sites (supported: bert, llama, gpt2)")
    return fam


def sites(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    fam = _family(base_params)
    key = (fam, config["placement"])
    if key not in _SITES:
        raise ValueError(f"adapters: unknown placement {config['placement']!r} (houlsby, pfeiffer)")
    n = _module.num_layers(base_params)
    return [s.format(L=_LAYERS[fam].format(i)) for i in range(n) for s in _SITES[key]]


def dims(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[int, int]:
    """(D, bottleneck m)."""
    fam = _family(base_params)
    bb = base_params["backbone"]
    table = (
        bb["embeddings"]["word_embeddings"]
        if fam == "bert"
        else bb["embed_tokens" if fam == "llama" else "wte"]
    )
    d = int(table["embedding"].shape[1])
    m = int(config["bottleneck"]) or max(1, d // int(config["reduction_factor"]))
    return d, m


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    if config["non_linearity"] not in ADAPTER_ACTIVATIONS:
        raise ValueError(f"adapters: non_linearity {config['non_linearity']!r} not in {ADAPTER_ACTIVATIONS}")
    d, m = dims(base_params, config)
    slot = str(int(config["slot"]))
    std_up = float(config["up_init_std"])
    code = ADAPTER_ACTIVATIONS.index(config["non_linearity"])
    leaves = {}
    for i, s in enumerate(sites(base_params, config)):
        k1, k2 = jax.random.split(jax.random.fold_in(rng, i))
        pre = f"{s}/{slot}"
        leaves[f"{pre}/down/kernel"] = 1e-2 * jax.random.normal(k1, (d, m), jnp.float32)
        leaves[f"{pre}/down/bias"] = jnp.zeros((m,), jnp.float32)
        leaves[f"{pre}/up/kernel"] = (
            std_up * jax.random.normal(k2, (m, d), jnp.float32) if std_up else jnp.zeros((m, d), jnp.float32)
        )
        leaves[f"{pre}/up/bias"] = jnp.zeros((d,), jnp.float32)
        leaves[f"{pre}/act"] = jnp.full((), code, jnp.int32)  # one buffer per site: δ is donated
    frozen = _stacked_below(base_params, config, leaves)
    return _module.build(leaves, _module.copy_saved(base_params, config), frozen)


def _stacked_below(base_params, config, own: Mapping[str, Any]) -> dict[str, Any]:
    """Module leaves of the saved adapter δ at `stack_on` (fixed), checked not to collide with this slot."""
    if not config["stack_on"]:
        return {}
    from ftlab.checkpoint import delta_io

    method, _, below = delta_io.load(config["stack_on"], base_params, None)
    leaves = {p: jnp.asarray(x) for p, x in _module.module_delta(below).items()}
    clash = sorted(set(leaves) & set(own))
    if clash:
        raise ValueError(
            f"adapters: stack_on ({method}) uses the same slot as this adapter ({clash[0]}); "
            "give this adapter another `slot`"
        )
    return leaves


apply = _module.apply
trainable = _module.trainable
to_disk = _module.to_disk


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    return _module.from_disk(sys.modules[__name__], arrays, base_params, config)


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    d, m = dims(base_params, config)
    return len(sites(base_params, config)) * (2 * d * m + m + d) + _module.num_saved(base_params, config)
