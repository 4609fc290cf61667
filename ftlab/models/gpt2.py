"""GPT-2 decoder in Flax linen, paths mirroring Hugging Face (`transformer.` prefix stripped).

    wte/embedding, wpe/embedding, ln_f/{scale,bias}
    h/{i}/ln_1, h/{i}/attn/{c_attn,c_proj}, h/{i}/ln_2, h/{i}/mlp/{c_fc,c_proj}

HF stores these Conv1D weights as [in, out] already, so they load without a transpose. Pre-LN blocks,
learned positions, tied LM head. Attention lives in `GPT2Attention`, the feed-forward block in `GPT2MLP`.
KV cache as in ftlab.models.llama. Module-delta sites as in ftlab.models.llama: `prompt`, `input_noise` (backbone scope),
h/{i}/attn/prefix_key, prefix_value, h/{i}/attn/adapter, h/{i}/mlp/adapter (Houlsby), h/{i}/mlp/adapter_after_add
(Pfeiffer: reads mlp + x, as AdapterHub's SeqBnConfig on a pre-LN block), and every Dense / Embed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ftlab.models.configs import GPT2Config
from ftlab.models.layers import (
    Dense,
    Dropout,
    Embed,
    LayerNorm,
    activation,
    adapters,
    compute_dtype,
    constrain_rows,
    dot_product_attention,
    input_noise,
    remat_layer,
    with_prefix,
)
from ftlab.models.llama import decoder_mask, prompt_and_prefix, update_cache

Array = jax.Array


def _init(c: GPT2Config, residual: bool = False) -> Any:
    # HF scales the residual projections' init by 1/sqrt(2 * n_layer) (GPT-2 paper, section 2.3).
    std = c.initializer_range / (np.sqrt(2 * c.n_layer) if residual else 1.0)
    return nn.initializers.normal(std)


class GPT2Attention(nn.Module):
    """x: [B, T, D], mask: bool [B, 1, T, S] -> ([B, T, D], new layer cache | None)."""

    config: GPT2Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array, layer_cache: dict | None, cache_index: Any):
        c = self.config
        dt = compute_dtype(c.dtype)
        b, t, d = x.shape
        h = c.n_head
        det = self.deterministic
        qkv = Dense(3 * d, True, dt, _init(c), name="c_attn", deterministic=det)(x)
        q, k, v = (y.reshape(b, t, h, d // h) for y in jnp.split(qkv, 3, axis=-1))
        new_cache = None
        if layer_cache is not None:
            k, v, new_cache = update_cache(layer_cache, k, v, cache_index)
        if self.has_variable("delta", "prefix_key"):
            prefix = (self.get_variable("delta", "prefix_key"), self.get_variable("delta", "prefix_value"))
            k, v, mask = with_prefix(k, v, mask, *prefix)
        rng = self.make_rng("dropout") if (not self.deterministic and c.attn_pdrop > 0) else None
        scale = (d // h) ** -0.5 if c.scale_attn_weights else 1.0
        out = dot_product_attention(q, k, v, mask, dropout_rate=c.attn_pdrop, dropout_rng=rng, scale=scale,
                                    impl=c.attention if layer_cache is None else "xla", causal=True)
        out = Dense(d, True, dt, _init(c, residual=True), name="c_proj", deterministic=det)(
            out.reshape(b, t, d)
        )
        return adapters(self, Dropout(c.resid_pdrop)(out, deterministic=det)), new_cache


class GPT2MLP(nn.Module):
    config: GPT2Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, residual: Array) -> Array:
        c = self.config
        dt = compute_dtype(c.dtype)
        inner = c.n_inner or 4 * c.n_embd
        det = self.deterministic
        x = activation(c.activation_function)(
            Dense(inner, True, dt, _init(c), name="c_fc", deterministic=det)(x)
        )
        x = Dense(c.n_embd, True, dt, _init(c, residual=True), name="c_proj", deterministic=det)(x)
        out = adapters(self, Dropout(c.resid_pdrop)(x, deterministic=det))
        return adapters(self, out, "adapter_after_add", read=lambda s: s + residual)


class GPT2Block(nn.Module):
    config: GPT2Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array, layer_cache: dict | None, cache_index: Any):
        c = self.config
        dt = compute_dtype(c.dtype)
        h, new_cache = GPT2Attention(c, self.deterministic, name="attn")(
            LayerNorm(c.layer_norm_epsilon, dt, name="ln_1")(x), mask, layer_cache, cache_index
        )
        x = x + h
        x = x + GPT2MLP(c, self.deterministic, name="mlp")(
            LayerNorm(c.layer_norm_epsilon, dt, name="ln_2")(x), x
        )
        return x, new_cache


class GPT2Layers(nn.Module):
    """The `h` container: children "0".."L-1"."""

    config: GPT2Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, cache, cache_index):
        block_cls = remat_layer(GPT2Block, self.config.remat)
        new_cache = {} if cache is not None else None
        for i in range(self.config.n_layer):
            x, lc = block_cls(self.config, self.deterministic, name=str(i))(
                x, mask, None if cache is None else cache[str(i)], cache_index
            )
            x = constrain_rows(x)
            if cache is not None:
                new_cache[str(i)] = lc
        return x, new_cache


class GPT2Model(nn.Module):
    """Backbone. Returns ({'hidden': [B, P+T, D], 'pooled': None, 'embedding': [V, D], 'mask': [B, P+S],
    'num_prompt': P}, new_cache | None), as LlamaModel."""

    config: GPT2Config

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
            position_ids = jnp.broadcast_to(
                jnp.arange(t) + (0 if cache_index is None else cache_index), (b, t)
            )
        wte = Embed(c.vocab_size, c.n_embd, dt, _init(c), name="wte")
        x, attention_mask, position_ids, num_prompt = prompt_and_prefix(
            self, input_noise(self, wte(input_ids)), attention_mask, position_ids, cache, "h/0/attn/prefix_key"
        )
        t = x.shape[1]
        x = x + Embed(c.n_positions, c.n_embd, dt, _init(c), name="wpe")(position_ids)
        x = Dropout(c.embd_pdrop)(x, deterministic=deterministic)
        mask = decoder_mask(attention_mask, t, cache_index if cache is not None else None)
        x, new_cache = GPT2Layers(c, deterministic, name="h")(x, mask, cache, cache_index)
        x = LayerNorm(c.layer_norm_epsilon, dt, name="ln_f")(x)
        out = {
            "hidden": x,
            "pooled": None,
            "embedding": wte.embedding,
            "mask": attention_mask,
            "num_prompt": num_prompt,
        }
        return out, new_cache
