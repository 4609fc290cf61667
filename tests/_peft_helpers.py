"""Shared helpers of the module-delta tests: tiny HF models saved as folders, random δ values, PEFT runs."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from ftlab import tree

B, T, V = 2, 7, 99
BERT = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
LLAMA = dict(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def inputs(pad_id: int = 0, seed: int = 0, vocab: int = V, t: int = T) -> tuple[np.ndarray, np.ndarray]:
    """[B, t] ids and mask; row 1 right-padded by 3."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(B, t)).astype(np.int32)
    mask = np.ones((B, t), np.int32)
    mask[1, -3:] = 0
    ids[mask == 0] = pad_id
    return ids, mask


def perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def save_tiny(kind: str, folder, num_labels: int = 3):
    """A perturbed tiny HF model saved to `folder`: 'bert_seqcls' | 'llama_lm'. Returns the torch model."""
    torch.manual_seed(0)
    if kind == "bert_seqcls":
        model = transformers.BertForSequenceClassification(
            transformers.BertConfig(**BERT, num_labels=num_labels)
        )
    elif kind == "llama_lm":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    else:
        raise ValueError(kind)
    perturb(model.eval(), 1)
    model.save_pretrained(folder)
    return model


def randomize(delta, seed: int = 0, scale: float = 0.1, skip=("lora_scale", "lora_dropout", "act")):
    """δ with every trainable float leaf replaced by non-trivial random values (ones-centred for IA³)."""
    rng = np.random.default_rng(seed)

    def f(p, x):
        leaf = p.rsplit("/", 1)[-1]
        if leaf in skip or not jnp.issubdtype(x.dtype, jnp.floating) or p.startswith(("head/", "backbone/")):
            return x
        noise = scale * rng.standard_normal(x.shape).astype(np.float32)
        return jnp.asarray((1.0 + noise) if leaf.startswith("ia3") else noise, x.dtype)

    return tree.map_with_path(f, delta)


def randomize_torch(
    model: torch.nn.Module, names: tuple[str, ...], seed: int = 0, scale: float = 0.1
) -> None:
    """Set every parameter whose name contains one of `names` to random values (ones-centred for ia3_l)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in names):
                noise = scale * torch.randn(p.shape, generator=g)
                p.copy_(1.0 + noise if "ia3_l" in n else noise)


def torch_out(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float().numpy()


def max_diff(a, b, mask=None) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2 or mask is None:
        return float(np.abs(a - b).max())
    return float(np.abs(a - b)[np.asarray(mask).astype(bool)].max())


def fresh(model):
    return copy.deepcopy(model)


def run(model, variables, ids, mask, **kw):
    return np.asarray(jax.jit(lambda v, i, m: model.apply(v, i, m, **kw))(variables, ids, mask))


def head_from_hf(params, hf_model, name: str = "classifier"):
    """θ₀ with head/<name> taken from a torch model's `<name>` Linear (HF's fresh head, so both sides agree)."""
    lin = getattr(hf_model, name)
    head = {"kernel": jnp.asarray(lin.weight.detach().numpy().T)}
    if lin.bias is not None:
        head["bias"] = jnp.asarray(lin.bias.detach().numpy())
    return {**params, "head": {name: head}}


def hf_vs_ftlab(model, base_params, delta_mod, delta, hf_model, ids, mask) -> tuple[np.ndarray, np.ndarray]:
    """(ftlab output with δ, HF/PEFT output), per-token outputs aligned to the T input positions."""
    out = run(model, delta_mod.apply(base_params, delta), ids, mask)
    ref = torch_out(hf_model, ids, mask)
    if ref.ndim == 3 and ref.shape[1] != out.shape[1]:  # prompt tuning: HF returns the P prompt positions too
        ref = ref[:, -out.shape[1] :]
    return out, ref


def minilm_setup():
    """(base, HF BertForSequenceClassification with a seeded fresh classifier, ftlab model, θ₀ with that head)."""
    from ftlab.checkpoint import load_base
    from ftlab.models import build_model, init_params

    base = load_base("minilm")
    torch.manual_seed(0)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        base.source, num_labels=2, local_files_only=True
    ).eval()
    model = build_model(base.config, "sequence_classification", 2)
    ids = base.tokenizer(["a b"], return_tensors="np")["input_ids"]
    params, _ = init_params(model, jax.random.key(0), base.params, ids)
    return base, hf, model, head_from_hf(params, hf)


def text_batch(tokenizer, side: str = "right"):
    tokenizer.padding_side = side
    enc = tokenizer(
        ["The quick brown fox jumps over the lazy dog.", "Short one."], padding=True, return_tensors="np"
    )
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def peft_parity(method, config, base, hf, model, params, task, folder, ids, mask, seed=0, scale=0.1):
    """Random δ -> (ftlab output, PEFT output via export_peft + PeftModel.from_pretrained, δ module, δ).

    The PEFT wrapper is unloaded again so `hf` stays the plain model."""
    import peft

    from ftlab import deltas
    from ftlab.checkpoint.peft import export_peft

    mod = deltas.get(method)
    cfg = deltas.check_config(mod, config)
    delta = randomize(mod.init(jax.random.key(seed), params, cfg), seed=seed, scale=scale)
    export_peft(delta, method, cfg, base, folder, task, base_params=params)
    pm = peft.PeftModel.from_pretrained(hf, folder).eval()
    try:
        out, ref = hf_vs_ftlab(model, params, mod, delta, pm, ids, mask)
    finally:
        if method in ("lora", "ia3"):
            pm.unload()
    return out, ref, mod, delta


def float64_out(model, params, mod, delta, ids, mask):
    """ftlab's output with θ₀, δ and compute in float64 (the reference for SmolLM2's float32 rounding)."""
    import dataclasses

    with jax.enable_x64(True):
        cfg64 = dataclasses.replace(model.config, dtype="float64")
        m64 = model.clone(config=cfg64)
        to64 = lambda t: jax.tree_util.tree_map(
            lambda x: np.asarray(x, np.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else x, t
        )
        return np.asarray(jax.jit(lambda v: m64.apply(v, ids, mask))(to64(mod.apply(params, delta))))
