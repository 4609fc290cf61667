"""Prompt tuning: P trained "soft prompt" vectors prepended to the input embeddings.

Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning". The model reads delta `prompt`
[P, D] (BERT: backbone/embeddings/prompt, decoders: backbone/prompt) and runs on P + T positions exactly as
Hugging Face PEFT feeds `inputs_embeds = [prompt; embed(ids)]`: attention mask extended with ones, positions
0..P+T-1 (the prompt takes positions 0..P-1, the tokens move up by P), token type 0 for the prompt, and
BERT's pooler / 'cls' pooling read position 0 — the first prompt vector. Per-token outputs are returned
for the T input tokens. Not an identity at init (the prompt changes every position's context).

Initialisation (`init`): 'vocab' (default) — embeddings of P token ids drawn uniformly from the vocabulary
(Lester et al.'s sampled-vocabulary init); 'text' — the embeddings of `init_text` tokenized with `tokenizer`
(a short name or folder for ftlab.checkpoint.load_base; special tokens included, repeated / truncated to P,
as PEFT's TEXT init), or of the ids in `init_ids`; 'random' — N(0, 1) (PEFT's RANDOM, nn.Embedding's init).

Config keys: num_virtual_tokens, init, init_text, init_ids, tokenizer, train_head, modules_to_save.
Trainable parameters: P · D + |head| + |modules_to_save|.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab.deltas import _module

DEFAULTS: dict[str, Any] = {
    "num_virtual_tokens": 20,
    "init": "vocab",
    "init_text": "",
    "init_ids": (),
    "tokenizer": "",
    "train_head": True,
    "modules_to_save": (),
}


def site(base_params: Mapping[str, Any]) -> str:
    if _module.family(base_params) == "t5":
        raise ValueError("prompt tuning: ftlab's T5 has no soft-prompt site (supported: bert, llama, gpt2)")
    return "backbone/embeddings/prompt" if _module.family(base_params) == "bert" else "backbone/prompt"


def word_embeddings(base_params: Mapping[str, Any]) -> Any:
    bb = base_params["backbone"]
    fam = _module.family(base_params)
    site(base_params)  # refuses T5
    if fam == "bert":
        return bb["embeddings"]["word_embeddings"]["embedding"]
    return bb["embed_tokens" if fam == "llama" else "wte"]["embedding"]


def text_ids(config: Mapping[str, Any]) -> list[int]:
    """Token ids for the 'text' init, repeated / truncated to P as PEFT does."""
    ids: Sequence[int] = list(config["init_ids"])
    if not ids:
        if not (config["init_text"] and config["tokenizer"]):
            raise ValueError("prompt: init='text' needs init_ids, or init_text and tokenizer")
        from ftlab.checkpoint import load_base

        ids = load_base(config["tokenizer"]).tokenizer(config["init_text"])["input_ids"]
    p = int(config["num_virtual_tokens"])
    reps = -(-p // len(ids))
    return (list(ids) * reps)[:p]


def init(rng: jax.Array, base_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    table = word_embeddings(base_params)
    p, (v, d) = int(config["num_virtual_tokens"]), table.shape
    if config["init"] == "vocab":
        prompt = jnp.take(jnp.asarray(table), jax.random.randint(rng, (p,), 0, v), axis=0)
    elif config["init"] == "text":
        prompt = jnp.take(jnp.asarray(table), jnp.asarray(text_ids(config), jnp.int32), axis=0)
    elif config["init"] == "random":
        prompt = jax.random.normal(rng, (p, d), jnp.float32)
    else:
        raise ValueError(f"prompt: unknown init {config['init']!r} (vocab, text, random)")
    return _module.build(
        {site(base_params): jnp.asarray(prompt, jnp.float32)}, _module.copy_saved(base_params, config)
    )


apply = _module.apply
trainable = _module.trainable
to_disk = _module.to_disk


def from_disk(
    arrays: Mapping[str, np.ndarray], base_params: Mapping[str, Any], config: Mapping[str, Any]
) -> Any:
    return _module.from_disk(sys.modules[__name__], arrays, base_params, config)


def num_trainable(base_params: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    d = word_embeddings(base_params).shape[1]
    return int(config["num_virtual_tokens"]) * d + _module.num_saved(base_params, config)
