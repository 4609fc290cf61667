"""Autoregressive generation for ftlab decoders (Llama family, GPT-2) and T5 (encoder–decoder) with a KV cache.

A prefill over the (left-padded) prompt writes its keys/values into a cache of S = T + N slots; each of the
N decode steps (a lax.scan, all in one jit) writes slot T + i. Position ids follow HF `generate`: cumsum(mask) - 1, so a
left-padded row sees the same positions as the unpadded prompt. Greedy or temperature / top-k sampling.

T5 (`generate_seq2seq`): the encoder runs once over the (right- or left-padded) input; the first decoder step
feeds `decoder_start_token_id` and stores every block's cross-attention keys/values of the encoder output in
the cache next to the self-attention slots (N + 1 of them), so later steps project nothing from the encoder.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ftlab.models.configs import GPT2Config, LlamaConfig

Array = jax.Array


def init_cache(config: LlamaConfig | GPT2Config, batch: int, max_len: int, dtype: Any = jnp.float32) -> dict:
    """Zero cache {"i": {"k": [B, S, K, Dh], "v": [B, S, K, Dh]}} for every layer i."""
    if isinstance(config, LlamaConfig):
        n, kh, dh = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    elif isinstance(config, GPT2Config):
        n, kh, dh = config.n_layer, config.n_head, config.n_embd // config.n_head
    else:
        raise TypeError(f"generation needs a decoder config, got {type(config).__name__}")
    shape = (batch, max_len, kh, dh)
    return {str(i): {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for i in range(n)}


def _select(logits: Array, greedy: bool, temperature: float, top_k: int | None, rng: Array) -> Array:
    """logits: [B, V] -> token ids [B]."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate(
    model: nn.Module,
    params: dict[str, Any],
    input_ids: Any,
    attention_mask: Any = None,
    max_new_tokens: int = 20,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    rng: Array | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    delta: dict[str, Any] | None = None,
) -> np.ndarray:
    """New tokens [B, max_new_tokens] for a causal_lm `model` (from build_model(cfg, 'causal_lm')).

    input_ids, attention_mask: [B, T], prompts LEFT-padded (mask 0 on the left). After a row emits
    `eos_token_id` it is filled with `pad_token_id` (default: the first eos id), as HF does.
    `delta`: a module delta's `delta` collection (e.g. `ftlab.deltas.prefix.apply(θ₀, δ)['delta']`, with
    params = that call's 'params'); a prefix occupies P extra key/value slots in every step.
    The prefill and the decode loop (lax.scan over steps) are one jitted function, cached per
    (model, shapes, sampling settings).
    """
    if getattr(model, "head", None) != "causal_lm":
        raise ValueError("generate needs a model built with head='causal_lm'")
    if not greedy and rng is None:
        raise ValueError("sampling (greedy=False) needs rng")
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    if bool(jnp.any(mask[:, -1] == 0)):
        raise ValueError("prompts must be left-padded: attention_mask[:, -1] must be 1 for every row")
    eos = () if eos_token_id is None else tuple(int(e) for e in np.atleast_1d(eos_token_id))
    pad = int(pad_token_id) if pad_token_id is not None else (eos[0] if eos else 0)
    rng = jax.random.key(0) if rng is None else rng
    variables = {"params": params} if delta is None else {"params": params, "delta": delta}
    out = _generate(
        model, variables, ids, mask, rng, max_new_tokens, greedy, float(temperature), top_k, eos, pad
    )
    return np.asarray(out)


@partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9, 10))
def _generate(model, variables, ids, mask, rng, max_new_tokens, greedy, temperature, top_k, eos, pad):
    b, t = ids.shape
    s = t + max_new_tokens
    key_mask = jnp.concatenate([mask, jnp.ones((b, max_new_tokens), jnp.int32)], axis=1)
    # As HF generate: positions count real tokens only, so left padding does not shift them.
    positions = jnp.where(mask == 0, 1, jnp.cumsum(mask, axis=1) - 1)
    dtype = jnp.bfloat16 if model.config.dtype == "bfloat16" else jnp.float32
    cache = init_cache(model.config, b, s, dtype)
    logits, cache = model.apply(variables, ids, key_mask, position_ids=positions, cache=cache, cache_index=0)
    eos_arr = jnp.asarray(eos if eos else (-1,), jnp.int32)

    def step(carry, i):
        logits, cache, position, done = carry
        token = _select(logits, greedy, temperature, top_k, jax.random.fold_in(rng, i))
        token = jnp.where(done, pad, token)
        if eos:
            done = done | jnp.isin(token, eos_arr)
        position = position + 1
        logits, cache = model.apply(
            variables,
            token[:, None],
            key_mask,
            position_ids=position[:, None],
            cache=cache,
            cache_index=t + i,
        )
        return (logits[:, -1], cache, position, done), token

    # The last step's forward pass is wasted work, but keeps the scan body uniform (one compile).
    init = (logits[:, -1], cache, positions[:, -1], jnp.zeros((b,), bool))
    _, tokens = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
    return tokens.T


def generate_seq2seq(
    model: nn.Module,
    params: dict[str, Any],
    input_ids: Any,
    attention_mask: Any = None,
    max_new_tokens: int = 20,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    rng: Array | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    decoder_start_token_id: int | None = None,
    delta: dict[str, Any] | None = None,
) -> np.ndarray:
    """New tokens [B, max_new_tokens] of a T5 `model` (build_model(cfg, 'seq2seq_lm')) for encoder inputs
    input_ids, attention_mask [B, S] (any padding side). Defaults from the model config: eos_token_id,
    pad_token_id (fills a row after its eos, as HF) and decoder_start_token_id (raises if the config has none).
    HF's `generate` returns the start token first; these are the tokens after it. `delta` as in `generate`."""
    from ftlab.models.configs import T5Config

    c = model.config
    if not isinstance(c, T5Config) or getattr(model, "head", None) != "seq2seq_lm":
        raise ValueError("generate_seq2seq needs a T5 model built with head='seq2seq_lm'")
    if not greedy and rng is None:
        raise ValueError("sampling (greedy=False) needs rng")
    start = c.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
    if start is None:
        raise ValueError("no decoder_start_token_id: the config has none (T5 checkpoints use 0); pass it")
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    eos_token_id = c.eos_token_id if eos_token_id is None else eos_token_id
    eos = () if eos_token_id is None else tuple(int(e) for e in np.atleast_1d(eos_token_id))
    pad = int(pad_token_id) if pad_token_id is not None else (c.pad_token_id if c.pad_token_id is not None else
                                                                (eos[0] if eos else 0))
    rng = jax.random.key(0) if rng is None else rng
    variables = {"params": params} if delta is None else {"params": params, "delta": delta}
    out = _generate_seq2seq(model, variables, ids, mask, rng, max_new_tokens, greedy, float(temperature), top_k,
                            eos, pad, int(start))
    return np.asarray(out)


@partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9, 10, 11))
def _generate_seq2seq(model, variables, ids, mask, rng, max_new_tokens, greedy, temperature, top_k, eos, pad, start):
    from ftlab.models.t5 import init_seq2seq_cache

    b, s_enc = ids.shape
    slots = max_new_tokens + 1  # the start token, then one slot per fed token
    dtype = jnp.bfloat16 if model.config.dtype == "bfloat16" else jnp.float32
    cache = init_seq2seq_cache(model.config, b, slots, s_enc, dtype)
    enc = model.apply(variables, ids, mask, encode_only=True)
    dec_mask = jnp.ones((b, slots), jnp.int32)
    first = jnp.full((b, 1), start, jnp.int32)
    logits, cache = model.apply(variables, None, mask, first, dec_mask, encoder_hidden=enc, cache=cache,
                                cache_index=0)
    eos_arr = jnp.asarray(eos if eos else (-1,), jnp.int32)

    def step(carry, i):
        logits, cache, done = carry
        token = _select(logits, greedy, temperature, top_k, jax.random.fold_in(rng, i))
        token = jnp.where(done, pad, token)
        if eos:
            done = done | jnp.isin(token, eos_arr)
        # No input_ids / encoder_hidden: the cross-attention keys/values come from the cache.
        logits, cache = model.apply(variables, None, mask, token[:, None], dec_mask, cache=cache, cache_index=i + 1)
        return (logits[:, -1], cache, done), token

    _, tokens = jax.lax.scan(step, (logits[:, -1], cache, jnp.zeros((b,), bool)), jnp.arange(max_new_tokens))
    return tokens.T
