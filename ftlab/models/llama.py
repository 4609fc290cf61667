"""Llama-family decoder (Llama, SmolLM2, Qwen2-style biases) in Flax linen, paths mirroring Hugging Face.

    embed_tokens/embedding, norm/scale
    layers/{i}/input_layernorm/scale, layers/{i}/post_attention_layernorm/scale
    layers/{i}/self_attn/{q_proj,k_proj,v_proj,o_proj}/{kernel,bias?}
    layers/{i}/mlp/{gate_proj,up_proj,down_proj}/{kernel,bias?}

Pre-RMSNorm blocks, RoPE (default / linear / llama3 scaling), grouped-query attention, SwiGLU MLP.
Attention lives in `LlamaAttention`, the feed-forward block in `LlamaMLP` (the delta sites):

    every Dense                           lora_*, ia3_in/ia3_out (layers.Dense); embed_tokens: lora_a/lora_b
    prompt [P, D]                         soft prompt prepended to the token embeddings (positions 0..P-1)
    input_noise [B, T, D]                 added to the T tokens' embeddings before the prompt is prepended
                                          (ftlab.train.regularizers' perturbation)
    layers/{i}/self_attn/prefix_key, prefix_value [P, K*Dh]   prefix tuning: P extra key/value slots before
                                          the real (or cached) ones, not rotated; real tokens' positions are
                                          shifted by P, as HF does when PEFT passes the prefix as past_key_values
    layers/{i}/self_attn/adapter, layers/{i}/mlp/adapter      bottleneck adapters on the sub-block output,
                                          before the residual add (Houlsby)
    layers/{i}/mlp/adapter_after_add      Pfeiffer (AdapterHub SeqBnConfig on a pre-LN block): each adapter
                                          reads mlp + x and adds to the MLP output: x + s, s = mlp + U(f(D(s + x)))

KV cache (generation): `cache` is {"0": {"k": [B, S, K, Dh], "v": [B, S, K, Dh]}, ...}; the T new tokens
are written at slots cache_index .. cache_index+T-1 and attend to every slot <= their own whose
attention_mask ([B, S] over slots) is 1.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ftlab.models.configs import LlamaConfig
from ftlab.models.layers import (
    Dense,
    Embed,
    RMSNorm,
    activation,
    adapters,
    apply_rope,
    causal_mask,
    compute_dtype,
    constrain_rows,
    delta_leaf,
    dot_product_attention,
    input_noise,
    padding_mask,
    remat_layer,
    rope_inv_freq,
    with_prefix,
)

Array = jax.Array


def update_cache(layer_cache: dict, k: Array, v: Array, index: Array) -> tuple[Array, Array, dict]:
    """Write k/v [B, T, K, Dh] at slot `index` of the cache; returns full k, v [B, S, K, Dh] and the new cache."""
    zero = jnp.zeros((), jnp.int32)
    start = (zero, jnp.asarray(index, jnp.int32), zero, zero)
    ck = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), start)
    cv = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), start)
    return ck.astype(k.dtype), cv.astype(v.dtype), {"k": ck, "v": cv}


def decoder_mask(attention_mask: Array, t: int, cache_index: Array | int | None) -> Array:
    """bool [B, 1, T, S]: causal over slots and padding. attention_mask: [B, S] (S = T without a cache)."""
    s = attention_mask.shape[1]
    start = 0 if cache_index is None else cache_index
    q_slots = jnp.arange(t) + start
    return causal_mask(q_slots, s) & padding_mask(attention_mask)


class LlamaAttention(nn.Module):
    """x: [B, T, D], positions: [B, T], mask: bool [B, 1, T, S] -> ([B, T, D], new layer cache | None)."""

    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, positions: Array, mask: Array, layer_cache: dict | None, cache_index: Any):
        c = self.config
        dt = compute_dtype(c.dtype)
        init = nn.initializers.normal(c.initializer_range)
        h, kh, dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        b, t, _ = x.shape
        det = self.deterministic
        q = Dense(h * dh, c.qkv_bias, dt, init, name="q_proj", deterministic=det)(x).reshape(b, t, h, dh)
        k = Dense(kh * dh, c.qkv_bias, dt, init, name="k_proj", deterministic=det)(x).reshape(b, t, kh, dh)
        v = Dense(kh * dh, c.qkv_bias, dt, init, name="v_proj", deterministic=det)(x).reshape(b, t, kh, dh)
        inv_freq = rope_inv_freq(dh, c.rope_theta, c.rope_scaling)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        new_cache = None
        if layer_cache is not None:
            k, v, new_cache = update_cache(layer_cache, k, v, cache_index)
        if self.has_variable("delta", "prefix_key"):
            prefix = (self.get_variable("delta", "prefix_key"), self.get_variable("delta", "prefix_value"))
            k, v, mask = with_prefix(k, v, mask, *prefix)
        rate = c.attention_dropout
        rng = self.make_rng("dropout") if (not self.deterministic and rate > 0) else None
        out = dot_product_attention(q, k, v, mask, dropout_rate=rate, dropout_rng=rng,
                                    impl=c.attention if layer_cache is None else "xla",
                                    causal=True)
        out = Dense(c.hidden_size, c.o_bias, dt, init, name="o_proj", deterministic=det)(
            out.reshape(b, t, h * dh)
        )
        return adapters(self, out), new_cache


class LlamaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)). [B, T, D] -> [B, T, D]; `residual` (the block input) is read by the
    Pfeiffer adapters at `adapter_after_add`."""

    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, residual: Array) -> Array:
        c = self.config
        dt = compute_dtype(c.dtype)
        init = nn.initializers.normal(c.initializer_range)
        det = self.deterministic
        gate = Dense(c.intermediate_size, c.mlp_bias, dt, init, name="gate_proj", deterministic=det)(x)
        up = Dense(c.intermediate_size, c.mlp_bias, dt, init, name="up_proj", deterministic=det)(x)
        down = Dense(c.hidden_size, c.mlp_bias, dt, init, name="down_proj", deterministic=det)
        out = adapters(self, down(activation(c.hidden_act)(gate) * up))
        return adapters(self, out, "adapter_after_add", read=lambda s: s + residual)


class LlamaDecoderLayer(nn.Module):
    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, positions: Array, mask: Array, layer_cache: dict | None, cache_index: Any):
        c = self.config
        dt = compute_dtype(c.dtype)
        h = RMSNorm(c.rms_norm_eps, dt, name="input_layernorm")(x)
        h, new_cache = LlamaAttention(c, self.deterministic, name="self_attn")(
            h, positions, mask, layer_cache, cache_index
        )
        x = x + h
        x = x + LlamaMLP(c, self.deterministic, name="mlp")(
            RMSNorm(c.rms_norm_eps, dt, name="post_attention_layernorm")(x), x
        )
        return x, new_cache


class LlamaLayers(nn.Module):
    """The `layers` container: children "0".."L-1"."""

    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, positions, mask, cache, cache_index):
        layer_cls = remat_layer(LlamaDecoderLayer, self.config.remat)
        new_cache = {} if cache is not None else None
        for i in range(self.config.num_hidden_layers):
            layer_cache = None if cache is None else cache[str(i)]
            x, lc = layer_cls(self.config, self.deterministic, name=str(i))(
                x, positions, mask, layer_cache, cache_index
            )
            x = constrain_rows(x)
            if cache is not None:
                new_cache[str(i)] = lc
        return x, new_cache


class LlamaModel(nn.Module):
    """Backbone. Returns ({'hidden': [B, P+T, D], 'pooled': None, 'embedding': [V, D], 'mask': [B, P+S],
    'num_prompt': P}, new_cache | None); P = soft-prompt length (0 without prompt tuning)."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        deterministic: bool = True,
        position_ids: Array | None = None,
        cache: dict | None = None,
        cache_index: Array | int | None = None,
    ):
        c = self.config
        dt = compute_dtype(c.dtype)
        b, t = input_ids.shape
        if cache is not None and cache_index is None:
            raise ValueError("a cache needs cache_index (slot of the first new token)")
        if attention_mask is None:
            s = t if cache is None else cache["0"]["k"].shape[1]
            attention_mask = jnp.ones((b, s), jnp.int32)
        if position_ids is None:
            # As HF's forward: positions count slots, padding or not (generate passes mask-based positions).
            position_ids = jnp.broadcast_to(
                jnp.arange(t) + (0 if cache_index is None else cache_index), (b, t)
            )
        embed = Embed(
            c.vocab_size, c.hidden_size, dt, nn.initializers.normal(c.initializer_range), name="embed_tokens"
        )
        x = input_noise(self, embed(input_ids))
        x, attention_mask, position_ids, num_prompt = prompt_and_prefix(
            self, x, attention_mask, position_ids, cache, "layers/0/self_attn/prefix_key"
        )
        t = x.shape[1]
        mask = decoder_mask(attention_mask, t, cache_index if cache is not None else None)
        x, new_cache = LlamaLayers(c, deterministic, name="layers")(x, position_ids, mask, cache, cache_index)
        x = RMSNorm(c.rms_norm_eps, dt, name="norm")(x)
        out = {
            "hidden": x,
            "pooled": None,
            "embedding": embed.embedding,
            "mask": attention_mask,
            "num_prompt": num_prompt,
        }
        return out, new_cache


def prompt_and_prefix(
    module: nn.Module,
    x: Array,
    attention_mask: Array,
    position_ids: Array,
    cache: dict | None,
    prefix_path: str,
) -> tuple[Array, Array, Array, int]:
    """Decoder inputs with prompt / prefix tuning applied (shared by Llama and GPT-2).

    x: [B, T, D] token embeddings; attention_mask [B, S]; position_ids [B, T] of the real tokens.
    Soft prompt (delta `prompt` [P, D] in `module`'s scope): prepended, mask extended with ones, positions
    0..P-1 for the prompt and the given positions + P for the tokens (HF on PEFT's `inputs_embeds`).
    Prefix (delta at `prefix_path`, length P): positions + P, as HF counts the past key/values PEFT passes.
    Returns (x [B, P+T, D], attention_mask [B, P+S], position_ids [B, P+T], P of the prompt).
    """
    b = x.shape[0]
    prefix = delta_leaf(module, prefix_path)
    if prefix is not None:
        position_ids = position_ids + prefix.shape[0]
    if not module.has_variable("delta", "prompt"):
        return x, attention_mask, position_ids, 0
    if cache is not None:
        raise ValueError("prompt tuning with a KV cache is not supported (run the prompt without a cache)")
    prompt = module.get_variable("delta", "prompt").astype(x.dtype)
    p = prompt.shape[0]
    x = jnp.concatenate([jnp.broadcast_to(prompt[None], (b, p, prompt.shape[1])), x], axis=1)
    attention_mask = jnp.concatenate([jnp.ones((b, p), attention_mask.dtype), attention_mask], axis=1)
    position_ids = jnp.concatenate(
        [jnp.broadcast_to(jnp.arange(p), (b, p)).astype(position_ids.dtype), position_ids + p], axis=1
    )
    return x, attention_mask, position_ids, p
