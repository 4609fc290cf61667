"""Hugging Face PEFT interop: write ftlab module deltas as PEFT adapters and read PEFT adapters back.

    export_peft(delta, method, delta_config, base, folder, task_type) -> folder
        adapter_config.json + adapter_model.safetensors that `peft.PeftModel.from_pretrained(hf_model, folder)`
        loads (methods lora, ia3, prompt, prefix).
    import_peft(folder, base) -> (method, config, delta)
        a folder written by PEFT's `save_pretrained` (or by export_peft) as an ftlab δ.

Key layout (PEFT 0.21's saved state dict, adapter name removed):
    LoRA    base_model.model.<hf module>.lora_A.weight [r, in], lora_B.weight [out, r];
            embeddings: lora_embedding_A [r, V], lora_embedding_B [D, r]
    IA³     base_model.model.<hf module>.ia3_l: [out, 1] (keys/values) or [1, in] (feed-forward modules)
    prompt  prompt_embeddings [P, D];  prefix: prompt_embeddings [P, 2·L·K·Dh] (layer i: key = slice 2i,
            value = slice 2i+1 of the [2L, K·Dh] row)
    trained head / modules_to_save: base_model.model.<hf key> (tuner methods), base_model.<hf key> (prompt
            learning methods).
`<hf module>` is ftlab's module path through `ftlab.checkpoint.hf.path_to_hf`, with the model prefix (`bert.`,
`model.`, ...) for task models (task_type SEQ_CLS, TOKEN_CLS, CAUSAL_LM) and without it for
FEATURE_EXTRACTION (AutoModel). The json is written by hand with the fields PEFT needs (PEFT fills defaults).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import deltas, tree
from ftlab.checkpoint.hf import Base, hf_to_path, path_to_hf
from ftlab.models.configs import BertConfig, GPT2Config, LlamaConfig, ModelConfig

TASK_TYPES = ("SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM", "FEATURE_EXTRACTION")
PEFT_TYPES = {"lora": "LORA", "ia3": "IA3", "prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING"}


class PeftInteropError(ValueError):
    """A delta or adapter folder that has no counterpart on the other side."""


def _hf_module(path: str, config: ModelConfig, with_prefix: bool) -> str:
    """ftlab module path (no leaf) -> HF module name."""
    flat_leaf = "embedding" if path.rsplit("/", 1)[-1] in _EMBEDS else "kernel"
    key, _ = path_to_hf(f"{path}/{flat_leaf}", config, with_prefix)
    return key[: -len(".weight")]


_EMBEDS = {"word_embeddings", "position_embeddings", "token_type_embeddings", "embed_tokens", "wte", "wpe"}


def _model_dims(config: ModelConfig) -> tuple[int, int, int, int]:
    """(layers, hidden, key/value heads, head dim)."""
    if isinstance(config, BertConfig):
        h = config.num_attention_heads
        return config.num_hidden_layers, config.hidden_size, h, config.hidden_size // h
    if isinstance(config, LlamaConfig):
        return config.num_hidden_layers, config.hidden_size, config.num_key_value_heads, config.head_dim
    if isinstance(config, GPT2Config):
        return config.n_layer, config.n_embd, config.n_head, config.n_embd // config.n_head
    raise TypeError(type(config).__name__)


def _saved_modules(
    saved: Mapping[str, Any], base_params: Mapping[str, Any], config: ModelConfig, with_prefix: bool
) -> tuple[dict[str, np.ndarray], list[str]]:
    """HF tensors of the modules holding δ's trained base leaves (whole modules, as PEFT's modules_to_save)."""
    flat_base = tree.flatten(base_params)
    modules = sorted({p.rsplit("/", 1)[0] for p in saved})
    tensors, names = {}, []
    for m in modules:
        for p in [q for q in flat_base if q.rsplit("/", 1)[0] == m]:
            key, transpose = path_to_hf(p, config, with_prefix)
            x = np.asarray(saved.get(p, flat_base[p]), np.float32)
            tensors[key] = np.ascontiguousarray(x.T if transpose else x)
        names.append(
            path_to_hf(next(q for q in flat_base if q.rsplit("/", 1)[0] == m), config, with_prefix)[0].rsplit(
                ".", 1
            )[0]
        )
    return tensors, names


def export_peft(
    delta: Mapping[str, Any],
    method: str,
    delta_config: Mapping[str, Any],
    base: Base,
    folder: str | os.PathLike,
    task_type: str,
    base_params: Mapping[str, Any] | None = None,
) -> Path:
    """Write δ as a PEFT adapter folder. base: the loaded base (its config names the HF modules);
    base_params: the full θ₀ δ was trained on (default base.params; needed when δ trains part of a module)."""
    from safetensors.numpy import save_file

    if method not in PEFT_TYPES:
        raise PeftInteropError(f"no PEFT counterpart for method {method!r} (have {sorted(PEFT_TYPES)})")
    if task_type not in TASK_TYPES:
        raise PeftInteropError(f"task_type {task_type!r} not in {TASK_TYPES}")
    config = base.config
    base_params = base.params if base_params is None else base_params
    mod = deltas.get(method)
    cfg = deltas.check_config(mod, dict(delta_config))
    with_prefix = task_type != "FEATURE_EXTRACTION"
    prompt_learning = method in ("prompt", "prefix")
    flat = tree.flatten(delta)
    if any(p.startswith("frozen/") for p in flat):
        raise PeftInteropError("a δ with fixed stacked entries has no PEFT form")
    module_leaves = {
        p[len("delta/") :]: np.asarray(x, np.float32) for p, x in flat.items() if p.startswith("delta/")
    }
    saved = {p: x for p, x in flat.items() if not p.startswith(("delta/", "prefix_mlp/"))}
    tensors, save_names = _saved_modules(saved, base_params, config, with_prefix)
    outer = "base_model." if prompt_learning else "base_model.model."
    tensors = {outer + k: v for k, v in tensors.items()}
    n_layers, hidden, kv_heads, head_dim = _model_dims(config)
    meta: dict[str, Any] = {
        "peft_type": PEFT_TYPES[method],
        "task_type": task_type,
        "base_model_name_or_path": None,
        "inference_mode": True,
        "modules_to_save": save_names or None,
        "revision": None,
    }
    if method == "lora":
        names = []
        for p, a in module_leaves.items():
            if not p.endswith("/lora_a"):
                continue
            m = p[: -len("/lora_a")]
            b = module_leaves[f"{m}/lora_b"]
            name = _hf_module(m, config, with_prefix)
            names.append(name)
            if m.rsplit("/", 1)[-1] in _EMBEDS:
                tensors[f"{outer}{name}.lora_embedding_A"] = np.ascontiguousarray(a.T)
                tensors[f"{outer}{name}.lora_embedding_B"] = np.ascontiguousarray(b.T)
            else:
                tensors[f"{outer}{name}.lora_A.weight"] = np.ascontiguousarray(a.T)
                tensors[f"{outer}{name}.lora_B.weight"] = np.ascontiguousarray(b.T)
        meta.update(
            r=int(cfg["r"]),
            lora_alpha=float(cfg["alpha"]),
            lora_dropout=float(cfg["dropout"]),
            use_rslora=bool(cfg["use_rslora"]),
            target_modules=sorted(names),
            bias="none",
            fan_in_fan_out=isinstance(config, GPT2Config),
            init_lora_weights=True,
        )
    elif method == "ia3":
        names, ff = [], []
        for p, x in module_leaves.items():
            m, leaf = p.rsplit("/", 1)
            name = _hf_module(m, config, with_prefix)
            names.append(name)
            if leaf == "ia3_in":
                ff.append(name)
                tensors[f"{outer}{name}.ia3_l"] = x.reshape(1, -1)
            else:
                tensors[f"{outer}{name}.ia3_l"] = x.reshape(-1, 1)
        meta.update(
            target_modules=sorted(names),
            feedforward_modules=sorted(ff),
            fan_in_fan_out=isinstance(config, GPT2Config),
            init_ia3_weights=True,
        )
    else:
        # PEFT's prefix tuning counts key/value heads (GQA); prompt tuning the query heads (unused there).
        heads = (
            kv_heads
            if method == "prefix" or not isinstance(config, LlamaConfig)
            else config.num_attention_heads
        )
        pl_common = dict(num_layers=n_layers, num_transformer_submodules=1, num_attention_heads=heads)
        if method == "prompt":
            (prompt,) = [x for p, x in module_leaves.items() if p.endswith("prompt")]
            tensors["prompt_embeddings"] = prompt
            meta.update(
                num_virtual_tokens=int(prompt.shape[0]),
                token_dim=int(prompt.shape[1]),
                prompt_tuning_init="RANDOM",  # the weights below replace the init; RANDOM needs no tokenizer
                prompt_tuning_init_text=None,
                tokenizer_name_or_path=None,
                **pl_common,
            )
        else:
            layers = deltas.get("prefix").layer_prefixes(delta)  # [(key [P, K·Dh], value), ...]
            p_len = layers[0][0].shape[0]
            rows = np.stack([x for kv in layers for x in kv], axis=1)  # [P, 2L, K·Dh]
            tensors["prompt_embeddings"] = np.ascontiguousarray(rows.reshape(p_len, -1), np.float32)
            meta.update(
                num_virtual_tokens=int(p_len),
                token_dim=int(kv_heads * head_dim),
                encoder_hidden_size=int(kv_heads * head_dim),
                prefix_projection=False,  # stored collapsed: the MLP re-parameterisation is training-only
                **pl_common,
            )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
        str(folder / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    (folder / "adapter_config.json").write_text(json.dumps(meta, indent=2))
    return folder


# ----------------------------------------------------------------------------------------------- import


def _candidate_configs(base_params: Mapping[str, Any]) -> list[ModelConfig]:
    bb = base_params["backbone"]
    if "encoder" in bb:
        return [BertConfig(model_type="bert"), BertConfig(model_type="roberta")]
    if "layers" in bb:
        return [LlamaConfig(model_type="llama"), LlamaConfig(model_type="qwen2")]
    return [GPT2Config()]


def _to_path(name: str, leaf: str, config: ModelConfig, flat_base: Mapping[str, Any]) -> str | None:
    """HF module name + 'weight' -> ftlab module path, if it names a module of θ₀."""
    mapped = hf_to_path(f"{name}.weight", config)
    if mapped is None:
        return None
    path = mapped[0]
    module = path.rsplit("/", 1)[0]
    return module if any(p.startswith(module + "/") for p in flat_base) else None


def import_peft(
    folder: str | os.PathLike, base: Base | Mapping[str, Any], config: ModelConfig | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A PEFT adapter folder -> (method, ftlab delta config, δ) for θ₀ = base (a Base or a params tree with the
    task head the δ is applied to). The HF naming is taken from `config` (default: base.config, else inferred
    from θ₀'s layout)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    if isinstance(base, Base):
        base_params, config = base.params, config or base.config
    else:
        base_params = base
    flat_base = tree.flatten(base_params)
    peft_type = meta["peft_type"]
    method = {v: k for k, v in PEFT_TYPES.items()}.get(peft_type)
    if method is None:
        raise PeftInteropError(f"{folder}: PEFT type {peft_type!r} has no ftlab method")
    configs = [config] if config is not None else _candidate_configs(base_params)
    tensors_full = tensors

    def strip(key: str) -> str:
        for outer in ("base_model.model.", "base_model."):
            if key.startswith(outer):
                return key[len(outer) :]
        return key

    # PEFT also saves the base embedding when LoRA targets it (save_embedding_layers): it must be θ₀'s.
    for key in [k for k in tensors if k.endswith(".base_layer.weight")]:
        base_copies = key
        tensors = {k: v for k, v in tensors.items() if k != base_copies}
        embedded = strip(key)[: -len(".base_layer.weight")]
        for cfg in configs:
            m = _to_path(embedded, "weight", cfg, flat_base)
            if m is not None and f"{m}/embedding" in flat_base:
                if not np.allclose(
                    np.asarray(flat_base[f"{m}/embedding"]), np.asarray(tensors_full[key]), atol=1e-6
                ):
                    raise PeftInteropError(f"{folder}: {key} differs from θ₀'s {m}/embedding (another base?)")
                break

    # Pick the naming under which every module key maps onto θ₀.
    chosen = None
    for cfg in configs:
        ok = True
        for key in tensors:
            if key == "prompt_embeddings":
                continue
            name, leaf = _split_key(strip(key))
            if _to_path(name, leaf, cfg, flat_base) is None:
                ok = False
                break
        if ok:
            chosen = cfg
            break
    if chosen is None:
        raise PeftInteropError(
            f"{folder}: adapter keys do not name modules of this base (e.g. {next(iter(tensors))})"
        )
    cfg = chosen
    module_leaves: dict[str, Any] = {}
    saved: dict[str, Any] = {}
    for key, x in tensors.items():
        x = np.asarray(x, np.float32)
        if key == "prompt_embeddings":
            continue
        name, leaf = _split_key(strip(key))
        m = _to_path(name, leaf, cfg, flat_base)
        if leaf == "lora_A.weight":
            module_leaves[f"{m}/lora_a"] = x.T
        elif leaf == "lora_B.weight":
            module_leaves[f"{m}/lora_b"] = x.T
        elif leaf == "lora_embedding_A":
            module_leaves[f"{m}/lora_a"] = x.T
        elif leaf == "lora_embedding_B":
            module_leaves[f"{m}/lora_b"] = x.T
        elif leaf == "ia3_l":
            module_leaves[f"{m}/{'ia3_in' if x.shape[0] == 1 else 'ia3_out'}"] = x.reshape(-1)
        else:  # a modules_to_save tensor: a plain HF parameter
            path, transpose = hf_to_path(f"{name}.{leaf}", cfg)
            saved[path] = x.T if transpose else x
    saved_cfg = _saved_config(saved, flat_base)
    if method == "lora":
        r = int(meta["r"])
        alpha = float(meta["lora_alpha"])
        rs = bool(meta.get("use_rslora", False))
        if meta.get("alpha_pattern") or meta.get("rank_pattern"):
            raise PeftInteropError("LoRA rank_pattern / alpha_pattern are not supported")
        s = alpha / (math.sqrt(r) if rs else r)
        for p in [p for p in module_leaves if p.endswith("/lora_a")]:
            module_leaves[p[: -len("lora_a")] + "lora_scale"] = np.asarray(s, np.float32)
        targets = [p[: -len("/lora_a")] for p in module_leaves if p.endswith("/lora_a")]
        dconfig = {
            "r": r,
            "alpha": alpha,
            "dropout": float(meta.get("lora_dropout", 0.0)),
            "use_rslora": rs,
            "targets": [_literal(t) for t in sorted(targets)],
            **saved_cfg,
        }
        if dconfig["dropout"]:
            for t in targets:
                if t.rsplit("/", 1)[-1] not in _EMBEDS:
                    module_leaves[f"{t}/lora_dropout"] = np.asarray(dconfig["dropout"], np.float32)
    elif method == "ia3":
        targets = sorted({p.rsplit("/", 1)[0] for p in module_leaves})
        ff = sorted({p.rsplit("/", 1)[0] for p in module_leaves if p.endswith("/ia3_in")})
        dconfig = {
            "targets": [_literal(t) for t in targets],
            "feedforward": [_literal(t) for t in ff] or "",
            **saved_cfg,
        }
    elif method == "prompt":
        prompt = np.asarray(tensors["prompt_embeddings"], np.float32)
        site = "backbone/embeddings/prompt" if "encoder" in base_params["backbone"] else "backbone/prompt"
        module_leaves[site] = prompt
        dconfig = {"num_virtual_tokens": int(prompt.shape[0]), **saved_cfg}
    else:
        if meta.get("prefix_projection"):
            raise PeftInteropError(
                "PEFT saves prefix_projection adapters collapsed but loads them only with the "
                "projection; save with prefix_projection=False"
            )
        emb = np.asarray(tensors["prompt_embeddings"], np.float32)
        p_len = emb.shape[0]
        n_layers = int(meta["num_layers"])
        rows = emb.reshape(p_len, 2 * n_layers, -1)
        prefix_mod = deltas.get("prefix")
        for i in range(n_layers):
            site = prefix_mod.site(base_params, i)
            module_leaves[f"{site}/prefix_key"] = rows[:, 2 * i]
            module_leaves[f"{site}/prefix_value"] = rows[:, 2 * i + 1]
        dconfig = {"num_virtual_tokens": int(p_len), "projection": False, **saved_cfg}
    mod = deltas.get(method)
    dconfig = deltas.check_config(mod, dconfig)
    leaves = {f"delta/{p}": jnp.asarray(x) for p, x in module_leaves.items()}
    leaves.update({p: jnp.asarray(x) for p, x in saved.items()})
    delta = tree.unflatten(leaves)
    want = tree.flatten(jax.eval_shape(lambda: mod.init(jax.random.key(0), base_params, dconfig)))
    got = tree.flatten(delta)
    if set(want) != set(got) or any(tuple(want[p].shape) != tuple(np.shape(got[p])) for p in want):
        raise PeftInteropError(
            f"{folder}: imported δ does not match ftlab's {method} layout for this base: "
            f"{sorted(set(want) ^ set(got))[:6]}"
        )
    return method, dconfig, delta


def _split_key(key: str) -> tuple[str, str]:
    for leaf in ("lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B", "ia3_l"):
        if key.endswith("." + leaf):
            return key[: -len(leaf) - 1], leaf
    name, leaf = key.rsplit(".", 1)
    return name, leaf


def _literal(path: str) -> str:
    return re.escape(path)


def _saved_config(saved: Mapping[str, Any], flat_base: Mapping[str, Any]) -> dict[str, Any]:
    """train_head / modules_to_save that select exactly the imported trained leaves."""
    head = sorted(p for p in flat_base if p.startswith("head/"))
    got_head = sorted(p for p in saved if p.startswith("head/"))
    if got_head and got_head != head:
        raise PeftInteropError(f"adapter trains part of the head ({got_head}); θ₀'s head is {head}")
    extra = sorted(p for p in saved if not p.startswith("head/"))
    return {"train_head": bool(got_head), "modules_to_save": tuple(_literal(p) for p in extra)}


__all__ = ["PeftInteropError", "export_peft", "import_peft"]
