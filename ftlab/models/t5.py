"""T5 encoder–decoder (T5 v1.0, T5 v1.1 / Flan-T5) in Flax linen, parameter paths = Hugging Face names.

Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer";
T5 v1.1 (gated-GELU feed-forward, untied LM head) and Flan-T5 (Chung et al. 2022) share the architecture.

    backbone/shared/embedding                                         [V, D] (encoder and decoder inputs)
    backbone/{encoder,decoder}/block/{i}/layer/0/SelfAttention/{q,k,v,o}/kernel
    backbone/{encoder,decoder}/block/0/layer/0/SelfAttention/relative_attention_bias/embedding   [buckets, H]
    backbone/{encoder,decoder}/block/{i}/layer/0/layer_norm/scale
    backbone/decoder/block/{i}/layer/1/EncDecAttention/{q,k,v,o}/kernel, .../layer/1/layer_norm/scale
    backbone/{encoder,decoder}/block/{i}/layer/F/DenseReluDense/{wi | wi_0, wi_1}/kernel, .../wo/kernel
    backbone/{encoder,decoder}/block/{i}/layer/F/layer_norm/scale     (F = 1 in the encoder, 2 in the decoder)
    backbone/{encoder,decoder}/final_layer_norm/scale
    head/lm_head/kernel                                               [D, V] (untied LM head only)

Pre-norm blocks with T5's RMS norm (no mean subtraction, no bias), no biases anywhere, and attention scores
that are *not* scaled by 1/sqrt(Dh) (T5 folds that into the initialisation). Positions enter only as a learned
bias per (relative-position bucket, head) added to the self-attention scores: computed by block 0 of each stack
and shared by all its blocks (HF's `position_bias`), bidirectional buckets in the encoder, causal ones in the
decoder; cross-attention has none. Feed-forward: `feed_forward_proj` 'relu' = wo(relu(wi x)) (v1.0),
'gated-gelu' = wo(gelu_tanh(wi_0 x) * wi_1 x) (v1.1 / Flan). LM head: tied to `shared` with the decoder output
scaled by D**-0.5 (`scale_decoder_outputs`, HF's rule), or the untied `lm_head`. Dropout (`dropout_rate`) on
the embeddings, every sub-block output, the feed-forward activation, the attention probabilities and each
stack's output, as HF.

Call (`build_model(cfg, 'seq2seq_lm' | None)`):

    model.apply(variables, input_ids [B, S], attention_mask [B, S], decoder_input_ids [B', T],
                decoder_attention_mask [B', T], deterministic=True, encoder_rows [B'] | None)
        -> logits [B', T, V] ('seq2seq_lm') or decoder hidden states [B', T, D] (head None), float32

`encoder_rows` lets several decoder rows read one encoder row (row r reads encoder row encoder_rows[r]; B' may
differ from B): the seq2seq label scorer runs each input through the encoder once for all its label words.
Without `decoder_input_ids` the decoder runs one step on `decoder_start_token_id` (the first target token's
distribution; what `init_params` traces). `method='encode'` / `method='decode'` run one half (generation).

Module-delta sites: every Dense (`lora_*`, `ia3_in` / `ia3_out`, layers.Dense) and `shared` (LoRA on the
embedding, layers.Embed; the tied LM head uses the base table, as PEFT).

KV cache (decoder, generation): {"i": {"k", "v": [B, S, H, Dh] self-attention slots, "cross_k", "cross_v":
[B, S_enc, H, Dh]}} per decoder block. A call given `encoder_hidden` computes the cross-attention keys/values
and stores them; a call without reads them from the cache, so the encoder output is projected once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ftlab.models.configs import T5Config
from ftlab.models.layers import (
    Dense,
    Dropout,
    Embed,
    RMSNorm,
    activation,
    compute_dtype,
    constrain_rows,
    dropout_keep_mask,
    padding_mask,
    remat_layer,
)
from ftlab.models.llama import decoder_mask, update_cache

Array = jax.Array


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
    """Mesh TensorFlow's bucketing, as HF `T5Attention._relative_position_bucket` (same float32 arithmetic).

    relative_position = key position - query position (int array) -> bucket ids in [0, num_buckets). Half the
    buckets (per direction when bidirectional) hold exact distances < max_exact = buckets/2, the rest
    logarithmic bins up to max_distance; a decoder (not bidirectional) maps every future key to bucket 0."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        relative_position = jnp.abs(relative_position)
    else:
        relative_position = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # log(0) = -inf only where is_small selects the exact branch.
    ratio = relative_position.astype(jnp.float32) / jnp.float32(max_exact)
    large = jnp.log(jnp.maximum(ratio, jnp.float32(1e-30))) / jnp.float32(np.log(max_distance / max_exact))
    large = max_exact + (large * jnp.float32(num_buckets - max_exact)).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, relative_position, large)


def t5_attention(q: Array, k: Array, v: Array, bias: Array | None, mask: Array | None, dropout_rate: float = 0.0,
                 dropout_rng: Array | None = None) -> Array:
    """softmax(q kᵀ + bias) v without 1/sqrt(Dh) scaling (T5). q: [B, T, H, Dh], k/v: [B, S, H, Dh],
    bias: [1|B, H, T, S], mask: bool broadcastable to [B, H, T, S] (True = attend) -> [B, T, H, Dh].
    Scores and softmax in float32 (at least); masked scores get finfo.min so a fully masked row stays finite."""
    stat = jnp.promote_types(q.dtype, jnp.float32)
    scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(stat)
    if bias is not None:
        scores = scores + bias.astype(stat)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(stat).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = dropout_keep_mask(dropout_rng, dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0).astype(q.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs, v.astype(q.dtype))


def _init(std: float) -> Any:
    return nn.initializers.normal(std)


class T5Attention(nn.Module):
    """Self- or cross-attention with q/k/v/o (no biases). x: [B, T, D] -> ([B, T, D], position_bias, cache).

    Self-attention: `kv` None; block 0 (`has_relative_attention_bias`) computes the position bias [1, H, T, S]
    for query slots cache_index..cache_index+T-1 and key slots 0..S-1, later blocks receive it. Cross-attention:
    `kv` = encoder hidden [B, S_enc, D], or None with a cache that already holds its projections."""

    config: T5Config
    has_relative_attention_bias: bool = False
    causal: bool = False
    cross: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, kv: Array | None, mask: Array | None, position_bias: Array | None,
                 layer_cache: dict | None, cache_index: Any):
        c = self.config
        dt = compute_dtype(c.dtype)
        h, dh, d = c.num_heads, c.d_kv, c.d_model
        f = c.initializer_factor
        det = self.deterministic
        b, t, _ = x.shape
        q = Dense(h * dh, False, dt, _init(f * (d * dh) ** -0.5), name="q", deterministic=det)(x)
        k_proj = Dense(h * dh, False, dt, _init(f * d**-0.5), name="k", deterministic=det)
        v_proj = Dense(h * dh, False, dt, _init(f * d**-0.5), name="v", deterministic=det)
        q = q.reshape(b, t, h, dh)
        new_cache = layer_cache
        if self.cross:
            if kv is not None:
                s = kv.shape[1]
                k, v = k_proj(kv).reshape(b, s, h, dh), v_proj(kv).reshape(b, s, h, dh)
                if layer_cache is not None:
                    new_cache = {**layer_cache, "cross_k": k.astype(layer_cache["cross_k"].dtype),
                                 "cross_v": v.astype(layer_cache["cross_v"].dtype)}
            else:
                if layer_cache is None:
                    raise ValueError("cross-attention needs the encoder output or a cache holding its keys/values")
                k, v = layer_cache["cross_k"].astype(dt), layer_cache["cross_v"].astype(dt)
        else:
            k, v = k_proj(x).reshape(b, t, h, dh), v_proj(x).reshape(b, t, h, dh)
            if layer_cache is not None:
                k, v, kv_cache = update_cache(layer_cache, k, v, cache_index)
                new_cache = {**layer_cache, **kv_cache}
        if position_bias is None and self.has_relative_attention_bias:
            table = Embed(c.relative_attention_num_buckets, h, dt, _init(f * d**-0.5),
                          name="relative_attention_bias")
            start = 0 if layer_cache is None else cache_index
            q_pos = jnp.arange(t)[:, None] + start
            rel = jnp.arange(k.shape[1])[None, :] - q_pos  # [T, S]
            bucket = relative_position_bucket(rel, not self.causal, c.relative_attention_num_buckets,
                                              c.relative_attention_max_distance)
            position_bias = table(bucket).transpose(2, 0, 1)[None]  # [1, H, T, S]
        rate = c.dropout_rate
        rng = self.make_rng("dropout") if (not det and rate > 0) else None
        out = t5_attention(q, k, v, position_bias, mask, rate, rng)
        out = Dense(d, False, dt, _init(f * (h * dh) ** -0.5), name="o", deterministic=det)(out.reshape(b, t, h * dh))
        return out, position_bias, new_cache


class T5LayerSelfAttention(nn.Module):
    """x + dropout(SelfAttention(layer_norm(x)))."""

    config: T5Config
    has_relative_attention_bias: bool = False
    causal: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, position_bias, layer_cache, cache_index):
        c = self.config
        h = RMSNorm(c.layer_norm_epsilon, compute_dtype(c.dtype), name="layer_norm")(x)
        h, position_bias, new_cache = T5Attention(
            c, self.has_relative_attention_bias, self.causal, False, self.deterministic, name="SelfAttention"
        )(h, None, mask, position_bias, layer_cache, cache_index)
        return x + Dropout(c.dropout_rate)(h, deterministic=self.deterministic), position_bias, new_cache


class T5LayerCrossAttention(nn.Module):
    """x + dropout(EncDecAttention(layer_norm(x), encoder hidden))."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, encoder_hidden, mask, layer_cache):
        c = self.config
        h = RMSNorm(c.layer_norm_epsilon, compute_dtype(c.dtype), name="layer_norm")(x)
        h, _, new_cache = T5Attention(c, False, False, True, self.deterministic, name="EncDecAttention")(
            h, encoder_hidden, mask, None, layer_cache, None
        )
        return x + Dropout(c.dropout_rate)(h, deterministic=self.deterministic), new_cache


class T5DenseReluDense(nn.Module):
    """'ACT': wo(dropout(act(wi x))); 'gated-ACT': wo(dropout(act(wi_0 x) * wi_1 x)). [B, T, D] -> [B, T, D]."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dt = compute_dtype(c.dtype)
        f, det = c.initializer_factor, self.deterministic
        act = activation(c.dense_act_fn)
        win = _init(f * c.d_model**-0.5)
        if c.is_gated_act:
            x = act(Dense(c.d_ff, False, dt, win, name="wi_0", deterministic=det)(x)) * Dense(
                c.d_ff, False, dt, win, name="wi_1", deterministic=det)(x)
        else:
            x = act(Dense(c.d_ff, False, dt, win, name="wi", deterministic=det)(x))
        x = Dropout(c.dropout_rate)(x, deterministic=det)
        return Dense(c.d_model, False, dt, _init(f * c.d_ff**-0.5), name="wo", deterministic=det)(x)


class T5LayerFF(nn.Module):
    """x + dropout(DenseReluDense(layer_norm(x)))."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        h = RMSNorm(c.layer_norm_epsilon, compute_dtype(c.dtype), name="layer_norm")(x)
        h = T5DenseReluDense(c, self.deterministic, name="DenseReluDense")(h)
        return x + Dropout(c.dropout_rate)(h, deterministic=self.deterministic)


class T5SubLayers(nn.Module):
    """The `layer` container of one block: "0" self-attention, ("1" cross-attention,) then feed-forward."""

    config: T5Config
    is_decoder: bool = False
    has_relative_attention_bias: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, position_bias, encoder_hidden, encoder_mask, layer_cache, cache_index):
        c, det = self.config, self.deterministic
        x, position_bias, new_cache = T5LayerSelfAttention(
            c, self.has_relative_attention_bias, self.is_decoder, det, name="0"
        )(x, mask, position_bias, layer_cache, cache_index)
        if self.is_decoder:
            x, new_cache = T5LayerCrossAttention(c, det, name="1")(x, encoder_hidden, encoder_mask, new_cache)
        x = T5LayerFF(c, det, name="2" if self.is_decoder else "1")(x)
        return x, position_bias, new_cache


class T5Block(nn.Module):
    """One block. x: [B, T, D] -> ([B, T, D], position bias [1, H, T, S], new layer cache | None)."""

    config: T5Config
    is_decoder: bool = False
    has_relative_attention_bias: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, position_bias, encoder_hidden, encoder_mask, layer_cache, cache_index):
        return T5SubLayers(self.config, self.is_decoder, self.has_relative_attention_bias, self.deterministic,
                           name="layer")(x, mask, position_bias, encoder_hidden, encoder_mask, layer_cache,
                                         cache_index)


class T5Blocks(nn.Module):
    """The `block` container: children "0".."L-1"; block 0 owns the relative position bias table."""

    config: T5Config
    is_decoder: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, encoder_hidden, encoder_mask, cache, cache_index):
        c = self.config
        block_cls = remat_layer(T5Block, c.remat)
        n = c.num_decoder_layers if self.is_decoder else c.num_layers
        position_bias = None
        new_cache = {} if cache is not None else None
        for i in range(n):
            x, position_bias, lc = block_cls(c, self.is_decoder, i == 0, self.deterministic, name=str(i))(
                x, mask, position_bias, encoder_hidden, encoder_mask, None if cache is None else cache[str(i)],
                cache_index,
            )
            x = constrain_rows(x)
            if cache is not None:
                new_cache[str(i)] = lc
        return x, new_cache


class T5Stack(nn.Module):
    """Encoder or decoder: dropout(embeddings) -> blocks -> final_layer_norm -> dropout. The embedding table is
    the backbone's `shared`, passed in as embedded inputs [B, T, D]."""

    config: T5Config
    is_decoder: bool = False

    @nn.compact
    def __call__(self, x, mask, encoder_hidden=None, encoder_mask=None, cache=None, cache_index=None,
                 deterministic: bool = True):
        c = self.config
        x = Dropout(c.dropout_rate)(x, deterministic=deterministic)
        x, new_cache = T5Blocks(c, self.is_decoder, deterministic, name="block")(
            x, mask, encoder_hidden, encoder_mask, cache, cache_index
        )
        x = RMSNorm(c.layer_norm_epsilon, compute_dtype(c.dtype), name="final_layer_norm")(x)
        return Dropout(c.dropout_rate)(x, deterministic=deterministic), new_cache


class T5Backbone(nn.Module):
    """`shared`, `encoder`, `decoder` (the parameter tree under backbone/)."""

    config: T5Config

    def setup(self) -> None:
        c = self.config
        self.shared = Embed(c.vocab_size, c.d_model, compute_dtype(c.dtype), _init(c.initializer_factor))
        self.encoder = T5Stack(c, False)
        self.decoder = T5Stack(c, True)

    def encode(self, input_ids: Array, attention_mask: Array, deterministic: bool = True) -> Array:
        """input_ids, attention_mask: [B, S] -> encoder hidden [B, S, D]."""
        x, _ = self.encoder(self.shared(input_ids), padding_mask(attention_mask), deterministic=deterministic)
        return x

    def decode(self, decoder_input_ids, encoder_hidden, attention_mask, decoder_attention_mask, cache,
               cache_index, deterministic: bool = True):
        """decoder_input_ids [B, T]; encoder_hidden [B, S_enc, D] (None: cross keys/values from the cache);
        attention_mask [B, S_enc]; decoder_attention_mask [B, T] ([B, S] over cache slots with a cache) ->
        (decoder hidden [B, T, D], new cache | None)."""
        t = decoder_input_ids.shape[1]
        mask = decoder_mask(decoder_attention_mask, t, cache_index if cache is not None else None)
        return self.decoder(self.shared(decoder_input_ids), mask, encoder_hidden, padding_mask(attention_mask),
                            cache, cache_index, deterministic=deterministic)

    def table(self) -> Array:
        return self.shared.embedding


class T5LMHead(nn.Module):
    """The untied LM head: head/lm_head/kernel [D, V], no bias. [..., D] -> [..., V]."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        return Dense(c.vocab_size, False, compute_dtype(c.dtype), _init(c.initializer_factor), name="lm_head")(x)


class T5TaskModel(nn.Module):
    """T5 backbone + LM head (`head` 'seq2seq_lm'; None returns the decoder's hidden states), see the module
    docstring. Extra keywords for generation and scoring: `encode_only` (return the encoder hidden states
    [B, S, D]), `encoder_hidden` [B, S, D] (skip the encoder; `input_ids` may then be None), `cache` /
    `cache_index` (decoder KV cache, see `init_seq2seq_cache`; returns (logits, new_cache)); without
    `encoder_hidden` and `input_ids` the cross-attention reads its keys/values from the cache."""

    config: T5Config
    head: str | None = "seq2seq_lm"

    @nn.compact
    def __call__(self, input_ids: Any = None, attention_mask: Any = None, decoder_input_ids: Any = None,
                 decoder_attention_mask: Any = None, deterministic: bool = True, encoder_rows: Any = None,
                 encoder_hidden: Array | None = None, cache: dict | None = None, cache_index: Any = None,
                 encode_only: bool = False) -> Any:
        c = self.config
        if self.head not in (None, "seq2seq_lm"):
            raise ValueError(f"T5 supports head None or 'seq2seq_lm', not {self.head!r}")
        backbone = T5Backbone(c, name="backbone")
        if attention_mask is None:
            if input_ids is None:
                raise ValueError("without input_ids the encoder's attention_mask [B, S] is needed")
            attention_mask = jnp.ones(np.shape(input_ids), jnp.int32)
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
        if input_ids is not None and encoder_hidden is None:
            encoder_hidden = backbone.encode(jnp.asarray(input_ids, jnp.int32), attention_mask, deterministic)
        if encode_only:
            if encoder_hidden is None:
                raise ValueError("encode_only needs input_ids")
            return encoder_hidden
        if encoder_hidden is None and cache is None:
            raise ValueError("the decoder needs input_ids, encoder_hidden or a cache holding the cross keys/values")
        if decoder_input_ids is None:
            if c.decoder_start_token_id is None:
                raise ValueError("decoder_input_ids not given and the config has no decoder_start_token_id")
            n = attention_mask.shape[0] if encoder_rows is None else np.shape(encoder_rows)[0]
            decoder_input_ids = jnp.full((n, 1), c.decoder_start_token_id, jnp.int32)
        ids = jnp.asarray(decoder_input_ids, jnp.int32)
        if encoder_rows is not None:
            rows = jnp.asarray(encoder_rows, jnp.int32)
            attention_mask = attention_mask[rows]
            if encoder_hidden is not None:
                encoder_hidden = encoder_hidden[rows]
        if cache is not None and cache_index is None:
            raise ValueError("a cache needs cache_index (slot of the first new decoder token)")
        if decoder_attention_mask is None:
            s = ids.shape[1] if cache is None else cache["0"]["k"].shape[1]
            decoder_attention_mask = jnp.ones((ids.shape[0], s), jnp.int32)
        hidden, new_cache = backbone.decode(ids, encoder_hidden, attention_mask,
                                            jnp.asarray(decoder_attention_mask, jnp.int32), cache, cache_index,
                                            deterministic)
        if self.head is not None:
            if c.scale_decoder_outputs:
                hidden = hidden * jnp.asarray(c.d_model**-0.5, hidden.dtype)
            if c.tie_word_embeddings:
                hidden = jnp.dot(hidden, backbone.table().astype(hidden.dtype).T)
            else:
                hidden = T5LMHead(c, name="head")(hidden)
        out = hidden.astype(jnp.float32)
        return out if cache is None else (out, new_cache)


def init_seq2seq_cache(config: T5Config, batch: int, max_len: int, encoder_len: int, dtype: Any = jnp.float32) -> dict:
    """Zero decoder cache {"i": {"k", "v": [B, max_len, H, Dh], "cross_k", "cross_v": [B, encoder_len, H, Dh]}}."""
    h, dh = config.num_heads, config.d_kv
    self_shape, cross_shape = (batch, max_len, h, dh), (batch, encoder_len, h, dh)
    return {str(i): {"k": jnp.zeros(self_shape, dtype), "v": jnp.zeros(self_shape, dtype),
                     "cross_k": jnp.zeros(cross_shape, dtype), "cross_v": jnp.zeros(cross_shape, dtype)}
            for i in range(config.num_decoder_layers)}
