"""ftlab's own Flax linen models: BERT family, Llama family, GPT-2, T5 (encoder–decoder), with task heads.

Public API:
    build_model(config, head=None, num_labels=2, pooling="default") -> nn.Module
    init_params(model, rng, base_params, example_input_ids) -> (params, fresh_paths)
    initializer_for(path, shape, config, rng) -> array        # the model's own initialiser for one leaf
    BertConfig, LlamaConfig, GPT2Config, T5Config, config_from_hf
    build_multitask_model(config, heads, pooling="default") -> MultiTaskModel   # shared backbone, named heads
    named_head(params, name) / single_head(params, name)  # head/... <-> head/<name>/... (ftlab.models.multihead)

Call: `model.apply({'params': params}, input_ids, attention_mask=None, token_type_ids=None,
deterministic=True, rngs={'dropout': key})`, input_ids int32 [B, T], attention_mask [B, T] (1 = real).
Returns hidden [B, T, D] (head=None), [B, num_labels] (sequence_classification), [B, T, num_labels]
(token_classification) or [B, T, V] (masked_lm, causal_lm), always float32.
The parameter tree is {'backbone': ..., 'head': ...}, paths mirroring Hugging Face names (see
ftlab.checkpoint.hf for the conversion table).
T5 (head None | 'seq2seq_lm') has its own call with decoder inputs: see ftlab.models.t5.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ftlab import tree
from ftlab.models.configs import (
    BertConfig,
    GPT2Config,
    LlamaConfig,
    ModelConfig,
    T5Config,
    config_from_hf,
    family,
)
from ftlab.models.heads import HEADS, POOLINGS, TaskModel
from ftlab.models.multihead import MultiTaskModel, build_multitask_model, named_head, single_head

__all__ = [
    "BertConfig",
    "GPT2Config",
    "LlamaConfig",
    "ModelConfig",
    "MultiTaskModel",
    "T5Config",
    "TaskModel",
    "build_model",
    "build_multitask_model",
    "config_from_hf",
    "family",
    "init_params",
    "initializer_for",
    "named_head",
    "single_head",
]


def build_model(
    config: ModelConfig, head: str | None = None, num_labels: int = 2, pooling: str = "default"
) -> nn.Module:
    """The task model for `config`. head in (None, 'sequence_classification', 'token_classification',
    'masked_lm', 'causal_lm'); pooling in ('default', 'pooler', 'cls', 'mean', 'last'). T5: head None or
    'seq2seq_lm' (ftlab.models.t5.T5TaskModel)."""
    if isinstance(config, T5Config):
        from ftlab.models.t5 import T5TaskModel

        if head not in (None, "seq2seq_lm"):
            raise ValueError(f"the t5 family supports head None or 'seq2seq_lm', not {head!r}")
        return T5TaskModel(config, head)
    if head == "seq2seq_lm":
        raise ValueError(f"head 'seq2seq_lm' needs an encoder–decoder (t5 family), got {family(config)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose from {HEADS}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")
    fam = family(config)
    if head == "masked_lm" and fam != "bert":
        raise ValueError(f"head 'masked_lm' needs the bert family, got {fam}")
    if head == "causal_lm" and fam == "bert":
        raise ValueError("head 'causal_lm' needs a decoder (llama or gpt2), got bert")
    return TaskModel(config, head, num_labels, pooling)


def initializer_for(path: str, shape: Sequence[int], config: ModelConfig, rng: jax.Array) -> jax.Array:
    """Fresh float32 value for the leaf at `path`, as the model (and HF's `_init_weights`) initialises it:
    kernel/embedding ~ N(0, initializer_range), bias 0, norm scale 1; GPT-2's residual projections
    (`c_proj`) use std / sqrt(2 n_layer) as HF does. T5: HF's per-matrix stds (`_t5_std`)."""
    leaf = path.rsplit("/", 1)[-1]
    if isinstance(config, T5Config):
        if leaf == "scale":
            return jnp.full(tuple(shape), config.initializer_factor, jnp.float32)
        return _t5_std(path, config) * jax.random.normal(rng, tuple(shape), jnp.float32)
    if leaf in ("kernel", "embedding"):
        std = config.initializer_range
        if isinstance(config, GPT2Config) and path.endswith("c_proj/kernel"):
            std = std / np.sqrt(2 * config.n_layer)
        return std * jax.random.normal(rng, tuple(shape), jnp.float32)
    if leaf == "bias":
        return jnp.zeros(tuple(shape), jnp.float32)
    if leaf == "scale":
        return jnp.ones(tuple(shape), jnp.float32)
    raise ValueError(f"no initialiser for leaf {path!r}")


def _t5_std(path: str, c: T5Config) -> float:
    """T5PreTrainedModel._init_weights: std of the kernel/embedding at `path` (times initializer_factor)."""
    module = path.rsplit("/", 2)[-2]
    d, dh, h = c.d_model, c.d_kv, c.num_heads
    stds = {"shared": 1.0, "lm_head": 1.0, "q": (d * dh) ** -0.5, "k": d**-0.5, "v": d**-0.5, "o": (h * dh) ** -0.5,
            "relative_attention_bias": d**-0.5, "wi": d**-0.5, "wi_0": d**-0.5, "wi_1": d**-0.5, "wo": c.d_ff**-0.5}
    if module not in stds:
        raise ValueError(f"no T5 initialiser for leaf {path!r}")
    return c.initializer_factor * stds[module]


def init_params(
    model: nn.Module, rng: jax.Array, base_params: dict[str, Any], example_input_ids: Any
) -> tuple[dict[str, Any], list[str]]:
    """Full parameter tree for `model`: every leaf of base_params overlaid, the rest freshly initialised.

    Raises ValueError naming the path if a base leaf does not exist in the model or its shape differs.
    Returns (params, fresh_paths) with fresh_paths the sorted "/"-paths initialised here (e.g. the head).
    Shapes come from `jax.eval_shape`, so no random values are drawn for leaves that base_params supplies.
    """
    ids = jnp.asarray(example_input_ids, jnp.int32)
    # T5 traces its decoder on the same ids (shapes only: no decoder_start_token_id needed).
    extra = {"decoder_input_ids": ids} if isinstance(model.config, T5Config) else {}
    shapes = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, ids, **extra), rng)["params"]
    want = tree.flatten(shapes)
    have = tree.flatten(base_params)
    for p, x in have.items():
        if p not in want:
            raise ValueError(f"base parameter {p!r} (shape {tuple(np.shape(x))}) does not exist in the model")
        if tuple(np.shape(x)) != tuple(want[p].shape):
            raise ValueError(
                f"base parameter {p!r} has shape {tuple(np.shape(x))}, the model expects {tuple(want[p].shape)}"
            )
    out: dict[str, Any] = {}
    fresh = []
    for p, s in want.items():
        if p in have:
            out[p] = jnp.asarray(have[p], jnp.float32)
        else:
            key = jax.random.fold_in(rng, zlib.crc32(p.encode()))
            out[p] = initializer_for(p, s.shape, model.config, key)
            fresh.append(p)
    return tree.unflatten(out), sorted(fresh)
